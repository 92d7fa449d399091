//! Revoked certificates: recorded by one process (the CLI), seen by every broker on the same
//! database, the earlier of two times standing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use spean_broker::gateway::revocations::Revocations;
use spean_broker::ids::AgencyId;
use spean_broker::revocation::{Fingerprint, Revocation};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::fixture::Fixture;

fn revocation(cert: &[u8], effective_at: OffsetDateTime, reason: &str) -> Revocation {
    Revocation {
        fingerprint: Fingerprint::of(cert),
        agency: AgencyId::parse("a", "mlup-russey").unwrap(),
        serial: "1a:2b".into(),
        // Whole microseconds: the stored precision.
        effective_at: effective_at.replace_nanosecond(0).unwrap(),
        reason: reason.into(),
        recorded_at: OffsetDateTime::now_utc().replace_nanosecond(0).unwrap(),
    }
}

pub(super) async fn a_revocation_reads_back_and_the_earlier_of_two_times_stands(f: Fixture) {
    let store = f.store.clone();
    assert!(store.revocations().await.unwrap().is_empty());
    let now = OffsetDateTime::now_utc();
    let rotation = revocation(b"old", now + time::Duration::hours(72), "rotated");
    assert_eq!(store.revoke(&rotation).await.unwrap(), rotation);

    // Revoked at once during the overlap: the earlier time and its reason stand.
    let stolen = revocation(b"old", now, "laptop stolen");
    assert_eq!(store.revoke(&stolen).await.unwrap(), stolen);
    // A later time never postpones it.
    let late = revocation(b"old", now + time::Duration::hours(1), "rotated again");
    assert_eq!(store.revoke(&late).await.unwrap(), stolen);

    let other = revocation(b"other", now, "left the network");
    store.revoke(&other).await.unwrap();
    // As another process (a broker beside this one) reads them.
    let mut read = f.reopen().await.revocations().await.unwrap();
    read.sort_by_key(|r| r.fingerprint);
    let mut expected = vec![stolen, other];
    expected.sort_by_key(|r| r.fingerprint);
    assert_eq!(read, expected);
}

/// A broker's revoked set follows what another process records, and closes the streams of the
/// certificate: on SQLite by its periodic read, on PostgreSQL by the NOTIFY alone (its periodic
/// read is set to a minute here, far beyond what the check waits).
pub(super) async fn a_broker_refuses_a_certificate_another_process_revoked(f: Fixture) {
    let interval = if f.pg.is_some() {
        Duration::from_secs(60)
    } else {
        Duration::from_millis(100)
    };
    // As a broker starts: listening, then reading.
    let revocations = Arc::new(Revocations::default());
    let feed = Revocations::listen(f.store.as_ref()).await;
    assert!(feed.is_some(), "the store offers no feed");
    revocations.reload(f.store.as_ref()).await.unwrap();
    let stop = CancellationToken::new();
    let refresh = tokio::spawn(revocations.clone().refresh(
        f.store.clone(),
        feed,
        interval,
        stop.clone(),
    ));
    let (revoked, kept) = (Fingerprint::of(b"stolen"), Fingerprint::of(b"kept"));
    let now = OffsetDateTime::now_utc;
    revocations.check(&revoked, now()).unwrap();
    let stream = revocations.watch(revoked);
    let other_stream = revocations.watch(kept);

    let cli = f.reopen().await;
    let started = Instant::now();
    cli.revoke(&revocation(b"stolen", now(), "laptop stolen"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), stream.revoked())
        .await
        .expect("the stream of the revoked certificate was not closed");
    let took = started.elapsed();
    let refused = revocations.check(&revoked, now()).unwrap_err();
    assert!(refused.to_string().contains("laptop stolen"), "{refused}");
    revocations.check(&kept, now()).unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), other_stream.revoked())
            .await
            .is_err(),
        "another certificate's stream was closed"
    );
    eprintln!("revocation seen by the broker after {took:?}");
    stop.cancel();
    refresh.await.unwrap();
}
