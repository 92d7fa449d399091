//! One request, many agencies (issue 22), as the workflow runs it on each store: a broadcast
//! placement reaches every candidate without its case file, the first acceptance wins however
//! many candidates race for it (also through two workflows on one database, as two brokers), the
//! sender is told once when every candidate declined, and agencies the sender names to be
//! notified hold the envelope and can do nothing with it.

use std::sync::Arc;

use spean_broker::delivery::Dispatch;
use spean_broker::directory::Directory;
use spean_broker::error::BrokerError;
use spean_broker::ids::{AgencyId, ReferralId, RequestId};
use spean_broker::referral::state::TransitionError;
use spean_broker::referral::{Action, Audience, Code, EventDetails, EventKind, FreeText, State};
use spean_broker::store::Store;
use spean_broker::workflow::{Limits, Workflow};
use spean_proto::v1 as pb;
use time::OffsetDateTime;

use super::escalation::{TestClock, agency, workflow};
use super::fixture::Fixture;

/// The repository's network with two more agencies offering `placement` in province 17
/// (`dosvy-05`, `dosvy-12`), so that four candidates race: `mlup-russey`, `dosvy-17`, `dosvy-05`,
/// `dosvy-12`, in the directory's order.
fn four_candidates() -> Directory {
    let mut network: serde_json::Value =
        serde_json::from_slice(include_bytes!("../../../../fixtures/network.json")).unwrap();
    for a in network["agencies"].as_array_mut().unwrap() {
        if matches!(a["id"].as_str(), Some("dosvy-05" | "dosvy-12")) {
            a["services"]
                .as_array_mut()
                .unwrap()
                .push("placement".into());
            a["provinces"].as_array_mut().unwrap().push("17".into());
        }
    }
    Directory::from_json(&serde_json::to_vec(&network).unwrap()).unwrap()
}

/// A workflow on `store` with the directory it holds, as another broker process would run.
async fn broker(store: Arc<dyn Store>, clock: Arc<TestClock>) -> Workflow {
    Workflow::new(
        store,
        Arc::new(Dispatch::default()),
        Limits {
            max_case_file_bytes: 1 << 20,
        },
    )
    .await
    .unwrap()
    .with_clock(clock)
}

const CANDIDATES: [&str; 4] = ["mlup-russey", "dosvy-17", "dosvy-05", "dosvy-12"];

fn start() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn action(id: ReferralId, key: &str, kind: EventKind, details: EventDetails) -> Action {
    Action {
        referral_id: id,
        request_id: RequestId::parse("request_id", key).unwrap(),
        actor_person: FreeText::line("actor_person", "សុភា", 64).unwrap(),
        note: FreeText::parse("note", "មានគ្រួសារអប់រំទំនេរ", 512).unwrap(),
        kind,
        details,
        sealed_text: Default::default(),
    }
}

fn acceptance(id: ReferralId, key: &str) -> Action {
    action(
        id,
        key,
        EventKind::Accepted,
        EventDetails::Accepted {
            planned_action: FreeText::parse("p", "ទទួលទារក", 512).unwrap(),
            planned_date: "2027-01-15".into(),
        },
    )
}

fn decline(id: ReferralId, key: &str) -> Action {
    action(
        id,
        key,
        EventKind::Declined,
        EventDetails::Declined {
            reason_code: Code::parse("reason_code", "no_capacity").unwrap(),
            reason_text: FreeText::parse("r", "គ្មានគ្រួសារអប់រំទំនេរ", 512).unwrap(),
        },
    )
}

/// Story 2's request, sent by `ahc-swu` through `workflow`; its id.
async fn placement(workflow: &Workflow, client_ref: &str) -> ReferralId {
    let sealed = spean_testkit::sealed::sealed_submit(
        "ahc-swu",
        spean_testkit::placement_in_clear(client_ref),
        &CANDIDATES,
    );
    let new = spean_broker::wire::new_referral(sealed).unwrap();
    let (view, _, created) = workflow.submit(&agency("ahc-swu"), new).await.unwrap();
    assert!(created);
    view.referral().id
}

/// A placement addressed by service and province goes to every provider there at once (the
/// kind's default), each of which holds it as a candidate: the envelope and the history, never
/// the case file. Nobody is its recipient until one accepts. Asked for one agency (`broadcast =
/// false`), the same request goes to the first provider alone.
pub(super) async fn a_broadcast_reaches_every_candidate_without_its_case_file(f: Fixture) {
    f.store.import_directory(&four_candidates()).await.unwrap();
    let workflow = broker(f.store.clone(), TestClock::at(start())).await;
    let id = placement(&workflow, "placement-1").await;
    let stored = f.store.referral(id).await.unwrap().unwrap();
    assert_eq!(stored.recipient, None);
    let candidates: Vec<AgencyId> = CANDIDATES.iter().map(|c| agency(c)).collect();
    assert_eq!(stored.candidates, candidates);
    assert_eq!(stored.state, State::Sent);
    for candidate in &candidates {
        let mailbox = f.store.mailbox(candidate, 0, 10).await.unwrap();
        assert_eq!(mailbox.len(), 1, "{candidate}");
        assert_eq!((mailbox[0].referral_id, mailbox[0].event_id), (id, None));
        let (view, history) = workflow.get(candidate, id).await.unwrap();
        assert_eq!(view.audience(), Audience::Candidate, "{candidate}");
        assert!(view.referral().case_file.is_empty(), "{candidate}");
        assert_eq!(history.len(), 1);
    }
    let (sender, _) = workflow.get(&agency("ahc-swu"), id).await.unwrap();
    let boxes =
        spean_broker::wire::sealed::parse("case_file", sender.referral().case_file.as_bytes())
            .unwrap();
    let mut readers: Vec<&str> = boxes.iter().map(|b| b.to.as_str()).collect();
    readers.sort_unstable();
    let mut expected: Vec<&str> = CANDIDATES.iter().copied().chain(["ahc-swu"]).collect();
    expected.sort_unstable();
    assert_eq!(readers, expected, "one box per candidate and the sender's");
    let snapshot = f.store.snapshot(id).await.unwrap().unwrap();
    let mut parties = candidates.clone();
    parties.push(agency("ahc-swu"));
    parties.sort();
    assert_eq!(snapshot.parties, parties);
    assert!(snapshot.notified.is_empty());

    let mut one = spean_testkit::placement("placement-one");
    one.broadcast = Some(false);
    let new = spean_broker::wire::new_referral(one).unwrap();
    let (view, _, _) = workflow.submit(&agency("ahc-swu"), new).await.unwrap();
    assert_eq!(view.referral().recipient, Some(agency("mlup-russey")));
    assert!(view.referral().candidates.is_empty());
}

/// Four candidates accept one broadcast at the same moment, through two workflows on one
/// database (as two brokers), for twelve broadcasts: each time exactly one wins and becomes the
/// recipient, every other is refused as too late (a precondition, naming the winner), the history
/// holds one acceptance, and the winner alone is sent the referral again, now with its case file.
pub(super) async fn the_first_acceptance_wins_however_many_candidates_race(f: Fixture) {
    f.store.import_directory(&four_candidates()).await.unwrap();
    let clock = TestClock::at(start());
    let brokers = [
        Arc::new(broker(f.store.clone(), clock.clone()).await),
        Arc::new(broker(f.reopen().await, clock.clone()).await),
    ];
    let mut winners = std::collections::BTreeMap::<String, usize>::new();
    for round in 0..12 {
        let id = placement(&brokers[round % 2], &format!("race-{round}")).await;
        let mut racing = tokio::task::JoinSet::new();
        for (n, candidate) in CANDIDATES.iter().enumerate() {
            let broker = brokers[(n + round) % 2].clone();
            let candidate = agency(candidate);
            racing.spawn(async move {
                let answer = broker
                    .act(&candidate, acceptance(id, &format!("accept-{round}")))
                    .await;
                (candidate, answer)
            });
        }
        let mut won = Vec::new();
        while let Some(done) = racing.join_next().await {
            let (candidate, answer) = done.unwrap();
            match answer {
                Ok((event, state)) => {
                    assert_eq!((event.kind, state), (EventKind::Accepted, State::Accepted));
                    won.push(candidate);
                }
                Err(BrokerError::Precondition(reason)) => {
                    assert!(
                        reason.contains("taken by another agency"),
                        "round {round}, {candidate}: {reason}"
                    );
                }
                Err(other) => panic!("round {round}, {candidate}: {other:?}"),
            }
        }
        assert_eq!(won.len(), 1, "round {round}: {won:?}");
        let winner = won.remove(0);
        *winners.entry(winner.to_string()).or_default() += 1;
        let stored = f.store.referral(id).await.unwrap().unwrap();
        assert_eq!(stored.recipient.as_ref(), Some(&winner));
        let history = f.store.history(id).await.unwrap();
        let accepted: Vec<&AgencyId> = history
            .iter()
            .filter(|e| e.kind == EventKind::Accepted)
            .map(|e| &e.actor)
            .collect();
        assert_eq!(accepted, [&winner], "round {round}");
        // The winner is sent the referral a second time, as its recipient; nobody else is.
        for candidate in CANDIDATES.map(agency) {
            let copies = f
                .store
                .mailbox(&candidate, 0, 100)
                .await
                .unwrap()
                .into_iter()
                .filter(|m| m.referral_id == id && m.event_id.is_none())
                .count();
            assert_eq!(
                copies,
                if candidate == winner { 2 } else { 1 },
                "{candidate}"
            );
        }
        let (view, _) = brokers[0].get(&winner, id).await.unwrap();
        assert_eq!(view.audience(), Audience::Recipient);
        assert!(!view.referral().case_file.is_empty());
        for loser in CANDIDATES.map(agency).into_iter().filter(|c| c != &winner) {
            let (view, _) = brokers[1].get(&loser, id).await.unwrap();
            assert_eq!(view.audience(), Audience::Candidate);
            assert!(view.referral().case_file.is_empty());
        }
    }
    assert_eq!(winners.values().sum::<usize>(), 12);
}

/// Both candidates of story 2's placement decline, at once, through two workflows: the sender is
/// told exactly once (`no_candidate_accepted`, also with every workflow sweeping for due timers),
/// the referral stays open, a candidate may not answer twice, and the sender sends it on to one
/// agency, which receives it whole.
pub(super) async fn when_every_candidate_declines_the_sender_is_told_once(f: Fixture) {
    let clock = TestClock::at(start());
    let first = Arc::new(workflow(&f, clock.clone()).await);
    let second = Arc::new(broker(f.reopen().await, clock.clone()).await);
    let id = placement(&first, "all-decline").await;
    let (mlup, dosvy) = (agency("mlup-russey"), agency("dosvy-17"));
    let mut racing = tokio::task::JoinSet::new();
    for (w, who) in [
        (first.clone(), mlup.clone()),
        (second.clone(), dosvy.clone()),
    ] {
        racing.spawn(async move { w.act(&who, decline(id, "no-room")).await });
    }
    for w in [first.clone(), second.clone()] {
        racing.spawn(async move {
            w.escalate_due().await.unwrap();
            Err(BrokerError::Contended)
        });
    }
    let mut declined = 0;
    while let Some(done) = racing.join_next().await {
        if let Ok((event, state)) = done.unwrap() {
            assert_eq!((event.kind, state), (EventKind::Declined, State::Sent));
            declined += 1;
        }
    }
    assert_eq!(declined, 2);
    // Sweeps after the fact find nothing more to tell.
    first.escalate_due().await.unwrap();
    second.escalate_due().await.unwrap();
    let history = f.store.history(id).await.unwrap();
    let told: Vec<_> = history
        .iter()
        .filter(|e| e.kind == EventKind::NoCandidateAccepted)
        .collect();
    assert_eq!(
        told.len(),
        1,
        "{:?}",
        history.iter().map(|e| e.kind).collect::<Vec<_>>()
    );
    assert_eq!(told[0].actor, agency("ahc-swu"));
    assert_eq!(told[0].state_after, State::Sent);
    assert_eq!(f.store.deadline(id).await.unwrap(), None);
    // Delivered to the sender and to both candidates.
    for party in [agency("ahc-swu"), mlup.clone(), dosvy.clone()] {
        assert!(
            f.store
                .mailbox(&party, 0, 100)
                .await
                .unwrap()
                .iter()
                .any(|m| m.event_id == Some(told[0].id)),
            "{party}"
        );
    }
    // A candidate answers once.
    match first.act(&mlup, acceptance(id, "changed-mind")).await {
        Err(BrokerError::Precondition(reason)) => assert!(reason.contains("declined"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // The sender sends it on to one agency.
    let redirect = action(
        id,
        "send-on",
        EventKind::Redirected,
        EventDetails::Redirected {
            to: agency("dosvy-12"),
            reason: FreeText::parse("r", "ផ្ទះសុវត្ថិភាព", 512).unwrap(),
            case_file: Default::default(),
        },
    );
    let (_, state) = first.act(&agency("ahc-swu"), redirect).await.unwrap();
    assert_eq!(state, State::Sent);
    let stored = f.store.referral(id).await.unwrap().unwrap();
    assert_eq!(stored.recipient, Some(agency("dosvy-12")));
    let (view, _) = first.get(&agency("dosvy-12"), id).await.unwrap();
    assert_eq!(view.audience(), Audience::Recipient);
    assert!(!view.referral().case_file.is_empty());
    // The former candidates are no longer asked.
    match second.act(&dosvy, acceptance(id, "too-late")).await {
        Err(BrokerError::Precondition(reason)) => {
            assert!(reason.contains("dosvy-12"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

/// An open broadcast nobody answers escalates like any referral (in its sender's name, since
/// nobody is its recipient), until a candidate acknowledges it; the candidate that declined does
/// not stop it.
pub(super) async fn an_open_broadcast_escalates_until_a_candidate_acknowledges(f: Fixture) {
    let clock = TestClock::at(start());
    let workflow = workflow(&f, clock.clone()).await;
    let id = placement(&workflow, "escalates").await;
    workflow
        .act(&agency("dosvy-17"), decline(id, "full"))
        .await
        .unwrap();
    // Story 2 is an emergency: due in two hours.
    clock.set(start() + time::Duration::hours(2));
    assert_eq!(workflow.escalate_due().await.unwrap(), 1);
    let history = f.store.history(id).await.unwrap();
    let escalated = history.last().unwrap();
    assert_eq!(escalated.kind, EventKind::Escalated);
    assert_eq!(escalated.actor, agency("ahc-swu"));
    match &escalated.details {
        EventDetails::Escalated { tier, to } => {
            assert_eq!(*tier, 1);
            assert!(to.contains(&agency("dosvy-17")), "{to:?}");
        }
        other => panic!("{other:?}"),
    }
    let (_, state) = workflow
        .act(
            &agency("mlup-russey"),
            action(id, "seen", EventKind::Acknowledged, EventDetails::None),
        )
        .await
        .unwrap();
    assert_eq!(state, State::Acknowledged);
    assert_eq!(f.store.deadline(id).await.unwrap(), None);
    // Acknowledging twice tells the sender nothing new.
    assert!(matches!(
        workflow
            .act(
                &agency("mlup-russey"),
                action(
                    id,
                    "seen-again",
                    EventKind::Acknowledged,
                    EventDetails::None
                ),
            )
            .await,
        Err(BrokerError::Precondition(_))
    ));
    // Only a candidate accepts; the sender cannot.
    assert!(matches!(
        workflow
            .act(&agency("ahc-swu"), acceptance(id, "self"))
            .await,
        Err(BrokerError::Transition(TransitionError::WrongParty { .. }))
    ));
}

/// Story 3: `dosvy-15`, named by the sender to be notified, holds the envelope from the submit on
/// (sender and recipient see it named), reads the history without what anybody wrote, and every
/// action of its own is refused as not its to take. Naming an agency that is not in the
/// directory, the sender or the recipient is refused with the field named.
pub(super) async fn an_agency_the_sender_names_is_notified_and_cannot_act(f: Fixture) {
    let clock = TestClock::at(start());
    let workflow = workflow(&f, clock).await;
    let (mlup, legal, dosvy) = (
        agency("mlup-russey"),
        agency("legal-aid-nw"),
        agency("dosvy-15"),
    );
    let new = spean_broker::wire::new_referral(spean_testkit::child_protection("cp-1")).unwrap();
    let (view, _, _) = workflow.submit(&mlup, new).await.unwrap();
    let id = view.referral().id;
    assert_eq!(view.referral().notify, std::slice::from_ref(&dosvy));
    let snapshot = f.store.snapshot(id).await.unwrap().unwrap();
    assert_eq!(snapshot.notified, std::slice::from_ref(&dosvy));
    let mailbox = f.store.mailbox(&dosvy, 0, 10).await.unwrap();
    assert_eq!((mailbox.len(), mailbox[0].event_id), (1, None));
    for (n, (kind, details)) in [
        (EventKind::Acknowledged, EventDetails::None),
        (
            EventKind::Accepted,
            EventDetails::Accepted {
                planned_action: FreeText::parse("p", "ជួបមេធាវី", 512).unwrap(),
                planned_date: "2027-01-20".into(),
            },
        ),
        (
            EventKind::FollowUp,
            EventDetails::FollowUp {
                activity: Code::parse("activity", "appointment").unwrap(),
                date: "2027-01-20".into(),
            },
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let said = spean_testkit::sealed::seal_text(
            "legal-aid-nw",
            &id.to_string(),
            &pb::FreeText {
                actor_person: "សុភា".into(),
                note: "ជួបមេធាវី".into(),
                detail: String::new(),
            },
            &["mlup-russey"],
        );
        let act = Action {
            sealed_text: spean_broker::referral::Sealed::new(said),
            ..action(id, &format!("legal-{n}"), kind, details)
        };
        workflow.act(&legal, act).await.unwrap();
    }
    let (seen, history) = workflow.get(&dosvy, id).await.unwrap();
    assert_eq!(seen.audience(), Audience::Notified);
    assert!(seen.referral().case_file.is_empty());
    assert_eq!(history.len(), 4);
    for event in history.iter().map(|e| seen.event(e)) {
        assert!(event.note.as_str().is_empty(), "{:?}", event.kind);
        assert!(event.actor_person.as_str().is_empty(), "{:?}", event.kind);
        assert!(event.sealed_text.is_empty(), "{:?}", event.kind);
        assert_eq!(event.details, EventDetails::None, "{:?}", event.kind);
    }
    // The sender, a party, gets what the legal aid sealed to it.
    let (sender, history) = workflow.get(&mlup, id).await.unwrap();
    for event in history.iter().skip(1).map(|e| sender.event(e)) {
        assert!(!event.sealed_text.is_empty(), "{:?}", event.kind);
    }
    for party in [&mlup, &legal] {
        let (view, _) = workflow.get(party, id).await.unwrap();
        assert_eq!(
            view.referral().notify,
            std::slice::from_ref(&dosvy),
            "{party}"
        );
    }
    for (n, kind) in [
        EventKind::Acknowledged,
        EventKind::Accepted,
        EventKind::Declined,
        EventKind::FollowUp,
        EventKind::Completed,
        EventKind::Withdrawn,
    ]
    .into_iter()
    .enumerate()
    {
        match workflow
            .act(
                &dosvy,
                action(id, &format!("dosvy-{n}"), kind, EventDetails::None),
            )
            .await
        {
            Err(BrokerError::Forbidden(reason)) => assert!(reason.contains("notified"), "{reason}"),
            other => panic!("{kind}: {other:?}"),
        }
    }
    for (n, notify, why) in [
        (1, "nobody-here", "not an agency in the directory"),
        (2, "mlup-russey", "is the sender"),
        (3, "legal-aid-nw", "receives the referral"),
    ] {
        let mut request = spean_testkit::child_protection(&format!("cp-bad-{n}"));
        request.notify_agency_ids = vec![notify.into()];
        let new = spean_broker::wire::new_referral(request).unwrap();
        match workflow.submit(&mlup, new).await {
            Err(BrokerError::InvalidField(e)) => {
                assert_eq!(e.field, "notify_agency_ids");
                assert!(e.reason.contains(why), "{e}");
            }
            other => panic!("{notify}: {other:?}"),
        }
    }
}

/// Story 5: a referral names the one it follows, sent by the same agency about the same client;
/// naming another agency's referral, or the same client under another pseudonym, is refused.
pub(super) async fn a_referral_follows_one_its_sender_sent_about_the_same_client(f: Fixture) {
    let workflow = workflow(&f, TestClock::at(start())).await;
    let outreach = agency("mith-samlanh");
    let request = |key: &str, pseudonym: &str, follows: &str| pb::SubmitRequest {
        client_ref: key.into(),
        recipient: Some(pb::Recipient {
            target: Some(pb::recipient::Target::AgencyId("mlup-russey".into())),
        }),
        kind: "reintegration_follow_up".into(),
        urgency: pb::Urgency::Routine as i32,
        subject: Some(pb::Subject {
            sex: pb::Sex::Male as i32,
            age_band: pb::AgeBand::AgeBand1824 as i32,
            province: "12".into(),
        }),
        case_file: spean_testkit::case_file(),
        client_pseudonym: pseudonym.into(),
        follows_referral_id: follows.into(),
        consent: Some(spean_testkit::guardian_consent()),
        ..Default::default()
    };
    let submit = |r: pb::SubmitRequest, from: AgencyId| {
        let w = &workflow;
        let r = spean_testkit::sealed::sealed_submit(from.as_str(), r, &["mlup-russey"]);
        async move {
            w.submit(&from, spean_broker::wire::new_referral(r).unwrap())
                .await
        }
    };
    let (first, _, _) = submit(request("ms-1", "ms-0142", ""), outreach.clone())
        .await
        .unwrap();
    let first = first.referral().id;
    let (second, _, _) = submit(
        request("ms-2", "ms-0142", &first.to_string()),
        outreach.clone(),
    )
    .await
    .unwrap();
    assert_eq!(second.referral().follows, Some(first));
    let stored = f
        .store
        .referral(second.referral().id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.follows, Some(first));
    for (key, pseudonym, from, field) in [
        ("ms-3", "ms-9999", outreach.clone(), "client_pseudonym"),
        ("ahc-1", "ms-0142", agency("ahc-swu"), "follows_referral_id"),
    ] {
        match submit(request(key, pseudonym, &first.to_string()), from).await {
            Err(BrokerError::InvalidField(e)) => assert_eq!(e.field, field, "{e}"),
            other => panic!("{key}: {other:?}"),
        }
    }
}
