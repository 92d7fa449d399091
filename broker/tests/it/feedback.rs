//! Feedback actions over gRPC: the state machine's answers become the right status codes, and the
//! history only grows.

use spean_proto::v1 as pb;
use tonic::Code;

use crate::helpers::{Client, action, spawn_broker};

async fn ack(c: &mut Client, id: &str, req: &str) -> Result<pb::FeedbackResponse, tonic::Status> {
    c.referrals
        .acknowledge(pb::AcknowledgeRequest {
            action: action(id, req),
        })
        .await
        .map(|r| r.into_inner())
}

async fn accept(
    c: &mut Client,
    id: &str,
    req: &str,
) -> Result<pb::FeedbackResponse, tonic::Status> {
    c.referrals
        .accept(pb::AcceptRequest {
            action: action(id, req),
            acceptance: Some(pb::Acceptance {
                planned_action: "ទៅសួរសុខទុក្ខនៅផ្ទះ (home visit)".into(),
                planned_date: "2026-11-24".into(),
            }),
        })
        .await
        .map(|r| r.into_inner())
}

async fn decline(
    c: &mut Client,
    id: &str,
    req: &str,
) -> Result<pb::FeedbackResponse, tonic::Status> {
    c.referrals
        .decline(pb::DeclineRequest {
            action: action(id, req),
            decline: Some(pb::Decline {
                reason_code: "no_capacity".into(),
                reason_text: "no foster family free".into(),
            }),
        })
        .await
        .map(|r| r.into_inner())
}

async fn follow_up(
    c: &mut Client,
    id: &str,
    req: &str,
) -> Result<pb::FeedbackResponse, tonic::Status> {
    c.referrals
        .record_follow_up(pb::RecordFollowUpRequest {
            action: action(id, req),
            follow_up: Some(pb::FollowUp {
                activity: "home_visit".into(),
                date: "2026-11-25".into(),
            }),
        })
        .await
        .map(|r| r.into_inner())
}

async fn complete(
    c: &mut Client,
    id: &str,
    req: &str,
) -> Result<pb::FeedbackResponse, tonic::Status> {
    c.referrals
        .complete(pb::CompleteRequest {
            action: action(id, req),
            outcome: Some(pb::Outcome {
                outcome_code: "child_well_in_school".into(),
                summary: "កុមារមានសុខភាពល្អ និងទៅសាលារៀន".into(),
            }),
        })
        .await
        .map(|r| r.into_inner())
}

async fn withdraw(
    c: &mut Client,
    id: &str,
    req: &str,
) -> Result<pb::FeedbackResponse, tonic::Status> {
    c.referrals
        .withdraw(pb::WithdrawRequest {
            action: action(id, req),
        })
        .await
        .map(|r| r.into_inner())
}

async fn history_kinds(c: &mut Client, id: &str) -> Vec<i32> {
    c.referrals
        .get(pb::GetRequest {
            referral_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .history
        .iter()
        .map(|e| e.kind)
        .collect()
}

#[tokio::test]
async fn the_whole_loop_is_recorded_in_order() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    let id = hospital.submit_lama("loop-1").await;

    assert_eq!(
        ack(&mut ngo, &id, "a1").await.unwrap().state,
        pb::ReferralState::Acknowledged as i32
    );
    assert_eq!(
        accept(&mut ngo, &id, "a2").await.unwrap().state,
        pb::ReferralState::Accepted as i32
    );
    for (n, req) in ["f1", "f2", "f3"].iter().enumerate() {
        let r = follow_up(&mut ngo, &id, req).await.unwrap();
        assert_eq!(r.state, pb::ReferralState::Accepted as i32, "follow-up {n}");
    }
    let done = complete(&mut ngo, &id, "a3").await.unwrap();
    assert_eq!(done.state, pb::ReferralState::Completed as i32);
    assert_eq!(done.event.unwrap().actor_person, "សុភា (Sophea)");

    use pb::FeedbackKind as K;
    assert_eq!(
        history_kinds(&mut hospital, &id).await,
        [
            K::Submitted,
            K::Acknowledged,
            K::Accepted,
            K::FollowUp,
            K::FollowUp,
            K::FollowUp,
            K::Completed
        ]
        .map(|k| k as i32)
    );
}

#[tokio::test]
async fn only_the_recipient_accepts_and_only_the_sender_withdraws() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    let id = hospital.submit_lama("party-1").await;

    let err = accept(&mut hospital, &id, "h1").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "only the recipient may record accepted; this agency is the sender"
    );
    let err = withdraw(&mut ngo, &id, "n1").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    assert!(withdraw(&mut hospital, &id, "h2").await.is_ok());
    // Nothing the refused calls tried is in the history.
    assert_eq!(history_kinds(&mut hospital, &id).await.len(), 2);
}

#[tokio::test]
async fn a_declined_referral_cannot_be_completed() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    let id = hospital.submit_lama("decl-1").await;
    decline(&mut ngo, &id, "d1").await.unwrap();
    let err = complete(&mut ngo, &id, "d2").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        "cannot record completed on a referral that is declined"
    );
    let err = withdraw(&mut hospital, &id, "d3").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("declined"));
}

#[tokio::test]
async fn a_decline_without_its_reason_text_is_invalid_and_changes_nothing() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    let id = hospital.submit_lama("decl-2").await;
    let err = ngo
        .referrals
        .decline(pb::DeclineRequest {
            action: action(&id, "x1"),
            decline: Some(pb::Decline {
                reason_code: "no_capacity".into(),
                reason_text: String::new(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("decline.reason_text:"));
    let err = ack(&mut ngo, "not-a-uuid", "x2").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("action.referral_id:"));
    assert_eq!(history_kinds(&mut hospital, &id).await.len(), 1);
}

#[tokio::test]
async fn a_retried_action_is_recorded_once() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    let id = hospital.submit_lama("retry-1").await;
    let first = ack(&mut ngo, &id, "same-key").await.unwrap();
    let again = ack(&mut ngo, &id, "same-key").await.unwrap();
    assert_eq!(first.event.unwrap().event_id, again.event.unwrap().event_id);
    assert_eq!(history_kinds(&mut hospital, &id).await.len(), 2);
    // The same key for a different action, or with another note, is a conflict, not a replay.
    let err = accept(&mut ngo, &id, "same-key").await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let mut changed = action(&id, "same-key");
    changed.as_mut().unwrap().note = "another note".into();
    let err = ngo
        .referrals
        .acknowledge(pb::AcknowledgeRequest { action: changed })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn a_redirected_referral_moves_to_the_new_agency_and_the_old_one_can_no_longer_act() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    let mut department = broker.client("dosvy-24").await;
    let id = hospital.submit_lama("redir-1").await;
    let r = ngo
        .referrals
        .redirect(pb::RedirectRequest {
            action: action(&id, "r1"),
            redirect: Some(pb::Redirect {
                to_agency_id: "dosvy-24".into(),
                reason: "cannot travel to Pailin".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state, pb::ReferralState::Sent as i32);
    let seen = department
        .referrals
        .get(pb::GetRequest {
            referral_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.envelope.unwrap().recipient_agency_id, "dosvy-24");
    assert!(!seen.case_file.is_empty());
    assert!(ack(&mut department, &id, "d1").await.is_ok());
    let err = ack(&mut ngo, &id, "r2").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // The former recipient keeps the history but no longer reads the case file.
    let old = ngo
        .referrals
        .get(pb::GetRequest { referral_id: id })
        .await
        .unwrap()
        .into_inner();
    assert!(old.case_file.is_empty());
}

#[tokio::test]
async fn listing_filters_by_role_and_state_and_pages() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(hospital.submit_lama(&format!("list-{n}")).await);
    }
    ack(&mut ngo, &ids[0], "l-a").await.unwrap();

    let page = hospital
        .referrals
        .list(pb::ListRequest {
            role: pb::Role::Sender as i32,
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.referrals.len(), 2);
    assert_eq!(
        page.referrals[0].envelope.as_ref().unwrap().referral_id,
        ids[4]
    );
    let mut seen = page.referrals.len();
    let mut token = page.next_page_token;
    while !token.is_empty() {
        let page = hospital
            .referrals
            .list(pb::ListRequest {
                role: pb::Role::Sender as i32,
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen += page.referrals.len();
        token = page.next_page_token;
    }
    assert_eq!(seen, 5);

    let acknowledged = ngo
        .referrals
        .list(pb::ListRequest {
            role: pb::Role::Recipient as i32,
            states: vec![pb::ReferralState::Acknowledged as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acknowledged.referrals.len(), 1);
    assert!(
        hospital
            .referrals
            .list(pb::ListRequest {
                role: pb::Role::Recipient as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .referrals
            .is_empty()
    );
}
