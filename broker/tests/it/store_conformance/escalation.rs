//! Escalation as the workflow runs it on each store, on a clock the test drives: an
//! acknowledgement that crosses its deadline is never followed by an escalation, and a deadline
//! nobody answers escalates once per tier, whoever looks for it and however often.

use std::sync::{Arc, Mutex};

use spean_broker::delivery::Dispatch;
use spean_broker::directory::Directory;
use spean_broker::ids::{AgencyId, RequestId};
use spean_broker::referral::{Action, EventDetails, EventKind, FreeText};
use spean_broker::workflow::{Clock, Limits, Workflow};
use time::OffsetDateTime;

use super::fixture::Fixture;

/// A clock that stands still until the test moves it.
pub(super) struct TestClock(Mutex<OffsetDateTime>);

impl TestClock {
    pub(super) fn at(t: OffsetDateTime) -> Arc<Self> {
        Arc::new(Self(Mutex::new(t)))
    }
    pub(super) fn set(&self, t: OffsetDateTime) {
        *self.0.lock().unwrap() = t;
    }
}

impl Clock for TestClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }
}

/// The repository's directory: story 1 is an emergency, due in 2 h, with two tiers.
const DEADLINE: time::Duration = time::Duration::hours(2);

pub(super) async fn workflow(f: &Fixture, clock: Arc<TestClock>) -> Workflow {
    let directory =
        Directory::from_json(include_bytes!("../../../../fixtures/network.json")).unwrap();
    f.store.import_directory(&directory).await.unwrap();
    Workflow::new(
        f.store.clone(),
        Arc::new(Dispatch::default()),
        Limits {
            max_case_file_bytes: 1 << 20,
        },
    )
    .await
    .unwrap()
    .with_clock(clock)
}

pub(super) fn agency(raw: &str) -> AgencyId {
    AgencyId::parse("agency", raw).unwrap()
}

fn acknowledgement(referral_id: spean_broker::ids::ReferralId, n: usize) -> Action {
    Action {
        referral_id,
        request_id: RequestId::parse("request_id", &format!("ack-{n}")).unwrap(),
        actor_person: FreeText::line("actor_person", "សុភា", 64).unwrap(),
        note: FreeText::default(),
        kind: EventKind::Acknowledged,
        details: EventDetails::None,
        sealed_text: Default::default(),
    }
}

/// Twelve referrals fall due at the moment their recipient acknowledges them: each
/// acknowledgement races an escalation pass. Whatever the interleaving, no escalation is written
/// after an acknowledgement, and none is left pending: after both, the referral has no deadline,
/// and later passes escalate nothing.
pub(super) async fn an_acknowledgement_crossing_its_deadline_is_never_followed_by_an_escalation(
    f: Fixture,
) {
    let start = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let clock = TestClock::at(start);
    let workflow = Arc::new(workflow(&f, clock.clone()).await);
    let (hospital, ngo) = (agency("ahc-swu"), agency("mlup-russey"));
    let mut ids = Vec::new();
    for n in 0..12 {
        let new =
            spean_broker::wire::new_referral(spean_testkit::lama(&format!("race-{n}"))).unwrap();
        let (view, _, created) = workflow.submit(&hospital, new).await.unwrap();
        assert!(created);
        ids.push(view.referral().id);
    }
    clock.set(start + DEADLINE);
    let mut racing = tokio::task::JoinSet::new();
    for (n, id) in ids.iter().copied().enumerate() {
        let (w, ngo) = (workflow.clone(), ngo.clone());
        racing.spawn(async move { w.act(&ngo, acknowledgement(id, n)).await.map(|_| ()) });
        let w = workflow.clone();
        racing.spawn(async move { w.escalate_due().await.map(|_| ()) });
    }
    while let Some(done) = racing.join_next().await {
        done.unwrap().unwrap();
    }
    clock.set(start + DEADLINE * 5);
    assert_eq!(workflow.escalate_due().await.unwrap(), 0);
    for id in ids {
        let history = f.store.history(id).await.unwrap();
        let kinds: Vec<EventKind> = history.iter().map(|e| e.kind).collect();
        let acknowledged = kinds
            .iter()
            .position(|k| *k == EventKind::Acknowledged)
            .expect("acknowledged");
        assert!(
            !kinds[acknowledged..].contains(&EventKind::Escalated),
            "escalated after the acknowledgement: {kinds:?}"
        );
        assert!(
            kinds.iter().filter(|k| **k == EventKind::Escalated).count() <= 1,
            "{kinds:?}"
        );
        assert_eq!(f.store.deadline(id).await.unwrap(), None);
    }
}

/// A referral nobody answers, with four workflows (as four brokers on one store) looking for
/// passed deadlines at once, again and again: tier 1 after one deadline, tier 2 after two, each
/// written once, and nothing after the last tier (whose timer is kept, never due). The tier's agencies become notified parties.
pub(super) async fn a_deadline_nobody_answers_escalates_once_per_tier_however_many_look(
    f: Fixture,
) {
    let start = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let clock = TestClock::at(start);
    let mut brokers = Vec::new();
    for _ in 0..4 {
        brokers.push(Arc::new(workflow(&f, clock.clone()).await));
    }
    let new = spean_broker::wire::new_referral(spean_testkit::lama("silent")).unwrap();
    let (view, _, _) = brokers[0].submit(&agency("ahc-swu"), new).await.unwrap();
    let id = view.referral().id;
    for step in 1..=4 {
        clock.set(start + DEADLINE * step);
        let mut looking = tokio::task::JoinSet::new();
        for _ in 0..3 {
            for w in &brokers {
                let w = w.clone();
                looking.spawn(async move { w.escalate_due().await.unwrap() });
            }
        }
        while looking.join_next().await.is_some() {}
    }
    let tiers: Vec<(u32, Vec<String>)> = f
        .store
        .history(id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.details {
            EventDetails::Escalated { tier, to } => {
                Some((tier, to.iter().map(ToString::to_string).collect()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        tiers,
        [
            (1, vec!["dosvy-24".to_owned(), "mosvy-coord".to_owned()]),
            (2, vec!["mosvy-coord".to_owned()]),
        ]
    );
    for notified in ["dosvy-24", "mosvy-coord"] {
        assert!(f.store.has_access(&agency(notified), id).await.unwrap());
    }
    let snapshot = f.store.snapshot(id).await.unwrap().unwrap();
    assert_eq!(
        snapshot.notified,
        [agency("dosvy-24"), agency("mosvy-coord")]
    );
    // Past the last tier the timer stays, never due, so the referral stays on the overdue list.
    let kept = f.store.deadline(id).await.unwrap().unwrap();
    assert_eq!(
        (kept.due_at, kept.escalations),
        (spean_broker::store::NEVER, 2)
    );
}
