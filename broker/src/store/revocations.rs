//! The revoked certificates of a deployment: written by `spean-broker pki revoke` and `pki rotate`
//! (processes of their own), read by every broker. They live in the store because the store is what
//! every broker of a deployment shares.

use async_trait::async_trait;

use crate::error::StoreError;
use crate::ids::AgencyId;
use crate::revocation::{Fingerprint, Revocation};
use crate::store::{from_micros, rows};

/// The revocations: written rarely, read by every broker every few hundred milliseconds.
#[async_trait]
pub trait RevocationStore: Send + Sync + 'static {
    /// Records `revocation`. A certificate revoked already keeps the earlier of its two times,
    /// with that time's reason: a `pki revoke` during a rotation's overlap ends the old certificate
    /// at once, and a late rotation never postpones a revocation. Returns the revocation as it
    /// now stands.
    async fn revoke(&self, revocation: &Revocation) -> Result<Revocation, StoreError>;
    /// Every revocation, in effect or still to come.
    async fn revocations(&self) -> Result<Vec<Revocation>, StoreError>;
    /// What tells a broker that another process recorded a revocation, sooner than its next
    /// periodic read. The embedded store has nothing to offer (the CLI writes the file from
    /// another process, unseen), so by default the feed never fires and the periodic read is all.
    async fn revocation_feed(&self) -> Result<Box<dyn RevocationFeed>, StoreError> {
        Ok(Box::new(Silent))
    }
}

/// Notices of new revocations.
#[async_trait]
pub trait RevocationFeed: Send {
    /// Resolves when a revocation may have been recorded. An error means the feed is lost; the
    /// caller reads the revocations periodically anyway and asks for a new feed later.
    async fn changed(&mut self) -> Result<(), StoreError>;
}

/// A feed that never fires.
struct Silent;

#[async_trait]
impl RevocationFeed for Silent {
    async fn changed(&mut self) -> Result<(), StoreError> {
        std::future::pending().await
    }
}

/// A stored revocation row, in the columns both backends keep (timestamps in unix microseconds).
pub(crate) struct RevocationRow {
    pub fingerprint: String,
    pub agency_id: String,
    pub serial: String,
    pub effective_at: i64,
    pub reason: String,
    pub recorded_at: i64,
}

impl TryFrom<RevocationRow> for Revocation {
    type Error = StoreError;

    fn try_from(row: RevocationRow) -> Result<Self, StoreError> {
        let corrupt = |e: crate::error::FieldError| rows::corrupt("revocations", &e.to_string());
        Ok(Revocation {
            fingerprint: Fingerprint::parse("fingerprint", &row.fingerprint).map_err(corrupt)?,
            agency: AgencyId::parse("agency_id", &row.agency_id).map_err(corrupt)?,
            serial: row.serial,
            effective_at: from_micros(row.effective_at),
            reason: row.reason,
            recorded_at: from_micros(row.recorded_at),
        })
    }
}
