//! The local SQLite copy of everything that concerns this agency, shared by the daemon and the command
//! line (WAL mode, a busy timeout, and `BEGIN IMMEDIATE` so two processes queue instead of failing).
//!
//! Whatever stores what the broker sent (deliveries, and the answers to submits and actions) runs on
//! one plain `rusqlite` connection, a whole transaction per hand-off to a blocking thread. The rest
//! (listings, the outbox) uses an sqlx pool, which runs each connection on a worker thread and hands
//! every statement and row across threads: cheap enough for a command, but on the delivery path,
//! several statements per delivery, those hand-offs cost more than the writes.
//!
//! Every write that stores something received is idempotent: referrals by referral id, events by event
//! id, deliveries by delivery id. A referral's state is the `state_after` of its newest event (event ids
//! are UUIDv7, so the greatest id is the newest), whatever order the events arrived in.
//!
//! The store knows which agency it belongs to, because what it may keep depends on it: once a
//! referral is redirected away from this agency (and this agency did not send it), the case file
//! it held is removed in the same transaction that stored the redirect, and the removal recorded in
//! `withdrawn_case_files` ([`withdraw_case_file_if_moved_on`]). Likewise, once the follow-up a
//! recipient delegated to this agency is taken back, the follow-up part of the case file its
//! delegation carried is stripped from the stored event in the transaction that stored the
//! revocation, and recorded there too ([`strip_ended_follow_up_parts`]). And once a referral's
//! consent is withdrawn, its case file and everything people wrote about it go, in every
//! transaction that stores something of it ([`consent::forget_if_withdrawn`]).
//!
//! A referral that names neither this agency as sender nor as recipient comes without its case file.
//! It is inserted only when the broker sent it to this agency as a notified party (an escalation or
//! a missed visit reached it, or the sender named it), as the delegate of its follow-up, or as a
//! candidate of a broadcast (`Referral.audience`); otherwise (a former recipient's view) it only
//! updates a referral already held. Each copy's audience is kept in `referral_audiences`.
//!
//! An open broadcast names no recipient: its `recipient` column holds "" until a candidate accepts.
//! The candidate that accepts is the recipient from then on, so an `accepted` event moves the
//! referral's recipient to its actor, as a `redirected` event moves it to where it went
//! ([`put_event`]); the winner's copy with the case file then fills in the candidate's copy held.

use std::{path::Path, str::FromStr, time::Duration};

use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use spean_domain::ids::AgencyId;
use spean_proto::v1::{
    Audience, Delivery, Envelope, FeedbackEvent, FeedbackKind, Referral, delivery, feedback_event,
};
use sqlx::{
    ConnectOptions, Row, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use time::{OffsetDateTime, format_description::BorrowedFormatItem, macros::format_description};

use crate::{
    AdapterError,
    at_rest::{self, StoreKey, Vault},
    consent, follow_up,
    referral::{age_band_name, audience_name, kind_name, sex_name, state_name, urgency_name},
    webhooks,
};

/// A statement slower than this is reported at `info` ([`Store::open`]).
const SLOW_STATEMENT: Duration = Duration::from_secs(1);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a write waits for the other process (daemon or command) to finish its transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a write transaction up front, so it waits on the busy timeout instead of failing on upgrade.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// Why a case file is withdrawn: the only way a referral leaves a recipient that did not send it.
const BECAUSE_REDIRECTED: &str = "redirected";

/// Why the follow-up part of a case file is withdrawn: the recipient took the follow-up back.
const BECAUSE_DELEGATION_REVOKED: &str = "delegation_revoked";

/// The local store; cheap to clone (a connection pool and a shared writing connection).
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    writer: std::sync::Arc<std::sync::Mutex<Connection>>,
    /// The agency this store belongs to: whether a case file may stay depends on who holds it.
    agency: AgencyId,
    /// Seals and opens the columns that hold case data or secrets ([`crate::at_rest`]).
    vault: Vault,
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
    /// A referral that names neither this agency as sender nor as recipient, is not held here, and
    /// was not sent to this agency as a notified party, a delegate or a broadcast's candidate (a
    /// former recipient's view):
    /// nothing was written, since such a referral is only ever an update to one held already.
    NotHeld { referral_id: String },
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
    /// How this agency stands to the referral (`recipient`, `notified`, `delegate`, ...), as the
    /// newest copy the broker sent said; empty when no copy said.
    pub audience: String,
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

/// The record of a case file (or the follow-up part of one) this agency held and removed because
/// the referral, or its follow-up, left it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Withdrawal {
    pub referral_id: String,
    /// When this store removed it (local clock, RFC 3339 UTC).
    pub withdrawn_at: String,
    /// The agency the referral went to, or the recipient that took its follow-up back.
    pub now_with: String,
    /// Why it left: `redirected`, or `delegation_revoked`.
    pub because: String,
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
     subject_age_band, subject_province, client_pseudonym, state, last_event_id, \
     COALESCE((SELECT audience FROM referral_audiences a WHERE a.referral_id = referrals.referral_id), '') \
     AS audience, case_file, envelope, created_at, updated_at, received_at";

const OUTBOX_COLUMNS: &str = "seq, request_id, operation, referral_id, payload, status, error, attempts, created_at, sent_at";

impl Store {
    /// Opens (creating if needed) the store of `agency` at `path` with the key file beside it
    /// ([`at_rest::key_beside`]): for tools and tests. The daemon and the commands use
    /// [`Store::open_with`] and the `store_key` setting, which keeps the key apart from the store.
    pub async fn open(path: &Path, agency: &AgencyId) -> Result<Self, AdapterError> {
        Self::open_with(path, agency, &StoreKey::File(at_rest::key_beside(path))).await
    }

    /// Opens (creating if needed) the store of `agency` at `path`, brings its schema up to date,
    /// and checks that `key` opens it before anything else is read or written (a wrong key is
    /// refused, naming its setting). A store that was never sealed (written by an earlier version)
    /// is sealed in place, in one transaction ([`at_rest::seal_in_place`]).
    pub async fn open_with(
        path: &Path,
        agency: &AgencyId,
        key: &StoreKey,
    ) -> Result<Self, AdapterError> {
        create_private(path)?;
        crate::private_files::tighten_store(path)?;
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a delivery is confirmed to the broker only after it is stored, so the store
            // must survive power loss too, or a confirmed referral could vanish.
            .synchronous(SqliteSynchronous::Full)
            // What is deleted (a withdrawn case file, notes once consent is withdrawn) is
            // overwritten, not left readable in free space.
            .pragma("secure_delete", "ON")
            .busy_timeout(BUSY_TIMEOUT)
            // sqlx warns of any statement over a second. On a field laptop's slow disk a
            // migration or a commit can take that long, and a command (which logs warnings
            // only) would print the warning before its own answer or error. The daemon, which
            // logs at info, still reports them.
            .log_slow_statements(log::LevelFilter::Info, SLOW_STATEMENT);
        // A daemon and a command started together on a fresh file race to switch it to WAL and to
        // migrate; SQLite answers the loser "database is locked" at once, without waiting on the
        // busy timeout. The loser tries again and finds the file ready.
        let mut attempt: u32 = 0;
        loop {
            match Self::connect(options.clone()).await {
                Ok(pool) => {
                    let writer = open_writer(path)?;
                    let (key, agency_id, store) = (key.clone(), agency.clone(), path.to_owned());
                    let (writer, vault) = tokio::task::spawn_blocking(move || {
                        at_rest::unlock(&writer, &key, &agency_id, &store)
                            .map(|vault| (writer, vault))
                    })
                    .await
                    .map_err(|e| {
                        AdapterError::Unavailable(format!("unlocking the store: {e}"))
                    })??;
                    return Ok(Self {
                        pool,
                        writer: std::sync::Arc::new(std::sync::Mutex::new(writer)),
                        agency: agency.clone(),
                        vault,
                    });
                }
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

    /// The reading pool, for modules that keep tables of their own here (API keys, webhooks,
    /// backup, retention).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The agency this store belongs to.
    pub fn agency(&self) -> &AgencyId {
        &self.agency
    }

    /// What seals and opens this store's columns: for other tables holding secrets (webhook
    /// endpoints' secrets), each under a purpose of its own and bound to its row id.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// A referral row as stored, with its case file opened.
    fn opened(&self, mut row: ReferralRow) -> Result<ReferralRow, AdapterError> {
        row.case_file = self
            .vault
            .open(at_rest::CASE_FILE, &row.referral_id, &row.case_file)?;
        Ok(row)
    }

    /// An outbox row as stored, with its request opened.
    fn opened_request(&self, mut row: OutboxRow) -> Result<OutboxRow, AdapterError> {
        row.payload = self
            .vault
            .open(at_rest::OUTBOX_PAYLOAD, &row.request_id, &row.payload)?;
        Ok(row)
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
        let deliveries = deliveries.to_vec();
        let (agency, vault) = (self.agency.clone(), self.vault.clone());
        self.write(move |conn| {
            let stored = deliveries
                .iter()
                .map(|delivery| put_delivery(conn, &agency, &vault, delivery))
                .collect::<Result<Vec<_>, _>>()?;
            let heads: Vec<_> = deliveries
                .iter()
                .filter_map(|d| d.audit_head.as_ref())
                .collect();
            crate::audit::keep_broker_head(conn, &heads)?;
            Ok(stored)
        })
        .await
    }

    /// Runs `work` in one write transaction on the writing connection, on a blocking thread; on any
    /// error the transaction is rolled back.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T, AdapterError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, AdapterError> + Send + 'static,
    {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            // Cached: parsing these anew for every batch would cost more than small batches.
            conn.prepare_cached(BEGIN_WRITE)?.execute([])?;
            let result = work(&conn).and_then(|value| {
                conn.prepare_cached("COMMIT")?.execute([])?;
                Ok(value)
            });
            if result.is_err() && !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            if consent::take_forgot() && result.is_ok() {
                // The write-ahead log still holds the pages as they were before: copied back
                // into the file (where secure_delete overwrote the text) and emptied, so that
                // what consent no longer allows is gone from the disk. Best effort: a reader
                // holding an old snapshot defers it to the next checkpoint.
                if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
                    tracing::debug!(error = %e, "checkpoint after a withdrawal of consent deferred");
                }
            }
            result
        })
        .await
        .map_err(|e| AdapterError::Unavailable(format!("the local store's writer failed: {e}")))?
    }

    /// Runs `work` on the writing connection (no transaction opened), on a blocking thread: for
    /// what needs the connection itself, such as a restore through SQLite's backup API.
    pub(crate) async fn with_writer<T, F>(&self, work: F) -> Result<T, AdapterError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, AdapterError> + Send + 'static,
    {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            work(&mut conn)
        })
        .await
        .map_err(|e| AdapterError::Unavailable(format!("the local store's writer failed: {e}")))?
    }

    /// Stores a referral and its history (idempotent); true if the referral was new. A referral
    /// naming neither this agency as sender nor as recipient is only an update: false, and nothing
    /// written, when it is not held.
    pub async fn store_referral(&self, referral: &Referral) -> Result<bool, AdapterError> {
        let (referral, agency, vault) = (referral.clone(), self.agency.clone(), self.vault.clone());
        self.write(move |conn| Ok(put_referral(conn, &agency, &vault, &referral)? == Put::New))
            .await
    }

    /// Stores one event (idempotent) and moves its referral's state; true if the event was new.
    pub async fn store_event(&self, event: &FeedbackEvent) -> Result<bool, AdapterError> {
        let (event, agency, vault) = (event.clone(), self.agency.clone(), self.vault.clone());
        self.write(move |conn| put_event_and_refresh(conn, &agency, &vault, &event))
            .await
    }

    pub async fn referral(&self, referral_id: &str) -> Result<Option<ReferralRow>, AdapterError> {
        let sql = format!("SELECT {REFERRAL_COLUMNS} FROM referrals WHERE referral_id = ?");
        let row: Option<ReferralRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(referral_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| self.opened(row)).transpose()
    }

    /// The record of the case file this agency removed from `referral_id`, if it did.
    pub async fn withdrawal(&self, referral_id: &str) -> Result<Option<Withdrawal>, AdapterError> {
        Ok(sqlx::query_as(
            "SELECT referral_id, withdrawn_at, now_with, because FROM withdrawn_case_files \
             WHERE referral_id = ?",
        )
        .bind(referral_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Referrals this agency received or was told of, newest first: those with it now, those
    /// redirected away from it, and those it is a notified party, the delegate or a broadcast's
    /// candidate of. Every referral
    /// the store holds and this agency did not send is one of these.
    pub async fn received(&self) -> Result<Vec<ReferralRow>, AdapterError> {
        let sql = format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals WHERE recipient = ?1 OR sender <> ?1 \
             ORDER BY created_at DESC, referral_id DESC"
        );
        let rows: Vec<ReferralRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(self.agency.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(|row| self.opened(row)).collect()
    }

    /// How many times each referral was escalated (its `escalated` events), by referral id; only
    /// referrals escalated at least once.
    pub async fn escalations(
        &self,
    ) -> Result<std::collections::HashMap<String, i64>, AdapterError> {
        let rows = sqlx::query(
            "SELECT referral_id, count(*) AS n FROM events WHERE kind = 'escalated' \
             GROUP BY referral_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("referral_id")?, row.try_get("n")?)))
            .collect()
    }

    /// Referrals addressed to `agency`, newest first.
    pub async fn received_by(&self, agency: &str) -> Result<Vec<ReferralRow>, AdapterError> {
        let sql = format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals WHERE recipient = ? \
             ORDER BY created_at DESC, referral_id DESC"
        );
        let rows: Vec<ReferralRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(agency)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(|row| self.opened(row)).collect()
    }

    /// Referrals about the client with `pseudonym` that `agency` sent or holds as recipient now,
    /// oldest first: one client's history at this agency (story 5). Never a referral it is only
    /// notified of, makes the visits of, or was redirected away from.
    pub async fn about_client(
        &self,
        agency: &str,
        pseudonym: &str,
    ) -> Result<Vec<ReferralRow>, AdapterError> {
        let sql = format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals \
             WHERE client_pseudonym = ?1 AND (sender = ?2 OR recipient = ?2) \
             ORDER BY created_at, referral_id"
        );
        let rows: Vec<ReferralRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(pseudonym)
            .bind(agency)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(|row| self.opened(row)).collect()
    }

    /// Referrals `agency` sent, newest first.
    pub async fn sent_by(&self, agency: &str) -> Result<Vec<ReferralRow>, AdapterError> {
        let sql = format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals WHERE sender = ? \
             ORDER BY created_at DESC, referral_id DESC"
        );
        let rows: Vec<ReferralRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(agency)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(|row| self.opened(row)).collect()
    }

    /// A referral's events, oldest first.
    pub async fn history(&self, referral_id: &str) -> Result<Vec<FeedbackEvent>, AdapterError> {
        let rows = sqlx::query(
            "SELECT event_id, encoded FROM events WHERE referral_id = ? ORDER BY event_id ASC",
        )
        .bind(referral_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let (event_id, sealed): (String, Vec<u8>) =
                    (row.try_get("event_id")?, row.try_get("encoded")?);
                open_event(&self.vault, &event_id, &sealed)
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
        .bind(
            self.vault
                .seal(at_rest::OUTBOX_PAYLOAD, request_id, payload)?,
        )
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
                field: "outbox.request_id".into(),
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
        let row: Option<OutboxRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| self.opened_request(row)).transpose()
    }

    /// The pending requests about `referral_id` queued before `seq`, oldest first: what must reach
    /// the broker before the request at `seq` does, so that a referral's actions keep their order.
    pub async fn pending_before(
        &self,
        referral_id: &str,
        seq: i64,
    ) -> Result<Vec<OutboxRow>, AdapterError> {
        let sql = format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox \
             WHERE status = 'pending' AND referral_id = ? AND seq < ? ORDER BY seq"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(referral_id)
            .bind(seq)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn outbox_row(&self, request_id: &str) -> Result<Option<OutboxRow>, AdapterError> {
        let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE request_id = ?");
        let row: Option<OutboxRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| self.opened_request(row)).transpose()
    }

    /// Every outbox row, oldest first.
    pub async fn outbox(&self) -> Result<Vec<OutboxRow>, AdapterError> {
        let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox ORDER BY seq");
        let rows: Vec<OutboxRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|row| self.opened_request(row))
            .collect()
    }

    /// Stores the referral the broker returned for a submit and marks the request sent, together.
    pub async fn record_submitted(
        &self,
        request_id: &str,
        referral: &Referral,
    ) -> Result<(), AdapterError> {
        let (request_id, referral) = (request_id.to_owned(), referral.clone());
        let (agency, vault) = (self.agency.clone(), self.vault.clone());
        self.write(move |conn| {
            put_referral(conn, &agency, &vault, &referral)?;
            mark_sent(conn, &request_id, Some(referral_id_of(&referral)))
        })
        .await
    }

    /// Stores the event the broker returned for an action and marks the request sent, together.
    pub async fn record_event(
        &self,
        request_id: &str,
        event: &FeedbackEvent,
    ) -> Result<(), AdapterError> {
        let (request_id, event) = (request_id.to_owned(), event.clone());
        let (agency, vault) = (self.agency.clone(), self.vault.clone());
        self.write(move |conn| {
            put_event_and_refresh(conn, &agency, &vault, &event)?;
            mark_sent(conn, &request_id, Some(&event.referral_id))
        })
        .await
    }

    /// This agency's private sealing keys, newest first; one is made and kept if it has none.
    pub async fn seal_keys(&self) -> Result<Vec<spean_seal::SecretKey>, AdapterError> {
        let rows: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT key_id, secret FROM seal_keys ORDER BY created_at DESC, rowid DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(vec![self.add_seal_key().await?]);
        }
        rows.iter()
            .map(|(key_id, sealed)| {
                let secret = zeroize::Zeroizing::new(self.vault.open(
                    at_rest::SEAL_KEY,
                    &hex::encode(key_id),
                    sealed,
                )?);
                spean_seal::SecretKey::from_bytes(&secret).map_err(|e| {
                    AdapterError::Sealing(format!("a stored sealing key does not read: {e}"))
                })
            })
            .collect()
    }

    /// Makes a new sealing key and keeps it beside the older ones (which still open what was
    /// sealed to them); it becomes the newest.
    pub async fn add_seal_key(&self) -> Result<spean_seal::SecretKey, AdapterError> {
        let key = spean_seal::SecretKey::generate();
        let id = key.id().to_vec();
        let secret = self.vault.seal(
            at_rest::SEAL_KEY,
            &hex::encode(&id),
            key.to_bytes().as_ref(),
        )?;
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO seal_keys (key_id, secret, created_at) VALUES (?, ?, ?)",
            )?
            .execute(rusqlite::params![id, secret, now()])?;
            Ok(())
        })
        .await?;
        Ok(key)
    }

    /// Another agency's key, checked before, by its id.
    pub async fn peer_key(
        &self,
        key_id: &[u8],
    ) -> Result<Option<(String, spean_seal::PublicKey)>, AdapterError> {
        let row: Option<(String, Vec<u8>)> =
            sqlx::query_as("SELECT agency_id, public_key FROM peer_keys WHERE key_id = ?")
                .bind(key_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(agency, public)| {
            spean_seal::PublicKey::from_bytes(&public)
                .ok()
                .map(|key| (agency, key))
        }))
    }

    /// Keeps another agency's key once it was checked against the network CA.
    pub async fn keep_peer_key(
        &self,
        agency: &str,
        key: &spean_seal::PublicKey,
        published_at: &str,
    ) -> Result<(), AdapterError> {
        let (id, public) = (key.id().to_vec(), key.as_bytes().to_vec());
        let (agency, published_at) = (agency.to_owned(), published_at.to_owned());
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO peer_keys (key_id, agency_id, public_key, published_at, checked_at) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (key_id) DO NOTHING",
            )?
            .execute(rusqlite::params![id, agency, public, published_at, now()])?;
            Ok(())
        })
        .await
    }

    /// The request as first sealed, if it was.
    pub async fn sealed_request(&self, request_id: &str) -> Result<Option<Vec<u8>>, AdapterError> {
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT payload FROM outbox_sealed WHERE request_id = ?")
                .bind(request_id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(sealed,)| self.vault.open(at_rest::OUTBOX_SEALED, request_id, &sealed))
            .transpose()
    }

    /// Keeps the request as sealed, for every later attempt, unless another sender (the daemon
    /// and a command race for the same row) kept its own first: returns the one kept, which is
    /// what both must send, since sealing twice gives different bytes.
    pub async fn keep_sealed_request(
        &self,
        request_id: &str,
        payload: &[u8],
    ) -> Result<Vec<u8>, AdapterError> {
        let sealed = self
            .vault
            .seal(at_rest::OUTBOX_SEALED, request_id, payload)?;
        let (request_id, vault) = (request_id.to_owned(), self.vault.clone());
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO outbox_sealed (request_id, payload) VALUES (?, ?) \
                 ON CONFLICT (request_id) DO NOTHING",
            )?
            .execute(rusqlite::params![request_id, sealed])?;
            let kept: Vec<u8> = conn
                .prepare_cached("SELECT payload FROM outbox_sealed WHERE request_id = ?")?
                .query_row(rusqlite::params![request_id], |row| row.get(0))?;
            vault.open(at_rest::OUTBOX_SEALED, &request_id, &kept)
        })
        .await
    }

    /// Forgets how a request was sealed, so that its next attempt seals anew (the broker said a
    /// reader was missing: the directory changed).
    pub async fn forget_sealed_request(&self, request_id: &str) -> Result<(), AdapterError> {
        let request_id = request_id.to_owned();
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM outbox_sealed WHERE request_id = ?")?
                .execute(rusqlite::params![request_id])?;
            Ok(())
        })
        .await
    }

    /// The broker refused the request for good: keep it, with why, and never send it again.
    /// Its `request.rejected` webhook messages are written in the same transaction.
    pub async fn mark_rejected(&self, request_id: &str, error: &str) -> Result<(), AdapterError> {
        let (request_id, error) = (request_id.to_owned(), error.to_owned());
        self.write(move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE outbox SET status = 'rejected', error = ?1, attempts = attempts + 1 \
                     WHERE request_id = ?2 AND status = 'pending'",
                )?
                .execute(params![error, request_id])?;
            if changed > 0 {
                webhooks::enqueue::request_rejected(conn, &request_id, &error)?;
            }
            Ok(())
        })
        .await
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

/// Creates the store's folder (0700) and file (0600) when they do not exist, before SQLite opens the
/// file: it holds case files, and SQLite creates the `-wal` and `-shm` files with the main file's
/// mode, so none of them is ever readable by another user. What exists keeps its mode.
fn create_private(path: &Path) -> Result<(), AdapterError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let failed = |what: &str, error: std::io::Error| {
        AdapterError::Config(format!("store: creating {what}: {error}"))
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| failed(&format!("the folder {}", parent.display()), e))?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Err(error) if error.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(failed(&path.display().to_string(), error))
        }
        _ => Ok(()),
    }
}

/// Opens the writing connection to a store file that [`Store::open`] has created and migrated.
fn open_writer(path: &Path) -> Result<Connection, AdapterError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL, as for the pool: see `Store::open`.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    // Without the query planner stability guarantee SQLite (built with `SQLITE_ENABLE_STAT4`)
    // prepares a statement again whenever a value bound where it could change the plan changes.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(conn)
}

fn mark_sent(
    conn: &Connection,
    request_id: &str,
    referral_id: Option<&str>,
) -> Result<(), AdapterError> {
    conn.prepare_cached(
        "UPDATE outbox SET status = 'sent', error = NULL, sent_at = ?, \
         referral_id = COALESCE(referral_id, ?) WHERE request_id = ? AND status <> 'sent'",
    )?
    .execute(params![now(), referral_id, request_id])?;
    Ok(())
}

/// Stores one delivery inside an open transaction; a delivery id seen before changes nothing.
fn put_delivery(
    tx: &Connection,
    agency: &AgencyId,
    vault: &Vault,
    delivery: &Delivery,
) -> Result<Stored, AdapterError> {
    let seen = tx
        .prepare_cached("SELECT 1 FROM deliveries WHERE delivery_id = ?")?
        .exists(params![delivery.delivery_id])?;
    if seen {
        return Ok(Stored::RepeatedDelivery);
    }
    let stored = match &delivery.payload {
        Some(delivery::Payload::Referral(referral)) => {
            let referral_id = referral_id_of(referral).to_owned();
            match put_referral(tx, agency, vault, referral)? {
                Put::NotHeld => Stored::NotHeld { referral_id },
                put => Stored::Referral {
                    referral_id,
                    new: put == Put::New,
                },
            }
        }
        Some(delivery::Payload::Feedback(event)) => {
            let new = put_event_and_refresh(tx, agency, vault, event)?;
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
    tx.prepare_cached("INSERT INTO deliveries (delivery_id, received_at) VALUES (?, ?)")?
        .execute(params![delivery.delivery_id, now()])?;
    Ok(stored)
}

/// What [`put_referral`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Put {
    /// The referral was not stored before.
    New,
    /// The referral was stored before and is refreshed.
    Updated,
    /// A referral naming neither this agency as sender nor as recipient, not held, and not a notified
    /// party's, a delegate's or a candidate's view: nothing written.
    NotHeld,
}

/// Whether a referral naming neither `agency` as sender nor as recipient may be inserted: only a
/// notified party's, a delegate's or a broadcast candidate's view, which never carries the case
/// file (a candidate receives it only once it won, in a copy that names it the recipient).
fn is_a_view_to_insert(referral: &Referral) -> bool {
    let view = matches!(
        Audience::try_from(referral.audience),
        Ok(Audience::Notified | Audience::Delegate | Audience::Candidate)
    );
    view && referral.case_file.is_empty()
}

/// Inserts or refreshes a referral and stores its history. A referral that names neither `agency`
/// as sender nor as recipient is inserted only as a notified party's, a delegate's or a candidate's
/// view without a case file ([`is_a_view_to_insert`]); otherwise (a former recipient's view) it only refreshes a row
/// already held, so a misrouted delivery cannot plant another agency's referral here.
fn put_referral(
    conn: &Connection,
    agency: &AgencyId,
    vault: &Vault,
    referral: &Referral,
) -> Result<Put, AdapterError> {
    let envelope = referral.envelope.clone().unwrap_or_default();
    if envelope.referral_id.is_empty() {
        return Err(AdapterError::Invalid {
            field: "referral.envelope.referral_id".into(),
            reason: "missing".into(),
        });
    }
    let subject = envelope.subject.clone().unwrap_or_default();
    let existed = conn
        .prepare_cached("SELECT 1 FROM referrals WHERE referral_id = ?")?
        .query_row(params![envelope.referral_id], |_| Ok(()))
        .optional()?
        .is_some();
    let names_us = envelope.sender_agency_id == agency.as_str()
        || envelope.recipient_agency_id == agency.as_str();
    if !existed && !names_us && !is_a_view_to_insert(referral) {
        return Ok(Put::NotHeld);
    }
    let created_at = timestamp(envelope.created_at.as_ref());
    let updated_at = timestamp(envelope.updated_at.as_ref());
    let case_file = vault.seal(
        at_rest::CASE_FILE,
        &envelope.referral_id,
        &referral.case_file,
    )?;
    if existed {
        // A later copy (a redelivery, or the submit answer after a redelivered event) refreshes the
        // envelope; an empty case file never overwrites one we have.
        conn.prepare_cached(
            // An older copy arriving late (a candidate's, after the copy it got as the winner)
            // leaves the newer envelope, and a copy without the pseudonym (made for an agency
            // only told of the referral) never erases it.
            "UPDATE referrals SET recipient = ?1, \
             envelope = CASE WHEN ?4 >= updated_at THEN ?2 ELSE envelope END, \
             case_file = CASE WHEN length(?3) > 0 THEN ?3 ELSE case_file END, \
             client_pseudonym = CASE WHEN ?6 <> '' THEN ?6 ELSE client_pseudonym END, \
             updated_at = max(updated_at, ?4) WHERE referral_id = ?5",
        )?
        .execute(params![
            envelope.recipient_agency_id,
            envelope.encode_to_vec(),
            case_file,
            updated_at,
            envelope.referral_id,
            envelope.client_pseudonym,
        ])?;
    } else {
        conn.prepare_cached(
            "INSERT INTO referrals (referral_id, client_ref, sender, recipient, kind, urgency, \
             subject_sex, subject_age_band, subject_province, client_pseudonym, state, case_file, \
             envelope, created_at, updated_at, received_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )?
        .execute(params![
            envelope.referral_id,
            envelope.client_ref,
            envelope.sender_agency_id,
            envelope.recipient_agency_id,
            envelope.kind,
            urgency_name(envelope.urgency),
            sex_name(subject.sex),
            age_band_name(subject.age_band),
            subject.province,
            envelope.client_pseudonym,
            state_name(referral.state),
            case_file,
            envelope.encode_to_vec(),
            created_at,
            updated_at,
            now(),
        ])?;
    }
    put_audience(conn, &envelope.referral_id, referral.audience)?;
    let mut new_events = Vec::new();
    for event in &referral.history {
        if put_event(conn, vault, event)? {
            new_events.push(event);
        }
    }
    refresh_referral(conn, &envelope.referral_id)?;
    // Webhook messages commit with what they announce (webhooks::enqueue).
    if !existed {
        webhooks::enqueue::referral_received(
            conn,
            agency,
            &envelope,
            referral.state,
            referral.audience,
        )?;
    }
    for event in new_events {
        webhooks::enqueue::event_stored(conn, agency, event, !existed)?;
    }
    withdraw_case_file_if_moved_on(conn, agency, &envelope.referral_id)?;
    if referral.history.iter().any(follow_up::moves_the_delegation) {
        strip_ended_follow_up_parts(conn, agency, vault, &envelope.referral_id)?;
    }
    consent::forget_if_withdrawn(conn, vault, &envelope.referral_id)?;
    crate::retention::keep_purged(conn, vault, &envelope.referral_id)?;
    Ok(if existed { Put::Updated } else { Put::New })
}

/// Records how this agency stands to a referral, as the newest copy says; a copy that does not say
/// (an older broker) leaves what is recorded.
fn put_audience(conn: &Connection, referral_id: &str, audience: i32) -> Result<(), AdapterError> {
    if audience == Audience::Unspecified as i32 {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO referral_audiences (referral_id, audience) VALUES (?1, ?2) \
         ON CONFLICT (referral_id) DO UPDATE SET audience = excluded.audience",
    )?
    .execute(params![referral_id, audience_name(audience)])?;
    Ok(())
}

/// Stores one event, then makes its referral follow it (and withdraws the case file if the event
/// took the referral away from this agency); true if the event was new.
fn put_event_and_refresh(
    conn: &Connection,
    agency: &AgencyId,
    vault: &Vault,
    event: &FeedbackEvent,
) -> Result<bool, AdapterError> {
    let new = put_event(conn, vault, event)?;
    refresh_referral(conn, &event.referral_id)?;
    if new {
        webhooks::enqueue::event_stored(conn, agency, event, false)?;
    }
    withdraw_case_file_if_moved_on(conn, agency, &event.referral_id)?;
    if follow_up::moves_the_delegation(event) {
        strip_ended_follow_up_parts(conn, agency, vault, &event.referral_id)?;
    }
    consent::forget_if_withdrawn(conn, vault, &event.referral_id)?;
    crate::retention::keep_purged(conn, vault, &event.referral_id)?;
    Ok(new)
}

/// Inserts an event unless stored before; true if it was new. The referral need not exist yet.
fn put_event(
    conn: &Connection,
    vault: &Vault,
    event: &FeedbackEvent,
) -> Result<bool, AdapterError> {
    if event.event_id.is_empty() {
        return Err(AdapterError::Invalid {
            field: "event.event_id".into(),
            reason: "missing".into(),
        });
    }
    // The `redirect_to` column is "the referral's recipient from this event on": where a redirect
    // sent it, and the acting agency of an acceptance. Only a recipient may accept, so for a
    // referral sent to one agency this names the recipient it had; for a broadcast it names the
    // candidate that won, which the envelope held before the acceptance (naming nobody) does not.
    let redirect_to = match &event.details {
        Some(feedback_event::Details::Redirected(r)) => Some(r.to_agency_id.as_str()),
        _ if event.kind == FeedbackKind::Accepted as i32 => Some(event.actor_agency_id.as_str()),
        _ => None,
    };
    // The person and the note are read from the sealed event only: their columns stay empty (an
    // already stored id is never sealed again, so a repeated delivery costs no encryption).
    let stored = conn
        .prepare_cached("SELECT 1 FROM events WHERE event_id = ?")?
        .exists(params![event.event_id])?;
    if stored {
        return Ok(false);
    }
    let encoded = vault.seal(at_rest::EVENT, &event.event_id, &event.encode_to_vec())?;
    let inserted = conn
        .prepare_cached(
            "INSERT INTO events (event_id, referral_id, kind, actor_agency_id, actor_person, at, \
             note, state_after, redirect_to, encoded) VALUES (?, ?, ?, ?, '', ?, '', ?, ?, ?) \
             ON CONFLICT (event_id) DO NOTHING",
        )?
        .execute(params![
            event.event_id,
            event.referral_id,
            kind_name(event.kind),
            event.actor_agency_id,
            timestamp(event.at.as_ref()),
            state_name(event.state_after),
            redirect_to,
            encoded,
        ])?;
    Ok(inserted > 0)
}

/// Makes a referral's state, last event, update time and (after a redirect, or the acceptance
/// that won a broadcast) recipient follow its newest stored event. Does nothing when the referral is not stored yet.
fn refresh_referral(conn: &Connection, referral_id: &str) -> Result<(), AdapterError> {
    conn.prepare_cached(
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
    )?
    .execute(params![referral_id])?;
    Ok(())
}

/// Removes the case file `agency` holds for `referral_id` once the referral has left it, and records
/// the removal; true if it removed one.
///
/// Why: a former recipient must no longer hold the child's details. The broker stops sending them
/// after a redirect, but the copy already stored here would stay forever. So, in the transaction
/// that stored the redirect (after the referral row has followed its events), a referral whose
/// recipient and sender are both other agencies loses its case file. The sender keeps its own: it
/// wrote it. Only a non-empty case file is removed, so storing the same event again finds nothing
/// to do and leaves the record as it was; a referral redirected back here and away again is
/// recorded anew.
fn withdraw_case_file_if_moved_on(
    conn: &Connection,
    agency: &AgencyId,
    referral_id: &str,
) -> Result<bool, AdapterError> {
    // One statement in the common case (the referral is still ours): it matches no row.
    let now_with: Option<String> = conn
        .prepare_cached(
            "UPDATE referrals SET case_file = x'' WHERE referral_id = ?1 \
             AND recipient <> ?2 AND sender <> ?2 AND length(case_file) > 0 RETURNING recipient",
        )?
        .query_row(params![referral_id, agency.as_str()], |row| row.get(0))
        .optional()?;
    let Some(now_with) = now_with else {
        return Ok(false);
    };
    record_withdrawal(conn, referral_id, &now_with, BECAUSE_REDIRECTED)?;
    // Ids only. Logged before the commit: if the transaction then fails, the delivery comes again
    // and the line is logged again when the removal does happen.
    tracing::info!(%agency, %referral_id, %now_with, because = BECAUSE_REDIRECTED, "case file withdrawn");
    Ok(true)
}

/// Strips the follow-up part of the case file from every stored delegation of `referral_id` to
/// `agency` that has ended, and records the removal; true if it stripped one.
///
/// Why: a delegate may hold the child's name, guardians and contact only while the follow-up is
/// its. The revocation is delivered to it, so in the transaction that stores the revocation the part
/// its delegation carried is removed from the stored event (re-encoded without it). It runs
/// whenever a delegation or revocation is stored, whatever order they arrive in, and an event id
/// already stored is never overwritten ([`put_event`]), so a delegation delivered again after its
/// revocation cannot bring the part back.
fn strip_ended_follow_up_parts(
    conn: &Connection,
    agency: &AgencyId,
    vault: &Vault,
    referral_id: &str,
) -> Result<bool, AdapterError> {
    let moves = delegation_moves(conn, vault, referral_id)?;
    let ended = follow_up::ended_delegations_holding_a_part(&moves, agency.as_str());
    for delegation in &ended {
        conn.prepare_cached("UPDATE events SET encoded = ?1 WHERE event_id = ?2")?
            .execute(params![
                vault.seal(
                    at_rest::EVENT,
                    &delegation.event_id,
                    &follow_up::without_follow_up_part(delegation).encode_to_vec()
                )?,
                delegation.event_id
            ])?;
    }
    if ended.is_empty() {
        return Ok(false);
    }
    let taken_back_by: String = conn
        .prepare_cached("SELECT recipient FROM referrals WHERE referral_id = ?")?
        .query_row(params![referral_id], |row| row.get(0))
        .optional()?
        .unwrap_or_default();
    record_withdrawal(
        conn,
        referral_id,
        &taken_back_by,
        BECAUSE_DELEGATION_REVOKED,
    )?;
    // Ids only, as for a redirect.
    tracing::info!(%agency, %referral_id, now_with = %taken_back_by, because = BECAUSE_DELEGATION_REVOKED, "follow-up part of the case file withdrawn");
    Ok(true)
}

/// The stored delegations and revocations of a referral, oldest first.
fn delegation_moves(
    conn: &Connection,
    vault: &Vault,
    referral_id: &str,
) -> Result<Vec<FeedbackEvent>, AdapterError> {
    let mut statement = conn.prepare_cached(
        "SELECT event_id, encoded FROM events WHERE referral_id = ?1 \
         AND kind IN ('follow_up_delegated', 'delegation_revoked') ORDER BY event_id",
    )?;
    let rows = statement.query_map(params![referral_id], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
    })?;
    rows.map(|row| {
        let (event_id, sealed) = row?;
        open_event(vault, &event_id, &sealed)
    })
    .collect()
}

/// A stored event, opened and decoded.
pub(crate) fn open_event(
    vault: &Vault,
    event_id: &str,
    sealed: &[u8],
) -> Result<FeedbackEvent, AdapterError> {
    let bytes = vault.open(at_rest::EVENT, event_id, sealed)?;
    FeedbackEvent::decode(bytes.as_slice()).map_err(|source| AdapterError::Decode {
        what: "stored event",
        source,
    })
}

/// Records (or records anew) that this agency no longer holds a referral's case file, or its
/// follow-up part: one row per referral, the latest removal.
pub(crate) fn record_withdrawal(
    conn: &Connection,
    referral_id: &str,
    now_with: &str,
    because: &str,
) -> Result<(), AdapterError> {
    conn.prepare_cached(
        "INSERT INTO withdrawn_case_files (referral_id, withdrawn_at, now_with, because) \
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (referral_id) DO UPDATE SET \
         withdrawn_at = excluded.withdrawn_at, now_with = excluded.now_with, \
         because = excluded.because",
    )?
    .execute(params![referral_id, now(), now_with, because])?;
    Ok(())
}

/// RFC 3339 in UTC with a fixed number of fraction digits, so that text order is time order.
pub(crate) const SORTABLE_RFC3339: &[BorrowedFormatItem<'static>] =
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
