//! The local store: idempotent deliveries, state from the newest event, outbox durability, Khmer text.

use spean_adapter::{
    AdapterError,
    case_file::CaseFile,
    store::{Store, Stored},
};
use spean_proto::v1::{FeedbackKind, ReferralState, delivery::Payload};

use crate::helpers::{
    agency_id, delivery, event, fresh_store, fresh_store_of, id, khmer_case_file, referral,
    store_khmer_referral,
};

#[tokio::test]
async fn storing_the_same_delivery_twice_keeps_one_referral() {
    let t = fresh_store().await;
    let referral_id = id();
    let submitted = event(&referral_id, FeedbackKind::Submitted, ReferralState::Sent);
    let d = delivery(Payload::Referral(referral(
        &referral_id,
        &khmer_case_file(),
        vec![submitted],
    )));

    let first = t.store.store_delivery(&d).await.unwrap();
    let second = t.store.store_delivery(&d).await.unwrap();

    assert_eq!(
        first,
        Stored::Referral {
            referral_id: referral_id.clone(),
            new: true
        }
    );
    assert_eq!(second, Stored::RepeatedDelivery);
    assert_eq!(t.store.received_by("agency-b").await.unwrap().len(), 1);
    assert_eq!(t.store.history(&referral_id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_same_referral_under_a_new_delivery_id_is_stored_once() {
    let t = fresh_store().await;
    let referral_id = id();
    let r = referral(&referral_id, &khmer_case_file(), vec![]);

    t.store
        .store_delivery(&delivery(Payload::Referral(r.clone())))
        .await
        .unwrap();
    let again = t
        .store
        .store_delivery(&delivery(Payload::Referral(r)))
        .await
        .unwrap();

    assert_eq!(
        again,
        Stored::Referral {
            referral_id,
            new: false
        }
    );
    assert_eq!(t.store.received_by("agency-b").await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_event_delivered_twice_is_stored_once() {
    let t = fresh_store().await;
    let referral_id = id();
    let ack = event(
        &referral_id,
        FeedbackKind::Acknowledged,
        ReferralState::Acknowledged,
    );

    let first = t
        .store
        .store_delivery(&delivery(Payload::Feedback(ack.clone())))
        .await
        .unwrap();
    let second = t
        .store
        .store_delivery(&delivery(Payload::Feedback(ack)))
        .await
        .unwrap();

    assert!(matches!(first, Stored::Event { new: true, .. }));
    assert!(matches!(second, Stored::Event { new: false, .. }));
    assert_eq!(t.store.history(&referral_id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_event_delivered_before_its_referral_joins_it() {
    let t = fresh_store().await;
    let referral_id = id();
    let submitted = event(&referral_id, FeedbackKind::Submitted, ReferralState::Sent);
    let delivered = event(
        &referral_id,
        FeedbackKind::Delivered,
        ReferralState::Delivered,
    );
    let ack = event(
        &referral_id,
        FeedbackKind::Acknowledged,
        ReferralState::Acknowledged,
    );

    t.store
        .store_delivery(&delivery(Payload::Feedback(ack.clone())))
        .await
        .unwrap();
    assert!(t.store.referral(&referral_id).await.unwrap().is_none());
    t.store
        .store_delivery(&delivery(Payload::Referral(referral(
            &referral_id,
            &khmer_case_file(),
            vec![submitted, delivered],
        ))))
        .await
        .unwrap();

    let row = t.store.referral(&referral_id).await.unwrap().unwrap();
    assert_eq!(row.state, "acknowledged");
    assert_eq!(row.last_event_id.as_deref(), Some(ack.event_id.as_str()));
    assert_eq!(t.store.history(&referral_id).await.unwrap().len(), 3);
}

#[tokio::test]
async fn state_follows_the_newest_event_even_when_events_arrive_out_of_order() {
    let t = fresh_store().await;
    let referral_id = id();
    let submitted = event(&referral_id, FeedbackKind::Submitted, ReferralState::Sent);
    let ack = event(
        &referral_id,
        FeedbackKind::Acknowledged,
        ReferralState::Acknowledged,
    );
    let accepted = event(
        &referral_id,
        FeedbackKind::Accepted,
        ReferralState::Accepted,
    );
    t.store
        .store_referral(&referral(&referral_id, &khmer_case_file(), vec![submitted]))
        .await
        .unwrap();

    t.store.store_event(&accepted).await.unwrap();
    t.store.store_event(&ack).await.unwrap();

    let row = t.store.referral(&referral_id).await.unwrap().unwrap();
    assert_eq!(row.state, "accepted");
    let kinds: Vec<i32> = t
        .store
        .history(&referral_id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![
            FeedbackKind::Submitted as i32,
            FeedbackKind::Acknowledged as i32,
            FeedbackKind::Accepted as i32
        ]
    );
}

#[tokio::test]
async fn khmer_names_round_trip_through_the_store_byte_for_byte() {
    let t = fresh_store().await;
    let referral_id = id();
    let original = khmer_case_file();
    let mut ack = event(
        &referral_id,
        FeedbackKind::Acknowledged,
        ReferralState::Acknowledged,
    );
    ack.note = "បានទទួល ✓".into();
    t.store
        .store_delivery(&delivery(Payload::Referral(referral(
            &referral_id,
            &original,
            vec![ack.clone()],
        ))))
        .await
        .unwrap();
    t.store.close().await;

    let reopened = Store::open(&t.path, &agency_id("agency-b")).await.unwrap();
    let row = reopened.referral(&referral_id).await.unwrap().unwrap();
    let decoded = CaseFile::decode(&row.case_file).unwrap();
    assert_eq!(decoded.name.khmer.as_bytes(), "សុខ ស្រីល័ក្ខ".as_bytes());
    assert_eq!(
        decoded.guardians[0].name.khmer.as_bytes(),
        "ចាន់ ធារី".as_bytes()
    );
    assert_eq!(decoded.notes.as_bytes(), "កំណត់ចំណាំ".as_bytes());
    assert!(decoded == original);
    let history = reopened.history(&referral_id).await.unwrap();
    assert_eq!(history[0].note.as_bytes(), "បានទទួល ✓".as_bytes());
    assert_eq!(history[0].actor_person.as_bytes(), "សុភា".as_bytes());
}

#[tokio::test]
async fn outbox_rows_survive_reopening_the_store() {
    let t = fresh_store().await;
    t.store
        .enqueue("req-1", "acknowledge", Some("r-1"), b"\x0a\x00")
        .await
        .unwrap();
    t.store
        .enqueue("req-2", "submit", None, b"payload")
        .await
        .unwrap();
    // The same key again does not queue twice.
    t.store
        .enqueue("req-1", "acknowledge", Some("r-1"), b"\x0a\x00")
        .await
        .unwrap();
    t.store.close().await;

    let reopened = Store::open(&t.path, &agency_id("agency-b")).await.unwrap();
    let rows = reopened.outbox().await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].request_id, "req-1");
    assert_eq!(rows[0].status, "pending");
    assert_eq!(rows[1].payload, b"payload");
    let next = reopened.next_pending().await.unwrap().unwrap();
    assert_eq!(next.request_id, "req-1");
}

#[tokio::test]
async fn a_rejected_request_leaves_the_queue_and_keeps_its_reason() {
    let t = fresh_store().await;
    t.store
        .enqueue("req-1", "acknowledge", Some("r-1"), b"")
        .await
        .unwrap();
    t.store
        .enqueue("req-2", "acknowledge", Some("r-2"), b"")
        .await
        .unwrap();

    t.store
        .mark_rejected("req-1", "FAILED_PRECONDITION: already closed")
        .await
        .unwrap();

    let next = t.store.next_pending().await.unwrap().unwrap();
    assert_eq!(next.request_id, "req-2");
    let rejected = t.store.outbox_row("req-1").await.unwrap().unwrap();
    assert_eq!(rejected.status, "rejected");
    assert_eq!(
        rejected.error.as_deref(),
        Some("FAILED_PRECONDITION: already closed")
    );
}

#[tokio::test]
async fn a_submit_answer_stores_the_referral_and_marks_the_request_sent() {
    let t = fresh_store_of("agency-a").await;
    let referral_id = id();
    t.store.enqueue("ref-1", "submit", None, b"").await.unwrap();
    let submitted = event(&referral_id, FeedbackKind::Submitted, ReferralState::Sent);

    t.store
        .record_submitted(
            "ref-1",
            &referral(&referral_id, &khmer_case_file(), vec![submitted]),
        )
        .await
        .unwrap();

    let row = t.store.outbox_row("ref-1").await.unwrap().unwrap();
    assert_eq!(row.status, "sent");
    assert_eq!(row.referral_id.as_deref(), Some(referral_id.as_str()));
    let sent = t.store.sent_by("agency-a").await.unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].state, "sent");
    assert!(t.store.next_pending().await.unwrap().is_none());
}

#[tokio::test]
async fn deliveries_that_arrive_together_are_stored_together_each_once() {
    let t = fresh_store().await;
    let referral_id = id();
    let submitted = event(&referral_id, FeedbackKind::Submitted, ReferralState::Sent);
    let r = delivery(Payload::Referral(referral(
        &referral_id,
        &khmer_case_file(),
        vec![submitted],
    )));
    let delivered = delivery(Payload::Feedback(event(
        &referral_id,
        FeedbackKind::Delivered,
        ReferralState::Delivered,
    )));
    // The same delivery twice in one batch, as a redelivery racing the original would arrive.
    let stored = t
        .store
        .store_deliveries(&[r.clone(), delivered.clone(), r])
        .await
        .unwrap();

    assert!(matches!(stored[0], Stored::Referral { new: true, .. }));
    assert!(matches!(stored[1], Stored::Event { new: true, .. }));
    assert_eq!(stored[2], Stored::RepeatedDelivery);
    let inbox = t.store.received_by("agency-b").await.unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].state, "delivered");
    assert_eq!(t.store.history(&referral_id).await.unwrap().len(), 2);
    assert_eq!(
        t.store.store_deliveries(&[delivered]).await.unwrap(),
        [Stored::RepeatedDelivery]
    );
}

#[tokio::test]
async fn a_key_reused_for_another_request_is_refused_naming_its_field_and_the_row_is_kept() {
    let t = fresh_store().await;
    t.store
        .enqueue("ref-1", "submit", None, b"first")
        .await
        .unwrap();
    t.store
        .enqueue("req-1", "acknowledge", Some("r-1"), b"ack")
        .await
        .unwrap();

    let other_payload = t
        .store
        .enqueue("ref-1", "submit", None, b"second")
        .await
        .unwrap_err();
    let other_operation = t
        .store
        .enqueue("req-1", "accept", Some("r-1"), b"ack")
        .await
        .unwrap_err();

    assert!(
        matches!(
            &other_payload,
            AdapterError::KeyReused { field: "client_ref", key, operation, status }
                if key == "ref-1" && operation == "submit" && status == "pending"
        ),
        "{other_payload:?}"
    );
    assert!(
        matches!(
            &other_operation,
            AdapterError::KeyReused { field: "request_id", operation, .. } if operation == "acknowledge"
        ),
        "{other_operation:?}"
    );
    let rows = t.store.outbox().await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].payload, b"first");
    assert_eq!(rows[1].operation, "acknowledge");
}

#[tokio::test]
async fn a_command_trusts_the_daemons_finding_that_the_broker_is_out_of_reach() {
    use spean_adapter::link::Link;
    let t = fresh_store().await;
    assert_eq!(t.store.link_down_since().await.unwrap(), None);
    let link = Link::default();
    link.down("connect timed out");
    t.store.note_link(link.status()).await.unwrap();
    let since = t.store.link_down_since().await.unwrap();
    assert_eq!(since, link.status().since);
    link.up();
    t.store.note_link(link.status()).await.unwrap();
    assert_eq!(t.store.link_down_since().await.unwrap(), None);
    link.down("again");
    t.store.note_link(link.status()).await.unwrap();
    t.store.forget_link().await.unwrap();
    assert_eq!(t.store.link_down_since().await.unwrap(), None);
}

/// The daemon and a command may both send a queued withdrawal of consent; this agency's own copy
/// of the recorded withdrawal can be delivered between their two sends. The second must send the
/// bytes the first sent (sealing again gives other bytes, which the broker, still holding the
/// first's, would refuse as another action under the same key), while every other request of the
/// referral loses its sealed copy and its text.
#[tokio::test]
async fn a_delivered_withdrawal_of_consent_keeps_its_own_sealed_request_and_forgets_the_others() {
    let t = fresh_store().await;
    let referral_id = store_khmer_referral(&t.store).await;
    for (request_id, operation) in [("consent-1", "withdraw_consent"), ("accept-1", "accept")] {
        t.store
            .enqueue(request_id, operation, Some(&referral_id), b"asked")
            .await
            .unwrap();
    }
    let withdrawal_sealed = t
        .store
        .keep_sealed_request("consent-1", b"sealed once")
        .await
        .unwrap();
    t.store
        .keep_sealed_request("accept-1", b"sealed note")
        .await
        .unwrap();

    let withdrawn = event(
        &referral_id,
        FeedbackKind::ConsentWithdrawn,
        ReferralState::Sent,
    );
    t.store
        .store_delivery(&delivery(Payload::Feedback(withdrawn)))
        .await
        .unwrap();

    assert_eq!(withdrawal_sealed, b"sealed once");
    assert_eq!(
        t.store
            .sealed_request("consent-1")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"sealed once"[..]),
        "the withdrawal is sent again as first sealed"
    );
    assert_eq!(t.store.sealed_request("accept-1").await.unwrap(), None);
    let accept = t.store.outbox_row("accept-1").await.unwrap().unwrap();
    assert!(accept.payload.is_empty(), "the accept's text is forgotten");
    assert_eq!(accept.status, "rejected");
    let withdrawal = t.store.outbox_row("consent-1").await.unwrap().unwrap();
    assert_eq!(withdrawal.payload, b"asked");
    assert_eq!(withdrawal.status, "pending");
    assert!(
        t.store
            .referral(&referral_id)
            .await
            .unwrap()
            .unwrap()
            .case_file
            .is_empty(),
        "the case file is forgotten"
    );
}
