//! Submitting: a referral is written whole, once per `client_ref`, alone or with others.

use spean_broker::referral::{Addressee, EventKind, Sealed, State};
use spean_broker::store::SubmitOutcome;

use super::fixture::Fixture;
use super::sample::{KHMER, agency, all_at_once, delivery, event, referral, submit};

pub(super) async fn a_submitted_referral_reads_back_byte_for_byte(f: Fixture) {
    let store = f.store.clone();
    let r = submit(&store, "c-1").await;
    let got = store.referral(r.id).await.unwrap().unwrap();
    assert_eq!(got.case_file.as_bytes(), KHMER.as_bytes());
    assert_eq!(got.client_ref, r.client_ref);
    assert_eq!(got.addressee, r.addressee);
    assert_eq!(got.state, State::Sent);
    assert_eq!(got.version, 1);
    assert_eq!(got.fingerprint, r.fingerprint);
    assert_eq!(
        (got.sender, got.recipient),
        (r.sender.clone(), r.recipient.clone())
    );
    assert_eq!(
        got.created_at.unix_timestamp(),
        r.created_at.unix_timestamp()
    );
    let by_ref = store
        .referral_by_client_ref(&r.sender, &r.client_ref)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_ref.id, r.id);
    assert_eq!(by_ref.case_file.as_bytes(), KHMER.as_bytes());
    let history = store.history(r.id).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].note.as_str(), "ជួបគ្រួសារ");
    assert_eq!(history[0].actor_person.as_str(), "សុភា");
    let submitted = store.event(history[0].id).await.unwrap().unwrap();
    assert_eq!(submitted.note.as_str().as_bytes(), "ជួបគ្រួសារ".as_bytes());
    assert_eq!(submitted.referral_id, r.id);
    assert!(store.event(uuid::Uuid::now_v7()).await.unwrap().is_none());
    assert!(
        store
            .has_access(&agency("mlup-russey"), r.id)
            .await
            .unwrap()
    );
    assert!(!store.has_access(&agency("ssc-smhs"), r.id).await.unwrap());
}

pub(super) async fn a_reused_client_ref_returns_the_existing_referral(f: Fixture) {
    let store = f.store.clone();
    let first = submit(&store, "c-2").await;
    let again = referral("c-2");
    let e = event(&again, EventKind::Submitted, "ahc-swu", State::Sent, None);
    match store.submit(&again, &e, &[], None).await.unwrap() {
        SubmitOutcome::Existing(existing) => assert_eq!(existing.id, first.id),
        SubmitOutcome::Created => panic!("a second referral was created"),
    }
    assert!(store.referral(again.id).await.unwrap().is_none());
    assert_eq!(
        store
            .mailbox(first.recipient.as_ref().unwrap(), 0, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Submits that arrive together (PostgreSQL writes them in one statement) each come back created,
/// whole: the referral byte for byte, its first event, its access and its delivery.
pub(super) async fn submits_made_at_once_are_each_written_whole(f: Fixture) {
    let store = f.store.clone();
    let outcomes = all_at_once(&store, 24, |i, store| {
        let mut r = referral(&format!("together-{i}"));
        if i % 2 == 0 {
            r.addressee = Addressee::Agency(agency("mlup-russey"));
        }
        r.case_file = Sealed::new(format!("{KHMER} {i}").into_bytes());
        let e = event(&r, EventKind::Submitted, "ahc-swu", State::Sent, None);
        let d = [delivery(r.recipient.clone().unwrap(), None)];
        async move {
            let outcome = store.submit(&r, &e, &d, None).await.unwrap();
            (r, e, outcome)
        }
    })
    .await;
    if let Some(batches) = f.batches() {
        assert!(batches.written >= 1 && batches.refused == 0, "{batches:?}");
    }
    let mut queued: Vec<_> = store
        .mailbox(&agency("mlup-russey"), 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.referral_id, m.event_id))
        .collect();
    queued.sort();
    let mut want = Vec::new();
    for (r, e, outcome) in outcomes {
        assert!(matches!(outcome, SubmitOutcome::Created), "{outcome:?}");
        let got = store.referral(r.id).await.unwrap().unwrap();
        assert_eq!(got.case_file.as_bytes(), r.case_file.as_bytes());
        assert_eq!(got.addressee, r.addressee);
        assert_eq!(got.client_ref, r.client_ref);
        let history = store.history(r.id).await.unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(
            (history[0].id, history[0].note.as_str()),
            (e.id, e.note.as_str())
        );
        assert!(store.has_access(&r.sender, r.id).await.unwrap());
        assert!(
            store
                .has_access(r.recipient.as_ref().unwrap(), r.id)
                .await
                .unwrap()
        );
        want.push((r.id, None));
    }
    want.sort();
    assert_eq!(queued, want);
}
