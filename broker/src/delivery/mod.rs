//! Getting referrals and feedback to agencies' adapters, at least once.
//!
//! Every change writes its deliveries to the store's mailbox in the same transaction (see
//! [`crate::store::Change`]). From there, one of two backends carries them:
//! - [`mailbox`] (embedded): a delivery session reads its agency's mailbox rows directly, and a
//!   confirmed row is deleted.
//! - [`amqp`] (production): the mailbox is a transactional outbox; a relay publishes its rows to
//!   RabbitMQ with publisher confirms and deletes them once confirmed, and a delivery session consumes
//!   the agency's quorum queue, acking a message only when the adapter confirmed it.
//!
//! [`Doorbell`] wakes waiting sessions and the relay as soon as something is written, so delivery does
//! not wait for a poll interval.

pub mod amqp;
pub mod mailbox;

use std::collections::HashMap;
use std::sync::Mutex;

use spean_proto::v1 as pb;
use tokio::sync::watch;

use crate::error::StoreError;
use crate::ids::{AgencyId, ReferralId};

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ is unavailable: {0}")]
    Unavailable(String),
}

/// What a delivery is about, kept while it is in flight so its confirmation can be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryRef {
    pub delivery_id: uuid::Uuid,
    pub referral_id: ReferralId,
    /// `None`: the referral itself.
    pub event_id: Option<uuid::Uuid>,
}

/// One delivery ready to go down a stream. The mailbox backend leaves `message` empty (the gateway
/// loads the referral or event as it is now); the AMQP backend carries the message as published.
#[derive(Debug)]
pub struct Pending {
    pub reference: DeliveryRef,
    pub message: Option<pb::Delivery>,
}

/// A connected adapter's delivery session, on either backend.
pub enum Session {
    Mailbox(mailbox::MailboxSession),
    Amqp(amqp::AmqpSession),
}

impl Session {
    /// Waits for the next deliveries. Cancel-safe.
    pub async fn next_batch(&mut self) -> Result<Vec<Pending>, DeliveryError> {
        match self {
            Session::Mailbox(s) => s.next_batch().await,
            Session::Amqp(s) => s.next_batch().await,
        }
    }

    /// The in-flight delivery with this id, if this session sent it.
    pub fn in_flight(&self, delivery_id: uuid::Uuid) -> Option<DeliveryRef> {
        match self {
            Session::Mailbox(s) => s.in_flight(delivery_id),
            Session::Amqp(s) => s.in_flight(delivery_id),
        }
    }

    /// Forgets a delivery the adapter confirmed (and the broker has applied).
    pub async fn settle(&mut self, delivery_id: uuid::Uuid) -> Result<(), DeliveryError> {
        match self {
            Session::Mailbox(s) => s.settle(delivery_id).await,
            Session::Amqp(s) => s.settle(delivery_id).await,
        }
    }
}

/// Wakes the delivery sessions of an agency, and the outbox relay, when something was queued.
#[derive(Debug)]
pub struct Doorbell {
    bells: Mutex<HashMap<AgencyId, watch::Sender<u64>>>,
    any: watch::Sender<u64>,
}

impl Default for Doorbell {
    fn default() -> Self {
        Self {
            bells: Mutex::default(),
            any: watch::channel(0).0,
        }
    }
}

impl Doorbell {
    pub fn ring(&self, agency: &AgencyId) {
        {
            let bells = self.bells.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(bell) = bells.get(agency) {
                bell.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
        self.any.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn listen(&self, agency: &AgencyId) -> watch::Receiver<u64> {
        let mut bells = self.bells.lock().unwrap_or_else(|p| p.into_inner());
        bells
            .entry(agency.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Rings on every delivery for any agency: what the relay waits on.
    pub fn listen_any(&self) -> watch::Receiver<u64> {
        self.any.subscribe()
    }
}

/// Which backend carries deliveries in this process.
#[derive(Clone)]
pub enum Backend {
    Mailbox {
        store: std::sync::Arc<dyn crate::store::Store>,
        doorbell: std::sync::Arc<Doorbell>,
        poll: std::time::Duration,
    },
    Amqp(std::sync::Arc<amqp::Amqp>),
}

impl Backend {
    /// Opens a delivery session for one adapter connection.
    pub async fn open(&self, agency: AgencyId, window: u16) -> Result<Session, DeliveryError> {
        match self {
            Backend::Mailbox {
                store,
                doorbell,
                poll,
            } => Ok(Session::Mailbox(mailbox::MailboxSession::open(
                store.clone(),
                doorbell,
                agency,
                usize::from(window),
                *poll,
            ))),
            Backend::Amqp(amqp) => Ok(Session::Amqp(amqp.open_session(&agency, window).await?)),
        }
    }
}
