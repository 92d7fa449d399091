//! One adapter connection's consumer on its agency's queue, with a prefetch of the adapter's
//! window. A message is acked only when the adapter confirmed every delivery in it on the same
//! stream; closing the channel returns the rest to the queue for the next connection.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use lapin::options::{BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tracing::Instrument;

use super::Amqp;
use crate::delivery::bundle::{self, BundleAck};
use crate::delivery::{DeliveryError, Pending, Settle};
use crate::ids::AgencyId;
use crate::store::DeliveryRef;

impl Amqp {
    /// Starts consuming `agency`'s queue for one adapter connection.
    pub async fn open_session(
        self: &Arc<Self>,
        agency: &AgencyId,
        window: u16,
    ) -> Result<AmqpSession, DeliveryError> {
        let (connection, generation) = self
            .current_numbered()
            .ok_or(DeliveryError::Unavailable("not connected"))?;
        let channel = self
            .answered(&connection, async {
                Ok(connection.create_channel().await?)
            })
            .await?;
        let consumer = match self
            .answered(
                &connection,
                self.consume(&connection, &channel, agency, window),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                // Do not leak the channel: a connection has a bounded number of them. Bounded,
                // since a connection given up on for not answering will not answer this either.
                let _ = tokio::time::timeout(
                    super::connection::ANSWER_TIMEOUT,
                    channel.close(200, "session not opened".into()),
                )
                .await;
                return Err(e);
            }
        };
        Ok(AmqpSession {
            channel,
            consumer,
            generation,
            amqp: self.clone(),
            received: VecDeque::new(),
            in_flight: HashMap::new(),
        })
    }

    /// Declares `agency`'s queue if this process has not, and consumes it with a prefetch of
    /// `window` messages.
    async fn consume(
        &self,
        connection: &Connection,
        channel: &Channel,
        agency: &AgencyId,
        window: u16,
    ) -> Result<Consumer, DeliveryError> {
        self.ensure_queue(connection, agency).await?;
        channel
            .basic_qos(window, BasicQosOptions::default())
            .await?;
        Ok(channel
            .basic_consume(
                self.queue(agency).into(),
                format!("spean-{agency}-{}", uuid::Uuid::now_v7()).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?)
    }
}

/// One adapter connection's consumer on its agency's queue.
pub struct AmqpSession {
    /// The session's own channel: closing it returns every unacked message to the queue.
    channel: Channel,
    consumer: Consumer,
    /// The number of the connection the channel is on: a session ends when the supervisor gives
    /// up on that connection, so that its adapter reconnects to one that works.
    generation: u64,
    amqp: Arc<Amqp>,
    /// Received and not yet handed out: the rest of a bundle larger than the room the adapter's
    /// window had when it arrived.
    received: VecDeque<Pending>,
    /// Handed out or waiting in `received`, not yet confirmed, with the ack of every message that
    /// carried it: a row published twice (a lease that ran out mid-publish) can reach one consumer
    /// twice, and each copy's message counts it as settled when it is.
    in_flight: HashMap<uuid::Uuid, InFlight>,
}

struct InFlight {
    reference: DeliveryRef,
    acks: Vec<Arc<BundleAck>>,
    /// Sent down the stream; only then can the adapter's confirmation settle it.
    handed_out: bool,
}

impl AmqpSession {
    /// The next deliveries, at most `room`: what is left of an earlier bundle first, else waits for
    /// a message and takes whatever else has already arrived. A second copy of a delivery in flight
    /// is not sent again. A message that is not something Spean wrote never will be: it is rejected
    /// at once, which dead-letters it.
    ///
    /// Cancel-safe: nothing is awaited once a message is taken from the consumer.
    pub async fn next_batch(&mut self, room: usize) -> Result<Vec<Pending>, DeliveryError> {
        let room = room.max(1);
        while self.received.len() < room {
            let next = if self.received.is_empty() {
                tokio::select! {
                    next = self.consumer.next() => next,
                    () = self.amqp.given_up(self.generation) => {
                        return Err(DeliveryError::Unavailable("the RabbitMQ connection was given up"));
                    }
                }
            } else {
                match self.consumer.next().now_or_never() {
                    Some(next) => next,
                    None => break,
                }
            };
            let delivery = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(DeliveryError::Unavailable("the consumer was cancelled")),
            };
            let kind = delivery.properties.kind().as_ref().map(|k| k.as_str());
            let Some(deliveries) = bundle::unbundle(kind, &delivery.data) else {
                tracing::error!(
                    queue = %delivery.routing_key,
                    "a message in the queue is not a Spean delivery; dead-lettering it"
                );
                let acker = delivery.acker;
                tokio::spawn(
                    async move {
                        let _ = acker.reject(BasicRejectOptions { requeue: false }).await;
                    }
                    .in_current_span(),
                );
                continue;
            };
            let ack = BundleAck::new(delivery.acker, deliveries.len());
            for (message, reference) in deliveries {
                if let Some(known) = self.in_flight.get_mut(&reference.delivery_id) {
                    known.acks.push(ack.clone());
                    continue;
                }
                self.in_flight.insert(
                    reference.delivery_id,
                    InFlight {
                        reference,
                        acks: vec![ack.clone()],
                        handed_out: false,
                    },
                );
                self.received.push_back(Pending {
                    reference,
                    message: Some(message),
                });
            }
        }
        let take = room.min(self.received.len());
        let batch: Vec<Pending> = self.received.drain(..take).collect();
        for pending in &batch {
            if let Some(sent) = self.in_flight.get_mut(&pending.reference.delivery_id) {
                sent.handed_out = true;
            }
        }
        Ok(batch)
    }

    /// Takes a delivery this session handed out, with the acks that settle it; `None` if it did
    /// not hand out that delivery (or it was taken already).
    pub fn take(&mut self, delivery_id: uuid::Uuid) -> Option<(DeliveryRef, Settle)> {
        if !self.in_flight.get(&delivery_id)?.handed_out {
            return None;
        }
        let sent = self.in_flight.remove(&delivery_id)?;
        Some((sent.reference, Settle::Amqp(sent.acks)))
    }
}

impl Drop for AmqpSession {
    /// Closing the channel returns every unconfirmed message to the queue for the next connection.
    fn drop(&mut self) {
        let channel = self.channel.clone();
        tokio::spawn(
            async move {
                let _ = channel.close(200, "adapter disconnected".into()).await;
            }
            .in_current_span(),
        );
    }
}
