//! Webhooks: the agency's own system (OSCaR, Primero, a hospital's records) registers endpoints
//! for the events it wants, and the daemon POSTs each event to them, signed, in order per
//! referral, retried for days (docs/integration.md#webhooks).
//!
//! - [`signing`]: the per-endpoint secret and the Standard Webhooks signature.
//! - [`enqueue`]: the messages written in the same transaction that stored what they announce (a
//!   delivery, the answer to an action, an outbox row the broker refused), so none is lost when the
//!   daemon is killed between storing and posting, and a repeated delivery adds none.
//! - [`schedule`]: the `[webhooks]` settings, and the backoff between attempts.
//! - [`dispatch`]: the daemon's loop that posts due messages and records every attempt.
//!
//! This file is the API the command line (`spean-adapter webhook ...`) and the local HTTP API
//! call: endpoints (register, list, enable, disable, remove, secret) and messages (list, attempts,
//! resend). Payloads are thin: ids, kinds, states and times, never case data; the system fetches
//! the rest through the API, which audits the read.

pub mod dispatch;
pub(crate) mod enqueue;
pub mod schedule;
pub mod signing;

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{AdapterError, store::Store};

pub use schedule::WebhookSettings;

/// What an endpoint can subscribe to. An escalation or an overdue follow-up also matches the
/// general type of its referral (`referral.feedback` or `referral.updated`): an endpoint gets one
/// message per event, typed with the most specific type it subscribed to.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum EventType {
    /// A referral new to this agency's inbox: as recipient, broadcast candidate, notified party
    /// or delegate.
    #[serde(rename = "referral.received")]
    ReferralReceived,
    /// A new event on a referral this agency sent (its own actions echoed back included).
    #[serde(rename = "referral.feedback")]
    ReferralFeedback,
    /// A new event on a referral this agency received or holds (its own actions included).
    #[serde(rename = "referral.updated")]
    ReferralUpdated,
    /// A referral was escalated.
    #[serde(rename = "referral.escalated")]
    ReferralEscalated,
    /// A follow-up visit was missed.
    #[serde(rename = "follow_up.overdue")]
    FollowUpOverdue,
    /// A request queued in the outbox was refused by the broker for good.
    #[serde(rename = "request.rejected")]
    RequestRejected,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        Self::ReferralReceived,
        Self::ReferralFeedback,
        Self::ReferralUpdated,
        Self::ReferralEscalated,
        Self::FollowUpOverdue,
        Self::RequestRejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReferralReceived => "referral.received",
            Self::ReferralFeedback => "referral.feedback",
            Self::ReferralUpdated => "referral.updated",
            Self::ReferralEscalated => "referral.escalated",
            Self::FollowUpOverdue => "follow_up.overdue",
            Self::RequestRejected => "request.rejected",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = AdapterError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == raw)
            .ok_or_else(|| AdapterError::Invalid {
                field: "event_types".into(),
                reason: format!(
                    "{raw:?} is not an event type; one of: {}",
                    Self::ALL.map(Self::as_str).join(", ")
                ),
            })
    }
}

/// An endpoint to register.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    /// `https://...`, or `http://` to this machine only (`localhost`, `127.0.0.1`, `[::1]`).
    pub url: String,
    /// What it wants; at least one.
    pub event_types: Vec<EventType>,
    /// For people: which system this is.
    #[serde(default)]
    pub description: String,
}

/// A registered endpoint. Never carries its secret: see [`secret`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Endpoint {
    /// `ep_<uuidv7>`.
    pub id: String,
    pub url: String,
    pub event_types: Vec<EventType>,
    pub description: String,
    pub enabled: bool,
    /// Why it was disabled: by hand, or failing for longer than `disable_after`.
    pub disabled_reason: Option<String>,
    /// When it was disabled (RFC 3339).
    pub disabled_at: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

/// What registering answers: the endpoint, and its secret, shown this once (and by [`secret`]).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Created {
    pub endpoint: Endpoint,
    pub secret: String,
}

/// Where a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    /// Not delivered, and its last attempt (if any) did not fail: waiting for its turn.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Not delivered, and its last attempt failed: will be tried again at `next_attempt_at`.
    Failing,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failing => "failing",
        }
    }
}

impl FromStr for MessageStatus {
    type Err = AdapterError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        [Self::Pending, Self::Delivered, Self::Failing]
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| AdapterError::Invalid {
                field: "status".into(),
                reason: format!("{raw:?} is not one of pending, delivered, failing"),
            })
    }
}

/// One message to one endpoint, with how its attempts went.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageView {
    /// `msg_<uuidv7>`: the `webhook-id` of every attempt.
    pub id: String,
    pub endpoint_id: String,
    pub event_type: EventType,
    pub status: MessageStatus,
    pub attempts: i64,
    /// The HTTP status of the last attempt, when it got an answer.
    pub last_status: Option<u16>,
    /// Why the last attempt failed, when it did.
    pub last_error: Option<String>,
    pub last_latency_ms: Option<i64>,
    /// When it will be tried next (RFC 3339); none once delivered.
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
    /// The body posted: `{"type", "timestamp", "data"}`.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// One attempt to post a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// 1 for the first attempt.
    pub attempt: i64,
    /// RFC 3339.
    pub at: String,
    /// The HTTP status, when the endpoint answered.
    pub status_code: Option<u16>,
    /// Why it failed without an answer (refused, timed out), or which status it was.
    pub error: Option<String>,
    pub latency_ms: i64,
}

/// Which messages to list; all of them, oldest first, when empty.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageFilter {
    pub endpoint: Option<String>,
    pub status: Option<MessageStatus>,
}

/// Registers an endpoint and makes its secret.
pub async fn register(store: &Store, new: NewEndpoint) -> Result<Created, AdapterError> {
    register_under(store, new, None).await
}

/// Registers an endpoint under the caller's idempotency key (the API's `Idempotency-Key`): the
/// same key with the same endpoint answers the endpoint registered first, with its secret, and
/// makes nothing new (`true`: a replay); with another endpoint it is refused.
pub async fn register_keyed(
    store: &Store,
    key: &str,
    new: NewEndpoint,
) -> Result<(Created, bool), AdapterError> {
    let held: Option<(String, String, String, String)> = sqlx::query_as(
        "SELECT endpoint_id, url, event_types, description FROM webhook_endpoints \
         WHERE idempotency_key = ?",
    )
    .bind(key)
    .fetch_optional(store.pool())
    .await?;
    let Some((id, url, types, description)) = held else {
        return Ok((
            register_under(store, new, Some(key.to_owned())).await?,
            false,
        ));
    };
    let mut wanted = new.event_types.clone();
    wanted.sort();
    wanted.dedup();
    let same_types = serde_json::from_str::<Vec<EventType>>(&types).is_ok_and(|t| t == wanted);
    if url != new.url || !same_types || description != new.description {
        return Err(AdapterError::KeyReused {
            field: "Idempotency-Key",
            key: key.to_owned(),
            operation: "register_webhook".into(),
            status: format!("registered as {id}"),
        });
    }
    Ok((
        Created {
            endpoint: get(store, &id).await?,
            secret: secret(store, &id).await?,
        },
        true,
    ))
}

async fn register_under(
    store: &Store,
    new: NewEndpoint,
    key: Option<String>,
) -> Result<Created, AdapterError> {
    check_url(&new.url)?;
    let mut types = new.event_types;
    types.sort();
    types.dedup();
    if types.is_empty() {
        return Err(AdapterError::Invalid {
            field: "event_types".into(),
            reason: format!(
                "give at least one of: {}",
                EventType::ALL.map(EventType::as_str).join(", ")
            ),
        });
    }
    let id = format!("ep_{}", uuid::Uuid::now_v7().simple());
    let secret = signing::new_secret()?;
    let types_json = serde_json::to_string(&types).map_err(|e| AdapterError::Invalid {
        field: "event_types".into(),
        reason: e.to_string(),
    })?;
    let row = (
        id.clone(),
        new.url,
        types_json,
        new.description,
        store.vault().seal(SECRET_AT_REST, &id, secret.as_bytes())?,
    );
    store
        .write(move |conn| {
            conn.execute(
                "INSERT INTO webhook_endpoints (endpoint_id, url, event_types, description, \
                 secret, created_at, idempotency_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                rusqlite::params![row.0, row.1, row.2, row.3, row.4, now_ms(), key],
            )?;
            Ok(())
        })
        .await?;
    Ok(Created {
        endpoint: get(store, &id).await?,
        secret,
    })
}

/// Every endpoint, oldest first.
pub async fn list(store: &Store) -> Result<Vec<Endpoint>, AdapterError> {
    let rows: Vec<EndpointRow> = sqlx::query_as(ENDPOINT_SELECT)
        .fetch_all(store.pool())
        .await?;
    rows.into_iter().map(Endpoint::try_from).collect()
}

/// One endpoint.
pub async fn get(store: &Store, id: &str) -> Result<Endpoint, AdapterError> {
    list(store)
        .await?
        .into_iter()
        .find(|e| e.id == id)
        .ok_or_else(|| not_found("webhook endpoint", id))
}

/// Removes an endpoint with its messages and their attempts: asked for by a person, unlike a
/// disabled endpoint, which keeps everything.
pub async fn remove(store: &Store, id: &str) -> Result<(), AdapterError> {
    let id = id.to_owned();
    store
        .write(move |conn| {
            conn.execute(
                "DELETE FROM webhook_attempts WHERE message_id IN \
                 (SELECT message_id FROM webhook_messages WHERE endpoint_id = ?1)",
                [&id],
            )?;
            conn.execute("DELETE FROM webhook_messages WHERE endpoint_id = ?1", [&id])?;
            match conn.execute(
                "DELETE FROM webhook_endpoints WHERE endpoint_id = ?1",
                [&id],
            )? {
                0 => Err(not_found("webhook endpoint", &id)),
                _ => Ok(()),
            }
        })
        .await
}

/// Enables or disables an endpoint by hand. Enabling clears the reason, and makes every
/// undelivered message due now (in order, per referral), its backoff started afresh.
pub async fn set_enabled(store: &Store, id: &str, enabled: bool) -> Result<Endpoint, AdapterError> {
    let owned = id.to_owned();
    store
        .write(move |conn| {
            let held = conn
                .prepare_cached("SELECT 1 FROM webhook_endpoints WHERE endpoint_id = ?1")?
                .exists([&owned])?;
            if !held {
                return Err(not_found("webhook endpoint", &owned));
            }
            if enabled {
                conn.execute(
                    "UPDATE webhook_endpoints SET enabled = 1, disabled_reason = NULL, \
                     disabled_at = NULL, down_until = NULL WHERE endpoint_id = ?1",
                    [&owned],
                )?;
                conn.execute(
                    "UPDATE webhook_messages SET next_attempt_at = ?2, first_failed_at = NULL, \
                     failures = 0 WHERE endpoint_id = ?1 AND delivered_at IS NULL",
                    rusqlite::params![owned, now_ms()],
                )?;
            } else {
                conn.execute(
                    "UPDATE webhook_endpoints SET enabled = 0, \
                     disabled_reason = 'disabled by hand', disabled_at = ?2 \
                     WHERE endpoint_id = ?1 AND enabled = 1",
                    rusqlite::params![owned, now_ms()],
                )?;
            }
            Ok(())
        })
        .await?;
    get(store, id).await
}

/// An endpoint's signing secret, for the system that verifies its messages.
pub async fn secret(store: &Store, id: &str) -> Result<String, AdapterError> {
    let row: Option<(Vec<u8>,)> =
        sqlx::query_as("SELECT secret FROM webhook_endpoints WHERE endpoint_id = ?")
            .bind(id)
            .fetch_optional(store.pool())
            .await?;
    let (sealed,) = row.ok_or_else(|| not_found("webhook endpoint", id))?;
    open_secret(store, id, &sealed)
}

/// The purpose an endpoint's secret is sealed at rest under (`at_rest`), bound to its endpoint.
const SECRET_AT_REST: &str = "webhook_endpoints.secret";

/// An endpoint's secret, opened with the store key.
pub(super) fn open_secret(
    store: &Store,
    endpoint_id: &str,
    sealed: &[u8],
) -> Result<String, AdapterError> {
    store.vault().open_text(SECRET_AT_REST, endpoint_id, sealed)
}

/// Messages, oldest first, filtered.
pub async fn messages(
    store: &Store,
    filter: &MessageFilter,
) -> Result<Vec<MessageView>, AdapterError> {
    let rows: Vec<MessageRow> = sqlx::query_as(
        "SELECT message_id, endpoint_id, event_type, payload, created_at, delivered_at, \
         next_attempt_at, first_failed_at, attempts, last_status, last_error, last_latency_ms \
         FROM webhook_messages WHERE (?1 IS NULL OR endpoint_id = ?1) ORDER BY seq",
    )
    .bind(filter.endpoint.as_deref())
    .fetch_all(store.pool())
    .await?;
    let views = rows
        .into_iter()
        .map(MessageView::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(views
        .into_iter()
        .filter(|m| filter.status.is_none_or(|s| s == m.status))
        .collect())
}

/// One message.
pub async fn message(store: &Store, msg_id: &str) -> Result<MessageView, AdapterError> {
    let row: Option<MessageRow> = sqlx::query_as(
        "SELECT message_id, endpoint_id, event_type, payload, created_at, delivered_at, \
         next_attempt_at, first_failed_at, attempts, last_status, last_error, last_latency_ms \
         FROM webhook_messages WHERE message_id = ?",
    )
    .bind(msg_id)
    .fetch_optional(store.pool())
    .await?;
    row.map(MessageView::try_from)
        .transpose()?
        .ok_or_else(|| not_found("webhook message", msg_id))
}

/// Every attempt of a message, first first.
pub async fn attempts(store: &Store, msg_id: &str) -> Result<Vec<AttemptView>, AdapterError> {
    message(store, msg_id).await?;
    let rows: Vec<AttemptRow> = sqlx::query_as(
        "SELECT attempt, at, status_code, error, latency_ms FROM webhook_attempts \
         WHERE message_id = ? ORDER BY attempt",
    )
    .bind(msg_id)
    .fetch_all(store.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| AttemptView {
            attempt: row.attempt,
            at: rfc3339(row.at),
            status_code: row.status_code.and_then(|c| u16::try_from(c).ok()),
            error: row.error,
            latency_ms: row.latency_ms,
        })
        .collect())
}

/// Schedules a message (delivered or failing) again now, with the same id: a new attempt, its
/// backoff started afresh, and its endpoint no longer taken to be down. A message of a disabled
/// endpoint waits for it to be enabled.
pub async fn resend(store: &Store, msg_id: &str) -> Result<MessageView, AdapterError> {
    let owned = msg_id.to_owned();
    store
        .write(move |conn| {
            match conn.execute(
                "UPDATE webhook_messages SET delivered_at = NULL, next_attempt_at = ?2, \
                 first_failed_at = NULL, failures = 0 WHERE message_id = ?1",
                rusqlite::params![owned, now_ms()],
            )? {
                0 => Err(not_found("webhook message", &owned)),
                _ => {
                    conn.execute(
                        "UPDATE webhook_endpoints SET down_until = NULL WHERE endpoint_id = \
                         (SELECT endpoint_id FROM webhook_messages WHERE message_id = ?1)",
                        [&owned],
                    )?;
                    Ok(())
                }
            }
        })
        .await?;
    message(store, msg_id).await
}

/// Refuses a URL the adapter must not post to: anything but `https://`, except `http://` to this
/// machine (a system on the same laptop), since an event in clear could be read on the way.
fn check_url(url: &str) -> Result<(), AdapterError> {
    let invalid = |reason: String| AdapterError::Invalid {
        field: "url".into(),
        reason,
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| invalid(format!("{url:?} is not a URL: {e}")))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| invalid(format!("{url:?} names no host")))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback(host) => Ok(()),
        Some("http") => Err(invalid(format!(
            "{url:?}: http:// only to this machine (localhost, 127.0.0.1, [::1]); use https://"
        ))),
        _ => Err(invalid(format!("{url:?} is not an https:// URL"))),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn not_found(what: &'static str, id: &str) -> AdapterError {
    AdapterError::NotFound {
        what,
        id: id.to_owned(),
    }
}

/// Now, in the unit the webhook tables keep times in.
pub(crate) fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// A time kept in unix milliseconds, as people and systems read it.
pub(crate) fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_default()
}

const ENDPOINT_SELECT: &str = "SELECT endpoint_id, url, event_types, description, enabled, \
     disabled_reason, disabled_at, created_at FROM webhook_endpoints ORDER BY created_at, endpoint_id";

#[derive(sqlx::FromRow)]
struct EndpointRow {
    endpoint_id: String,
    url: String,
    event_types: String,
    description: String,
    enabled: bool,
    disabled_reason: Option<String>,
    disabled_at: Option<i64>,
    created_at: i64,
}

impl TryFrom<EndpointRow> for Endpoint {
    type Error = AdapterError;

    fn try_from(row: EndpointRow) -> Result<Self, Self::Error> {
        Ok(Self {
            event_types: serde_json::from_str(&row.event_types).map_err(|e| {
                AdapterError::Invalid {
                    field: "webhook_endpoints.event_types".into(),
                    reason: e.to_string(),
                }
            })?,
            id: row.endpoint_id,
            url: row.url,
            description: row.description,
            enabled: row.enabled,
            disabled_reason: row.disabled_reason,
            disabled_at: row.disabled_at.map(rfc3339),
            created_at: rfc3339(row.created_at),
        })
    }
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    attempt: i64,
    at: i64,
    status_code: Option<i64>,
    error: Option<String>,
    latency_ms: i64,
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    message_id: String,
    endpoint_id: String,
    event_type: String,
    payload: String,
    created_at: i64,
    delivered_at: Option<i64>,
    next_attempt_at: i64,
    first_failed_at: Option<i64>,
    attempts: i64,
    last_status: Option<i64>,
    last_error: Option<String>,
    last_latency_ms: Option<i64>,
}

impl TryFrom<MessageRow> for MessageView {
    type Error = AdapterError;

    fn try_from(row: MessageRow) -> Result<Self, Self::Error> {
        let status = match (row.delivered_at, row.first_failed_at) {
            (Some(_), _) => MessageStatus::Delivered,
            (None, Some(_)) => MessageStatus::Failing,
            (None, None) => MessageStatus::Pending,
        };
        Ok(Self {
            event_type: row.event_type.parse()?,
            payload: serde_json::from_str(&row.payload).map_err(|e| AdapterError::Invalid {
                field: "webhook_messages.payload".into(),
                reason: e.to_string(),
            })?,
            id: row.message_id,
            endpoint_id: row.endpoint_id,
            status,
            attempts: row.attempts,
            last_status: row.last_status.and_then(|c| u16::try_from(c).ok()),
            last_error: row.last_error,
            last_latency_ms: row.last_latency_ms,
            next_attempt_at: row
                .delivered_at
                .is_none()
                .then(|| rfc3339(row.next_attempt_at)),
            created_at: rfc3339(row.created_at),
            delivered_at: row.delivered_at.map(rfc3339),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_http_to_this_machine_is_accepted() {
        for ok in [
            "https://oscar.example.org/hooks/spean",
            "http://127.0.0.1:8080/hook",
            "http://localhost/hook",
            "http://[::1]:9000/",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://oscar.example.org/hook",
            "http://10.0.0.5/hook",
            "ftp://127.0.0.1/",
            "oscar.example.org",
            "",
        ] {
            match check_url(bad) {
                Err(AdapterError::Invalid { field, .. }) => assert_eq!(field, "url", "{bad}"),
                other => panic!("{bad} was not refused: {other:?}"),
            }
        }
    }

    #[test]
    fn event_types_read_and_write_as_their_dotted_names() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>().unwrap(), t);
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        assert!("referral.new".parse::<EventType>().is_err());
    }
}
