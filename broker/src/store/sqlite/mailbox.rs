//! The embedded store's mailbox: the rows a submit or change queues, and the [`Mailbox`] that
//! sessions read and settle and the outbox relay leases and empties.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, params};

use super::{SqliteStore, all, first, json_list};
use crate::error::StoreError;
use crate::ids::{AgencyId, ReferralId};
use crate::store::{Mailbox, MailboxEntry, NewDelivery, duration_micros, micros, rows};

/// Queues a referral's deliveries, inside the write that submits or changes it. Bodies are not
/// kept: this store does not [carry deliveries](Mailbox::carries_deliveries).
pub(super) fn queue(
    conn: &Connection,
    referral_id: ReferralId,
    deliveries: &[NewDelivery],
    at: i64,
) -> Result<(), StoreError> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO mailbox (agency_id, delivery_id, referral_id, event_id, created_at, \
         lease_until) VALUES (?, ?, ?, ?, ?, ?)",
    )?;
    for d in deliveries {
        // Held by this process's clock, the one its relay's leases read.
        let held = d
            .held
            .map(|h| micros(time::OffsetDateTime::now_utc()).saturating_add(duration_micros(h)));
        insert.execute(params![
            d.agency.as_str(),
            d.id.to_string(),
            referral_id.to_string(),
            d.event_id.map(|e| e.to_string()),
            at,
            held,
        ])?;
    }
    Ok(())
}

#[async_trait]
impl Mailbox for SqliteStore {
    async fn mailbox(
        &self,
        agency: &AgencyId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<MailboxEntry>, StoreError> {
        let agency = agency.clone();
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(
                    "SELECT * FROM mailbox WHERE agency_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                )?;
                all(
                    query.query(params![agency.as_str(), after, i64::from(limit)])?,
                    |r| rows::mailbox(r),
                )
            })
            .await
    }

    async fn mailbox_entry(
        &self,
        agency: &AgencyId,
        delivery_id: uuid::Uuid,
    ) -> Result<Option<MailboxEntry>, StoreError> {
        let (agency, delivery_id) = (agency.clone(), delivery_id.to_string());
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(
                    "SELECT * FROM mailbox WHERE agency_id = ? AND delivery_id = ?",
                )?;
                first(query.query(params![agency.as_str(), delivery_id])?, |r| {
                    rows::mailbox(r)
                })
            })
            .await
    }

    async fn settle(
        &self,
        agency: &AgencyId,
        delivery_ids: &[uuid::Uuid],
    ) -> Result<u64, StoreError> {
        if delivery_ids.is_empty() {
            return Ok(0);
        }
        let (agency, list) = (agency.as_str().to_owned(), json_list(delivery_ids));
        self.writer
            .write(Box::new(move |conn| {
                // `+agency_id` keeps SQLite on the delivery id's unique index rather than walking
                // all of the agency's rows.
                let done = conn
                    .prepare_cached(
                        "DELETE FROM mailbox WHERE delivery_id IN (SELECT value FROM json_each(?)) \
                         AND +agency_id = ?",
                    )?
                    .execute(params![list, agency])?;
                Ok(done as u64)
            }))
            .await
    }

    async fn lease_outbox(
        &self,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<MailboxEntry>, StoreError> {
        // One process writes an SQLite file, so its clock is the database's clock.
        let now = micros(time::OffsetDateTime::now_utc());
        let until = now.saturating_add(duration_micros(lease));
        self.writer
            .write(Box::new(move |conn| {
                let mut lease = conn.prepare_cached(
                    "UPDATE mailbox SET lease_until = ?1 WHERE seq IN \
                     (SELECT seq FROM mailbox WHERE lease_until IS NULL OR lease_until < ?2 \
                      ORDER BY seq LIMIT ?3) RETURNING *",
                )?;
                let mut rows = lease.query(params![until, now, i64::from(limit)])?;
                let mut entries = Vec::new();
                while let Some(row) = rows.next()? {
                    entries.push(rows::mailbox(row)?);
                }
                entries.sort_by_key(|e| e.seq);
                Ok(entries)
            }))
            .await
    }

    async fn remove_published(&self, delivery_ids: &[uuid::Uuid]) -> Result<(), StoreError> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        let list = json_list(delivery_ids);
        self.writer
            .write(Box::new(move |conn| {
                conn.prepare_cached(
                    "DELETE FROM mailbox WHERE delivery_id IN (SELECT value FROM json_each(?))",
                )?
                .execute(params![list])?;
                Ok(())
            }))
            .await
    }
}
