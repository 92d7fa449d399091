//! The production store's [`RevocationStore`]: the `revocations` table, shared by every broker of
//! a deployment. A write sends `NOTIFY spean_revocations` in its transaction, so PostgreSQL tells
//! every listening broker when it commits; brokers also re-read the table periodically, for a
//! notice lost while a listening connection was being re-established.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgListener, PgRow};

use super::PgStore;
use crate::error::StoreError;
use crate::revocation::Revocation;
use crate::store::micros;
use crate::store::revocations::{RevocationFeed, RevocationRow, RevocationStore};

/// The channel a revocation is announced on.
const CHANNEL: &str = "spean_revocations";

/// Every revocation, in the columns [`row`] reads, in its order.
const SELECT: &str =
    "SELECT fingerprint, agency_id, serial, effective_at, reason, recorded_at FROM revocations";

fn row(r: &PgRow) -> Result<Revocation, StoreError> {
    Revocation::try_from(RevocationRow {
        fingerprint: r.try_get(0)?,
        agency_id: r.try_get(1)?,
        serial: r.try_get(2)?,
        effective_at: r.try_get(3)?,
        reason: r.try_get(4)?,
        recorded_at: r.try_get(5)?,
    })
}

#[async_trait]
impl RevocationStore for PgStore {
    async fn revoke(&self, revocation: &Revocation) -> Result<Revocation, StoreError> {
        let fingerprint = revocation.fingerprint.to_string();
        let mut tx = self.write().await?;
        let written = sqlx::query(
            "INSERT INTO revocations (fingerprint, agency_id, serial, effective_at, reason, \
             recorded_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (fingerprint) DO UPDATE SET effective_at = excluded.effective_at, \
             reason = excluded.reason, recorded_at = excluded.recorded_at \
             WHERE excluded.effective_at < revocations.effective_at",
        )
        .bind(&fingerprint)
        .bind(revocation.agency.as_str())
        .bind(&revocation.serial)
        .bind(micros(revocation.effective_at))
        .bind(&revocation.reason)
        .bind(micros(revocation.recorded_at))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let stored = sqlx::query(
            "SELECT fingerprint, agency_id, serial, effective_at, reason, recorded_at \
             FROM revocations WHERE fingerprint = $1",
        )
        .bind(&fingerprint)
        .fetch_one(&mut *tx)
        .await?;
        // Delivered to every listener when, and only if, the transaction commits.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(&fingerprint)
            .execute(&mut *tx)
            .await?;
        // Last, so that the advisory lock is held only until the commit.
        if written > 0 {
            super::audit::append_record(
                &mut tx,
                crate::store::audit::revocation_record(revocation),
            )
            .await?;
        }
        tx.commit().await?;
        row(&stored)
    }

    async fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        sqlx::query(SELECT)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(row)
            .collect()
    }

    async fn revocation_feed(&self) -> Result<Box<dyn RevocationFeed>, StoreError> {
        let mut listener = PgListener::connect_with(self.pool()).await?;
        listener.listen(CHANNEL).await?;
        Ok(Box::new(Notices(listener)))
    }
}

/// `LISTEN spean_revocations` on a connection of its own.
struct Notices(PgListener);

#[async_trait]
impl RevocationFeed for Notices {
    async fn changed(&mut self) -> Result<(), StoreError> {
        self.0.recv().await?;
        Ok(())
    }
}
