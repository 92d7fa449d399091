//! Whether the broker can be reached, as the daemon's delivery stream last found it: what the API's
//! health says, and how a write through the API knows to queue at once rather than wait for a
//! connection attempt to time out (a field site can be offline for days).

use std::sync::Mutex;

use serde::Serialize;

/// The link to the broker as last seen.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct LinkStatus {
    /// True while the delivery stream is subscribed.
    pub connected: bool,
    /// When it last became connected or disconnected (RFC 3339 UTC); `null` before the first try.
    pub since: Option<String>,
    /// Why the last attempt failed, while disconnected.
    pub last_error: Option<String>,
}

/// Shared by the delivery loop (which updates it) and the API (which reads it).
#[derive(Debug, Default)]
pub struct Link {
    status: Mutex<LinkStatus>,
}

impl Link {
    pub fn status(&self) -> LinkStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn is_up(&self) -> bool {
        self.status().connected
    }

    /// The delivery stream is subscribed.
    pub fn up(&self) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if !status.connected || status.since.is_none() {
            *status = LinkStatus {
                connected: true,
                since: Some(crate::store::now()),
                last_error: None,
            };
        }
    }

    /// The delivery stream is down, for `error`.
    pub fn down(&self, error: &str) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if status.connected || status.since.is_none() {
            status.since = Some(crate::store::now());
        }
        status.connected = false;
        status.last_error = Some(error.to_owned());
    }
}
