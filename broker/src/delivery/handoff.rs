//! The handoff: carried deliveries passed from the writes of this process straight to its own
//! relay once their change is committed.
//!
//! A carried delivery's row is written held ([`crate::store::NewDelivery::held`]), so no relay
//! leases it meanwhile; the relay that takes the handoff publishes it and deletes the row once
//! RabbitMQ confirms. A handoff that is lost (the relay is behind, or the process dies) costs
//! nothing but time: once its hold runs out, any relay leases the row.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

use crate::ids::{AgencyId, ReferralId};

/// Writes handed to the relay and not yet taken. Beyond this many the relay is far behind, and a
/// write's deliveries are left to the relay's lease once their hold runs out.
const HANDOFFS_WAITING: usize = 4096;

/// One carried delivery handed to the relay.
#[derive(Debug)]
pub struct Handoff {
    pub agency: AgencyId,
    pub delivery_id: uuid::Uuid,
    pub referral_id: ReferralId,
    /// [`crate::store::NewDelivery::body`]: the delivery without its id.
    pub body: Vec<u8>,
    /// When it was written: past its hold, its row may be leased by any relay.
    pub written: std::time::Instant,
}

/// The channel from this process's writes to its relay, and whether the relay takes it now.
#[derive(Debug)]
pub struct Handoffs {
    sender: mpsc::Sender<Vec<Handoff>>,
    receiver: Mutex<Option<mpsc::Receiver<Vec<Handoff>>>>,
    /// Whether the relay can publish handoffs now (it has a channel to RabbitMQ).
    open: AtomicBool,
}

impl Default for Handoffs {
    fn default() -> Self {
        let (sender, receiver) = mpsc::channel(HANDOFFS_WAITING);
        Self {
            sender,
            receiver: Mutex::new(Some(receiver)),
            open: AtomicBool::new(false),
        }
    }
}

impl Handoffs {
    /// Hands one write's held deliveries to the relay, or leaves them to the lease if it is far
    /// behind.
    pub fn hand(&self, handed: Vec<Handoff>) {
        if !handed.is_empty() && self.sender.try_send(handed).is_err() {
            tracing::debug!(
                "the relay is not taking handed-off deliveries; they are published once their hold runs out"
            );
        }
    }

    /// Whether the relay can publish handoffs now.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Set by the relay: whether it can publish handoffs now.
    pub fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::Relaxed);
    }

    /// What the relay publishes without leasing; taken once, by this process's relay.
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<Vec<Handoff>>> {
        self.receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}
