//! Getting referrals and feedback to agencies' adapters, at least once.
//!
//! Every change writes its deliveries in the same transaction (see [`crate::store::Change`]); this
//! module hands them to a connected adapter and removes them once it confirms. The embedded default
//! reads them from the store's mailbox ([`mailbox`]); [`Doorbell`] wakes a waiting session as soon as
//! something is written for its agency, so delivery does not wait for the poll interval.

pub mod mailbox;

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::ids::AgencyId;

/// Wakes the delivery sessions of an agency when something was queued for it.
#[derive(Debug, Default)]
pub struct Doorbell {
    bells: Mutex<HashMap<AgencyId, watch::Sender<u64>>>,
}

impl Doorbell {
    pub fn ring(&self, agency: &AgencyId) {
        let bells = self.bells.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bell) = bells.get(agency) {
            bell.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    pub fn listen(&self, agency: &AgencyId) -> watch::Receiver<u64> {
        let mut bells = self.bells.lock().unwrap_or_else(|p| p.into_inner());
        bells
            .entry(agency.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }
}
