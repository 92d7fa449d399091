//! Acknowledgement deadlines and the agencies an escalation notifies: a deadline is written with
//! the submit or change that sets it and only if that write applies, falls due when its time has
//! passed, and outlives the store that wrote it.

use std::sync::Arc;

use spean_broker::referral::{EventKind, Referral, State};
use spean_broker::store::postgres::BatchCounts;
use spean_broker::store::{
    Change, ChangeOutcome, DeadlineChange, DueDeadline, Store, SubmitOutcome,
};
use time::{Duration, OffsetDateTime};

use super::fixture::Fixture;
use super::sample::{agency, all_at_once, change, delivery, event, referral, submit};

/// A moment an hour or more ahead, in whole seconds, so that it reads back equal whatever the
/// stored precision.
fn later(hours: i64) -> OffsetDateTime {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    OffsetDateTime::from_unix_timestamp(now + hours * 3_600).unwrap()
}

fn due(r: &Referral, due_at: OffsetDateTime, escalations: u32) -> DueDeadline {
    DueDeadline {
        referral_id: r.id,
        due_at,
        escalations,
    }
}

/// Submits a new referral with `deadline`; it must be created.
async fn submit_due(
    store: &Arc<dyn Store>,
    client_ref: &str,
    deadline: Option<OffsetDateTime>,
) -> Referral {
    let r = referral(client_ref);
    let e = event(&r, EventKind::Submitted, "ahc-swu", State::Sent, None);
    let d = [delivery(r.recipient.clone().unwrap(), None)];
    let outcome = store.submit(&r, &e, &d, deadline).await.unwrap();
    assert!(matches!(outcome, SubmitOutcome::Created), "{outcome:?}");
    r
}

/// A `delivered` change of `r` read at `version`, with `deadline` and `notified`.
fn escalating(r: &Referral, version: i64, deadline: DeadlineChange, notified: &[&str]) -> Change {
    let e = event(
        r,
        EventKind::Delivered,
        "mlup-russey",
        State::Delivered,
        None,
    );
    Change {
        deadline,
        notified: notified.iter().map(|a| agency(a)).collect(),
        ..change(r, version, e, State::Delivered)
    }
}

pub(super) async fn a_submitted_deadline_falls_due_once_its_time_has_passed(f: Fixture) {
    let store = f.store.clone();
    let at = later(1);
    let r = submit_due(&store, "d-1", Some(at)).await;
    assert!(
        store
            .due_deadlines(at - Duration::seconds(1), 10)
            .await
            .unwrap()
            .is_empty(),
        "a deadline fell due before its time"
    );
    assert_eq!(store.due_deadlines(at, 10).await.unwrap(), [due(&r, at, 0)]);
    assert_eq!(store.deadline(r.id).await.unwrap(), Some(due(&r, at, 0)));

    // A repeated submit finds the referral and writes no deadline of its own.
    let again = referral("d-1");
    let e = event(&again, EventKind::Submitted, "ahc-swu", State::Sent, None);
    let outcome = store
        .submit(&again, &e, &[], Some(at - Duration::minutes(30)))
        .await
        .unwrap();
    assert!(matches!(outcome, SubmitOutcome::Existing(_)), "{outcome:?}");
    assert_eq!(
        store.due_deadlines(later(3), 10).await.unwrap(),
        [due(&r, at, 0)]
    );
    assert_eq!(store.deadline(again.id).await.unwrap(), None);

    // A submit without a deadline keeps none.
    let plain = submit(&store, "d-plain").await;
    assert_eq!(store.deadline(plain.id).await.unwrap(), None);
    assert_eq!(store.due_deadlines(later(3), 10).await.unwrap().len(), 1);
}

/// Submits that arrive together (one statement on PostgreSQL) each keep their own deadline, or
/// none; due deadlines come oldest first, as many as asked for.
pub(super) async fn submits_made_at_once_keep_their_deadlines_and_fall_due_oldest_first(
    f: Fixture,
) {
    let store = f.store.clone();
    let base = later(1);
    let submitted = all_at_once(&store, 16, |i, store| {
        let r = referral(&format!("dt-{i}"));
        let e = event(&r, EventKind::Submitted, "ahc-swu", State::Sent, None);
        let d = [delivery(r.recipient.clone().unwrap(), None)];
        // Every other one has a deadline, the later the submit's number the earlier it falls due.
        let deadline = (i % 2 == 0).then(|| base - Duration::minutes(i as i64));
        async move {
            let outcome = store.submit(&r, &e, &d, deadline).await.unwrap();
            assert!(matches!(outcome, SubmitOutcome::Created), "{outcome:?}");
            (r, deadline)
        }
    })
    .await;
    let mut want: Vec<DueDeadline> = submitted
        .iter()
        .filter_map(|(r, deadline)| deadline.map(|at| due(r, at, 0)))
        .collect();
    want.sort_by_key(|d| d.due_at);
    assert_eq!(want.len(), 8);
    assert_eq!(store.due_deadlines(base, 100).await.unwrap(), want);
    assert_eq!(store.due_deadlines(base, 3).await.unwrap(), want[..3]);
    for (r, deadline) in &submitted {
        assert_eq!(
            store.deadline(r.id).await.unwrap(),
            deadline.map(|at| due(r, at, 0))
        );
    }
}

pub(super) async fn a_change_sets_clears_or_keeps_the_deadline(f: Fixture) {
    let store = f.store.clone();
    let first = later(1);
    let r = submit_due(&store, "d-2", Some(first)).await;

    let kept = escalating(&r, 1, DeadlineChange::Keep, &[]);
    assert!(matches!(
        store.apply(&kept).await.unwrap(),
        ChangeOutcome::Recorded
    ));
    assert_eq!(store.deadline(r.id).await.unwrap(), Some(due(&r, first, 0)));

    let moved = later(2);
    let set = DeadlineChange::Set {
        due_at: moved,
        escalations: 1,
    };
    assert!(matches!(
        store.apply(&escalating(&r, 2, set, &[])).await.unwrap(),
        ChangeOutcome::Recorded
    ));
    assert_eq!(store.deadline(r.id).await.unwrap(), Some(due(&r, moved, 1)));
    assert!(store.due_deadlines(first, 10).await.unwrap().is_empty());
    assert_eq!(
        store.due_deadlines(moved, 10).await.unwrap(),
        [due(&r, moved, 1)]
    );

    // A stale change writes no deadline.
    let stale = DeadlineChange::Set {
        due_at: first,
        escalations: 7,
    };
    assert!(matches!(
        store.apply(&escalating(&r, 2, stale, &[])).await.unwrap(),
        ChangeOutcome::Stale
    ));
    assert_eq!(store.deadline(r.id).await.unwrap(), Some(due(&r, moved, 1)));

    let cleared = escalating(&r, 3, DeadlineChange::Clear, &[]);
    assert!(matches!(
        store.apply(&cleared).await.unwrap(),
        ChangeOutcome::Recorded
    ));
    assert_eq!(store.deadline(r.id).await.unwrap(), None);
    assert!(store.due_deadlines(later(3), 10).await.unwrap().is_empty());

    // A deadline set on a referral that had none is inserted; clearing none is harmless.
    let plain = submit(&store, "d-2-plain").await;
    assert!(matches!(
        store
            .apply(&escalating(&plain, 1, DeadlineChange::Clear, &[]))
            .await
            .unwrap(),
        ChangeOutcome::Recorded
    ));
    assert!(matches!(
        store.apply(&escalating(&plain, 2, set, &[])).await.unwrap(),
        ChangeOutcome::Recorded
    ));
    assert_eq!(
        store.deadline(plain.id).await.unwrap(),
        Some(due(&plain, moved, 1))
    );
}

/// `apply_all` (one statement on PostgreSQL) writes each change's deadline and notified agencies
/// as `apply` would: kept, set, cleared, and none of a stale change's.
pub(super) async fn changes_applied_together_set_clear_and_notify_each_on_their_own(f: Fixture) {
    let store = f.store.clone();
    let first = later(1);
    let (keep, set, clear, stale) = (
        submit_due(&store, "dm-keep", Some(first)).await,
        submit_due(&store, "dm-set", Some(first)).await,
        submit_due(&store, "dm-clear", Some(first)).await,
        submit_due(&store, "dm-stale", Some(first)).await,
    );
    let moved = later(2);
    let to = DeadlineChange::Set {
        due_at: moved,
        escalations: 2,
    };
    let changes = [
        escalating(&keep, 1, DeadlineChange::Keep, &[]),
        escalating(&set, 1, to, &["dosvy-24", "ssc-smhs"]),
        escalating(&clear, 1, DeadlineChange::Clear, &["dosvy-24"]),
        escalating(&stale, 2, to, &["ssc-smhs"]),
    ];
    let outcomes = store.apply_all(&changes).await.unwrap();
    assert!(
        matches!(
            outcomes[..],
            [
                ChangeOutcome::Recorded,
                ChangeOutcome::Recorded,
                ChangeOutcome::Recorded,
                ChangeOutcome::Stale
            ]
        ),
        "{outcomes:?}"
    );
    if let Some(batches) = f.batches() {
        assert_eq!(
            batches,
            BatchCounts {
                written: 1,
                refused: 0
            }
        );
    }
    assert_eq!(
        store.deadline(keep.id).await.unwrap(),
        Some(due(&keep, first, 0))
    );
    assert_eq!(
        store.deadline(set.id).await.unwrap(),
        Some(due(&set, moved, 2))
    );
    assert_eq!(store.deadline(clear.id).await.unwrap(), None);
    assert_eq!(
        store.deadline(stale.id).await.unwrap(),
        Some(due(&stale, first, 0))
    );
    let notified = |id| {
        let store = store.clone();
        async move { store.snapshot(id).await.unwrap().unwrap().notified }
    };
    assert_eq!(
        notified(set.id).await,
        [agency("dosvy-24"), agency("ssc-smhs")]
    );
    assert_eq!(notified(clear.id).await, [agency("dosvy-24")]);
    assert!(notified(keep.id).await.is_empty());
    assert!(notified(stale.id).await.is_empty());
    assert!(
        !store
            .has_access(&agency("ssc-smhs"), stale.id)
            .await
            .unwrap()
    );

    // A batch of changes none of which touches a deadline leaves every deadline as it was.
    let plain = [
        escalating(&keep, 2, DeadlineChange::Keep, &[]),
        escalating(&set, 2, DeadlineChange::Keep, &[]),
    ];
    let outcomes = store.apply_all(&plain).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, ChangeOutcome::Recorded)),
        "{outcomes:?}"
    );
    // Oldest first; equal due times in referral id order.
    let mut want = vec![
        due(&keep, first, 0),
        due(&stale, first, 0),
        due(&set, moved, 2),
    ];
    want.sort_by_key(|d| (d.due_at, d.referral_id));
    assert_eq!(store.due_deadlines(later(3), 10).await.unwrap(), want);
}

/// Several brokers escalating the same due deadline at once: one change wins the version, and
/// only its deadline and its notified agency are written.
pub(super) async fn of_changes_racing_on_one_version_only_the_winner_moves_the_deadline_and_notifies(
    f: Fixture,
) {
    let store = f.store.clone();
    let first = later(1);
    let r = submit_due(&store, "d-race", Some(first)).await;
    let outcomes = all_at_once(&store, 8, |n, store| {
        let c = escalating(
            &r,
            1,
            DeadlineChange::Set {
                due_at: first + Duration::minutes(n as i64 + 1),
                escalations: n as u32 + 1,
            },
            &[&format!("esc-{n}")],
        );
        async move { (n, store.apply(&c).await.unwrap()) }
    })
    .await;
    let winners: Vec<usize> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, ChangeOutcome::Recorded))
        .map(|(n, _)| *n)
        .collect();
    let [winner] = winners[..] else {
        panic!("expected one change to win: {outcomes:?}");
    };
    assert_eq!(
        store.deadline(r.id).await.unwrap(),
        Some(due(
            &r,
            first + Duration::minutes(winner as i64 + 1),
            winner as u32 + 1
        ))
    );
    let snapshot = store.snapshot(r.id).await.unwrap().unwrap();
    assert_eq!(snapshot.notified, [agency(&format!("esc-{winner}"))]);
    for n in 0..8 {
        assert_eq!(
            store
                .has_access(&agency(&format!("esc-{n}")), r.id)
                .await
                .unwrap(),
            n == winner,
            "esc-{n}"
        );
    }
}

pub(super) async fn notified_agencies_gain_access_and_a_party_stays_a_party(f: Fixture) {
    let store = f.store.clone();
    let r = submit(&store, "d-notify").await;
    assert!(!store.has_access(&agency("dosvy-24"), r.id).await.unwrap());
    // The sender is a party already: notifying it leaves it one. A name given twice is one row.
    let c = escalating(
        &r,
        1,
        DeadlineChange::Keep,
        &["dosvy-24", "ahc-swu", "dosvy-24"],
    );
    assert!(matches!(
        store.apply(&c).await.unwrap(),
        ChangeOutcome::Recorded
    ));
    assert!(store.has_access(&agency("dosvy-24"), r.id).await.unwrap());
    let snapshot = store.snapshot(r.id).await.unwrap().unwrap();
    assert_eq!(
        snapshot.parties,
        [agency("ahc-swu"), agency("dosvy-24"), agency("mlup-russey")]
    );
    assert_eq!(snapshot.notified, [agency("dosvy-24")]);
    // The snapshots of a batch read the same.
    let snapshots = store.snapshots(&[r.id]).await.unwrap();
    assert_eq!(snapshots[0].parties, snapshot.parties);
    assert_eq!(snapshots[0].notified, snapshot.notified);

    // A notified agency that the referral is redirected to becomes a party; one notified in the
    // same change as it is redirected to is a party too.
    let e = event(&r, EventKind::Redirected, "mlup-russey", State::Sent, None);
    let mut redirect = change(&r, 2, e, State::Sent);
    redirect.new_recipient = Some(agency("dosvy-24"));
    redirect.notified = vec![agency("dosvy-24"), agency("ssc-smhs")];
    assert!(matches!(
        store.apply(&redirect).await.unwrap(),
        ChangeOutcome::Recorded
    ));
    let snapshot = store.snapshot(r.id).await.unwrap().unwrap();
    assert_eq!(
        snapshot.parties,
        [
            agency("ahc-swu"),
            agency("dosvy-24"),
            agency("mlup-russey"),
            agency("ssc-smhs")
        ]
    );
    assert_eq!(snapshot.notified, [agency("ssc-smhs")]);

    // The same through a batch, beside another change: the redirect to an agency notified in the
    // same change makes it a party, not notified.
    let other = submit(&store, "d-notify-other").await;
    let e = event(&r, EventKind::Redirected, "dosvy-24", State::Sent, None);
    let mut back = change(&r, 3, e, State::Sent);
    back.new_recipient = Some(agency("ssc-smhs"));
    back.notified = vec![agency("ssc-smhs"), agency("moi-24")];
    let batch = [
        back,
        escalating(&other, 1, DeadlineChange::Keep, &["moi-24"]),
    ];
    let outcomes = store.apply_all(&batch).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, ChangeOutcome::Recorded)),
        "{outcomes:?}"
    );
    let snapshot = store.snapshot(r.id).await.unwrap().unwrap();
    assert_eq!(snapshot.notified, [agency("moi-24")]);
    assert_eq!(snapshot.parties.len(), 5);
    assert_eq!(
        store.snapshot(other.id).await.unwrap().unwrap().notified,
        [agency("moi-24")]
    );
}

/// Deadlines are rows of the database: a store opened on it again (a restarted broker, or
/// another broker process) finds them as they were written.
pub(super) async fn deadlines_outlive_reopening_the_store(f: Fixture) {
    let store = f.store.clone();
    let at = later(1);
    let r = submit_due(&store, "d-restart", Some(at)).await;
    let moved = submit_due(&store, "d-restart-moved", Some(at)).await;
    let next = later(2);
    let set = DeadlineChange::Set {
        due_at: next,
        escalations: 1,
    };
    store
        .apply(&escalating(&moved, 1, set, &["dosvy-24"]))
        .await
        .unwrap();
    let reopened = f.reopen().await;
    assert_eq!(
        reopened.due_deadlines(later(3), 10).await.unwrap(),
        [due(&r, at, 0), due(&moved, next, 1)]
    );
    assert_eq!(
        reopened.snapshot(moved.id).await.unwrap().unwrap().notified,
        [agency("dosvy-24")]
    );
}
