//! The queues in RabbitMQ across versions of the broker.

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use spean_proto::v1 as pb;

use crate::helpers::{BrokerProcess, ServingStatus};
use crate::production::Production;

/// A queue declared by a broker from before leader spreading has no `x-queue-leader-locator`, and
/// RabbitMQ refuses to declare it again with one (PRECONDITION_FAILED, which also closes the
/// channel). An upgraded broker uses the queue as it is: it serves, and the referral waiting in
/// that queue's outbox reaches its agency.
#[tokio::test]
async fn a_queue_declared_by_an_earlier_version_is_used_as_it_is() {
    let env = Production::new().await;
    let connection = Connection::connect(&env.amqp_url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut earlier = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(s.into());
    earlier.insert("x-queue-type".into(), text("quorum"));
    earlier.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(5));
    earlier.insert("x-dead-letter-exchange".into(), text("spean.dead-letter"));
    earlier.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    earlier.insert("x-overflow".into(), text("reject-publish"));
    channel
        .queue_declare(
            "spean.agency.mlup-russey".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            earlier,
        )
        .await
        .unwrap();
    let _ = connection.close(200, "declared".into()).await;

    let dir = tempfile::tempdir().unwrap();
    let broker =
        BrokerProcess::start_with(&dir.path().join("broker"), "127.0.0.1:0", &env.broker_env())
            .await;
    broker.wait_for_health(ServingStatus::Serving).await;
    let id = broker
        .client("ahc-swu")
        .await
        .submit_lama("into-an-earlier-queue")
        .await;
    let mut ngo = broker.client("mlup-russey").await;
    let mut stream = ngo.subscribe(10).await;
    loop {
        let delivery = stream
            .next_within(std::time::Duration::from_secs(20), "the referral")
            .await;
        stream.confirm(delivery.delivery_id.clone()).await;
        if let Some(pb::delivery::Payload::Referral(r)) = delivery.payload
            && r.envelope.unwrap().referral_id == id
        {
            break;
        }
    }
}
