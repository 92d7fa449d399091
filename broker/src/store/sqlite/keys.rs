//! Agencies' sealing keys ([`ReferralStore::publish_key`](crate::store::ReferralStore)).

use rusqlite::{Connection, params};

use super::all;
use crate::error::StoreError;
use crate::ids::AgencyId;
use crate::store::{PublishedKey, from_micros, micros, rows};

const COLUMNS: &str = "key_id, agency_id, public_key, certificate, signature, published_at";

pub(super) fn publish(conn: &Connection, key: &PublishedKey) -> Result<PublishedKey, StoreError> {
    let sql = format!(
        "INSERT INTO agency_keys ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) \
         ON CONFLICT (key_id) DO UPDATE SET \
           published_at = CASE WHEN certificate = excluded.certificate THEN published_at \
                          ELSE excluded.published_at END, \
           certificate = excluded.certificate, signature = excluded.signature \
         RETURNING {COLUMNS}"
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement.query(params![
        key.key_id,
        key.agency.as_str(),
        key.public_key,
        key.certificate,
        key.signature,
        micros(key.published_at),
    ])?;
    let stored = all(rows, row)?
        .pop()
        .ok_or_else(|| rows::corrupt("agency_keys", "RETURNING"))?;
    // Published now (a new key, or a new certificate): not a replay, which keeps the old time.
    if stored.published_at == key.published_at {
        super::audit::append(conn, crate::store::audit::key_record(&stored))?;
    }
    Ok(stored)
}

pub(super) fn read(
    conn: &Connection,
    agencies: &[AgencyId],
    key_ids: &[Vec<u8>],
) -> Result<Vec<PublishedKey>, StoreError> {
    let mut keys: Vec<PublishedKey> = Vec::new();
    let mut newest = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM agency_keys WHERE agency_id = ? \
         ORDER BY published_at DESC LIMIT 1"
    ))?;
    for agency in agencies {
        keys.extend(all(newest.query(params![agency.as_str()])?, row)?);
    }
    let mut by_id = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM agency_keys WHERE key_id = ?"
    ))?;
    for id in key_ids {
        keys.extend(all(by_id.query(params![id])?, row)?);
    }
    keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    keys.dedup_by(|a, b| a.key_id == b.key_id);
    Ok(keys)
}

fn row(row: &rusqlite::Row<'_>) -> Result<PublishedKey, StoreError> {
    let agency: String = row.get(1)?;
    Ok(PublishedKey {
        key_id: row.get(0)?,
        agency: AgencyId::parse("agency_id", &agency)
            .map_err(|_| rows::corrupt("agency_keys", "agency_id"))?,
        public_key: row.get(2)?,
        certificate: row.get(3)?,
        signature: row.get(4)?,
        published_at: from_micros(row.get(5)?),
    })
}
