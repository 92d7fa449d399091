//! Embedded delivery straight from the store's mailbox table.
//!
//! A session keeps a cursor over its agency's mailbox and at most `window` unconfirmed entries in
//! flight. A new session starts from the beginning, so whatever an earlier connection left unconfirmed
//! is delivered again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{DeliveryError, DeliveryRef, Doorbell, Pending};
use crate::ids::AgencyId;
use crate::store::Store;

pub struct MailboxSession {
    store: Arc<dyn Store>,
    agency: AgencyId,
    bell: watch::Receiver<u64>,
    poll: Duration,
    window: usize,
    cursor: i64,
    in_flight: HashMap<uuid::Uuid, DeliveryRef>,
}

impl MailboxSession {
    pub fn open(
        store: Arc<dyn Store>,
        doorbell: &Doorbell,
        agency: AgencyId,
        window: usize,
        poll: Duration,
    ) -> Self {
        let bell = doorbell.listen(&agency);
        Self {
            store,
            agency,
            bell,
            poll,
            window: window.max(1),
            cursor: 0,
            in_flight: HashMap::new(),
        }
    }

    /// Waits until there is something to send and room in the window, and returns it.
    ///
    /// Cancel-safe: the cursor moves only after the entries are in hand.
    pub async fn next_batch(&mut self) -> Result<Vec<Pending>, DeliveryError> {
        loop {
            let room = self.window.saturating_sub(self.in_flight.len());
            if room > 0 {
                // Mark the bell seen before reading, so a ring during the read is not lost.
                self.bell.borrow_and_update();
                let entries = self
                    .store
                    .mailbox(&self.agency, self.cursor, room as u32)
                    .await?;
                if let Some(last) = entries.last() {
                    self.cursor = last.seq;
                    let batch = entries
                        .into_iter()
                        .map(|e| DeliveryRef {
                            delivery_id: e.delivery_id,
                            referral_id: e.referral_id,
                            event_id: e.event_id,
                        })
                        .map(|r| {
                            self.in_flight.insert(r.delivery_id, r);
                            Pending {
                                reference: r,
                                message: None,
                            }
                        })
                        .collect();
                    return Ok(batch);
                }
                tokio::select! {
                    _ = self.bell.changed() => {}
                    _ = tokio::time::sleep(self.poll) => {}
                }
            } else {
                // Full window: only a confirmation makes room, and the caller selects on those.
                std::future::pending::<()>().await;
            }
        }
    }

    pub fn in_flight(&self, delivery_id: uuid::Uuid) -> Option<DeliveryRef> {
        self.in_flight.get(&delivery_id).copied()
    }

    /// Deletes the confirmed entry and frees its window slot.
    pub async fn settle(&mut self, delivery_id: uuid::Uuid) -> Result<(), DeliveryError> {
        self.store
            .remove_mailbox_entry(&self.agency, delivery_id)
            .await?;
        self.in_flight.remove(&delivery_id);
        Ok(())
    }
}
