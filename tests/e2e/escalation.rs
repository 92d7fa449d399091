//! Story 1's silence made impossible to miss: a referral nobody acknowledges is escalated, tier by
//! tier, to the agencies the directory names, once each, whichever brokers run and whenever they
//! are killed; an acknowledgement stops it. Deadlines are seconds here, set through the directory.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use spean_proto::v1 as pb;

use crate::helpers::{BrokerProcess, ServingStatus, sealed_action, words};
use crate::production::Production;

const HOSPITAL: &str = "ahc-swu";
const RECIPIENT: &str = "mlup-russey";
const PROVINCE: &str = "dosvy-24";
const COORDINATOR: &str = "mosvy-coord";

/// The emergency deadline in these tests: long enough for a test to act between two tiers on a
/// slow machine, short enough to keep the tests quick.
const DEADLINE: Duration = Duration::from_secs(6);

/// The repository's directory with emergency referrals due for acknowledgement in [`DEADLINE`],
/// written to `dir`; the setting that seeds a new broker with it.
fn short_deadlines(dir: &Path) -> (String, String) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/network.json");
    let mut directory: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
    directory["acknowledgement_deadlines"]["emergency"] =
        serde_json::Value::String(format!("{}s", DEADLINE.as_secs()));
    let path = dir.join("directory.json");
    std::fs::write(&path, serde_json::to_vec(&directory).unwrap()).unwrap();
    (
        "SPEAN_BROKER_DIRECTORY__SEED".into(),
        path.display().to_string(),
    )
}

/// The escalations in a referral's history as its sender reads it: tier → how many times.
async fn escalations(broker: &BrokerProcess, referral_id: &str) -> BTreeMap<u32, usize> {
    let read = broker.client(HOSPITAL).await.referral(referral_id).await;
    let mut tiers = BTreeMap::new();
    for event in read.history {
        if event.kind == pb::FeedbackKind::Escalated as i32 {
            let Some(pb::feedback_event::Details::Escalated(e)) = event.details else {
                panic!("an escalation without its tier: {event:?}");
            };
            *tiers.entry(e.tier).or_insert(0) += 1;
        }
    }
    tiers
}

/// Waits until `referral_id`'s history holds the escalations `expected`, within `limit`.
async fn wait_for_escalations(
    broker: &BrokerProcess,
    referral_id: &str,
    expected: &[(u32, usize)],
    limit: Duration,
) {
    let expected: BTreeMap<u32, usize> = expected.iter().copied().collect();
    let started = std::time::Instant::now();
    loop {
        let seen = escalations(broker, referral_id).await;
        if seen == expected {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "escalations of {referral_id}: {seen:?}, expected {expected:?} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The escalation events of `referral_id` that came down `agency`'s stream within `window`, and
/// whatever else that agency received of it; confirms everything.
async fn received_within(
    broker: &BrokerProcess,
    agency: &str,
    referral_id: &str,
    window: Duration,
) -> Vec<pb::FeedbackEvent> {
    let mut client = broker.client(agency).await;
    let mut stream = client.subscribe(32).await;
    let mut events = Vec::new();
    let until = tokio::time::Instant::now() + window;
    while let Ok(Ok(Some(delivery))) =
        tokio::time::timeout_at(until, stream.deliveries.message()).await
    {
        stream.confirm(delivery.delivery_id.clone()).await;
        match delivery.payload {
            Some(pb::delivery::Payload::Feedback(e)) if e.referral_id == referral_id => {
                events.push(e);
            }
            Some(pb::delivery::Payload::Referral(r)) => {
                assert!(
                    r.case_file.is_empty() || agency == RECIPIENT || agency == HOSPITAL,
                    "{agency} received a case file"
                );
            }
            _ => {}
        }
    }
    events
}

async fn acknowledge(broker: &BrokerProcess, referral_id: &str) {
    broker
        .client(RECIPIENT)
        .await
        .referrals
        .acknowledge(pb::AcknowledgeRequest {
            action: sealed_action(
                RECIPIENT,
                &[HOSPITAL],
                referral_id,
                &format!("ack-{referral_id}"),
                words("សុភា (Sophea)", "យើងនឹងទៅលេងផ្ទះថ្ងៃស្អែក", ""),
            ),
        })
        .await
        .unwrap();
}

/// Story 1 on one broker, on both delivery paths: the referral nobody acknowledges reaches the
/// province's department and the coordinator after one deadline and the coordinator again after
/// two, once each; they read no case file and no free text. A referral acknowledged after its
/// first escalation is escalated no further.
async fn story_1_escalates_once_per_tier_and_stops_when_acknowledged(rabbitmq: bool) {
    let env = Production::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = env.broker_env();
    if !rabbitmq {
        settings.retain(|(k, _)| !k.starts_with("SPEAN_BROKER_AMQP__"));
    }
    settings.push(short_deadlines(dir.path()));
    let broker =
        BrokerProcess::start_with(&dir.path().join("broker"), "127.0.0.1:0", &settings).await;
    broker.wait_for_health(ServingStatus::Serving).await;

    let mut hospital = broker.client(HOSPITAL).await;
    let silent = hospital.submit_lama("nobody-answers").await;
    let answered = hospital.submit_lama("answered-after-tier-1").await;

    wait_for_escalations(&broker, &answered, &[(1, 1)], DEADLINE * 3).await;
    acknowledge(&broker, &answered).await;
    wait_for_escalations(&broker, &silent, &[(1, 1), (2, 1)], DEADLINE * 4).await;
    // A third deadline passes: there is no third tier, and the answered one stays answered.
    tokio::time::sleep(DEADLINE + Duration::from_secs(2)).await;
    assert_eq!(
        escalations(&broker, &silent).await,
        BTreeMap::from([(1, 1), (2, 1)])
    );
    assert_eq!(
        escalations(&broker, &answered).await,
        BTreeMap::from([(1, 1)])
    );

    // Each escalation reached the department and the coordinator once (the department, notified
    // at tier 1, hears of tier 2 as a party); neither reads what anybody wrote.
    let province = received_within(&broker, PROVINCE, &silent, Duration::from_secs(3)).await;
    let coordinator = received_within(&broker, COORDINATOR, &silent, Duration::from_secs(3)).await;
    let tiers = |events: &[pb::FeedbackEvent]| -> Vec<u32> {
        events
            .iter()
            .filter_map(|e| match &e.details {
                Some(pb::feedback_event::Details::Escalated(x)) => Some(x.tier),
                _ => None,
            })
            .collect()
    };
    assert_eq!(tiers(&province), [1, 2], "the department's escalations");
    assert_eq!(tiers(&coordinator), [1, 2], "the coordinator's escalations");
    // Both see the silent one on their overdue lists, and not the answered one.
    for agency in [PROVINCE, COORDINATOR] {
        let list = broker
            .client(agency)
            .await
            .coordinator
            .list_overdue(pb::ListOverdueRequest::default())
            .await
            .unwrap()
            .into_inner()
            .referrals;
        let ids: Vec<&str> = list
            .iter()
            .map(|o| o.envelope.as_ref().unwrap().referral_id.as_str())
            .collect();
        assert_eq!(ids, [silent.as_str()], "{agency}'s overdue list");
        assert_eq!(list[0].times, 2);
        assert_eq!(list[0].waiting_on_agency_id, RECIPIENT);
    }
    // The recipient is no coordinator: it may not read the list.
    let refused = broker
        .client(RECIPIENT)
        .await
        .coordinator
        .list_overdue(pb::ListOverdueRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let read = broker.client(PROVINCE).await.referral(&answered).await;
    assert!(
        read.case_file.is_empty(),
        "a notified agency read the case file"
    );
    for event in &read.history {
        assert!(
            event.note.is_empty() && event.actor_person.is_empty(),
            "a notified agency read free text: {event:?}"
        );
    }
    assert!(
        read.history
            .iter()
            .any(|e| e.kind == pb::FeedbackKind::Acknowledged as i32),
        "the notified agency sees that it was acknowledged"
    );
    // Told of it, it does not act on it.
    let refused = broker
        .client(PROVINCE)
        .await
        .referrals
        .accept(pb::AcceptRequest {
            action: sealed_action(
                PROVINCE,
                &[HOSPITAL],
                &silent,
                "province-accepts",
                words("", "", "visit"),
            ),
            acceptance: Some(pb::Acceptance {
                planned_action: String::new(),
                planned_date: "2026-12-05".into(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("notified"), "{refused:?}");
}

#[tokio::test]
async fn story_1_escalates_once_per_tier_and_stops_when_acknowledged_on_rabbitmq() {
    story_1_escalates_once_per_tier_and_stops_when_acknowledged(true).await;
}

#[tokio::test]
async fn story_1_escalates_once_per_tier_and_stops_when_acknowledged_on_the_database_mailbox() {
    story_1_escalates_once_per_tier_and_stops_when_acknowledged(false).await;
}

/// Two brokers on one PostgreSQL and RabbitMQ, sharing one CA, with the directory `seed`, both
/// serving.
async fn two_brokers(
    env: &Production,
    dir: &Path,
    seed: (String, String),
) -> (BrokerProcess, BrokerProcess) {
    let mut settings = env.broker_env();
    settings.push(seed);
    crate::helpers::two_brokers(dir, settings).await
}

/// Two brokers on one PostgreSQL and RabbitMQ both look for passed deadlines every second: each
/// escalation is written once. One broker is then SIGKILLed before the next deadline and started
/// again after it has passed, while the other is stopped too: it fires what it missed when it
/// starts, once.
#[tokio::test]
async fn escalations_fire_once_with_two_brokers_and_across_a_kill() {
    let env = Production::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut first, mut second) = two_brokers(&env, dir.path(), short_deadlines(dir.path())).await;

    let id = first
        .client(HOSPITAL)
        .await
        .submit_lama("two-brokers")
        .await;
    wait_for_escalations(&first, &id, &[(1, 1)], DEADLINE * 3).await;

    // Both brokers down across the second deadline; one comes back and fires it, once.
    first.kill().await;
    second.kill().await;
    tokio::time::sleep(DEADLINE + Duration::from_secs(1)).await;
    first.start_again().await;
    first.wait_for_health(ServingStatus::Serving).await;
    wait_for_escalations(&first, &id, &[(1, 1), (2, 1)], DEADLINE * 2).await;
    second.start_again().await;
    second.wait_for_health(ServingStatus::Serving).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        escalations(&second, &id).await,
        BTreeMap::from([(1, 1), (2, 1)])
    );
}

/// The directory of [`short_deadlines`], with story 1's kind on a follow-up schedule of seconds:
/// a visit every [`VISIT_EVERY`], missed [`VISIT_GRACE`] after it was due.
pub(crate) fn short_schedule(dir: &Path) -> (String, String) {
    let (key, path) = short_deadlines(dir);
    let mut directory: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    directory["follow_up_schedules"]["lama"] = serde_json::json!({
        "every": format!("{}s", VISIT_EVERY.as_secs()),
        "grace": format!("{}s", VISIT_GRACE.as_secs()),
    });
    std::fs::write(&path, serde_json::to_vec(&directory).unwrap()).unwrap();
    (key, path)
}

const VISIT_EVERY: Duration = Duration::from_secs(4);
const VISIT_GRACE: Duration = Duration::from_secs(2);

/// The missed visits in a referral's history as its sender reads it: (due, missed in a row).
async fn missed_visits(broker: &BrokerProcess, referral_id: &str) -> Vec<(i64, u32)> {
    let read = broker.client(HOSPITAL).await.referral(referral_id).await;
    read.history
        .iter()
        .filter_map(|e| match &e.details {
            Some(pb::feedback_event::Details::FollowUpOverdue(m)) => {
                Some((m.due_at.as_ref().unwrap().seconds, m.missed_in_a_row))
            }
            _ => None,
        })
        .collect()
}

/// Missed visits come one per visit: each due one interval after the one before, counted 1, 2,
/// 3, … in a row, never two for one visit.
fn assert_once_per_visit(missed: &[(i64, u32)]) {
    for (n, pair) in missed.windows(2).enumerate() {
        assert_eq!(
            pair[1].0 - pair[0].0,
            VISIT_EVERY.as_secs() as i64,
            "visit {n} and the next: {missed:?}"
        );
    }
    let counts: Vec<u32> = missed.iter().map(|m| m.1).collect();
    let expected: Vec<u32> = (1..=missed.len() as u32).collect();
    assert_eq!(counts, expected, "{missed:?}");
}

/// Two brokers on one PostgreSQL and RabbitMQ record each missed follow-up visit once; both
/// killed across several visits, the one started again records each visit it missed, once.
#[tokio::test]
async fn missed_visits_are_recorded_once_with_two_brokers_and_across_a_kill() {
    let env = Production::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut first, mut second) = two_brokers(&env, dir.path(), short_schedule(dir.path())).await;

    let id = first.client(HOSPITAL).await.submit_lama("visits").await;
    let accepted = first
        .client(RECIPIENT)
        .await
        .referrals
        .accept(pb::AcceptRequest {
            action: sealed_action(
                RECIPIENT,
                &[HOSPITAL],
                &id,
                "accept",
                words("សុភា (Sophea)", "", "home visits"),
            ),
            acceptance: Some(pb::Acceptance {
                planned_action: String::new(),
                planned_date: "2026-01-01".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let next = accepted.event.unwrap().next_visit.expect("a schedule");
    assert_eq!(next.every_seconds as u64, VISIT_EVERY.as_secs());

    // Both brokers look every second: three visits missed, one record each.
    let started = std::time::Instant::now();
    while missed_visits(&first, &id).await.len() < 3 {
        assert!(
            started.elapsed() < VISIT_EVERY * 6,
            "visits were not missed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_once_per_visit(&missed_visits(&second, &id).await);

    // Both down across two more visits; the one that comes back records them, once each.
    let before = missed_visits(&first, &id).await.len();
    first.kill().await;
    second.kill().await;
    tokio::time::sleep(VISIT_EVERY * 2 + Duration::from_secs(1)).await;
    first.start_again().await;
    first.wait_for_health(ServingStatus::Serving).await;
    let started = std::time::Instant::now();
    while missed_visits(&first, &id).await.len() < before + 2 {
        assert!(
            started.elapsed() < VISIT_EVERY * 4,
            "the missed visits were not caught up"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    second.start_again().await;
    second.wait_for_health(ServingStatus::Serving).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_once_per_visit(&missed_visits(&second, &id).await);
}
