//! Agencies' sealing keys ([`ReferralStore::publish_key`](crate::store::ReferralStore)).

use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};

use crate::error::StoreError;
use crate::ids::AgencyId;
use crate::store::{PublishedKey, from_micros, micros, rows};

/// The columns every statement returns, as a literal for `concat!`.
macro_rules! columns {
    () => {
        "key_id, agency_id, public_key, certificate, signature, published_at"
    };
}

pub(super) async fn publish(pool: &PgPool, key: &PublishedKey) -> Result<PublishedKey, StoreError> {
    let mut tx = pool.begin().await?;
    let stored = sqlx::query(concat!(
        "INSERT INTO agency_keys AS k (",
        columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (key_id) DO UPDATE SET \
           published_at = CASE WHEN k.certificate = excluded.certificate THEN k.published_at \
                          ELSE excluded.published_at END, \
           certificate = excluded.certificate, signature = excluded.signature \
         RETURNING ",
        columns!()
    ))
    .bind(&key.key_id)
    .bind(key.agency.as_str())
    .bind(&key.public_key)
    .bind(&key.certificate)
    .bind(&key.signature)
    .bind(micros(key.published_at))
    .fetch_one(&mut *tx)
    .await?;
    let stored = row(&stored)?;
    // Published now (a new key, or a new certificate): not a replay, which keeps the old time.
    // Appended last, so that the advisory lock is held only until the commit.
    if stored.published_at == key.published_at {
        super::audit::append_record(&mut tx, crate::store::audit::key_record(&stored)).await?;
    }
    tx.commit().await?;
    Ok(stored)
}

pub(super) async fn read(
    pool: &PgPool,
    agencies: &[AgencyId],
    key_ids: &[Vec<u8>],
) -> Result<Vec<PublishedKey>, StoreError> {
    let agencies: Vec<String> = agencies.iter().map(ToString::to_string).collect();
    let found = sqlx::query(concat!(
        "SELECT DISTINCT ON (key_id) ",
        columns!(),
        " FROM ((SELECT DISTINCT ON (agency_id) ",
        columns!(),
        " FROM agency_keys WHERE agency_id = ANY ($1) ORDER BY agency_id, published_at DESC) \
         UNION ALL (SELECT ",
        columns!(),
        " FROM agency_keys WHERE key_id = ANY ($2))) k ORDER BY key_id"
    ))
    .bind(&agencies)
    .bind(key_ids)
    .fetch_all(pool)
    .await?;
    found.iter().map(row).collect()
}

fn row(row: &PgRow) -> Result<PublishedKey, StoreError> {
    let agency: String = row.try_get("agency_id")?;
    Ok(PublishedKey {
        key_id: row.try_get("key_id")?,
        agency: AgencyId::parse("agency_id", &agency)
            .map_err(|_| rows::corrupt("agency_keys", "agency_id"))?,
        public_key: row.try_get("public_key")?,
        certificate: row.try_get("certificate")?,
        signature: row.try_get("signature")?,
        published_at: from_micros(row.try_get("published_at")?),
    })
}
