//! The adapter's audit trail: every read of a case file through the adapter appends an entry (who,
//! when, which referral) to a hash-chained log in the local store ([`record_read`]), and the
//! newest head of the broker's own log that a delivery carried is kept ([`Store::broker_head`]),
//! so that an operator can check the broker's log still reaches it. The chain itself is
//! [`spean_domain::audit`], shared with the broker.

use rusqlite::{Connection, OptionalExtension, params};
use spean_domain::audit::{Entry, Hash, Head, Record};
use spean_proto::v1::AuditHead;

use crate::{AdapterError, at_rest::Vault, broker::Broker, store::Store};

pub use spean_domain::audit::{AuditBreak, verify};

/// The action of a case file read.
pub const SHOW: &str = "show";

/// Who reads: the name given (`--by`), else the operating system's user, else "unknown". The
/// adapter has no logins of its own: the OS account is the best it knows.
pub fn reader(by: Option<&str>) -> String {
    by.map(str::to_owned)
        .filter(|name| !name.trim().is_empty())
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Records that `reader` is shown `part` of referral `referral_id`'s case file now. Every place
/// that shows a case file (the `show` command, and any page or API that shows one) calls this
/// before it shows anything, and shows nothing if it fails: no read goes unrecorded.
pub async fn record_read(
    store: &Store,
    reader: &str,
    referral_id: &str,
    part: &str,
) -> Result<Head, AdapterError> {
    let record = read_record(store, reader, referral_id, part);
    let vault = store.vault().clone();
    store.write(move |conn| append(conn, &vault, record)).await
}

/// Records, in one transaction, that `reader` is shown `part` of each of `referral_ids`: for the
/// views that list several referrals with something of their case (the inbox shows each child's
/// name, `client` every note of one client's referrals). Called before they print anything; the
/// head after the last entry, or `None` when nothing is listed.
pub async fn record_reads(
    store: &Store,
    reader: &str,
    referral_ids: &[String],
    part: &str,
) -> Result<Option<Head>, AdapterError> {
    let records: Vec<Record> = referral_ids
        .iter()
        .map(|id| read_record(store, reader, id, part))
        .collect();
    let vault = store.vault().clone();
    store
        .write(move |conn| {
            let mut head = None;
            for record in records {
                head = Some(append(conn, &vault, record)?);
            }
            Ok(head)
        })
        .await
}

/// The entry of one read: who (as `reader@agency`), now, which referral, and a digest of the
/// referral and the part shown.
fn read_record(store: &Store, reader: &str, referral_id: &str, part: &str) -> Record {
    let at = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000) as i64;
    Record {
        at,
        actor: format!("{reader}@{}", store.agency()),
        action: SHOW.to_owned(),
        referral_id: Some(referral_id.to_owned()),
        digest: Hash::digest_of(&[referral_id.as_bytes(), part.as_bytes()])
            .0
            .to_vec(),
    }
}

/// Reports this agency's head to the broker, which records it in its own log (`WitnessHead`), so
/// that a cut tail of this log shows against what the broker saw. Nothing to report while the log
/// is empty. The daemon calls this each time it connects.
pub async fn report_head(broker: &mut Broker, store: &Store) -> Result<(), AdapterError> {
    let Some(head) = store.audit_head().await? else {
        return Ok(());
    };
    let request = tonic::Request::new(AuditHead {
        seq: head.seq,
        hash: head.hash.0.to_vec(),
    });
    tokio::time::timeout(
        crate::broker::REQUEST_TIMEOUT,
        broker.audit.witness_head(request),
    )
    .await
    .map_err(|_| AdapterError::Unavailable("reporting the audit head timed out".into()))??;
    Ok(())
}

/// The newest head of this agency's log the broker witnessed; `None` if it never saw one.
pub async fn witnessed_head(broker: &mut Broker) -> Result<Option<Head>, AdapterError> {
    let request = tonic::Request::new(spean_proto::v1::WitnessedHeadRequest {});
    let head = tokio::time::timeout(
        crate::broker::REQUEST_TIMEOUT,
        broker.audit.witnessed_head(request),
    )
    .await
    .map_err(|_| AdapterError::Unavailable("asking for the witnessed head timed out".into()))??
    .into_inner();
    Ok(Hash::from_slice(&head.hash)
        .filter(|_| head.seq > 0)
        .map(|hash| Head {
            seq: head.seq,
            hash,
        }))
}

/// The head of the log on `conn`.
fn head(conn: &Connection) -> Result<Option<Head>, AdapterError> {
    conn.prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
        .query_row([], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .optional()?
        .map(|(seq, hash)| stored_head(seq, &hash))
        .transpose()
}

fn stored_head(seq: i64, hash: &[u8]) -> Result<Head, AdapterError> {
    let corrupt = || AdapterError::Unavailable("the audit log holds a malformed head".into());
    Ok(Head {
        seq: u64::try_from(seq).map_err(|_| corrupt())?,
        hash: Hash::from_slice(hash).ok_or_else(corrupt)?,
    })
}

/// Appends `record` after the head, inside the caller's write transaction.
fn append(conn: &Connection, vault: &Vault, record: Record) -> Result<Head, AdapterError> {
    let entry = Entry::next(head(conn)?, record);
    // Who read is a person's name: sealed at rest like the names in the history, bound to the
    // entry's own hash (which a reordering of rows leaves with it).
    let actor = vault.seal(
        crate::at_rest::AUDIT_ACTOR,
        &hex::encode(&entry.hash),
        entry.record.actor.as_bytes(),
    )?;
    conn.prepare_cached(
        "INSERT INTO audit_log (seq, at, actor, action, referral_id, digest, prev_hash, hash) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        i64::try_from(entry.seq).unwrap_or(i64::MAX),
        entry.record.at,
        actor,
        entry.record.action,
        entry.record.referral_id,
        entry.record.digest,
        entry.prev_hash,
        entry.hash,
    ])?;
    entry
        .head()
        .ok_or_else(|| AdapterError::Unavailable("an audit hash of the wrong length".into()))
}

/// Keeps `received` as the broker's head if it is newer than the one kept, inside the caller's
/// write transaction (the one that stores the deliveries that carried it).
pub(crate) fn keep_broker_head(
    conn: &Connection,
    received: &[&AuditHead],
) -> Result<(), AdapterError> {
    let Some(newest) = received
        .iter()
        .filter(|h| h.seq > 0 && h.hash.len() == 32)
        .max_by_key(|h| h.seq)
    else {
        return Ok(());
    };
    conn.prepare_cached(
        "INSERT INTO broker_audit_head (id, seq, hash, received_at) VALUES (1, ?, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, \
         received_at = excluded.received_at WHERE excluded.seq > broker_audit_head.seq",
    )?
    .execute(params![
        i64::try_from(newest.seq).unwrap_or(i64::MAX),
        newest.hash,
        crate::store::now(),
    ])?;
    Ok(())
}

impl Store {
    /// Every entry of this agency's log, in order.
    pub async fn audit_entries(&self) -> Result<Vec<Entry>, AdapterError> {
        let vault = self.vault().clone();
        self.write(move |conn| {
            let mut query = conn.prepare_cached(
                "SELECT seq, at, CAST(actor AS BLOB), action, referral_id, digest, prev_hash, hash \
                 FROM audit_log ORDER BY seq",
            )?;
            let rows = query.query_map([], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Vec<u8>>(2)?,
                    (
                        row.get::<_, String>(3)?,
                        row.get::<_, Option<String>>(4)?,
                        row.get::<_, Vec<u8>>(5)?,
                    ),
                    row.get::<_, Vec<u8>>(6)?,
                    row.get::<_, Vec<u8>>(7)?,
                ))
            })?;
            let mut entries = Vec::new();
            for row in rows {
                let (seq, at, sealed_actor, (action, referral_id, digest), prev_hash, hash) = row?;
                // An actor that does not open was changed outside the adapter: kept as found,
                // so that verification reports the entry as changed.
                let actor = vault
                    .open_text(
                        crate::at_rest::AUDIT_ACTOR,
                        &hex::encode(&hash),
                        &sealed_actor,
                    )
                    .unwrap_or_else(|_| String::from_utf8_lossy(&sealed_actor).into_owned());
                let record = Record {
                    at,
                    actor,
                    action,
                    referral_id,
                    digest,
                };
                entries.push(Entry {
                    // A negative number is out of order wherever it stands: verification says so.
                    seq: u64::try_from(seq).unwrap_or(0),
                    record,
                    prev_hash,
                    hash,
                });
            }
            Ok(entries)
        })
        .await
    }

    /// The head of this agency's log; `None` while it is empty.
    pub async fn audit_head(&self) -> Result<Option<Head>, AdapterError> {
        self.write(head).await
    }

    /// The newest head of the broker's log a delivery carried; `None` before the first.
    pub async fn broker_head(&self) -> Result<Option<Head>, AdapterError> {
        self.write(|conn| {
            conn.prepare_cached("SELECT seq, hash FROM broker_audit_head WHERE id = 1")?
                .query_row([], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
                })
                .optional()?
                .map(|(seq, hash)| stored_head(seq, &hash))
                .transpose()
        })
        .await
    }
}
