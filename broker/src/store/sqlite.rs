//! The embedded store: one SQLite file in WAL mode.
//!
//! Reads go to a pool of connections, which WAL lets run beside the writer. Every write goes through
//! the one [`Writer`], which commits concurrent writes in one transaction (group commit), so the
//! fsync that `synchronous=FULL` costs is paid once per batch rather than once per request. Each
//! write runs in its own savepoint, so the others in its batch never see a half of it. Queries are
//! static SQL with bound parameters.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection};

use super::rows;
use super::writer::Writer;
use super::{Change, ChangeOutcome, MailboxEntry, NewDelivery, Store, SubmitOutcome, micros};
use crate::directory::Directory;
use crate::error::StoreError;
use crate::ids::{AgencyId, ClientRef, ReferralId, RequestId};
use crate::referral::{Event, ListQuery, Referral};

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Readers.
    pool: SqlitePool,
    writer: Writer,
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
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        // The writer's own connection: one, so writes never queue on SQLite's lock inside this
        // process (another process, such as `directory import`, waits on the busy timeout).
        let writes = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            writer: Writer::start(writes),
        })
    }

    /// Opens the database file at `path`.
    pub async fn open(path: &Path, durable: bool) -> Result<Self, StoreError> {
        Self::connect(&format!("sqlite://{}", path.display()), durable).await
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

const REFERRAL_COLUMNS: &str = "id, sender, client_ref, fingerprint, addressee_agency, \
    addressee_service, addressee_province, recipient, kind, urgency, subject_sex, subject_age_band, \
    subject_province, client_pseudonym, state, version, created_at, updated_at";

/// A list of ids as the JSON array `json_each` reads: one bound parameter however many ids.
fn json_list<T: ToString>(items: &[T]) -> String {
    serde_json::Value::from(items.iter().map(ToString::to_string).collect::<Vec<_>>()).to_string()
}

async fn insert_event(conn: &mut SqliteConnection, event: &Event) -> Result<(), StoreError> {
    let details =
        serde_json::to_string(&event.details).map_err(|e| rows::corrupt("referral_events", e))?;
    let query = sqlx::query(
        "INSERT INTO referral_events \
         (id, referral_id, kind, actor, actor_person, at, note, state_after, details, request_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    );
    rows::bind_event!(query, event, details)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn insert_deliveries(
    conn: &mut SqliteConnection,
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
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn grant_access(
    conn: &mut SqliteConnection,
    referral_id: ReferralId,
    agency: &AgencyId,
) -> Result<(), StoreError> {
    sqlx::query("INSERT OR IGNORE INTO referral_access (referral_id, agency_id) VALUES (?, ?)")
        .bind(referral_id.to_string())
        .bind(agency.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn event_by_request(
    conn: &mut SqliteConnection,
    actor: &AgencyId,
    request_id: &RequestId,
) -> Result<Option<Event>, StoreError> {
    let row = sqlx::query("SELECT * FROM referral_events WHERE actor = ? AND request_id = ?")
        .bind(actor.as_str())
        .bind(request_id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(rows::event).transpose()
}

async fn referral_by_client_ref(
    conn: &mut SqliteConnection,
    sender: &AgencyId,
    client_ref: &ClientRef,
) -> Result<Option<Referral>, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {REFERRAL_COLUMNS}, case_file FROM referrals WHERE sender = ? AND client_ref = ?"
    )))
    .bind(sender.as_str())
    .bind(client_ref.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| rows::referral(&r, true)).transpose()
}

/// Inserts a new referral with its access, first event and deliveries, unless its sender already
/// used its `client_ref`.
async fn submit(
    conn: &mut SqliteConnection,
    referral: &Referral,
    event: &Event,
    deliveries: &[NewDelivery],
) -> Result<SubmitOutcome, StoreError> {
    let query = sqlx::query(
        "INSERT INTO referrals (id, sender, client_ref, fingerprint, addressee_agency, \
         addressee_service, addressee_province, recipient, kind, urgency, subject_sex, \
         subject_age_band, subject_province, client_pseudonym, state, version, created_at, \
         updated_at, case_file) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (sender, client_ref) DO NOTHING",
    );
    let inserted = rows::bind_referral!(query, referral)
        .execute(&mut *conn)
        .await?;
    if inserted.rows_affected() == 0 {
        return match referral_by_client_ref(conn, &referral.sender, &referral.client_ref).await? {
            Some(existing) => Ok(SubmitOutcome::Existing(Box::new(existing))),
            None => Err(rows::corrupt(
                "referrals",
                "a client_ref conflict without its referral",
            )),
        };
    }
    grant_access(conn, referral.id, &referral.sender).await?;
    grant_access(conn, referral.id, &referral.recipient).await?;
    insert_event(conn, event).await?;
    insert_deliveries(conn, referral.id, deliveries, micros(event.at)).await?;
    Ok(SubmitOutcome::Created)
}

/// Applies a change if its version is still current and its request id unused.
async fn apply(conn: &mut SqliteConnection, change: &Change) -> Result<ChangeOutcome, StoreError> {
    if let Some(request_id) = &change.event.request_id
        && let Some(done) = event_by_request(conn, &change.event.actor, request_id).await?
    {
        return Ok(ChangeOutcome::Duplicate(Box::new(done)));
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
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() == 0 {
        return Ok(ChangeOutcome::Stale);
    }
    if let Some(recipient) = &change.new_recipient {
        grant_access(conn, change.referral_id, recipient).await?;
    }
    insert_event(conn, &change.event).await?;
    insert_deliveries(
        conn,
        change.referral_id,
        &change.deliveries,
        micros(change.at),
    )
    .await?;
    Ok(ChangeOutcome::Recorded)
}

#[async_trait]
impl Store for SqliteStore {
    async fn import_directory(&self, directory: &Directory) -> Result<i64, StoreError> {
        let document =
            serde_json::to_string(directory).map_err(|e| rows::corrupt("directory", e))?;
        self.writer
            .write(Box::new(move |conn| {
                Box::pin(async move {
                    Ok(sqlx::query_scalar(
                        "INSERT INTO directory (id, document, version, imported_at) \
                         VALUES (1, ?, 1, ?) \
                         ON CONFLICT (id) DO UPDATE SET document = excluded.document, \
                         version = directory.version + 1, imported_at = excluded.imported_at \
                         RETURNING version",
                    )
                    .bind(document)
                    .bind(micros(time::OffsetDateTime::now_utc()))
                    .fetch_one(&mut *conn)
                    .await?)
                })
            }))
            .await
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
        let (referral, event, deliveries) = (referral.clone(), event.clone(), deliveries.to_vec());
        self.writer
            .write(Box::new(move |conn| {
                Box::pin(async move { submit(conn, &referral, &event, &deliveries).await })
            }))
            .await
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
        let mut conn = self.pool.acquire().await?;
        referral_by_client_ref(&mut conn, sender, client_ref).await
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

    async fn referrals_with_history(
        &self,
        ids: &[ReferralId],
    ) -> Result<Vec<(Referral, Vec<Event>)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = json_list(ids);
        let referrals = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REFERRAL_COLUMNS}, case_file FROM referrals \
             WHERE id IN (SELECT value FROM json_each(?))"
        )))
        .bind(&list)
        .fetch_all(&self.pool)
        .await?;
        let events = sqlx::query(
            "SELECT * FROM referral_events \
             WHERE referral_id IN (SELECT value FROM json_each(?)) ORDER BY seq",
        )
        .bind(&list)
        .fetch_all(&self.pool)
        .await?;
        let events = events
            .iter()
            .map(rows::event)
            .collect::<Result<Vec<_>, _>>()?;
        let referrals = referrals
            .iter()
            .map(|r| rows::referral(r, true))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(super::with_histories(referrals, events))
    }

    async fn events(&self, ids: &[uuid::Uuid]) -> Result<Vec<Event>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT * FROM referral_events WHERE id IN (SELECT value FROM json_each(?)) ORDER BY seq",
        )
        .bind(json_list(ids))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::event).collect()
    }

    async fn event_by_request(
        &self,
        actor: &AgencyId,
        request_id: &RequestId,
    ) -> Result<Option<Event>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        event_by_request(&mut conn, actor, request_id).await
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
        let change = change.clone();
        self.writer
            .write(Box::new(move |conn| {
                Box::pin(async move { apply(conn, &change).await })
            }))
            .await
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
        // One process writes an SQLite file, so its clock is the database's clock.
        let now = micros(time::OffsetDateTime::now_utc());
        let until = now.saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
        let rows = self
            .writer
            .write(Box::new(move |conn| {
                Box::pin(async move {
                    Ok(sqlx::query(
                        "UPDATE mailbox SET lease_until = ?1 WHERE seq IN \
                         (SELECT seq FROM mailbox WHERE lease_until IS NULL OR lease_until < ?2 \
                          ORDER BY seq LIMIT ?3) RETURNING *",
                    )
                    .bind(until)
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *conn)
                    .await?)
                })
            }))
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
        let list = serde_json::Value::from(seqs.to_vec()).to_string();
        self.writer
            .write(Box::new(move |conn| {
                Box::pin(async move {
                    sqlx::query(
                        "DELETE FROM mailbox WHERE seq IN (SELECT value FROM json_each(?))",
                    )
                    .bind(list)
                    .execute(&mut *conn)
                    .await?;
                    Ok(())
                })
            }))
            .await
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
        let (agency, list) = (agency.as_str().to_owned(), json_list(delivery_ids));
        self.writer
            .write(Box::new(move |conn| {
                Box::pin(async move {
                    let done = sqlx::query(
                        "DELETE FROM mailbox WHERE agency_id = ? \
                         AND delivery_id IN (SELECT value FROM json_each(?))",
                    )
                    .bind(agency)
                    .bind(list)
                    .execute(&mut *conn)
                    .await?;
                    Ok(done.rows_affected())
                })
            }))
            .await
    }
}
