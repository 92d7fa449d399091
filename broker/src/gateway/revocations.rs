//! Revoked certificates, as this broker enforces them: the set every call is checked against in
//! [`super::caller`], kept fresh by [`Revocations::refresh`], and the open delivery streams by
//! certificate, closed as soon as a refresh finds their certificate revoked.
//!
//! The set lives in memory so the check costs a hash of the certificate and a map lookup, never a
//! database round trip. It is re-read every `tls.revocation_refresh_ms` and, on PostgreSQL, as soon
//! as a NOTIFY says another process recorded a revocation. A revocation that takes effect later (a
//! rotation's overlap) needs no new read: each tick compares the times with the clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::error::{BrokerError, ErrorChain, StoreError};
use crate::revocation::{Fingerprint, RevokedSet};
use crate::store::{RevocationFeed, Store};

/// How many refresh ticks pass between two attempts to re-open a lost PostgreSQL feed.
const FEED_RETRY_TICKS: u32 = 10;

/// The revoked set and the open delivery streams, shared by every service of one broker.
#[derive(Debug, Default)]
pub struct Revocations {
    set: RwLock<RevokedSet>,
    /// Open delivery streams by the fingerprint of the certificate that opened them, each with the
    /// token that closes it.
    streams: Mutex<HashMap<Fingerprint, HashMap<u64, CancellationToken>>>,
    next_stream: AtomicU64,
}

impl Revocations {
    /// `Err` with what the caller is told, if the certificate is revoked at `now`.
    pub fn check(&self, fingerprint: &Fingerprint, now: OffsetDateTime) -> Result<(), BrokerError> {
        let set = self.set.read().unwrap_or_else(|p| p.into_inner());
        match set.in_effect(fingerprint, now) {
            Some(revocation) => Err(BrokerError::Unauthenticated(revocation.refusal())),
            None => Ok(()),
        }
    }

    /// Registers an open delivery stream of the certificate `fingerprint`: the watch's token is
    /// cancelled once the certificate is revoked, and dropping the watch unregisters it.
    pub fn watch(self: &Arc<Self>, fingerprint: Fingerprint) -> StreamWatch {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(fingerprint)
            .or_default()
            .insert(id, token.clone());
        // A revocation read between the caller's check and this registration is enforced at the
        // next tick; this closes the window at once.
        if self.check(&fingerprint, OffsetDateTime::now_utc()).is_err() {
            token.cancel();
        }
        StreamWatch {
            revocations: self.clone(),
            fingerprint,
            id,
            token,
        }
    }

    /// Reads every revocation from the store and takes it as the set; logs the new ones.
    pub async fn reload(&self, store: &dyn Store) -> Result<(), StoreError> {
        let fresh = RevokedSet::new(store.revocations().await?);
        let mut set = self.set.write().unwrap_or_else(|p| p.into_inner());
        for revocation in fresh.news(&set) {
            tracing::info!(
                agency = %revocation.agency,
                serial = %revocation.serial,
                fingerprint = %revocation.fingerprint,
                effective_at = %crate::revocation::rfc3339(revocation.effective_at),
                "certificate revoked"
            );
        }
        *set = fresh;
        Ok(())
    }

    /// Closes the open streams of every certificate revoked at `now`; returns how many.
    pub fn enforce(&self, now: OffsetDateTime) -> usize {
        let set = self.set.read().unwrap_or_else(|p| p.into_inner());
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = 0;
        for (fingerprint, open) in streams.iter() {
            let Some(revocation) = set.in_effect(fingerprint, now) else {
                continue;
            };
            let live: Vec<_> = open.values().filter(|t| !t.is_cancelled()).collect();
            if live.is_empty() {
                continue;
            }
            tracing::info!(
                agency = %revocation.agency,
                fingerprint = %fingerprint,
                streams = live.len(),
                "closing the delivery streams of a revoked certificate"
            );
            for token in live {
                token.cancel();
                closed += 1;
            }
        }
        closed
    }

    /// The store's feed of new revocations, or `None` (logged) if it cannot be opened now: the
    /// periodic read stands in, and [`Revocations::refresh`] tries again later. Opened before the
    /// first [`Revocations::reload`], so that nothing recorded in between goes unnoticed.
    pub async fn listen(store: &dyn Store) -> Option<Box<dyn RevocationFeed>> {
        match store.revocation_feed().await {
            Ok(feed) => Some(feed),
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "cannot listen for revocations; reading them periodically");
                None
            }
        }
    }

    /// Keeps the set fresh until `stop`: re-reads it every `interval` and whenever `feed` says a
    /// revocation was recorded, and after each read closes the streams of revoked certificates.
    /// A failed read keeps the set as it was (calls need the database anyway) and is tried again
    /// at the next tick; a lost feed is opened again every few ticks.
    pub async fn refresh(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        mut feed: Option<Box<dyn RevocationFeed>>,
        interval: Duration,
        stop: CancellationToken,
    ) {
        let mut ticks_without_feed = 0;
        loop {
            if feed.is_none() && ticks_without_feed >= FEED_RETRY_TICKS {
                ticks_without_feed = 0;
                feed = Self::listen(store.as_ref()).await;
            }
            let noticed = async {
                match feed.as_mut() {
                    Some(feed) => feed.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(interval) => {
                    if feed.is_none() {
                        ticks_without_feed += 1;
                    }
                }
                changed = noticed => if let Err(e) = changed {
                    tracing::warn!(error = %ErrorChain(&e), "lost the revocation feed; reading revocations periodically");
                    feed = None;
                },
            }
            if let Err(e) = self.reload(store.as_ref()).await {
                tracing::warn!(error = %ErrorChain(&e), "cannot read the revocations; keeping those known");
            }
            self.enforce(OffsetDateTime::now_utc());
        }
    }
}

/// One open delivery stream's registration ([`Revocations::watch`]).
pub struct StreamWatch {
    revocations: Arc<Revocations>,
    fingerprint: Fingerprint,
    id: u64,
    token: CancellationToken,
}

impl StreamWatch {
    /// Completes when the stream's certificate is revoked.
    pub async fn revoked(&self) {
        self.token.cancelled().await;
    }

    /// What the stream ends with: the revocation as the caller's check words it.
    pub fn refusal(&self) -> tonic::Status {
        match self
            .revocations
            .check(&self.fingerprint, OffsetDateTime::now_utc())
        {
            Err(refused) => refused.into(),
            Ok(()) => BrokerError::Unauthenticated("the certificate was revoked".into()).into(),
        }
    }
}

impl Drop for StreamWatch {
    fn drop(&mut self) {
        let mut streams = self
            .revocations
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(open) = streams.get_mut(&self.fingerprint) {
            open.remove(&self.id);
            if open.is_empty() {
                streams.remove(&self.fingerprint);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::AgencyId;
    use crate::revocation::Revocation;

    fn revocation(byte: u8, effective_at: OffsetDateTime) -> Revocation {
        Revocation {
            fingerprint: Fingerprint::of(&[byte]),
            agency: AgencyId::parse("a", "mlup-russey").unwrap(),
            serial: "01".into(),
            effective_at,
            reason: "laptop stolen".into(),
            recorded_at: effective_at,
        }
    }

    fn with(revocations: Vec<Revocation>) -> Arc<Revocations> {
        let r = Arc::new(Revocations::default());
        *r.set.write().unwrap() = RevokedSet::new(revocations);
        r
    }

    #[test]
    fn a_stream_is_closed_once_its_certificate_is_revoked_and_only_then() {
        let now = OffsetDateTime::now_utc();
        let later = now + time::Duration::hours(1);
        let revocations = with(vec![revocation(1, later)]);
        let revoked = revocations.watch(Fingerprint::of(&[1]));
        let other = revocations.watch(Fingerprint::of(&[2]));

        assert_eq!(revocations.enforce(now), 0);
        assert!(!revoked.token.is_cancelled());
        assert_eq!(revocations.enforce(later), 1);
        assert!(revoked.token.is_cancelled());
        assert!(!other.token.is_cancelled());
        // Closed once, not again at every tick.
        assert_eq!(revocations.enforce(later), 0);
    }

    #[test]
    fn a_stream_opened_after_its_revocation_is_closed_at_once_and_unregistered_when_dropped() {
        let now = OffsetDateTime::now_utc();
        let revocations = with(vec![revocation(1, now - time::Duration::seconds(1))]);
        let watch = revocations.watch(Fingerprint::of(&[1]));
        assert!(watch.token.is_cancelled());
        let status = watch.refusal();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("laptop stolen"), "{status:?}");
        drop(watch);
        assert!(revocations.streams.lock().unwrap().is_empty());
    }
}
