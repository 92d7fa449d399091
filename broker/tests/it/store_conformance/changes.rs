//! Changing a referral: a change applies only to the version it was decided on, once per request
//! id, and whole or not at all, alone or with others.

use std::sync::Arc;
use std::time::Duration;

use spean_broker::ids::{ReferralId, RequestId};
use spean_broker::referral::{Event, EventKind, ListQuery, Referral, Role, State};
use spean_broker::store::postgres::BatchCounts;
use spean_broker::store::{Change, ChangeOutcome, Store};

use super::fixture::{Fixture, RawPool};
use super::sample::{agency, change, event, redirect, referral, submit};

pub(super) async fn a_change_applies_only_to_the_version_it_read(f: Fixture) {
    let store = f.store.clone();
    let r = submit(&store, "c-3").await;
    let e = event(
        &r,
        EventKind::Acknowledged,
        "mlup-russey",
        State::Acknowledged,
        Some("k1"),
    );
    assert!(matches!(
        store
            .apply(&change(&r, 1, e, State::Acknowledged))
            .await
            .unwrap(),
        ChangeOutcome::Recorded
    ));
    let stale = event(
        &r,
        EventKind::Declined,
        "mlup-russey",
        State::Declined,
        Some("k2"),
    );
    let mut stale = change(&r, 1, stale, State::Declined);
    stale.new_recipient = Some(agency("dosvy-24"));
    assert!(matches!(
        store.apply(&stale).await.unwrap(),
        ChangeOutcome::Stale
    ));
    // Nothing of the stale change was written: state, history, deliveries, access.
    let got = store.referral(r.id).await.unwrap().unwrap();
    assert_eq!((got.state, got.version), (State::Acknowledged, 2));
    assert_eq!(got.recipient, Some(agency("mlup-russey")));
    assert_eq!(store.history(r.id).await.unwrap().len(), 2);
    assert_eq!(store.mailbox(&r.sender, 0, 10).await.unwrap().len(), 1);
    assert!(!store.has_access(&agency("dosvy-24"), r.id).await.unwrap());
    assert!(store.event(stale.event.id).await.unwrap().is_none());
    let missing = change(&referral("c-none"), 1, stale.event.clone(), State::Declined);
    assert!(matches!(
        store.apply(&missing).await.unwrap(),
        ChangeOutcome::Stale
    ));
}

pub(super) async fn a_repeated_request_id_returns_the_first_event(f: Fixture) {
    let store = f.store.clone();
    let r = submit(&store, "c-4").await;
    let first = event(
        &r,
        EventKind::Acknowledged,
        "mlup-russey",
        State::Acknowledged,
        Some("same"),
    );
    store
        .apply(&change(&r, 1, first.clone(), State::Acknowledged))
        .await
        .unwrap();
    let retry = event(
        &r,
        EventKind::Acknowledged,
        "mlup-russey",
        State::Acknowledged,
        Some("same"),
    );
    match store
        .apply(&change(&r, 2, retry, State::Acknowledged))
        .await
        .unwrap()
    {
        ChangeOutcome::Duplicate(done) => assert_eq!(done.id, first.id),
        other => panic!("expected the first event, got {other:?}"),
    }
    // The retry wrote nothing: the version and the sender's mailbox are as the first call left them.
    assert_eq!(store.referral(r.id).await.unwrap().unwrap().version, 2);
    assert_eq!(store.mailbox(&r.sender, 0, 10).await.unwrap().len(), 1);
    let found = store
        .event_by_request(
            &agency("mlup-russey"),
            &RequestId::parse("r", "same").unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, first.id);
    assert_eq!(store.history(r.id).await.unwrap().len(), 2);
}

pub(super) async fn history_is_ordered_and_append_only(f: Fixture) {
    let store = f.store.clone();
    let r = submit(&store, "c-5").await;
    for (version, (kind, state)) in (1..).zip([
        (EventKind::Acknowledged, State::Acknowledged),
        (EventKind::Accepted, State::Accepted),
        (EventKind::FollowUp, State::Accepted),
    ]) {
        let e = event(&r, kind, "mlup-russey", state, None);
        store.apply(&change(&r, version, e, state)).await.unwrap();
    }
    let kinds: Vec<EventKind> = store
        .history(r.id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::Submitted,
            EventKind::Acknowledged,
            EventKind::Accepted,
            EventKind::FollowUp
        ]
    );
    // Neither backend lets history be rewritten, even by a direct statement.
    let refused = f.raw("UPDATE referral_events SET note = 'changed'").await;
    assert!(refused.is_err(), "an UPDATE of history succeeded");
    let refused = f.raw("DELETE FROM referral_events").await;
    assert!(refused.is_err(), "a DELETE of history succeeded");
    // Details change only once consent is withdrawn (to drop what was sealed), and then only they.
    let refused = f.raw("UPDATE referral_events SET details = '{}'").await;
    assert!(refused.is_err(), "details changed without a withdrawal");
    let e = event(
        &r,
        EventKind::ConsentWithdrawn,
        "ahc-swu",
        State::Withdrawn,
        None,
    );
    store
        .apply(&change(&r, 4, e, State::Withdrawn))
        .await
        .unwrap();
    let refused = f
        .raw("UPDATE referral_events SET details = '{}', note = 'changed'")
        .await;
    assert!(refused.is_err(), "a note changed beside the details");
    assert_eq!(store.history(r.id).await.unwrap().len(), 5);
}

pub(super) async fn a_redirect_grants_access_to_the_new_recipient(f: Fixture) {
    let store = f.store.clone();
    let r = submit(&store, "c-6").await;
    let e = event(&r, EventKind::Redirected, "mlup-russey", State::Sent, None);
    let mut c = change(&r, 1, e, State::Sent);
    c.new_recipient = Some(agency("dosvy-24"));
    store.apply(&c).await.unwrap();
    let got = store.referral(r.id).await.unwrap().unwrap();
    assert_eq!(got.recipient, Some(agency("dosvy-24")));
    let parties = store.snapshot(r.id).await.unwrap().unwrap().parties;
    assert_eq!(
        parties,
        [agency("ahc-swu"), agency("dosvy-24"), agency("mlup-russey")]
    );
    // The new recipient gains access; the former one keeps it (to read, not to act); others have none.
    for party in ["ahc-swu", "dosvy-24", "mlup-russey"] {
        assert!(
            store.has_access(&agency(party), r.id).await.unwrap(),
            "{party}"
        );
    }
    assert!(!store.has_access(&agency("ssc-smhs"), r.id).await.unwrap());
    let listed = store
        .list(
            &agency("dosvy-24"),
            &ListQuery {
                role: Some(Role::Recipient),
                states: vec![],
                kind: None,
                client_pseudonym: None,
                limit: 10,
                before: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), [r.id]);
}

/// `apply_all` gives each change the outcome `apply` would: the stale one is written nowhere, a
/// redirect grants access, a repeated request id returns its first event; and `snapshots` reads the
/// referrals those changes are decided on.
pub(super) async fn changes_applied_together_each_apply_to_the_version_they_read(f: Fixture) {
    let store = f.store.clone();
    let (a, b, c) = (
        submit(&store, "m-a").await,
        submit(&store, "m-b").await,
        submit(&store, "m-c").await,
    );
    let acked = event(
        &b,
        EventKind::Acknowledged,
        "mlup-russey",
        State::Acknowledged,
        Some("k1"),
    );
    store
        .apply(&change(&b, 1, acked.clone(), State::Acknowledged))
        .await
        .unwrap();
    let mut snapshots = store
        .snapshots(&[a.id, b.id, ReferralId::new()])
        .await
        .unwrap();
    snapshots.sort_by_key(|s| s.referral.id);
    let mut want = vec![(a.id, 1, 1), (b.id, 2, 2)];
    want.sort();
    let got: Vec<_> = snapshots
        .iter()
        .map(|s| (s.referral.id, s.referral.version, s.history.len()))
        .collect();
    assert_eq!(got, want);
    assert!(store.snapshots(&[]).await.unwrap().is_empty());

    let delivered = |r: &Referral, version| {
        let e = event(
            r,
            EventKind::Delivered,
            "mlup-russey",
            State::Delivered,
            None,
        );
        change(r, version, e, State::Delivered)
    };
    let stale = delivered(&b, 1);
    let changes = [delivered(&a, 1), stale.clone(), redirect(&c, "dosvy-24")];
    let outcomes = store.apply_all(&changes).await.unwrap();
    assert!(
        matches!(
            outcomes[..],
            [
                ChangeOutcome::Recorded,
                ChangeOutcome::Stale,
                ChangeOutcome::Recorded
            ]
        ),
        "{outcomes:?}"
    );
    if let Some(batches) = f.batches() {
        // Written as one batch, not change by change.
        assert_eq!(
            batches,
            BatchCounts {
                written: 1,
                refused: 0
            }
        );
    }
    let got = store.referral(a.id).await.unwrap().unwrap();
    assert_eq!((got.state, got.version), (State::Delivered, 2));
    assert_eq!(
        store.history(a.id).await.unwrap()[1].id,
        changes[0].event.id
    );
    // Nothing of the stale change was written.
    let got = store.referral(b.id).await.unwrap().unwrap();
    assert_eq!((got.state, got.version), (State::Acknowledged, 2));
    assert!(store.event(stale.event.id).await.unwrap().is_none());
    // The redirect moved the referral, granted access and queued it for the new recipient.
    let got = store.referral(c.id).await.unwrap().unwrap();
    assert_eq!((got.recipient, got.version), (Some(agency("dosvy-24")), 2));
    assert!(store.has_access(&agency("dosvy-24"), c.id).await.unwrap());
    let queued = store.mailbox(&agency("dosvy-24"), 0, 10).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!((queued[0].referral_id, queued[0].event_id), (c.id, None));
    // Each applied change queued its event for the sender: a's and c's, not b's stale one.
    let events: Vec<_> = store
        .mailbox(&a.sender, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| m.event_id)
        .collect();
    assert!(events.contains(&changes[0].event.id) && events.contains(&changes[2].event.id));
    assert!(!events.contains(&stale.event.id));

    // A request id used before returns its first event, beside a change that applies.
    let again = change(&b, 2, acked.clone(), State::Acknowledged);
    let outcomes = store.apply_all(&[again, delivered(&a, 2)]).await.unwrap();
    assert!(
        matches!(&outcomes[..], [ChangeOutcome::Duplicate(e), ChangeOutcome::Recorded] if e.id == acked.id),
        "{outcomes:?}"
    );
    assert!(store.apply_all(&[]).await.unwrap().is_empty());
}

/// A `delivered` event for `r` that the store must refuse: its id is that of `r`'s first event.
pub(super) async fn refused_event(store: &Arc<dyn Store>, r: &Referral) -> Event {
    let mut bad = event(
        r,
        EventKind::Delivered,
        "mlup-russey",
        State::Delivered,
        None,
    );
    bad.id = store.history(r.id).await.unwrap()[0].id;
    bad
}

/// Two referrals and a change for each, to apply together: a `delivered` on `fine` (its event
/// returned, with `request` as its request id) and one the store must refuse on `broken`.
pub(super) async fn a_good_change_and_a_refused_one(
    store: &Arc<dyn Store>,
    fine: &str,
    request: Option<&str>,
) -> (Referral, Referral, Event, Vec<Change>) {
    let fine = submit(store, fine).await;
    let broken = submit(store, "r-broken").await;
    let bad = refused_event(store, &broken).await;
    let good = event(
        &fine,
        EventKind::Delivered,
        "mlup-russey",
        State::Delivered,
        request,
    );
    let changes = vec![
        change(&fine, 1, good.clone(), State::Delivered),
        change(&broken, 1, bad, State::Delivered),
    ];
    (fine, broken, good, changes)
}

/// A change that cannot be written (its event id is taken) fails without a trace of itself, and
/// whatever else was applied with it is whole or absent, never half-written.
pub(super) async fn a_refused_change_among_others_leaves_nothing_of_itself(f: Fixture) {
    let store = f.store.clone();
    let (fine, broken, good, changes) =
        a_good_change_and_a_refused_one(&store, "r-fine", None).await;
    let result = store.apply_all(&changes).await;
    assert!(result.is_err(), "{result:?}");
    if let Some(batches) = f.batches() {
        assert_eq!(
            batches.refused, 1,
            "the batch failed whole, then change by change"
        );
    }
    let got = store.referral(broken.id).await.unwrap().unwrap();
    assert_eq!((got.state, got.version), (State::Sent, 1));
    assert_eq!(store.history(broken.id).await.unwrap().len(), 1);
    let got = store.referral(fine.id).await.unwrap().unwrap();
    let history = store.history(fine.id).await.unwrap();
    let recorded = store.event(good.id).await.unwrap().is_some();
    assert_eq!(
        (got.version, history.len()),
        if recorded { (2, 2) } else { (1, 1) }
    );
}

/// After an error, `apply_all` returns only once every other change of the call is decided, so
/// that what a caller reads next is what was recorded: a change dropped mid-flight could still
/// commit afterwards, and the caller would then see a referral at its old version beside the
/// event of its new one. On PostgreSQL a row lock holds one change back for as long as the test
/// wants, while the other fails at once; SQLite has no such lock to hold from outside its writer.
pub(super) async fn apply_all_returns_after_an_error_only_once_every_change_is_decided(f: Fixture) {
    let RawPool::Postgres(pool) = &f.pool else {
        unreachable!("a PostgreSQL fixture")
    };
    let store = f.store.clone();
    // A request id keeps the two out of one batch statement: each is applied alone, side by side.
    let (fine, broken, good, changes) =
        a_good_change_and_a_refused_one(&store, "r-held-back", Some("held-back-1")).await;

    let mut lock = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM referrals WHERE id = $1::text::uuid FOR UPDATE")
        .bind(fine.id.to_string())
        .execute(&mut *lock)
        .await
        .unwrap();
    let applying = tokio::spawn({
        let store = store.clone();
        async move { store.apply_all(&changes).await }
    });
    // The broken change fails at once; the other waits for the lock.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !applying.is_finished(),
        "apply_all returned while one of its changes was still on its way"
    );
    lock.commit().await.unwrap();
    let result = applying.await.unwrap();
    assert!(result.is_err(), "{result:?}");

    let got = store.referral(fine.id).await.unwrap().unwrap();
    let history = store.history(fine.id).await.unwrap();
    assert_eq!(
        (got.state, got.version, history.len()),
        (State::Delivered, 2, 2)
    );
    assert!(history.iter().any(|e| e.id == good.id));
    let got = store.referral(broken.id).await.unwrap().unwrap();
    assert_eq!(
        (got.version, store.history(broken.id).await.unwrap().len()),
        (1, 1)
    );
}

/// What a delivery stream does with confirmations that arrive together: `delivered` is recorded once
/// for each referral the agency received, in one batch on PostgreSQL, and nothing is recorded for a
/// referral it is not the recipient of, one whose delivery is already recorded, or an event.
pub(super) async fn confirmations_that_arrive_together_record_each_delivery_once(f: Fixture) {
    use spean_broker::delivery::Dispatch;
    use spean_broker::store::DeliveryRef;
    use spean_broker::workflow::{Limits, Workflow};

    let store = f.store.clone();
    let workflow = Workflow::new(
        store.clone(),
        Arc::new(Dispatch::default()),
        Limits {
            max_case_file_bytes: 1 << 20,
        },
    )
    .await
    .unwrap();
    let (fresh, other, done) = (
        submit(&store, "g-fresh").await,
        submit(&store, "g-other").await,
        submit(&store, "g-done").await,
    );
    let elsewhere = {
        let mut r = referral("g-elsewhere");
        r.recipient = Some(agency("dosvy-24"));
        let e = event(&r, EventKind::Submitted, "ahc-swu", State::Sent, None);
        store.submit(&r, &e, &[], None).await.unwrap();
        r
    };
    let recorded = event(
        &done,
        EventKind::Delivered,
        "mlup-russey",
        State::Delivered,
        None,
    );
    store
        .apply(&change(&done, 1, recorded, State::Delivered))
        .await
        .unwrap();
    let before = f.batches();
    let delivery = |r: &Referral, event_id| DeliveryRef {
        delivery_id: uuid::Uuid::now_v7(),
        referral_id: r.id,
        event_id,
    };
    let submitted = store.history(other.id).await.unwrap()[0].id;
    let together = [
        delivery(&fresh, None),
        delivery(&other, None),
        // The same referral again (a redelivery confirmed beside the first), and an event.
        delivery(&fresh, None),
        delivery(&other, Some(submitted)),
        delivery(&done, None),
        delivery(&elsewhere, None),
    ];
    workflow
        .confirmed(&agency("mlup-russey"), &together)
        .await
        .unwrap();
    let delivered = |history: Vec<Event>| {
        history
            .iter()
            .filter(|e| e.kind == EventKind::Delivered)
            .count()
    };
    for r in [&fresh, &other, &done] {
        assert_eq!(delivered(store.history(r.id).await.unwrap()), 1);
        let got = store.referral(r.id).await.unwrap().unwrap();
        assert_eq!((got.state, got.version), (State::Delivered, 2));
    }
    assert_eq!(delivered(store.history(elsewhere.id).await.unwrap()), 0);
    if let (Some(before), Some(after)) = (before, f.batches()) {
        // `fresh` and `other` went in one statement; the rest was decided without a write.
        assert_eq!(after.written - before.written, 1, "{after:?}");
        assert_eq!(after.refused, before.refused);
    }
    // Confirmed again (the adapter's retry after a lost stream): nothing more is recorded.
    workflow
        .confirmed(&agency("mlup-russey"), &together)
        .await
        .unwrap();
    for r in [&fresh, &other, &done] {
        assert_eq!(delivered(store.history(r.id).await.unwrap()), 1);
    }
}
