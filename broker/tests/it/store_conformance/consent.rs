//! Consent (issue 23), as the workflow enforces it on each store: no referral without consent or
//! its kind's emergency exception, nothing shared beyond what consent covers, the consent read back
//! whole, and a withdrawal that ends the referral and leaves nothing sealed behind.

use spean_broker::error::BrokerError;
use spean_broker::ids::{ReferralId, RequestId};
use spean_broker::referral::{
    Action, Consent, ConsentGiver, EventDetails, EventKind, FreeText, Sealed, Sharing, State,
};
use spean_broker::workflow::Workflow;
use spean_proto::v1 as pb;
use spean_testkit::sealed::{reseal_case_file, seal_text, sealed_submit};
use time::OffsetDateTime;

use super::escalation::{TestClock, agency, workflow};
use super::fixture::Fixture;

fn start() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

async fn submit(
    w: &Workflow,
    sender: &str,
    request: pb::SubmitRequest,
) -> Result<ReferralId, BrokerError> {
    let new = spean_broker::wire::new_referral(request)?;
    let (view, _, _) = w.submit(&agency(sender), new).await?;
    Ok(view.referral().id)
}

fn field_refused(outcome: Result<ReferralId, BrokerError>, field: &str) -> String {
    match outcome {
        Err(BrokerError::InvalidField(e)) if e.field == field => e.reason,
        other => panic!("expected {field} to be refused: {other:?}"),
    }
}

/// Story 1 sealed, with `consent` instead of the stories' guardian consent.
fn lama_with(client_ref: &str, consent: Option<pb::ReferralConsent>) -> pb::SubmitRequest {
    let mut clear = spean_testkit::lama_in_clear(client_ref);
    clear.consent = consent;
    sealed_submit("ahc-swu", clear, &["mlup-russey", "dosvy-24"])
}

fn only_the_referral() -> pb::ReferralConsent {
    pb::ReferralConsent {
        sharing: vec![pb::Sharing::Referral as i32],
        ..spean_testkit::guardian_consent()
    }
}

fn exception() -> pb::ReferralConsent {
    pb::ReferralConsent {
        emergency_exception: "immediate_danger".into(),
        ..Default::default()
    }
}

/// A referral without consent, or with the emergency exception for a kind that has none, is
/// refused naming the field, and nothing is stored under its key; consent dated in the future too.
/// The stories' consent reads back whole; story 3 (child protection) may go under the exception,
/// which its `submitted` event flags for every reader.
pub(super) async fn a_referral_goes_only_with_consent_or_its_kinds_emergency_exception(f: Fixture) {
    let w = workflow(&f, TestClock::at(start())).await;
    field_refused(
        submit(&w, "ahc-swu", lama_with("c-1", None)).await,
        "consent",
    );
    let reason = field_refused(
        submit(&w, "ahc-swu", lama_with("c-1", Some(exception()))).await,
        "consent.emergency_exception",
    );
    assert!(reason.contains("\"lama\""), "{reason}");
    let future = pb::ReferralConsent {
        given_at: Some(spean_broker::wire::timestamp(
            start() + time::Duration::hours(1),
        )),
        ..spean_testkit::guardian_consent()
    };
    field_refused(
        submit(&w, "ahc-swu", lama_with("c-1", Some(future))).await,
        "consent.given_at",
    );
    let sender = agency("ahc-swu");
    let key = spean_broker::ids::ClientRef::parse("client_ref", "c-1").unwrap();
    assert!(
        f.store
            .referral_by_client_ref(&sender, &key)
            .await
            .unwrap()
            .is_none(),
        "nothing of a refused referral is stored"
    );

    let id = submit(&w, "ahc-swu", spean_testkit::lama("c-1"))
        .await
        .unwrap();
    let stored = f.store.referral(id).await.unwrap().unwrap();
    assert_eq!(
        stored.consent,
        Some(
            Consent::given(
                ConsentGiver::Guardian,
                OffsetDateTime::from_unix_timestamp(1_704_067_200).unwrap(),
                Sharing::ALL,
            )
            .unwrap()
        )
    );
    let history = f.store.history(id).await.unwrap();
    assert_eq!(history[0].details, EventDetails::None);

    let mut story_3 = spean_testkit::child_protection("c-3");
    story_3.consent = Some(exception());
    let id = submit(&w, "mlup-russey", story_3).await.unwrap();
    let stored = f.store.referral(id).await.unwrap().unwrap();
    assert_eq!(
        stored
            .consent
            .as_ref()
            .and_then(|c| c.emergency_exception())
            .map(|r| r.as_str()),
        Some("immediate_danger")
    );
    // The notified department reads the flag as the parties do.
    let (view, history) = w.get(&agency("dosvy-15"), id).await.unwrap();
    let seen = spean_broker::wire::referral(view, &history);
    assert!(matches!(
        seen.history[0].details,
        Some(pb::feedback_event::Details::EmergencyException(ref e)) if e.reason == "immediate_danger"
    ));
    assert_eq!(
        seen.envelope.unwrap().consent.unwrap().emergency_exception,
        "immediate_danger"
    );
}

/// Consent to the referral alone: a broadcast or notified parties are refused at submit, and a
/// redirect or a delegation of the referral sent is refused, saying what the consent lacks.
pub(super) async fn nothing_is_shared_beyond_what_consent_covers(f: Fixture) {
    let w = workflow(&f, TestClock::at(start())).await;
    let mut placement = spean_testkit::placement_in_clear("p-1");
    placement.consent = Some(only_the_referral());
    let placement = sealed_submit("ahc-swu", placement, &["mlup-russey", "dosvy-17"]);
    let reason = field_refused(submit(&w, "ahc-swu", placement).await, "consent.sharing");
    assert!(reason.contains("broadcast"), "{reason}");
    let mut notifying = lama_with("n-1", Some(only_the_referral()));
    notifying.notify_agency_ids = vec!["dosvy-24".into()];
    let reason = field_refused(submit(&w, "ahc-swu", notifying).await, "consent.sharing");
    assert!(reason.contains("notified_parties"), "{reason}");

    let id = submit(&w, "ahc-swu", lama_with("r-1", Some(only_the_referral())))
        .await
        .unwrap();
    let text = pb::FreeText {
        actor_person: "សុភា".into(),
        note: String::new(),
        detail: "closer to the family".into(),
    };
    let redirect = Action {
        referral_id: id,
        request_id: RequestId::parse("request_id", "redirect-1").unwrap(),
        actor_person: FreeText::default(),
        note: FreeText::default(),
        kind: EventKind::Redirected,
        details: EventDetails::Redirected {
            to: agency("dosvy-24"),
            reason: FreeText::default(),
            case_file: Sealed::new(reseal_case_file(
                "mlup-russey",
                "ahc-swu",
                "r-1",
                &spean_testkit::case_file(),
                "dosvy-24",
            )),
        },
        sealed_text: Sealed::new(seal_text(
            "mlup-russey",
            &id.to_string(),
            &text,
            &["ahc-swu"],
        )),
    };
    match w.act(&agency("mlup-russey"), redirect).await {
        Err(BrokerError::Precondition(message)) => {
            assert!(message.contains("does not cover redirect"), "{message}")
        }
        other => panic!("expected the redirect to be refused: {other:?}"),
    }
    assert_eq!(
        f.store.referral(id).await.unwrap().unwrap().recipient,
        Some(agency("mlup-russey"))
    );
}

fn withdrawal(id: ReferralId, request: &str, at: OffsetDateTime) -> Action {
    Action {
        referral_id: id,
        request_id: RequestId::parse("request_id", request).unwrap(),
        actor_person: FreeText::default(),
        note: FreeText::default(),
        kind: EventKind::ConsentWithdrawn,
        details: EventDetails::ConsentWithdrawn {
            by: ConsentGiver::Guardian,
            at,
        },
        sealed_text: Sealed::default(),
    }
}

/// The recipient accepted story 1 and wrote why; then the guardian withdraws consent through the
/// recipient. The referral is withdrawn, the store keeps no sealed byte of it (case file, the
/// acceptance's sealed text), the history keeps its kinds and times, a replay answers the same,
/// and nothing more can be recorded.
pub(super) async fn a_withdrawal_of_consent_ends_the_referral_and_forgets_what_was_sealed(
    f: Fixture,
) {
    let w = workflow(&f, TestClock::at(start())).await;
    let id = submit(&w, "ahc-swu", spean_testkit::lama("w-1"))
        .await
        .unwrap();
    let text = pb::FreeText {
        actor_person: "សុភា".into(),
        note: "ជួបគ្រួសារ".into(),
        detail: "home visit".into(),
    };
    let accept = Action {
        referral_id: id,
        request_id: RequestId::parse("request_id", "accept-1").unwrap(),
        actor_person: FreeText::default(),
        note: FreeText::default(),
        kind: EventKind::Accepted,
        details: EventDetails::Accepted {
            planned_action: FreeText::default(),
            planned_date: "2027-01-20".into(),
        },
        sealed_text: Sealed::new(seal_text(
            "mlup-russey",
            &id.to_string(),
            &text,
            &["ahc-swu"],
        )),
    };
    w.act(&agency("mlup-russey"), accept).await.unwrap();
    assert!(
        !f.store
            .referral(id)
            .await
            .unwrap()
            .unwrap()
            .case_file
            .is_empty()
    );

    let too_late = withdrawal(id, "withdraw-0", start() + time::Duration::hours(1));
    match w.act(&agency("mlup-russey"), too_late).await {
        Err(BrokerError::InvalidField(e)) => assert_eq!(e.field, "withdrawal.withdrawn_at"),
        other => panic!("a withdrawal dated in the future is refused: {other:?}"),
    }
    // As an adapter sends it: who recorded it, sealed to the other party. The adapter seals a
    // request once and sends the same bytes again, so a replay carries them too.
    let mut withdrawn = withdrawal(id, "withdraw-1", start());
    withdrawn.sealed_text = Sealed::new(seal_text(
        "mlup-russey",
        &id.to_string(),
        &pb::FreeText {
            actor_person: "សុភា".into(),
            ..Default::default()
        },
        &["ahc-swu"],
    ));
    let (event, state) = w
        .act(&agency("mlup-russey"), withdrawn.clone())
        .await
        .unwrap();
    assert_eq!(state, State::Withdrawn);
    assert_eq!(event.kind, EventKind::ConsentWithdrawn);

    for store in [f.store.clone(), f.reopen().await] {
        let stored = store.referral(id).await.unwrap().unwrap();
        assert!(stored.case_file.is_empty(), "the case file is forgotten");
        assert_eq!(stored.state, State::Withdrawn);
        let history = store.history(id).await.unwrap();
        let kinds: Vec<EventKind> = history.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Submitted,
                EventKind::Accepted,
                EventKind::ConsentWithdrawn
            ]
        );
        assert!(history.iter().all(|e| e.sealed_text.is_empty()));
        assert_eq!(
            history[1].details,
            EventDetails::Accepted {
                planned_action: FreeText::default(),
                planned_date: "2027-01-20".into(),
            },
            "what is not sealed stays"
        );
    }

    // Its own sealed text was forgotten with the rest: a replay (a daemon and a command sending
    // the same queued request at once) still answers with the first event.
    let (again, _) = w.act(&agency("mlup-russey"), withdrawn).await.unwrap();
    assert_eq!(again.id, event.id, "a replay answers with the first event");
    // Forgetting what was sealed rewrites no audit entry: the log still verifies, and its last
    // entry is the withdrawal.
    let entries = f.store.audit_entries(0, 100).await.unwrap();
    assert_eq!(
        entries.last().map(|e| e.record.action.as_str()),
        Some("consent_withdrawn")
    );
    assert!(matches!(
        spean_broker::store::audit::verify(f.store.as_ref(), None)
            .await
            .unwrap(),
        Ok(Some(_))
    ));
    for (who, request) in [("ahc-swu", "withdraw-2"), ("mlup-russey", "withdraw-3")] {
        match w.act(&agency(who), withdrawal(id, request, start())).await {
            Err(BrokerError::Precondition(message)) => {
                assert!(message.contains("consent"), "{message}")
            }
            other => panic!("a second withdrawal is refused: {other:?}"),
        }
    }
}
