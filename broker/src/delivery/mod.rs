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
//! not wait for a poll interval; with RabbitMQ it hands carried deliveries to the relay straight
//! after their commit ([`Handoff`]), so that most deliveries are published without the relay
//! leasing their rows.

pub mod amqp;
pub mod bundle;
pub mod mailbox;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use spean_proto::v1 as pb;
use tokio::sync::{mpsc, watch};

use crate::error::StoreError;
use crate::ids::{AgencyId, ReferralId};
use crate::store::NewDelivery;

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
        store: std::sync::Arc<dyn crate::store::Store>,
        agency: AgencyId,
        delivery_id: uuid::Uuid,
    },
    Amqp(Vec<std::sync::Arc<bundle::BundleAck>>),
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

/// A carried delivery, handed by the broker that wrote it to its own relay once the change was
/// committed ([`Doorbell::queued`]). Its row is held ([`crate::store::NewDelivery::held`]), so no
/// relay leases it meanwhile: this relay publishes it and deletes the row once RabbitMQ confirms.
#[derive(Debug)]
pub struct Handoff {
    pub agency: AgencyId,
    pub delivery_id: uuid::Uuid,
    pub referral_id: ReferralId,
    /// The referral itself (with its case file), rather than one of its events.
    pub is_referral: bool,
    /// [`crate::store::NewDelivery::body`]: the delivery without its id.
    pub body: Vec<u8>,
    /// When it was written: past its hold, its row may be leased by any relay.
    pub written: std::time::Instant,
}

/// Writes handed to the relay and not yet taken. Beyond this many the relay is far behind, and a
/// write's deliveries are left to the relay's lease once their hold runs out.
const HANDOFFS_WAITING: usize = 4096;

/// How long [`Doorbell::redirected`] remembers a redirect: longer than any handoff waits.
const REDIRECT_MEMORY: std::time::Duration = std::time::Duration::from_secs(60);

/// Wakes the delivery sessions of an agency, and the outbox relay, when something was queued; and
/// hands carried deliveries to the relay.
#[derive(Debug)]
pub struct Doorbell {
    bells: Mutex<HashMap<AgencyId, watch::Sender<u64>>>,
    any: watch::Sender<u64>,
    handoff: mpsc::Sender<Vec<Handoff>>,
    handed: Mutex<Option<mpsc::Receiver<Vec<Handoff>>>>,
    /// Whether the relay can publish handoffs now (it has a channel to RabbitMQ).
    handing_off: AtomicBool,
    /// Referrals this process redirected lately, and when ([`Doorbell::redirected`]).
    redirected: Mutex<HashMap<ReferralId, std::time::Instant>>,
}

impl Default for Doorbell {
    fn default() -> Self {
        let (handoff, handed) = mpsc::channel(HANDOFFS_WAITING);
        Self {
            bells: Mutex::default(),
            any: watch::channel(0).0,
            handoff,
            handed: Mutex::new(Some(handed)),
            handing_off: AtomicBool::new(false),
            redirected: Mutex::default(),
        }
    }
}

impl Doorbell {
    /// A change or submission of `referral_id` with these deliveries was committed; `redirect`
    /// if it redirected the referral. Held deliveries (carried ones, with RabbitMQ) go to the
    /// relay as they are; for the others the agency's sessions and the relay are woken, to read
    /// them from the store. Nobody is woken for a held delivery: the relay would find its row held
    /// and nothing else to lease.
    pub fn queued(&self, referral_id: ReferralId, deliveries: &[NewDelivery], redirect: bool) {
        let now = std::time::Instant::now();
        if redirect {
            let mut redirected = self.redirected.lock().unwrap_or_else(|p| p.into_inner());
            redirected.retain(|_, at| now.duration_since(*at) < REDIRECT_MEMORY);
            redirected.insert(referral_id, now);
        }
        let mut handed = Vec::new();
        for d in deliveries {
            match (&d.body, d.held) {
                (Some(body), Some(_)) => handed.push(Handoff {
                    agency: d.agency.clone(),
                    delivery_id: d.id,
                    referral_id,
                    is_referral: d.event_id.is_none(),
                    body: body.clone(),
                    written: now,
                }),
                _ => self.ring(&d.agency),
            }
        }
        if !handed.is_empty() && self.handoff.try_send(handed).is_err() {
            tracing::debug!(
                "the relay is not taking handed-off deliveries; they are published once their hold runs out"
            );
        }
    }

    /// Whether a write should hold its carried deliveries for a handoff: only while the relay can
    /// publish them. Rows written while RabbitMQ is out of reach are left free, so that they go
    /// out as soon as it is back rather than when their hold runs out.
    pub fn handing_off(&self) -> bool {
        self.handing_off.load(Ordering::Relaxed)
    }

    /// Set by the relay: whether it can publish handoffs now.
    pub fn set_handing_off(&self, open: bool) {
        self.handing_off.store(open, Ordering::Relaxed);
    }

    /// Whether a handed-off delivery of the referral itself must not be published as it was
    /// handed over: the referral was redirected since. A redirect clears the case file from the
    /// former recipient's queued referral in the store; the handoff still holds it. Left to the
    /// relay's lease once its hold runs out, the row is loaded as it is now, without the case
    /// file. A redirect made through another broker is not seen here: there the handoff's
    /// window (from the commit to the publish, milliseconds unless the relay is behind) is the
    /// lease's window (from the lease to the publish) before it.
    pub fn redirected(&self, handoff: &Handoff) -> bool {
        handoff.is_referral
            && self
                .redirected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&handoff.referral_id)
    }

    /// What the relay publishes without leasing; taken once, by this process's relay.
    pub fn take_handoffs(&self) -> Option<mpsc::Receiver<Vec<Handoff>>> {
        self.handed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

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
    /// Opens a delivery session for one adapter connection that accepts `window` unsettled
    /// deliveries.
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
            held: Some(std::time::Duration::from_secs(15)),
        }
    }

    /// Held deliveries are handed to the relay and wake nobody; the others ring their agency. A
    /// referral redirected after its handoff is not published from the handoff (its case file
    /// was cleared in the store), while its events and other referrals still are.
    #[tokio::test]
    async fn held_deliveries_are_handed_off_and_a_redirect_withdraws_the_referral() {
        let bell = Doorbell::default();
        let mut handoffs = bell.take_handoffs().unwrap();
        assert!(bell.take_handoffs().is_none(), "one relay takes them");
        let mut ngo = bell.listen(&AgencyId::parse("agency", "mlup-russey").unwrap());
        let (moved, kept) = (ReferralId::new(), ReferralId::new());
        bell.queued(moved, &[held("mlup-russey", None)], false);
        bell.queued(kept, &[held("mlup-russey", None)], false);
        let unheld = NewDelivery {
            held: None,
            ..held("mlup-russey", None)
        };
        bell.queued(kept, &[unheld], false);
        assert!(ngo.has_changed().unwrap(), "an unheld delivery rings");
        ngo.borrow_and_update();

        let event = uuid::Uuid::now_v7();
        bell.queued(moved, &[held("ahc-swu", Some(event))], true);
        assert!(!ngo.has_changed().unwrap(), "held deliveries ring nobody");
        let handed: Vec<Handoff> = std::iter::from_fn(|| handoffs.try_recv().ok())
            .flatten()
            .collect();
        assert_eq!(handed.len(), 3);
        let withdrawn: Vec<(ReferralId, bool)> = handed
            .iter()
            .map(|h| (h.referral_id, bell.redirected(h)))
            .collect();
        assert_eq!(withdrawn, [(moved, true), (kept, false), (moved, false)]);
        assert_eq!(handed[2].agency.as_str(), "ahc-swu");
    }
}
