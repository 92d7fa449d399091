//! The embedded store: one SQLite file in WAL mode.
//!
//! Reads go to a few [`Readers`] (threads with their own `rusqlite` connections), which WAL lets run
//! beside the writer. Every write goes through the one [`Writer`] (a thread with its own `rusqlite`
//! connection), which commits concurrent writes in one transaction (group commit), so the fsync that
//! `synchronous=FULL` costs is paid once per batch rather than once per request. Each write runs in
//! its own savepoint, so the others in its batch never see a half of it. Queries are static SQL with
//! bound parameters. sqlx runs the migrations, and its one connection stays open for administrative
//! access (tests use it to reach past the store).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::readers::Readers;
use super::rows;
use super::writer::Writer;
use super::{
    Change, ChangeOutcome, MailboxEntry, NewDelivery, Snapshot, Store, SubmitOutcome, micros,
};
use crate::directory::Directory;
use crate::error::StoreError;
use crate::ids::{AgencyId, ClientRef, ReferralId, RequestId};
use crate::referral::{Event, ListQuery, Referral};

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Migrations and administrative access only.
    pool: SqlitePool,
    readers: Readers,
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
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        // One writing connection, so writes never queue on SQLite's lock inside this process
        // (another process, such as `directory import`, waits on the busy timeout).
        if options.get_filename() == Path::new(":memory:") {
            return Err(rows::corrupt(
                "database",
                "an in-memory database cannot be shared by the readers and the writer; give a file",
            ));
        }
        let writer = Writer::start(options.get_filename(), durable)?;
        let readers = Readers::start(options.get_filename())?;
        Ok(Self {
            pool,
            readers,
            writer,
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

/// The first row a query returns, mapped; `None` if it returns none.
fn first<T>(
    mut rows: rusqlite::Rows<'_>,
    map: impl FnOnce(&rusqlite::Row<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    rows.next()?.map(map).transpose()
}

/// Every row a query returns, mapped.
fn all<T>(
    mut rows: rusqlite::Rows<'_>,
    map: impl Fn(&rusqlite::Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut mapped = Vec::new();
    while let Some(row) = rows.next()? {
        mapped.push(map(row)?);
    }
    Ok(mapped)
}

fn insert_event(conn: &Connection, event: &Event) -> Result<(), StoreError> {
    let details =
        serde_json::to_string(&event.details).map_err(|e| rows::corrupt("referral_events", e))?;
    conn.prepare_cached(
        "INSERT INTO referral_events \
         (id, referral_id, kind, actor, actor_person, at, note, state_after, details, request_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        event.id.to_string(),
        event.referral_id.to_string(),
        event.kind.as_str(),
        event.actor.as_str(),
        event.actor_person.as_str(),
        micros(event.at),
        event.note.as_str(),
        event.state_after.as_str(),
        details,
        event.request_id.as_ref().map(|r| r.as_str()),
    ])?;
    Ok(())
}

fn insert_deliveries(
    conn: &Connection,
    referral_id: ReferralId,
    deliveries: &[NewDelivery],
    at: i64,
) -> Result<(), StoreError> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO mailbox (agency_id, delivery_id, referral_id, event_id, created_at, \
         lease_until) VALUES (?, ?, ?, ?, ?, ?)",
    )?;
    for d in deliveries {
        // Held by this process's clock, the one its relay's leases read.
        let held = d.held.map(|h| {
            micros(time::OffsetDateTime::now_utc())
                .saturating_add(i64::try_from(h.as_micros()).unwrap_or(i64::MAX))
        });
        insert.execute(params![
            d.agency.as_str(),
            d.id.to_string(),
            referral_id.to_string(),
            d.event_id.map(|e| e.to_string()),
            at,
            held,
        ])?;
    }
    Ok(())
}

fn grant_access(
    conn: &Connection,
    referral_id: ReferralId,
    agency: &AgencyId,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO referral_access (referral_id, agency_id) VALUES (?, ?)",
    )?
    .execute(params![referral_id.to_string(), agency.as_str()])?;
    Ok(())
}

fn event_by_request(
    conn: &Connection,
    actor: &AgencyId,
    request_id: &RequestId,
) -> Result<Option<Event>, StoreError> {
    let mut query =
        conn.prepare_cached("SELECT * FROM referral_events WHERE actor = ? AND request_id = ?")?;
    first(
        query.query(params![actor.as_str(), request_id.as_str()])?,
        |r| rows::event(r),
    )
}

/// Inserts a new referral with its access, first event and deliveries, unless its sender already
/// used its `client_ref`: then it returns the id of the referral that has it.
fn submit(
    conn: &Connection,
    referral: &Referral,
    event: &Event,
    deliveries: &[NewDelivery],
) -> Result<Option<ReferralId>, StoreError> {
    let (agency, service, province) = rows::addressee_columns(&referral.addressee);
    let inserted = conn
        .prepare_cached(
            "INSERT INTO referrals (id, sender, client_ref, fingerprint, addressee_agency, \
             addressee_service, addressee_province, recipient, kind, urgency, subject_sex, \
             subject_age_band, subject_province, client_pseudonym, state, version, created_at, \
             updated_at, case_file) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (sender, client_ref) DO NOTHING",
        )?
        .execute(params![
            referral.id.to_string(),
            referral.sender.as_str(),
            referral.client_ref.as_str(),
            referral.fingerprint,
            agency,
            service,
            province,
            referral.recipient.as_str(),
            referral.kind.as_str(),
            referral.urgency.as_str(),
            referral.subject.sex.as_str(),
            referral.subject.age_band.as_str(),
            referral.subject.province.as_str(),
            referral.client_pseudonym.as_ref().map(|p| p.as_str()),
            referral.state.as_str(),
            referral.version,
            micros(referral.created_at),
            micros(referral.updated_at),
            referral.case_file.as_bytes(),
        ])?;
    if inserted == 0 {
        let existing: String = conn
            .prepare_cached("SELECT id FROM referrals WHERE sender = ? AND client_ref = ?")?
            .query_row(
                params![referral.sender.as_str(), referral.client_ref.as_str()],
                |row| row.get(0),
            )?;
        return ReferralId::parse("id", &existing)
            .map(Some)
            .map_err(|e| rows::corrupt("referrals", e));
    }
    grant_access(conn, referral.id, &referral.sender)?;
    grant_access(conn, referral.id, &referral.recipient)?;
    insert_event(conn, event)?;
    insert_deliveries(conn, referral.id, deliveries, micros(event.at))?;
    Ok(None)
}

/// Applies a change if its version is still current and its request id unused.
fn apply(conn: &Connection, change: &Change) -> Result<ChangeOutcome, StoreError> {
    if let Some(request_id) = &change.event.request_id
        && let Some(done) = event_by_request(conn, &change.event.actor, request_id)?
    {
        return Ok(ChangeOutcome::Duplicate(Box::new(done)));
    }
    let updated = conn
        .prepare_cached(
            "UPDATE referrals SET state = ?, version = version + 1, updated_at = ?, \
             recipient = COALESCE(?, recipient) WHERE id = ? AND version = ?",
        )?
        .execute(params![
            change.state.as_str(),
            micros(change.at),
            change.new_recipient.as_ref().map(|a| a.as_str()),
            change.referral_id.to_string(),
            change.expected_version,
        ])?;
    if updated == 0 {
        return Ok(ChangeOutcome::Stale);
    }
    if let Some(recipient) = &change.new_recipient {
        grant_access(conn, change.referral_id, recipient)?;
    }
    insert_event(conn, &change.event)?;
    insert_deliveries(
        conn,
        change.referral_id,
        &change.deliveries,
        micros(change.at),
    )?;
    Ok(ChangeOutcome::Recorded)
}

#[async_trait]
impl Store for SqliteStore {
    async fn import_directory(&self, directory: &Directory) -> Result<i64, StoreError> {
        let document =
            serde_json::to_string(directory).map_err(|e| rows::corrupt("directory", e))?;
        let at = micros(time::OffsetDateTime::now_utc());
        self.writer
            .write(Box::new(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "INSERT INTO directory (id, document, version, imported_at) \
                         VALUES (1, ?, 1, ?) \
                         ON CONFLICT (id) DO UPDATE SET document = excluded.document, \
                         version = directory.version + 1, imported_at = excluded.imported_at \
                         RETURNING version",
                    )?
                    .query_row(params![document, at], |row| row.get(0))?)
            }))
            .await
    }

    async fn directory(&self) -> Result<Option<(Directory, i64)>, StoreError> {
        let row: Option<(String, i64)> = self
            .readers
            .read(|conn| {
                Ok(conn
                    .prepare_cached("SELECT document, version FROM directory WHERE id = 1")?
                    .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?)
            })
            .await?;
        row.map(|(doc, version)| {
            let dir = serde_json::from_str(&doc).map_err(|e| rows::corrupt("directory", e))?;
            Ok((dir, version))
        })
        .transpose()
    }

    async fn directory_version(&self) -> Result<Option<i64>, StoreError> {
        self.readers
            .read(|conn| {
                Ok(conn
                    .prepare_cached("SELECT version FROM directory WHERE id = 1")?
                    .query_row([], |row| row.get(0))
                    .optional()?)
            })
            .await
    }

    async fn submit(
        &self,
        referral: &Referral,
        event: &Event,
        deliveries: &[NewDelivery],
    ) -> Result<SubmitOutcome, StoreError> {
        let (new, first, deliveries) = (referral.clone(), event.clone(), deliveries.to_vec());
        let taken = self
            .writer
            .write(Box::new(move |conn| {
                submit(conn, &new, &first, &deliveries)
            }))
            .await?;
        let Some(existing) = taken else {
            return Ok(SubmitOutcome::Created);
        };
        match self.referral(existing).await? {
            Some(existing) => Ok(SubmitOutcome::Existing(Box::new(existing))),
            None => Err(rows::corrupt(
                "referrals",
                "a client_ref conflict without its referral",
            )),
        }
    }

    async fn referral(&self, id: ReferralId) -> Result<Option<Referral>, StoreError> {
        let id = id.to_string();
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(&format!(
                    "SELECT {REFERRAL_COLUMNS}, case_file FROM referrals WHERE id = ?"
                ))?;
                first(query.query(params![id])?, |r| rows::referral(r, true))
            })
            .await
    }

    async fn referral_by_client_ref(
        &self,
        sender: &AgencyId,
        client_ref: &ClientRef,
    ) -> Result<Option<Referral>, StoreError> {
        let (sender, client_ref) = (sender.clone(), client_ref.clone());
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(&format!(
                    "SELECT {REFERRAL_COLUMNS}, case_file FROM referrals \
                     WHERE sender = ? AND client_ref = ?"
                ))?;
                first(
                    query.query(params![sender.as_str(), client_ref.as_str()])?,
                    |r| rows::referral(r, true),
                )
            })
            .await
    }

    async fn snapshot(&self, id: ReferralId) -> Result<Option<Snapshot>, StoreError> {
        let id = id.to_string();
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(&format!(
                    "SELECT {REFERRAL_COLUMNS}, \
                     (SELECT json_group_array(agency_id) FROM (SELECT agency_id FROM referral_access \
                      WHERE referral_id = r.id ORDER BY agency_id)) AS parties, \
                     (SELECT json_group_array(kind) FROM (SELECT kind FROM referral_events \
                      WHERE referral_id = r.id ORDER BY seq)) AS history \
                     FROM referrals r WHERE id = ?"
                ))?;
                first(query.query(params![id])?, |row| {
                    let list = |column: &str| -> Result<Vec<String>, StoreError> {
                        let json: String = row.get(column)?;
                        serde_json::from_str(&json).map_err(|e| rows::corrupt("referrals", e))
                    };
                    rows::snapshot(row, list("parties")?, list("history")?)
                })
            })
            .await
    }

    async fn has_access(&self, agency: &AgencyId, id: ReferralId) -> Result<bool, StoreError> {
        let (agency, id) = (agency.clone(), id.to_string());
        self.readers
            .read(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "SELECT 1 FROM referral_access WHERE agency_id = ? AND referral_id = ?",
                    )?
                    .exists(params![agency.as_str(), id])?)
            })
            .await
    }

    async fn history(&self, id: ReferralId) -> Result<Vec<Event>, StoreError> {
        let id = id.to_string();
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(
                    "SELECT * FROM referral_events WHERE referral_id = ? ORDER BY seq",
                )?;
                all(query.query(params![id])?, |r| rows::event(r))
            })
            .await
    }

    async fn event(&self, id: uuid::Uuid) -> Result<Option<Event>, StoreError> {
        let id = id.to_string();
        self.readers
            .read(move |conn| {
                let mut query =
                    conn.prepare_cached("SELECT * FROM referral_events WHERE id = ?")?;
                first(query.query(params![id])?, |r| rows::event(r))
            })
            .await
    }

    async fn referrals_with_history(
        &self,
        ids: &[ReferralId],
    ) -> Result<Vec<(Referral, Vec<Event>)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = json_list(ids);
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(&format!(
                    "SELECT {REFERRAL_COLUMNS}, case_file FROM referrals \
                     WHERE id IN (SELECT value FROM json_each(?))"
                ))?;
                let referrals = all(query.query(params![list])?, |r| rows::referral(r, true))?;
                let mut query = conn.prepare_cached(
                    "SELECT * FROM referral_events \
                     WHERE referral_id IN (SELECT value FROM json_each(?)) ORDER BY seq",
                )?;
                let events = all(query.query(params![list])?, |r| rows::event(r))?;
                Ok(super::with_histories(referrals, events))
            })
            .await
    }

    async fn events(&self, ids: &[uuid::Uuid]) -> Result<Vec<Event>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = json_list(ids);
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(
                    "SELECT * FROM referral_events \
                     WHERE id IN (SELECT value FROM json_each(?)) ORDER BY seq",
                )?;
                all(query.query(params![list])?, |r| rows::event(r))
            })
            .await
    }

    async fn event_by_request(
        &self,
        actor: &AgencyId,
        request_id: &RequestId,
    ) -> Result<Option<Event>, StoreError> {
        let (actor, request_id) = (actor.clone(), request_id.clone());
        self.readers
            .read(move |conn| event_by_request(conn, &actor, &request_id))
            .await
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
        let bound = (
            agency.as_str().to_owned(),
            query.role.map(|r| r.to_string()),
            states,
            query.kind.as_ref().map(|k| k.as_str().to_owned()),
            query.before.map(|b| b.to_string()),
            i64::from(query.limit),
        );
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(&format!(
                    "SELECT {REFERRAL_COLUMNS} FROM referrals r \
                     WHERE r.id IN (SELECT referral_id FROM referral_access WHERE agency_id = ?1) \
                     AND (?2 IS NULL OR (?2 = 'sender' AND r.sender = ?1) \
                                      OR (?2 = 'recipient' AND r.recipient = ?1)) \
                     AND (?3 IS NULL OR r.state IN (SELECT value FROM json_each(?3))) \
                     AND (?4 IS NULL OR r.kind = ?4) \
                     AND (?5 IS NULL OR r.id < ?5) \
                     ORDER BY r.id DESC LIMIT ?6"
                ))?;
                all(query.query(bound)?, |r| rows::referral(r, false))
            })
            .await
    }

    async fn apply(&self, change: &Change) -> Result<ChangeOutcome, StoreError> {
        let change = change.clone();
        self.writer
            .write(Box::new(move |conn| apply(conn, &change)))
            .await
    }

    async fn mailbox(
        &self,
        agency: &AgencyId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<MailboxEntry>, StoreError> {
        let agency = agency.clone();
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(
                    "SELECT * FROM mailbox WHERE agency_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                )?;
                all(
                    query.query(params![agency.as_str(), after, i64::from(limit)])?,
                    |r| rows::mailbox(r),
                )
            })
            .await
    }

    async fn mailbox_entry(
        &self,
        agency: &AgencyId,
        delivery_id: uuid::Uuid,
    ) -> Result<Option<MailboxEntry>, StoreError> {
        let (agency, delivery_id) = (agency.clone(), delivery_id.to_string());
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(
                    "SELECT * FROM mailbox WHERE agency_id = ? AND delivery_id = ?",
                )?;
                first(query.query(params![agency.as_str(), delivery_id])?, |r| {
                    rows::mailbox(r)
                })
            })
            .await
    }

    async fn lease_outbox(
        &self,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<MailboxEntry>, StoreError> {
        // One process writes an SQLite file, so its clock is the database's clock.
        let now = micros(time::OffsetDateTime::now_utc());
        let until = now.saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
        self.writer
            .write(Box::new(move |conn| {
                let mut lease = conn.prepare_cached(
                    "UPDATE mailbox SET lease_until = ?1 WHERE seq IN \
                     (SELECT seq FROM mailbox WHERE lease_until IS NULL OR lease_until < ?2 \
                      ORDER BY seq LIMIT ?3) RETURNING *",
                )?;
                let mut rows = lease.query(params![until, now, i64::from(limit)])?;
                let mut entries = Vec::new();
                while let Some(row) = rows.next()? {
                    entries.push(rows::mailbox(row)?);
                }
                entries.sort_by_key(|e| e.seq);
                Ok(entries)
            }))
            .await
    }

    async fn remove_published(&self, delivery_ids: &[uuid::Uuid]) -> Result<(), StoreError> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        let list = serde_json::Value::from(
            delivery_ids
                .iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>(),
        )
        .to_string();
        self.writer
            .write(Box::new(move |conn| {
                conn.prepare_cached(
                    "DELETE FROM mailbox WHERE delivery_id IN (SELECT value FROM json_each(?))",
                )?
                .execute(params![list])?;
                Ok(())
            }))
            .await
    }

    /// Both halves answer: a reader, and the writer (an empty job, which also shows that writes are
    /// not stuck behind something).
    async fn ping(&self) -> Result<(), StoreError> {
        self.readers
            .read(|conn| Ok(conn.prepare_cached("SELECT 1")?.exists([])?))
            .await?;
        self.writer.write(Box::new(|_| Ok(()))).await
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
                // `+agency_id` keeps SQLite on the delivery id's unique index rather than walking
                // all of the agency's rows.
                let done = conn
                    .prepare_cached(
                        "DELETE FROM mailbox WHERE delivery_id IN (SELECT value FROM json_each(?)) \
                         AND +agency_id = ?",
                    )?
                    .execute(params![list, agency])?;
                Ok(done as u64)
            }))
            .await
    }
}
