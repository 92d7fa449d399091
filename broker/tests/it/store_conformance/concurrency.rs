//! Calls made at the same moment: races on a version, a request id or a `client_ref` have one
//! winner, and writes committed together stay independent.

use std::sync::Arc;

use spean_broker::referral::{EventKind, State};
use spean_broker::store::{Change, ChangeOutcome, SubmitOutcome};

use super::fixture::Fixture;
use super::sample::{agency, all_at_once, change, delivery, event, referral, submit};

/// Writes that run together (the embedded store commits concurrent writes in one transaction) stay
/// independent: one that fails half-way leaves nothing of itself and takes nothing of the others.
pub(super) async fn a_failed_write_leaves_nothing_and_spares_the_writes_beside_it(f: Fixture) {
    let store = f.store.clone();
    let broken = submit(&store, "w-broken").await;
    let fine = submit(&store, "w-fine").await;
    // An event id that already exists: the state update succeeds, then the event insert fails.
    let taken = store.history(broken.id).await.unwrap()[0].id;
    let results = all_at_once(&store, 6, |n, store| {
        let (broken, fine) = (broken.clone(), fine.clone());
        async move {
            match n {
                0 => {
                    let mut e = event(
                        &broken,
                        EventKind::Acknowledged,
                        "mlup-russey",
                        State::Acknowledged,
                        None,
                    );
                    e.id = taken;
                    store
                        .apply(&change(&broken, 1, e, State::Acknowledged))
                        .await
                        .is_ok()
                }
                1 => {
                    let e = event(
                        &fine,
                        EventKind::Acknowledged,
                        "mlup-russey",
                        State::Acknowledged,
                        None,
                    );
                    matches!(
                        store
                            .apply(&change(&fine, 1, e, State::Acknowledged))
                            .await
                            .unwrap(),
                        ChangeOutcome::Recorded
                    )
                }
                n => {
                    let r = referral(&format!("w-new-{n}"));
                    let e = event(&r, EventKind::Submitted, "ahc-swu", State::Sent, None);
                    let d = [delivery(r.recipient.clone().unwrap(), None)];
                    matches!(
                        store.submit(&r, &e, &d, None).await.unwrap(),
                        SubmitOutcome::Created
                    )
                }
            }
        }
    })
    .await;
    assert_eq!(results, [false, true, true, true, true, true]);
    let after = store.referral(broken.id).await.unwrap().unwrap();
    assert_eq!((after.state, after.version), (State::Sent, 1));
    assert_eq!(store.history(broken.id).await.unwrap().len(), 1);
    assert_eq!(store.referral(fine.id).await.unwrap().unwrap().version, 2);
    // broken and fine's submits, fine's acknowledgement to its sender, four new referrals.
    let ngo = store.mailbox(&agency("mlup-russey"), 0, 100).await.unwrap();
    let hospital = store.mailbox(&agency("ahc-swu"), 0, 100).await.unwrap();
    assert_eq!((ngo.len(), hospital.len()), (6, 1));
}

pub(super) async fn concurrent_changes_on_one_version_record_exactly_one(f: Fixture) {
    let store = f.store.clone();
    let r = submit(&store, "race").await;
    let outcomes = all_at_once(&store, 8, |n, store| {
        let e = event(
            &r,
            EventKind::Acknowledged,
            "mlup-russey",
            State::Acknowledged,
            Some(&format!("race-{n}")),
        );
        let c = change(&r, 1, e, State::Acknowledged);
        async move { store.apply(&c).await.unwrap() }
    })
    .await;
    let recorded = outcomes
        .iter()
        .filter(|o| matches!(o, ChangeOutcome::Recorded))
        .count();
    let stale = outcomes
        .iter()
        .filter(|o| matches!(o, ChangeOutcome::Stale))
        .count();
    assert_eq!((recorded, stale), (1, 7));
    assert_eq!(store.history(r.id).await.unwrap().len(), 2);
    assert_eq!(store.referral(r.id).await.unwrap().unwrap().version, 2);
}

pub(super) async fn concurrent_retries_of_one_request_record_it_once(f: Fixture) {
    let store = f.store.clone();
    let r = submit(&store, "retry").await;
    let outcomes = all_at_once(&store, 8, |_, store| {
        let e = event(
            &r,
            EventKind::Acknowledged,
            "mlup-russey",
            State::Acknowledged,
            Some("one-request"),
        );
        let c = change(&r, 1, e, State::Acknowledged);
        async move { (c.event.id, store.apply(&c).await.unwrap()) }
    })
    .await;
    let mut recorded = Vec::new();
    let mut replayed = Vec::new();
    for (id, outcome) in outcomes {
        match outcome {
            ChangeOutcome::Recorded => recorded.push(id),
            ChangeOutcome::Duplicate(done) => replayed.push(done.id),
            ChangeOutcome::Stale => panic!("a retry of a recorded request was called stale"),
        }
    }
    assert_eq!(recorded.len(), 1);
    assert!(replayed.iter().all(|id| *id == recorded[0]));
    let history = store.history(r.id).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].id, recorded[0]);
}

pub(super) async fn concurrent_submits_of_one_client_ref_create_one_referral(f: Fixture) {
    let store = f.store.clone();
    let outcomes = all_at_once(&store, 8, |_, store| {
        let r = referral("same-client");
        let e = event(&r, EventKind::Submitted, "ahc-swu", State::Sent, None);
        let d = [delivery(r.recipient.clone().unwrap(), None)];
        async move { (r.id, store.submit(&r, &e, &d, None).await.unwrap()) }
    })
    .await;
    let mut created = Vec::new();
    let mut existing = Vec::new();
    for (id, outcome) in outcomes {
        match outcome {
            SubmitOutcome::Created => created.push(id),
            SubmitOutcome::Existing(r) => existing.push(r.id),
        }
    }
    assert_eq!(created.len(), 1);
    assert_eq!(existing.len(), 7);
    assert!(existing.iter().all(|id| *id == created[0]));
    if let Some(batches) = f.batches() {
        // The submits that met in one batch settled their shared client_ref inside it.
        assert!(batches.written >= 1 && batches.refused == 0, "{batches:?}");
    }
    assert_eq!(
        store
            .mailbox(&agency("mlup-russey"), 0, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.history(created[0]).await.unwrap().len(), 1);
}

/// Two batches on the same referrals, in opposite orders, at once (two streams of one agency, say):
/// every referral takes exactly one of the two changes made on its version, and neither batch fails.
pub(super) async fn crossing_batches_of_changes_record_each_change_once(f: Fixture) {
    let store = f.store.clone();
    let mut referrals = Vec::new();
    for i in 0..6 {
        referrals.push(submit(&store, &format!("x-{i}")).await);
    }
    let referrals = Arc::new(referrals);
    let results = all_at_once(&store, 2, |n, store| {
        let referrals = referrals.clone();
        async move {
            let mut changes: Vec<Change> = referrals
                .iter()
                .map(|r| {
                    let e = event(
                        r,
                        EventKind::Delivered,
                        "mlup-russey",
                        State::Delivered,
                        None,
                    );
                    change(r, 1, e, State::Delivered)
                })
                .collect();
            if n == 1 {
                changes.reverse();
            }
            store.apply_all(&changes).await.unwrap()
        }
    })
    .await;
    let recorded = results
        .iter()
        .flatten()
        .filter(|o| matches!(o, ChangeOutcome::Recorded))
        .count();
    assert_eq!(recorded, referrals.len(), "{results:?}");
    if let Some(batches) = f.batches() {
        assert_eq!(batches.written + batches.refused, 2, "{batches:?}");
    }
    for r in referrals.iter() {
        let history = store.history(r.id).await.unwrap();
        assert_eq!(history.len(), 2, "one change of the two recorded");
        assert_eq!(store.referral(r.id).await.unwrap().unwrap().version, 2);
    }
}

/// One acknowledgement sent eight times at once through the workflow, as an adapter's daemon and
/// a command race to send the same outbox row: every call answers with the one event recorded,
/// including those that decided after another had already moved the referral on (which the state
/// machine alone would refuse as "cannot record acknowledged on a referral that is
/// acknowledged").
pub(super) async fn one_action_sent_at_once_many_times_answers_each_with_its_one_event(f: Fixture) {
    use spean_broker::ids::RequestId;
    use spean_broker::referral::{Action, EventDetails, FreeText, Sealed};

    let start = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let w =
        Arc::new(super::escalation::workflow(&f, super::escalation::TestClock::at(start)).await);
    let new = spean_broker::wire::new_referral(spean_testkit::lama("at-once")).unwrap();
    let (view, _, _) = w.submit(&agency("ahc-swu"), new).await.unwrap();
    let id = view.referral().id;
    let gate = Arc::new(tokio::sync::Barrier::new(8));
    let mut calls = Vec::new();
    for _ in 0..8 {
        let (w, gate) = (w.clone(), gate.clone());
        calls.push(tokio::spawn(async move {
            let ack = Action {
                referral_id: id,
                request_id: RequestId::parse("request_id", "ack-at-once").unwrap(),
                actor_person: FreeText::default(),
                note: FreeText::default(),
                kind: EventKind::Acknowledged,
                details: EventDetails::None,
                sealed_text: Sealed::default(),
            };
            gate.wait().await;
            w.act(&agency("mlup-russey"), ack).await
        }));
    }
    let mut ids = Vec::new();
    for call in calls {
        let (event, state) = call
            .await
            .unwrap()
            .expect("every call answers with the event");
        assert_eq!(state, State::Acknowledged);
        ids.push(event.id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one event for one request");
    let history = f.store.history(id).await.unwrap();
    assert_eq!(
        history
            .iter()
            .filter(|e| e.kind == EventKind::Acknowledged)
            .count(),
        1
    );
}
