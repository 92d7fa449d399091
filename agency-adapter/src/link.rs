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

/// How long after the daemon's latest attempt a command trusts its finding that the broker is
/// out of reach. The daemon tries again at least every 10 s (plus a connection timeout) while it
/// runs; a finding older than this is from a daemon that stopped.
const FRESH_FOR_S: i64 = 60;

impl crate::store::Store {
    /// Records what the daemon found of the link now.
    pub async fn note_link(&self, status: LinkStatus) -> Result<(), crate::AdapterError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO link_status (id, connected, since, last_error, checked_at) \
                 VALUES (1, ?1, ?2, ?3, ?4) ON CONFLICT (id) DO UPDATE SET \
                 connected = ?1, since = ?2, last_error = ?3, checked_at = ?4",
                rusqlite::params![
                    status.connected,
                    status.since.unwrap_or_default(),
                    status.last_error,
                    now
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Forgets the daemon's finding: a daemon that stops no longer knows.
    pub async fn forget_link(&self) -> Result<(), crate::AdapterError> {
        self.write(|conn| {
            conn.execute("DELETE FROM link_status", [])?;
            Ok(())
        })
        .await
    }

    /// Since when the running daemon finds the broker out of reach, if it does, and found so
    /// lately.
    pub async fn link_down_since(&self) -> Result<Option<String>, crate::AdapterError> {
        let fresh = time::OffsetDateTime::now_utc().unix_timestamp() - FRESH_FOR_S;
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT since FROM link_status WHERE id = 1 AND connected = 0 AND checked_at >= ?",
        )
        .bind(fresh)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|(since,)| since))
    }
}
