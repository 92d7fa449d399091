//! The dispatcher: the daemon's loop that posts due messages, signed, and records every attempt.
//!
//! Order: a message is not tried while an earlier message of the same endpoint and referral is
//! undelivered, so a system sees a referral's events in the order they happened; messages of other
//! referrals go on meanwhile. An endpoint that does not answer at all (refused, timed out) is
//! "down": none of its messages is tried until the failed one's next attempt, so an endpoint that
//! is down is not called once per referral. After a failure a message waits longer each time
//! ([`WebhookSettings::retry_delay`]); when an endpoint's oldest undelivered message has been
//! failing for longer than `disable_after`, the endpoint is disabled and its messages wait, kept.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::StreamExt;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rusqlite::{OptionalExtension, params};
use tokio_util::sync::CancellationToken;

use super::{WebhookSettings, now_ms, rfc3339, signing};
use crate::{AdapterError, store::Store};

/// How often an idle dispatcher looks for messages a command or the delivery loop wrote.
const POLL: Duration = Duration::from_millis(100);

/// How many messages one pass takes at most; the next pass takes the rest.
const BATCH: i64 = 256;

/// How many endpoints are posted to at once.
const CONCURRENT_ENDPOINTS: usize = 8;

/// A message whose turn has come, with its endpoint's secret opened. No `Debug`: it holds the
/// secret.
#[derive(Clone)]
struct Due {
    message_id: String,
    endpoint_id: String,
    url: String,
    secret: String,
    payload: String,
}

/// [`Due`] as stored: the secret sealed at rest.
#[derive(sqlx::FromRow)]
struct DueRow {
    message_id: String,
    endpoint_id: String,
    url: String,
    secret: Vec<u8>,
    payload: String,
}

/// What one attempt came to.
#[derive(Debug)]
struct Outcome {
    status: Option<u16>,
    error: Option<String>,
    latency_ms: i64,
}

impl Outcome {
    fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Posts due messages until `shutdown` is cancelled (between passes, never in the middle of
/// recording an attempt). The daemon runs it beside the delivery and relay loops; tests run it
/// alone against a store and a receiver of their own.
pub async fn run_until_stopped(
    store: &Store,
    settings: &WebhookSettings,
    shutdown: &CancellationToken,
) {
    let client = match Client::new() {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "webhooks: cannot build the HTTP client; no webhook is sent");
            return;
        }
    };
    while !shutdown.is_cancelled() {
        let worked = match pass(store, settings, &client, shutdown).await {
            Ok(worked) => worked,
            Err(error) => {
                tracing::error!(%error, "webhooks: cannot read or record messages");
                false
            }
        };
        if !worked {
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }
}

/// One pass: every due message, endpoints side by side (a few at a time), each endpoint's messages
/// one after the other. True if it tried any.
async fn pass(
    store: &Store,
    settings: &WebhookSettings,
    client: &Client,
    shutdown: &CancellationToken,
) -> Result<bool, AdapterError> {
    let due = due(store).await?;
    if due.is_empty() {
        return Ok(false);
    }
    let mut by_endpoint: BTreeMap<String, Vec<Due>> = BTreeMap::new();
    for message in due {
        by_endpoint
            .entry(message.endpoint_id.clone())
            .or_default()
            .push(message);
    }
    let results: Vec<Result<(), AdapterError>> = futures::stream::iter(by_endpoint.into_values())
        .map(|messages| post_in_turn(store, settings, client, messages, shutdown))
        .buffer_unordered(CONCURRENT_ENDPOINTS)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(true)
}

/// Posts one endpoint's due messages in turn; stops at the first that found nobody listening, or
/// when shutdown is asked for (between two messages: an attempt made is always recorded).
async fn post_in_turn(
    store: &Store,
    settings: &WebhookSettings,
    client: &Client,
    messages: Vec<Due>,
    shutdown: &CancellationToken,
) -> Result<(), AdapterError> {
    for message in messages {
        if shutdown.is_cancelled() {
            break;
        }
        let outcome = client.post(&message, settings.request_timeout).await;
        let unanswered = outcome.status.is_none();
        record(store, settings, &message, outcome).await?;
        if unanswered {
            break;
        }
    }
    Ok(())
}

/// The messages whose turn has come: undelivered, due, of an enabled endpoint that is not down,
/// and with no earlier undelivered message of the same endpoint and referral.
async fn due(store: &Store) -> Result<Vec<Due>, AdapterError> {
    let now = now_ms();
    let rows: Vec<DueRow> = sqlx::query_as(
        "SELECT m.message_id, m.endpoint_id, e.url, e.secret, m.payload \
         FROM webhook_messages m JOIN webhook_endpoints e ON e.endpoint_id = m.endpoint_id \
         WHERE m.delivered_at IS NULL AND m.next_attempt_at <= ?1 AND e.enabled = 1 \
           AND (e.down_until IS NULL OR e.down_until <= ?1) \
           AND NOT EXISTS (SELECT 1 FROM webhook_messages p WHERE p.endpoint_id = m.endpoint_id \
                           AND p.order_key = m.order_key AND p.delivered_at IS NULL \
                           AND p.seq < m.seq) \
         ORDER BY m.seq LIMIT ?2",
    )
    .bind(now)
    .bind(BATCH)
    .fetch_all(store.pool())
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(Due {
                secret: super::open_secret(store, &row.endpoint_id, &row.secret)?,
                message_id: row.message_id,
                endpoint_id: row.endpoint_id,
                url: row.url,
                payload: row.payload,
            })
        })
        .collect()
}

/// Records an attempt and what follows from it, in one transaction: delivered; or failing, with
/// its next attempt, the endpoint down until then if nobody answered, and the endpoint disabled
/// if its oldest undelivered message has been failing for longer than `disable_after`.
async fn record(
    store: &Store,
    settings: &WebhookSettings,
    message: &Due,
    outcome: Outcome,
) -> Result<(), AdapterError> {
    let (message_id, endpoint_id) = (message.message_id.clone(), message.endpoint_id.clone());
    let settings = settings.clone();
    let failed = (!outcome.delivered()).then(|| outcome.error.clone().unwrap_or_default());
    let disabled = store
        .write(move |conn| {
            let now = now_ms();
            let attempt: Option<i64> = conn
                .query_row(
                    "UPDATE webhook_messages SET attempts = attempts + 1, last_status = ?2, \
                     last_error = ?3, last_latency_ms = ?4 WHERE message_id = ?1 \
                     RETURNING attempts",
                    params![
                        message_id,
                        outcome.status,
                        outcome.error,
                        outcome.latency_ms
                    ],
                    |row| row.get(0),
                )
                .optional()?;
            // Removed (with its endpoint) while it was being posted: nothing left to record.
            let Some(attempt) = attempt else {
                return Ok(None);
            };
            conn.execute(
                "INSERT INTO webhook_attempts (message_id, attempt, at, status_code, error, \
                 latency_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    message_id,
                    attempt,
                    now,
                    outcome.status,
                    outcome.error,
                    outcome.latency_ms
                ],
            )?;
            if outcome.delivered() {
                conn.execute(
                    "UPDATE webhook_messages SET delivered_at = ?2, first_failed_at = NULL, \
                     failures = 0 WHERE message_id = ?1",
                    params![message_id, now],
                )?;
                conn.execute(
                    "UPDATE webhook_endpoints SET down_until = NULL WHERE endpoint_id = ?1",
                    params![endpoint_id],
                )?;
                return Ok(None);
            }
            let failures: u32 = conn.query_row(
                "UPDATE webhook_messages SET failures = failures + 1, \
                 first_failed_at = COALESCE(first_failed_at, ?2) WHERE message_id = ?1 \
                 RETURNING failures",
                params![message_id, now],
                |row| row.get(0),
            )?;
            let wait = settings.retry_delay(failures);
            let next = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
            conn.execute(
                "UPDATE webhook_messages SET next_attempt_at = ?2 WHERE message_id = ?1",
                params![message_id, next],
            )?;
            if outcome.status.is_none() {
                conn.execute(
                    "UPDATE webhook_endpoints SET down_until = ?2 WHERE endpoint_id = ?1",
                    params![endpoint_id, next],
                )?;
            }
            let failing_since: Option<i64> = conn.query_row(
                "SELECT min(first_failed_at) FROM webhook_messages \
                 WHERE endpoint_id = ?1 AND delivered_at IS NULL",
                params![endpoint_id],
                |row| row.get(0),
            )?;
            let limit = i64::try_from(settings.disable_after.as_millis()).unwrap_or(i64::MAX);
            let Some(since) = failing_since.filter(|since| now.saturating_sub(*since) > limit)
            else {
                return Ok(None);
            };
            let reason = format!(
                "failing since {}: {}",
                rfc3339(since),
                outcome.error.as_deref().unwrap_or("no 2xx answer")
            );
            conn.execute(
                "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?2, \
                 disabled_at = ?3 WHERE endpoint_id = ?1 AND enabled = 1",
                params![endpoint_id, reason, now],
            )?;
            Ok(Some(reason))
        })
        .await?;
    // Ids, status codes and the transport's errors only: a payload never reaches a log line.
    if let Some(reason) = disabled {
        tracing::error!(endpoint_id = %message.endpoint_id, %reason, "webhook endpoint disabled; its messages are kept until `webhook enable`");
    } else if let Some(error) = failed {
        tracing::warn!(message_id = %message.message_id, endpoint_id = %message.endpoint_id, %error, "webhook not delivered; will retry");
    } else {
        tracing::debug!(message_id = %message.message_id, endpoint_id = %message.endpoint_id, "webhook delivered");
    }
    Ok(())
}

/// Posts over HTTP/1.1, one connection per attempt (webhooks are few, and a fresh connection
/// never finds a pooled one the receiver closed), over TLS for `https://` with the web's roots.
struct Client {
    tls: tokio_rustls::TlsConnector,
}

impl Client {
    fn new() -> Result<Self, AdapterError> {
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| AdapterError::Config(format!("webhooks TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// One attempt, signed now, bounded by `timeout`.
    async fn post(&self, message: &Due, timeout: Duration) -> Outcome {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(timeout, self.send(message)).await;
        let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let (status, error) = match result {
            Ok(Ok(status)) if (200..300).contains(&status) => (Some(status), None),
            Ok(Ok(status)) => (Some(status), Some(format!("HTTP {status}"))),
            Ok(Err(error)) => (None, Some(error)),
            Err(_) => (
                None,
                Some(format!("no answer within {}s", timeout.as_secs())),
            ),
        };
        Outcome {
            status,
            error,
            latency_ms,
        }
    }

    async fn send(&self, message: &Due) -> Result<u16, String> {
        let uri: http::Uri = message.url.parse().map_err(|e| format!("bad URL: {e}"))?;
        let host = uri.host().ok_or("the URL names no host")?.to_owned();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = signing::signature(
            &message.secret,
            &message.message_id,
            timestamp,
            &message.payload,
        )
        .map_err(|e| e.to_string())?;
        let request = http::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
            // Host and port only: never user information a URL might carry.
            .header(
                http::header::HOST,
                match uri.port_u16() {
                    Some(port) => format!("{host}:{port}"),
                    None => host.clone(),
                },
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("spean-adapter/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", &message.message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::from(message.payload.clone())))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        if https {
            let name = rustls::pki_types::ServerName::try_from(bare)
                .map_err(|e| format!("bad host name: {e}"))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            exchange(TokioIo::new(tls), request).await
        } else {
            exchange(TokioIo::new(tcp), request).await
        }
    }
}

/// Sends one request on a fresh connection and reads the answer's status. The body is not read:
/// nothing in it counts, and an endpoint cannot make the daemon hold a large one.
async fn exchange<I>(io: I, request: http::Request<Full<Bytes>>) -> Result<u16, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"));
    let status = match response {
        Ok(response) => Ok(response.status().as_u16()),
        Err(error) => Err(error),
    };
    driver.abort();
    status
}
