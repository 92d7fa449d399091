//! The broker killed with SIGKILL mid-stream loses nothing it acknowledged to a sender, and the
//! adapters carry referrals and feedback across the crash, each shown exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use spean_proto::v1 as pb;
use tokio::sync::watch;

use crate::helpers::{AdapterProcess, BrokerProcess, GrpcClient, PATIENCE, eventually, lama};
use crate::traffic::{self, ACCEPT, ACK, Ledger, RECIPIENTS, Responses, SENDER};

/// Referrals submitted in the gRPC stream.
const TOTAL: usize = 300;
/// How many the broker must have acknowledged before it is killed.
const BEFORE_KILL: usize = 100;

/// Submits `crash-0` .. `crash-<TOTAL>` in turn, retrying each with its own key until the broker
/// acknowledges it, so a submission the broker committed but could not answer is asked again and
/// must come back as the same referral. Publishes how many were acknowledged so far on `progress`.
/// Returns client_ref → referral id, and the client_refs that needed more than one try.
async fn submit_all(
    mut hospital: GrpcClient,
    progress: watch::Sender<usize>,
    mut requests: Vec<spean_proto::v1::SubmitRequest>,
) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut acknowledged = BTreeMap::new();
    let mut retried = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    // A retry sends the same bytes, as an adapter does: sealing again would give other ones.
    for request in requests.drain(..) {
        let client_ref = request.client_ref.clone();
        loop {
            match hospital.referrals.submit(request.clone()).await {
                Ok(r) => {
                    let id = r
                        .into_inner()
                        .referral
                        .unwrap()
                        .envelope
                        .unwrap()
                        .referral_id;
                    acknowledged.insert(client_ref, id);
                    progress.send_replace(acknowledged.len());
                    break;
                }
                Err(status) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{client_ref} was never acknowledged: {status}"
                    );
                    retried.insert(client_ref.clone());
                    // Paces retries while the broker is down; not a wait for an effect.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    (acknowledged, retried)
}

#[tokio::test]
async fn a_broker_killed_mid_stream_loses_nothing_it_acknowledged_and_duplicates_no_retry() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), "127.0.0.1:0").await;

    // A sender submits as fast as it can; the broker is killed once it acknowledged BEFORE_KILL, and
    // started again while the sender keeps submitting.
    let (progress, mut acknowledged_so_far) = watch::channel(0);
    // Sealed before the clock starts: the test is about the broker's crash, not the sealing's
    // speed in a debug build.
    let requests = (0..TOTAL).map(|n| lama(&format!("crash-{n}"))).collect();
    let submitter = tokio::spawn(submit_all(broker.client(SENDER).await, progress, requests));
    tokio::time::timeout(
        PATIENCE,
        acknowledged_so_far.wait_for(|n| *n >= BEFORE_KILL),
    )
    .await
    .expect("the broker did not acknowledge enough referrals before the kill")
    .unwrap();
    broker.kill().await;
    let acknowledged_before_kill = *acknowledged_so_far.borrow();
    broker.start_again().await;
    let (acknowledged, retried) = submitter.await.unwrap();
    assert!(
        acknowledged_before_kill < TOTAL,
        "every referral was acknowledged before the kill"
    );
    assert!(!retried.is_empty(), "the kill did not interrupt the stream");

    // One referral per key, whether it took one try or several.
    let ids: BTreeSet<String> = acknowledged.values().cloned().collect();
    assert_eq!(acknowledged.len(), TOTAL);
    assert_eq!(
        ids.len(),
        TOTAL,
        "two keys were acknowledged as one referral"
    );

    // Every acknowledged referral is there, by id, and nothing else: a retry created no duplicate.
    let mut hospital = broker.client(SENDER).await;
    for (client_ref, id) in &acknowledged {
        let got = hospital
            .referrals
            .get(pb::GetRequest {
                referral_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged referral {id} ({client_ref}) is lost: {e}"))
            .into_inner();
        assert_eq!(got.envelope.unwrap().client_ref, *client_ref);
    }
    let listed = traffic::broker_sent(&mut hospital).await;
    assert_eq!(
        listed.keys().cloned().collect::<BTreeSet<_>>(),
        ids,
        "the broker holds referrals nobody was acknowledged for"
    );

    // And every one of them reaches the recipient, once.
    let mut stream = broker.client("mlup-russey").await.subscribe(500).await;
    let mut received: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while received.len() < ids.len() {
        let d = tokio::time::timeout_at(deadline, stream.deliveries.message())
            .await
            .expect("not every acknowledged referral reached the recipient in time")
            .unwrap()
            .expect("the delivery stream ended");
        if let Some(pb::delivery::Payload::Referral(r)) = d.payload {
            *received.entry(r.envelope.unwrap().referral_id).or_default() += 1;
        }
        stream.confirm(d.delivery_id).await;
    }
    assert_eq!(received.keys().cloned().collect::<BTreeSet<_>>(), ids);
    assert!(
        received.values().all(|n| *n == 1),
        "a referral was delivered twice"
    );
    // Every referral delivery was confirmed. What is left in the mailbox is one `delivered` event per
    // referral for each party, whose adapters are not running here: a delivery recorded once each.
    let mailbox = eventually("the broker's mailbox to hold no referral", || async {
        let mailbox = broker.mailbox().await;
        mailbox
            .iter()
            .all(|(_, event)| event.is_some())
            .then_some(mailbox)
    })
    .await;
    for agency in [SENDER, "mlup-russey"] {
        let events: BTreeSet<&Option<String>> = mailbox
            .iter()
            .filter(|(a, _)| a == agency)
            .map(|(_, e)| e)
            .collect();
        assert_eq!(events.len(), TOTAL, "delivered events for {agency}");
    }
    assert_eq!(mailbox.len(), 2 * TOTAL);
}

#[tokio::test]
async fn adapters_carry_referrals_and_feedback_across_a_sigkilled_embedded_broker_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(&dir.path().join("broker"), "127.0.0.1:0").await;
    let mut sender = AdapterProcess::installed(&broker, SENDER, dir.path()).await;
    sender.start();
    let mut recipients: Vec<AdapterProcess> = RECIPIENTS
        .iter()
        .map(|agency| {
            let mut a = AdapterProcess::new(&broker, agency, dir.path());
            a.start();
            a
        })
        .collect();
    let actions = [ACK, ACCEPT];
    let mut responses = Responses::default();

    // Referrals stream out of the sender's outbox; once some have arrived, the recipients answer
    // them through their own outboxes while the broker is dead, and the broker comes back.
    let (_, answered_while_dead) = tokio::join!(traffic::send(&sender, "embedded", 0..30), async {
        traffic::wait_for_arrivals(&recipients, 4).await;
        broker.kill().await;
        let answered = responses.answer_arrivals(&recipients, &actions).await;
        broker.start_again().await;
        answered
    });
    assert!(answered_while_dead >= 4, "{answered_while_dead} answered");

    let referrals = traffic::accepted(&sender, &mut broker.client(SENDER).await, 30).await;
    let ledger = Ledger::new(referrals, &actions);
    responses
        .answer_all(&recipients, &actions, &ledger.referrals)
        .await;
    ledger
        .assert_exactly_once(&broker, &sender, &recipients)
        .await;
    sender.kill().await;
    for r in &mut recipients {
        r.kill().await;
    }
}
