//! The doorbell: wakes an agency's delivery sessions, and the outbox relay, when something was
//! queued for it, so that delivery does not wait for a poll interval. It carries no data: a woken
//! session or relay reads the store.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::ids::AgencyId;

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
    /// Wakes `agency`'s sessions and the relay.
    pub fn ring(&self, agency: &AgencyId) {
        {
            let bells = self.bells.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(bell) = bells.get(agency) {
                bell.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
        self.any.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// What a session of `agency` waits on.
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
