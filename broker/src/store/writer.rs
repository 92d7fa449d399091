//! The embedded store's one writer: every write to SQLite goes through here and concurrent writes are
//! committed together (group commit).
//!
//! SQLite admits one writer at a time and, with `synchronous=FULL`, each commit waits for an fsync
//! (milliseconds on ordinary disks). Committing each request on its own would cap the broker at a few
//! hundred commits a second however many cores it had. Instead, callers hand their write to this task
//! as a [`Job`]; while one batch is committing, the next callers queue, and the task runs all of them
//! in one transaction with one fsync. Nothing waits on a timer: a lone write is committed at once.
//!
//! Each job runs inside its own `SAVEPOINT`, so a job that fails (a unique violation, say) is rolled
//! back alone and the others still commit. A caller hears its result only after the `COMMIT`: a write
//! the broker acknowledges is on disk. If the commit itself fails, every job of the batch gets the
//! error and nothing of the batch is written.

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::SqliteConnection;
use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use crate::error::StoreError;

/// Most jobs committed in one transaction: bounds a batch's latency.
const MAX_BATCH: usize = 512;
/// Writes that may wait for the writer before callers are slowed down.
const QUEUE: usize = 4096;

/// A write: runs on the writer's connection inside the open transaction.
pub type Work<T> = Box<
    dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StoreError>> + Send,
>;

/// One queued write with the means to answer its caller.
trait Job: Send {
    /// Runs the write; true if it succeeded (and its savepoint is to be kept).
    fn run<'c>(&'c mut self, conn: &'c mut SqliteConnection) -> BoxFuture<'c, bool>;
    /// Answers the caller: its own result if the batch committed, else the batch's error.
    fn finish(self: Box<Self>, batch: Result<(), Arc<StoreError>>);
}

struct Queued<T> {
    work: Option<Work<T>>,
    outcome: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send + 'static> Job for Queued<T> {
    fn run<'c>(&'c mut self, conn: &'c mut SqliteConnection) -> BoxFuture<'c, bool> {
        Box::pin(async move {
            let Some(work) = self.work.take() else {
                return false;
            };
            let outcome = work(conn).await;
            let ok = outcome.is_ok();
            self.outcome = Some(outcome);
            ok
        })
    }

    fn finish(self: Box<Self>, batch: Result<(), Arc<StoreError>>) {
        let answer = match (batch, self.outcome) {
            (Ok(()), Some(outcome)) => outcome,
            (Ok(()), None) => Err(StoreError::WriterGone),
            (Err(e), _) => Err(StoreError::Batch(e)),
        };
        // The caller may have gone (its request was cancelled); the write stands all the same.
        let _ = self.reply.send(answer);
    }
}

/// The handle callers write through; cheap to clone.
#[derive(Debug, Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl std::fmt::Debug for dyn Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl Writer {
    /// Starts the writer task on its own connection from `pool` (a pool of one connection that only
    /// the writer uses). The task ends when every handle is dropped.
    pub fn start(pool: SqlitePool) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, queue));
        Self { jobs }
    }

    /// Queues `work`, and returns its result once the transaction it ran in has committed.
    pub async fn write<T: Send + 'static>(&self, work: Work<T>) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Queued {
            work: Some(work),
            outcome: None,
            reply,
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }
}

async fn run(pool: SqlitePool, mut queue: mpsc::Receiver<Box<dyn Job>>) {
    let mut connection: Option<PoolConnection<Sqlite>> = None;
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = match connection.as_mut() {
            Some(conn) => commit(conn, &mut batch).await,
            None => match pool.acquire().await {
                Ok(conn) => commit(connection.insert(conn), &mut batch).await,
                Err(e) => Err(StoreError::from(e)),
            },
        };
        let result = result.map_err(|e| {
            tracing::error!(error = %crate::error::ErrorChain(&e), jobs = batch.len(), "a batch of writes failed");
            // A connection in an unknown state is not reused: the next batch opens a fresh one.
            if let Some(conn) = connection.take() {
                drop(conn.detach());
            }
            Arc::new(e)
        });
        for job in batch.drain(..) {
            job.finish(result.clone());
        }
    }
}

/// Runs the batch in one transaction, each job in its own savepoint. The statements between two jobs
/// go to SQLite in one call, so a job costs one extra round trip to the connection's thread.
async fn commit(conn: &mut SqliteConnection, batch: &mut [Box<dyn Job>]) -> Result<(), StoreError> {
    sqlx::raw_sql("BEGIN IMMEDIATE; SAVEPOINT job")
        .execute(&mut *conn)
        .await?;
    let last = batch.len().saturating_sub(1);
    let ran = async {
        for (i, job) in batch.iter_mut().enumerate() {
            let kept = job.run(conn).await;
            let between = match (kept, i == last) {
                (true, false) => "RELEASE job; SAVEPOINT job",
                (false, false) => "ROLLBACK TO job; RELEASE job; SAVEPOINT job",
                (true, true) => "RELEASE job; COMMIT",
                (false, true) => "ROLLBACK TO job; RELEASE job; COMMIT",
            };
            sqlx::raw_sql(between).execute(&mut *conn).await?;
        }
        Ok::<(), StoreError>(())
    }
    .await;
    if ran.is_err() {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
    }
    ran
}
