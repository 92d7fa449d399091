//! The embedded store's readers: a few threads, each holding a plain `rusqlite` connection, that run
//! reads handed to them as jobs.
//!
//! WAL lets these read beside the one [`super::writer::Writer`]. They replace sqlx's pool for reads
//! because sqlx runs each SQLite connection on a worker thread of its own and hands every statement
//! and every row across threads: on the delivery path (a mailbox read, a batch load and a snapshot
//! for every delivery) those hand-offs and their wake-ups cost more than the queries. Here a read is
//! one hand-off there and one answer back, whatever it runs.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::error::StoreError;

/// Reading threads (and connections). Reads are short and the broker's other work needs the cores
/// too; four keep a slow read (a long `List`) from holding up the delivery path.
const READERS: usize = 4;
/// Reads that may wait for a reader before callers are slowed down.
const QUEUE: usize = 4096;
/// How long a read waits while a checkpoint holds the file (rare in WAL mode).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A read: runs on one reader's connection, inside a read transaction of its own so that every
/// statement in it sees the same state of the database.
type Job = Box<dyn FnOnce(&Connection) + Send>;

/// The handle reads go through; cheap to clone. The threads end when every handle is dropped.
#[derive(Clone)]
pub struct Readers {
    jobs: crossbeam_channel::Sender<Job>,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Readers")
    }
}

impl Readers {
    /// Opens `READERS` read-only connections to the database file at `path` (already created and
    /// migrated) and starts a thread for each.
    pub fn start(path: &Path) -> Result<Self, StoreError> {
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(QUEUE);
        for n in 0..READERS {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            tune(&conn)?;
            conn.set_prepared_statement_cache_capacity(64);
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("spean-sqlite-r{n}"))
                .spawn(move || {
                    // Ends when the last handle is dropped and the queue is empty.
                    for job in queue {
                        job(&conn);
                    }
                })
                .map_err(|source| StoreError::Thread {
                    what: "reader",
                    source,
                })?;
        }
        Ok(Self { jobs })
    }

    /// Runs `work` on a reader and returns its result. A caller that goes away leaves the read to
    /// finish unheard.
    pub async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // Cached statements: parsing `BEGIN` and `COMMIT` anew for every read would cost
                // more than most of the reads.
                conn.prepare_cached("BEGIN")?.execute([])?;
                let result = work(conn);
                // A read-only transaction: ending it only releases its snapshot.
                if let Err(e) = conn
                    .prepare_cached("COMMIT")
                    .and_then(|mut s| s.execute([]))
                {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(e.into());
                }
                result
            }))
            .unwrap_or_else(|_| {
                tracing::error!("a read panicked");
                Err(StoreError::Corrupt {
                    table: "readers",
                    reason: "a read panicked".into(),
                })
            });
            let _ = reply.send(outcome);
        });
        // The queue is bounded: when it is full, wait for room without blocking the runtime.
        let mut job = job;
        loop {
            match self.jobs.try_send(job) {
                Ok(()) => break,
                Err(crossbeam_channel::TrySendError::Full(back)) => {
                    job = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                    return Err(StoreError::Stopped);
                }
            }
        }
        answer.await.map_err(|_| StoreError::Stopped)?
    }
}

/// Settings every connection of the embedded store shares, readers and writer alike: the query
/// planner stability guarantee. Without it SQLite (built with `SQLITE_ENABLE_STAT4`) prepares a
/// statement again whenever a value bound to a `LIMIT` changes, which the mailbox query's does on
/// nearly every call.
///
/// Memory-mapped I/O is left off: it saves little, and the mapped pages of the database file would
/// count in the broker's resident size, which would then grow with the file and mislead whoever
/// watches it.
pub(super) fn tune(conn: &Connection) -> Result<(), StoreError> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read that fails ends its transaction: the same reader then sees later writes.
    #[tokio::test]
    async fn a_failed_read_leaves_its_reader_usable_and_current() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (v INTEGER NOT NULL)")
            .unwrap();
        let readers = Readers::start(&path).unwrap();
        let total = |readers: Readers| async move {
            readers
                .read(|conn| {
                    Ok(
                        conn.query_row("SELECT coalesce(sum(v), 0) FROM t", [], |r| {
                            r.get::<_, i64>(0)
                        })?,
                    )
                })
                .await
        };
        // Fail on every reader (more reads than readers), each after opening its transaction.
        for _ in 0..READERS * 3 {
            let failed = readers
                .read(|conn| {
                    conn.query_row("SELECT v FROM t", [], |r| r.get::<_, i64>(0))?;
                    Ok(())
                })
                .await;
            assert!(failed.is_err(), "reading an empty table's row must fail");
        }
        for n in 1..=5i64 {
            writer.execute("INSERT INTO t (v) VALUES (?)", [n]).unwrap();
            let expected = n * (n + 1) / 2;
            for _ in 0..READERS * 2 {
                assert_eq!(total(readers.clone()).await.unwrap(), expected);
            }
        }
        // Readers cannot write.
        let refused = readers
            .read(|conn| Ok(conn.execute("INSERT INTO t (v) VALUES (1)", [])?))
            .await;
        assert!(refused.is_err());
    }
}
