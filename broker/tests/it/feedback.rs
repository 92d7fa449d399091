//! Feedback actions over gRPC: the state machine's answers become the right status codes, and the
//! history only grows.

use spean_proto::v1 as pb;
use tonic::Code;

use crate::helpers::{Client, action, resealed, said, spawn_broker};

/// The `client_ref` of referral `id`, as `c` reads it (empty if it cannot): what its case file is
/// bound to, for re-sealing it.
async fn client_ref_of(c: &mut Client, id: &str) -> String {
    c.referrals
        .get(pb::GetRequest {
            referral_id: id.to_owned(),
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().envelope)
        .map(|e| e.client_ref)
        .unwrap_or_default()
}

/// Every feedback action RPC, so tables can drive them all.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    Acknowledge,
    Accept,
    Decline,
    Redirect,
    MarkInProgress,
    RecordFollowUp,
    Complete,
    Fail,
    Withdraw,
    MarkEnteredInError,
}

/// Which side of the referral a call comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Party {
    Sender,
    Recipient,
}

impl Rpc {
    /// The party that performs the action in these tests.
    fn party(self) -> Party {
        match self {
            Rpc::Withdraw | Rpc::MarkEnteredInError => Party::Sender,
            _ => Party::Recipient,
        }
    }

    /// The other party, refused with this message; `None` where both parties may act.
    fn wrong_party_message(self) -> Option<&'static str> {
        Some(match self {
            Rpc::Acknowledge => {
                "only the recipient may record acknowledged; this agency is the sender"
            }
            Rpc::Accept => "only the recipient may record accepted; this agency is the sender",
            Rpc::Decline => "only the recipient may record declined; this agency is the sender",
            Rpc::Redirect => "only the recipient may record redirected; this agency is the sender",
            Rpc::MarkInProgress => {
                "only the recipient may record in_progress; this agency is the sender"
            }
            Rpc::RecordFollowUp => return None,
            Rpc::Complete => "only the recipient may record completed; this agency is the sender",
            Rpc::Fail => "only the recipient may record failed; this agency is the sender",
            Rpc::Withdraw => "only the sender may record withdrawn; this agency is the recipient",
            Rpc::MarkEnteredInError => {
                "only the sender may record entered_in_error; this agency is the recipient"
            }
        })
    }

    /// Calls the RPC on referral `id` with request id `req` and valid details.
    async fn call(
        self,
        c: &mut Client,
        id: &str,
        req: &str,
    ) -> Result<pb::FeedbackResponse, tonic::Status> {
        // What people write travels sealed: each action says something where its kind requires it.
        let action = said(&c.agency, id, req, "ទៅសួរសុខទុក្ខនៅផ្ទះ (home visit)");
        let case_file = match self {
            Rpc::Redirect => {
                let client_ref = client_ref_of(c, id).await;
                resealed(&c.agency, &client_ref, "dosvy-24")
            }
            _ => Vec::new(),
        };
        let r = &mut c.referrals;
        let answer = match self {
            Rpc::Acknowledge => r.acknowledge(pb::AcknowledgeRequest { action }).await,
            Rpc::Accept => {
                r.accept(pb::AcceptRequest {
                    action,
                    acceptance: Some(pb::Acceptance {
                        planned_action: String::new(),
                        planned_date: "2026-11-24".into(),
                    }),
                })
                .await
            }
            Rpc::Decline => {
                r.decline(pb::DeclineRequest {
                    action,
                    decline: Some(pb::Decline {
                        reason_code: "no_capacity".into(),
                        reason_text: String::new(),
                    }),
                })
                .await
            }
            Rpc::Redirect => {
                r.redirect(pb::RedirectRequest {
                    action,
                    redirect: Some(pb::Redirect {
                        to_agency_id: "dosvy-24".into(),
                        reason: String::new(),
                        case_file,
                    }),
                })
                .await
            }
            Rpc::MarkInProgress => {
                r.mark_in_progress(pb::MarkInProgressRequest { action })
                    .await
            }
            Rpc::RecordFollowUp => {
                r.record_follow_up(pb::RecordFollowUpRequest {
                    action,
                    follow_up: Some(pb::FollowUp {
                        activity: "home_visit".into(),
                        date: "2026-11-25".into(),
                    }),
                })
                .await
            }
            Rpc::Complete => {
                r.complete(pb::CompleteRequest {
                    action,
                    outcome: Some(pb::Outcome {
                        outcome_code: "child_well_in_school".into(),
                        summary: String::new(),
                    }),
                })
                .await
            }
            Rpc::Fail => {
                r.fail(pb::FailRequest {
                    action,
                    failure: Some(pb::Failure {
                        reason: String::new(),
                    }),
                })
                .await
            }
            Rpc::Withdraw => r.withdraw(pb::WithdrawRequest { action }).await,
            Rpc::MarkEnteredInError => {
                r.mark_entered_in_error(pb::MarkEnteredInErrorRequest { action })
                    .await
            }
        };
        answer.map(|r| r.into_inner())
    }
}

/// One row of the action table: where the action is allowed and what it records, and where it is
/// refused.
struct Case {
    rpc: Rpc,
    /// Actions taken first (each by its own party) to reach a state that allows `rpc`.
    allowed_after: &'static [Rpc],
    kind: pb::FeedbackKind,
    to: pb::ReferralState,
    /// Actions taken first to reach a state that refuses `rpc`.
    refused_after: &'static [Rpc],
    /// The refusal's message: it names the action and the state.
    refused_with: &'static str,
}

const ACTIONS: &[Case] = {
    use pb::FeedbackKind as K;
    use pb::ReferralState as S;
    &[
        Case {
            rpc: Rpc::Acknowledge,
            allowed_after: &[],
            kind: K::Acknowledged,
            to: S::Acknowledged,
            refused_after: &[Rpc::Accept],
            refused_with: "cannot record acknowledged on a referral that is accepted",
        },
        Case {
            rpc: Rpc::Accept,
            allowed_after: &[Rpc::Acknowledge],
            kind: K::Accepted,
            to: S::Accepted,
            refused_after: &[Rpc::Decline],
            refused_with: "cannot record accepted on a referral that is declined",
        },
        Case {
            rpc: Rpc::Decline,
            allowed_after: &[Rpc::Acknowledge],
            kind: K::Declined,
            to: S::Declined,
            refused_after: &[Rpc::Accept],
            refused_with: "cannot record declined on a referral that is accepted",
        },
        Case {
            rpc: Rpc::Redirect,
            allowed_after: &[],
            kind: K::Redirected,
            to: S::Sent,
            refused_after: &[Rpc::Accept],
            refused_with: "cannot record redirected on a referral that is accepted",
        },
        Case {
            rpc: Rpc::MarkInProgress,
            allowed_after: &[Rpc::Accept],
            kind: K::InProgress,
            to: S::InProgress,
            refused_after: &[Rpc::Acknowledge],
            refused_with: "cannot record in_progress on a referral that is acknowledged",
        },
        Case {
            rpc: Rpc::RecordFollowUp,
            allowed_after: &[Rpc::Accept, Rpc::MarkInProgress],
            kind: K::FollowUp,
            to: S::InProgress,
            refused_after: &[],
            refused_with: "cannot record follow_up on a referral that is sent",
        },
        Case {
            rpc: Rpc::Complete,
            allowed_after: &[Rpc::Accept, Rpc::MarkInProgress],
            kind: K::Completed,
            to: S::Completed,
            refused_after: &[Rpc::Decline],
            refused_with: "cannot record completed on a referral that is declined",
        },
        Case {
            rpc: Rpc::Fail,
            allowed_after: &[Rpc::Accept],
            kind: K::Failed,
            to: S::Failed,
            refused_after: &[Rpc::Accept, Rpc::Complete],
            refused_with: "cannot record failed on a referral that is completed",
        },
        Case {
            rpc: Rpc::Withdraw,
            allowed_after: &[Rpc::Acknowledge],
            kind: K::Withdrawn,
            to: S::Withdrawn,
            refused_after: &[Rpc::Accept, Rpc::Fail],
            refused_with: "cannot record withdrawn on a referral that is failed",
        },
        Case {
            rpc: Rpc::MarkEnteredInError,
            allowed_after: &[Rpc::Accept, Rpc::Complete],
            kind: K::EnteredInError,
            to: S::EnteredInError,
            refused_after: &[Rpc::MarkEnteredInError],
            refused_with: "cannot record entered_in_error on a referral that is entered_in_error",
        },
    ]
};

/// The client of `which` party.
fn party<'a>(which: Party, sender: &'a mut Client, recipient: &'a mut Client) -> &'a mut Client {
    match which {
        Party::Sender => sender,
        Party::Recipient => recipient,
    }
}

/// Takes `steps` in order on referral `id`, each by its own party, each with a fresh request id.
async fn take_steps(steps: &[Rpc], id: &str, sender: &mut Client, recipient: &mut Client) {
    for step in steps {
        let request_id = uuid::Uuid::now_v7().to_string();
        step.call(party(step.party(), sender, recipient), id, &request_id)
            .await
            .unwrap_or_else(|e| panic!("step {step:?}: {e:?}"));
    }
}

async fn state_of(c: &mut Client, id: &str) -> i32 {
    c.referrals
        .get(pb::GetRequest {
            referral_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .state
}

/// Each action RPC, called once where the rules allow it (by the right party) and once where they
/// do not: the allowed call records its kind and moves the state; the wrong party gets
/// PERMISSION_DENIED and the wrong state FAILED_PRECONDITION naming it, and neither changes anything.
#[tokio::test]
async fn every_action_is_recorded_where_allowed_and_refused_by_party_and_by_state() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    assert_eq!(ACTIONS.len(), 10, "every action RPC has a row");

    for (n, case) in ACTIONS.iter().enumerate() {
        let rpc = case.rpc;
        let id = hospital.submit_lama(&format!("allowed-{n}")).await;
        take_steps(case.allowed_after, &id, &mut hospital, &mut ngo).await;
        let before = history_kinds(&mut hospital, &id).await.len();

        if let Some(message) = rpc.wrong_party_message() {
            let other = match rpc.party() {
                Party::Sender => Party::Recipient,
                Party::Recipient => Party::Sender,
            };
            let other = party(other, &mut hospital, &mut ngo);
            let err = rpc.call(other, &id, &format!("w{n}")).await.unwrap_err();
            assert_eq!(err.code(), Code::PermissionDenied, "{rpc:?}: {err:?}");
            assert_eq!(err.message(), message, "{rpc:?}");
            assert_eq!(history_kinds(&mut hospital, &id).await.len(), before);
        }

        let agency = match rpc.party() {
            Party::Sender => "ahc-swu",
            Party::Recipient => "mlup-russey",
        };
        let own = party(rpc.party(), &mut hospital, &mut ngo);
        let done = rpc.call(own, &id, &format!("ok{n}")).await.unwrap();
        let event = done.event.unwrap();
        assert_eq!(event.kind, case.kind as i32, "{rpc:?}");
        assert_eq!(event.state_after, case.to as i32, "{rpc:?}");
        assert_eq!(event.actor_agency_id, agency, "{rpc:?}");
        assert_eq!(done.state, case.to as i32, "{rpc:?}");
        let history = history_kinds(&mut hospital, &id).await;
        assert_eq!(history.len(), before + 1, "{rpc:?}");
        assert_eq!(history.last(), Some(&(case.kind as i32)), "{rpc:?}");

        let id = hospital.submit_lama(&format!("refused-{n}")).await;
        take_steps(case.refused_after, &id, &mut hospital, &mut ngo).await;
        let state = state_of(&mut hospital, &id).await;
        let before = history_kinds(&mut hospital, &id).await.len();
        let own = party(rpc.party(), &mut hospital, &mut ngo);
        let err = rpc.call(own, &id, &format!("x{n}")).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{rpc:?}: {err:?}");
        assert_eq!(err.message(), case.refused_with, "{rpc:?}");
        assert_eq!(state_of(&mut hospital, &id).await, state, "{rpc:?}");
        assert_eq!(history_kinds(&mut hospital, &id).await.len(), before);
    }
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
        Rpc::Acknowledge
            .call(&mut ngo, &id, "a1")
            .await
            .unwrap()
            .state,
        pb::ReferralState::Acknowledged as i32
    );
    assert_eq!(
        Rpc::Accept.call(&mut ngo, &id, "a2").await.unwrap().state,
        pb::ReferralState::Accepted as i32
    );
    for (n, req) in ["f1", "f2", "f3"].iter().enumerate() {
        let r = Rpc::RecordFollowUp.call(&mut ngo, &id, req).await.unwrap();
        assert_eq!(r.state, pb::ReferralState::Accepted as i32, "follow-up {n}");
    }
    let done = Rpc::Complete.call(&mut ngo, &id, "a3").await.unwrap();
    assert_eq!(done.state, pb::ReferralState::Completed as i32);
    let event = done.event.unwrap();
    assert!(
        event.actor_person.is_empty(),
        "the name travels sealed only"
    );
    assert_eq!(
        spean_testkit::sealed::open_text("mlup-russey", &event)
            .unwrap()
            .actor_person,
        "សុភា (Sophea)"
    );

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

    let err = Rpc::Accept
        .call(&mut hospital, &id, "h1")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "only the recipient may record accepted; this agency is the sender"
    );
    let err = Rpc::Withdraw.call(&mut ngo, &id, "n1").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    assert!(Rpc::Withdraw.call(&mut hospital, &id, "h2").await.is_ok());
    // Nothing the refused calls tried is in the history.
    assert_eq!(history_kinds(&mut hospital, &id).await.len(), 2);
}

#[tokio::test]
async fn a_declined_referral_cannot_be_completed() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    let id = hospital.submit_lama("decl-1").await;
    Rpc::Decline.call(&mut ngo, &id, "d1").await.unwrap();
    let err = Rpc::Complete.call(&mut ngo, &id, "d2").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        "cannot record completed on a referral that is declined"
    );
    let err = Rpc::Withdraw
        .call(&mut hospital, &id, "d3")
        .await
        .unwrap_err();
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
    assert!(err.message().starts_with("action.sealed_text:"), "{err:?}");
    // Nor may the reason come in clear.
    let err = ngo
        .referrals
        .decline(pb::DeclineRequest {
            action: said("mlup-russey", &id, "x1", "គ្មានគ្រួសារ"),
            decline: Some(pb::Decline {
                reason_code: "no_capacity".into(),
                reason_text: "no foster family free".into(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("decline.reason_text:"), "{err:?}");
    let err = Rpc::Acknowledge
        .call(&mut ngo, "not-a-uuid", "x2")
        .await
        .unwrap_err();
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
    // A retry sends the same bytes (an adapter keeps the action as it first sealed it).
    let ack = pb::AcknowledgeRequest {
        action: said("mlup-russey", &id, "same-key", ""),
    };
    let first = ngo
        .referrals
        .acknowledge(ack.clone())
        .await
        .unwrap()
        .into_inner();
    let again = ngo.referrals.acknowledge(ack).await.unwrap().into_inner();
    assert_eq!(first.event.unwrap().event_id, again.event.unwrap().event_id);
    assert_eq!(history_kinds(&mut hospital, &id).await.len(), 2);
    // The same key for a different action, or with another note, is a conflict, not a replay.
    let err = Rpc::Accept
        .call(&mut ngo, &id, "same-key")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let changed = said("mlup-russey", &id, "same-key", "another note");
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
            action: said("mlup-russey", &id, "r1", "cannot travel to Pailin"),
            redirect: Some(pb::Redirect {
                to_agency_id: "dosvy-24".into(),
                reason: String::new(),
                case_file: resealed("mlup-russey", "redir-1", "dosvy-24"),
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
    assert!(
        Rpc::Acknowledge
            .call(&mut department, &id, "d1")
            .await
            .is_ok()
    );
    let err = Rpc::Acknowledge
        .call(&mut ngo, &id, "r2")
        .await
        .unwrap_err();
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
    Rpc::Acknowledge
        .call(&mut ngo, &ids[0], "l-a")
        .await
        .unwrap();

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

/// A Khmer letter: three bytes in UTF-8, so a limit counted in characters would let these through.
const KA: &str = "ក";

#[tokio::test]
async fn an_oversize_sealed_text_is_invalid_naming_the_field_and_changes_nothing() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    let id = hospital.submit_lama("size-1").await;
    let events = broker.count("referral_events").await;

    // 64 KiB of sealed text is the most one action carries: a name, a note and a reason of 8 KiB
    // each (checked by the writing adapter), sealed to a handful of readers.
    let mut over = action(&id, "big");
    over.as_mut().unwrap().sealed_text = vec![0; 64 * 1024 + 1];
    let err = ngo
        .referrals
        .acknowledge(pb::AcknowledgeRequest { action: over })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .starts_with("action.sealed_text: is 65537 bytes"),
        "{}",
        err.message()
    );
    assert_eq!(broker.count("referral_events").await, events);
    assert_eq!(
        state_of(&mut hospital, &id).await,
        pb::ReferralState::Sent as i32
    );

    // A long Khmer note, sealed, goes through and opens whole for the sender.
    let note = KA.repeat(2730) + "ab";
    let text = pb::FreeText {
        actor_person: KA.repeat(85) + "a",
        note: note.clone(),
        detail: String::new(),
    };
    let mut long = action(&id, "at-the-limit");
    long.as_mut().unwrap().sealed_text =
        spean_testkit::sealed::seal_text("mlup-russey", &id, &text, &["ahc-swu"]);
    ngo.referrals
        .acknowledge(pb::AcknowledgeRequest { action: long })
        .await
        .unwrap();
    let got = hospital
        .referrals
        .get(pb::GetRequest {
            referral_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let opened = spean_testkit::sealed::open_text("ahc-swu", got.history.last().unwrap()).unwrap();
    assert_eq!(opened.note.len(), 8 * 1024);
    assert_eq!(opened, text);
    assert_eq!(broker.count("referral_events").await, events + 1);
}

/// A way to break a valid action request.
type Breakage<R> = (&'static str, fn(&mut R));

#[tokio::test]
async fn an_accept_or_complete_missing_its_details_is_invalid_naming_the_field() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    let id = hospital.submit_lama("details-1").await;

    let valid_accept = pb::AcceptRequest {
        action: said("mlup-russey", &id, "acc", "home visit"),
        acceptance: Some(pb::Acceptance {
            planned_action: String::new(),
            planned_date: "2026-11-24".into(),
        }),
    };
    let broken_accepts: [Breakage<pb::AcceptRequest>; 5] = [
        ("acceptance", |r| r.acceptance = None),
        ("acceptance.planned_action", |r| {
            r.acceptance.as_mut().unwrap().planned_action = "home visit".into()
        }),
        ("action.sealed_text", |r| {
            r.action.as_mut().unwrap().sealed_text = Vec::new()
        }),
        ("acceptance.planned_date", |r| {
            r.acceptance.as_mut().unwrap().planned_date = String::new()
        }),
        ("acceptance.planned_date", |r| {
            r.acceptance.as_mut().unwrap().planned_date = "24/11/2026".into()
        }),
    ];
    for (field, break_it) in broken_accepts {
        let mut request = valid_accept.clone();
        break_it(&mut request);
        let err = ngo.referrals.accept(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(&format!("{field}:")),
            "expected the message to name {field}: {}",
            err.message()
        );
    }
    assert_eq!(
        state_of(&mut hospital, &id).await,
        pb::ReferralState::Sent as i32
    );
    // The request id was never used: the valid request with it is recorded now.
    let accepted = ngo
        .referrals
        .accept(valid_accept)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.state, pb::ReferralState::Accepted as i32);

    let valid_complete = pb::CompleteRequest {
        action: action(&id, "done"),
        outcome: Some(pb::Outcome {
            outcome_code: "child_well_in_school".into(),
            summary: String::new(),
        }),
    };
    let broken_completes: [Breakage<pb::CompleteRequest>; 2] = [
        ("outcome", |r| r.outcome = None),
        ("outcome.outcome_code", |r| {
            r.outcome.as_mut().unwrap().outcome_code = String::new()
        }),
    ];
    for (field, break_it) in broken_completes {
        let mut request = valid_complete.clone();
        break_it(&mut request);
        let err = ngo.referrals.complete(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(&format!("{field}:")),
            "expected the message to name {field}: {}",
            err.message()
        );
    }
    assert_eq!(
        state_of(&mut hospital, &id).await,
        pb::ReferralState::Accepted as i32
    );
    assert_eq!(history_kinds(&mut hospital, &id).await.len(), 2);
    let completed = ngo
        .referrals
        .complete(valid_complete)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(completed.state, pb::ReferralState::Completed as i32);
}

/// Free text is refused in clear, in every field, naming it, whatever it holds: it travels sealed.
/// Sealed, Khmer (with U+200B between words), line breaks and the direction marks U+200E/U+200F
/// reach the other party byte for byte. (The writing adapter refuses control and bidirectional
/// characters before it seals: `agency-adapter/tests/it/send.rs`.)
#[tokio::test]
async fn free_text_in_clear_is_invalid_and_sealed_khmer_survives_byte_for_byte() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    let id = hospital.submit_lama("text-1").await;
    let events = broker.count("referral_events").await;

    let ack = |request_id: &str, person: &str, note: &str| pb::AcknowledgeRequest {
        action: Some(pb::Action {
            referral_id: id.clone(),
            request_id: request_id.into(),
            actor_person: person.into(),
            note: note.into(),
            sealed_text: Vec::new(),
        }),
    };
    for (n, (field, person, note)) in [
        ("action.note", "", "ok\u{1b}[2J"),
        ("action.note", "", "ជួបគ្រួសារ"),
        ("action.actor_person", "សុភា", ""),
    ]
    .into_iter()
    .enumerate()
    {
        let err = ngo
            .referrals
            .acknowledge(ack(&format!("bad-{n}"), person, note))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message()
                .starts_with(&format!("{field}: must be empty")),
            "expected the message to name {field}: {}",
            err.message()
        );
    }
    assert_eq!(broker.count("referral_events").await, events);

    let text = pb::FreeText {
        actor_person: "សុខ ស្រីល័ក្ខ".into(),
        note: "គ្រួសារ\u{200B}ចាកចេញ\u{200B}ពីមន្ទីរពេទ្យ\r\nថ្ងៃស្អែក\t\u{200F}".into(),
        detail: String::new(),
    };
    let mut good = action(&id, "good");
    good.as_mut().unwrap().sealed_text =
        spean_testkit::sealed::seal_text("mlup-russey", &id, &text, &["ahc-swu"]);
    let recorded = ngo
        .referrals
        .acknowledge(pb::AcknowledgeRequest { action: good })
        .await
        .unwrap()
        .into_inner();
    let event = recorded.event.unwrap();
    assert!(event.note.is_empty() && event.actor_person.is_empty());
    assert_eq!(
        spean_testkit::sealed::open_text("mlup-russey", &event).unwrap(),
        text
    );
    let got = hospital
        .referrals
        .get(pb::GetRequest {
            referral_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let last = spean_testkit::sealed::open_text("ahc-swu", got.history.last().unwrap()).unwrap();
    assert_eq!(last.note.as_bytes(), text.note.as_bytes());
    assert_eq!(last.actor_person.as_bytes(), text.actor_person.as_bytes());
}
