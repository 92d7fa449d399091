//! The production path (PostgreSQL + RabbitMQ) under faults. Each test runs a stream of referrals and
//! feedback between several adapters, breaks something mid-stream, and then checks by message id that
//! everything the broker accepted arrived, and that each adapter's user sees it exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::helpers::{AdapterProcess, BrokerProcess, GrpcClient, ServingStatus, eventually};
use crate::production::Production;
use crate::traffic::{
    self, Ledger, RECIPIENTS, SENDER, assert_feedback_exactly, assert_inbox_exactly,
};

/// A broker on `env` plus the sender's and recipients' adapters, all running.
struct Network {
    dir: tempfile::TempDir,
    broker: BrokerProcess,
    sender: AdapterProcess,
    recipients: Vec<AdapterProcess>,
}

impl Network {
    async fn start(env: &Production) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), env).await
    }

    async fn start_in(dir: tempfile::TempDir, env: &Production) -> Self {
        let broker =
            BrokerProcess::start_with(&dir.path().join("broker"), "127.0.0.1:0", &env.broker_env())
                .await;
        broker.wait_for_health(ServingStatus::Serving).await;
        let mut sender = AdapterProcess::new(&broker, SENDER, dir.path());
        sender.start();
        let recipients = RECIPIENTS
            .iter()
            .map(|agency| {
                let mut a = AdapterProcess::new(&broker, agency, dir.path());
                a.start();
                a
            })
            .collect();
        Self {
            dir,
            broker,
            sender,
            recipients,
        }
    }

    /// What the broker accepted from the sender, once its outbox drained.
    async fn accepted(&self, expected: usize) -> BTreeMap<String, String> {
        traffic::accepted(
            &self.sender,
            &mut self.broker.client(SENDER).await,
            expected,
        )
        .await
    }

    async fn clients(&self) -> BTreeMap<String, GrpcClient> {
        let mut clients = BTreeMap::new();
        for agency in RECIPIENTS {
            clients.insert(agency.to_owned(), self.broker.client(agency).await);
        }
        clients
    }

    /// Acknowledges everything and checks the whole ledger.
    async fn finish(&mut self, referrals: BTreeMap<String, String>) {
        let mut ledger = Ledger {
            referrals,
            acks: BTreeMap::new(),
        };
        for r in &self.recipients {
            assert_inbox_exactly(r, &ledger).await;
        }
        ledger.acks = traffic::acknowledge(&mut self.clients().await, &ledger.referrals).await;
        assert_feedback_exactly(&self.sender, &ledger).await;
        for r in &self.recipients {
            assert_inbox_exactly(r, &ledger).await;
        }
        self.sender.kill().await;
        for r in &mut self.recipients {
            r.kill().await;
        }
        let _ = &self.dir;
    }
}

#[tokio::test]
async fn production_broker_sigkilled_mid_stream_loses_and_duplicates_nothing() {
    let env = Production::new().await;
    let mut net = Network::start(&env).await;
    tokio::join!(traffic::send(&net.sender, "kill", 0..40), async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        net.broker.restart().await;
    });
    let accepted = net.accepted(40).await;
    net.finish(accepted).await;
}

#[tokio::test]
async fn rabbitmq_stopped_and_started_mid_stream_loses_and_duplicates_nothing() {
    let env = Production::with_private_rabbit().await;
    let mut net = Network::start(&env).await;
    let (broker, sender) = (&net.broker, &net.sender);
    let (_, accepted_while_down) = tokio::join!(traffic::send(sender, "rmq", 0..20), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        env.rabbit().stop();
        broker.wait_for_health(ServingStatus::NotServing).await;
        // The broker keeps accepting referrals into its outbox: the rest of the stream is sent now.
        let mut client = broker.client(SENDER).await;
        let before = traffic::broker_sent(&mut client).await;
        traffic::send(sender, "rmq", 20..40).await;
        let during = eventually("the broker to accept every referral", || async {
            let now = traffic::broker_sent(&mut broker.client(SENDER).await).await;
            (now.len() == 40).then_some(now)
        })
        .await;
        assert_eq!(
            broker.health().await,
            Ok(ServingStatus::NotServing),
            "RabbitMQ came back by itself"
        );
        env.rabbit().start_again().await;
        broker.wait_for_health(ServingStatus::Serving).await;
        during.keys().filter(|id| !before.contains_key(*id)).count()
    });
    assert!(
        accepted_while_down >= 20,
        "only {accepted_while_down} referrals were accepted while RabbitMQ was down"
    );
    let accepted = net.accepted(40).await;
    assert!(net.broker.log().contains("lost the RabbitMQ connection"));
    net.finish(accepted).await;
}

#[tokio::test]
async fn postgres_sessions_cut_mid_stream_lose_and_duplicate_nothing() {
    let env = Production::new().await;
    let mut net = Network::start(&env).await;
    let (_, cut) = tokio::join!(traffic::send(&net.sender, "pg", 0..40), async {
        let mut cut = 0;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cut += env.terminate_sessions().await;
        }
        cut
    });
    assert!(cut > 0, "no broker session was cut");
    let accepted = net.accepted(40).await;
    net.finish(accepted).await;
}

#[tokio::test]
async fn an_adapter_offline_for_a_while_gets_its_filled_queue_once_it_reconnects() {
    let env = Production::new().await;
    let mut net = Network::start(&env).await;
    let offline = 0; // mlup-russey
    net.recipients[offline].kill().await;
    traffic::send(&net.sender, "offline", 0..30).await;
    let accepted = net.accepted(30).await;
    let queue = format!("spean.agency.{}", RECIPIENTS[offline]);
    eventually("the offline agency's queue to fill", || async {
        (env.depth(&queue).await >= 15).then_some(())
    })
    .await;
    net.recipients[offline].start();
    net.finish(accepted).await;
    assert_eq!(env.depth(&queue).await, 0);
}

#[tokio::test]
async fn an_adapter_moved_between_two_brokers_mid_stream_loses_and_duplicates_nothing() {
    let env = Production::new().await;
    let mut net = Network::start(&env).await;
    // The second broker shares the database, RabbitMQ and the network's PKI.
    let mut settings = env.broker_env();
    settings.push((
        "SPEAN_BROKER_TLS__PKI_DIR".into(),
        net.dir.path().join("broker/pki").display().to_string(),
    ));
    let second =
        BrokerProcess::start_with(&net.dir.path().join("broker-2"), "127.0.0.1:0", &settings).await;
    second.wait_for_health(ServingStatus::Serving).await;
    let (sender, recipients) = (&net.sender, &mut net.recipients);
    tokio::join!(traffic::send(sender, "move", 0..40), async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        // The first recipient's adapter moves to the second broker mid-stream.
        let moved = &mut recipients[0];
        moved.kill().await;
        moved.point_to(&second);
        moved.start();
    });
    let accepted = net.accepted(40).await;
    net.finish(accepted).await;
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_at_the_delivery_limit_and_reported() {
    let env = Production::new().await;
    let mut net = Network::start(&env).await;
    env.publish_poison(RECIPIENTS[0]).await;
    traffic::send(&net.sender, "poison", 0..10).await;
    let accepted = net.accepted(10).await;
    eventually("the poison message in the dead-letter queue", || async {
        (env.depth("spean.dead-letter").await == 1).then_some(())
    })
    .await;
    assert!(net.broker.log().contains("not a Spean delivery"));
    let count = net.broker.admin(&["dead-letters", "count"]).await;
    assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "1");
    net.finish(accepted).await;
    eventually("the broker to report the dead letter", || async {
        net.broker
            .log()
            .contains("messages are in the dead-letter queue")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_broker_reaches_rabbitmq_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    // The network's PKI issues RabbitMQ's server certificate too (for localhost).
    let init = tokio::process::Command::new(crate::helpers::bin("spean-broker"))
        .arg("--data-dir")
        .arg(dir.path().join("broker"))
        .args(["pki", "init"])
        .output()
        .await
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let env = Production::with_tls_rabbit(&dir.path().join("broker/pki")).await;
    let mut net = Network::start_in(dir, &env).await;
    assert!(
        env.broker_env()
            .iter()
            .any(|(_, v)| v.starts_with("amqps://")),
        "the broker is not using TLS"
    );
    traffic::send(&net.sender, "tls", 0..6).await;
    let accepted = net.accepted(6).await;
    net.finish(accepted).await;
}
