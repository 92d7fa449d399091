//! The embedded store: one SQLite file in WAL mode.
//!
//! Every write runs in `BEGIN IMMEDIATE`, so concurrent writers queue on SQLite's lock instead of
//! failing on a read-to-write upgrade. Queries are static SQL with bound parameters.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::rows;
use super::{Change, ChangeOutcome, MailboxEntry, NewDelivery, Store, SubmitOutcome, micros};
use crate::directory::Directory;
use crate::error::StoreError;
use crate::ids::{AgencyId, ClientRef, ReferralId, RequestId};
use crate::referral::{Event, ListQuery, Referral};

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://path` or `sqlite::memory:`) and runs
    /// the migrations. `durable` selects `synchronous=FULL` (survives power loss) over `NORMAL`
    /// (survives a process crash).
    pub async fn connect(url: &str, durable: bool) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if durable {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Opens the database file at `path`.
    pub async fn open(path: &Path, durable: bool) -> Result<Self, StoreError> {
        Self::connect(&format!("sqlite://{}", path.display()), durable).await
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

const REFERRAL_COLUMNS: &str = "id, sender, client_ref, fingerprint, addressee_agency, \
    addressee_service, addressee_province, recipient, kind, urgency, subject_sex, subject_age_band, \
    subject_province, client_pseudonym, state, version, created_at, updated_at";

async fn insert_event(tx: &mut Transaction<'_, Sqlite>, event: &Event) -> Result<(), StoreError> {
    let details =
        serde_json::to_string(&event.details).map_err(|e| rows::corrupt("referral_events", e))?;
    let query = sqlx::query(
        "INSERT INTO referral_events \
         (id, referral_id, kind, actor, actor_person, at, note, state_after, details, request_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    );
    rows::bind_event!(query, event, details)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_deliveries(
    tx: &mut Transaction<'_, Sqlite>,
    referral_id: ReferralId,
    deliveries: &[NewDelivery],
    at: i64,
) -> Result<(), StoreError> {
    for d in deliveries {
        sqlx::query(
            "INSERT INTO mailbox (agency_id, delivery_id, referral_id, event_id, created_at) \
             VALUES (?, ?, ?, ?, ?)",
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
    tx: &mut Transaction<'_, Sqlite>,
    referral_id: ReferralId,
    agency: &AgencyId,
) -> Result<(), StoreError> {
    sqlx::query("INSERT OR IGNORE INTO referral_access (referral_id, agency_id) VALUES (?, ?)")
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
impl Store for SqliteStore {
    async fn import_directory(&self, directory: &Directory) -> Result<i64, StoreError> {
        let document =
            serde_json::to_string(directory).map_err(|e| rows::corrupt("directory", e))?;
        let mut tx = self.write().await?;
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO directory (id, document, version, imported_at) VALUES (1, ?, 1, ?) \
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            "SELECT {REFERRAL_COLUMNS}, case_file FROM referrals WHERE id = ?"
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
            "SELECT {REFERRAL_COLUMNS}, case_file FROM referrals WHERE sender = ? AND client_ref = ?"
        )))
        .bind(sender.as_str())
        .bind(client_ref.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| rows::referral(&r, true)).transpose()
    }

    async fn has_access(&self, agency: &AgencyId, id: ReferralId) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM referral_access WHERE agency_id = ? AND referral_id = ?",
        )
        .bind(agency.as_str())
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    async fn parties(&self, id: ReferralId) -> Result<Vec<AgencyId>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT agency_id FROM referral_access WHERE referral_id = ? ORDER BY agency_id",
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
        let rows = sqlx::query("SELECT * FROM referral_events WHERE referral_id = ? ORDER BY seq")
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::event).collect()
    }

    async fn event(&self, id: uuid::Uuid) -> Result<Option<Event>, StoreError> {
        let row = sqlx::query("SELECT * FROM referral_events WHERE id = ?")
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
        let row = sqlx::query("SELECT * FROM referral_events WHERE actor = ? AND request_id = ?")
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
        let states = (!query.states.is_empty()).then(|| {
            serde_json::Value::from(query.states.iter().map(|s| s.as_str()).collect::<Vec<_>>())
                .to_string()
        });
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals r \
             WHERE r.id IN (SELECT referral_id FROM referral_access WHERE agency_id = ?1) \
             AND (?2 IS NULL OR (?2 = 'sender' AND r.sender = ?1) \
                              OR (?2 = 'recipient' AND r.recipient = ?1)) \
             AND (?3 IS NULL OR r.state IN (SELECT value FROM json_each(?3))) \
             AND (?4 IS NULL OR r.kind = ?4) \
             AND (?5 IS NULL OR r.id < ?5) \
             ORDER BY r.id DESC LIMIT ?6"
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
                sqlx::query("SELECT * FROM referral_events WHERE actor = ? AND request_id = ?")
                    .bind(change.event.actor.as_str())
                    .bind(request_id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
        {
            return Ok(ChangeOutcome::Duplicate(Box::new(rows::event(&row)?)));
        }
        let updated = sqlx::query(
            "UPDATE referrals SET state = ?, version = version + 1, updated_at = ?, \
             recipient = COALESCE(?, recipient) WHERE id = ? AND version = ?",
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
        insert_event(&mut tx, &change.event).await?;
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
            "SELECT * FROM mailbox WHERE agency_id = ? AND seq > ? ORDER BY seq LIMIT ?",
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
        let row = sqlx::query("SELECT * FROM mailbox WHERE agency_id = ? AND delivery_id = ?")
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
            "UPDATE mailbox SET lease_until = ?1 WHERE seq IN \
             (SELECT seq FROM mailbox WHERE lease_until IS NULL OR lease_until < ?2 \
              ORDER BY seq LIMIT ?3) RETURNING *",
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
        let list = serde_json::Value::from(seqs.to_vec()).to_string();
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM mailbox WHERE seq IN (SELECT value FROM json_each(?))")
            .bind(list)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
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
        let done = sqlx::query("DELETE FROM mailbox WHERE agency_id = ? AND delivery_id = ?")
            .bind(agency.as_str())
            .bind(delivery_id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }
}
