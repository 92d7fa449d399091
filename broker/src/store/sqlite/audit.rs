//! The embedded store's [`AuditStore`]: entries are computed here, on the writer's connection, in
//! the job of the action they record ([`append`]), so they commit or roll back with it. The writer
//! runs one job at a time, so reading the head and appending after it cannot race.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;

use super::{SqliteStore, all};
use crate::error::StoreError;
use crate::ids::AgencyId;
use crate::store::audit::{self, AuditStore, Entry, Head, HeadCache, Record};
use crate::store::micros;

/// The last entry's head, on `conn`.
fn head(conn: &Connection) -> Result<Option<Head>, StoreError> {
    conn.prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
        .query_row([], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .optional()?
        .map(|(seq, hash)| audit::head(seq, &hash))
        .transpose()
}

/// Appends `record` after the current head; returns the new head.
pub(super) fn append(conn: &Connection, record: Record) -> Result<Head, StoreError> {
    let entry = Entry::next(head(conn)?, record);
    let seq = i64::try_from(entry.seq)
        .map_err(|_| super::rows::corrupt("audit_log", "a seq beyond i64"))?;
    conn.prepare_cached(
        "INSERT INTO audit_log (seq, at, actor, action, referral_id, digest, prev_hash, hash) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        seq,
        entry.record.at,
        entry.record.actor,
        entry.record.action,
        entry.record.referral_id,
        entry.record.digest,
        entry.prev_hash,
        entry.hash,
    ])?;
    entry
        .head()
        .ok_or_else(|| super::rows::corrupt("audit_log", "a short hash"))
}

/// Records an adapter's head: see [`AuditStore::witness_head`].
fn witness(
    conn: &Connection,
    agency: &AgencyId,
    reported: Head,
    at: OffsetDateTime,
) -> Result<(), StoreError> {
    let known = witnessed(conn, agency)?;
    if known == Some(reported) {
        return Ok(());
    }
    append(conn, audit::witness_record(agency, reported, at))?;
    conn.prepare_cached(
        "INSERT INTO audit_witnessed (agency_id, seq, hash, at) VALUES (?, ?, ?, ?) \
         ON CONFLICT (agency_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, \
         at = excluded.at WHERE excluded.seq > audit_witnessed.seq",
    )?
    .execute(params![
        agency.as_str(),
        audit::seq_column(reported)?,
        reported.hash.0.to_vec(),
        micros(at),
    ])?;
    Ok(())
}

fn witnessed(conn: &Connection, agency: &AgencyId) -> Result<Option<Head>, StoreError> {
    conn.prepare_cached("SELECT seq, hash FROM audit_witnessed WHERE agency_id = ?")?
        .query_row(params![agency.as_str()], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .optional()?
        .map(|(seq, hash)| audit::head(seq, &hash))
        .transpose()
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn audit_entries(&self, after: u64, limit: u32) -> Result<Vec<Entry>, StoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(
                    "SELECT seq, at, actor, action, referral_id, digest, prev_hash, hash \
                     FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?",
                )?;
                all(query.query(params![after, limit])?, |row| {
                    audit::entry(
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                        row.get(6)?,
                        row.get(7)?,
                    )
                })
            })
            .await
    }

    async fn audit_head(&self) -> Result<Option<Head>, StoreError> {
        self.readers.read(head).await
    }

    fn audit_head_cache(&self) -> &HeadCache {
        &self.audit_heads
    }

    async fn witness_head(
        &self,
        agency: &AgencyId,
        head: Head,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let agency = agency.clone();
        self.writer
            .write(Box::new(move |conn| witness(conn, &agency, head, at)))
            .await
    }

    async fn witnessed_head(&self, agency: &AgencyId) -> Result<Option<Head>, StoreError> {
        let agency = agency.clone();
        self.readers
            .read(move |conn| witnessed(conn, &agency))
            .await
    }
}
