//! The embedded store's [`RevocationStore`]: the `revocations` table, written through the writer and
//! read by the readers. Nothing tells a broker that the CLI wrote a row from another process, so
//! brokers re-read the table periodically (the trait's default, silent feed).

use async_trait::async_trait;
use rusqlite::{Connection, params};

use super::{SqliteStore, all};
use crate::error::StoreError;
use crate::revocation::Revocation;
use crate::store::micros;
use crate::store::revocations::{RevocationRow, RevocationStore};

/// The columns [`row`] reads, in its order.
const COLUMNS: &str = "fingerprint, agency_id, serial, effective_at, reason, recorded_at";

fn row(r: &rusqlite::Row<'_>) -> Result<Revocation, StoreError> {
    Revocation::try_from(RevocationRow {
        fingerprint: r.get(0)?,
        agency_id: r.get(1)?,
        serial: r.get(2)?,
        effective_at: r.get(3)?,
        reason: r.get(4)?,
        recorded_at: r.get(5)?,
    })
}

/// Inserts the revocation, or moves an existing one's time earlier (with its reason); returns the
/// row as it stands.
fn upsert(conn: &Connection, revocation: &Revocation) -> Result<Revocation, StoreError> {
    let fingerprint = revocation.fingerprint.to_string();
    let written = conn
        .prepare_cached(
            "INSERT INTO revocations (fingerprint, agency_id, serial, effective_at, reason, \
         recorded_at) VALUES (?, ?, ?, ?, ?, ?) \
         ON CONFLICT (fingerprint) DO UPDATE SET effective_at = excluded.effective_at, \
         reason = excluded.reason, recorded_at = excluded.recorded_at \
         WHERE excluded.effective_at < revocations.effective_at",
        )?
        .execute(params![
            fingerprint,
            revocation.agency.as_str(),
            revocation.serial,
            micros(revocation.effective_at),
            revocation.reason,
            micros(revocation.recorded_at),
        ])?;
    if written > 0 {
        super::audit::append(conn, crate::store::audit::revocation_record(revocation))?;
    }
    let mut query = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM revocations WHERE fingerprint = ?"
    ))?;
    let mut stored = all(query.query(params![fingerprint])?, row)?;
    stored
        .pop()
        .ok_or_else(|| super::rows::corrupt("revocations", "the row just written is missing"))
}

#[async_trait]
impl RevocationStore for SqliteStore {
    async fn revoke(&self, revocation: &Revocation) -> Result<Revocation, StoreError> {
        let revocation = revocation.clone();
        self.writer
            .write(Box::new(move |conn| upsert(conn, &revocation)))
            .await
    }

    async fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        self.readers
            .read(|conn| {
                let mut query =
                    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM revocations"))?;
                all(query.query([])?, row)
            })
            .await
    }
}
