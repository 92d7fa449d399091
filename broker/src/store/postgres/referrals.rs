//! The production store's [`ReferralStore`]: the directory and every read of referrals and their
//! history. Submits and changes are written by `submits` and `changes`.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::PgPool;

use super::columns::{EVENT_COLUMNS, REFERRAL_COLUMNS, Sql};
use super::{PgStore, as_text, submits};
use crate::directory::Directory;
use crate::error::StoreError;
use crate::ids::{AgencyId, ClientRef, ReferralId, RequestId};
use crate::referral::{Event, ListQuery, Referral};
use crate::store::{
    Change, ChangeOutcome, DueDeadline, NewDelivery, PartiesNow, PublishedKey, ReferralStore,
    Snapshot, SubmitOutcome, micros, rows, with_histories,
};

/// The event `actor` recorded under `request_id`, if any, read through `executor` (the pool or an open
/// transaction, which in READ COMMITTED sees everything committed before the statement starts).
pub(super) async fn recorded_request<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    actor: &AgencyId,
    request_id: &RequestId,
) -> Result<Option<Event>, StoreError> {
    static SQL: Sql = Sql::new(|| {
        format!("SELECT {EVENT_COLUMNS} FROM referral_events WHERE actor = $1 AND request_id = $2")
    });
    let row = sqlx::query(SQL.as_str())
        .bind(actor.as_str())
        .bind(request_id.as_str())
        .fetch_optional(executor)
        .await?;
    row.as_ref().map(rows::event).transpose()
}

/// The referral `sender` submitted under `client_ref`, with its case file: what a repeated submit
/// returns, read by the store and by the submit writers alike.
pub(super) async fn by_client_ref(
    pool: &PgPool,
    sender: &AgencyId,
    client_ref: &ClientRef,
) -> Result<Option<Referral>, StoreError> {
    static SQL: Sql = Sql::new(|| {
        format!(
            "SELECT {REFERRAL_COLUMNS}, case_file FROM referrals \
             WHERE sender = $1 AND client_ref = $2"
        )
    });
    let row = sqlx::query(SQL.as_str())
        .bind(sender.as_str())
        .bind(client_ref.as_str())
        .fetch_optional(pool)
        .await?;
    row.map(|r| rows::referral(&r, true)).transpose()
}

/// The statement of a snapshot, `condition` choosing the referrals: each referral without its case
/// file, who may see it and who of those was only notified (both from one read of its access rows;
/// `COLLATE "C"`: byte order, as SQLite's, whatever the database's collation) and the kinds of its
/// events.
fn snapshots_where(condition: &str) -> String {
    format!(
        "SELECT {REFERRAL_COLUMNS}, \
         coalesce(a.parties, '{{}}'::text[]) AS parties, \
         coalesce(a.notified, '{{}}'::text[]) AS notified, \
         ARRAY(SELECT kind FROM referral_events WHERE referral_id = r.id ORDER BY seq) \
           AS history \
         FROM referrals r CROSS JOIN LATERAL ( \
           SELECT array_agg(agency_id ORDER BY agency_id COLLATE \"C\") AS parties, \
             array_agg(agency_id ORDER BY agency_id COLLATE \"C\") \
               FILTER (WHERE role = 'notified') AS notified \
           FROM referral_access WHERE referral_id = r.id) a \
         {condition}"
    )
}

/// A row of [`snapshots_where`], as a [`Snapshot`].
fn snapshot_of(row: &sqlx::postgres::PgRow) -> Result<Snapshot, StoreError> {
    let parties: Vec<String> = row.try_get("parties")?;
    let notified: Vec<String> = row.try_get("notified")?;
    let history: Vec<String> = row.try_get("history")?;
    rows::snapshot(row, parties, notified, history)
}

#[async_trait]
impl ReferralStore for PgStore {
    async fn import_directory(&self, directory: &Directory) -> Result<i64, StoreError> {
        let document =
            serde_json::to_string(directory).map_err(|e| rows::undecodable("directory", e))?;
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
            let dir = serde_json::from_str(&doc).map_err(|e| rows::undecodable("directory", e))?;
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

    /// Written by `submits`, together with the submits beside it.
    async fn submit(
        &self,
        referral: &Referral,
        event: &Event,
        deliveries: &[NewDelivery],
        deadline: Option<time::OffsetDateTime>,
    ) -> Result<SubmitOutcome, StoreError> {
        self.submits
            .submit(submits::Submission {
                referral: referral.clone(),
                event: event.clone(),
                deliveries: deliveries.to_vec(),
                deadline,
            })
            .await
    }

    async fn referral(&self, id: ReferralId) -> Result<Option<Referral>, StoreError> {
        static SQL: Sql = Sql::new(|| {
            format!("SELECT {REFERRAL_COLUMNS}, case_file FROM referrals WHERE id = $1::uuid")
        });
        let row = sqlx::query(SQL.as_str())
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
        static SQL: Sql = Sql::new(|| snapshots_where("WHERE id = $1::uuid"));
        let row = sqlx::query(SQL.as_str())
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(snapshot_of).transpose()
    }

    /// Not kept prepared, for the reason given at [`PgStore::referrals_with_history`].
    async fn snapshots(&self, ids: &[ReferralId]) -> Result<Vec<Snapshot>, StoreError> {
        static SQL: Sql = Sql::new(|| snapshots_where("WHERE id = ANY ($1::text[]::uuid[])"));
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(SQL.as_str())
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
        static SQL: Sql = Sql::new(|| {
            format!(
                "SELECT {EVENT_COLUMNS} FROM referral_events WHERE referral_id = $1::uuid \
                 ORDER BY seq"
            )
        });
        let rows = sqlx::query(SQL.as_str())
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::event).collect()
    }

    async fn event(&self, id: uuid::Uuid) -> Result<Option<Event>, StoreError> {
        static SQL: Sql =
            Sql::new(|| format!("SELECT {EVENT_COLUMNS} FROM referral_events WHERE id = $1::uuid"));
        let row = sqlx::query(SQL.as_str())
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::event).transpose()
    }

    /// The batch reads are not kept as prepared statements: PostgreSQL would soon plan them once
    /// for any array of ids, and a plan chosen while the table was small (a sequential scan) would
    /// then read the whole table for every batch as it grows. Unnamed, they are planned with the
    /// ids in hand, which always finds the index.
    async fn parties_now(&self, ids: &[ReferralId]) -> Result<Vec<PartiesNow>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = as_text(ids);
        let rows = match parties_now(self.checks(), &ids).await {
            Ok(rows) => rows,
            // A connection of the checks' pool may have died unseen; the main pool's are
            // pinged before use.
            Err(e) if e.is_transient() => parties_now(&self.pool, &ids).await?,
            Err(e) => return Err(e),
        };
        rows.iter().map(rows::parties_now).collect()
    }

    async fn referrals_with_history(
        &self,
        ids: &[ReferralId],
    ) -> Result<Vec<(Referral, Vec<Event>)>, StoreError> {
        static REFERRALS: Sql = Sql::new(|| {
            format!(
                "SELECT {REFERRAL_COLUMNS}, case_file FROM referrals \
                 WHERE id = ANY ($1::text[]::uuid[])"
            )
        });
        static EVENTS: Sql = Sql::new(|| {
            format!(
                "SELECT {EVENT_COLUMNS} FROM referral_events \
                 WHERE referral_id = ANY ($1::text[]::uuid[]) ORDER BY seq"
            )
        });
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = as_text(ids);
        let referrals = sqlx::query(REFERRALS.as_str())
            .persistent(false)
            .bind(&ids)
            .fetch_all(&self.pool)
            .await?;
        let events = sqlx::query(EVENTS.as_str())
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
        Ok(with_histories(referrals, events))
    }

    async fn events(&self, ids: &[uuid::Uuid]) -> Result<Vec<Event>, StoreError> {
        static SQL: Sql = Sql::new(|| {
            format!(
                "SELECT {EVENT_COLUMNS} FROM referral_events \
                 WHERE id = ANY ($1::text[]::uuid[]) ORDER BY seq"
            )
        });
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(SQL.as_str())
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
        static SQL: Sql = Sql::new(|| {
            format!(
                "SELECT {REFERRAL_COLUMNS} FROM referrals r \
                 WHERE r.id IN (SELECT referral_id FROM referral_access WHERE agency_id = $1) \
                 AND ($2::text IS NULL OR ($2 = 'sender' AND r.sender = $1) \
                                       OR ($2 = 'recipient' AND r.recipient = $1)) \
                 AND ($3::text[] IS NULL OR r.state = ANY ($3)) \
                 AND ($4::text IS NULL OR r.kind = $4) \
                 AND ($5::uuid IS NULL OR r.id < $5::uuid) \
                 AND ($7::text IS NULL OR (r.client_pseudonym = $7 \
                                           AND (r.sender = $1 OR r.recipient = $1))) \
                 ORDER BY r.id DESC LIMIT $6"
            )
        });
        let states: Option<Vec<String>> = (!query.states.is_empty())
            .then(|| query.states.iter().map(|s| s.as_str().to_owned()).collect());
        let rows = sqlx::query(SQL.as_str())
            .bind(agency.as_str())
            .bind(query.role.map(|r| r.to_string()))
            .bind(states)
            .bind(query.kind.as_ref().map(|k| k.as_str().to_owned()))
            .bind(query.before.map(|b| b.to_string()))
            .bind(i64::from(query.limit))
            .bind(
                query
                    .client_pseudonym
                    .as_ref()
                    .map(|p| p.as_str().to_owned()),
            )
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| rows::referral(r, false)).collect()
    }

    /// Written by `changes`, in one statement.
    async fn apply(&self, change: &Change) -> Result<ChangeOutcome, StoreError> {
        self.apply_one(change).await
    }

    /// Written by `changes`: in one statement where the changes allow it.
    async fn apply_all(&self, changes: &[Change]) -> Result<Vec<ChangeOutcome>, StoreError> {
        self.apply_together(changes).await
    }

    async fn forget_sealed(&self, id: ReferralId) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE referrals SET case_file = ''::bytea WHERE id = $1::uuid")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        static HISTORY: Sql = Sql::new(|| {
            format!(
                "SELECT {EVENT_COLUMNS} FROM referral_events WHERE referral_id = $1::uuid \
                 ORDER BY seq FOR UPDATE"
            )
        });
        let rows = sqlx::query(HISTORY.as_str())
            .bind(id.to_string())
            .fetch_all(&mut *tx)
            .await?;
        for row in &rows {
            let mut event = rows::event(row)?;
            if event.forget_sealed() {
                sqlx::query("UPDATE referral_events SET details = $1 WHERE id = $2::uuid")
                    .bind(rows::details_column(&event)?)
                    .bind(event.id.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn due_deadlines(
        &self,
        now: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<DueDeadline>, StoreError> {
        let rows = sqlx::query(
            "SELECT id::text AS referral_id, ack_due_at AS due_at, escalations::int8 AS escalations \
             FROM referrals WHERE ack_due_at <= $1 ORDER BY ack_due_at, id LIMIT $2",
        )
        .bind(micros(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::due_deadline).collect()
    }

    async fn deadline(&self, id: ReferralId) -> Result<Option<DueDeadline>, StoreError> {
        let row = sqlx::query(
            "SELECT id::text AS referral_id, ack_due_at AS due_at, escalations::int8 AS escalations \
             FROM referrals WHERE id = $1::uuid AND ack_due_at IS NOT NULL",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rows::due_deadline).transpose()
    }

    async fn overdue_timers(
        &self,
        now: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<DueDeadline>, StoreError> {
        let rows = sqlx::query(
            "SELECT id::text AS referral_id, ack_due_at AS due_at, escalations::int8 AS escalations \
             FROM referrals WHERE ack_due_at IS NOT NULL AND (ack_due_at <= $1 OR escalations > 0) \
             ORDER BY ack_due_at, id LIMIT $2",
        )
        .bind(micros(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::due_deadline).collect()
    }

    async fn referrals_active_between(
        &self,
        from: time::OffsetDateTime,
        to: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<ReferralId>, StoreError> {
        // The kinds are `crate::store::FIGURED_EVENTS`, spelled out: a statement is a literal.
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id::text FROM referrals WHERE created_at >= $1 AND created_at < $2 \
             UNION SELECT referral_id::text FROM referral_events \
             WHERE at >= $1 AND at < $2 \
             AND kind IN ('follow_up', 'follow_up_overdue', 'escalated') LIMIT $3",
        )
        .bind(micros(from))
        .bind(micros(to))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id,)| ReferralId::parse("id", &id).map_err(|_| rows::corrupt("referrals", "id")))
            .collect()
    }

    async fn publish_key(&self, key: &PublishedKey) -> Result<PublishedKey, StoreError> {
        super::keys::publish(&self.pool, key).await
    }

    async fn agency_keys(
        &self,
        agencies: &[AgencyId],
        key_ids: &[Vec<u8>],
    ) -> Result<Vec<PublishedKey>, StoreError> {
        super::keys::read(&self.pool, agencies, key_ids).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// [`ReferralStore::parties_now`]'s one statement, on `pool`.
async fn parties_now(
    pool: &PgPool,
    ids: &[String],
) -> Result<Vec<sqlx::postgres::PgRow>, StoreError> {
    Ok(sqlx::query(
        "SELECT id::text AS id, sender, recipient FROM referrals \
         WHERE id = ANY ($1::text[]::uuid[])",
    )
    .persistent(false)
    .bind(ids)
    .fetch_all(pool)
    .await?)
}
