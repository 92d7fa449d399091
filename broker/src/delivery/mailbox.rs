//! Embedded delivery straight from the store's mailbox table.
//!
//! A session keeps a cursor over its agency's mailbox; the gateway bounds how many of its entries are
//! unconfirmed at once. A new session starts from the beginning, so whatever an earlier connection
//! left unconfirmed is delivered again. A confirmed entry is deleted; concurrent deletions of many
//! sessions are committed together by the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{DeliveryError, Doorbell, Pending, Settle};
use crate::ids::AgencyId;
use crate::store::{DeliveryRef, Store};

pub struct MailboxSession {
    store: Arc<dyn Store>,
    agency: AgencyId,
    bell: watch::Receiver<u64>,
    poll: Duration,
    cursor: i64,
    in_flight: HashMap<uuid::Uuid, DeliveryRef>,
}

impl MailboxSession {
    pub fn open(
        store: Arc<dyn Store>,
        doorbell: &Doorbell,
        agency: AgencyId,
        poll: Duration,
    ) -> Self {
        let bell = doorbell.listen(&agency);
        Self {
            store,
            agency,
            bell,
            poll,
            cursor: 0,
            in_flight: HashMap::new(),
        }
    }

    /// Waits until there is something to send, and returns up to `room` entries.
    ///
    /// Cancel-safe: the cursor moves only after the entries are in hand.
    pub async fn next_batch(&mut self, room: usize) -> Result<Vec<Pending>, DeliveryError> {
        let room = u32::try_from(room.max(1)).unwrap_or(u32::MAX);
        loop {
            // Mark the bell seen before reading, so a ring during the read is not lost.
            self.bell.borrow_and_update();
            let entries = self.store.mailbox(&self.agency, self.cursor, room).await?;
            if let Some(last) = entries.last() {
                self.cursor = last.seq;
                let batch = entries
                    .into_iter()
                    .map(|e| {
                        let reference = e.reference();
                        self.in_flight.insert(reference.delivery_id, reference);
                        Pending {
                            reference,
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
        }
    }

    pub fn take(&mut self, delivery_id: uuid::Uuid) -> Option<(DeliveryRef, Settle)> {
        let reference = self.in_flight.remove(&delivery_id)?;
        Some((
            reference,
            Settle::Mailbox {
                store: self.store.clone(),
                agency: self.agency.clone(),
                delivery_id,
            },
        ))
    }
}
