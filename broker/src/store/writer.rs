//! The embedded store's one writer: every write to SQLite goes through here and concurrent writes are
//! committed together (group commit).
//!
//! SQLite admits one writer at a time and, with `synchronous=FULL`, each commit waits for an fsync
//! (milliseconds on ordinary disks). Committing each request on its own would cap the broker at a few
//! hundred commits a second however many cores it had. Instead, callers hand their write to this
//! writer as a job; while one batch is committing, the next callers queue, and the writer runs all of
//! them in one transaction with one fsync. Nothing waits on a timer: a lone write is committed at once.
//!
//! The writer is a thread of its own holding a plain `rusqlite` connection, and runs each job's
//! statements directly on it. sqlx runs each SQLite connection on a worker thread and hands every
//! statement across threads; for the writer, which runs every write of the broker one after another,
//! those hand-offs would cost more than the writes (the [`super::readers`] avoid them for the same
//! reason).
//!
//! Each job runs inside its own `SAVEPOINT`, so a job that fails (a unique violation, say) is rolled
//! back alone and the others still commit. A caller hears its result only after the `COMMIT`: a write
//! the broker acknowledges is on disk. If the commit itself fails, every job of the batch gets the
//! error and nothing of the batch is written.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::error::StoreError;

/// Most jobs committed in one transaction: bounds a batch's latency.
const MAX_BATCH: usize = 512;
/// Writes that may wait for the writer before callers are slowed down.
const QUEUE: usize = 4096;
/// How long a write waits for another process (such as `spean-broker directory import`) to finish
/// its own write to the same file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A write: runs on the writer's connection, inside the batch's transaction and its own savepoint.
pub type Work<T> = Box<dyn FnOnce(&Connection) -> Result<T, StoreError> + Send>;

/// One queued write with the means to answer its caller.
trait Job: Send {
    /// Runs the write; true if it succeeded (and its savepoint is to be kept).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller: its own result if the batch committed, else the batch's error.
    fn finish(self: Box<Self>, batch: Result<(), Arc<StoreError>>);
}

struct Queued<T> {
    work: Option<Work<T>>,
    outcome: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send> Job for Queued<T> {
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        // A job that panics (a bug) fails alone, like any failed job, instead of taking the one
        // writer of the broker down with it.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(conn)))
            .unwrap_or_else(|_| {
                tracing::error!("a write panicked; it was rolled back");
                Err(StoreError::Corrupt {
                    table: "writer",
                    reason: "a write panicked".into(),
                })
            });
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn finish(self: Box<Self>, batch: Result<(), Arc<StoreError>>) {
        let answer = match (batch, self.outcome) {
            (Ok(()), Some(outcome)) => outcome,
            (Ok(()), None) => Err(StoreError::Stopped),
            (Err(e), _) => Err(StoreError::Batch(e)),
        };
        // The caller may have gone (its request was cancelled); the write stands all the same.
        let _ = self.reply.send(answer);
    }
}

/// The handle callers write through; cheap to clone. The writer thread ends when every handle is
/// dropped, after finishing what was queued.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl Writer {
    /// Opens the database file at `path` (already created and migrated) for writing and starts the
    /// writer thread. `durable` selects `synchronous=FULL` over `NORMAL`, as for the readers.
    pub fn start(path: &Path, durable: bool) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Every job runs in a savepoint, whose journal would otherwise go to a temporary file.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        super::readers::tune(&conn)?;
        let (jobs, queue) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("spean-sqlite-writer".into())
            .spawn(move || run(conn, queue))
            .map_err(|source| StoreError::Thread {
                what: "writer",
                source,
            })?;
        Ok(Self { jobs })
    }

    /// Queues `work`, and returns its result once the transaction it ran in has committed.
    pub async fn write<T: Send + 'static>(&self, work: Work<T>) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Queued {
            work: Some(work),
            outcome: None,
            reply,
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Stopped)?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }
}

fn run(mut conn: Connection, mut queue: mpsc::Receiver<Box<dyn Job>>) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = commit(&mut conn, &mut batch).map_err(|e| {
            tracing::error!(error = %crate::error::ErrorChain(&e), jobs = batch.len(), "a batch of writes failed");
            Arc::new(e)
        });
        for job in batch.drain(..) {
            job.finish(result.clone());
        }
    }
}

/// Runs the batch in one transaction, each job in its own savepoint; a failed job's savepoint is
/// rolled back, and so is the whole transaction if anything else fails. The transaction statements
/// are cached: parsing them anew for every job cost more than many of the jobs.
fn commit(conn: &mut Connection, batch: &mut [Box<dyn Job>]) -> Result<(), StoreError> {
    let run = |sql: &str| -> Result<(), StoreError> {
        conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    };
    run("BEGIN IMMEDIATE")?;
    let result = (|| {
        for job in batch.iter_mut() {
            run("SAVEPOINT job")?;
            if !job.run(conn) {
                run("ROLLBACK TO job")?;
            }
            run("RELEASE job")?;
        }
        run("COMMIT")
    })();
    if result.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(conn: &Connection, value: &str) -> i64 {
        conn.query_row("SELECT count(*) FROM t WHERE v = ?", [value], |r| r.get(0))
            .unwrap()
    }

    /// Jobs queued while the writer is busy commit together; one that fails half-way and one that
    /// panics are rolled back alone, and the writer goes on.
    #[tokio::test]
    async fn a_failed_job_is_rolled_back_alone_and_its_batch_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (v TEXT NOT NULL)")
            .unwrap();
        let writer = Writer::start(&path, true).unwrap();

        // Hold the writer inside a job so that everything below queues into one batch.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let spawn = |work: Work<()>| {
            let writer = writer.clone();
            tokio::spawn(async move { writer.write(work).await })
        };
        let blocker = spawn(Box::new(move |conn| {
            held.recv().unwrap();
            conn.execute("INSERT INTO t (v) VALUES ('first')", [])?;
            Ok(())
        }));
        let insert = |v: &'static str| -> Work<()> {
            Box::new(move |conn| {
                conn.execute("INSERT INTO t (v) VALUES (?)", [v])?;
                Ok(())
            })
        };
        let good = spawn(insert("good"));
        let failing = spawn(Box::new(|conn| {
            conn.execute("INSERT INTO t (v) VALUES ('half')", [])?;
            conn.execute("INSERT INTO missing (v) VALUES ('x')", [])?;
            Ok(())
        }));
        let panicking = spawn(Box::new(|conn| {
            conn.execute("INSERT INTO t (v) VALUES ('panicked')", [])?;
            panic!("a bug in a write");
        }));
        let after = spawn(insert("after"));
        // Give the queued writes time to reach the channel before the blocker lets go.
        tokio::time::sleep(Duration::from_millis(100)).await;
        release.send(()).unwrap();

        blocker.await.unwrap().unwrap();
        good.await.unwrap().unwrap();
        assert!(failing.await.unwrap().is_err());
        assert!(panicking.await.unwrap().is_err());
        after.await.unwrap().unwrap();
        // And a write after the batch still goes through.
        writer.write(insert("later")).await.unwrap();

        let check = Connection::open(&path).unwrap();
        for (value, expected) in [
            ("first", 1),
            ("good", 1),
            ("half", 0),
            ("panicked", 0),
            ("after", 1),
            ("later", 1),
        ] {
            assert_eq!(count(&check, value), expected, "rows with {value}");
        }
    }
}
