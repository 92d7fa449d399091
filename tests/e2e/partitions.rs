//! Networks that go silent: a partition that drops packets without resetting anything.

use crate::helpers::{BrokerProcess, Relay, ServingStatus};
use crate::production::Production;

/// `host:port` of an `amqp://user:password@host:port/vhost` URL.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// RabbitMQ reached through a relay that goes silent: no reset, no close, just nothing. The broker
/// notices through the AMQP heartbeat it asks for (10 s by default; RabbitMQ's own is 60 s: two
/// minutes before anything was noticed) and reports NOT_SERVING after about two heartbeats, so that
/// a load balancer sends adapters elsewhere instead of to a broker that accepts submits and
/// delivers nothing. The bound, 45 s, leaves room for a slow machine above the 20–30 s expected.
#[tokio::test]
async fn a_silent_partition_to_rabbitmq_is_noticed_and_reported_not_serving() {
    let env = Production::new().await;
    let mut settings = env.broker_env();
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
    relay.go_silent();
    let noticed = tokio::time::timeout(std::time::Duration::from_secs(45), async {
        while broker.health().await != Ok(ServingStatus::NotServing) {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(noticed.is_ok(), "the silent partition went unnoticed");
}

#[test]
fn the_authority_of_an_amqp_url() {
    assert_eq!(
        authority("amqp://guest:guest@127.0.0.1:5672/spean-x"),
        "127.0.0.1:5672"
    );
    assert_eq!(authority("amqp://localhost:5673"), "localhost:5673");
}
