//! What the tests write: a referral with a case file in Khmer, its events and changes, and a way
//! to make many calls at the same moment.

use std::sync::Arc;
use std::time::Duration;

use spean_broker::ids::{AgencyId, ClientRef, ProvinceCode, ReferralId, RequestId};
use spean_broker::referral::{
    Addressee, AgeBand, Code, Consent, ConsentGiver, Event, EventDetails, EventKind, FreeText,
    Referral, Sealed, Sex, Sharing, State, Subject, Urgency,
};
use spean_broker::store::{Change, DeadlineChange, NewDelivery, Store, SubmitOutcome};
use time::OffsetDateTime;

pub(super) const KHMER: &str = "សុខ ស្រីល័ក្ខ";

pub(super) fn agency(id: &str) -> AgencyId {
    AgencyId::parse("agency", id).unwrap()
}

pub(super) fn referral(client_ref: &str) -> Referral {
    let now = OffsetDateTime::now_utc();
    Referral {
        id: ReferralId::new(),
        client_ref: ClientRef::parse("client_ref", client_ref).unwrap(),
        fingerprint: format!("fp-{client_ref}"),
        sender: agency("ahc-swu"),
        addressee: Addressee::Service {
            service: Code::parse("s", "reintegration_follow_up").unwrap(),
            province: ProvinceCode::parse("p", "24").unwrap(),
        },
        recipient: Some(agency("mlup-russey")),
        kind: Code::parse("kind", "lama").unwrap(),
        urgency: Urgency::Emergency,
        subject: Subject {
            sex: Sex::Female,
            age_band: AgeBand::Age5To9,
            province: ProvinceCode::parse("p", "24").unwrap(),
        },
        client_pseudonym: None,
        candidates: Vec::new(),
        notify: Vec::new(),
        follows: None,
        consent: Some(
            Consent::given(
                ConsentGiver::Guardian,
                now - time::Duration::hours(1),
                [Sharing::Referral, Sharing::Redirect],
            )
            .unwrap(),
        ),
        state: State::Sent,
        version: 1,
        created_at: now,
        updated_at: now,
        case_file: Sealed::new(KHMER.as_bytes().to_vec()),
    }
}

pub(super) fn event(
    r: &Referral,
    kind: EventKind,
    actor: &str,
    state: State,
    request: Option<&str>,
) -> Event {
    Event {
        id: uuid::Uuid::now_v7(),
        referral_id: r.id,
        kind,
        actor: agency(actor),
        actor_person: FreeText::parse("p", "សុភា", 100).unwrap(),
        at: OffsetDateTime::now_utc(),
        note: FreeText::parse("note", "ជួបគ្រួសារ", 100).unwrap(),
        state_after: state,
        details: EventDetails::None,
        request_id: request.map(|r| RequestId::parse("request_id", r).unwrap()),
        next_visit: None,
        sealed_text: Default::default(),
    }
}

/// A delivery to `to` of the referral itself (`event_id` `None`) or of one of its events, neither
/// carried nor held.
pub(super) fn delivery(to: AgencyId, event_id: Option<uuid::Uuid>) -> NewDelivery {
    NewDelivery {
        id: uuid::Uuid::now_v7(),
        agency: to,
        event_id,
        body: None,
        held: None,
    }
}

pub(super) async fn submit(store: &Arc<dyn Store>, client_ref: &str) -> Referral {
    submit_with(store, client_ref, None, None).await.0
}

/// Submits a referral whose delivery to its recipient carries `body` and is `held`; returns it
/// with that delivery's id.
pub(super) async fn submit_with(
    store: &Arc<dyn Store>,
    client_ref: &str,
    body: Option<Vec<u8>>,
    held: Option<Duration>,
) -> (Referral, uuid::Uuid) {
    let r = referral(client_ref);
    let e = event(&r, EventKind::Submitted, "ahc-swu", State::Sent, None);
    let d = [NewDelivery {
        body,
        held,
        ..delivery(r.recipient.clone().unwrap(), None)
    }];
    assert!(matches!(
        store.submit(&r, &e, &d, None).await.unwrap(),
        SubmitOutcome::Created
    ));
    (r, d[0].id)
}

pub(super) fn change(r: &Referral, version: i64, e: Event, to: State) -> Change {
    Change {
        referral_id: r.id,
        expected_version: version,
        state: to,
        new_recipient: None,
        at: e.at,
        deliveries: vec![delivery(r.sender.clone(), Some(e.id))],
        event: e,
        deadline: DeadlineChange::Keep,
        notified: Vec::new(),
    }
}

/// The NGO redirects `r`, read at version 1, to `to`: its event to the sender, and the referral
/// itself to the new recipient.
pub(super) fn redirect(r: &Referral, to: &str) -> Change {
    let mut redirect = change(
        r,
        1,
        event(r, EventKind::Redirected, "mlup-russey", State::Sent, None),
        State::Sent,
    );
    redirect.new_recipient = Some(agency(to));
    redirect.deliveries.push(delivery(agency(to), None));
    redirect
}

/// Runs `task` on `n` tasks at once: each first takes a pooled connection (so the pool is warm) and
/// waits for the others, so that the calls under test overlap instead of queueing on connects.
pub(super) async fn all_at_once<T, F, Fut>(store: &Arc<dyn Store>, n: usize, task: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (store, start) = (store.clone(), start.clone());
        let work = task(i, store.clone());
        tasks.push(tokio::spawn(async move {
            store.ping().await.unwrap();
            start.wait().await;
            work.await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results
}
