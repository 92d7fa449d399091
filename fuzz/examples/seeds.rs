//! Writes the seed corpora under `fuzz/corpus/<target>/`: sample requests of every kind the
//! broker takes, deliveries an adapter receives, and the network directories, with Khmer text
//! where people write it. The fuzzers start from these and mutate. Run from `fuzz/` without the
//! instrumenting flags: `cargo run --example seeds` (docs/fuzzing.md).

// Linked for the coverage hooks the instrumented build of the dependencies calls.
use libfuzzer_sys as _;
use std::fs;
use std::path::Path;

use prost::Message;
use prost_types::Timestamp;
use spean_proto::v1 as pb;

const REFERRAL: &str = "0192f5a0-7c1e-7b3a-9f00-000000000001";
const REQUEST: &str = "0192f5a0-7c1e-7b3a-9f00-0000000000aa";
const DELIVERY: &str = "0192f5a0-7c1e-7b3a-9f00-0000000000dd";
const KHMER_NOTE: &str = "កុមារីត្រូវការការពិនិត្យសុខភាព និងកន្លែងស្នាក់នៅសុវត្ថិភាព។\nម្តាយយល់ព្រម។";
const AT: Timestamp = Timestamp {
    seconds: 1_767_225_600,
    nanos: 0,
};

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(format!("seed-{name}")), bytes)
    };
    check_requests_parse()?;
    for (i, (name, bytes)) in requests().into_iter().enumerate() {
        let mut seed = vec![u8::try_from(i).unwrap_or(u8::MAX)];
        seed.extend(bytes);
        write("broker_request", &format!("{i:02}-{name}"), &seed)?;
    }
    for (name, delivery) in deliveries() {
        write("adapter_delivery", name, &delivery.encode_to_vec())?;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    write(
        "directory_import",
        "network",
        &fs::read(root.join("fixtures/network.json"))?,
    )?;
    if let Ok(shared) = fs::read("/work/shared/fixtures/network.json") {
        write("directory_import", "network-shared", &shared)?;
    }
    write("directory_import", "small", SMALL_DIRECTORY.as_bytes())?;
    Ok(())
}

/// The request seeds are requests the broker takes: a seed it refuses would start the fuzzer in
/// the wrong place.
fn check_requests_parse() -> std::io::Result<()> {
    use spean_broker::wire::{self, FeedbackRequest};
    let refused = |what: &str, e: spean_broker::error::FieldError| {
        std::io::Error::other(format!("the {what} seed is refused: {e}"))
    };
    let requests = requests();
    let submit =
        pb::SubmitRequest::decode(requests[0].1.as_slice()).map_err(std::io::Error::other)?;
    wire::new_referral(submit).map_err(|e| refused("submit", e))?;
    let accept =
        pb::AcceptRequest::decode(requests[4].1.as_slice()).map_err(std::io::Error::other)?;
    accept.into_action().map_err(|e| refused("accept", e))?;
    let delegate = pb::DelegateFollowUpRequest::decode(requests[13].1.as_slice())
        .map_err(std::io::Error::other)?;
    delegate.into_action().map_err(|e| refused("delegate", e))?;
    let list = pb::ListRequest::decode(requests[2].1.as_slice()).map_err(std::io::Error::other)?;
    wire::list_query(&list).map_err(|e| refused("list", e))?;
    Ok(())
}

/// An action whose free text (a staff name and `note`) is sealed, as the broker requires (with
/// the test keys of `spean_testkit::sealed`, by the recipient to the sender).
fn action(note: &str) -> Option<pb::Action> {
    let text = pb::FreeText {
        actor_person: "សុខ ចាន់ធា".into(),
        note: note.into(),
        detail: "ពិនិត្យសុខភាព".into(),
    };
    Some(pb::Action {
        referral_id: REFERRAL.into(),
        request_id: REQUEST.into(),
        actor_person: String::new(),
        note: String::new(),
        sealed_text: spean_testkit::sealed::seal_text("mlup-russey", REFERRAL, &text, &["ahc-swu"]),
    })
}

/// One sample of each request, in the order of `REQUESTS` in `fuzz_targets/broker_request.rs`.
fn requests() -> Vec<(&'static str, Vec<u8>)> {
    let submit = pb::SubmitRequest {
        client_ref: "client-0001".into(),
        recipient: Some(pb::Recipient {
            target: Some(pb::recipient::Target::Service(pb::ServiceInProvince {
                service: "medical".into(),
                province: "12".into(),
            })),
        }),
        kind: "medical".into(),
        urgency: pb::Urgency::Urgent as i32,
        subject: Some(pb::Subject {
            sex: pb::Sex::Female as i32,
            age_band: pb::AgeBand::AgeBand1014 as i32,
            province: "12".into(),
        }),
        case_file: spean_testkit::sealed::seal_case_file(
            "ahc-swu",
            "client-0001",
            &case_file().encode_to_vec(),
            &["mlup-russey"],
        ),
        client_pseudonym: "p-7f3a".into(),
        notify_agency_ids: vec!["mosvy-coord".into()],
        broadcast: Some(true),
        follows_referral_id: String::new(),
        consent: Some(spean_testkit::guardian_consent()),
    };
    let to_agency = pb::SubmitRequest {
        recipient: Some(pb::Recipient {
            target: Some(pb::recipient::Target::AgencyId("ngo-b".into())),
        }),
        broadcast: None,
        follows_referral_id: REFERRAL.into(),
        ..submit.clone()
    };
    let delegation = pb::Delegation {
        to_agency_id: "ngo-c".into(),
        reason: String::new(),
        follow_up_case_file: spean_testkit::sealed::seal_follow_up_part(
            "mlup-russey",
            REFERRAL,
            &case_file().encode_to_vec(),
            "ngo-c",
        ),
    };
    vec![
        ("submit", submit.encode_to_vec()),
        (
            "get",
            pb::GetRequest {
                referral_id: REFERRAL.into(),
            }
            .encode_to_vec(),
        ),
        (
            "list",
            pb::ListRequest {
                role: pb::Role::Recipient as i32,
                states: vec![
                    pb::ReferralState::Sent as i32,
                    pb::ReferralState::Accepted as i32,
                ],
                kind: "medical".into(),
                page_size: 20,
                page_token: REFERRAL.into(),
                client_pseudonym: "p-7f3a".into(),
            }
            .encode_to_vec(),
        ),
        (
            "acknowledge",
            pb::AcknowledgeRequest { action: action("") }.encode_to_vec(),
        ),
        (
            "accept",
            pb::AcceptRequest {
                action: action(KHMER_NOTE),
                acceptance: Some(pb::Acceptance {
                    planned_action: String::new(),
                    planned_date: "2026-01-15".into(),
                }),
            }
            .encode_to_vec(),
        ),
        (
            "decline",
            pb::DeclineRequest {
                action: action(""),
                decline: Some(pb::Decline {
                    reason_code: "no_capacity".into(),
                    reason_text: String::new(),
                }),
            }
            .encode_to_vec(),
        ),
        (
            "redirect",
            pb::RedirectRequest {
                action: action(""),
                redirect: Some(pb::Redirect {
                    to_agency_id: "ngo-b".into(),
                    reason: String::new(),
                    case_file: spean_testkit::sealed::reseal_case_file(
                        "mlup-russey",
                        "ahc-swu",
                        "client-0001",
                        &case_file().encode_to_vec(),
                        "ngo-b",
                    ),
                }),
            }
            .encode_to_vec(),
        ),
        (
            "in-progress",
            pb::MarkInProgressRequest { action: action("") }.encode_to_vec(),
        ),
        (
            "follow-up",
            pb::RecordFollowUpRequest {
                action: action(KHMER_NOTE),
                follow_up: Some(pb::FollowUp {
                    activity: "home_visit".into(),
                    date: "2026-02-01".into(),
                }),
            }
            .encode_to_vec(),
        ),
        (
            "complete",
            pb::CompleteRequest {
                action: action(""),
                outcome: Some(pb::Outcome {
                    outcome_code: "reunified".into(),
                    summary: String::new(),
                }),
            }
            .encode_to_vec(),
        ),
        (
            "fail",
            pb::FailRequest {
                action: action(""),
                failure: Some(pb::Failure {
                    reason: String::new(),
                }),
            }
            .encode_to_vec(),
        ),
        (
            "withdraw",
            pb::WithdrawRequest { action: action("") }.encode_to_vec(),
        ),
        (
            "entered-in-error",
            pb::MarkEnteredInErrorRequest { action: action("") }.encode_to_vec(),
        ),
        (
            "delegate",
            pb::DelegateFollowUpRequest {
                action: action(""),
                delegation: Some(delegation),
            }
            .encode_to_vec(),
        ),
        (
            "revoke",
            pb::RevokeDelegationRequest { action: action("") }.encode_to_vec(),
        ),
        (
            "figures",
            pb::FiguresRequest {
                from: Some(AT),
                to: Some(Timestamp {
                    seconds: AT.seconds + 86_400 * 30,
                    nanos: 999_999_999,
                }),
                province: "12".into(),
            }
            .encode_to_vec(),
        ),
        (
            "hello",
            pb::SubscribeRequest {
                request: Some(pb::subscribe_request::Request::Hello(pb::Hello {
                    window: 64,
                })),
            }
            .encode_to_vec(),
        ),
        (
            "confirm",
            pb::SubscribeRequest {
                request: Some(pb::subscribe_request::Request::Confirm(pb::Confirm {
                    delivery_id: DELIVERY.into(),
                })),
            }
            .encode_to_vec(),
        ),
        (
            "list-agencies",
            pb::ListAgenciesRequest {
                service: "medical".into(),
                province: "12".into(),
            }
            .encode_to_vec(),
        ),
        (
            "resolve",
            pb::ResolveServiceRequest {
                service: "shelter".into(),
                province: "02".into(),
            }
            .encode_to_vec(),
        ),
        (
            "list-overdue",
            pb::ListOverdueRequest {
                province: "12".into(),
                agency_id: "ngo-b".into(),
                kind: "medical".into(),
                urgency: pb::Urgency::Emergency as i32,
                page_size: 100,
                page_token: "100".into(),
            }
            .encode_to_vec(),
        ),
        (
            "timeline",
            pb::TimelineRequest {
                referral_id: REFERRAL.into(),
            }
            .encode_to_vec(),
        ),
        (
            "withdraw-consent",
            pb::WithdrawConsentRequest {
                // A withdrawal carries no free text.
                action: action("").map(|a| pb::Action {
                    sealed_text: Vec::new(),
                    ..a
                }),
                withdrawal: Some(pb::ConsentWithdrawal {
                    withdrawn_by: pb::ConsentGiver::Guardian as i32,
                    withdrawn_at: Some(AT),
                }),
            }
            .encode_to_vec(),
        ),
        ("list-provinces", Vec::new()),
        // A submit addressed to one agency, following an earlier referral.
        ("submit-to-agency", to_agency.encode_to_vec()),
    ]
}

fn case_file() -> pb::CaseFile {
    pb::CaseFile {
        name: Some(pb::PersonName {
            khmer: "ស្រី ពៅ".into(),
            latin: "Srey Pov".into(),
        }),
        date_of_birth: "2013-04-14".into(),
        guardians: vec![pb::Guardian {
            name: Some(pb::PersonName {
                khmer: "ចាន់ សុភា".into(),
                latin: "Chan Sophea".into(),
            }),
            relationship: "ម្តាយ".into(),
            phone: "+855 12 345 678".into(),
        }],
        contact: Some(pb::Contact {
            phone: "+855 12 345 678".into(),
            address: "ភូមិ ៣, សង្កាត់ ទួលទំពូង, ភ្នំពេញ".into(),
            directions: "ក្បែរវត្ត\u{200B}ខាងជើង".into(),
        }),
        reason_for_referral: KHMER_NOTE.into(),
        consent: Some(pb::Consent {
            given_by: "ចាន់ សុភា".into(),
            given_at: "2026-01-01".into(),
            scope: "health, shelter".into(),
        }),
        transport_needs: "ម៉ូតូឌុប".into(),
        // A bidirectional override that `show` must make visible.
        notes: "note \u{202E}reversed\u{202C} end".into(),
    }
}

fn envelope() -> pb::Envelope {
    pb::Envelope {
        referral_id: REFERRAL.into(),
        client_ref: "client-0001".into(),
        sender_agency_id: "ngo-b".into(),
        requested_recipient: Some(pb::Recipient {
            target: Some(pb::recipient::Target::Service(pb::ServiceInProvince {
                service: "medical".into(),
                province: "12".into(),
            })),
        }),
        recipient_agency_id: "ngo-a".into(),
        kind: "medical".into(),
        urgency: pb::Urgency::Urgent as i32,
        subject: Some(pb::Subject {
            sex: pb::Sex::Female as i32,
            age_band: pb::AgeBand::AgeBand1014 as i32,
            province: "12".into(),
        }),
        created_at: Some(AT),
        updated_at: Some(Timestamp {
            seconds: AT.seconds + 60,
            nanos: 5,
        }),
        client_pseudonym: "p-7f3a".into(),
        candidate_agency_ids: vec!["ngo-a".into(), "ngo-c".into()],
        notified_agency_ids: vec!["mosvy-coord".into()],
        follows_referral_id: String::new(),
        consent: Some(pb::ReferralConsent {
            emergency_exception: "immediate_danger".into(),
            ..Default::default()
        }),
    }
}

fn event(
    kind: pb::FeedbackKind,
    details: Option<pb::feedback_event::Details>,
) -> pb::FeedbackEvent {
    pb::FeedbackEvent {
        event_id: "0192f5a0-7c1e-7b3a-9f00-0000000000e1".into(),
        referral_id: REFERRAL.into(),
        kind: kind as i32,
        actor_agency_id: "ngo-a".into(),
        actor_person: "សុខ ចាន់ធា".into(),
        at: Some(AT),
        note: KHMER_NOTE.into(),
        state_after: pb::ReferralState::Accepted as i32,
        details,
        next_visit: None,
        // The adapter opens sealed text before it stores an event; these seeds are what it
        // then holds, as the older deliveries in clear were.
        sealed_text: Vec::new(),
    }
}

/// Deliveries an adapter (`ngo-a`) receives: a referral with its case file and a long history, a
/// broadcast seen as a candidate, and events of every kind with details.
fn deliveries() -> Vec<(&'static str, pb::Delivery)> {
    use pb::FeedbackKind as K;
    use pb::feedback_event::Details as D;
    let delegated = event(
        K::FollowUpDelegated,
        Some(D::Delegated(pb::Delegation {
            to_agency_id: "ngo-a".into(),
            reason: "ជិតផ្ទះ".into(),
            follow_up_case_file: case_file().encode_to_vec(),
        })),
    );
    let mut overdue = event(
        K::FollowUpOverdue,
        Some(D::FollowUpOverdue(pb::MissedVisit {
            due_at: Some(AT),
            missed_in_a_row: 2,
        })),
    );
    overdue.next_visit = Some(pb::NextVisit {
        due_at: Some(Timestamp {
            seconds: AT.seconds + 30 * 86_400,
            nanos: 0,
        }),
        grace_seconds: 7 * 86_400,
        every_seconds: 30 * 86_400,
    });
    let history = vec![
        event(K::Submitted, None),
        event(
            K::Accepted,
            Some(D::Accepted(pb::Acceptance {
                planned_action: "ពិនិត្យ".into(),
                planned_date: "2026-01-15".into(),
            })),
        ),
        event(
            K::Declined,
            Some(D::Declined(pb::Decline {
                reason_code: "full".into(),
                reason_text: "ពេញ".into(),
            })),
        ),
        event(
            K::Redirected,
            Some(D::Redirected(pb::Redirect {
                to_agency_id: "ngo-c".into(),
                reason: "x".into(),
                case_file: Vec::new(),
            })),
        ),
        event(
            K::FollowUp,
            Some(D::FollowUp(pb::FollowUp {
                activity: "home_visit".into(),
                date: "2026-02-01".into(),
            })),
        ),
        event(
            K::Escalated,
            Some(D::Escalated(pb::Escalation {
                tier: 1,
                to_agency_ids: vec!["mosvy-coord".into()],
            })),
        ),
        overdue.clone(),
        delegated.clone(),
        event(
            K::Completed,
            Some(D::Completed(pb::Outcome {
                outcome_code: "done".into(),
                summary: "ចប់".into(),
            })),
        ),
        event(
            K::Failed,
            Some(D::Failed(pb::Failure {
                reason: "\u{1b}[31mred".into(),
            })),
        ),
        event(K::NoCandidateAccepted, None),
        event(
            K::ConsentWithdrawn,
            Some(D::ConsentWithdrawn(pb::ConsentWithdrawal {
                withdrawn_by: pb::ConsentGiver::Client as i32,
                withdrawn_at: Some(AT),
            })),
        ),
    ];
    let referral = |audience: pb::Audience, case_file: Vec<u8>, history: Vec<pb::FeedbackEvent>| {
        pb::Delivery {
            delivery_id: DELIVERY.into(),
            payload: Some(pb::delivery::Payload::Referral(pb::Referral {
                envelope: Some(envelope()),
                state: pb::ReferralState::InProgress as i32,
                case_file,
                history,
                audience: audience as i32,
            })),
            audit_head: None,
        }
    };
    let feedback = |e: pb::FeedbackEvent| pb::Delivery {
        delivery_id: DELIVERY.into(),
        payload: Some(pb::delivery::Payload::Feedback(e)),
        audit_head: None,
    };
    vec![
        (
            "referral",
            referral(
                pb::Audience::Recipient,
                case_file().encode_to_vec(),
                history.clone(),
            ),
        ),
        (
            "candidate",
            referral(pb::Audience::Candidate, Vec::new(), history[..3].to_vec()),
        ),
        (
            "delegate",
            referral(pb::Audience::Delegate, Vec::new(), vec![delegated.clone()]),
        ),
        ("event-delegated", feedback(delegated)),
        ("event-overdue", feedback(overdue)),
        (
            "event-revoked",
            feedback(event(
                K::DelegationRevoked,
                Some(D::DelegationRevoked(pb::Delegation {
                    to_agency_id: "ngo-a".into(),
                    ..Default::default()
                })),
            )),
        ),
        (
            "empty",
            pb::Delivery {
                delivery_id: DELIVERY.into(),
                payload: None,
                audit_head: None,
            },
        ),
    ]
}

/// A directory with every section, small enough for the fuzzer to change every part of it.
const SMALL_DIRECTORY: &str = r#"{
  "provinces": [{"code": "12", "name_en": "Phnom Penh", "name_km": "ភ្នំពេញ"}, {"code": "02", "name_en": "Battambang"}],
  "referral_kinds": [
    {"kind": "medical", "meaning": "health care", "default_urgency": "urgent", "acknowledgement_deadline": "2h"},
    {"kind": "shelter", "meaning": "ជម្រក", "default_urgency": "emergency"}
  ],
  "agencies": [
    {"id": "ngo-a", "name": "អង្គការ ក", "type": "ngo", "provinces": ["12"], "services": ["medical", "shelter"]},
    {"id": "dosvy-12", "name": "DoSVY Phnom Penh", "type": "authority", "provinces": ["12"], "services": ["shelter"]},
    {"id": "mosvy-coord", "name": "MoSVY", "type": "coordinator", "provinces": ["*"], "services": []}
  ],
  "acknowledgement_deadlines": {"emergency": "30m", "urgent": "1d", "routine": "3d"},
  "escalation": {"tiers": [{"after_deadlines": 1, "to": ["@province_authority", "mosvy-coord"]}, {"after_deadlines": 2, "to": ["mosvy-coord"]}]},
  "follow_up_schedules": {"medical": {"every": "30d", "grace": "7d"}, "shelter": "a note for people"}
}"#;
