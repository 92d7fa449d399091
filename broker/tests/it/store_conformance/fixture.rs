//! The backends under test: SQLite in a temporary file, and PostgreSQL in a fresh database per
//! test on the server named by `SPEAN_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). An unreachable PostgreSQL fails the test.

use std::sync::Arc;

use spean_broker::store::Store;
use spean_broker::store::postgres::{BatchCounts, PgLimits, PgStore};
use spean_broker::store::sqlite::SqliteStore;
use sqlx::Connection;

/// A store under test, its raw pool (to try what the store's traits do not offer), and what to clean up.
pub(super) struct Fixture {
    pub(super) store: Arc<dyn Store>,
    pub(super) pool: RawPool,
    /// The PostgreSQL store itself, whose batch counts show which path a write took.
    pub(super) pg: Option<PgStore>,
    _backing: Backing,
}

pub(super) enum RawPool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Fixture {
    /// PostgreSQL's batches so far; `None` on SQLite, which has no batches of its own (its writer
    /// commits concurrent writes together instead).
    pub(super) fn batches(&self) -> Option<BatchCounts> {
        self.pg.as_ref().map(PgStore::batches)
    }

    /// The same database opened by a second store, as a broker that restarted (or another broker
    /// process) would open it; the store under test stays open beside it.
    pub(super) async fn reopen(&self) -> Arc<dyn Store> {
        match &self._backing {
            Backing::Sqlite(dir) => Arc::new(
                SqliteStore::open(&dir.path().join(SQLITE_FILE), false)
                    .await
                    .unwrap(),
            ),
            Backing::Postgres { admin, database } => Arc::new(
                PgStore::connect(&with_database(admin, database), LIMITS)
                    .await
                    .unwrap(),
            ),
        }
    }

    /// How `spean-broker` is told to open this database (`database.url`).
    pub(super) fn database_url(&self) -> String {
        match &self._backing {
            Backing::Sqlite(dir) => format!("sqlite://{}", dir.path().join(SQLITE_FILE).display()),
            Backing::Postgres { admin, database } => with_database(admin, database),
        }
    }

    /// A fresh database of the same backend holding a copy of this one's audit log, row for
    /// row: what a test tampers with.
    pub(super) async fn copy_of_audit_log(&self) -> Fixture {
        let copy = match &self._backing {
            Backing::Sqlite(_) => sqlite().await,
            Backing::Postgres { .. } => postgres().await,
        };
        const INSERT: &str = "INSERT INTO audit_log \
            (seq, at, actor, action, referral_id, digest, prev_hash, hash) \
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        for e in self.store.audit_entries(0, u32::MAX).await.unwrap() {
            let r = e.record;
            let seq = i64::try_from(e.seq).unwrap();
            // One statement, bound alike for either backend's pool.
            macro_rules! insert {
                ($pool:expr) => {
                    sqlx::query(INSERT)
                        .bind(seq)
                        .bind(r.at)
                        .bind(r.actor)
                        .bind(r.action)
                        .bind(r.referral_id)
                        .bind(r.digest)
                        .bind(e.prev_hash)
                        .bind(e.hash)
                        .execute($pool)
                        .await
                        .map(|_| ())
                };
            }
            match &copy.pool {
                RawPool::Sqlite(p) => insert!(p),
                RawPool::Postgres(p) => insert!(p),
            }
            .unwrap();
        }
        copy
    }

    /// Runs a statement straight on the backend's pool.
    pub(super) async fn raw(&self, sql: &'static str) -> Result<(), sqlx::Error> {
        match &self.pool {
            RawPool::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
            RawPool::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        }
    }
}

/// Keeps a backend's resources alive for the test and removes them after, also when the test panics.
enum Backing {
    Sqlite(tempfile::TempDir),
    Postgres { admin: String, database: String },
}

impl Drop for Backing {
    /// Drops the test's PostgreSQL database, best effort. `Drop` cannot await and the test's runtime
    /// cannot be blocked on from inside, so a short-lived thread with its own runtime does it.
    /// `WITH (FORCE)` ends the store's pooled connections, which close in the background.
    fn drop(&mut self) {
        let Backing::Postgres { admin, database } = self else {
            return;
        };
        let statement = format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)");
        let admin = admin.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(sqlx::AssertSqlSafe(statement))
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop the test database {database}: {e}");
        }
    }
}

/// The SQLite database's file in its temporary folder.
const SQLITE_FILE: &str = "store.db";

pub(super) async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join(SQLITE_FILE), false)
        .await
        .unwrap();
    Fixture {
        pool: RawPool::Sqlite(store.pool().clone()),
        pg: None,
        store: Arc::new(store),
        _backing: Backing::Sqlite(dir),
    }
}

/// The pool's limits in these tests: the statement timeout differs from the default so that a
/// test can tell it was applied.
pub(super) const LIMITS: PgLimits = PgLimits {
    acquire_timeout: std::time::Duration::from_secs(10),
    statement_timeout: std::time::Duration::from_millis(4_321),
    keepalive: std::time::Duration::from_secs(7),
};

/// A fresh database on the test server, migrated by [`PgStore::connect`].
pub(super) async fn postgres() -> Fixture {
    let admin = std::env::var("SPEAN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let database = format!("spean_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the store conformance tests need PostgreSQL at {admin} \
             (set SPEAN_TEST_POSTGRES_URL to use another server): {e}"
            )
        });
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    // From here on the guard drops the database, whatever happens next.
    let backing = Backing::Postgres {
        admin: admin.clone(),
        database: database.clone(),
    };
    let store = PgStore::connect(&with_database(&admin, &database), LIMITS)
        .await
        .unwrap();
    Fixture {
        pool: RawPool::Postgres(store.pool().clone()),
        pg: Some(store.clone()),
        store: Arc::new(store),
        _backing: backing,
    }
}

/// `url` with its database replaced by `database`, keeping any `?options`.
fn with_database(url: &str, database: &str) -> String {
    let (base, options) = url
        .split_once('?')
        .map_or((url, None), |(b, o)| (b, Some(o)));
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    match options {
        Some(options) => format!("{server}/{database}?{options}"),
        None => format!("{server}/{database}"),
    }
}
