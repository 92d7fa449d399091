//! Follow-up schedules as the workflow runs them on each store, on a clock the test drives:
//! accepting starts the schedule, a follow-up moves it, a missed visit is recorded once however
//! many brokers look, and a delegate makes the visits until the delegation is taken back.

use std::sync::Arc;

use spean_broker::error::BrokerError;
use spean_broker::ids::{AgencyId, ReferralId, RequestId};
use spean_broker::referral::state::TransitionError;
use spean_broker::referral::{Action, Audience, EventDetails, EventKind, FreeText, Sealed};
use spean_broker::workflow::Workflow;
use time::{Duration, OffsetDateTime};

use super::escalation::{TestClock, agency, workflow};
use super::fixture::Fixture;

/// The repository's directory: a reintegration visit every 30 days, 7 days' grace.
const EVERY: Duration = Duration::days(30);
const GRACE: Duration = Duration::days(7);

fn start() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn action(id: ReferralId, key: &str, kind: EventKind, details: EventDetails) -> Action {
    Action {
        referral_id: id,
        request_id: RequestId::parse("request_id", key).unwrap(),
        actor_person: FreeText::line("actor_person", "សុភា", 64).unwrap(),
        note: FreeText::parse("note", "ជួបគ្រួសារនៅផ្ទះ", 512).unwrap(),
        kind,
        details,
        sealed_text: Default::default(),
    }
}

fn visit(id: ReferralId, key: &str) -> Action {
    action(
        id,
        key,
        EventKind::FollowUp,
        EventDetails::FollowUp {
            activity: spean_broker::referral::Code::parse("activity", "home_visit").unwrap(),
            date: "2027-01-15".into(),
        },
    )
}

/// A reintegration referral from the hospital to `mlup-russey` (Pailin), accepted an hour after
/// it was sent with a planned date already past: its first visit is due 30 days after the
/// acceptance.
pub(super) async fn accepted_reintegration(
    w: &Workflow,
    clock: &TestClock,
    key: &str,
) -> ReferralId {
    let mut request = spean_testkit::lama(key);
    request.kind = "reintegration_follow_up".into();
    let new = spean_broker::wire::new_referral(request).unwrap();
    clock.set(start());
    let (view, _, _) = w.submit(&agency("ahc-swu"), new).await.unwrap();
    let id = view.referral().id;
    clock.set(start() + Duration::hours(1));
    let mut acceptance = action(
        id,
        &format!("{key}-accept"),
        EventKind::Accepted,
        EventDetails::Accepted {
            planned_action: FreeText::parse("p", "home visits", 64).unwrap(),
            planned_date: "2020-01-01".into(),
        },
    );
    acceptance.sealed_text = said_by("mlup-russey", id, "home visits", &["ahc-swu"]);
    let (accepted, _) = w.act(&agency("mlup-russey"), acceptance).await.unwrap();
    let next = accepted
        .next_visit
        .expect("the acceptance starts the schedule");
    assert_eq!(next.due_at, start() + Duration::hours(1) + EVERY);
    assert_eq!(
        (next.every_seconds, next.grace_seconds),
        (30 * 86_400, 7 * 86_400)
    );
    id
}

/// Free text `detail` sealed by `by` (test keys) to itself and `to`, as its adapter seals it.
fn said_by(by: &str, id: ReferralId, detail: &str, to: &[&str]) -> Sealed {
    Sealed::new(spean_testkit::sealed::seal_text(
        by,
        &id.to_string(),
        &spean_proto::v1::FreeText {
            actor_person: "សុភា".into(),
            note: String::new(),
            detail: detail.into(),
        },
        to,
    ))
}

/// `reader`'s box of an event's sealed free text, opened; `None` if it holds none.
fn opened(reader: &str, id: ReferralId, sealed: &Sealed) -> Option<spean_proto::v1::FreeText> {
    let plain = spean_testkit::sealed::open(
        reader,
        sealed.as_bytes(),
        spean_seal::Purpose::FreeText {
            referral_id: &id.to_string(),
        },
    )?;
    prost::Message::decode(plain.as_slice()).ok()
}

fn missed(history: &[spean_broker::referral::Event]) -> Vec<(OffsetDateTime, u32, String)> {
    history
        .iter()
        .filter_map(|e| match &e.details {
            EventDetails::FollowUpOverdue {
                due_at,
                missed_in_a_row,
                ..
            } => Some((*due_at, *missed_in_a_row, e.actor.to_string())),
            _ => None,
        })
        .collect()
}

/// Four workflows (as four brokers on one store) look for missed visits again and again while
/// time moves on: every visit not made by its due date plus grace is recorded once, with when it
/// was due and how many were missed in a row; a follow-up moves the schedule on and starts the
/// count again; the coordinator is told and becomes a notified party.
pub(super) async fn a_missed_visit_is_recorded_once_however_many_look(f: Fixture) {
    let clock = TestClock::at(start());
    let mut brokers = Vec::new();
    for _ in 0..4 {
        brokers.push(Arc::new(workflow(&f, clock.clone()).await));
    }
    let id = accepted_reintegration(&brokers[0], &clock, "visits").await;
    let accepted_at = start() + Duration::hours(1);
    // A visit on day 20 moves the next one to day 50.
    clock.set(accepted_at + Duration::days(20));
    let (made, _) = brokers[1]
        .act(&agency("mlup-russey"), visit(id, "visit-1"))
        .await
        .unwrap();
    assert_eq!(
        made.next_visit.unwrap().due_at,
        accepted_at + Duration::days(50)
    );
    let look = |at: OffsetDateTime| {
        clock.set(at);
        let brokers = brokers.clone();
        async move {
            let mut looking = tokio::task::JoinSet::new();
            for _ in 0..3 {
                for w in &brokers {
                    let w = w.clone();
                    looking.spawn(async move { w.escalate_due().await.unwrap() });
                }
            }
            let mut fired = 0;
            while let Some(n) = looking.join_next().await {
                fired += n.unwrap();
            }
            fired
        }
    };
    // Just before the grace runs out: nothing.
    assert_eq!(
        look(accepted_at + Duration::days(57) - Duration::seconds(1)).await,
        0
    );
    assert_eq!(look(accepted_at + Duration::days(57)).await, 1);
    let history = f.store.history(id).await.unwrap();
    assert_eq!(
        missed(&history),
        [(
            accepted_at + Duration::days(50),
            1,
            "mlup-russey".to_owned()
        )]
    );
    let overdue = history.last().unwrap();
    assert_eq!(
        overdue.next_visit.unwrap().due_at,
        accepted_at + Duration::days(80)
    );
    assert!(overdue.note.as_str().is_empty() && overdue.actor_person.as_str().is_empty());
    let snapshot = f.store.snapshot(id).await.unwrap().unwrap();
    assert_eq!(snapshot.notified, [agency("mosvy-coord")]);
    // Two months on, without a visit: the visits of day 80 and 110 are missed (day 140's is not
    // yet), one record each, whoever looks and however often.
    let later = accepted_at + Duration::days(140);
    while look(later).await > 0 {}
    let history = f.store.history(id).await.unwrap();
    assert_eq!(
        missed(&history)
            .iter()
            .map(|(due, n, _)| (*due, *n))
            .collect::<Vec<_>>(),
        [
            (accepted_at + Duration::days(50), 1),
            (accepted_at + Duration::days(80), 2),
            (accepted_at + Duration::days(110), 3),
        ]
    );
    // A visit starts the count again.
    brokers[0]
        .act(&agency("mlup-russey"), visit(id, "visit-2"))
        .await
        .unwrap();
    let timer = f.store.deadline(id).await.unwrap().unwrap();
    assert_eq!(
        (timer.due_at, timer.escalations),
        (later + EVERY + GRACE, 0)
    );
    // Closing the loop stops the schedule.
    brokers[0]
        .act(
            &agency("mlup-russey"),
            action(
                id,
                "complete",
                EventKind::Completed,
                EventDetails::Completed {
                    outcome_code: spean_broker::referral::Code::parse("o", "child_well_in_school")
                        .unwrap(),
                    summary: FreeText::default(),
                },
            ),
        )
        .await
        .unwrap();
    assert_eq!(f.store.deadline(id).await.unwrap(), None);
    assert_eq!(look(later + Duration::days(365)).await, 0);
}

/// A visit recorded at the moment it would be missed races the brokers looking: either the visit
/// came first and nothing is missed, or the miss came first and the visit then moves the
/// schedule on; never a miss after the visit.
pub(super) async fn a_visit_crossing_its_deadline_is_never_followed_by_a_miss(f: Fixture) {
    let clock = TestClock::at(start());
    let w = Arc::new(workflow(&f, clock.clone()).await);
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(accepted_reintegration(&w, &clock, &format!("race-{n}")).await);
    }
    clock.set(start() + Duration::hours(1) + EVERY + GRACE);
    let mut racing = tokio::task::JoinSet::new();
    for (n, id) in ids.iter().copied().enumerate() {
        let w2 = w.clone();
        racing.spawn(async move {
            w2.act(&agency("mlup-russey"), visit(id, &format!("v-{n}")))
                .await
                .map(|_| ())
        });
        let w2 = w.clone();
        racing.spawn(async move { w2.escalate_due().await.map(|_| ()) });
    }
    while let Some(done) = racing.join_next().await {
        done.unwrap().unwrap();
    }
    assert_eq!(w.escalate_due().await.unwrap(), 0);
    for id in ids {
        let kinds: Vec<EventKind> = f
            .store
            .history(id)
            .await
            .unwrap()
            .iter()
            .map(|e| e.kind)
            .collect();
        let visit = kinds
            .iter()
            .position(|k| *k == EventKind::FollowUp)
            .unwrap();
        assert!(
            !kinds[visit..].contains(&EventKind::FollowUpOverdue),
            "missed after the visit: {kinds:?}"
        );
        assert_eq!(f.store.deadline(id).await.unwrap().unwrap().escalations, 0);
    }
}

/// Story 6: `mlup-russey` delegates the visits to `dosvy-24`, which reads the delegation whole
/// (its reason and the case file's follow-up part) and the rest as a skeleton, records visits
/// (with who made them, for everyone), is held responsible for missed ones, and can do nothing
/// else; taken back, it can no longer record visits nor read the follow-up part.
pub(super) async fn a_delegate_records_visits_until_the_delegation_is_taken_back(f: Fixture) {
    let clock = TestClock::at(start());
    let w = workflow(&f, clock.clone()).await;
    let id = accepted_reintegration(&w, &clock, "delegated").await;
    let (ngo, province) = (agency("mlup-russey"), agency("dosvy-24"));
    let part = Sealed::new(spean_testkit::sealed::seal_follow_up_part(
        "mlup-russey",
        &id.to_string(),
        "សុខ ស្រីល័ក្ខ, ភូមិអូរតាវ៉ៅ".as_bytes(),
        "dosvy-24",
    ));
    let delegate = |to: &str, key: &str| Action {
        sealed_text: said_by("mlup-russey", id, "movement restrictions", &[to, "ahc-swu"]),
        ..action(
            id,
            key,
            EventKind::FollowUpDelegated,
            EventDetails::FollowUpDelegated {
                to: agency(to),
                reason: FreeText::parse("reason", "movement restrictions", 256).unwrap(),
                follow_up_part: part.clone(),
            },
        )
    };
    // Only the recipient delegates, to another agency than the two parties, one at a time.
    let refused = w.act(&agency("ahc-swu"), delegate("dosvy-24", "d-0")).await;
    assert!(
        matches!(
            refused,
            Err(BrokerError::Transition(TransitionError::WrongParty { .. }))
        ),
        "{refused:?}"
    );
    let refused = w.act(&ngo, delegate("ahc-swu", "d-1")).await.unwrap_err();
    assert!(
        matches!(refused, BrokerError::InvalidField(ref e) if e.field == "delegation.to_agency_id")
    );
    clock.set(start() + Duration::days(2));
    let (delegated, _) = w.act(&ngo, delegate("dosvy-24", "d-2")).await.unwrap();
    assert_eq!(
        delegated.next_visit.unwrap().due_at,
        start() + Duration::hours(1) + EVERY,
        "the delegate learns when the next visit is due"
    );
    let again = w.act(&ngo, delegate("dosvy-15", "d-3")).await.unwrap_err();
    assert!(matches!(again, BrokerError::Precondition(_)), "{again:?}");

    let (view, history) = w.get(&province, id).await.unwrap();
    assert_eq!(view.audience(), Audience::Delegate);
    assert!(view.referral().case_file.is_empty());
    let seen: Vec<_> = history.iter().map(|e| view.event(e).into_owned()).collect();
    let delegation = seen
        .iter()
        .find(|e| e.kind == EventKind::FollowUpDelegated)
        .unwrap();
    assert!(
        matches!(&delegation.details, EventDetails::FollowUpDelegated { follow_up_part, .. } if *follow_up_part == part)
    );
    assert_eq!(
        opened("dosvy-24", id, &delegation.sealed_text).map(|t| t.detail),
        Some("movement restrictions".to_owned()),
        "the delegate reads why it is asked"
    );
    let acceptance = seen.iter().find(|e| e.kind == EventKind::Accepted).unwrap();
    assert!(acceptance.note.as_str().is_empty() && acceptance.actor_person.as_str().is_empty());
    assert!(
        acceptance.sealed_text.is_empty(),
        "the delegate gets no box of the acceptance's text"
    );

    // The delegate makes a visit; the sender reads who made it.
    clock.set(start() + Duration::days(10));
    let (made, _) = w.act(&province, visit(id, "by-province")).await.unwrap();
    assert_eq!(made.actor, province);
    let (sender_view, history) = w.get(&agency("ahc-swu"), id).await.unwrap();
    let visit_seen = sender_view.event(history.last().unwrap());
    assert_eq!(visit_seen.actor, province);
    assert_eq!(visit_seen.actor_person.as_str(), "សុភា");
    // It may not close the referral.
    let close = w
        .act(
            &province,
            action(
                id,
                "close",
                EventKind::Failed,
                EventDetails::Failed {
                    reason: FreeText::parse("r", "x", 8).unwrap(),
                },
            ),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        close,
        BrokerError::Transition(TransitionError::WrongParty { .. })
    ));
    // A visit it misses is its own.
    clock.set(start() + Duration::days(10) + EVERY + GRACE);
    assert_eq!(w.escalate_due().await.unwrap(), 1);
    let history = f.store.history(id).await.unwrap();
    assert_eq!(missed(&history).last().unwrap().2, "dosvy-24");

    // Taken back: no more visits, and the follow-up part is withheld again.
    let revoke = || {
        action(
            id,
            "revoke",
            EventKind::DelegationRevoked,
            EventDetails::None,
        )
    };
    let (first, _) = w.act(&ngo, revoke()).await.unwrap();
    // Sent again (the daemon and a command racing), it answers the same: the broker filled in
    // whom it was taken from, which the request does not say.
    let (again, _) = w.act(&ngo, revoke()).await.unwrap();
    assert_eq!(again.id, first.id);
    let revoked = f.store.history(id).await.unwrap();
    assert!(matches!(
        &revoked.last().unwrap().details,
        EventDetails::DelegationRevoked { from } if *from == province
    ));
    let refused = w
        .act(&province, visit(id, "after-revoke"))
        .await
        .unwrap_err();
    assert!(matches!(refused, BrokerError::Forbidden(_)), "{refused:?}");
    let (view, history) = w.get(&province, id).await.unwrap();
    assert_eq!(view.audience(), Audience::Notified);
    for e in &history {
        let seen = view.event(e);
        if let EventDetails::FollowUpDelegated { follow_up_part, .. } = &seen.details {
            assert!(
                follow_up_part.is_empty(),
                "a former delegate reads the follow-up part"
            );
            assert!(
                seen.sealed_text.is_empty(),
                "a former delegate reads the delegation's reason"
            );
        }
    }
    // Nothing to take back twice.
    let twice = w
        .act(
            &ngo,
            action(
                id,
                "revoke-2",
                EventKind::DelegationRevoked,
                EventDetails::None,
            ),
        )
        .await
        .unwrap_err();
    assert!(matches!(twice, BrokerError::Precondition(_)), "{twice:?}");
    let _: Option<AgencyId> = None;
}
