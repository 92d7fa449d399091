//! The production store: PostgreSQL, shared by every broker process.
//!
//! Concurrency is optimistic (a change applies only to the version it read, see [`Change`]) and the
//! unique constraints settle races on `client_ref` and `request_id`. The outbox relay claims rows with
//! `FOR UPDATE SKIP LOCKED` and a lease, so relays in several processes never publish the same row at
//! the same time. Queries are static SQL with bound parameters.

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
    /// Connects to `url` (`postgres://...`) and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn write(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }
}

const REFERRAL_COLUMNS: &str = "id, sender, client_ref, fingerprint, addressee_agency, \
    addressee_service, addressee_province, recipient, kind, urgency, subject_sex, subject_age_band, \
    subject_province, client_pseudonym, state, version, created_at, updated_at";

async fn insert_event(tx: &mut Transaction<'_, Postgres>, event: &Event) -> Result<(), StoreError> {
    let details =
        serde_json::to_string(&event.details).map_err(|e| rows::corrupt("referral_events", e))?;
    let query = sqlx::query(
        "INSERT INTO referral_events \
         (id, referral_id, kind, actor, actor_person, at, note, state_after, details, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
             VALUES ($1, $2, $3, $4, $5)",
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
    sqlx::query("INSERT INTO referral_access (referral_id, agency_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(referral_id.to_string())
        .bind(agency.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
        );
        let inserted = rows::bind_referral!(query, referral)
            .execute(&mut *tx)
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                drop(tx);
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
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REFERRAL_COLUMNS}, case_file FROM referrals WHERE id = $1"
        )))
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
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REFERRAL_COLUMNS}, case_file FROM referrals WHERE sender = $1 AND client_ref = $2"
        )))
        .bind(sender.as_str())
        .bind(client_ref.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| rows::referral(&r, true)).transpose()
    }

    async fn has_access(&self, agency: &AgencyId, id: ReferralId) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1::BIGINT FROM referral_access WHERE agency_id = $1 AND referral_id = $2",
        )
        .bind(agency.as_str())
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    async fn parties(&self, id: ReferralId) -> Result<Vec<AgencyId>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT agency_id FROM referral_access WHERE referral_id = $1 ORDER BY agency_id",
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
        let rows = sqlx::query("SELECT * FROM referral_events WHERE referral_id = $1 ORDER BY seq")
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::event).collect()
    }

    async fn event(&self, id: uuid::Uuid) -> Result<Option<Event>, StoreError> {
        let row = sqlx::query("SELECT * FROM referral_events WHERE id = $1")
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
        let row = sqlx::query("SELECT * FROM referral_events WHERE actor = $1 AND request_id = $2")
            .bind(actor.as_str())
            .bind(request_id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::event).transpose()
    }

    async fn list(
        &self,
        agency: &AgencyId,
        query: &ListQuery,
    ) -> Result<Vec<Referral>, StoreError> {
        let states: Option<Vec<String>> = (!query.states.is_empty())
            .then(|| query.states.iter().map(|s| s.as_str().to_owned()).collect());
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals r \
             WHERE r.id IN (SELECT referral_id FROM referral_access WHERE agency_id = $1) \
             AND ($2::TEXT IS NULL OR ($2 = 'sender' AND r.sender = $1) \
                              OR ($2 = 'recipient' AND r.recipient = $1)) \
             AND ($3::TEXT[] IS NULL OR r.state = ANY($3)) \
             AND ($4::TEXT IS NULL OR r.kind = $4) \
             AND ($5::TEXT IS NULL OR r.id < $5) \
             ORDER BY r.id DESC LIMIT $6"
        )))
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

    async fn apply(&self, change: &Change) -> Result<ChangeOutcome, StoreError> {
        let mut tx = self.write().await?;
        if let Some(request_id) = &change.event.request_id
            && let Some(row) =
                sqlx::query("SELECT * FROM referral_events WHERE actor = $1 AND request_id = $2")
                    .bind(change.event.actor.as_str())
                    .bind(request_id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
        {
            return Ok(ChangeOutcome::Duplicate(Box::new(rows::event(&row)?)));
        }
        let updated = sqlx::query(
            "UPDATE referrals SET state = $1, version = version + 1, updated_at = $2, \
             recipient = COALESCE($3, recipient) WHERE id = $4 AND version = $5",
        )
        .bind(change.state.as_str())
        .bind(micros(change.at))
        .bind(change.new_recipient.as_ref().map(|a| a.as_str().to_owned()))
        .bind(change.referral_id.to_string())
        .bind(change.expected_version)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(ChangeOutcome::Stale);
        }
        if let Some(recipient) = &change.new_recipient {
            grant_access(&mut tx, change.referral_id, recipient).await?;
        }
        if let Err(e) = insert_event(&mut tx, &change.event).await {
            // Another transaction recorded this actor's request id first (on another referral:
            // on the same one it would have made this change stale).
            if let StoreError::Database(db) = &e
                && is_unique_violation(db)
                && let Some(request_id) = &change.event.request_id
            {
                drop(tx);
                if let Some(done) = self
                    .event_by_request(&change.event.actor, request_id)
                    .await?
                {
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
        let rows = sqlx::query(
            "SELECT * FROM mailbox WHERE agency_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
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
        let row = sqlx::query("SELECT * FROM mailbox WHERE agency_id = $1 AND delivery_id = $2")
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
        let until = now + lease.as_micros() as i64;
        let mut tx = self.write().await?;
        let rows = sqlx::query(
            "UPDATE mailbox SET lease_until = $1 WHERE seq IN \
             (SELECT seq FROM mailbox WHERE lease_until IS NULL OR lease_until < $2 \
              ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING *",
        )
        .bind(until)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
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
        sqlx::query("DELETE FROM mailbox WHERE seq = ANY($1)")
            .bind(seqs.to_vec())
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
        let mut tx = self.write().await?;
        let done = sqlx::query("DELETE FROM mailbox WHERE agency_id = $1 AND delivery_id = $2")
            .bind(agency.as_str())
            .bind(delivery_id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }
}
