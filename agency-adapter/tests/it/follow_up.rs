//! Agencies that hold a referral without being its sender or recipient: a notified party (an
//! escalation or a missed visit reached it) and the delegate of its follow-up visits. Their views are
//! stored, the delegate loses the follow-up part of the case file when the follow-up is taken back,
//! and `show` and `inbox` tell them what they have to do.

use prost::Message;
use spean_adapter::{
    case_file::CaseFile,
    delivery::{concerns, store_batch},
    store::{ReferralRow, Stored},
};
use spean_proto::v1::{
    Audience, Delegation, Delivery, FeedbackEvent, FeedbackKind, FollowUp, MissedVisit, NextVisit,
    Referral, ReferralState, delivery::Payload, feedback_event::Details,
};

use crate::helpers::{
    TestStore, at, delivery, event, fresh_store, fresh_store_of, id, khmer_case_file, referral,
};

/// The agency `agency-b` (the recipient) delegates the follow-up visits to.
const DELEGATE: &str = "agency-c";
/// A provincial department told of a missed visit.
const DEPARTMENT: &str = "dosvy-24";

async fn row(t: &TestStore, referral_id: &str) -> ReferralRow {
    t.store
        .referral(referral_id)
        .await
        .unwrap()
        .expect("referral held")
}

fn follow_up_part() -> Vec<u8> {
    khmer_case_file().follow_up_part().encode()
}

/// `agency-b` accepts, with the first visit due at `due_at`.
fn accepted(referral_id: &str, due_at: i64) -> FeedbackEvent {
    let mut accepted = event(referral_id, FeedbackKind::Accepted, ReferralState::Accepted);
    accepted.next_visit = Some(NextVisit {
        due_at: at(due_at),
        grace_seconds: 86_400,
        every_seconds: 7 * 86_400,
    });
    accepted
}

/// `agency-b` delegates the follow-up to [`DELEGATE`], with the follow-up part of the case file.
fn delegated(referral_id: &str) -> FeedbackEvent {
    let mut delegated = event(
        referral_id,
        FeedbackKind::FollowUpDelegated,
        ReferralState::Accepted,
    );
    delegated.details = Some(Details::Delegated(Delegation {
        to_agency_id: DELEGATE.into(),
        reason: "នៅជិតគ្រួសារ".into(),
        follow_up_case_file: follow_up_part(),
    }));
    delegated
}

/// `agency-b` takes the follow-up back from [`DELEGATE`].
fn revoked(referral_id: &str) -> FeedbackEvent {
    let mut revoked = event(
        referral_id,
        FeedbackKind::DelegationRevoked,
        ReferralState::Accepted,
    );
    revoked.details = Some(Details::DelegationRevoked(Delegation {
        to_agency_id: DELEGATE.into(),
        ..Delegation::default()
    }));
    revoked
}

/// The referral as the broker shows it to someone neither sender nor recipient: no case file,
/// other agencies' events as skeletons.
fn view(referral_id: &str, audience: Audience, history: Vec<FeedbackEvent>) -> Referral {
    let mut view = referral(referral_id, &khmer_case_file(), history);
    view.case_file = Vec::new();
    view.audience = audience as i32;
    view
}

fn skeleton(mut event: FeedbackEvent) -> FeedbackEvent {
    event.note = String::new();
    event.actor_person = String::new();
    event.details = None;
    event
}

/// The delegate's view, as the broker sends it when the follow-up is delegated: the delegation
/// addressed to it whole, the rest as skeletons.
fn delegates_view(referral_id: &str, due_at: i64) -> (Delivery, FeedbackEvent) {
    let delegation = delegated(referral_id);
    let submitted = event(referral_id, FeedbackKind::Submitted, ReferralState::Sent);
    let history = vec![
        skeleton(submitted),
        skeleton(accepted(referral_id, due_at)),
        delegation.clone(),
    ];
    let view = view(referral_id, Audience::Delegate, history);
    (delivery(Payload::Referral(view)), delegation)
}

/// The follow-up part the stored delegation event carries.
fn stored_part(history: &[FeedbackEvent]) -> Vec<u8> {
    history
        .iter()
        .find_map(|e| match &e.details {
            Some(Details::Delegated(d)) => Some(d.follow_up_case_file.clone()),
            _ => None,
        })
        .expect("a stored delegation")
}

#[tokio::test]
async fn a_notified_partys_view_of_a_referral_not_held_is_inserted_without_a_case_file() {
    let t = fresh_store_of(DEPARTMENT).await;
    let referral_id = id();
    let escalated = event(&referral_id, FeedbackKind::Escalated, ReferralState::Sent);
    let view = delivery(Payload::Referral(view(
        &referral_id,
        Audience::Notified,
        vec![skeleton(escalated)],
    )));
    assert!(concerns(&view, DEPARTMENT));

    let stored = t.store.store_delivery(&view).await.unwrap();

    assert_eq!(
        stored,
        Stored::Referral {
            referral_id: referral_id.clone(),
            new: true
        }
    );
    let held = row(&t, &referral_id).await;
    assert_eq!(held.audience, "notified");
    assert_eq!(held.recipient, "agency-b");
    assert!(held.case_file.is_empty());
    assert_eq!(t.store.history(&referral_id).await.unwrap().len(), 1);
    let inbox = t.store.received().await.unwrap();
    assert_eq!(inbox.len(), 1);
}

#[tokio::test]
async fn a_delegates_view_is_inserted_with_the_follow_up_part_its_delegation_carries() {
    let t = fresh_store_of(DELEGATE).await;
    let referral_id = id();
    let (view, _) = delegates_view(&referral_id, 1_700_000_000);

    store_batch(&t.store, DELEGATE, &[view]).await.unwrap();

    let held = row(&t, &referral_id).await;
    assert_eq!(held.audience, "delegate");
    assert!(held.case_file.is_empty());
    let part =
        CaseFile::decode(&stored_part(&t.store.history(&referral_id).await.unwrap())).unwrap();
    assert_eq!(part.name.khmer, "សុខ ស្រីល័ក្ខ");
    assert_eq!(part.reason_for_referral, "");
}

#[tokio::test]
async fn a_view_naming_neither_party_is_inserted_only_for_a_notified_party_or_a_delegate() {
    let t = fresh_store_of(DEPARTMENT).await;
    for audience in [
        Audience::FormerRecipient,
        Audience::Unspecified,
        Audience::Sender,
    ] {
        let referral_id = id();
        let stored = t
            .store
            .store_delivery(&delivery(Payload::Referral(view(
                &referral_id,
                audience,
                vec![],
            ))))
            .await
            .unwrap();
        assert_eq!(stored, Stored::NotHeld { referral_id }, "{audience:?}");
    }
    // A notified party's view carrying a case file is refused, by the delivery and by the store.
    let referral_id = id();
    let mut with_case_file = view(&referral_id, Audience::Notified, vec![]);
    with_case_file.case_file = khmer_case_file().encode();
    let with_case_file = delivery(Payload::Referral(with_case_file));
    assert!(!concerns(&with_case_file, DEPARTMENT));
    let stored = t.store.store_delivery(&with_case_file).await.unwrap();
    assert_eq!(stored, Stored::NotHeld { referral_id });
}

#[tokio::test]
async fn a_full_copy_sent_later_upgrades_a_notified_partys_view() {
    let t = fresh_store_of(DEPARTMENT).await;
    let referral_id = id();
    t.store
        .store_delivery(&delivery(Payload::Referral(view(
            &referral_id,
            Audience::Notified,
            vec![],
        ))))
        .await
        .unwrap();
    let mut redirected_here = referral(&referral_id, &khmer_case_file(), vec![]);
    if let Some(envelope) = redirected_here.envelope.as_mut() {
        envelope.recipient_agency_id = DEPARTMENT.into();
    }

    let stored = t
        .store
        .store_delivery(&delivery(Payload::Referral(redirected_here)))
        .await
        .unwrap();

    assert!(matches!(stored, Stored::Referral { new: false, .. }));
    let held = row(&t, &referral_id).await;
    assert_eq!(held.recipient, DEPARTMENT);
    assert_eq!(held.audience, "recipient");
    assert_eq!(held.case_file, khmer_case_file().encode());
}

#[tokio::test]
async fn a_revocation_strips_the_follow_up_part_from_the_delegate_and_records_it() {
    let t = fresh_store_of(DELEGATE).await;
    let referral_id = id();
    let (view, delegation) = delegates_view(&referral_id, 1_700_000_000);
    t.store.store_delivery(&view).await.unwrap();
    assert_eq!(
        stored_part(&t.store.history(&referral_id).await.unwrap()),
        follow_up_part()
    );

    t.store
        .store_delivery(&delivery(Payload::Feedback(revoked(&referral_id))))
        .await
        .unwrap();

    let history = t.store.history(&referral_id).await.unwrap();
    assert!(stored_part(&history).is_empty());
    let kept = history
        .iter()
        .find(|e| e.event_id == delegation.event_id)
        .unwrap();
    assert_eq!(kept.encoded_len(), {
        let mut expected = delegation.clone();
        if let Some(Details::Delegated(d)) = expected.details.as_mut() {
            d.follow_up_case_file.clear();
        }
        expected.encoded_len()
    });
    let withdrawal = t.store.withdrawal(&referral_id).await.unwrap().unwrap();
    assert_eq!(withdrawal.because, "delegation_revoked");
    assert_eq!(withdrawal.now_with, "agency-b");

    // The delegation delivered again does not bring the part back.
    t.store
        .store_delivery(&delivery(Payload::Feedback(delegation)))
        .await
        .unwrap();
    assert!(stored_part(&t.store.history(&referral_id).await.unwrap()).is_empty());
}

#[tokio::test]
async fn a_revocation_delivered_before_its_delegation_still_strips_the_part() {
    let t = fresh_store_of(DELEGATE).await;
    let referral_id = id();
    // Built in this order, so the delegation's id is the older, as the broker would give them.
    let (view, _) = delegates_view(&referral_id, 1_700_000_000);
    let revocation = revoked(&referral_id);

    t.store
        .store_delivery(&delivery(Payload::Feedback(revocation)))
        .await
        .unwrap();
    t.store.store_delivery(&view).await.unwrap();

    assert!(stored_part(&t.store.history(&referral_id).await.unwrap()).is_empty());
    let withdrawal = t.store.withdrawal(&referral_id).await.unwrap().unwrap();
    assert_eq!(withdrawal.because, "delegation_revoked");
}

#[tokio::test]
async fn the_recipient_keeps_its_own_delegation_whole_after_taking_it_back() {
    let t = fresh_store().await;
    let referral_id = crate::helpers::store_khmer_referral(&t.store).await;
    for e in [delegated(&referral_id), revoked(&referral_id)] {
        t.store
            .store_delivery(&delivery(Payload::Feedback(e)))
            .await
            .unwrap();
    }
    assert_eq!(
        stored_part(&t.store.history(&referral_id).await.unwrap()),
        follow_up_part()
    );
    assert!(t.store.withdrawal(&referral_id).await.unwrap().is_none());
    assert_eq!(
        row(&t, &referral_id).await.case_file,
        khmer_case_file().encode()
    );
}

/// A visit `agency-c` made, with the next one due at `next_due`.
fn visit(referral_id: &str, next_due: i64) -> FeedbackEvent {
    let mut visit = event(
        referral_id,
        FeedbackKind::FollowUp,
        ReferralState::InProgress,
    );
    visit.actor_agency_id = DELEGATE.into();
    visit.actor_person = "ចាន់ ដារ៉ា".into();
    visit.details = Some(Details::FollowUp(FollowUp {
        activity: "home_visit".into(),
        date: "2023-11-20".into(),
    }));
    visit.next_visit = Some(NextVisit {
        due_at: at(next_due),
        grace_seconds: 86_400,
        every_seconds: 7 * 86_400,
    });
    visit
}

/// The broker records a missed visit due at `due_at`, the next one due a week later.
fn missed(referral_id: &str, due_at: i64) -> FeedbackEvent {
    let mut missed = event(
        referral_id,
        FeedbackKind::FollowUpOverdue,
        ReferralState::InProgress,
    );
    missed.actor_agency_id = DELEGATE.into();
    missed.actor_person = String::new();
    missed.details = Some(Details::FollowUpOverdue(MissedVisit {
        due_at: at(due_at),
        missed_in_a_row: 1,
    }));
    missed.next_visit = Some(NextVisit {
        due_at: at(due_at + 7 * 86_400),
        grace_seconds: 86_400,
        every_seconds: 7 * 86_400,
    });
    missed
}

#[tokio::test]
async fn show_and_inbox_give_the_delegate_its_part_its_visits_and_what_is_overdue() {
    let dir = tempfile::tempdir().unwrap();
    let store = spean_adapter::store::Store::open(
        &dir.path().join(format!("{DELEGATE}.db")),
        &crate::helpers::agency_id(DELEGATE),
    )
    .await
    .unwrap();
    // Long past: every visit scheduled here is overdue now.
    let due = 1_700_000_000;
    let referral_id = id();
    let (view, _) = delegates_view(&referral_id, due);
    store.store_delivery(&view).await.unwrap();
    for e in [
        visit(&referral_id, due + 86_400 * 7),
        missed(&referral_id, due + 86_400 * 7),
    ] {
        store
            .store_delivery(&delivery(Payload::Feedback(e)))
            .await
            .unwrap();
    }
    store.close().await;
    let run =
        |args: &[&str]| crate::trust::adapter(dir.path(), DELEGATE, "https://127.0.0.1:9", args);

    let shown = crate::helpers::json_of(&run(&["show", &referral_id, "--json"]));
    assert_eq!(shown["audience"], "delegate");
    assert_eq!(shown["case_file_part"], "follow_up");
    assert_eq!(shown["case_file"]["name"]["khmer"], "សុខ ស្រីល័ក្ខ");
    assert_eq!(shown["case_file"]["reason_for_referral"], "");
    assert_eq!(shown["delegated_to"], DELEGATE);
    let schedule = &shown["schedule"];
    assert_eq!(schedule["status"], "overdue");
    assert_eq!(schedule["every_seconds"], 7 * 86_400);
    assert_eq!(schedule["visits"][0]["person"], "ចាន់ ដារ៉ា");
    assert_eq!(schedule["visits"][0]["agency"], DELEGATE);
    assert_eq!(schedule["visits"][0]["activity"], "home_visit");
    assert_eq!(schedule["missed"].as_array().unwrap().len(), 1);
    let table = String::from_utf8(run(&["show", &referral_id]).stdout).unwrap();
    assert!(table.contains("follow-up part only"), "{table}");
    assert!(table.contains("ចាន់ ដារ៉ា"), "{table}");
    assert!(table.contains("overdue"), "{table}");

    let inbox = crate::helpers::json_of(&run(&["inbox", "--json"]));
    assert_eq!(inbox[0]["referral_id"], referral_id.as_str());
    assert_eq!(inbox[0]["audience"], "delegate");
    assert_eq!(inbox[0]["follow_up_delegated_here"], true);
    assert_eq!(inbox[0]["name_km"], "សុខ ស្រីល័ក្ខ");
    assert_eq!(inbox[0]["waiting_on_this_agency"], false);
    assert_eq!(inbox[0]["follow_up"]["status"], "overdue");
    assert_eq!(inbox[0]["follow_up"]["missed"], 1);
    let table = String::from_utf8(run(&["inbox"]).stdout).unwrap();
    assert!(
        table.contains("follow-up delegated here by agency-b"),
        "{table}"
    );
}

#[tokio::test]
async fn the_recipients_inbox_puts_an_overdue_visit_first_until_it_delegates_the_follow_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = spean_adapter::store::Store::open(
        &dir.path().join("agency-b.db"),
        &crate::helpers::agency_id("agency-b"),
    )
    .await
    .unwrap();
    let newer_waiting = crate::helpers::store_khmer_referral(&store).await;
    let visiting = crate::helpers::store_khmer_referral(&store).await;
    let accepted = accepted(&visiting, 1_700_000_000);
    store
        .store_delivery(&delivery(Payload::Feedback(accepted)))
        .await
        .unwrap();
    store.close().await;
    let run =
        |args: &[&str]| crate::trust::adapter(dir.path(), "agency-b", "https://127.0.0.1:9", args);

    let inbox = crate::helpers::json_of(&run(&["inbox", "--json"]));
    assert_eq!(inbox[0]["referral_id"], visiting.as_str());
    assert_eq!(inbox[0]["follow_up"]["status"], "overdue");
    assert_eq!(inbox[0]["follow_up"]["missed"], 0);
    assert_eq!(inbox[1]["referral_id"], newer_waiting.as_str());
    assert!(inbox[1]["follow_up"].is_null());

    let store = spean_adapter::store::Store::open(
        &dir.path().join("agency-b.db"),
        &crate::helpers::agency_id("agency-b"),
    )
    .await
    .unwrap();
    store
        .store_delivery(&delivery(Payload::Feedback(delegated(&visiting))))
        .await
        .unwrap();
    store.close().await;
    let inbox = crate::helpers::json_of(&run(&["inbox", "--json"]));
    assert_eq!(inbox[0]["referral_id"], newer_waiting.as_str());
    assert!(inbox[1]["follow_up"].is_null());
    let shown = crate::helpers::json_of(&run(&["show", &visiting, "--json"]));
    assert_eq!(shown["delegated_to"], DELEGATE);
    assert_eq!(shown["case_file_part"], "whole");
}

#[tokio::test]
async fn a_delegation_is_queued_with_the_follow_up_part_of_the_case_file_held_here() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agency-b.db");
    let store = spean_adapter::store::Store::open(&path, &crate::helpers::agency_id("agency-b"))
        .await
        .unwrap();
    let referral_id = crate::helpers::store_khmer_referral(&store).await;
    store.close().await;
    let run =
        |args: &[&str]| crate::trust::adapter(dir.path(), "agency-b", "https://127.0.0.1:9", args);

    let queued = crate::helpers::json_of(&run(&[
        "delegate",
        &referral_id,
        "--to",
        DELEGATE,
        "--reason",
        "នៅជិតគ្រួសារ",
        "--by",
        "សុភា",
        "--request-id",
        "delegate-1",
        "--queue-only",
        "--json",
    ]));
    assert_eq!(queued["operation"], "delegate_follow_up");
    assert_eq!(queued["status"], "queued");
    let revoke = crate::helpers::json_of(&run(&[
        "revoke-delegation",
        &referral_id,
        "--queue-only",
        "--json",
    ]));
    assert_eq!(revoke["operation"], "revoke_delegation");

    let store = spean_adapter::store::Store::open(&path, &crate::helpers::agency_id("agency-b"))
        .await
        .unwrap();
    let row = store.outbox_row("delegate-1").await.unwrap().unwrap();
    let request = spean_proto::v1::DelegateFollowUpRequest::decode(row.payload.as_slice()).unwrap();
    let delegation = request.delegation.unwrap();
    assert_eq!(delegation.to_agency_id, DELEGATE);
    assert_eq!(delegation.reason, "នៅជិតគ្រួសារ");
    assert_eq!(delegation.follow_up_case_file, follow_up_part());
    let part = CaseFile::decode(&delegation.follow_up_case_file).unwrap();
    assert_eq!(part.notes, "");
    assert_eq!(part.guardians[0].name.khmer, "ចាន់ ធារី");
    store.close().await;

    // The same command again is the same request: nothing new is queued.
    let again = run(&[
        "delegate",
        &referral_id,
        "--to",
        DELEGATE,
        "--reason",
        "នៅជិតគ្រួសារ",
        "--by",
        "សុភា",
        "--request-id",
        "delegate-1",
        "--queue-only",
    ]);
    assert!(again.status.success(), "{again:?}");
}

#[test]
fn a_delegation_of_a_referral_without_a_case_file_here_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let run =
        |args: &[&str]| crate::trust::adapter(dir.path(), "agency-b", "https://127.0.0.1:9", args);

    let output = run(&[
        "delegate",
        "r-1",
        "--to",
        DELEGATE,
        "--reason",
        "x",
        "--queue-only",
    ]);

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid id: referral r-1 is not in the local store"),
        "{stderr}"
    );
    let outbox = crate::helpers::json_of(&run(&["outbox", "--json"]));
    assert!(outbox.as_array().unwrap().is_empty(), "{outbox}");
}

#[tokio::test]
async fn a_delegate_cannot_delegate_what_it_holds_no_case_file_of() {
    let dir = tempfile::tempdir().unwrap();
    let store = spean_adapter::store::Store::open(
        &dir.path().join(format!("{DELEGATE}.db")),
        &crate::helpers::agency_id(DELEGATE),
    )
    .await
    .unwrap();
    let referral_id = id();
    let (view, _) = delegates_view(&referral_id, 1_700_000_000);
    store.store_delivery(&view).await.unwrap();
    store.close().await;

    let output = crate::trust::adapter(
        dir.path(),
        DELEGATE,
        "https://127.0.0.1:9",
        &[
            "delegate",
            &referral_id,
            "--to",
            "agency-d",
            "--reason",
            "x",
        ],
    );

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid case_file:"), "{stderr}");
}
