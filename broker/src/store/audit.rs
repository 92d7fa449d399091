//! The broker's audit log in the store: every action it accepts is appended, chained by hash
//! ([`spean_domain::audit`]), in the transaction that records the action, so an action is never
//! accepted without its entry and an idempotent replay (which writes nothing) adds none.
//!
//! What is appended is derived from what is written: each referral event (submissions, every
//! feedback action, deliveries, escalations and missed visits the broker records itself) through
//! [`event_record`], a key publication, a revocation, and the heads adapters report of their own
//! logs ([`AuditStore::witness_head`]). The SQLite backend computes each entry in Rust on the
//! writer's connection; the PostgreSQL backend calls `spean_audit_append` (its migration `0008`),
//! which encodes and hashes the same bytes in SQL under an advisory lock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::error::StoreError;
use crate::ids::AgencyId;
use crate::referral::Event;
use crate::revocation::Revocation;
use crate::store::{PublishedKey, micros, rows};

pub use spean_domain::audit::{AuditBreak, BreakKind, Checker, Entry, GENESIS, Hash, Head, Record};

/// Entries read per page when the whole log is verified.
const PAGE: u32 = 4096;

/// How long a head read for deliveries is reused ([`AuditStore::recent_audit_head`]).
const HEAD_REUSE: Duration = Duration::from_secs(1);

/// The action of an adapter's reported head ([`AuditStore::witness_head`]).
pub const ADAPTER_HEAD: &str = "adapter_head";

/// The audit log as the CLI verifies it, deliveries quote its head, and adapters report theirs.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Up to `limit` entries after sequence number `after`, in order.
    async fn audit_entries(&self, after: u64, limit: u32) -> Result<Vec<Entry>, StoreError>;
    /// The last committed entry's head; `None` while the log is empty.
    async fn audit_head(&self) -> Result<Option<Head>, StoreError>;
    /// Where [`AuditStore::recent_audit_head`] keeps the head it read.
    fn audit_head_cache(&self) -> &HeadCache;
    /// Records the head `agency`'s adapter reports of its own log, with an entry of this log,
    /// unless it reported the same before. The stored head only moves forward, so an adapter
    /// whose log was cut cannot lower it by reporting a shorter one.
    async fn witness_head(
        &self,
        agency: &AgencyId,
        head: Head,
        at: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// The newest head `agency`'s adapter reported; `None` if it never did.
    async fn witnessed_head(&self, agency: &AgencyId) -> Result<Option<Head>, StoreError>;

    /// A committed head at most [`HEAD_REUSE`] old, for deliveries to carry: read once a second
    /// at most, not once per delivery. Any committed head pins the log up to it, so an older one
    /// is still evidence. `None` if the log is empty or could not be read: a delivery goes
    /// without a head rather than not at all.
    async fn recent_audit_head(&self) -> Option<Head> {
        if let Some(head) = self.audit_head_cache().fresh() {
            return head;
        }
        match self.audit_head().await {
            Ok(head) => {
                self.audit_head_cache().keep(head);
                head
            }
            Err(error) => {
                tracing::debug!(error = %crate::error::ErrorChain(&error), "reading the audit head failed");
                None
            }
        }
    }
}

/// The last head read for deliveries, and when.
#[derive(Debug, Default)]
pub struct HeadCache(Mutex<Option<(Instant, Option<Head>)>>);

impl HeadCache {
    fn fresh(&self) -> Option<Option<Head>> {
        let kept = self.0.lock().ok()?;
        kept.and_then(|(read, head)| (read.elapsed() < HEAD_REUSE).then_some(head))
    }

    fn keep(&self, head: Option<Head>) {
        if let Ok(mut kept) = self.0.lock() {
            *kept = Some((Instant::now(), head));
        }
    }
}

/// Reads the whole log page by page and checks it, against `expected` if given. The outer error is
/// the store's; the inner one is the first bad entry.
pub async fn verify(
    store: &(impl AuditStore + ?Sized),
    expected: Option<Head>,
) -> Result<Result<Option<Head>, AuditBreak>, StoreError> {
    let mut checker = Checker::new(expected);
    let mut after = 0;
    loop {
        let page = store.audit_entries(after, PAGE).await?;
        for entry in &page {
            if let Err(broken) = checker.push(entry) {
                return Ok(Err(broken));
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE as usize => after = last.seq,
            _ => return Ok(checker.finish()),
        }
    }
}

/// The entry of an event: its actor, kind and referral, and a digest of what else it records. The
/// digest covers the event's id, so two events with the same short text never share a digest (a
/// digest of a note alone could be guessed back from a list of likely notes). The case file is
/// not in it: the event of a submission pins the referral, whose sealed bytes the broker keeps.
pub fn event_record(event: &Event) -> Result<Record, StoreError> {
    let details = rows::details_column(event)?;
    let request_id = event.request_id.as_ref().map_or("", |r| r.as_str());
    let digest = Hash::digest_of(&[
        event.id.as_bytes(),
        event.state_after.as_str().as_bytes(),
        event.actor_person.as_str().as_bytes(),
        event.note.as_str().as_bytes(),
        details.as_bytes(),
        request_id.as_bytes(),
    ]);
    Ok(Record {
        at: micros(event.at),
        actor: event.actor.as_str().to_owned(),
        action: event.kind.as_str().to_owned(),
        referral_id: Some(event.referral_id.to_string()),
        digest: digest.0.to_vec(),
    })
}

/// The entry of a key publication: which key, bound to which certificate.
pub fn key_record(key: &PublishedKey) -> Record {
    Record {
        at: micros(key.published_at),
        actor: key.agency.as_str().to_owned(),
        action: "publish_key".to_owned(),
        referral_id: None,
        digest: Hash::digest_of(&[&key.key_id, &key.certificate, &key.signature])
            .0
            .to_vec(),
    }
}

/// The entry of a revocation, in the name of the agency whose certificate it ends.
pub fn revocation_record(revocation: &Revocation) -> Record {
    Record {
        at: micros(revocation.recorded_at),
        actor: revocation.agency.as_str().to_owned(),
        action: "revoke".to_owned(),
        referral_id: None,
        digest: Hash::digest_of(&[
            revocation.fingerprint.to_string().as_bytes(),
            &micros(revocation.effective_at).to_be_bytes(),
            revocation.reason.as_bytes(),
        ])
        .0
        .to_vec(),
    }
}

/// The entry of an adapter's reported head.
pub fn witness_record(agency: &AgencyId, head: Head, at: OffsetDateTime) -> Record {
    Record {
        at: micros(at),
        actor: agency.as_str().to_owned(),
        action: ADAPTER_HEAD.to_owned(),
        referral_id: None,
        digest: Hash::digest_of(&[&head.seq.to_be_bytes(), &head.hash.0])
            .0
            .to_vec(),
    }
}

/// A stored row's columns as an entry.
#[allow(clippy::too_many_arguments)]
pub(crate) fn entry(
    seq: i64,
    at: i64,
    actor: String,
    action: String,
    referral_id: Option<String>,
    digest: Vec<u8>,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
) -> Result<Entry, StoreError> {
    Ok(Entry {
        seq: u64::try_from(seq).map_err(|_| rows::corrupt("audit_log", "a negative seq"))?,
        record: Record {
            at,
            actor,
            action,
            referral_id,
            digest,
        },
        prev_hash,
        hash,
    })
}

/// A stored head's columns as a head.
pub(crate) fn head(seq: i64, hash: &[u8]) -> Result<Head, StoreError> {
    Ok(Head {
        seq: u64::try_from(seq).map_err(|_| rows::corrupt("audit_log", "a negative seq"))?,
        hash: Hash::from_slice(hash).ok_or_else(|| rows::corrupt("audit_log", "a short hash"))?,
    })
}

/// A head's sequence number as stored.
pub(crate) fn seq_column(head: Head) -> Result<i64, StoreError> {
    i64::try_from(head.seq).map_err(|_| rows::corrupt("audit_log", "a seq beyond i64"))
}
