//! Delivery over `Subscribe`: at least once, removed only on confirmation, delivered recorded once.

use spean_proto::v1 as pb;

use crate::helpers::{action, confirm, next_delivery, spawn_broker, subscribe};

#[tokio::test]
async fn an_unconfirmed_delivery_is_delivered_again_and_delivered_is_recorded_once() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let id = hospital.submit_lama("dl-1").await;

    // First connection: receive, do not confirm, go away.
    let mut ngo = broker.client("mlup-russey").await;
    let (tx, mut stream) = subscribe(&mut ngo).await;
    let first = next_delivery(&mut stream, 5).await;
    let Some(pb::delivery::Payload::Referral(r)) = &first.payload else {
        panic!("expected the referral");
    };
    assert_eq!(r.envelope.as_ref().unwrap().referral_id, id);
    drop(tx);
    drop(stream);

    // Second connection: the same delivery again; confirm it twice (a retry), then it is gone.
    let mut ngo = broker.client("mlup-russey").await;
    let (tx, mut stream) = subscribe(&mut ngo).await;
    let again = next_delivery(&mut stream, 5).await;
    assert_eq!(again.delivery_id, first.delivery_id);
    tx.send(confirm(&again.delivery_id)).await.unwrap();
    tx.send(confirm(&again.delivery_id)).await.unwrap();

    // The recipient hears of its own delivery as an event, and so does the sender.
    let event = next_delivery(&mut stream, 5).await;
    let Some(pb::delivery::Payload::Feedback(e)) = &event.payload else {
        panic!("expected a feedback event");
    };
    assert_eq!(e.kind, pb::FeedbackKind::Delivered as i32);
    tx.send(confirm(&event.delivery_id)).await.unwrap();

    let (htx, mut hstream) = subscribe(&mut hospital).await;
    let heard = next_delivery(&mut hstream, 5).await;
    let Some(pb::delivery::Payload::Feedback(h)) = &heard.payload else {
        panic!("expected a feedback event");
    };
    assert_eq!(h.kind, pb::FeedbackKind::Delivered as i32);
    assert_eq!(h.event_id, e.event_id);
    htx.send(confirm(&heard.delivery_id)).await.unwrap();

    let got = hospital
        .referrals
        .get(pb::GetRequest {
            referral_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.state, pb::ReferralState::Delivered as i32);
    let delivered = got
        .history
        .iter()
        .filter(|e| e.kind == pb::FeedbackKind::Delivered as i32)
        .count();
    assert_eq!(delivered, 1);
    // Mailboxes drain once every confirmation has been applied.
    let mut left = broker.count("mailbox").await;
    for _ in 0..50 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        left = broker.count("mailbox").await;
    }
    assert_eq!(left, 0);
}

#[tokio::test]
async fn feedback_reaches_the_sender_while_it_is_connected() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    let (htx, mut hstream) = subscribe(&mut hospital).await;
    let id = hospital.submit_lama("dl-2").await;
    ngo.referrals
        .acknowledge(pb::AcknowledgeRequest {
            action: action(&id, "k1"),
        })
        .await
        .unwrap();
    let d = next_delivery(&mut hstream, 5).await;
    let Some(pb::delivery::Payload::Feedback(e)) = &d.payload else {
        panic!("expected feedback");
    };
    assert_eq!(e.kind, pb::FeedbackKind::Acknowledged as i32);
    assert_eq!(e.referral_id, id);
    htx.send(confirm(&d.delivery_id)).await.unwrap();
}

#[tokio::test]
async fn a_stream_must_open_with_a_hello() {
    let broker = spawn_broker().await;
    let mut ngo = broker.client("mlup-russey").await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(confirm("nothing")).await.unwrap();
    let err = ngo
        .delivery
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("hello:"));
}

#[tokio::test]
async fn shutdown_ends_open_delivery_streams_and_returns() {
    let broker = spawn_broker().await;
    let mut ngo = broker.client("mlup-russey").await;
    let (_tx, mut stream) = subscribe(&mut ngo).await;
    tokio::time::timeout(std::time::Duration::from_secs(15), broker.stop())
        .await
        .expect("the broker did not stop with a stream open");
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
        .await
        .expect("the stream stayed open");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}

#[tokio::test]
async fn a_referral_redirected_before_its_delivery_reaches_the_old_recipient_without_its_case_file()
{
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let id = hospital.submit_lama("dl-3").await;
    let mut ngo = broker.client("mlup-russey").await;
    ngo.referrals
        .redirect(pb::RedirectRequest {
            action: action(&id, "r-1"),
            redirect: Some(pb::Redirect {
                to_agency_id: "dosvy-24".into(),
                reason: "cannot travel to Pailin".into(),
            }),
        })
        .await
        .unwrap();

    let (_tx, mut stream) = subscribe(&mut ngo).await;
    let first = next_delivery(&mut stream, 5).await;
    let Some(pb::delivery::Payload::Referral(old)) = first.payload else {
        panic!("expected the referral queued before the redirect");
    };
    assert!(
        old.case_file.is_empty(),
        "the former recipient got the case file"
    );

    let mut department = broker.client("dosvy-24").await;
    let (_dtx, mut dstream) = subscribe(&mut department).await;
    let got = next_delivery(&mut dstream, 5).await;
    let Some(pb::delivery::Payload::Referral(new)) = got.payload else {
        panic!("expected the referral");
    };
    assert_eq!(new.case_file, crate::helpers::case_file());
}
