//! The production store's [`AuditStore`], and the pieces by which every accepting statement
//! appends its entries: a call of `spean_audit_append` (migration `0008`) in the statement's final
//! `SELECT`, fed by the rows the statement wrote, so an action that writes nothing (stale, or a
//! replay) appends nothing, and the entry commits with the action in the statement's one
//! transaction. The function takes the advisory lock that orders appends across brokers there, at
//! the end of the statement, so the lock is held only until the commit.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::PgRow;
use time::OffsetDateTime;

use super::PgStore;
use super::columns::Statement;
use crate::error::StoreError;
use crate::ids::AgencyId;
use crate::store::audit::{self, AuditStore, Entry, Head, HeadCache, Record};
use crate::store::micros;

/// The call that appends one entry from five parameters starting at `$first`: at, actor, action,
/// referral id and digest.
pub(super) fn append_one(first: usize) -> String {
    let p = |n: usize| format!("${}", first + n);
    format!(
        "spean_audit_append({}::int8, {}::text, {}::text, {}::text, {}::bytea)",
        p(0),
        p(1),
        p(2),
        p(3),
        p(4)
    )
}

/// Binds [`append_one`]'s parameters.
pub(super) fn bind_one<'q, O>(query: Statement<'q, O>, record: Record) -> Statement<'q, O> {
    query
        .bind(record.at)
        .bind(record.actor)
        .bind(record.action)
        .bind(record.referral_id)
        .bind(record.digest)
}

/// Appends one entry in `tx`: for a write of its own that ends with it.
pub(super) async fn append_record(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    record: Record,
) -> Result<(), StoreError> {
    static APPEND: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("SELECT {}", append_one(1)));
    bind_one(sqlx::query_scalar::<_, i64>(APPEND.as_str()), record)
        .fetch_one(&mut **tx)
        .await?;
    Ok(())
}

/// The final `SELECT` of a batch that returns the ids of the referrals `written` (a CTE with an
/// `id` column) and appends the entry of each, from parallel arrays starting at `$first`
/// ([`Records`]).
pub(super) fn select_appending(written: &str, first: usize) -> String {
    let p = |n: usize| format!("${}", first + n);
    format!(
        "SELECT {written}.id::text, \
           spean_audit_append(ad.at, ad.actor, ad.action, ad.referral, ad.digest) \
         FROM {written} JOIN unnest({}::text[], {}::int8[], {}::text[], {}::text[], \
           {}::bytea[]) AS ad(referral, at, actor, action, digest) \
           ON ad.referral::uuid = {written}.id",
        p(0),
        p(1),
        p(2),
        p(3),
        p(4)
    )
}

/// The entries of a batch as the parallel arrays [`select_appending`] reads.
#[derive(Default)]
pub(super) struct Records {
    referral: Vec<String>,
    at: Vec<i64>,
    actor: Vec<String>,
    action: Vec<String>,
    digest: Vec<Vec<u8>>,
}

impl Records {
    pub fn push(&mut self, record: Record) {
        self.referral.push(record.referral_id.unwrap_or_default());
        self.at.push(record.at);
        self.actor.push(record.actor);
        self.action.push(record.action);
        self.digest.push(record.digest);
    }

    pub fn bind<'q, O>(self, query: Statement<'q, O>) -> Statement<'q, O> {
        query
            .bind(self.referral)
            .bind(self.at)
            .bind(self.actor)
            .bind(self.action)
            .bind(self.digest)
    }
}

fn entry(row: &PgRow) -> Result<Entry, StoreError> {
    audit::entry(
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
        row.try_get(4)?,
        row.try_get(5)?,
        row.try_get(6)?,
        row.try_get(7)?,
    )
}

fn head(row: &PgRow) -> Result<Head, StoreError> {
    let hash: Vec<u8> = row.try_get(1)?;
    audit::head(row.try_get(0)?, &hash)
}

#[async_trait]
impl AuditStore for PgStore {
    async fn audit_entries(&self, after: u64, limit: u32) -> Result<Vec<Entry>, StoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        sqlx::query(
            "SELECT seq, at, actor, action, referral_id, digest, prev_hash, hash \
             FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(entry)
        .collect()
    }

    async fn audit_head(&self) -> Result<Option<Head>, StoreError> {
        sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(head)
            .transpose()
    }

    fn audit_head_cache(&self) -> &HeadCache {
        &self.audit_heads
    }

    async fn witness_head(
        &self,
        agency: &AgencyId,
        reported: Head,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        let known = sqlx::query("SELECT seq, hash FROM audit_witnessed WHERE agency_id = $1")
            .bind(agency.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(head)
            .transpose()?;
        if known == Some(reported) {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO audit_witnessed (agency_id, seq, hash, at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (agency_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, \
             at = excluded.at WHERE excluded.seq > audit_witnessed.seq",
        )
        .bind(agency.as_str())
        .bind(audit::seq_column(reported)?)
        .bind(reported.hash.0.to_vec())
        .bind(micros(at))
        .execute(&mut *tx)
        .await?;
        // Last, so that the advisory lock is held only until the commit.
        append_record(&mut tx, audit::witness_record(agency, reported, at)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn witnessed_head(&self, agency: &AgencyId) -> Result<Option<Head>, StoreError> {
        sqlx::query("SELECT seq, hash FROM audit_witnessed WHERE agency_id = $1")
            .bind(agency.as_str())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(head)
            .transpose()
    }
}
