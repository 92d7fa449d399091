//! The broker killed with SIGKILL mid-stream loses nothing it acknowledged to a sender.

use std::collections::BTreeSet;
use std::time::Duration;

use spean_proto::v1 as pb;

use crate::helpers::{BrokerProcess, PATIENCE, lama};

#[tokio::test]
async fn a_broker_killed_mid_stream_loses_nothing_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), "127.0.0.1:0").await;

    // A sender submits as fast as it can; the broker is killed while it does.
    let hospital = broker.client("ahc-swu").await;
    let submitter = tokio::spawn(async move {
        let mut referrals = hospital.referrals;
        let mut acknowledged = BTreeSet::new();
        let mut refused = Vec::new();
        for n in 0..400 {
            let client_ref = format!("crash-{n}");
            match referrals.submit(lama(&client_ref)).await {
                Ok(r) => {
                    acknowledged.insert(
                        r.into_inner()
                            .referral
                            .unwrap()
                            .envelope
                            .unwrap()
                            .referral_id,
                    );
                }
                Err(_) => refused.push(client_ref),
            }
        }
        (acknowledged, refused)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.kill().await;
    let (mut acknowledged, refused) = submitter.await.unwrap();
    assert!(
        !acknowledged.is_empty(),
        "nothing was submitted before the kill"
    );
    assert!(!refused.is_empty(), "the kill did not interrupt the stream");

    let listen = broker.addr.to_string();
    let broker = BrokerProcess::start(dir.path(), &listen).await;
    let mut hospital = broker.client("ahc-swu").await;

    // Every acknowledged referral is there.
    for id in &acknowledged {
        let got = hospital
            .referrals
            .get(pb::GetRequest {
                referral_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged referral {id} is lost: {e}"));
        assert_eq!(got.into_inner().envelope.unwrap().referral_id, *id);
    }
    // Retrying what was refused with the same keys completes the set, without duplicates.
    for client_ref in &refused {
        let r = hospital.referrals.submit(lama(client_ref)).await.unwrap();
        acknowledged.insert(
            r.into_inner()
                .referral
                .unwrap()
                .envelope
                .unwrap()
                .referral_id,
        );
    }
    assert_eq!(acknowledged.len(), 400);

    // And every one of them reaches the recipient.
    let mut ngo = broker.client("mlup-russey").await;
    let (tx, rx) = tokio::sync::mpsc::channel(512);
    tx.send(pb::SubscribeRequest {
        request: Some(pb::subscribe_request::Request::Hello(pb::Hello {
            window: 500,
        })),
    })
    .await
    .unwrap();
    let mut stream = ngo
        .delivery
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut received = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while received.len() < acknowledged.len() {
        let d = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("not every acknowledged referral reached the recipient in time")
            .unwrap()
            .expect("the delivery stream ended");
        if let Some(pb::delivery::Payload::Referral(r)) = d.payload {
            received.insert(r.envelope.unwrap().referral_id);
        }
        tx.send(pb::SubscribeRequest {
            request: Some(pb::subscribe_request::Request::Confirm(pb::Confirm {
                delivery_id: d.delivery_id,
            })),
        })
        .await
        .unwrap();
    }
    assert_eq!(received, acknowledged);
}
