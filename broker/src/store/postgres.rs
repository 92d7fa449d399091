//! The production store: PostgreSQL, shared by every broker process.
//!
//! Concurrency is optimistic (a change applies only to the version it read, see [`Change`]) and the
//! unique constraints settle races on `client_ref` and `request_id`. The outbox relay claims rows with
//! `FOR UPDATE SKIP LOCKED` and a lease, so relays in several processes never publish the same row at
//! the same time. Queries are static SQL with bound parameters.
//!
//! Writes that arrive together are batched, because PostgreSQL's cost per statement outweighs its
//! cost per row: concurrent submits go through [`submits`], and the changes of confirmations that
//! arrived together through [`Store::apply_all`], each as one statement over `unnest`ed arrays.
//!
//! Ids are `uuid` columns. The domain binds and reads them as text (sqlx's `uuid` feature is off and
//! [`rows`] maps both backends from text), so statements cast bound ids with `$n::uuid` and select
//! them as `::text`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};

use super::rows;
use super::{
    Change, ChangeOutcome, MailboxEntry, NewDelivery, Snapshot, Store, SubmitOutcome, micros,
};
use crate::directory::Directory;
use crate::error::StoreError;
use crate::ids::{AgencyId, ClientRef, ReferralId, RequestId};
use crate::referral::{Event, ListQuery, Referral};

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    submits: submits::Submits,
    batches: Arc<Batches>,
}

/// How many batches of submits or changes PostgreSQL took whole, and how many it refused, whose
/// parts were then written one by one. A rising `refused` means batches contend with each other.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchCounts {
    pub written: u64,
    pub refused: u64,
}

#[derive(Debug, Default)]
struct Batches {
    written: AtomicU64,
    refused: AtomicU64,
}

impl Batches {
    fn count(&self, written: bool) {
        let counter = if written {
            &self.written
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://...`) and runs the migrations. Sixteen connections leave room on a
    /// server's default 100 for several brokers; a request that waits 10 s for one fails (and maps to
    /// UNAVAILABLE) rather than hanging behind a saturated pool.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let batches = Arc::new(Batches::default());
        let submits = submits::Submits::start(&pool, batches.clone());
        Ok(Self {
            pool,
            submits,
            batches,
        })
    }

    /// The pool, for what the [`Store`] trait does not cover: health details and tests.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The batches written since the store connected, for diagnostics and tests.
    pub fn batches(&self) -> BatchCounts {
        BatchCounts {
            written: self.batches.written.load(Ordering::Relaxed),
            refused: self.batches.refused.load(Ordering::Relaxed),
        }
    }

    /// A transaction at PostgreSQL's default READ COMMITTED. Writers are not serialised as in SQLite:
    /// the versioned `UPDATE` and the unique constraints settle every race instead, and each statement
    /// sees what other transactions committed before it started.
    async fn write(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }
}

/// The columns [`rows::referral`] reads, without the case file. Macros rather than constants so that
/// `concat!` keeps every statement a `&'static str`.
macro_rules! referral_columns {
    () => {
        "id::text AS id, sender, client_ref, fingerprint, addressee_agency, addressee_service, \
         addressee_province, recipient, kind, urgency, subject_sex, subject_age_band, \
         subject_province, client_pseudonym, state, version, created_at, updated_at"
    };
}

/// The columns [`rows::event`] reads.
macro_rules! event_columns {
    () => {
        "seq, id::text AS id, referral_id::text AS referral_id, kind, actor, actor_person, at, \
         note, state_after, details, request_id"
    };
}

/// The columns [`rows::mailbox`] reads.
macro_rules! mailbox_columns {
    () => {
        "seq, agency_id, delivery_id::text AS delivery_id, referral_id::text AS referral_id, \
         event_id::text AS event_id"
    };
}

/// What [`snapshot_of`] reads: a referral without its case file, who may see it (`COLLATE "C"`:
/// byte order, as SQLite's, whatever the database's collation) and the kinds of its events; the
/// caller adds the `WHERE`.
macro_rules! snapshot_select {
    () => {
        concat!(
            "SELECT ",
            referral_columns!(),
            ", ARRAY(SELECT agency_id FROM referral_access WHERE referral_id = r.id \
               ORDER BY agency_id COLLATE \"C\") AS parties, \
             ARRAY(SELECT kind FROM referral_events WHERE referral_id = r.id ORDER BY seq) \
               AS history \
             FROM referrals r "
        )
    };
}

mod submits;

/// The event an actor recorded under a request id, read inside or outside a transaction.
const EVENT_BY_REQUEST: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM referral_events WHERE actor = $1 AND request_id = $2"
);

/// The `lease_until` of a new outbox row from `d`, the statement's deliveries: now by the
/// database's clock (the one every relay's lease reads) plus `d.held`, or NULL for a row any relay
/// may lease at once ([`NewDelivery::held`]).
macro_rules! held_until {
    () => {
        "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint + d.held"
    };
}
pub(crate) use held_until;

/// A change's deliveries as parallel arrays for `unnest`: any number of deliveries in one
/// statement.
#[derive(Default)]
struct DeliveryColumns {
    agency: Vec<String>,
    /// A new delivery id for each.
    delivery: Vec<String>,
    /// NULL: the referral itself.
    event: Vec<Option<String>>,
    /// The carried delivery, or NULL.
    body: Vec<Option<Vec<u8>>>,
    /// How long the row is held, in microseconds, or NULL.
    held: Vec<Option<i64>>,
}

/// Events as parallel arrays for `unnest`, one element per change or submission of a batch:
/// what both batch statements insert into `referral_events`.
#[derive(Default)]
struct EventColumns {
    id: Vec<String>,
    kind: Vec<String>,
    actor: Vec<String>,
    person: Vec<String>,
    at: Vec<i64>,
    note: Vec<String>,
    state_after: Vec<String>,
    details: Vec<String>,
}

impl EventColumns {
    fn push(&mut self, e: &Event) -> Result<(), StoreError> {
        self.id.push(e.id.to_string());
        self.kind.push(e.kind.as_str().to_owned());
        self.actor.push(e.actor.as_str().to_owned());
        self.person.push(e.actor_person.as_str().to_owned());
        self.at.push(micros(e.at));
        self.note.push(e.note.as_str().to_owned());
        self.state_after.push(e.state_after.as_str().to_owned());
        self.details.push(
            serde_json::to_string(&e.details)
                .map_err(|err| rows::corrupt("referral_events", err))?,
        );
        Ok(())
    }
}

/// Binds an [`EventColumns`]' arrays, in the order both batch statements take them: id, kind,
/// actor, actor_person, at, note, state_after, details.
macro_rules! bind_events {
    ($query:expr, $e:expr) => {{
        let e = $e;
        $query
            .bind(e.id)
            .bind(e.kind)
            .bind(e.actor)
            .bind(e.person)
            .bind(e.at)
            .bind(e.note)
            .bind(e.state_after)
            .bind(e.details)
    }};
}
use bind_events;

/// Binds a [`DeliveryColumns`]' arrays, in the order every statement takes them: agency,
/// delivery id, event id, body, hold.
macro_rules! bind_deliveries {
    ($query:expr, $d:expr) => {{
        let d = $d;
        $query
            .bind(d.agency)
            .bind(d.delivery)
            .bind(d.event)
            .bind(d.body)
            .bind(d.held)
    }};
}
use bind_deliveries;

impl DeliveryColumns {
    fn of(deliveries: &[NewDelivery]) -> Self {
        let mut columns = Self::default();
        columns.extend(deliveries);
        columns
    }

    fn extend(&mut self, deliveries: &[NewDelivery]) {
        for d in deliveries {
            self.agency.push(d.agency.as_str().to_owned());
            self.delivery.push(d.id.to_string());
            self.event.push(d.event_id.map(|e| e.to_string()));
            self.body.push(d.body.clone());
            self.held.push(
                d.held
                    .map(|h| i64::try_from(h.as_micros()).unwrap_or(i64::MAX)),
            );
        }
    }
}

/// The event `actor` recorded under `request_id`, if any, read through `executor` (the pool or an open
/// transaction, which in READ COMMITTED sees everything committed before the statement starts).
async fn recorded_request<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    actor: &AgencyId,
    request_id: &RequestId,
) -> Result<Option<Event>, StoreError> {
    let row = sqlx::query(EVENT_BY_REQUEST)
        .bind(actor.as_str())
        .bind(request_id.as_str())
        .fetch_optional(executor)
        .await?;
    row.as_ref().map(rows::event).transpose()
}

/// The referral `sender` submitted under `client_ref`, with its case file: what a repeated submit
/// returns, read by the store and by the submit writers alike.
async fn by_client_ref(
    pool: &PgPool,
    sender: &AgencyId,
    client_ref: &ClientRef,
) -> Result<Option<Referral>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        referral_columns!(),
        ", case_file FROM referrals WHERE sender = $1 AND client_ref = $2"
    ))
    .bind(sender.as_str())
    .bind(client_ref.as_str())
    .fetch_optional(pool)
    .await?;
    row.map(|r| rows::referral(&r, true)).transpose()
}

/// A row of [`snapshot_select!`], as a [`Snapshot`].
fn snapshot_of(row: &sqlx::postgres::PgRow) -> Result<Snapshot, StoreError> {
    let parties: Vec<String> = row.try_get("parties")?;
    let history: Vec<String> = row.try_get("history")?;
    rows::snapshot(row, parties, history)
}

/// Ids as the text array every `= ANY ($n::text[]::uuid[])` binds: the statements take uuids as
/// text, since the pool maps no uuid type.
fn as_text<T: ToString>(ids: &[T]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl PgStore {
    /// The statement of [`Store::apply_all`]: changes as parallel arrays for `unnest`, and their
    /// deliveries flattened with the referral each belongs to.
    async fn apply_batch(&self, changes: &[Change]) -> Result<Vec<ChangeOutcome>, StoreError> {
        let n = changes.len();
        let mut c = BatchColumns::with_capacity(n);
        for change in changes {
            let e = &change.event;
            c.referral.push(change.referral_id.to_string());
            c.version.push(change.expected_version);
            c.state.push(change.state.as_str().to_owned());
            c.at.push(micros(change.at));
            c.recipient
                .push(change.new_recipient.as_ref().map(|a| a.as_str().to_owned()));
            c.e.push(e)?;
            c.d_referral.extend(std::iter::repeat_n(
                change.referral_id.to_string(),
                change.deliveries.len(),
            ));
            c.d.extend(&change.deliveries);
        }
        let statement = if changes.iter().any(|c| c.new_recipient.is_some()) {
            CHANGES_WITH_REDIRECTS
        } else {
            CHANGES
        };
        let query = sqlx::query_scalar(statement)
            .persistent(false)
            .bind(c.referral)
            .bind(c.version)
            .bind(c.state)
            .bind(c.at)
            .bind(c.recipient);
        let query = bind_events!(query, c.e).bind(c.d_referral);
        let applied: Vec<String> = bind_deliveries!(query, c.d).fetch_all(&self.pool).await?;
        let applied: std::collections::HashSet<String> = applied.into_iter().collect();
        Ok(changes
            .iter()
            .map(|change| {
                if applied.contains(&change.referral_id.to_string()) {
                    ChangeOutcome::Recorded
                } else {
                    ChangeOutcome::Stale
                }
            })
            .collect())
    }
}

/// The statement of [`PgStore::apply_batch`], with `$redirects` (CTEs that only a redirect needs)
/// between the shared CTEs and the final `SELECT`.
macro_rules! change_batch {
    ($($redirects:literal)?) => {
        concat!(
            "WITH c AS ( \
               SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::text[], \
                 $6::text[], $7::text[], $8::text[], $9::text[], $10::int8[], $11::text[], \
                 $12::text[], $13::text[]) \
               AS c(referral, version, state, at, recipient, event, kind, actor, person, \
                 event_at, note, state_after, details)), \
             u AS ( \
               UPDATE referrals r SET state = c.state, version = r.version + 1, \
               updated_at = c.at, recipient = COALESCE(c.recipient, r.recipient) \
               FROM c WHERE r.id = c.referral::uuid AND r.version = c.version \
               RETURNING r.id), \
             e AS ( \
               INSERT INTO referral_events (id, referral_id, kind, actor, actor_person, at, note, \
               state_after, details, request_id) \
               SELECT c.event::uuid, u.id, c.kind, c.actor, c.person, c.event_at, c.note, \
               c.state_after, c.details, NULL FROM c JOIN u ON u.id = c.referral::uuid), \
             m AS ( \
               INSERT INTO mailbox (agency_id, delivery_id, referral_id, event_id, created_at, \
               body, lease_until) \
               SELECT d.agency, d.delivery::uuid, u.id, d.event::uuid, c.at, d.body, \
               ", held_until!(), " \
               FROM unnest($14::text[], $15::text[], $16::text[], $17::text[], $18::bytea[], \
                 $19::int8[]) AS d(referral, agency, delivery, event, body, held) \
               JOIN u ON u.id = d.referral::uuid JOIN c ON c.referral = d.referral) ",
            $($redirects,)?
            "SELECT id::text FROM u"
        )
    };
}

/// Changes none of which redirects, such as a burst of confirmations' `delivered`: planned at
/// every execution, so it carries no CTE it does not need.
const CHANGES: &str = change_batch!();

/// Changes among which at least one redirect: the new recipient gains access, and the referral
/// still queued for the former recipient loses its carried body (so the relay loads it, without
/// its case file). `referrals r` in `x` reads the row as it was before `u` (one snapshot for the
/// whole statement): the former recipient.
const CHANGES_WITH_REDIRECTS: &str = change_batch!(
    ", a AS ( \
       INSERT INTO referral_access (referral_id, agency_id) \
       SELECT u.id, c.recipient FROM c JOIN u ON u.id = c.referral::uuid \
       WHERE c.recipient IS NOT NULL ON CONFLICT DO NOTHING), \
     x AS ( \
       UPDATE mailbox SET body = NULL FROM c JOIN u ON u.id = c.referral::uuid \
       JOIN referrals r ON r.id = u.id \
       WHERE c.recipient IS NOT NULL AND mailbox.agency_id = r.recipient \
       AND mailbox.referral_id = u.id AND mailbox.event_id IS NULL \
       AND mailbox.body IS NOT NULL) "
);

/// The columns of a batch of changes, one array per column.
#[derive(Default)]
struct BatchColumns {
    referral: Vec<String>,
    version: Vec<i64>,
    state: Vec<String>,
    at: Vec<i64>,
    recipient: Vec<Option<String>>,
    e: EventColumns,
    /// The referral each delivery belongs to, beside its columns.
    d_referral: Vec<String>,
    d: DeliveryColumns,
}

impl BatchColumns {
    fn with_capacity(n: usize) -> Self {
        Self {
            referral: Vec::with_capacity(n),
            version: Vec::with_capacity(n),
            state: Vec::with_capacity(n),
            at: Vec::with_capacity(n),
            recipient: Vec::with_capacity(n),
            ..Self::default()
        }
    }
}

#[async_trait]
impl Store for PgStore {
    async fn import_directory(&self, directory: &Directory) -> Result<i64, StoreError> {
        let document =
            serde_json::to_string(directory).map_err(|e| rows::corrupt("directory", e))?;
        let mut tx = self.write().await?;
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO directory (id, document, version, imported_at) VALUES (1, $1, 1, $2) \
             ON CONFLICT (id) DO UPDATE SET document = excluded.document, \
             version = directory.version + 1, imported_at = excluded.imported_at \
             RETURNING version",
        )
        .bind(document)
        .bind(micros(time::OffsetDateTime::now_utc()))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn directory(&self) -> Result<Option<(Directory, i64)>, StoreError> {
        let row = sqlx::query("SELECT document, version FROM directory WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            let doc: String = row.try_get("document")?;
            let dir = serde_json::from_str(&doc).map_err(|e| rows::corrupt("directory", e))?;
            Ok((dir, row.try_get("version")?))
        })
        .transpose()
    }

    async fn directory_version(&self) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT version FROM directory WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Written by [`submits`], together with the submits beside it.
    async fn submit(
        &self,
        referral: &Referral,
        event: &Event,
        deliveries: &[NewDelivery],
    ) -> Result<SubmitOutcome, StoreError> {
        self.submits
            .submit(submits::Submission {
                referral: referral.clone(),
                event: event.clone(),
                deliveries: deliveries.to_vec(),
            })
            .await
    }

    async fn referral(&self, id: ReferralId) -> Result<Option<Referral>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            referral_columns!(),
            ", case_file FROM referrals WHERE id = $1::uuid"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| rows::referral(&r, true)).transpose()
    }

    async fn referral_by_client_ref(
        &self,
        sender: &AgencyId,
        client_ref: &ClientRef,
    ) -> Result<Option<Referral>, StoreError> {
        by_client_ref(&self.pool, sender, client_ref).await
    }

    async fn snapshot(&self, id: ReferralId) -> Result<Option<Snapshot>, StoreError> {
        let row = sqlx::query(concat!(snapshot_select!(), "WHERE id = $1::uuid"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(snapshot_of).transpose()
    }

    /// Not kept prepared, for the reason given at [`PgStore::referrals_with_history`].
    async fn snapshots(&self, ids: &[ReferralId]) -> Result<Vec<Snapshot>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(concat!(
            snapshot_select!(),
            "WHERE id = ANY ($1::text[]::uuid[])"
        ))
        .persistent(false)
        .bind(as_text(ids))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(snapshot_of).collect()
    }

    async fn has_access(&self, agency: &AgencyId, id: ReferralId) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM referral_access \
             WHERE agency_id = $1 AND referral_id = $2::uuid)",
        )
        .bind(agency.as_str())
        .bind(id.to_string())
        .fetch_one(&self.pool)
        .await?)
    }

    async fn history(&self, id: ReferralId) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM referral_events WHERE referral_id = $1::uuid ORDER BY seq"
        ))
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::event).collect()
    }

    async fn event(&self, id: uuid::Uuid) -> Result<Option<Event>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM referral_events WHERE id = $1::uuid"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rows::event).transpose()
    }

    /// The batch reads are not kept as prepared statements: PostgreSQL would soon plan them once
    /// for any array of ids, and a plan chosen while the table was small (a sequential scan) would
    /// then read the whole table for every batch as it grows. Unnamed, they are planned with the
    /// ids in hand, which always finds the index.
    async fn referrals_with_history(
        &self,
        ids: &[ReferralId],
    ) -> Result<Vec<(Referral, Vec<Event>)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = as_text(ids);
        let referrals = sqlx::query(concat!(
            "SELECT ",
            referral_columns!(),
            ", case_file FROM referrals WHERE id = ANY ($1::text[]::uuid[])"
        ))
        .persistent(false)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let events = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM referral_events WHERE referral_id = ANY ($1::text[]::uuid[]) ORDER BY seq"
        ))
        .persistent(false)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let referrals = referrals
            .iter()
            .map(|r| rows::referral(r, true))
            .collect::<Result<Vec<_>, _>>()?;
        let events = events
            .iter()
            .map(rows::event)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(super::with_histories(referrals, events))
    }

    async fn events(&self, ids: &[uuid::Uuid]) -> Result<Vec<Event>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM referral_events WHERE id = ANY ($1::text[]::uuid[]) ORDER BY seq"
        ))
        .persistent(false)
        .bind(as_text(ids))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::event).collect()
    }

    async fn event_by_request(
        &self,
        actor: &AgencyId,
        request_id: &RequestId,
    ) -> Result<Option<Event>, StoreError> {
        recorded_request(&self.pool, actor, request_id).await
    }

    async fn list(
        &self,
        agency: &AgencyId,
        query: &ListQuery,
    ) -> Result<Vec<Referral>, StoreError> {
        let states: Option<Vec<String>> = (!query.states.is_empty())
            .then(|| query.states.iter().map(|s| s.as_str().to_owned()).collect());
        let rows = sqlx::query(concat!(
            "SELECT ",
            referral_columns!(),
            " FROM referrals r \
             WHERE r.id IN (SELECT referral_id FROM referral_access WHERE agency_id = $1) \
             AND ($2::text IS NULL OR ($2 = 'sender' AND r.sender = $1) \
                                   OR ($2 = 'recipient' AND r.recipient = $1)) \
             AND ($3::text[] IS NULL OR r.state = ANY ($3)) \
             AND ($4::text IS NULL OR r.kind = $4) \
             AND ($5::uuid IS NULL OR r.id < $5::uuid) \
             ORDER BY r.id DESC LIMIT $6"
        ))
        .bind(agency.as_str())
        .bind(query.role.map(|r| r.to_string()))
        .bind(states)
        .bind(query.kind.as_ref().map(|k| k.as_str().to_owned()))
        .bind(query.before.map(|b| b.to_string()))
        .bind(i64::from(query.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| rows::referral(r, false)).collect()
    }

    /// One statement: the versioned update, and fed by its `RETURNING` the access, the event and
    /// the deliveries, so the change is one round trip and one commit. A concurrent writer's update
    /// of the same row makes this one wait, then match no row: the change is stale, unless it was a
    /// retry of this very request that won, which the request id shows. A request id this actor used
    /// on another referral fails the event's unique constraint and with it the whole statement.
    /// On a redirect, `x` clears the body of the referral still queued for the former recipient
    /// (`referrals r` is read as it was before `u`: one snapshot for the whole statement).
    async fn apply(&self, change: &Change) -> Result<ChangeOutcome, StoreError> {
        let actor = &change.event.actor;
        let request_id = change.event.request_id.as_ref();
        if let Some(request_id) = request_id
            && let Some(done) = recorded_request(&self.pool, actor, request_id).await?
        {
            return Ok(ChangeOutcome::Duplicate(Box::new(done)));
        }
        let details = serde_json::to_string(&change.event.details)
            .map_err(|e| rows::corrupt("referral_events", e))?;
        let query = sqlx::query(concat!(
            "WITH u AS ( \
               UPDATE referrals SET state = $1, version = version + 1, updated_at = $2, \
               recipient = COALESCE($3, recipient) WHERE id = $4::uuid AND version = $5 \
               RETURNING id), \
             e AS ( \
               INSERT INTO referral_events (id, referral_id, kind, actor, actor_person, at, note, \
               state_after, details, request_id) \
               SELECT $6::uuid, $7::uuid, $8, $9, $10, $11, $12, $13, $14, $15 FROM u), \
             a AS ( \
               INSERT INTO referral_access (referral_id, agency_id) \
               SELECT u.id, $3 FROM u WHERE $3::text IS NOT NULL ON CONFLICT DO NOTHING), \
             m AS ( \
               INSERT INTO mailbox (agency_id, delivery_id, referral_id, event_id, created_at, \
               body, lease_until) \
               SELECT d.agency, d.delivery::uuid, u.id, d.event::uuid, $2, d.body, \
               ",
            held_until!(),
            " \
               FROM u, unnest($16::text[], $17::text[], $18::text[], $19::bytea[], $20::int8[]) \
                 AS d(agency, delivery, event, body, held)), \
             x AS ( \
               UPDATE mailbox SET body = NULL FROM u, referrals r \
               WHERE $3::text IS NOT NULL AND r.id = u.id AND mailbox.agency_id = r.recipient \
               AND mailbox.referral_id = u.id AND mailbox.event_id IS NULL \
               AND mailbox.body IS NOT NULL) \
             SELECT count(*) FROM u"
        ))
        .bind(change.state.as_str())
        .bind(micros(change.at))
        .bind(change.new_recipient.as_ref().map(|a| a.as_str().to_owned()))
        .bind(change.referral_id.to_string())
        .bind(change.expected_version);
        let query = rows::bind_event!(query, change.event, details);
        let applied = bind_deliveries!(query, DeliveryColumns::of(&change.deliveries))
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get::<i64, _>(0));
        match applied {
            Ok(1) => Ok(ChangeOutcome::Recorded),
            Ok(_) => Ok(match request_id {
                Some(request_id) => recorded_request(&self.pool, actor, request_id)
                    .await?
                    .map_or(ChangeOutcome::Stale, |done| {
                        ChangeOutcome::Duplicate(Box::new(done))
                    }),
                None => ChangeOutcome::Stale,
            }),
            Err(e) if is_unique_violation(&e) => {
                // The statement waited for the transaction that used this request id to commit,
                // so its event is visible now.
                match request_id {
                    Some(request_id) => recorded_request(&self.pool, actor, request_id)
                        .await?
                        .map(|done| ChangeOutcome::Duplicate(Box::new(done)))
                        .ok_or_else(|| e.into()),
                    None => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Changes without request ids, each on a referral of its own, go in one statement and one
    /// commit: the versioned updates, and fed by their `RETURNING` the events, access and deliveries
    /// of the changes that applied; the others are stale. This is how a stream's confirmations are
    /// recorded together. Anything else, or a batch the database refuses (a deadlock with another
    /// batch, say), is applied change by change, which decides each on its own.
    async fn apply_all(&self, changes: &[Change]) -> Result<Vec<ChangeOutcome>, StoreError> {
        let mut ids = std::collections::HashSet::with_capacity(changes.len());
        let batchable = changes.len() > 1
            && changes
                .iter()
                .all(|c| c.event.request_id.is_none() && ids.insert(c.referral_id));
        if batchable {
            let written = self.apply_batch(changes).await;
            self.batches.count(written.is_ok());
            match written {
                Ok(outcomes) => return Ok(outcomes),
                Err(e) => {
                    tracing::debug!(error = %e, changes = changes.len(), "a batch of changes was refused; applying them one by one");
                }
            }
        }
        super::apply_each(self, changes).await
    }

    async fn mailbox(
        &self,
        agency: &AgencyId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<MailboxEntry>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            mailbox_columns!(),
            " FROM mailbox WHERE agency_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        ))
        .bind(agency.as_str())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::mailbox).collect()
    }

    async fn mailbox_entry(
        &self,
        agency: &AgencyId,
        delivery_id: uuid::Uuid,
    ) -> Result<Option<MailboxEntry>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            mailbox_columns!(),
            " FROM mailbox WHERE agency_id = $1 AND delivery_id = $2::uuid"
        ))
        .bind(agency.as_str())
        .bind(delivery_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rows::mailbox).transpose()
    }

    /// The lease is measured by PostgreSQL's clock, the one clock every broker process shares, so a
    /// broker whose own clock is off cannot take rows another still holds.
    async fn lease_outbox(
        &self,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<MailboxEntry>, StoreError> {
        let lease = i64::try_from(lease.as_micros()).unwrap_or(i64::MAX);
        let rows = sqlx::query(concat!(
            "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS us) \
             UPDATE mailbox SET lease_until = (SELECT us FROM now) + $1 WHERE seq = ANY (ARRAY( \
             SELECT seq FROM mailbox WHERE lease_until IS NULL OR lease_until < (SELECT us FROM now) \
              ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED)) RETURNING ",
            mailbox_columns!(),
            ", body"
        ))
        .bind(lease)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut entries = rows
            .iter()
            .map(|row| {
                let mut entry = rows::mailbox(row)?;
                entry.carried = row.try_get("body")?;
                Ok(entry)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        entries.sort_by_key(|e| e.seq);
        Ok(entries)
    }

    fn carries_deliveries(&self) -> bool {
        true
    }

    async fn remove_published(&self, delivery_ids: &[uuid::Uuid]) -> Result<(), StoreError> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM mailbox WHERE delivery_id = ANY ($1::text[]::uuid[])")
            .bind(as_text(delivery_ids))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The outbox is a queue: every row is inserted, leased and deleted within moments, and the
    /// deleted rows stay in the table and its index until a vacuum. The lease reads the index from
    /// its oldest entry, so it walks every dead entry first: in a full benchmark run the table held
    /// 1,600 live rows and 500,000 dead ones before autovacuum's first visit, and each lease read
    /// 1,600 index pages. Autovacuum visits a database at most once a minute (`autovacuum_naptime`),
    /// which at 6,000 deleted rows a second is far too seldom, so the relay asks for a vacuum
    /// itself. `SKIP_LOCKED`: if autovacuum or another broker is vacuuming the table already, this
    /// one does nothing rather than wait. `INDEX_CLEANUP ON`: the dead index entries are what the
    /// lease walks, so they are removed even when PostgreSQL would judge the heap clean enough.
    async fn tidy_outbox(&self) -> Result<(), StoreError> {
        sqlx::raw_sql("VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) mailbox")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn settle(
        &self,
        agency: &AgencyId,
        delivery_ids: &[uuid::Uuid],
    ) -> Result<u64, StoreError> {
        if delivery_ids.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query(
            "DELETE FROM mailbox WHERE agency_id = $1 AND delivery_id = ANY ($2::text[]::uuid[])",
        )
        .bind(agency.as_str())
        .bind(as_text(delivery_ids))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
