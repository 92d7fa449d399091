//! The mailbox and the outbox it is on the RabbitMQ path: order, settling, leases, holds, carried
//! deliveries and tidying.

use std::time::Duration;

use spean_broker::referral::{EventKind, Referral, State};
use spean_broker::store::{ChangeOutcome, MailboxEntry};

use super::fixture::Fixture;
use super::sample::{agency, change, event, redirect, submit, submit_with};

pub(super) async fn the_mailbox_keeps_order_and_forgets_confirmed_entries(f: Fixture) {
    let store = f.store.clone();
    let a = submit(&store, "m-1").await;
    let b = submit(&store, "m-2").await;
    let ngo = agency("mlup-russey");
    let entries = store.mailbox(&ngo, 0, 10).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.referral_id).collect::<Vec<_>>(),
        [a.id, b.id]
    );
    let after = store.mailbox(&ngo, entries[0].seq, 10).await.unwrap();
    assert_eq!(after.len(), 1);
    let first = entries[0].delivery_id;
    assert!(store.mailbox_entry(&ngo, first).await.unwrap().is_some());
    assert!(
        store
            .mailbox_entry(&agency("ahc-swu"), first)
            .await
            .unwrap()
            .is_none()
    );
    // Only the agency a row is for can settle it; settling twice settles nothing more.
    assert_eq!(store.settle(&agency("ahc-swu"), &[first]).await.unwrap(), 0);
    assert_eq!(store.settle(&ngo, &[first]).await.unwrap(), 1);
    assert_eq!(store.settle(&ngo, &[first]).await.unwrap(), 0);
    assert_eq!(store.mailbox(&ngo, 0, 10).await.unwrap().len(), 1);
    let c = submit(&store, "m-3").await;
    let rest: Vec<_> = store
        .mailbox(&ngo, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.delivery_id)
        .collect();
    assert_eq!(rest.len(), 2);
    assert_eq!(store.settle(&ngo, &rest).await.unwrap(), 2);
    assert!(store.mailbox(&ngo, 0, 10).await.unwrap().is_empty());
    assert!(store.referral(c.id).await.unwrap().is_some());
}

pub(super) async fn outbox_leases_hand_each_row_to_one_relay(f: Fixture) {
    let store = f.store.clone();
    for n in 0..5 {
        submit(&store, &format!("o-{n}")).await;
    }
    let lease = Duration::from_secs(30);
    let first = store.lease_outbox(3, lease).await.unwrap();
    let second = store.lease_outbox(10, lease).await.unwrap();
    assert_eq!((first.len(), second.len()), (3, 2));
    assert!(first.iter().all(|a| second.iter().all(|b| a.seq != b.seq)));
    assert!(store.lease_outbox(10, lease).await.unwrap().is_empty());
    store
        .remove_published(&first.iter().map(|e| e.delivery_id).collect::<Vec<_>>())
        .await
        .unwrap();
    // Published rows are gone; the two still leased stay in the mailbox.
    assert_eq!(
        store
            .mailbox(&agency("mlup-russey"), 0, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    // An expired lease hands a row out again: the relay that held it died.
    let fresh = submit(&store, "o-late").await;
    let brief = store
        .lease_outbox(10, Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(
        brief.iter().map(|e| e.referral_id).collect::<Vec<_>>(),
        [fresh.id]
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = store.lease_outbox(10, lease).await.unwrap();
    assert_eq!(
        again.iter().map(|e| e.referral_id).collect::<Vec<_>>(),
        [fresh.id]
    );
}

/// A delivery written held stays out of every relay's lease until its hold runs out: the broker
/// that wrote it publishes it itself (the relay's handoff), and deletes its row by delivery id once
/// RabbitMQ confirmed it. One written without a hold is leased at once. Submits, a change alone and
/// changes in a batch all write the hold.
pub(super) async fn held_deliveries_stay_out_of_leases_until_their_hold_runs_out(f: Fixture) {
    let store = f.store.clone();
    let (long, short) = (Duration::from_secs(60), Duration::from_millis(150));
    let (a, a_sent) = submit_with(&store, "h-a", None, Some(long)).await;
    let (b, b_sent) = submit_with(&store, "h-b", None, None).await;
    let (c, c_sent) = submit_with(&store, "h-c", None, Some(short)).await;
    let lease = Duration::from_secs(30);
    let ids = |entries: Vec<MailboxEntry>| -> Vec<uuid::Uuid> {
        entries.iter().map(|e| e.delivery_id).collect()
    };
    assert_eq!(ids(store.lease_outbox(10, lease).await.unwrap()), [b_sent]);

    let acknowledged = |r: &Referral| {
        let mut ack = change(
            r,
            1,
            event(
                r,
                EventKind::Acknowledged,
                "mlup-russey",
                State::Acknowledged,
                None,
            ),
            State::Acknowledged,
        );
        ack.deliveries[0].held = Some(long);
        ack
    };
    assert!(matches!(
        store.apply(&acknowledged(&a)).await.unwrap(),
        ChangeOutcome::Recorded
    ));
    let together = store
        .apply_all(&[acknowledged(&b), acknowledged(&c)])
        .await
        .unwrap();
    assert!(
        together
            .iter()
            .all(|o| matches!(o, ChangeOutcome::Recorded))
    );
    assert!(store.lease_outbox(10, lease).await.unwrap().is_empty());
    let hospital = store.mailbox(&agency("ahc-swu"), 0, 10).await.unwrap();
    assert_eq!(
        hospital.len(),
        3,
        "held rows are in the mailbox all the same"
    );

    // `a` was handed off and published: its row goes, by delivery id.
    store.remove_published(&[a_sent]).await.unwrap();
    let ngo = ids(store.mailbox(&agency("mlup-russey"), 0, 10).await.unwrap());
    assert_eq!(ngo, [b_sent, c_sent]);
    // `c`'s hand-off did not happen: once its hold runs out, a relay leases it; the rest stay held.
    tokio::time::sleep(short * 2).await;
    assert_eq!(ids(store.lease_outbox(10, lease).await.unwrap()), [c_sent]);
}

/// A store that carries deliveries hands each row's body back with its lease, so the relay
/// publishes it without loading it. A redirect, applied alone or in a batch, clears the body of
/// the referral still queued for the former recipient: loaded at publish time, it goes without its
/// case file. A store that does not carry them leases every row without a body.
pub(super) async fn carried_deliveries_come_back_with_their_lease_but_not_to_a_former_recipient(
    f: Fixture,
) {
    let store = f.store.clone();
    let submit_carried = |client_ref: &'static str| {
        let body = format!("referral {client_ref}").into_bytes();
        let store = store.clone();
        async move { submit_with(&store, client_ref, Some(body), None).await.0 }
    };
    let (a, b, c) = (
        submit_carried("k-a").await,
        submit_carried("k-b").await,
        submit_carried("k-c").await,
    );
    assert!(matches!(
        store.apply(&redirect(&b, "dosvy-24")).await.unwrap(),
        ChangeOutcome::Recorded
    ));
    let mut acked = change(
        &a,
        1,
        event(
            &a,
            EventKind::Acknowledged,
            "mlup-russey",
            State::Acknowledged,
            None,
        ),
        State::Acknowledged,
    );
    acked.deliveries[0].body = Some("acknowledged".as_bytes().to_vec());
    let outcomes = store
        .apply_all(&[acked.clone(), redirect(&c, "dosvy-24")])
        .await
        .unwrap();
    assert!(
        matches!(
            outcomes[..],
            [ChangeOutcome::Recorded, ChangeOutcome::Recorded]
        ),
        "{outcomes:?}"
    );
    if let Some(batches) = f.batches() {
        assert_eq!(batches.written, 1, "the redirect went through the batch");
    }

    let leased = store
        .lease_outbox(100, Duration::from_secs(30))
        .await
        .unwrap();
    let body = |who: &str, r: &Referral, event: Option<uuid::Uuid>| {
        let found: Vec<_> = leased
            .iter()
            .filter(|e| e.agency == agency(who) && e.referral_id == r.id && e.event_id == event)
            .collect();
        assert_eq!(found.len(), 1, "{who} {event:?}");
        found[0]
            .carried
            .as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let carries = store.carries_deliveries();
    let expect = |text: &str| carries.then(|| text.to_owned());
    assert_eq!(body("mlup-russey", &a, None), expect("referral k-a"));
    assert_eq!(
        body("ahc-swu", &a, Some(acked.event.id)),
        expect("acknowledged")
    );
    for r in [&b, &c] {
        assert_eq!(
            body("mlup-russey", r, None),
            None,
            "the former recipient's queued referral keeps its body"
        );
        assert_eq!(body("dosvy-24", r, None), None);
    }
}

/// Published rows are deleted, but on PostgreSQL they stay in the table until a vacuum, and the
/// relay's lease walks past every one of them. Tidying clears them out: with every row published,
/// the table is empty again, down to its last page. Rows not yet published stay, and are leased.
pub(super) async fn tidying_the_outbox_clears_out_published_rows_and_keeps_the_rest(f: Fixture) {
    let store = f.store.clone();
    for n in 0..200 {
        submit(&store, &format!("t-{n}")).await;
    }
    let lease = Duration::from_secs(30);
    let published: Vec<uuid::Uuid> = store
        .lease_outbox(500, lease)
        .await
        .unwrap()
        .iter()
        .map(|e| e.delivery_id)
        .collect();
    assert_eq!(published.len(), 200);
    store.remove_published(&published).await.unwrap();
    let size = |pool: &sqlx::PgPool| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT pg_relation_size('mailbox')")
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    if let Some(pg) = &f.pg {
        assert!(
            size(pg.pool()).await > 0,
            "deleted rows stay until a vacuum"
        );
    }
    store.tidy_outbox().await.unwrap();
    if let Some(pg) = &f.pg {
        assert_eq!(
            size(pg.pool()).await,
            0,
            "the deleted rows were cleared out"
        );
    }

    let fresh = submit(&store, "t-late").await;
    store.tidy_outbox().await.unwrap();
    let leased = store.lease_outbox(10, lease).await.unwrap();
    assert_eq!(
        leased.iter().map(|e| e.referral_id).collect::<Vec<_>>(),
        [fresh.id]
    );
}
