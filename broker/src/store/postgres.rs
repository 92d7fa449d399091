//! The production store: PostgreSQL, shared by every broker process.
//!
//! Concurrency is optimistic (a change applies only to the version it read, see [`Change`]) and the
//! unique constraints settle races on `client_ref` and `request_id`. The outbox relay claims rows with
//! `FOR UPDATE SKIP LOCKED` and a lease, so relays in several processes never publish the same row at
//! the same time. Queries are static SQL with bound parameters.
//!
//! Ids are `uuid` columns. The domain binds and reads them as text (sqlx's `uuid` feature is off and
//! [`rows`] maps both backends from text), so statements cast bound ids with `$n::uuid` and select
//! them as `::text`.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};

use super::rows;
use super::{Change, ChangeOutcome, MailboxEntry, NewDelivery, Store, SubmitOutcome, micros};
use crate::directory::Directory;
use crate::error::StoreError;
use crate::ids::{AgencyId, ClientRef, ReferralId, RequestId};
use crate::referral::{Event, ListQuery, Referral};

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
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
        Ok(Self { pool })
    }

    /// The pool, for what the [`Store`] trait does not cover: health details and tests.
    pub fn pool(&self) -> &PgPool {
        &self.pool
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

/// The event an actor recorded under a request id, read inside or outside a transaction.
const EVENT_BY_REQUEST: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM referral_events WHERE actor = $1 AND request_id = $2"
);

async fn insert_event(tx: &mut Transaction<'_, Postgres>, event: &Event) -> Result<(), StoreError> {
    let details =
        serde_json::to_string(&event.details).map_err(|e| rows::corrupt("referral_events", e))?;
    let query = sqlx::query(
        "INSERT INTO referral_events \
         (id, referral_id, kind, actor, actor_person, at, note, state_after, details, request_id) \
         VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6, $7, $8, $9, $10)",
    );
    rows::bind_event!(query, event, details)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_deliveries(
    tx: &mut Transaction<'_, Postgres>,
    referral_id: ReferralId,
    deliveries: &[NewDelivery],
    at: i64,
) -> Result<(), StoreError> {
    for d in deliveries {
        sqlx::query(
            "INSERT INTO mailbox (agency_id, delivery_id, referral_id, event_id, created_at) \
             VALUES ($1, $2::uuid, $3::uuid, $4::uuid, $5)",
        )
        .bind(d.agency.as_str())
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(referral_id.to_string())
        .bind(d.event_id.map(|e| e.to_string()))
        .bind(at)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn grant_access(
    tx: &mut Transaction<'_, Postgres>,
    referral_id: ReferralId,
    agency: &AgencyId,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO referral_access (referral_id, agency_id) VALUES ($1::uuid, $2) \
         ON CONFLICT DO NOTHING",
    )
    .bind(referral_id.to_string())
    .bind(agency.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
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

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
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

    async fn submit(
        &self,
        referral: &Referral,
        event: &Event,
        deliveries: &[NewDelivery],
    ) -> Result<SubmitOutcome, StoreError> {
        let mut tx = self.write().await?;
        let query = sqlx::query(
            "INSERT INTO referrals (id, sender, client_ref, fingerprint, addressee_agency, \
             addressee_service, addressee_province, recipient, kind, urgency, subject_sex, \
             subject_age_band, subject_province, client_pseudonym, state, version, created_at, \
             updated_at, case_file) \
             VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             $17, $18, $19)",
        );
        let inserted = rows::bind_referral!(query, referral)
            .execute(&mut *tx)
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                // The insert waited for the other transaction holding this (sender, client_ref) to
                // commit, so its referral is visible now. This transaction is aborted: roll it back.
                tx.rollback().await?;
                return match self
                    .referral_by_client_ref(&referral.sender, &referral.client_ref)
                    .await?
                {
                    Some(existing) => Ok(SubmitOutcome::Existing(Box::new(existing))),
                    None => Err(e.into()),
                };
            }
            Err(e) => return Err(e.into()),
        }
        grant_access(&mut tx, referral.id, &referral.sender).await?;
        grant_access(&mut tx, referral.id, &referral.recipient).await?;
        insert_event(&mut tx, event).await?;
        insert_deliveries(&mut tx, referral.id, deliveries, micros(event.at)).await?;
        tx.commit().await?;
        Ok(SubmitOutcome::Created)
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
        let row = sqlx::query(concat!(
            "SELECT ",
            referral_columns!(),
            ", case_file FROM referrals WHERE sender = $1 AND client_ref = $2"
        ))
        .bind(sender.as_str())
        .bind(client_ref.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| rows::referral(&r, true)).transpose()
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

    async fn parties(&self, id: ReferralId) -> Result<Vec<AgencyId>, StoreError> {
        // `COLLATE "C"`: byte order, as SQLite's, whatever the database's collation.
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT agency_id FROM referral_access WHERE referral_id = $1::uuid \
             ORDER BY agency_id COLLATE \"C\"",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|a| {
                AgencyId::parse("agency_id", a).map_err(|e| rows::corrupt("referral_access", e))
            })
            .collect()
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

    /// In one READ COMMITTED transaction: the duplicate check, the versioned update (a concurrent
    /// writer's update of the same row makes this one wait, then match no row), access, event and
    /// deliveries. Each statement sees what committed before it started, which is what lets the races
    /// below end as SQLite's serialised writers would.
    async fn apply(&self, change: &Change) -> Result<ChangeOutcome, StoreError> {
        let actor = &change.event.actor;
        let request_id = change.event.request_id.as_ref();
        let mut tx = self.write().await?;
        if let Some(request_id) = request_id
            && let Some(done) = recorded_request(&mut *tx, actor, request_id).await?
        {
            tx.rollback().await?;
            return Ok(ChangeOutcome::Duplicate(Box::new(done)));
        }
        let updated = sqlx::query(
            "UPDATE referrals SET state = $1, version = version + 1, updated_at = $2, \
             recipient = COALESCE($3, recipient) WHERE id = $4::uuid AND version = $5",
        )
        .bind(change.state.as_str())
        .bind(micros(change.at))
        .bind(change.new_recipient.as_ref().map(|a| a.as_str().to_owned()))
        .bind(change.referral_id.to_string())
        .bind(change.expected_version)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            // A retry of this very request may have won the race for this version: SQLite's writer
            // lock would have shown it to the duplicate check above, so look again before calling
            // the change stale.
            let done = match request_id {
                Some(request_id) => recorded_request(&mut *tx, actor, request_id).await?,
                None => None,
            };
            tx.rollback().await?;
            return Ok(match done {
                Some(done) => ChangeOutcome::Duplicate(Box::new(done)),
                None => ChangeOutcome::Stale,
            });
        }
        if let Some(recipient) = &change.new_recipient {
            grant_access(&mut tx, change.referral_id, recipient).await?;
        }
        if let Err(e) = insert_event(&mut tx, &change.event).await {
            // Another transaction recorded this actor's request id first (on another referral: on
            // the same one it would have made this change stale). The insert waited for it to
            // commit, so its event is visible once this aborted transaction is rolled back.
            if let StoreError::Database(db) = &e
                && is_unique_violation(db)
                && let Some(request_id) = request_id
            {
                tx.rollback().await?;
                if let Some(done) = recorded_request(&self.pool, actor, request_id).await? {
                    return Ok(ChangeOutcome::Duplicate(Box::new(done)));
                }
            }
            return Err(e);
        }
        insert_deliveries(
            &mut tx,
            change.referral_id,
            &change.deliveries,
            micros(change.at),
        )
        .await?;
        tx.commit().await?;
        Ok(ChangeOutcome::Recorded)
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

    async fn lease_outbox(
        &self,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<MailboxEntry>, StoreError> {
        let now = micros(time::OffsetDateTime::now_utc());
        let until = now.saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
        let rows = sqlx::query(concat!(
            "UPDATE mailbox SET lease_until = $1 WHERE seq IN \
             (SELECT seq FROM mailbox WHERE lease_until IS NULL OR lease_until < $2 \
              ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING ",
            mailbox_columns!()
        ))
        .bind(until)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut entries = rows
            .iter()
            .map(rows::mailbox)
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| e.seq);
        Ok(entries)
    }

    async fn remove_published(&self, seqs: &[i64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM mailbox WHERE seq = ANY ($1)")
            .bind(seqs)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn remove_mailbox_entry(
        &self,
        agency: &AgencyId,
        delivery_id: uuid::Uuid,
    ) -> Result<bool, StoreError> {
        let done =
            sqlx::query("DELETE FROM mailbox WHERE agency_id = $1 AND delivery_id = $2::uuid")
                .bind(agency.as_str())
                .bind(delivery_id.to_string())
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }
}
