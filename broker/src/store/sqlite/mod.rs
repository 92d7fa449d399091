//! The embedded store: one SQLite file in WAL mode.
//!
//! Reads go to a few [`Readers`] (threads with their own `rusqlite` connections), which WAL lets run
//! beside the writer. Every write goes through the one [`Writer`] (a thread with its own `rusqlite`
//! connection), which commits concurrent writes in one transaction (group commit), so the fsync that
//! `synchronous=FULL` costs is paid once per batch rather than once per request. Each write runs in
//! its own savepoint, so the others in its batch never see a half of it. Queries are static SQL with
//! bound parameters. sqlx runs the migrations, and its one connection stays open for administrative
//! access (tests use it to reach past the store).
//!
//! # Layout
//! - this file: opening the file, and what the statements share.
//! - `referrals`: the [`ReferralStore`](super::ReferralStore): directory, referrals, history,
//!   submits and changes.
//! - `mailbox`: the [`Mailbox`](super::Mailbox), and the rows a submit or change queues in it.
//! - `revocations`: the [`RevocationStore`](super::RevocationStore): revoked certificates.
//! - `audit`: the [`AuditStore`](super::AuditStore): the audit log, appended in each write's job.

mod audit;
mod keys;
mod mailbox;
mod referrals;
mod revocations;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::readers::Readers;
use super::rows;
use super::writer::Writer;
use crate::error::StoreError;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Migrations and administrative access only.
    pool: SqlitePool,
    readers: Readers,
    writer: Writer,
    /// The audit head deliveries quote, read at most once a second.
    audit_heads: std::sync::Arc<super::audit::HeadCache>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://path` or `sqlite::memory:`) and runs
    /// the migrations. `durable` selects `synchronous=FULL` (survives power loss) over `NORMAL`
    /// (survives a process crash).
    pub async fn connect(url: &str, durable: bool) -> Result<Self, StoreError> {
        let parsed = SqliteConnectOptions::from_str(url)?;
        if parsed.get_filename() != Path::new(":memory:") {
            create_private_file(parsed.get_filename())?;
        }
        let options = parsed
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
            audit_heads: Default::default(),
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

/// Creates the database file with mode 0600 if it does not exist, before SQLite opens it. The file
/// holds every case file, and SQLite creates its `-wal` and `-shm` files with the main file's mode,
/// so all three are the broker user's alone from their first byte. An existing file keeps its mode.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Err(error) if error.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(StoreError::Database(sqlx::Error::Io(std::io::Error::new(
                error.kind(),
                format!("creating the database file {}: {error}", path.display()),
            ))))
        }
        _ => Ok(()),
    }
}

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
