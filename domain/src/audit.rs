//! The audit trail: an append-only log whose entries are chained by hash, so that changing,
//! removing or reordering any entry breaks the chain from that entry on.
//!
//! The broker logs every action it accepts; each adapter logs every read of a case file. Both
//! stores append through this module's encoding and check with [`verify`]. A chain proves nothing
//! about its own tail: whoever can delete the last entries leaves a shorter, valid chain. So the
//! chain's [`Head`] is also recorded elsewhere (adapters keep the broker's, the broker witnesses
//! each adapter's), and [`verify`] given such a head reports a log that no longer reaches it.
//!
//! An entry holds who, when, what and which referral, and a digest of the details: never the
//! content of a case file (see `docs/security.md#audit`).

use std::fmt;

use sha2::{Digest as _, Sha256};

/// The version byte that starts every entry's canonical encoding; a new encoding gets a new one.
pub const ENCODING_VERSION: u8 = 1;

/// The hash the first entry links to: 32 zero bytes, so that a log starts the same everywhere.
pub const GENESIS: Hash = Hash([0; 32]);

/// A SHA-256 value: an entry's hash, or the digest of what it records.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The hash as stored (32 bytes); `None` if `bytes` is not 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// SHA-256 over `parts`, each length-prefixed so that no two lists of parts hash alike: the
    /// digest of an action's details.
    pub fn digest_of(parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(field_len(part));
            hasher.update(part);
        }
        Self(hasher.finalize().into())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// What one entry records, before it is placed in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Unix microseconds, the stored precision of every timestamp in Spean.
    pub at: i64,
    /// Who acted: an agency id at the broker; at an adapter, the staff member who read.
    pub actor: String,
    /// What was done: an event kind (`submitted`, `accepted`, …), `publish_key`, `revoke`,
    /// `adapter_head`, or at an adapter `show`.
    pub action: String,
    /// The referral acted on, if the action is about one.
    pub referral_id: Option<String>,
    /// A digest of the action's details ([`Hash::digest_of`]), so that the entry pins them
    /// without holding them.
    pub digest: Vec<u8>,
}

/// One entry of a log as stored: a [`Record`] at its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its position: 1 for the first entry, then one more for each.
    pub seq: u64,
    pub record: Record,
    /// The hash of the entry before it ([`GENESIS`] for the first).
    pub prev_hash: Vec<u8>,
    /// `SHA-256(prev_hash || canonical(seq, record))`.
    pub hash: Vec<u8>,
}

impl Entry {
    /// The entry that follows `head` with `record`.
    pub fn next(head: Option<Head>, record: Record) -> Self {
        let (prev_seq, prev_hash) = head.map_or((0, GENESIS), |h| (h.seq, h.hash));
        let seq = prev_seq + 1;
        let hash = chain(&prev_hash, seq, &record);
        Self {
            seq,
            record,
            prev_hash: prev_hash.0.to_vec(),
            hash: hash.0.to_vec(),
        }
    }

    /// This entry as the head of its log.
    pub fn head(&self) -> Option<Head> {
        Hash::from_slice(&self.hash).map(|hash| Head {
            seq: self.seq,
            hash,
        })
    }
}

/// The last entry of a log, which pins every entry before it: its position and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: Hash,
}

impl Head {
    /// Parses `SEQ:HEX`, the form the command lines print and take.
    pub fn parse(raw: &str) -> Result<Self, crate::FieldError> {
        let bad = |reason: &str| crate::FieldError::new("head", reason);
        let (seq, hash) = raw
            .split_once(':')
            .ok_or_else(|| bad("expected SEQ:HEX, e.g. 42:9f86d0…"))?;
        let seq = seq
            .parse()
            .map_err(|_| bad("the sequence number is not a number"))?;
        let hash = hex::decode(hash)
            .ok()
            .and_then(|bytes| Hash::from_slice(&bytes))
            .ok_or_else(|| bad("the hash is not 64 hexadecimal digits"))?;
        Ok(Self { seq, hash })
    }

    /// The newer of two heads (the higher sequence number), what a keeper of heads keeps.
    pub fn newest(a: Option<Head>, b: Option<Head>) -> Option<Head> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.seq > a.seq { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

/// An entry's canonical bytes: the version, the sequence number and time as 8 big-endian bytes
/// each, then actor, action, referral id (empty when none: ids are never empty) and digest, each
/// prefixed with its length as 4 big-endian bytes. The PostgreSQL store computes the same bytes in
/// SQL (`broker/migrations/postgres/0008_audit_log.sql`): change both or neither.
pub fn canonical(seq: u64, record: &Record) -> Vec<u8> {
    let referral = record.referral_id.as_deref().unwrap_or("");
    let mut out = Vec::with_capacity(
        1 + 16 + 16 + record.actor.len() + record.action.len() + referral.len() + 32,
    );
    out.push(ENCODING_VERSION);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&record.at.to_be_bytes());
    for field in [
        record.actor.as_bytes(),
        record.action.as_bytes(),
        referral.as_bytes(),
        &record.digest,
    ] {
        out.extend_from_slice(&field_len(field));
        out.extend_from_slice(field);
    }
    out
}

/// `SHA-256(prev || canonical(seq, record))`.
pub fn chain(prev: &Hash, seq: u64, record: &Record) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(prev.0);
    hasher.update(canonical(seq, record));
    Hash(hasher.finalize().into())
}

/// A field's length prefix. Fields are far below 4 GiB (ids, names and 32-byte digests); a longer
/// one would saturate the prefix, which still hashes deterministically.
fn field_len(field: &[u8]) -> [u8; 4] {
    u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes()
}

/// How a log fails verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    /// The entry's content no longer matches its hash.
    Changed,
    /// The entry with this sequence number is missing: the log jumps past it.
    Removed,
    /// The entry is out of place: its sequence number goes backwards, or it does not link to the
    /// entry before it.
    Reordered,
    /// The log ends before the head recorded elsewhere: its tail was cut.
    Truncated,
    /// The entry at the recorded head's position has another hash: the log was rewritten from
    /// there or before.
    Diverged,
}

/// The first bad entry of a log and what is wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub struct AuditBreak {
    pub seq: u64,
    pub kind: BreakKind,
}

impl fmt::Display for AuditBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = self.seq;
        match self.kind {
            BreakKind::Changed => write!(f, "entry {seq} was changed: its hash does not match"),
            BreakKind::Removed => write!(f, "entry {seq} was removed: the log skips it"),
            BreakKind::Reordered => write!(
                f,
                "entry {seq} is out of order: it does not link to the entry before it \
                 (moved, or the entry before it was rewritten)"
            ),
            BreakKind::Truncated => write!(
                f,
                "entry {seq} was removed: the log ends before the head recorded elsewhere"
            ),
            BreakKind::Diverged => write!(
                f,
                "entry {seq} differs from the head recorded elsewhere: the log was rewritten"
            ),
        }
    }
}

/// Checks a log given in stored order (by sequence number) from its first entry: each entry
/// follows the one before it, links to its hash, and hashes to what it says. With `expected`, a
/// head recorded elsewhere, the log must also reach that head and hold it. Returns the log's head
/// (`None` for an empty log), or the first bad entry.
pub fn verify<'a>(
    entries: impl IntoIterator<Item = &'a Entry>,
    expected: Option<Head>,
) -> Result<Option<Head>, AuditBreak> {
    let mut checker = Checker::new(expected);
    for entry in entries {
        checker.push(entry)?;
    }
    checker.finish()
}

/// [`verify`] one entry at a time, for a log read in pages.
#[derive(Debug, Default)]
pub struct Checker {
    head: Option<Head>,
    /// The head recorded elsewhere that the log must reach and hold, if any.
    expected: Option<Head>,
}

impl Checker {
    pub fn new(expected: Option<Head>) -> Self {
        Self {
            head: None,
            expected,
        }
    }

    /// Checks the next entry; returns the head it makes.
    pub fn push(&mut self, entry: &Entry) -> Result<Head, AuditBreak> {
        let (prev_seq, prev_hash) = self.head.map_or((0, GENESIS), |h| (h.seq, h.hash));
        let expected_seq = prev_seq + 1;
        let fail = |seq, kind| Err(AuditBreak { seq, kind });
        if entry.seq > expected_seq {
            return fail(expected_seq, BreakKind::Removed);
        }
        if entry.seq < expected_seq {
            return fail(entry.seq, BreakKind::Reordered);
        }
        if entry.prev_hash != prev_hash.0 {
            // Moved here from elsewhere in the chain, or the entry before it was rewritten with a
            // hash to match: either way this is the first entry that does not follow.
            return fail(entry.seq, BreakKind::Reordered);
        }
        let hash = chain(&prev_hash, entry.seq, &entry.record);
        if hash.0[..] != entry.hash[..] {
            return fail(entry.seq, BreakKind::Changed);
        }
        if let Some(expected) = self.expected
            && expected.seq == entry.seq
            && expected.hash != hash
        {
            return fail(entry.seq, BreakKind::Diverged);
        }
        let head = Head {
            seq: entry.seq,
            hash,
        };
        self.head = Some(head);
        Ok(head)
    }

    /// Checks that the log read so far reaches the expected head, if any; returns its head.
    pub fn finish(&self) -> Result<Option<Head>, AuditBreak> {
        let reached = self.head.map_or(0, |h| h.seq);
        if let Some(expected) = self.expected
            && reached < expected.seq
        {
            return Err(AuditBreak {
                seq: reached + 1,
                kind: BreakKind::Truncated,
            });
        }
        Ok(self.head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: u64) -> Vec<Entry> {
        let mut entries: Vec<Entry> = Vec::new();
        for i in 1..=n {
            let record = Record {
                at: 1_700_000_000_000_000 + i as i64,
                actor: "agency-a".into(),
                action: "accepted".into(),
                referral_id: (i % 2 == 0).then(|| format!("referral-{i}")),
                digest: Hash::digest_of(&[&i.to_be_bytes()]).0.to_vec(),
            };
            let head = entries.last().and_then(Entry::head);
            entries.push(Entry::next(head, record));
        }
        entries
    }

    fn broken(entries: &[Entry], expected: Option<Head>) -> AuditBreak {
        verify(entries, expected).unwrap_err()
    }

    #[test]
    fn an_intact_log_verifies_and_returns_its_head() {
        let entries = log(5);
        let head = verify(&entries, None).unwrap().unwrap();
        assert_eq!(head.seq, 5);
        assert_eq!(Some(head), entries[4].head());
        // Its own head, or any earlier one, is reached.
        assert_eq!(verify(&entries, Some(head)).unwrap(), Some(head));
        assert!(verify(&entries, entries[1].head()).is_ok());
    }

    #[test]
    fn an_empty_log_verifies_unless_a_head_was_recorded() {
        assert_eq!(verify(&[], None).unwrap(), None);
        let head = log(1)[0].head();
        assert_eq!(
            broken(&[], head),
            AuditBreak {
                seq: 1,
                kind: BreakKind::Truncated
            }
        );
    }

    #[test]
    fn a_changed_field_names_its_entry() {
        let mut entries = log(5);
        entries[2].record.actor = "agency-b".into();
        assert_eq!(
            broken(&entries, None),
            AuditBreak {
                seq: 3,
                kind: BreakKind::Changed
            }
        );
    }

    #[test]
    fn a_changed_entry_with_its_hash_recomputed_breaks_the_next_link() {
        let mut entries = log(5);
        entries[2].record.at += 1;
        let prev = Hash::from_slice(&entries[2].prev_hash).unwrap();
        entries[2].hash = chain(&prev, 3, &entries[2].record).0.to_vec();
        assert_eq!(
            broken(&entries, None),
            AuditBreak {
                seq: 4,
                kind: BreakKind::Reordered
            }
        );
    }

    #[test]
    fn a_removed_entry_is_named_by_its_missing_number() {
        let mut entries = log(5);
        entries.remove(2);
        assert_eq!(
            broken(&entries, None),
            AuditBreak {
                seq: 3,
                kind: BreakKind::Removed
            }
        );
    }

    #[test]
    fn entries_that_traded_numbers_are_out_of_order() {
        // Two rows that traded sequence numbers: the log read by number has them swapped.
        let mut entries = log(5);
        let (a, b) = (entries[1].seq, entries[2].seq);
        entries[1].seq = b;
        entries[2].seq = a;
        entries.swap(1, 2);
        assert_eq!(
            broken(&entries, None),
            AuditBreak {
                seq: 2,
                kind: BreakKind::Reordered
            }
        );
    }

    #[test]
    fn a_cut_tail_is_found_only_against_a_head_recorded_elsewhere() {
        let entries = log(5);
        let head = entries[4].head();
        let cut = &entries[..3];
        assert!(verify(cut, None).is_ok());
        assert_eq!(
            broken(cut, head),
            AuditBreak {
                seq: 4,
                kind: BreakKind::Truncated
            }
        );
    }

    #[test]
    fn a_log_rewritten_below_the_recorded_head_diverges_from_it() {
        let entries = log(5);
        let head = entries[3].head();
        let mut rewritten = entries[..2].to_vec();
        for i in 3..=5 {
            let record = Record {
                actor: "someone-else".into(),
                ..entries[(i - 1) as usize].record.clone()
            };
            let prev = rewritten.last().and_then(Entry::head);
            rewritten.push(Entry::next(prev, record));
        }
        assert!(verify(&rewritten, None).is_ok());
        assert_eq!(
            broken(&rewritten, head),
            AuditBreak {
                seq: 4,
                kind: BreakKind::Diverged
            }
        );
    }

    #[test]
    fn heads_print_and_parse_as_seq_colon_hex() {
        let head = log(3)[2].head().unwrap();
        assert_eq!(Head::parse(&head.to_string()).unwrap(), head);
        assert!(Head::parse("3").is_err());
        assert!(Head::parse("x:00").is_err());
        assert!(Head::parse("3:abcd").is_err());
    }

    #[test]
    fn the_encoding_is_pinned() {
        // The PostgreSQL store computes this in SQL: a change here must be made there too.
        let record = Record {
            at: 1,
            actor: "a".into(),
            action: "b".into(),
            referral_id: None,
            digest: vec![0xff],
        };
        assert_eq!(
            hex::encode(canonical(2, &record)),
            concat!(
                "01",
                "0000000000000002",
                "0000000000000001",
                "0000000161",
                "0000000162",
                "00000000",
                "00000001ff"
            )
        );
    }
}
