//! The production store's [`Mailbox`]: the rows sessions read and settle, and the outbox the
//! relays of every broker process lease and empty. Rows are queued by `submits` and `changes`.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;

use super::columns::{MAILBOX_COLUMNS, NOW_MICROS, Sql};
use super::{PgStore, as_text};
use crate::error::StoreError;
use crate::ids::AgencyId;
use crate::store::{Mailbox, MailboxEntry, duration_micros, rows};

#[async_trait]
impl Mailbox for PgStore {
    async fn mailbox(
        &self,
        agency: &AgencyId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<MailboxEntry>, StoreError> {
        static SQL: Sql = Sql::new(|| {
            format!(
                "SELECT {MAILBOX_COLUMNS} FROM mailbox WHERE agency_id = $1 AND seq > $2 \
                 ORDER BY seq LIMIT $3"
            )
        });
        let rows = sqlx::query(SQL.as_str())
            .bind(agency.as_str())
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::mailbox).collect()
    }

    async fn mailbox_entry(
        &self,
        agency: &AgencyId,
        delivery_id: uuid::Uuid,
    ) -> Result<Option<MailboxEntry>, StoreError> {
        static SQL: Sql = Sql::new(|| {
            format!(
                "SELECT {MAILBOX_COLUMNS} FROM mailbox WHERE agency_id = $1 \
                 AND delivery_id = $2::uuid"
            )
        });
        let row = sqlx::query(SQL.as_str())
            .bind(agency.as_str())
            .bind(delivery_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::mailbox).transpose()
    }

    async fn settle(
        &self,
        agency: &AgencyId,
        delivery_ids: &[uuid::Uuid],
    ) -> Result<u64, StoreError> {
        if delivery_ids.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query(
            "DELETE FROM mailbox WHERE agency_id = $1 AND delivery_id = ANY ($2::text[]::uuid[])",
        )
        .bind(agency.as_str())
        .bind(as_text(delivery_ids))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The lease is measured by PostgreSQL's clock, the one clock every broker process shares, so a
    /// broker whose own clock is off cannot take rows another still holds.
    async fn lease_outbox(
        &self,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<MailboxEntry>, StoreError> {
        static SQL: Sql = Sql::new(|| {
            format!(
                "WITH now AS (SELECT {NOW_MICROS} AS us) \
                 UPDATE mailbox SET lease_until = (SELECT us FROM now) + $1 WHERE seq = ANY (ARRAY( \
                 SELECT seq FROM mailbox WHERE lease_until IS NULL OR lease_until < (SELECT us FROM now) \
                  ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED)) RETURNING {MAILBOX_COLUMNS}, body"
            )
        });
        let rows = sqlx::query(SQL.as_str())
            .bind(duration_micros(lease))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let mut entries = rows
            .iter()
            .map(|row| {
                let mut entry = rows::mailbox(row)?;
                entry.carried = row.try_get("body")?;
                Ok(entry)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        entries.sort_by_key(|e| e.seq);
        Ok(entries)
    }

    fn carries_deliveries(&self) -> bool {
        true
    }

    async fn remove_published(&self, delivery_ids: &[uuid::Uuid]) -> Result<(), StoreError> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM mailbox WHERE delivery_id = ANY ($1::text[]::uuid[])")
            .bind(as_text(delivery_ids))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The outbox is a queue: every row is inserted, leased and deleted within moments, and the
    /// deleted rows stay in the table and its index until a vacuum. The lease reads the index from
    /// its oldest entry, so it walks every dead entry first, and under load the dead entries soon
    /// outnumber the live ones many times over. Autovacuum visits a database at most once a
    /// minute (`autovacuum_naptime`), far too seldom for a queue that deletes thousands of rows a
    /// second, so the relay asks for a vacuum itself. `SKIP_LOCKED`: if autovacuum or another
    /// broker is vacuuming the table already, this one does nothing rather than wait.
    /// `INDEX_CLEANUP ON`: the dead index entries are what the lease walks, so they are removed
    /// even when PostgreSQL would judge the heap clean enough.
    async fn tidy_outbox(&self) -> Result<(), StoreError> {
        sqlx::raw_sql("VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) mailbox")
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
