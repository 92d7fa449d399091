//! After a referral is redirected away from this agency, the case file it held is removed and the
//! removal recorded, whichever way the redirect arrives (a delivery, the agency's own redirect
//! answer, or the broker's view for a former recipient); the sender and the new recipient keep
//! theirs, and `show` and `inbox` say where the referral went.

use spean_adapter::{
    case_file::CaseFile,
    delivery::{concerns, store_batch},
    store::{ReferralRow, Stored},
};
use spean_proto::v1::{Delivery, FeedbackKind, Referral, ReferralState, delivery::Payload};

use crate::helpers::{
    TestStore, agency_id, delivery, event, fresh_store, fresh_store_of, id, khmer_case_file,
    redirected, referral, store_khmer_referral,
};

/// Where the referrals go: `agency-a` sends to `agency-b`, which redirects to `agency-c`.
const NEXT: &str = "agency-c";

async fn row(t: &TestStore, referral_id: &str) -> ReferralRow {
    t.store
        .referral(referral_id)
        .await
        .unwrap()
        .expect("referral held")
}

/// `agency-b`'s store holding a referral from `agency-a` with its Khmer case file.
async fn recipient_holding_a_case_file() -> (TestStore, String) {
    let t = fresh_store().await;
    let referral_id = store_khmer_referral(&t.store).await;
    assert_eq!(
        row(&t, &referral_id).await.case_file,
        khmer_case_file().encode()
    );
    (t, referral_id)
}

/// The referral as the broker shows it to `agency-b` after the redirect: now with `agency-c`, and
/// without its case file.
fn former_recipients_view(referral_id: &str) -> Delivery {
    let submitted = event(referral_id, FeedbackKind::Submitted, ReferralState::Sent);
    let mut view: Referral = referral(
        referral_id,
        &khmer_case_file(),
        vec![submitted, redirected(referral_id, NEXT)],
    );
    view.case_file = Vec::new();
    view.audience = spean_proto::v1::Audience::FormerRecipient as i32;
    if let Some(envelope) = view.envelope.as_mut() {
        envelope.recipient_agency_id = NEXT.into();
    }
    delivery(Payload::Referral(view))
}

#[tokio::test]
async fn a_redirect_delivered_to_the_recipient_removes_its_case_file_once_and_records_where_it_went()
 {
    let (t, referral_id) = recipient_holding_a_case_file().await;
    let redirect = redirected(&referral_id, NEXT);

    let stored = t
        .store
        .store_delivery(&delivery(Payload::Feedback(redirect.clone())))
        .await
        .unwrap();

    assert!(matches!(stored, Stored::Event { new: true, .. }));
    let after = row(&t, &referral_id).await;
    assert!(after.case_file.is_empty());
    assert_eq!(after.recipient, NEXT);
    let withdrawal = t
        .store
        .withdrawal(&referral_id)
        .await
        .unwrap()
        .expect("the removal is recorded");
    assert_eq!(withdrawal.referral_id, referral_id);
    assert_eq!(withdrawal.now_with, NEXT);
    assert_eq!(withdrawal.because, "redirected");

    // The same event again (a redelivery under a new id) finds nothing left to do.
    let again = t
        .store
        .store_delivery(&delivery(Payload::Feedback(redirect)))
        .await
        .unwrap();
    assert!(matches!(again, Stored::Event { new: false, .. }));
    assert_eq!(
        t.store.withdrawal(&referral_id).await.unwrap(),
        Some(withdrawal)
    );
    // A late copy of the referral as first sent does not bring the case file back.
    t.store
        .store_delivery(&delivery(Payload::Referral(referral(
            &referral_id,
            &khmer_case_file(),
            vec![],
        ))))
        .await
        .unwrap();
    let after = row(&t, &referral_id).await;
    assert!(after.case_file.is_empty());
    assert_eq!(after.recipient, NEXT);
    // The history keeps its Khmer text byte for byte, and the inbox still lists the referral.
    let history = t.store.history(&referral_id).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].note.as_bytes(), "ផ្ទេរទៅអង្គការផ្សេង".as_bytes());
    let received = t.store.received().await.unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].recipient, NEXT);
}

#[tokio::test]
async fn the_agencys_own_redirect_answer_removes_its_case_file() {
    let (t, referral_id) = recipient_holding_a_case_file().await;
    t.store
        .enqueue("redirect-1", "redirect", Some(&referral_id), b"")
        .await
        .unwrap();
    let redirect = redirected(&referral_id, NEXT);

    t.store.record_event("redirect-1", &redirect).await.unwrap();

    assert!(row(&t, &referral_id).await.case_file.is_empty());
    let withdrawal = t.store.withdrawal(&referral_id).await.unwrap().unwrap();
    assert_eq!(withdrawal.now_with, NEXT);
    assert_eq!(
        t.store
            .outbox_row("redirect-1")
            .await
            .unwrap()
            .unwrap()
            .status,
        "sent"
    );
    // Recording the answer again (a retried send) changes nothing.
    t.store.record_event("redirect-1", &redirect).await.unwrap();
    assert_eq!(
        t.store.withdrawal(&referral_id).await.unwrap(),
        Some(withdrawal)
    );
}

#[tokio::test]
async fn the_sender_keeps_its_case_file_after_the_referral_is_redirected() {
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

    t.store
        .store_delivery(&delivery(Payload::Feedback(redirected(&referral_id, NEXT))))
        .await
        .unwrap();

    let after = row(&t, &referral_id).await;
    assert_eq!(after.recipient, NEXT);
    assert_eq!(after.case_file, khmer_case_file().encode());
    let decoded = CaseFile::decode(&after.case_file).unwrap();
    assert_eq!(decoded.name.khmer.as_bytes(), "សុខ ស្រីល័ក្ខ".as_bytes());
    assert!(t.store.withdrawal(&referral_id).await.unwrap().is_none());
}

#[tokio::test]
async fn the_new_recipient_keeps_the_case_file_it_is_sent() {
    let t = fresh_store_of(NEXT).await;
    let referral_id = id();
    let submitted = event(&referral_id, FeedbackKind::Submitted, ReferralState::Sent);
    let mut sent_on = referral(
        &referral_id,
        &khmer_case_file(),
        vec![submitted, redirected(&referral_id, NEXT)],
    );
    if let Some(envelope) = sent_on.envelope.as_mut() {
        envelope.recipient_agency_id = NEXT.into();
    }

    t.store
        .store_delivery(&delivery(Payload::Referral(sent_on)))
        .await
        .unwrap();

    assert_eq!(
        row(&t, &referral_id).await.case_file,
        khmer_case_file().encode()
    );
    assert!(t.store.withdrawal(&referral_id).await.unwrap().is_none());
}

#[tokio::test]
async fn a_former_recipients_view_updates_the_referral_held_and_removes_its_case_file() {
    let (t, referral_id) = recipient_holding_a_case_file().await;
    let view = former_recipients_view(&referral_id);
    assert!(concerns(&view, "agency-b"));

    store_batch(&t.store, "agency-b", &[view]).await.unwrap();

    let after = row(&t, &referral_id).await;
    assert_eq!(after.recipient, NEXT);
    assert!(after.case_file.is_empty());
    assert_eq!(after.state, "sent");
    let history = t.store.history(&referral_id).await.unwrap();
    assert_eq!(
        history.last().map(|e| e.kind),
        Some(FeedbackKind::Redirected as i32)
    );
    let withdrawal = t.store.withdrawal(&referral_id).await.unwrap().unwrap();
    assert_eq!(withdrawal.now_with, NEXT);
}

#[tokio::test]
async fn a_former_recipients_view_of_a_referral_not_held_is_not_stored() {
    let t = fresh_store().await;
    let referral_id = id();
    let view = former_recipients_view(&referral_id);
    assert!(concerns(&view, "agency-b"));

    let stored = t.store.store_delivery(&view).await.unwrap();

    assert_eq!(
        stored,
        Stored::NotHeld {
            referral_id: referral_id.clone()
        }
    );
    assert!(t.store.referral(&referral_id).await.unwrap().is_none());
    assert!(t.store.history(&referral_id).await.unwrap().is_empty());
    assert!(t.store.withdrawal(&referral_id).await.unwrap().is_none());
}

#[tokio::test]
async fn a_referral_naming_neither_party_with_a_case_file_is_refused() {
    let (t, referral_id) = recipient_holding_a_case_file().await;
    let mut with_case_file = former_recipients_view(&referral_id);
    if let Some(Payload::Referral(r)) = with_case_file.payload.as_mut() {
        r.case_file = khmer_case_file().encode();
    }
    assert!(!concerns(&with_case_file, "agency-b"));

    store_batch(&t.store, "agency-b", &[with_case_file])
        .await
        .unwrap();

    // Refused whole: the referral held is as it was.
    let after = row(&t, &referral_id).await;
    assert_eq!(after.recipient, "agency-b");
    assert_eq!(after.case_file, khmer_case_file().encode());
}

#[tokio::test]
async fn show_and_inbox_say_the_case_file_was_withdrawn_and_where_the_referral_went() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        spean_adapter::store::Store::open(&dir.path().join("agency-b.db"), &agency_id("agency-b"))
            .await
            .unwrap();
    let referral_id = store_khmer_referral(&store).await;
    store
        .store_delivery(&delivery(Payload::Feedback(redirected(&referral_id, NEXT))))
        .await
        .unwrap();
    store.close().await;
    let run =
        |args: &[&str]| crate::trust::adapter(dir.path(), "agency-b", "https://127.0.0.1:9", args);

    let output = run(&["show", &referral_id]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains(&format!(
            "(the referral was redirected to {NEXT}); this agency no longer holds the case file"
        )),
        "{stdout}"
    );
    assert!(!stdout.contains("សុខ ស្រីល័ក្ខ"), "{stdout}");
    let json = crate::helpers::json_of(&run(&["show", &referral_id, "--json"]));
    assert!(json["case_file"].is_null(), "{json}");
    assert_eq!(json["case_file_withdrawn"]["now_with"], NEXT);
    assert_eq!(json["case_file_withdrawn"]["because"], "redirected");

    let inbox = crate::helpers::json_of(&run(&["inbox", "--json"]));
    assert_eq!(inbox[0]["referral_id"], referral_id.as_str());
    assert_eq!(inbox[0]["with_this_agency"], false);
    assert_eq!(inbox[0]["recipient"], NEXT);
    let output = run(&["inbox"]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("no longer here"), "{stdout}");
}

/// `inbox` lists first what waits on this agency, the escalated before the rest and the oldest
/// first among equals, then what it acknowledged, newest first.
#[tokio::test]
async fn inbox_lists_first_what_waits_on_this_agency_the_escalated_first() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        spean_adapter::store::Store::open(&dir.path().join("agency-b.db"), &agency_id("agency-b"))
            .await
            .unwrap();
    let waiting = store_khmer_referral(&store).await;
    let answered = store_khmer_referral(&store).await;
    let escalated = store_khmer_referral(&store).await;
    let acknowledged = event(
        &answered,
        FeedbackKind::Acknowledged,
        ReferralState::Acknowledged,
    );
    let mut escalation = event(&escalated, FeedbackKind::Escalated, ReferralState::Sent);
    escalation.actor_person = String::new();
    escalation.details = Some(spean_proto::v1::feedback_event::Details::Escalated(
        spean_proto::v1::Escalation {
            tier: 1,
            to_agency_ids: vec!["dosvy-24".into(), "mosvy-coord".into()],
        },
    ));
    for e in [acknowledged, escalation] {
        store
            .store_delivery(&delivery(Payload::Feedback(e)))
            .await
            .unwrap();
    }
    store.close().await;
    let run =
        |args: &[&str]| crate::trust::adapter(dir.path(), "agency-b", "https://127.0.0.1:9", args);

    let inbox = crate::helpers::json_of(&run(&["inbox", "--json"]));
    let order: Vec<&str> = inbox
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["referral_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [escalated.as_str(), waiting.as_str(), answered.as_str()]
    );
    assert_eq!(inbox[0]["escalations"], 1);
    assert_eq!(inbox[0]["waiting_on_this_agency"], true);
    assert_eq!(inbox[2]["waiting_on_this_agency"], false);
    let table = String::from_utf8(run(&["inbox"]).stdout).unwrap();
    assert!(
        table.contains("to acknowledge, escalated 1 time(s)"),
        "{table}"
    );
}
