//! Story 1's silence made impossible to miss: a referral nobody acknowledges is escalated, tier by
//! tier, to the agencies the directory names, once each, whichever brokers run and whenever they
//! are killed; an acknowledgement stops it. Deadlines are seconds here, set through the directory.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use spean_proto::v1 as pb;

use crate::helpers::{BrokerProcess, ServingStatus};
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
            action: Some(pb::Action {
                referral_id: referral_id.to_owned(),
                request_id: format!("ack-{referral_id}"),
                actor_person: "សុភា (Sophea)".into(),
                note: "យើងនឹងទៅលេងផ្ទះថ្ងៃស្អែក".into(),
            }),
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
            action: Some(pb::Action {
                referral_id: silent.clone(),
                request_id: "province-accepts".into(),
                actor_person: String::new(),
                note: String::new(),
            }),
            acceptance: Some(pb::Acceptance {
                planned_action: "visit".into(),
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

/// Two brokers on one PostgreSQL and RabbitMQ both look for passed deadlines every second: each
/// escalation is written once. One broker is then SIGKILLed before the next deadline and started
/// again after it has passed, while the other is stopped too: it fires what it missed when it
/// starts, once.
#[tokio::test]
async fn escalations_fire_once_with_two_brokers_and_across_a_kill() {
    let env = Production::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = env.broker_env();
    settings.push(short_deadlines(dir.path()));
    let mut first =
        BrokerProcess::start_with(&dir.path().join("broker"), "127.0.0.1:0", &settings).await;
    first.wait_for_health(ServingStatus::Serving).await;
    let mut with_pki = settings.clone();
    with_pki.push((
        "SPEAN_BROKER_TLS__PKI_DIR".into(),
        dir.path().join("broker/pki").display().to_string(),
    ));
    let mut second =
        BrokerProcess::start_with(&dir.path().join("broker-2"), "127.0.0.1:0", &with_pki).await;
    second.wait_for_health(ServingStatus::Serving).await;

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
