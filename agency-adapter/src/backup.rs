//! `backup` and `restore` of the local store, safe while the daemon runs.
//!
//! A backup is `VACUUM INTO` a new file (0600): a consistent snapshot taken in one read
//! transaction, which in WAL mode never blocks the daemon's writes, and which copies no free pages
//! (nothing deleted comes along). Its columns stay sealed under the store's key ([`crate::at_rest`]),
//! so a backup is as safe as the store as long as the key is kept apart from it.
//!
//! A restore checks the backup first (SQLite's integrity check; the same agency; the same store
//! key opens it), then copies it into the live store through SQLite's online backup API, which
//! takes the write lock: the daemon's next transaction sees the restored content, and no
//! connection ever sees half of it. What the live store holds that the backup does not is
//! accounted for, since the broker will not send it again:
//! - requests queued after the backup are carried over into the restored store, so no action
//!   waits on nobody; a request the backup holds as pending though it was sent since goes again
//!   under its own key with the very bytes it was first sealed to (carried over too: sealed anew
//!   the broker would refuse it as another request under that key), and the broker answers it as
//!   a replay, with the event it stored;
//! - deliveries received after the backup (referrals and events) would be missing: the restore is
//!   refused unless `accept_loss`, and the referrals concerned are kept in `to_read_again`, read
//!   again from the broker ([`read_again`]: `ReferralService.Get`) by the `restore` command, else
//!   by the daemon each time it connects, until it works.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

use crate::{AdapterError, store::Store};

/// What a backup made.
#[derive(Debug, Clone, Serialize)]
pub struct BackupMade {
    pub file: PathBuf,
    pub bytes: u64,
}

/// Writes a consistent copy of `store` to `to` (0600). An existing file is refused unless `force`.
pub async fn backup(store: &Store, to: &Path, force: bool) -> Result<BackupMade, AdapterError> {
    let invalid = |reason: String| AdapterError::Invalid {
        field: "backup FILE".into(),
        reason: format!("{}: {reason}", to.display()),
    };
    if to.exists() {
        if !force {
            return Err(invalid("exists; give --force to overwrite it".into()));
        }
        std::fs::remove_file(to).map_err(|e| invalid(e.to_string()))?;
    }
    create_empty_private(to).map_err(|e| invalid(e.to_string()))?;
    let target = to
        .to_str()
        .ok_or_else(|| invalid("the path is not UTF-8".into()))?
        .to_owned();
    if let Err(error) = sqlx::query("VACUUM INTO ?")
        .bind(target)
        .execute(store.pool())
        .await
    {
        let _ = std::fs::remove_file(to);
        return Err(error.into());
    }
    let file = std::fs::File::open(to).map_err(|e| invalid(e.to_string()))?;
    file.sync_all().map_err(|e| invalid(e.to_string()))?;
    let bytes = file.metadata().map_err(|e| invalid(e.to_string()))?.len();
    Ok(BackupMade {
        file: to.to_owned(),
        bytes,
    })
}

/// An empty file only the adapter's user may read, in a folder (made 0700 if new).
fn create_empty_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    /// Referrals with something received after the backup was taken (now missing locally): to be
    /// read again from the broker.
    pub referrals_to_read_again: Vec<String>,
    /// Requests queued after the backup, carried over into the restored store.
    pub requests_carried_over: usize,
}

/// Restores `from` into the live `store` (see the module). Refused, with nothing written, when the
/// backup is damaged, another agency's, sealed under another key, or (without `accept_loss`)
/// older than deliveries the live store holds.
pub async fn restore(
    store: &Store,
    from: &Path,
    accept_loss: bool,
) -> Result<Restored, AdapterError> {
    let from = from.to_owned();
    let (agency, vault) = (store.agency().to_string(), store.vault().clone());
    let source = open_backup(&from)?;
    check_backup(&source, &from, &agency, &vault)?;
    drop(source);
    store
        .with_writer(move |live| {
            let attached = from
                .to_str()
                .ok_or_else(|| AdapterError::Invalid {
                    field: "restore FILE".into(),
                    reason: "the path is not UTF-8".into(),
                })?
                .to_owned();
            live.execute("ATTACH DATABASE ?1 AS backup", params![attached])?;
            let result = (|| {
                let lost = received_since(live)?;
                let queued = queued_since(live)?;
                let sealed = sealed_since(live)?;
                Ok::<_, AdapterError>((lost, queued, sealed))
            })();
            live.execute_batch("DETACH DATABASE backup")?;
            let (lost, queued, sealed) = result?;
            if !lost.is_empty() && !accept_loss {
                return Err(AdapterError::Invalid {
                    field: "restore FILE".into(),
                    reason: format!(
                        "the live store holds what was received after this backup, for {} \
                         referral(s), which the broker will not deliver again; give \
                         --accept-loss to restore anyway and read them again from the broker",
                        lost.len()
                    ),
                });
            }
            let source = open_backup(&from)?;
            copy_whole(&source, live)?;
            let carried = carry_over(live, &queued, &sealed)?;
            for referral_id in &lost {
                live.execute(
                    "INSERT INTO to_read_again (referral_id, since) VALUES (?, ?) \
                     ON CONFLICT (referral_id) DO NOTHING",
                    params![referral_id, crate::store::now()],
                )?;
            }
            let check: String = live.query_row("PRAGMA integrity_check", [], |row| row.get(0))?;
            if check != "ok" {
                return Err(AdapterError::Config(format!(
                    "the restored store fails its integrity check: {check}"
                )));
            }
            if let Err(e) = live.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
                tracing::debug!(error = %e, "checkpoint after a restore deferred");
            }
            tracing::warn!(
                referrals_to_read_again = lost.len(),
                requests_carried_over = carried,
                "store restored from a backup"
            );
            Ok(Restored {
                referrals_to_read_again: lost,
                requests_carried_over: carried,
            })
        })
        .await
}

/// Copies `source` over `live` with SQLite's backup API: every page in one step (-1), under one
/// write lock, so no connection sees half a restore. Busy (the daemon in a transaction): waits and
/// tries again, within the store's busy timeout.
fn copy_whole(source: &Connection, live: &mut Connection) -> Result<(), AdapterError> {
    use rusqlite::backup::{Backup, StepResult};
    let copy = Backup::new(source, live)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match copy.step(-1)? {
            StepResult::Done => return Ok(()),
            StepResult::More => {}
            StepResult::Busy | StepResult::Locked if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            _ => {
                return Err(AdapterError::Unavailable(
                    "the store stayed busy; restore again when the daemon is idle".into(),
                ));
            }
        }
    }
}

fn open_backup(path: &Path) -> Result<Connection, AdapterError> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| AdapterError::Invalid {
        field: "restore FILE".into(),
        reason: format!("{}: {e}", path.display()),
    })
}

/// Refuses a backup that is damaged, not an adapter store sealed at rest, another agency's, or
/// sealed under another key.
fn check_backup(
    source: &Connection,
    path: &Path,
    agency: &str,
    vault: &crate::at_rest::Vault,
) -> Result<(), AdapterError> {
    let refused = |reason: String| AdapterError::Invalid {
        field: "restore FILE".into(),
        reason: format!("{}: {reason}", path.display()),
    };
    let check: String = source
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .map_err(|e| refused(format!("not a readable store: {e}")))?;
    if check != "ok" {
        return Err(refused(format!("fails its integrity check: {check}")));
    }
    let sealing: Option<(String, Vec<u8>)> = source
        .query_row(
            "SELECT agency, key_check FROM at_rest WHERE id = 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(|_| refused("not a backup of an adapter store sealed at rest".into()))?;
    let Some((backup_agency, key_check)) = sealing else {
        return Err(refused(
            "not a backup of an adapter store sealed at rest".into(),
        ));
    };
    if backup_agency != agency {
        return Err(refused(format!(
            "a backup of {backup_agency}'s store, not of {agency}'s"
        )));
    }
    if !vault.opens_check_value(&key_check) {
        return Err(refused(
            "sealed under another store key than this store's (store_key or the passphrase)".into(),
        ));
    }
    Ok(())
}

/// Referrals the live store received something of (the referral or an event) that the attached
/// backup lacks, and those an earlier restore left to read again (the backup's table would
/// forget them).
fn received_since(live: &Connection) -> Result<Vec<String>, AdapterError> {
    let mut statement = live.prepare(
        "SELECT referral_id FROM main.referrals \
           WHERE referral_id NOT IN (SELECT referral_id FROM backup.referrals) \
         UNION SELECT referral_id FROM main.events \
           WHERE event_id NOT IN (SELECT event_id FROM backup.events) \
         UNION SELECT referral_id FROM main.to_read_again \
         ORDER BY 1",
    )?;
    let rows = statement.query_map([], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// An outbox row queued after the backup, as stored (still sealed), with its sealed copy.
struct Queued {
    request_id: String,
    operation: String,
    referral_id: Option<String>,
    payload: Vec<u8>,
    status: String,
    error: Option<String>,
    attempts: i64,
    created_at: String,
    sent_at: Option<String>,
}

fn queued_since(live: &Connection) -> Result<Vec<Queued>, AdapterError> {
    let mut statement = live.prepare(
        "SELECT request_id, operation, referral_id, payload, status, error, attempts, \
                created_at, sent_at \
         FROM main.outbox WHERE request_id NOT IN (SELECT request_id FROM backup.outbox) \
         ORDER BY seq",
    )?;
    let rows = statement.query_map([], |row| {
        Ok(Queued {
            request_id: row.get(0)?,
            operation: row.get(1)?,
            referral_id: row.get(2)?,
            payload: row.get(3)?,
            status: row.get(4)?,
            error: row.get(5)?,
            attempts: row.get(6)?,
            created_at: row.get(7)?,
            sent_at: row.get(8)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The requests as first sealed that the live store kept after the backup was taken (a request
/// the backup holds as pending may have been sealed and sent since).
///
/// Why they must come back: a request sealed again gives other bytes, which the broker refuses
/// as another request under the same key; sent again as first sealed, it is answered as a replay.
fn sealed_since(live: &Connection) -> Result<Vec<(String, Vec<u8>)>, AdapterError> {
    let mut statement = live.prepare(
        "SELECT request_id, payload FROM main.outbox_sealed \
         WHERE request_id NOT IN (SELECT request_id FROM backup.outbox_sealed)",
    )?;
    let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Puts the requests queued after the backup back, in their order, after the backup's own, and
/// the sealed copies made after it; how many requests.
fn carry_over(
    live: &Connection,
    queued: &[Queued],
    sealed: &[(String, Vec<u8>)],
) -> Result<usize, AdapterError> {
    for q in queued {
        live.execute(
            "INSERT INTO outbox (request_id, operation, referral_id, payload, status, error, \
             attempts, created_at, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (request_id) DO NOTHING",
            params![
                q.request_id,
                q.operation,
                q.referral_id,
                q.payload,
                q.status,
                q.error,
                q.attempts,
                q.created_at,
                q.sent_at
            ],
        )?;
    }
    for (request_id, payload) in sealed {
        live.execute(
            "INSERT INTO outbox_sealed (request_id, payload) VALUES (?, ?) \
             ON CONFLICT (request_id) DO NOTHING",
            params![request_id, payload],
        )?;
    }
    Ok(queued.len())
}

/// Reads again from the broker the referrals a restore lost deliveries of (`to_read_again`):
/// `ReferralService.Get` gives the referral with its whole history as this agency may see it; what
/// is sealed to this agency is opened, the referral stored, and its row removed. Returns those
/// that could not be read (the broker unreachable or refusing): they stay for the next try.
pub async fn read_again(
    store: &Store,
    broker: &mut crate::broker::Broker,
) -> Result<Vec<(String, AdapterError)>, AdapterError> {
    let pending: Vec<(String,)> = sqlx::query_as("SELECT referral_id FROM to_read_again")
        .fetch_all(store.pool())
        .await?;
    let mut failed = Vec::new();
    for (referral_id,) in pending {
        let result = async {
            let request = tonic::Request::new(spean_proto::v1::GetRequest {
                referral_id: referral_id.clone(),
            });
            let mut referral = tokio::time::timeout(
                crate::broker::REQUEST_TIMEOUT,
                broker.referrals.get(request),
            )
            .await
            .map_err(|_| AdapterError::Unavailable("reading a referral timed out".into()))??
            .into_inner();
            crate::sealing::open_referral(store, broker, &mut referral).await?;
            store.store_referral(&referral).await?;
            sqlx::query("DELETE FROM to_read_again WHERE referral_id = ?")
                .bind(&referral_id)
                .execute(store.pool())
                .await?;
            Ok::<_, AdapterError>(())
        }
        .await;
        if let Err(error) = result {
            failed.push((referral_id, error));
        }
    }
    Ok(failed)
}
