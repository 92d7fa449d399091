//! Reading: listing, the batch loads that deliveries carry, and the snapshot a decision reads.

use spean_broker::ids::{ClientRef, ReferralId};
use spean_broker::referral::{Code, EventKind, ListQuery, Role, State};
use spean_broker::store::ChangeOutcome;

use super::fixture::Fixture;
use super::sample::{KHMER, agency, change, event, redirect, submit};

pub(super) async fn listing_filters_and_pages(f: Fixture) {
    let store = f.store.clone();
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(submit(&store, &format!("l-{n}")).await);
    }
    let e = event(
        &ids[0],
        EventKind::Acknowledged,
        "mlup-russey",
        State::Acknowledged,
        None,
    );
    store
        .apply(&change(&ids[0], 1, e, State::Acknowledged))
        .await
        .unwrap();
    let q = |role, states: Vec<State>, limit, before| ListQuery {
        role,
        states,
        kind: None,
        client_pseudonym: None,
        limit,
        before,
    };
    let sender = agency("ahc-swu");
    let all = store
        .list(&sender, &q(Some(Role::Sender), vec![], 10, None))
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[0].id, ids[4].id, "newest first");
    assert!(all[0].case_file.is_empty(), "listing carries no case files");
    let page = store
        .list(&sender, &q(None, vec![], 2, Some(all[1].id)))
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|r| r.id).collect::<Vec<_>>(),
        [all[2].id, all[3].id]
    );
    let acked = store
        .list(
            &agency("mlup-russey"),
            &q(Some(Role::Recipient), vec![State::Acknowledged], 10, None),
        )
        .await
        .unwrap();
    assert_eq!(acked.iter().map(|r| r.id).collect::<Vec<_>>(), [ids[0].id]);
    let either = store
        .list(
            &sender,
            &q(None, vec![State::Sent, State::Acknowledged], 10, None),
        )
        .await
        .unwrap();
    assert_eq!(either.len(), 5);
    let sent = store
        .list(&sender, &q(None, vec![State::Sent], 10, None))
        .await
        .unwrap();
    assert_eq!(sent.len(), 4);
    assert!(sent.iter().all(|r| r.state == State::Sent));
    let outsider = store
        .list(&agency("ssc-smhs"), &q(None, vec![], 10, None))
        .await
        .unwrap();
    assert!(outsider.is_empty(), "an agency sees only its own referrals");
    let lama = ListQuery {
        kind: Some(Code::parse("k", "lama").unwrap()),
        ..q(None, vec![], 10, None)
    };
    assert_eq!(store.list(&sender, &lama).await.unwrap().len(), 5);
    let none = store
        .list(&sender, &q(Some(Role::Recipient), vec![], 10, None))
        .await
        .unwrap();
    assert!(none.is_empty());
    let by_kind = ListQuery {
        kind: Some(Code::parse("k", "placement").unwrap()),
        ..q(None, vec![], 10, None)
    };
    assert!(store.list(&sender, &by_kind).await.unwrap().is_empty());
}

pub(super) async fn deliveries_load_in_batches_with_their_histories(f: Fixture) {
    let store = f.store.clone();
    let a = submit(&store, "b-1").await;
    let b = submit(&store, "b-2").await;
    let ack = event(
        &a,
        EventKind::Acknowledged,
        "mlup-russey",
        State::Acknowledged,
        None,
    );
    let ack_id = ack.id;
    assert!(matches!(
        store
            .apply(&change(&a, 1, ack, State::Acknowledged))
            .await
            .unwrap(),
        ChangeOutcome::Recorded
    ));
    let loaded = store
        .referrals_with_history(&[a.id, b.id, ReferralId::new()])
        .await
        .unwrap();
    assert_eq!(loaded.len(), 2, "unknown ids are left out");
    let (got_a, history_a) = loaded.iter().find(|(r, _)| r.id == a.id).unwrap();
    assert_eq!(got_a.case_file.as_bytes(), KHMER.as_bytes());
    assert_eq!(got_a.state, State::Acknowledged);
    assert_eq!(
        history_a.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::Submitted, EventKind::Acknowledged]
    );
    let (_, history_b) = loaded.iter().find(|(r, _)| r.id == b.id).unwrap();
    assert_eq!(history_b.len(), 1);
    assert_eq!(history_b[0].referral_id, b.id);
    let submitted_b = history_b[0].id;
    let events = store
        .events(&[ack_id, submitted_b, uuid::Uuid::now_v7()])
        .await
        .unwrap();
    let mut ids: Vec<_> = events.iter().map(|e| e.id).collect();
    ids.sort();
    let mut want = vec![ack_id, submitted_b];
    want.sort();
    assert_eq!(ids, want);
    assert!(store.referrals_with_history(&[]).await.unwrap().is_empty());
    assert!(store.events(&[]).await.unwrap().is_empty());
}

pub(super) async fn a_snapshot_holds_the_referral_its_parties_and_its_history(f: Fixture) {
    let store = f.store.clone();
    let r = submit(&store, "s-1").await;
    let ack = event(
        &r,
        EventKind::Acknowledged,
        "mlup-russey",
        State::Acknowledged,
        None,
    );
    store
        .apply(&change(&r, 1, ack, State::Acknowledged))
        .await
        .unwrap();
    let snapshot = store.snapshot(r.id).await.unwrap().unwrap();
    assert_eq!(snapshot.referral.id, r.id);
    assert_eq!(snapshot.referral.state, State::Acknowledged);
    assert_eq!(snapshot.referral.version, 2);
    assert!(
        snapshot.referral.case_file.is_empty(),
        "a snapshot is for decisions; it carries no case file"
    );
    assert_eq!(snapshot.parties, [agency("ahc-swu"), agency("mlup-russey")]);
    assert_eq!(
        snapshot.history,
        [EventKind::Submitted, EventKind::Acknowledged]
    );
    assert!(store.snapshot(ReferralId::new()).await.unwrap().is_none());
}

/// Who a referral is between now, read without its case file: what a delivery session checks a
/// referral published earlier against. A redirect changes the recipient; an unknown id is left out.
pub(super) async fn parties_now_follow_a_redirect_and_leave_unknown_ids_out(f: Fixture) {
    let store = f.store.clone();
    let (kept, moved) = (
        submit(&store, "p-kept").await,
        submit(&store, "p-moved").await,
    );
    assert!(matches!(
        store.apply(&redirect(&moved, "dosvy-24")).await.unwrap(),
        ChangeOutcome::Recorded
    ));
    let mut now = store
        .parties_now(&[kept.id, moved.id, ReferralId::new()])
        .await
        .unwrap();
    now.sort_by_key(|p| p.referral_id);
    let mut want = vec![
        (kept.id, agency("ahc-swu"), Some(agency("mlup-russey"))),
        (moved.id, agency("ahc-swu"), Some(agency("dosvy-24"))),
    ];
    want.sort_by_key(|w| w.0);
    let got: Vec<_> = now
        .into_iter()
        .map(|p| (p.referral_id, p.sender, p.recipient))
        .collect();
    assert_eq!(got, want);
    assert!(store.parties_now(&[]).await.unwrap().is_empty());
}

/// Story 5: an agency lists its own referrals about one client by the client's pseudonym, as
/// sender or as recipient, and never another agency's under the same pseudonym, nor one it only
/// used to hold or is only notified of.
pub(super) async fn a_pseudonym_lists_only_the_callers_own_referrals(f: Fixture) {
    let store = f.store.clone();
    let pseudonym = ClientRef::parse("p", "client-7f3a").unwrap();
    let submit_as = |sender: &'static str, recipient: &'static str, key: &'static str| {
        let store = store.clone();
        let pseudonym = pseudonym.clone();
        async move {
            let mut r = super::sample::referral(key);
            r.sender = agency(sender);
            r.recipient = Some(agency(recipient));
            r.client_pseudonym = Some(pseudonym);
            let e = super::sample::event(&r, EventKind::Submitted, sender, State::Sent, None);
            let d = [super::sample::delivery(r.recipient.clone().unwrap(), None)];
            store.submit(&r, &e, &d, None).await.unwrap();
            r
        }
    };
    let detox = submit_as("mith-samlanh", "mlup-russey", "detox").await;
    let training = submit_as("mlup-russey", "mith-samlanh", "training").await;
    let elsewhere = submit_as("ahc-swu", "dosvy-17", "elsewhere").await;
    submit(&store, "unlinked").await;
    // dosvy-24 is notified of the detox referral: it may see it, but not list it by pseudonym.
    let mut notify = change(
        &detox,
        1,
        event(
            &detox,
            EventKind::Escalated,
            "mlup-russey",
            State::Sent,
            None,
        ),
        State::Sent,
    );
    notify.notified = vec![agency("dosvy-24")];
    assert!(matches!(
        store.apply(&notify).await.unwrap(),
        ChangeOutcome::Recorded
    ));
    let by_pseudonym = |who: &'static str| {
        let store = store.clone();
        let pseudonym = pseudonym.clone();
        async move {
            let query = ListQuery {
                client_pseudonym: Some(pseudonym),
                limit: 10,
                ..Default::default()
            };
            let mut ids: Vec<_> = store
                .list(&agency(who), &query)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![detox.id, training.id];
    both.sort();
    assert_eq!(by_pseudonym("mith-samlanh").await, both);
    assert_eq!(by_pseudonym("mlup-russey").await, both);
    assert_eq!(by_pseudonym("ahc-swu").await, [elsewhere.id]);
    assert!(
        by_pseudonym("dosvy-24").await.is_empty(),
        "a notified agency listed by pseudonym"
    );
    assert!(
        store
            .has_access(&agency("dosvy-24"), detox.id)
            .await
            .unwrap()
    );
}
