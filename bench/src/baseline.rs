//! The ceiling: raw lapin against the same RabbitMQ, doing the least any durable broker must do per
//! message — a 1 KiB persistent message into a quorum queue with a publisher confirm, consumed with a
//! manual ack. One queue per agency, one publishing and one consuming channel per agency, driven by
//! the same [`load`](crate::load) code and shape as the Spean runs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::task::JoinSet;
use tokio_stream::StreamExt;

use crate::load::{self, Shape, Submitter, Throughput};
use crate::recorder::Recorder;
use crate::servers::{Servers, Vhost};

/// Message body size, the size of a referral's case file.
const BODY_BYTES: usize = 1024;
/// Unacknowledged messages per consumer, as Spean's adapters ask for (`Hello.window`).
const PREFETCH: u16 = 64;

#[derive(Clone)]
struct Publishers {
    /// One confirm-mode channel per sending agency.
    channels: Arc<Vec<Channel>>,
    queues: Arc<Vec<String>>,
}

impl Submitter for Publishers {
    const FEEDBACK_PER_MESSAGE: u64 = 0;

    async fn submit(&self, from: usize, to: usize, tag: String) -> Result<(), String> {
        let mut body = tag.into_bytes();
        body.push(b' ');
        body.resize(BODY_BYTES, b'.');
        let confirm = self.channels[from]
            .basic_publish(
                "".into(),
                self.queues[to].as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .map_err(|e| e.to_string())?;
        let confirmation = confirm.await.map_err(|e| e.to_string())?;
        if confirmation.is_ack() {
            Ok(())
        } else {
            Err("RabbitMQ nacked the message".into())
        }
    }
}

/// Measures the baseline's sustained throughput in a vhost of its own, removed afterwards.
pub async fn run(
    servers: &Servers,
    shape: &Shape,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Throughput> {
    let vhost = Vhost::create(servers).await?;
    let result = measure_in(&vhost, shape, warmup, measure).await;
    vhost.delete().await?;
    result
}

async fn measure_in(
    vhost: &Vhost,
    shape: &Shape,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Throughput> {
    let publishing = Connection::connect(&vhost.url, ConnectionProperties::default()).await?;
    let consuming = Connection::connect(&vhost.url, ConnectionProperties::default()).await?;
    let recorder = Recorder::new()?;
    let mut queues = Vec::new();
    let mut channels = Vec::new();
    let mut consumers = JoinSet::new();
    for i in 0..shape.agencies {
        let queue = format!("bench-{i:04}");
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        let channel = publishing.create_channel().await?;
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channels.push(channel);

        let channel = consuming.create_channel().await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                format!("bench-consumer-{i}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let recorder = recorder.clone();
        consumers.spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let end = delivery
                    .data
                    .iter()
                    .position(|b| *b == b' ')
                    .unwrap_or(delivery.data.len());
                recorder.received(&String::from_utf8_lossy(&delivery.data[..end]));
                if delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .is_err()
                {
                    recorder.reconnects.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        queues.push(queue);
    }
    let publishers = Publishers {
        channels: Arc::new(channels),
        queues: Arc::new(queues),
    };
    let result = load::sustained(&publishers, &recorder, shape, warmup, measure).await;
    consumers.shutdown().await;
    let _ = publishing.close(200, "done".into()).await;
    let _ = consuming.close(200, "done".into()).await;
    result
}
