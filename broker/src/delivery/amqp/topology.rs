//! What the broker declares in RabbitMQ, at startup and whenever a queue is missing. Every
//! declaration is idempotent.
//!
//! - `<prefix>.deliveries`: a durable direct exchange; the routing key is the agency id.
//! - `<prefix>.agency.<id>`: one durable **quorum** queue per agency, bound with its id, with
//!   `x-delivery-limit`, `x-dead-letter-exchange`, `x-dead-letter-strategy=at-least-once` and
//!   `x-overflow=reject-publish` (at-least-once dead-lettering requires it), and
//!   `x-queue-leader-locator=balanced`, so that in a cluster the queues' leaders spread over the
//!   nodes instead of all sitting on the node the broker declared them through.
//! - `<prefix>.dead-letter`: a durable fanout exchange and a quorum queue where messages returned
//!   `delivery_limit` times end up, visible and re-drivable (`spean-broker dead-letters`).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ExchangeKind};

use super::Amqp;
use crate::delivery::DeliveryError;
use crate::ids::AgencyId;

/// Channels used at once to declare the agencies' queues at startup.
const DECLARE_CHANNELS: usize = 8;

impl Amqp {
    /// The arguments of every agency's queue.
    fn queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        let text = |s: &str| AMQPValue::LongString(s.into());
        args.insert("x-queue-type".into(), text("quorum"));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.config.delivery_limit)),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            text(&self.dead_letter_queue()),
        );
        args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        args.insert("x-overflow".into(), text("reject-publish"));
        args.insert("x-queue-leader-locator".into(), text("balanced"));
        args
    }

    /// Declares the exchanges and the dead-letter queue: what every publish and dead letter needs.
    pub async fn declare_exchanges(&self, connection: &Connection) -> Result<(), DeliveryError> {
        let channel = connection.create_channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_letter_queue().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        let mut dlq_args = FieldTable::default();
        dlq_args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        channel
            .queue_declare(
                self.dead_letter_queue().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                dlq_args,
            )
            .await?;
        channel
            .queue_bind(
                self.dead_letter_queue().into(),
                self.dead_letter_queue().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "exchanges declared".into()).await;
        Ok(())
    }

    /// Declares one queue per agency. A quorum queue takes RabbitMQ tens of milliseconds to set up, so
    /// a directory of a thousand agencies is declared over several channels at once: a minute or more
    /// all the same, which is why [`Amqp::supervise`] runs it beside serving rather than before it.
    pub async fn declare_queues(
        &self,
        connection: &Connection,
        agencies: &[AgencyId],
    ) -> Result<(), DeliveryError> {
        let chunk = agencies.len().div_ceil(DECLARE_CHANNELS).max(1);
        let declared = futures::future::join_all(agencies.chunks(chunk).map(|part| async move {
            for agency in part {
                self.ensure_queue(connection, agency).await?;
            }
            Ok::<(), DeliveryError>(())
        }))
        .await;
        declared.into_iter().collect()
    }

    /// Declares `agency`'s queue unless this process already has; concurrent callers share one
    /// declaration (see [`Amqp::declared`]).
    pub(super) async fn ensure_queue(
        &self,
        connection: &Connection,
        agency: &AgencyId,
    ) -> Result<(), DeliveryError> {
        let once = {
            let mut declared = self.declared.lock().unwrap_or_else(|p| p.into_inner());
            declared.entry(agency.clone()).or_default().clone()
        };
        once.get_or_try_init(|| self.declare_agency(connection, agency))
            .await
            .map(|_| ())
    }

    /// Makes the next [`Amqp::ensure_queue`] for `agency` declare its queue again.
    pub(super) fn forget_queue(&self, agency: &AgencyId) {
        let mut declared = self.declared.lock().unwrap_or_else(|p| p.into_inner());
        declared.remove(agency);
    }

    /// Declares `agency`'s queue and binds it to the exchange with the agency's id, on a channel of
    /// its own: a refused declaration closes its channel, and must not close a session's or the
    /// relay's. (Opening one costs two round trips; declaring a quorum queue, tens of
    /// milliseconds.)
    ///
    /// A queue declared by an earlier version has no leader locator, and RabbitMQ refuses to
    /// declare it again with different arguments (PRECONDITION_FAILED). Its leader was placed long
    /// ago, where the locator no longer matters, so it is taken as it is: checked passively and
    /// bound.
    async fn declare_agency(
        &self,
        connection: &Connection,
        agency: &AgencyId,
    ) -> Result<(), DeliveryError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let channel = connection.create_channel().await?;
        let declared = channel
            .queue_declare(self.queue(agency).into(), durable, self.queue_arguments())
            .await;
        let channel = match declared {
            Ok(_) => channel,
            Err(e) if refused_as_inequivalent(&e) => {
                tracing::info!(queue = %self.queue(agency), "queue declared by an earlier version, without a leader locator; using it as it is");
                let channel = connection.create_channel().await?;
                channel
                    .queue_declare(
                        self.queue(agency).into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..durable
                        },
                        FieldTable::default(),
                    )
                    .await?;
                channel
            }
            Err(e) => return Err(e.into()),
        };
        channel
            .queue_bind(
                self.queue(agency).into(),
                self.exchange().into(),
                agency.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "queue declared".into()).await;
        Ok(())
    }
}

/// Whether RabbitMQ refused a declaration because the queue exists with other arguments.
fn refused_as_inequivalent(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::PRECONDITIONFAILED))
    )
}
