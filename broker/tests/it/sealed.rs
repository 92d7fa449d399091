//! Sealed case files and free text (issue 23) through gRPC: the broker refuses what a person wrote
//! when it comes in clear or sealed by another agency than the writer, refuses a case file that
//! leaves out an agency it routes to, and hands each reader the boxes it may open, and no other.

use prost::Message;
use spean_proto::v1 as pb;
use spean_testkit::sealed::{
    open_case_file, open_text, reseal_case_file, seal_case_file, seal_follow_up_part, seal_text,
    sealed_submit,
};
use spean_testkit::{lama_in_clear, placement_in_clear};
use tonic::Code;

use crate::helpers::{Client, action, case_file, lama, resealed, said, spawn_broker};

/// Whom each box of sealed bytes is for, sorted.
fn readers(sealed: &[u8]) -> Vec<String> {
    let mut to: Vec<String> = pb::Sealed::decode(sealed)
        .unwrap()
        .boxes
        .into_iter()
        .map(|b| b.to_agency_id)
        .collect();
    to.sort_unstable();
    to
}

async fn get(c: &mut Client, id: &str) -> pb::Referral {
    c.referrals
        .get(pb::GetRequest {
            referral_id: id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn story_case_file() -> pb::CaseFile {
    pb::CaseFile::decode(case_file().as_slice()).unwrap()
}

/// Story 2's case file, as its sender wrote it.
fn story_placement() -> pb::CaseFile {
    pb::CaseFile::decode(placement_in_clear("any").case_file.as_slice()).unwrap()
}

#[tokio::test]
async fn a_case_file_in_clear_is_invalid_naming_the_field_and_leaves_no_trace() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut khmer = lama_in_clear("clear-2");
    khmer.case_file = "សុខ ស្រីល័ក្ខ, ភូមិអូរតាវ៉ៅ".as_bytes().to_vec();
    for request in [lama_in_clear("clear-1"), khmer] {
        let err = hospital.submit(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with("case_file:"), "{}", err.message());
    }
    assert_eq!(broker.count("referrals").await, 0);
    assert_eq!(broker.count("mailbox").await, 0);
}

#[tokio::test]
async fn a_case_file_with_a_box_sealed_by_another_agency_is_invalid() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    // Wholly sealed by the health centre, then one forged box among the hospital's own.
    let theirs = sealed_submit("ssc-smhs", lama_in_clear("forged-1"), &["mlup-russey"]);
    let mut mixed = lama("forged-2");
    mixed.case_file.extend(seal_case_file(
        "ssc-smhs",
        "forged-2",
        &case_file(),
        &["mlup-russey"],
    ));
    for request in [theirs, mixed] {
        let err = hospital.submit(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message()
                .starts_with("case_file: has a box sealed by ssc-smhs"),
            "{}",
            err.message()
        );
    }
    assert_eq!(broker.count("referrals").await, 0);
}

/// The sender must seal to every agency the directory routes the referral to: to the one provider,
/// or to every candidate of a broadcast. The refusal names the one left out, so that its adapter
/// fetches that key and seals again.
#[tokio::test]
async fn a_routed_agency_without_a_box_is_a_failed_precondition_naming_it() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let cases = [
        // Story 1 goes to mlup-russey; sealed to the department instead.
        (
            sealed_submit("ahc-swu", lama_in_clear("unsealed-1"), &["dosvy-24"]),
            "mlup-russey",
        ),
        // Story 2 is broadcast to mlup-russey and dosvy-17; sealed to the first only.
        (
            sealed_submit(
                "ahc-swu",
                placement_in_clear("unsealed-2"),
                &["mlup-russey"],
            ),
            "dosvy-17",
        ),
    ];
    for (request, missing) in cases {
        let err = hospital.submit(request).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message()
                .contains(&format!("routes this referral to {missing}")),
            "{}",
            err.message()
        );
    }
    assert_eq!(broker.count("referrals").await, 0);
    assert_eq!(broker.count("mailbox").await, 0);

    // Sealed to both candidates, the same broadcast goes through.
    let both = sealed_submit(
        "ahc-swu",
        placement_in_clear("unsealed-2"),
        &["mlup-russey", "dosvy-17"],
    );
    assert!(hospital.submit(both).await.unwrap().created);
}

/// Story 1 is sealed to mlup-russey and dosvy-24 (its adapter sealed ahead for a redirect); the
/// broker routes it to mlup-russey and keeps no box for the department.
#[tokio::test]
async fn boxes_for_agencies_the_referral_does_not_go_to_are_dropped() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    let request = lama("dropped-1");
    assert_eq!(
        readers(&request.case_file),
        ["ahc-swu", "dosvy-24", "mlup-russey"]
    );
    let submitted = hospital.submit(request).await.unwrap();
    let id = submitted.referral.unwrap().envelope.unwrap().referral_id;

    let got = get(&mut ngo, &id).await;
    assert_eq!(readers(&got.case_file), ["ahc-swu", "mlup-russey"]);
    assert_eq!(open_case_file("mlup-russey", &got), Some(story_case_file()));
    assert_eq!(open_case_file("dosvy-24", &got), None);
    let sent = get(&mut hospital, &id).await;
    assert_eq!(open_case_file("ahc-swu", &sent), Some(story_case_file()));
}

/// Every field a person writes in, each filled in clear in an otherwise valid request.
#[tokio::test]
async fn free_text_in_clear_is_invalid_in_every_field_and_changes_nothing() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    let id = hospital.submit_lama("clear-text-1").await;
    let events = broker.count("referral_events").await;
    let text = "ជួបគ្រួសារនៅផ្ទះ";
    let sealed = |key: &str| said("mlup-russey", &id, key, text);

    let mut with_person = sealed("p");
    with_person.as_mut().unwrap().actor_person = "សុភា".into();
    let mut with_note = sealed("n");
    with_note.as_mut().unwrap().note = text.into();
    let r = &mut ngo.referrals;
    let refusals = [
        (
            "action.actor_person",
            r.acknowledge(pb::AcknowledgeRequest {
                action: with_person,
            })
            .await,
        ),
        (
            "action.note",
            r.acknowledge(pb::AcknowledgeRequest { action: with_note })
                .await,
        ),
        (
            "acceptance.planned_action",
            r.accept(pb::AcceptRequest {
                action: sealed("a"),
                acceptance: Some(pb::Acceptance {
                    planned_action: text.into(),
                    planned_date: "2026-11-24".into(),
                }),
            })
            .await,
        ),
        (
            "decline.reason_text",
            r.decline(pb::DeclineRequest {
                action: sealed("d"),
                decline: Some(pb::Decline {
                    reason_code: "no_capacity".into(),
                    reason_text: text.into(),
                }),
            })
            .await,
        ),
        (
            "redirect.reason",
            r.redirect(pb::RedirectRequest {
                action: sealed("r"),
                redirect: Some(pb::Redirect {
                    to_agency_id: "dosvy-24".into(),
                    reason: text.into(),
                    case_file: resealed("mlup-russey", "clear-text-1", "dosvy-24"),
                }),
            })
            .await,
        ),
        (
            "outcome.summary",
            r.complete(pb::CompleteRequest {
                action: sealed("c"),
                outcome: Some(pb::Outcome {
                    outcome_code: "child_well_in_school".into(),
                    summary: text.into(),
                }),
            })
            .await,
        ),
        (
            "failure.reason",
            r.fail(pb::FailRequest {
                action: sealed("f"),
                failure: Some(pb::Failure {
                    reason: text.into(),
                }),
            })
            .await,
        ),
        (
            "delegation.reason",
            r.delegate_follow_up(pb::DelegateFollowUpRequest {
                action: sealed("g"),
                delegation: Some(pb::Delegation {
                    to_agency_id: "dosvy-24".into(),
                    reason: text.into(),
                    follow_up_case_file: seal_follow_up_part(
                        "mlup-russey",
                        &id,
                        text.as_bytes(),
                        "dosvy-24",
                    ),
                }),
            })
            .await,
        ),
    ];
    for (field, answer) in refusals {
        let err = answer.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message()
                .starts_with(&format!("{field}: must be empty")),
            "expected the message to name {field}: {}",
            err.message()
        );
    }
    assert_eq!(broker.count("referral_events").await, events);
    assert_eq!(
        get(&mut hospital, &id).await.state,
        pb::ReferralState::Sent as i32
    );
}

/// An acceptance's planned action, a decline's reason (and a redirect's, a failure's, a
/// delegation's) are what the other party relies on: the action must carry them sealed.
#[tokio::test]
async fn actions_that_must_say_something_need_their_sealed_text() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    let id = hospital.submit_lama("silent-1").await;
    let events = broker.count("referral_events").await;
    let r = &mut ngo.referrals;
    let answers = [
        r.accept(pb::AcceptRequest {
            action: action(&id, "a"),
            acceptance: Some(pb::Acceptance {
                planned_action: String::new(),
                planned_date: "2026-11-24".into(),
            }),
        })
        .await,
        r.decline(pb::DeclineRequest {
            action: action(&id, "d"),
            decline: Some(pb::Decline {
                reason_code: "no_capacity".into(),
                reason_text: String::new(),
            }),
        })
        .await,
        r.redirect(pb::RedirectRequest {
            action: action(&id, "r"),
            redirect: Some(pb::Redirect {
                to_agency_id: "dosvy-24".into(),
                reason: String::new(),
                case_file: resealed("mlup-russey", "silent-1", "dosvy-24"),
            }),
        })
        .await,
        r.fail(pb::FailRequest {
            action: action(&id, "f"),
            failure: Some(pb::Failure {
                reason: String::new(),
            }),
        })
        .await,
    ];
    for answer in answers {
        let err = answer.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().starts_with("action.sealed_text: is required"),
            "{}",
            err.message()
        );
    }
    assert_eq!(broker.count("referral_events").await, events);

    // An acknowledgement may say nothing; with its text sealed, the accept goes through.
    ngo.referrals
        .acknowledge(pb::AcknowledgeRequest {
            action: action(&id, "ack"),
        })
        .await
        .unwrap();
    let accepted = ngo
        .referrals
        .accept(pb::AcceptRequest {
            action: said("mlup-russey", &id, "a2", "ទៅសួរសុខទុក្ខនៅផ្ទះ"),
            acceptance: Some(pb::Acceptance {
                planned_action: String::new(),
                planned_date: "2026-11-24".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.state, pb::ReferralState::Accepted as i32);
}

/// The broker cannot open a box, but it refuses one whose author is not the agency that acts: the
/// hospital's words put in the NGO's action.
#[tokio::test]
async fn sealed_text_with_a_box_from_another_agency_is_invalid() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    let id = hospital.submit_lama("forged-text-1").await;
    let events = broker.count("referral_events").await;
    let words = pb::FreeText {
        actor_person: "សុភា".into(),
        note: String::new(),
        detail: "គ្មានគ្រួសារអប់រំទំនេរ".into(),
    };
    let mut own_and_forged = seal_text("mlup-russey", &id, &words, &["ahc-swu"]);
    own_and_forged.extend(seal_text("ahc-swu", &id, &words, &[]));
    for sealed_text in [
        seal_text("ahc-swu", &id, &words, &["mlup-russey"]),
        own_and_forged,
    ] {
        let mut forged = action(&id, "forged");
        forged.as_mut().unwrap().sealed_text = sealed_text;
        let err = ngo
            .referrals
            .decline(pb::DeclineRequest {
                action: forged,
                decline: Some(pb::Decline {
                    reason_code: "no_capacity".into(),
                    reason_text: String::new(),
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message()
                .starts_with("action.sealed_text: has a box sealed by ahc-swu"),
            "{}",
            err.message()
        );
    }
    assert_eq!(broker.count("referral_events").await, events);

    // Sealed by the NGO itself, the hospital reads the reason; nothing of it is in clear.
    let mut own = action(&id, "own");
    own.as_mut().unwrap().sealed_text = seal_text("mlup-russey", &id, &words, &["ahc-swu"]);
    ngo.referrals
        .decline(pb::DeclineRequest {
            action: own,
            decline: Some(pb::Decline {
                reason_code: "no_capacity".into(),
                reason_text: String::new(),
            }),
        })
        .await
        .unwrap();
    let got = get(&mut hospital, &id).await;
    let declined = got.history.last().unwrap();
    assert_eq!(declined.kind, pb::FeedbackKind::Declined as i32);
    assert!(declined.actor_person.is_empty() && declined.note.is_empty());
    assert_eq!(open_text("ahc-swu", declined), Some(words));
}

async fn redirect(
    ngo: &mut Client,
    id: &str,
    key: &str,
    case_file: Vec<u8>,
) -> Result<pb::FeedbackResponse, tonic::Status> {
    ngo.referrals
        .redirect(pb::RedirectRequest {
            action: said("mlup-russey", id, key, "cannot travel to Pailin"),
            redirect: Some(pb::Redirect {
                to_agency_id: "dosvy-24".into(),
                reason: String::new(),
                case_file,
            }),
        })
        .await
        .map(|r| r.into_inner())
}

/// A redirect hands the case file on only if the redirecting agency re-sealed it to the new
/// recipient: without it, sealed to someone else, or in another agency's name, the redirect is
/// refused and the referral stays where it is.
#[tokio::test]
async fn a_redirect_without_the_case_file_resealed_to_its_new_recipient_is_invalid() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    let id = hospital.submit_lama("moved-1").await;
    let cases = [
        (Vec::new(), "redirect.case_file: is required"),
        (
            resealed("mlup-russey", "moved-1", "dosvy-17"),
            "redirect.case_file: has no box for dosvy-24",
        ),
        (
            reseal_case_file("ahc-swu", "ahc-swu", "moved-1", &case_file(), "dosvy-24"),
            "redirect.case_file: has a box sealed by ahc-swu",
        ),
        (case_file(), "redirect.case_file:"),
    ];
    for (n, (case_file, message)) in cases.into_iter().enumerate() {
        let err = redirect(&mut ngo, &id, &format!("r{n}"), case_file)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{message}: {err:?}");
        assert!(err.message().starts_with(message), "{}", err.message());
    }
    let got = get(&mut hospital, &id).await;
    assert_eq!(got.history.len(), 1);
    assert_eq!(got.envelope.unwrap().recipient_agency_id, "mlup-russey");
}

#[tokio::test]
async fn after_a_redirect_the_new_recipient_opens_the_case_file_and_the_former_gets_none() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    let mut department = broker.client("dosvy-24").await;
    let id = hospital.submit_lama("moved-2").await;
    redirect(
        &mut ngo,
        &id,
        "r",
        resealed("mlup-russey", "moved-2", "dosvy-24"),
    )
    .await
    .unwrap();

    let seen = get(&mut department, &id).await;
    assert_eq!(
        seen.envelope.as_ref().unwrap().recipient_agency_id,
        "dosvy-24"
    );
    // The original boxes, and the one the NGO sealed to the department.
    assert_eq!(
        readers(&seen.case_file),
        ["ahc-swu", "dosvy-24", "mlup-russey"]
    );
    assert_eq!(open_case_file("dosvy-24", &seen), Some(story_case_file()));
    let reason = open_text("ahc-swu", seen.history.last().unwrap());
    assert_eq!(reason.unwrap().detail, "cannot travel to Pailin");

    let former = get(&mut ngo, &id).await;
    assert!(former.case_file.is_empty());
    assert_eq!(open_case_file("mlup-russey", &former), None);
    let sender = get(&mut hospital, &id).await;
    assert_eq!(open_case_file("ahc-swu", &sender), Some(story_case_file()));

    // What the department writes later is not for the former recipient, even sealed to it.
    let words = pb::FreeText {
        actor_person: "ចាន់ ធារី".into(),
        note: "ជួបគ្រួសារថ្ងៃស្អែក".into(),
        detail: String::new(),
    };
    let mut acknowledged = action(&id, "ack");
    acknowledged.as_mut().unwrap().sealed_text =
        seal_text("dosvy-24", &id, &words, &["ahc-swu", "mlup-russey"]);
    department
        .referrals
        .acknowledge(pb::AcknowledgeRequest {
            action: acknowledged,
        })
        .await
        .unwrap();
    let former = get(&mut ngo, &id).await;
    let later = former.history.last().unwrap();
    assert_eq!(later.kind, pb::FeedbackKind::Acknowledged as i32);
    assert!(later.sealed_text.is_empty() && later.note.is_empty());
    let redirected = &former.history[1];
    assert_eq!(
        open_text("mlup-russey", redirected).map(|t| t.detail),
        Some("cannot travel to Pailin".to_owned()),
        "its own redirect it still reads"
    );
    let sender = get(&mut hospital, &id).await;
    assert_eq!(
        open_text("ahc-swu", sender.history.last().unwrap()),
        Some(words)
    );
}

/// A broadcast's other candidates see that one accepted, never what it wrote: the acceptance's
/// sealed text is withheld from them even when sealed to them, and reaches the sender.
#[tokio::test]
async fn other_candidates_get_no_sealed_text_of_an_acceptance() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ngo = broker.client("mlup-russey").await;
    let mut department = broker.client("dosvy-17").await;
    let request = spean_testkit::placement("placed-1");
    let submitted = hospital.submit(request).await.unwrap();
    let id = submitted.referral.unwrap().envelope.unwrap().referral_id;
    let words = pb::FreeText {
        actor_person: "សុភា".into(),
        note: String::new(),
        detail: "គ្រួសារអប់រំនៅភូមិអូរតាវ៉ៅ".into(),
    };
    let mut accepting = action(&id, "accept");
    accepting.as_mut().unwrap().sealed_text =
        seal_text("mlup-russey", &id, &words, &["ahc-swu", "dosvy-17"]);
    ngo.referrals
        .accept(pb::AcceptRequest {
            action: accepting,
            acceptance: Some(pb::Acceptance {
                planned_action: String::new(),
                planned_date: "2027-01-15".into(),
            }),
        })
        .await
        .unwrap();

    let other = get(&mut department, &id).await;
    assert!(other.case_file.is_empty());
    let accepted = other.history.last().unwrap();
    assert_eq!(accepted.kind, pb::FeedbackKind::Accepted as i32);
    assert_eq!(accepted.actor_agency_id, "mlup-russey");
    assert!(accepted.sealed_text.is_empty());
    assert!(accepted.actor_person.is_empty() && accepted.note.is_empty());
    let sender = get(&mut hospital, &id).await;
    assert_eq!(
        open_text("ahc-swu", sender.history.last().unwrap()),
        Some(words)
    );
    assert_eq!(open_case_file("ahc-swu", &sender), Some(story_placement()));
    let winner = get(&mut ngo, &id).await;
    assert_eq!(
        open_case_file("mlup-russey", &winner),
        Some(story_placement())
    );
}
