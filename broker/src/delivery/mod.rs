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
//! Both backends make what a delivery carries at the moment it goes down an adapter's stream from
//! [`contents`], through the one rule of who sees what ([`crate::referral::view`]).
//!
//! [`Dispatch`] is what a write tells delivery once its change is committed: its
//! [`doorbell::Doorbell`] wakes waiting sessions and the relay, so that delivery does not wait for
//! a poll interval, and with RabbitMQ its [`handoff::Handoffs`] hand carried deliveries straight to
//! this process's relay, so that most deliveries are published without the relay leasing their
//! rows. The words of the outbox (carried, held, handoff, lease, settle, tidy) are defined once, in
//! the glossary of `docs/architecture.md`.

pub mod amqp;
pub mod bundle;
pub mod contents;
pub mod doorbell;
pub mod handoff;
pub mod mailbox;

use std::sync::Arc;
use std::time::Duration;

use spean_proto::v1 as pb;

pub use self::contents::contents;
pub use self::doorbell::Doorbell;
pub use self::handoff::{Handoff, Handoffs};
use crate::error::StoreError;
use crate::ids::{AgencyId, ReferralId};
use crate::store::{DeliveryRef, NewDelivery, Store};

/// Why a delivery backend failed. Each cause stays a source, so that a log line shows the whole
/// chain ([`crate::error::ErrorChain`]).
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("RabbitMQ error")]
    Amqp(#[from] lapin::Error),
    /// The CA file configured for `amqps://` cannot be read.
    #[error("reading RabbitMQ's CA certificate {}", path.display())]
    CaCert {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No connection, or no consumer, to deliver through; a later attempt may find one.
    #[error("RabbitMQ is unavailable: {0}")]
    Unavailable(&'static str),
}

/// One delivery ready to go down a stream. The mailbox backend leaves `message` empty (the gateway
/// loads the referral or event as it is now, a batch at a time); the AMQP backend carries the message
/// as published.
#[derive(Debug)]
pub struct Pending {
    pub reference: DeliveryRef,
    pub message: Option<pb::Delivery>,
}

/// A connected adapter's delivery session, on either backend. The gateway bounds how many
/// deliveries are unsettled at once (the adapter's window); the session hands out deliveries and,
/// for each one the adapter confirms, what settles it.
pub enum Session {
    Mailbox(mailbox::MailboxSession),
    Amqp(Box<amqp::AmqpSession>),
}

impl Session {
    /// Waits for the next deliveries, at most `room` of them. Cancel-safe.
    pub async fn next_batch(&mut self, room: usize) -> Result<Vec<Pending>, DeliveryError> {
        match self {
            Session::Mailbox(s) => s.next_batch(room).await,
            Session::Amqp(s) => s.next_batch(room).await,
        }
    }

    /// Takes a delivery this session sent out of its in-flight set, with what settles it once the
    /// broker has applied the adapter's confirmation. `None` if this session has no such delivery.
    pub fn take(&mut self, delivery_id: uuid::Uuid) -> Option<(DeliveryRef, Settle)> {
        match self {
            Session::Mailbox(s) => s.take(delivery_id),
            Session::Amqp(s) => s.take(delivery_id),
        }
    }
}

/// What makes a confirmed delivery go away for good: deleting its mailbox row, or counting it settled
/// in every message that carried it to this session (a message is acked once all its deliveries
/// are). Owned, so settling runs beside the session's other work.
pub enum Settle {
    Mailbox {
        store: Arc<dyn Store>,
        agency: AgencyId,
        delivery_id: uuid::Uuid,
    },
    Amqp(Vec<Arc<bundle::BundleAck>>),
}

impl Settle {
    pub async fn run(self) -> Result<(), DeliveryError> {
        match self {
            Settle::Mailbox {
                store,
                agency,
                delivery_id,
            } => {
                store.settle(&agency, &[delivery_id]).await?;
            }
            Settle::Amqp(acks) => {
                for ack in acks {
                    ack.settle_one().await?;
                }
            }
        }
        Ok(())
    }
}

/// What a committed write tells delivery: the doorbell that wakes sessions and the relay, and the
/// handoffs to this process's relay. One per process, shared by the workflow and the backends.
#[derive(Debug, Default)]
pub struct Dispatch {
    pub doorbell: Doorbell,
    pub handoffs: Handoffs,
}

impl Dispatch {
    /// A change or submission of `referral_id` with these deliveries was committed. Held
    /// deliveries (carried ones, with RabbitMQ) go to the relay as they are; for the others the
    /// agency's sessions and the relay are woken, to read them from the store. Nobody is woken for
    /// a held delivery: the relay would find its row held and nothing else to lease.
    pub fn queued(&self, referral_id: ReferralId, deliveries: &[NewDelivery]) {
        let now = std::time::Instant::now();
        let mut handed = Vec::new();
        for d in deliveries {
            match (&d.body, d.held) {
                (Some(body), Some(_)) => handed.push(Handoff {
                    agency: d.agency.clone(),
                    delivery_id: d.id,
                    referral_id,
                    body: body.clone(),
                    written: now,
                }),
                _ => self.doorbell.ring(&d.agency),
            }
        }
        self.handoffs.hand(handed);
    }

    /// How long a write should hold its carried deliveries for a handoff: `hold`, but only while
    /// the relay can publish them. Rows written while RabbitMQ is out of reach are left free, so
    /// that they go out as soon as it is back rather than when their hold runs out.
    pub fn hold(&self, hold: Duration) -> Option<Duration> {
        self.handoffs.is_open().then_some(hold)
    }
}

/// Which backend carries deliveries in this process.
#[derive(Clone)]
pub enum Backend {
    Mailbox {
        store: Arc<dyn Store>,
        dispatch: Arc<Dispatch>,
        poll: Duration,
    },
    Amqp(Arc<amqp::Amqp>),
}

impl Backend {
    /// Opens a delivery session for one adapter connection that accepts `window` unsettled
    /// deliveries.
    pub async fn open(&self, agency: AgencyId, window: u16) -> Result<Session, DeliveryError> {
        match self {
            Backend::Mailbox {
                store,
                dispatch,
                poll,
            } => Ok(Session::Mailbox(mailbox::MailboxSession::open(
                store.clone(),
                &dispatch.doorbell,
                agency,
                *poll,
            ))),
            Backend::Amqp(amqp) => Ok(Session::Amqp(Box::new(
                amqp.open_session(&agency, window).await?,
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(agency: &str, event_id: Option<uuid::Uuid>) -> NewDelivery {
        NewDelivery {
            id: uuid::Uuid::now_v7(),
            agency: AgencyId::parse("agency", agency).unwrap(),
            event_id,
            body: Some(b"carried".to_vec()),
            held: Some(Duration::from_secs(15)),
        }
    }

    /// Held deliveries are handed to the relay and wake nobody; the others ring their agency.
    #[tokio::test]
    async fn held_deliveries_are_handed_off_and_the_others_ring() {
        let dispatch = Dispatch::default();
        let mut handoffs = dispatch.handoffs.take_receiver().unwrap();
        assert!(
            dispatch.handoffs.take_receiver().is_none(),
            "one relay takes them"
        );
        let mut ngo = dispatch
            .doorbell
            .listen(&AgencyId::parse("agency", "mlup-russey").unwrap());
        let (first, second) = (ReferralId::new(), ReferralId::new());
        dispatch.queued(first, &[held("mlup-russey", None)]);
        let unheld = NewDelivery {
            held: None,
            ..held("mlup-russey", None)
        };
        dispatch.queued(second, &[unheld]);
        assert!(ngo.has_changed().unwrap(), "an unheld delivery rings");
        ngo.borrow_and_update();

        dispatch.queued(second, &[held("ahc-swu", Some(uuid::Uuid::now_v7()))]);
        assert!(!ngo.has_changed().unwrap(), "held deliveries ring nobody");
        let handed: Vec<Handoff> = std::iter::from_fn(|| handoffs.try_recv().ok())
            .flatten()
            .collect();
        let got: Vec<(ReferralId, &str)> = handed
            .iter()
            .map(|h| (h.referral_id, h.agency.as_str()))
            .collect();
        assert_eq!(got, [(first, "mlup-russey"), (second, "ahc-swu")]);
    }

    /// A write holds its carried deliveries only while the relay can take them.
    #[test]
    fn deliveries_are_held_only_while_the_relay_takes_handoffs() {
        let dispatch = Dispatch::default();
        let hold = Duration::from_secs(15);
        assert_eq!(dispatch.hold(hold), None);
        dispatch.handoffs.set_open(true);
        assert_eq!(dispatch.hold(hold), Some(hold));
    }
}
