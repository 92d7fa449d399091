//! Networks that go silent: a partition that drops packets without resetting anything.

use crate::helpers::{BrokerProcess, Relay, ServingStatus, lama};
use crate::production::Production;

/// `host:port` of a `scheme://user:password@host:port/path` URL (AMQP or PostgreSQL).
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// A broker reaching RabbitMQ through a [`Relay`], with a heartbeat as long as RabbitMQ's own
/// (60 s: two minutes before missed heartbeats would tell), once it reports SERVING. The
/// directory holds the broker's data and lives as long as the test keeps it.
async fn serving_behind_a_relay_to_rabbitmq(
    env: &Production,
) -> (Relay, BrokerProcess, tempfile::TempDir) {
    let mut settings = env.broker_env();
    settings.push(("SPEAN_BROKER_AMQP__HEARTBEAT_S".into(), "60".into()));
    let url = settings
        .iter_mut()
        .find(|(k, _)| k == "SPEAN_BROKER_AMQP__URL")
        .map(|(_, v)| v)
        .unwrap();
    let rabbit = authority(url).to_owned();
    let relay = Relay::start(rabbit.parse().unwrap()).await;
    *url = url.replacen(&rabbit, &relay.addr.to_string(), 1);

    let dir = tempfile::tempdir().unwrap();
    let broker =
        BrokerProcess::start_with(&dir.path().join("broker"), "127.0.0.1:0", &settings).await;
    broker.wait_for_health(ServingStatus::Serving).await;
    (relay, broker, dir)
}

/// RabbitMQ reached through a relay that goes silent (no reset, no close, just nothing), with a
/// heartbeat as long as RabbitMQ's own (60 s: two minutes before the heartbeat would notice), while
/// referrals are submitted: their publisher confirms stay late,
/// and the broker takes that for a lost connection well before the heartbeat does. It reports
/// NOT_SERVING, and keeps every submitted referral in its outbox for when RabbitMQ is back.
#[tokio::test]
async fn late_publisher_confirms_are_taken_for_a_lost_connection() {
    let env = Production::new().await;
    let (relay, broker, _dir) = serving_behind_a_relay_to_rabbitmq(&env).await;
    relay.go_silent();
    let mut hospital = broker.client("ahc-swu").await;
    let started = std::time::Instant::now();
    let mut submitted = 0;
    let noticed = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while broker.health().await != Ok(ServingStatus::NotServing) {
            if hospital
                .referrals
                .submit(lama(&format!("late-confirms-{submitted}")))
                .await
                .is_ok()
            {
                submitted += 1;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    })
    .await;
    assert!(
        noticed.is_ok(),
        "late publisher confirms went unnoticed for {:?}",
        started.elapsed()
    );
    assert!(
        submitted > 0,
        "no referral was accepted before the broker noticed"
    );
    assert_eq!(
        env.outbox("mlup-russey").await,
        submitted,
        "every referral accepted waits in the outbox"
    );
}

/// The same partition with nothing to publish: no referral is submitted, so no publisher confirm
/// can be late. The broker still notices well before its 60-s heartbeat would, since its periodic
/// check of the dead-letter queue waits for RabbitMQ's answer only so long
/// (`ANSWER_TIMEOUT`); before that bound the check waited forever and held the supervisor with
/// it, and the broker reported SERVING on a dead link. Once the network is back it connects again.
#[tokio::test]
async fn an_idle_broker_notices_a_silent_partition_to_rabbitmq_and_reconnects_after_it() {
    let env = Production::new().await;
    let (relay, broker, _dir) = serving_behind_a_relay_to_rabbitmq(&env).await;
    relay.go_silent();
    let started = std::time::Instant::now();
    let noticed = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while broker.health().await != Ok(ServingStatus::NotServing) {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    })
    .await;
    assert!(
        noticed.is_ok(),
        "an idle broker did not notice the silent partition in {:?}",
        started.elapsed()
    );
    relay.heal();
    broker.wait_for_health(ServingStatus::Serving).await;
    assert!(
        broker.log().contains("RabbitMQ did not answer in time"),
        "the dead-letter check is what noticed: {}",
        broker.log()
    );
}

/// PostgreSQL reached through a relay that goes silent. A call that needs the database is answered
/// (with an error, and nothing half-written) within `limits.request_timeout_ms`, here 3 s, instead
/// of waiting on a connection that will not answer; health reports NOT_SERVING, since its probe of
/// the database is bounded too. Before these bounds a submit waited for the pool's 10-s acquire
/// timeout, or for TCP to give up on a statement in flight: minutes.
#[tokio::test]
async fn a_silent_partition_to_postgresql_holds_no_request_past_the_request_timeout() {
    let env = Production::new().await;
    let mut settings: Vec<(String, String)> = env
        .broker_env()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("SPEAN_BROKER_AMQP__"))
        .collect();
    settings.push((
        "SPEAN_BROKER_LIMITS__REQUEST_TIMEOUT_MS".into(),
        "3000".into(),
    ));
    let url = settings
        .iter_mut()
        .find(|(k, _)| k == "SPEAN_BROKER_DATABASE__URL")
        .map(|(_, v)| v)
        .unwrap();
    let postgres = authority(url).to_owned();
    let relay = Relay::start(postgres.parse().unwrap()).await;
    *url = url.replacen(&postgres, &relay.addr.to_string(), 1);

    let dir = tempfile::tempdir().unwrap();
    let broker =
        BrokerProcess::start_with(&dir.path().join("broker"), "127.0.0.1:0", &settings).await;
    broker.wait_for_health(ServingStatus::Serving).await;
    let mut hospital = broker.client("ahc-swu").await;
    hospital
        .referrals
        .submit(lama("before-the-partition"))
        .await
        .unwrap();

    relay.go_silent();
    let started = std::time::Instant::now();
    let answer = hospital
        .referrals
        .submit(lama("during-the-partition"))
        .await;
    let waited = started.elapsed();
    assert!(
        answer.is_err(),
        "a submit succeeded with the database out of reach"
    );
    assert!(
        waited < std::time::Duration::from_secs(6),
        "the submit was held {waited:?} by a database that does not answer"
    );
    let noticed = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while broker.health().await != Ok(ServingStatus::NotServing) {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(noticed.is_ok(), "health kept reporting SERVING");
}

#[test]
fn the_authority_of_an_amqp_url() {
    assert_eq!(
        authority("amqp://guest:guest@127.0.0.1:5672/spean-x"),
        "127.0.0.1:5672"
    );
    assert_eq!(authority("amqp://localhost:5673"), "localhost:5673");
}
