//! The production store: PostgreSQL, shared by every broker process.
//!
//! Concurrency is optimistic (a change applies only to the version it read, see [`Change`]) and the
//! unique constraints settle races on `client_ref` and `request_id`. The outbox relay claims rows with
//! `FOR UPDATE SKIP LOCKED` and a lease, so relays in several processes never publish the same row at
//! the same time. Queries are static SQL with bound parameters.
//!
//! Writes that arrive together are batched, because PostgreSQL's cost per statement outweighs its
//! cost per row: concurrent submits go through `submits`, and the changes of confirmations that
//! arrived together through
//! [`ReferralStore::apply_all`](super::ReferralStore::apply_all), each as one statement over `unnest`ed
//! arrays.
//!
//! Ids are `uuid` columns. The domain binds and reads them as text (sqlx's `uuid` feature is off and
//! `rows` maps both backends from text), so statements cast bound ids with `$n::uuid` and select
//! them as `::text`.
//!
//! # Layout
//! - this file: connecting, migrating, and counting batches.
//! - `referrals`: the [`ReferralStore`](super::ReferralStore): the directory and every read of referrals and events.
//! - `submits`: the queue that submits wait in, and the writers that insert them in batches.
//! - `changes`: a change to a referral in one statement, and changes that arrive together in one.
//! - `mailbox`: the [`Mailbox`](super::Mailbox): sessions' reads and the outbox relay's leases.
//! - `revocations`: the [`RevocationStore`](super::RevocationStore): revoked certificates, and
//!   the NOTIFY that tells every broker of a new one.
//! - `audit`: the [`AuditStore`](super::AuditStore), and the call by which every accepting
//!   statement appends its entries.
//! - `columns`: the columns, insert heads and parallel arrays the statements share.
//!
//! [`Change`]: super::Change

mod audit;
mod changes;
mod columns;
mod keys;
mod mailbox;
mod referrals;
mod revocations;
mod submits;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use crate::error::StoreError;

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// A few connections for the delivery path's check of who a referral is with now
    /// ([`ReferralStore::parties_now`](crate::store::ReferralStore::parties_now)), pinged only
    /// after they sat idle: the main pool pings a connection on every acquire, a second round trip
    /// that this check, in front of every referral a session sends, cannot afford. A connection
    /// that died under it fails the check once, which is then made again on the main pool.
    checks: PgPool,
    submits: submits::Submits,
    batches: Arc<Batches>,
    /// The audit head deliveries quote, read at most once a second.
    audit_heads: Arc<super::audit::HeadCache>,
}

/// How many batches of submits or changes PostgreSQL took whole, and how many it refused, whose
/// parts were then written one by one. A rising `refused` means batches contend with each other.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchCounts {
    pub written: u64,
    pub refused: u64,
}

#[derive(Debug, Default)]
struct Batches {
    written: AtomicU64,
    refused: AtomicU64,
}

impl Batches {
    fn count(&self, written: bool) {
        let counter = if written {
            &self.written
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How long a connection of the checks' pool may sit idle before it is pinged on its next use.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// How the broker's connections guard against a server, or a network, that stops answering.
#[derive(Debug, Clone, Copy)]
pub struct PgLimits {
    /// How long a request waits for a connection (a new one included) before it fails and maps to
    /// UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// PostgreSQL's `statement_timeout` and `idle_in_transaction_session_timeout` on every
    /// connection: a statement that runs longer is cancelled, and a transaction left open (by a
    /// broker cut off mid-way) is ended, so that its row locks and leases do not hold the other
    /// brokers.
    pub statement_timeout: Duration,
    /// PostgreSQL's TCP keepalive on every connection (`tcp_keepalives_idle`, and its interval;
    /// three probes): the server notices a broker that vanished without a reset within about
    /// four times this, and ends its sessions. sqlx 0.9 sets no keepalive on the broker's own
    /// socket; the broker bounds each of its waits instead (the acquire timeout, the health
    /// probe's deadline, `limits.request_timeout_ms`).
    pub keepalive: Duration,
}

impl PgLimits {
    /// The connect options for `url` with these limits as the session's settings.
    fn options(&self, url: &str) -> Result<PgConnectOptions, StoreError> {
        let millis = |d: Duration| format!("{}ms", d.as_millis());
        let secs = |d: Duration| d.as_secs().max(1).to_string();
        Ok(PgConnectOptions::from_str(url)?.options([
            ("statement_timeout", millis(self.statement_timeout)),
            (
                "idle_in_transaction_session_timeout",
                millis(self.statement_timeout),
            ),
            ("tcp_keepalives_idle", secs(self.keepalive)),
            ("tcp_keepalives_interval", secs(self.keepalive)),
            ("tcp_keepalives_count", "3".to_owned()),
        ]))
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://...`) and runs the migrations. Sixteen connections leave room on a
    /// server's default 100 for several brokers; a request that waits `limits.acquire_timeout` for
    /// one fails (and maps to UNAVAILABLE) rather than hanging behind a saturated pool or a server
    /// that went silent.
    pub async fn connect(url: &str, limits: PgLimits) -> Result<Self, StoreError> {
        let options = limits.options(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(limits.acquire_timeout)
            .connect_with(options.clone())
            .await?;
        let checks = PgPoolOptions::new()
            .max_connections(4)
            .min_connections(0)
            .acquire_timeout(limits.acquire_timeout)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IDLE_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(options);
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let batches = Arc::new(Batches::default());
        let submits = submits::Submits::start(&pool, batches.clone());
        Ok(Self {
            pool,
            checks,
            submits,
            batches,
            audit_heads: Default::default(),
        })
    }

    /// The pool for the delivery path's checks ([`PgStore::checks`](Self)).
    pub(super) fn checks(&self) -> &PgPool {
        &self.checks
    }

    /// The pool, for what the store's traits do not cover: health details and tests.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The batches written since the store connected, for diagnostics and tests.
    pub fn batches(&self) -> BatchCounts {
        BatchCounts {
            written: self.batches.written.load(Ordering::Relaxed),
            refused: self.batches.refused.load(Ordering::Relaxed),
        }
    }

    /// A transaction at PostgreSQL's default READ COMMITTED. Writers are not serialised as in SQLite:
    /// the versioned `UPDATE` and the unique constraints settle every race instead, and each statement
    /// sees what other transactions committed before it started.
    async fn write(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }
}

/// Ids as the text array every `= ANY ($n::text[]::uuid[])` binds: the statements take uuids as
/// text, since the pool maps no uuid type.
fn as_text<T: ToString>(ids: &[T]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}
