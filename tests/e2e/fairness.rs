//! One agency flooding the broker does not hold the others up (issue 23): a real broker process
//! with a low per-agency rate, one agency calling as fast as four loops can, and story 1's
//! referrals from another agency going through meanwhile as they did before the flood.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use spean_proto::v1 as pb;

use crate::helpers::{BrokerProcess, RawStream, lama, referral_id_of};

/// The flooding agency's allowance: calls per second, and at once.
const RATE: usize = 20;
const BURST: usize = 20;

/// How long story 1's referral takes from `Submit` to the recipient's stream, `n` times.
async fn latencies(
    hospital: &mut crate::helpers::GrpcClient,
    ngo: &mut RawStream,
    key: &str,
    n: usize,
) -> Vec<Duration> {
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let id = referral_id_of(
            hospital
                .referrals
                .submit(lama(&format!("{key}-{i}")))
                .await
                .unwrap(),
        );
        loop {
            let delivery = ngo.next_within(Duration::from_secs(10), key).await;
            let delivery_id = delivery.delivery_id.clone();
            ngo.confirm(delivery_id).await;
            if let Some(pb::delivery::Payload::Referral(r)) = delivery.payload
                && r.envelope.unwrap().referral_id == id
            {
                break;
            }
        }
        took.push(started.elapsed());
    }
    took.sort();
    took
}

#[tokio::test]
async fn one_agency_flooding_the_broker_is_held_to_its_rate_and_the_others_go_through() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_with(
        &dir.path().join("broker"),
        "127.0.0.1:0",
        &[
            (
                "SPEAN_BROKER_LIMITS__REQUESTS_PER_SECOND_PER_AGENCY".into(),
                RATE.to_string(),
            ),
            (
                "SPEAN_BROKER_LIMITS__REQUEST_BURST_PER_AGENCY".into(),
                BURST.to_string(),
            ),
        ],
    )
    .await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo_client = broker.client("mlup-russey").await;
    let mut ngo = ngo_client.subscribe(16).await;
    let before = latencies(&mut hospital, &mut ngo, "calm", 20).await;

    // mith-samlanh's script runs away: four loops calling as fast as they are answered.
    let answered = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = tokio::task::JoinSet::new();
    let started = Instant::now();
    for _ in 0..4 {
        let mut client = broker.client("mith-samlanh").await;
        let (answered, refused, stop) = (answered.clone(), refused.clone(), stop.clone());
        flood.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.referrals.list(pb::ListRequest::default()).await {
                    Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                    Err(status) => {
                        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                        assert!(
                            status
                                .message()
                                .contains("limits.requests_per_second_per_agency"),
                            "{status:?}"
                        );
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = latencies(&mut hospital, &mut ngo, "flood", 20).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = flood.join_next().await {
        done.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (answered, refused) = (
        answered.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );

    // The flood was held to the allowance: the burst, then the rate (one call of slack per loop).
    let allowed = BURST + (RATE as f64 * elapsed).ceil() as usize + 4;
    assert!(
        answered <= allowed,
        "{answered} answered in {elapsed:.1} s, allowed {allowed}"
    );
    assert!(
        refused > answered,
        "a flood: {refused} refused, {answered} answered"
    );
    // The hospital's referrals went through as they did before the flood: the median within
    // three times the calm one (and a quarter of a second, for a machine busy with the flood's
    // refusals), and none near the ten seconds a starved broker would take.
    let (calm, flooded) = (before[before.len() / 2], during[during.len() / 2]);
    assert!(
        flooded <= calm * 3 + Duration::from_millis(250),
        "median {flooded:?} during the flood against {calm:?} before ({during:?})"
    );
    assert!(
        during.iter().all(|d| *d < Duration::from_secs(2)),
        "{during:?}"
    );
}
