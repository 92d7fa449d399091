//! Retention: the case files of referrals closed for longer than a set period are purged
//! (setting `retention.closed_case_files_for`, two years unless set; docs/operations.md#retention).
//!
//! A purge removes what identifies or describes the child: the case file, everything people wrote
//! in the history (as consent forgetting does, [`consent::forget_what_people_wrote`]), and the
//! outbox's copies of requests already sent or refused. The envelope and the history's kinds,
//! actors and times stay, so the agency's counts and the network's figures still add up. Each
//! referral's purge is recorded in `withdrawn_case_files` (because `retention`, which `show`
//! prints), and each run that removed something in `retention_purges`.
//!
//! A copy of a purged referral delivered again (after a restore, a broker replay) does not bring
//! the case file back: every transaction that stores something of it purges it again
//! ([`keep_purged`]), as consent forgetting does.

use std::time::Duration;

use rusqlite::{Connection, params};
use serde::Serialize;
use time::OffsetDateTime;

use crate::{
    AdapterError,
    at_rest::Vault,
    consent,
    referral::CLOSED_STATES,
    store::{SORTABLE_RFC3339, Store, record_withdrawal},
};

/// Why a case file was removed, as `withdrawn_case_files.because` records it.
pub const BECAUSE_RETENTION: &str = "retention";

/// The default period: two years after a referral closed, long enough for an agency to answer a
/// follow-up question or an audit about a closed case, short enough not to keep a child's details
/// for ever. Agencies bound by a longer legal duty set their own.
pub const DEFAULT_CLOSED_FOR: &str = "730d";

/// How long after closing a referral's case file is kept: a number and a unit, `d` (days), `h`,
/// `m` or `s` (e.g. `365d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period(Duration);

impl Period {
    /// Parses `365d`, `12h`, `30m`, `10s`; names the setting when it does not parse.
    pub fn parse(field: &str, raw: &str) -> Result<Self, AdapterError> {
        let invalid = |reason: &str| AdapterError::Invalid {
            field: field.into(),
            reason: format!("{raw:?}: {reason}"),
        };
        let raw = raw.trim();
        let unit_at = raw
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| invalid("give a unit: d, h, m or s (e.g. 365d)"))?;
        let (number, unit) = raw.split_at(unit_at);
        let number: u64 = number
            .parse()
            .map_err(|_| invalid("starts with a whole number, e.g. 365d"))?;
        let seconds = match unit {
            "d" => number.checked_mul(86_400),
            "h" => number.checked_mul(3_600),
            "m" => number.checked_mul(60),
            "s" => Some(number),
            _ => return Err(invalid("the unit is d, h, m or s")),
        }
        .ok_or_else(|| invalid("too long"))?;
        Ok(Self(Duration::from_secs(seconds)))
    }

    pub fn as_duration(&self) -> Duration {
        self.0
    }
}

/// What one purge did (or, in a dry run, would do).
#[derive(Debug, Clone, Serialize)]
pub struct Purge {
    /// When it ran (RFC 3339 UTC).
    pub at: String,
    /// Referrals closed before this time were purged.
    pub closed_before: String,
    /// The referrals purged, oldest closed first.
    pub referral_ids: Vec<String>,
    /// Nothing was written.
    pub dry_run: bool,
}

/// Purges the referrals closed for longer than `closed_for` (see the module), or with `dry_run`
/// only lists them; one transaction.
pub async fn purge(
    store: &Store,
    closed_for: Period,
    closed_for_setting: &str,
    dry_run: bool,
) -> Result<Purge, AdapterError> {
    let now = OffsetDateTime::now_utc();
    let cutoff = now
        .checked_sub(
            time::Duration::try_from(closed_for.as_duration()).unwrap_or(time::Duration::MAX),
        )
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let (at, closed_before) = (sortable(now), sortable(cutoff));
    let (vault, agency) = (store.vault().clone(), store.agency().to_string());
    let setting = closed_for_setting.to_owned();
    let (at2, before2) = (at.clone(), closed_before.clone());
    let referral_ids = store
        .write(move |conn| {
            let due = due(conn, &before2)?;
            if dry_run || due.is_empty() {
                return Ok(due);
            }
            for referral_id in &due {
                purge_one(conn, &vault, referral_id)?;
                record_withdrawal(conn, referral_id, &agency, BECAUSE_RETENTION)?;
            }
            conn.prepare_cached(
                "INSERT INTO retention_purges (at, referrals, closed_for) VALUES (?, ?, ?)",
            )?
            .execute(params![at2, due.len() as i64, setting])?;
            consent::mark_forgot();
            // Ids only.
            tracing::info!(referrals = due.len(), closed_before = %before2, "retention purge");
            Ok(due)
        })
        .await?;
    Ok(Purge {
        at,
        closed_before,
        referral_ids,
        dry_run,
    })
}

/// The purges that removed something, newest first: when, how many, under which setting.
pub async fn history(store: &Store) -> Result<Vec<(String, i64, String)>, AdapterError> {
    Ok(sqlx::query_as(
        "SELECT at, referrals, closed_for FROM retention_purges ORDER BY at DESC, rowid DESC",
    )
    .fetch_all(store.pool())
    .await?)
}

/// Referrals closed before `closed_before` and not purged yet, oldest first.
fn due(conn: &Connection, closed_before: &str) -> Result<Vec<String>, AdapterError> {
    let states = CLOSED_STATES.map(|s| format!("'{s}'")).join(", ");
    let mut statement = conn.prepare_cached(&format!(
        "SELECT referral_id FROM referrals r WHERE state IN ({states}) AND updated_at < ?1 \
         AND NOT EXISTS (SELECT 1 FROM withdrawn_case_files w \
                         WHERE w.referral_id = r.referral_id AND w.because = ?2) \
         ORDER BY updated_at, referral_id"
    ))?;
    let rows = statement.query_map(params![closed_before, BECAUSE_RETENTION], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Removes the case file, what people wrote in the history, and the outbox's copies of requests
/// no longer waiting to be sent, of one referral; true if anything was left to remove.
fn purge_one(conn: &Connection, vault: &Vault, referral_id: &str) -> Result<bool, AdapterError> {
    let case_file = conn
        .prepare_cached(
            "UPDATE referrals SET case_file = x'' WHERE referral_id = ?1 AND length(case_file) > 0",
        )?
        .execute(params![referral_id])?;
    let written = consent::forget_what_people_wrote(conn, vault, referral_id)?;
    let sealed = conn
        .prepare_cached(
            "DELETE FROM outbox_sealed WHERE request_id IN \
             (SELECT request_id FROM outbox WHERE referral_id = ?1 AND status <> 'pending')",
        )?
        .execute(params![referral_id])?;
    let requests = conn
        .prepare_cached(
            "UPDATE outbox SET payload = x'' \
             WHERE referral_id = ?1 AND status <> 'pending' AND length(payload) > 0",
        )?
        .execute(params![referral_id])?;
    Ok(case_file > 0 || written || sealed > 0 || requests > 0)
}

/// Purges again a referral purged before, if this transaction stored something of it that brought
/// text back (a copy delivered again). One indexed probe when it was never purged.
pub(crate) fn keep_purged(
    conn: &Connection,
    vault: &Vault,
    referral_id: &str,
) -> Result<(), AdapterError> {
    let purged = conn
        .prepare_cached(
            "SELECT 1 FROM withdrawn_case_files WHERE referral_id = ?1 AND because = ?2",
        )?
        .exists(params![referral_id, BECAUSE_RETENTION])?;
    if purged && purge_one(conn, vault, referral_id)? {
        consent::mark_forgot();
    }
    Ok(())
}

fn sortable(at: OffsetDateTime) -> String {
    at.format(SORTABLE_RFC3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_reads_days_hours_minutes_and_seconds_and_names_its_setting_otherwise() {
        let days = Period::parse("retention", "365d").unwrap();
        assert_eq!(days.as_duration(), Duration::from_secs(365 * 86_400));
        assert_eq!(
            Period::parse("r", "2s").unwrap().as_duration(),
            Duration::from_secs(2)
        );
        for bad in ["365", "d", "1y", "-1d", ""] {
            match Period::parse("retention.closed_case_files_for", bad) {
                Err(AdapterError::Invalid { field, .. }) => {
                    assert_eq!(field, "retention.closed_case_files_for")
                }
                other => panic!("{bad:?} was not refused: {other:?}"),
            }
        }
    }
}
