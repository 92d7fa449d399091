//! The dead-letter queue, for an operator: how many messages wait in it, and moving them back to
//! the queues they died in once the cause is fixed (`spean-broker dead-letters`).

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, BasicProperties, Connection};

use super::Amqp;
use super::connection::confirm_channel;
use crate::delivery::DeliveryError;

impl Amqp {
    /// How many messages wait in the dead-letter queue.
    pub async fn dead_letters(&self, connection: &Connection) -> Result<u32, DeliveryError> {
        let channel = connection.create_channel().await?;
        let queue = channel
            .queue_declare(
                self.dead_letter_queue().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "counted".into()).await;
        Ok(queue.message_count())
    }

    /// Moves every dead-lettered message back to the queue it died in, and returns how many. For an
    /// operator who fixed the cause (see `spean-broker dead-letters redrive`); a message that still
    /// cannot be delivered returns to the dead-letter queue after `delivery_limit` more attempts.
    pub async fn redrive(&self, connection: &Connection) -> Result<u32, DeliveryError> {
        // Only what is there now: a message that dies again while this runs is not picked up twice.
        let waiting = self.dead_letters(connection).await?;
        let channel = confirm_channel(connection).await?;
        let mut moved = 0;
        while moved < waiting
            && let Some(message) = channel
                .basic_get(self.dead_letter_queue().into(), BasicGetOptions::default())
                .await?
        {
            let delivery = message.delivery;
            let Some(agency) = origin(&delivery.properties, &self.queue_prefix()) else {
                tracing::warn!("a dead letter names no agency queue; leaving it in place");
                leave_in_place(&delivery.acker).await?;
                break;
            };
            let confirmation = channel
                .basic_publish(
                    self.exchange().into(),
                    agency.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &delivery.data,
                    delivery
                        .properties
                        .clone()
                        .with_headers(FieldTable::default()),
                )
                .await?
                .await?;
            if confirmation.is_ack() && confirmation.take_message().is_none() {
                delivery.acker.ack(BasicAckOptions::default()).await?;
                moved += 1;
            } else {
                leave_in_place(&delivery.acker).await?;
                break;
            }
        }
        let _ = channel.close(200, "re-driven".into()).await;
        Ok(moved)
    }
}

/// Returns a dead letter to the dead-letter queue, for a later redrive.
async fn leave_in_place(acker: &Acker) -> Result<(), lapin::Error> {
    acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// The agency whose queue a dead letter came from, from the `x-first-death-queue` header.
fn origin(properties: &BasicProperties, queue_prefix: &str) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    let queue = match headers.inner().get("x-first-death-queue")? {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        _ => return None,
    };
    queue.strip_prefix(queue_prefix).map(str::to_owned)
}
