//! The local SQLite copy of everything that concerns this agency, shared by the daemon and the command
//! line (WAL mode, a busy timeout, and `BEGIN IMMEDIATE` so two processes queue instead of failing).
//!
//! Every write that stores something received is idempotent: referrals by referral id, events by event
//! id, deliveries by delivery id. A referral's state is the `state_after` of its newest event (event ids
//! are UUIDv7, so the greatest id is the newest), whatever order the events arrived in.

use std::{path::Path, str::FromStr, time::Duration};

use prost::Message;
use spean_proto::v1::{Delivery, Envelope, FeedbackEvent, Referral, delivery, feedback_event};
use sqlx::{
    Row, SqliteConnection, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use time::{OffsetDateTime, format_description::BorrowedFormatItem, macros::format_description};

use crate::{
    AdapterError,
    referral::{age_band_name, kind_name, sex_name, state_name, urgency_name},
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a write waits for the other process (daemon or command) to finish its transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a write transaction up front, so it waits on the busy timeout instead of failing on upgrade.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// The local store; cheap to clone (a connection pool).
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

/// What storing one delivery did, for the daemon's log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// A referral, `new` if it was not stored before.
    Referral { referral_id: String, new: bool },
    /// A feedback event, `new` if it was not stored before.
    Event {
        event_id: String,
        referral_id: String,
        kind: String,
        state_after: String,
        new: bool,
    },
    /// This delivery id was stored before: nothing was written.
    RepeatedDelivery,
    /// A delivery without a payload (a newer broker?): recorded so it is confirmed, nothing else.
    Empty,
}

/// A referral as stored: the columns listings need, plus the encoded envelope and case file.
#[derive(Clone, sqlx::FromRow)]
pub struct ReferralRow {
    pub referral_id: String,
    pub client_ref: String,
    pub sender: String,
    pub recipient: String,
    pub kind: String,
    pub urgency: String,
    pub subject_sex: String,
    pub subject_age_band: String,
    pub subject_province: String,
    pub client_pseudonym: String,
    pub state: String,
    pub last_event_id: Option<String>,
    pub case_file: Vec<u8>,
    pub envelope: Vec<u8>,
    pub created_at: String,
    pub updated_at: String,
    pub received_at: String,
}

impl ReferralRow {
    pub fn decode_envelope(&self) -> Result<Envelope, AdapterError> {
        Envelope::decode(self.envelope.as_slice()).map_err(|source| AdapterError::Decode {
            what: "envelope",
            source,
        })
    }
}

/// One request waiting for, sent to, or refused by the broker.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub seq: i64,
    pub request_id: String,
    pub operation: String,
    pub referral_id: Option<String>,
    pub payload: Vec<u8>,
    pub status: String,
    pub error: Option<String>,
    pub attempts: i64,
    pub created_at: String,
    pub sent_at: Option<String>,
}

const REFERRAL_COLUMNS: &str = "referral_id, client_ref, sender, recipient, kind, urgency, subject_sex, \
     subject_age_band, subject_province, client_pseudonym, state, last_event_id, case_file, envelope, \
     created_at, updated_at, received_at";

const OUTBOX_COLUMNS: &str = "seq, request_id, operation, referral_id, payload, status, error, attempts, created_at, sent_at";

impl Store {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, AdapterError> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a delivery is confirmed to the broker only after it is stored, so the store
            // must survive power loss too, or a confirmed referral could vanish.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT);
        // A daemon and a command started together on a fresh file race to switch it to WAL and to
        // migrate; SQLite answers the loser "database is locked" at once, without waiting on the
        // busy timeout. The loser tries again and finds the file ready.
        let mut attempt: u32 = 0;
        loop {
            match Self::connect(options.clone()).await {
                Ok(pool) => return Ok(Self { pool }),
                Err(_) if attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn connect(options: SqliteConnectOptions) -> Result<SqlitePool, AdapterError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(pool)
    }

    /// Closes the pool, checkpointing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Stores one delivery in one transaction: the delivery id, and the referral (with its history) or
    /// the event it carries. Storing the same delivery, referral or event again changes nothing.
    pub async fn store_delivery(&self, delivery: &Delivery) -> Result<Stored, AdapterError> {
        let mut stored = self
            .store_deliveries(std::slice::from_ref(delivery))
            .await?;
        stored.pop().ok_or_else(|| {
            AdapterError::Unavailable("storing a delivery returned no outcome".into())
        })
    }

    /// Stores deliveries that arrived together in one transaction (one fsync for all of them), each
    /// as [`Store::store_delivery`] would; the outcomes are in the same order.
    pub async fn store_deliveries(
        &self,
        deliveries: &[Delivery],
    ) -> Result<Vec<Stored>, AdapterError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let mut outcomes = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            outcomes.push(put_delivery(&mut tx, delivery).await?);
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Stores a referral and its history (idempotent); true if the referral was new.
    pub async fn store_referral(&self, referral: &Referral) -> Result<bool, AdapterError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let new = put_referral(&mut tx, referral).await?;
        tx.commit().await?;
        Ok(new)
    }

    /// Stores one event (idempotent) and moves its referral's state; true if the event was new.
    pub async fn store_event(&self, event: &FeedbackEvent) -> Result<bool, AdapterError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let new = put_event(&mut tx, event).await?;
        refresh_referral(&mut tx, &event.referral_id).await?;
        tx.commit().await?;
        Ok(new)
    }

    pub async fn referral(&self, referral_id: &str) -> Result<Option<ReferralRow>, AdapterError> {
        let sql = format!("SELECT {REFERRAL_COLUMNS} FROM referrals WHERE referral_id = ?");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(referral_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Referrals addressed to `agency`, newest first.
    pub async fn received_by(&self, agency: &str) -> Result<Vec<ReferralRow>, AdapterError> {
        let sql = format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals WHERE recipient = ? \
             ORDER BY created_at DESC, referral_id DESC"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(agency)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Referrals `agency` sent, newest first.
    pub async fn sent_by(&self, agency: &str) -> Result<Vec<ReferralRow>, AdapterError> {
        let sql = format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals WHERE sender = ? \
             ORDER BY created_at DESC, referral_id DESC"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(agency)
            .fetch_all(&self.pool)
            .await?)
    }

    /// A referral's events, oldest first.
    pub async fn history(&self, referral_id: &str) -> Result<Vec<FeedbackEvent>, AdapterError> {
        let rows =
            sqlx::query("SELECT encoded FROM events WHERE referral_id = ? ORDER BY event_id ASC")
                .bind(referral_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                let bytes: Vec<u8> = row.try_get("encoded")?;
                FeedbackEvent::decode(bytes.as_slice()).map_err(|source| AdapterError::Decode {
                    what: "stored event",
                    source,
                })
            })
            .collect()
    }

    /// Writes a request to the outbox as `pending`. Writing the same request (same key, operation and
    /// bytes) again is a no-op, so a command retried by hand does not queue twice; the caller reads
    /// the row to learn where it stands. A key already used for a different request is refused:
    /// queuing it would answer the new request with the old one's row, and it would never be sent.
    pub async fn enqueue(
        &self,
        request_id: &str,
        operation: &str,
        referral_id: Option<&str>,
        payload: &[u8],
    ) -> Result<(), AdapterError> {
        let inserted = sqlx::query(
            "INSERT INTO outbox (request_id, operation, referral_id, payload, status, created_at) \
             VALUES (?, ?, ?, ?, 'pending', ?) ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(request_id)
        .bind(operation)
        .bind(referral_id)
        .bind(payload)
        .bind(now())
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted > 0 {
            return Ok(());
        }
        // A row's key, operation and payload never change once written, so this read cannot race
        // with another writer into a wrong verdict.
        let existing = self
            .outbox_row(request_id)
            .await?
            .ok_or_else(|| AdapterError::Invalid {
                field: "outbox.request_id",
                reason: format!("{request_id:?} conflicted on insert but cannot be read back"),
            })?;
        if existing.operation == operation && existing.payload == payload {
            return Ok(());
        }
        Err(AdapterError::KeyReused {
            field: if operation == "submit" {
                "client_ref"
            } else {
                "request_id"
            },
            key: request_id.to_owned(),
            operation: existing.operation,
            status: existing.status,
        })
    }

    /// The oldest pending request: the outbox is sent in order.
    pub async fn next_pending(&self) -> Result<Option<OutboxRow>, AdapterError> {
        let sql = format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE status = 'pending' ORDER BY seq LIMIT 1"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn outbox_row(&self, request_id: &str) -> Result<Option<OutboxRow>, AdapterError> {
        let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE request_id = ?");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Every outbox row, oldest first.
    pub async fn outbox(&self) -> Result<Vec<OutboxRow>, AdapterError> {
        let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox ORDER BY seq");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?)
    }

    /// Stores the referral the broker returned for a submit and marks the request sent, together.
    pub async fn record_submitted(
        &self,
        request_id: &str,
        referral: &Referral,
    ) -> Result<(), AdapterError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        put_referral(&mut tx, referral).await?;
        mark_sent(&mut tx, request_id, Some(referral_id_of(referral))).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores the event the broker returned for an action and marks the request sent, together.
    pub async fn record_event(
        &self,
        request_id: &str,
        event: &FeedbackEvent,
    ) -> Result<(), AdapterError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        put_event(&mut tx, event).await?;
        refresh_referral(&mut tx, &event.referral_id).await?;
        mark_sent(&mut tx, request_id, Some(&event.referral_id)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The broker refused the request for good: keep it, with why, and never send it again.
    pub async fn mark_rejected(&self, request_id: &str, error: &str) -> Result<(), AdapterError> {
        sqlx::query(
            "UPDATE outbox SET status = 'rejected', error = ?, attempts = attempts + 1 \
             WHERE request_id = ? AND status = 'pending'",
        )
        .bind(error)
        .bind(request_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A try that did not reach a verdict: the row stays pending, with the last error for `status`.
    pub async fn note_failed_attempt(
        &self,
        request_id: &str,
        error: &str,
    ) -> Result<(), AdapterError> {
        sqlx::query(
            "UPDATE outbox SET error = ?, attempts = attempts + 1 \
             WHERE request_id = ? AND status = 'pending'",
        )
        .bind(error)
        .bind(request_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

fn referral_id_of(referral: &Referral) -> &str {
    referral
        .envelope
        .as_ref()
        .map_or("", |e| e.referral_id.as_str())
}

async fn mark_sent(
    conn: &mut SqliteConnection,
    request_id: &str,
    referral_id: Option<&str>,
) -> Result<(), AdapterError> {
    sqlx::query(
        "UPDATE outbox SET status = 'sent', error = NULL, sent_at = ?, \
         referral_id = COALESCE(referral_id, ?) WHERE request_id = ? AND status <> 'sent'",
    )
    .bind(now())
    .bind(referral_id)
    .bind(request_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Stores one delivery inside an open transaction; a delivery id seen before changes nothing.
async fn put_delivery(
    tx: &mut SqliteConnection,
    delivery: &Delivery,
) -> Result<Stored, AdapterError> {
    let seen = sqlx::query("SELECT 1 FROM deliveries WHERE delivery_id = ?")
        .bind(&delivery.delivery_id)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
    if seen {
        return Ok(Stored::RepeatedDelivery);
    }
    let stored = match &delivery.payload {
        Some(delivery::Payload::Referral(referral)) => {
            let new = put_referral(tx, referral).await?;
            Stored::Referral {
                referral_id: referral_id_of(referral).to_owned(),
                new,
            }
        }
        Some(delivery::Payload::Feedback(event)) => {
            let new = put_event(tx, event).await?;
            refresh_referral(tx, &event.referral_id).await?;
            Stored::Event {
                event_id: event.event_id.clone(),
                referral_id: event.referral_id.clone(),
                kind: kind_name(event.kind),
                state_after: state_name(event.state_after),
                new,
            }
        }
        None => Stored::Empty,
    };
    sqlx::query("INSERT INTO deliveries (delivery_id, received_at) VALUES (?, ?)")
        .bind(&delivery.delivery_id)
        .bind(now())
        .execute(&mut *tx)
        .await?;
    Ok(stored)
}

/// Inserts or refreshes a referral and stores its history; true if the referral was not stored before.
async fn put_referral(
    conn: &mut SqliteConnection,
    referral: &Referral,
) -> Result<bool, AdapterError> {
    let envelope = referral.envelope.clone().unwrap_or_default();
    if envelope.referral_id.is_empty() {
        return Err(AdapterError::Invalid {
            field: "referral.envelope.referral_id",
            reason: "missing".into(),
        });
    }
    let subject = envelope.subject.clone().unwrap_or_default();
    let existed = sqlx::query("SELECT 1 FROM referrals WHERE referral_id = ?")
        .bind(&envelope.referral_id)
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
    let created_at = timestamp(envelope.created_at.as_ref());
    let updated_at = timestamp(envelope.updated_at.as_ref());
    if existed {
        // A later copy (a redelivery, or the submit answer after a redelivered event) refreshes the
        // envelope; an empty case file never overwrites one we have.
        sqlx::query(
            "UPDATE referrals SET recipient = ?, envelope = ?, \
             case_file = CASE WHEN length(?) > 0 THEN ? ELSE case_file END, \
             updated_at = max(updated_at, ?) WHERE referral_id = ?",
        )
        .bind(&envelope.recipient_agency_id)
        .bind(envelope.encode_to_vec())
        .bind(&referral.case_file)
        .bind(&referral.case_file)
        .bind(&updated_at)
        .bind(&envelope.referral_id)
        .execute(&mut *conn)
        .await?;
    } else {
        sqlx::query(
            "INSERT INTO referrals (referral_id, client_ref, sender, recipient, kind, urgency, \
             subject_sex, subject_age_band, subject_province, client_pseudonym, state, case_file, \
             envelope, created_at, updated_at, received_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&envelope.referral_id)
        .bind(&envelope.client_ref)
        .bind(&envelope.sender_agency_id)
        .bind(&envelope.recipient_agency_id)
        .bind(&envelope.kind)
        .bind(urgency_name(envelope.urgency))
        .bind(sex_name(subject.sex))
        .bind(age_band_name(subject.age_band))
        .bind(&subject.province)
        .bind(&envelope.client_pseudonym)
        .bind(state_name(referral.state))
        .bind(&referral.case_file)
        .bind(envelope.encode_to_vec())
        .bind(&created_at)
        .bind(&updated_at)
        .bind(now())
        .execute(&mut *conn)
        .await?;
    }
    for event in &referral.history {
        put_event(conn, event).await?;
    }
    refresh_referral(conn, &envelope.referral_id).await?;
    Ok(!existed)
}

/// Inserts an event unless stored before; true if it was new. The referral need not exist yet.
async fn put_event(
    conn: &mut SqliteConnection,
    event: &FeedbackEvent,
) -> Result<bool, AdapterError> {
    if event.event_id.is_empty() {
        return Err(AdapterError::Invalid {
            field: "event.event_id",
            reason: "missing".into(),
        });
    }
    let redirect_to = match &event.details {
        Some(feedback_event::Details::Redirected(r)) => Some(r.to_agency_id.as_str()),
        _ => None,
    };
    let inserted = sqlx::query(
        "INSERT INTO events (event_id, referral_id, kind, actor_agency_id, actor_person, at, note, \
         state_after, redirect_to, encoded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&event.event_id)
    .bind(&event.referral_id)
    .bind(kind_name(event.kind))
    .bind(&event.actor_agency_id)
    .bind(&event.actor_person)
    .bind(timestamp(event.at.as_ref()))
    .bind(&event.note)
    .bind(state_name(event.state_after))
    .bind(redirect_to)
    .bind(event.encode_to_vec())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(inserted > 0)
}

/// Makes a referral's state, last event, update time and (after a redirect) recipient follow its
/// newest stored event. Does nothing when the referral is not stored yet.
async fn refresh_referral(
    conn: &mut SqliteConnection,
    referral_id: &str,
) -> Result<(), AdapterError> {
    sqlx::query(
        "UPDATE referrals SET \
           state = COALESCE((SELECT state_after FROM events WHERE referral_id = ?1 \
                             ORDER BY event_id DESC LIMIT 1), state), \
           last_event_id = (SELECT event_id FROM events WHERE referral_id = ?1 \
                            ORDER BY event_id DESC LIMIT 1), \
           updated_at = max(updated_at, COALESCE((SELECT max(at) FROM events \
                                                  WHERE referral_id = ?1), '')), \
           recipient = COALESCE((SELECT redirect_to FROM events WHERE referral_id = ?1 \
                                 AND redirect_to IS NOT NULL ORDER BY event_id DESC LIMIT 1), \
                                recipient) \
         WHERE referral_id = ?1",
    )
    .bind(referral_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// RFC 3339 in UTC with a fixed number of fraction digits, so that text order is time order.
const SORTABLE_RFC3339: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// A proto timestamp as RFC 3339 (UTC), or "" when absent.
pub fn timestamp(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|ts| {
        let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
        OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
    })
    .and_then(|at| at.format(SORTABLE_RFC3339).ok())
    .unwrap_or_default()
}

/// The current time as RFC 3339 (UTC), for local bookkeeping columns.
pub fn now() -> String {
    OffsetDateTime::now_utc()
        .format(SORTABLE_RFC3339)
        .unwrap_or_default()
}
