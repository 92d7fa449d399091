//! Production delivery through RabbitMQ.
//!
//! Topology (declared at startup and whenever a queue is missing; every declaration is idempotent):
//! - `<prefix>.deliveries`: a durable direct exchange; the routing key is the agency id.
//! - `<prefix>.agency.<id>`: one durable **quorum** queue per agency, bound with its id, with
//!   `x-delivery-limit`, `x-dead-letter-exchange`, `x-dead-letter-strategy=at-least-once` and
//!   `x-overflow=reject-publish` (at-least-once dead-lettering requires it).
//! - `<prefix>.dead-letter`: a durable fanout exchange and a quorum queue where messages returned
//!   `delivery_limit` times end up, visible and re-drivable (`spean-broker dead-letters`).
//!
//! The [`relay`](Amqp::relay) (module `relay`) publishes the store's mailbox (the transactional
//! outbox) in batches, `mandatory` and persistent, each agency's deliveries in a batch bundled into
//! as few messages as [`bundle`](super::bundle) allows. It waits for every publisher confirm, and
//! only then deletes the rows. Rows are *leased* (`lease_until`) so that several broker processes
//! never publish the same row at the same time; a relay that dies mid-batch leaves its leases to
//! expire and another relay republishes. Carried deliveries skip the lease: their rows are written
//! *held* for the relay of the broker that wrote them, which is handed them after the commit
//! ([`Handoff`](super::Handoff)); a hold that runs out is leased like any other row.
//! A delivery session consumes its agency's queue with a bounded prefetch and acks a message only when
//! the adapter confirmed every delivery in it on the same stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio::sync::{OnceCell, watch};
use tokio_util::sync::CancellationToken;

use super::bundle::{self, BundleAck};
use super::{DeliveryError, Pending, Settle};
use crate::config::AmqpConfig;
use crate::error::ErrorChain;
use crate::ids::AgencyId;
use crate::store::{DeliveryRef, Store};

mod relay;

/// A refused first connect can otherwise hang (see the lapin notes in `docs/operations.md`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a relay owns the rows it leased, and how long the rows of deliveries handed to it are
/// held for it; after that another relay may publish them.
pub const LEASE: Duration = Duration::from_secs(15);
/// How often a connection, and the dead-letter queue, are checked.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
const DEAD_LETTER_CHECK: Duration = Duration::from_secs(10);
/// Channels used at once to declare the agencies' queues at startup.
const DECLARE_CHANNELS: usize = 8;

pub struct Amqp {
    config: AmqpConfig,
    connection: RwLock<Option<Arc<Connection>>>,
    healthy: watch::Sender<bool>,
    /// Agencies whose queue this process has declared, or is declaring. Declaring one quorum queue
    /// from two channels at once lets the second return before RabbitMQ has started the queue, and
    /// a consumer on it then crashes RabbitMQ's channel and, with it, the whole connection (3.10:
    /// `basic.consume` fails with `noproc`, answered with INTERNAL_ERROR). So each queue is declared
    /// once per process, and whoever needs it waits for that one declaration.
    declared: Mutex<HashMap<AgencyId, Arc<OnceCell<()>>>>,
    /// Rows deleted since the outbox was last tidied, and whether a tidy is running.
    deleted: AtomicUsize,
    tidying: Arc<AtomicBool>,
}

impl Amqp {
    pub fn new(config: AmqpConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            connection: RwLock::new(None),
            healthy: watch::channel(false).0,
            declared: Mutex::new(HashMap::new()),
            deleted: AtomicUsize::new(0),
            tidying: Arc::new(AtomicBool::new(false)),
        })
    }

    /// True while a connection is up and the exchanges declared.
    pub fn healthy(&self) -> watch::Receiver<bool> {
        self.healthy.subscribe()
    }

    pub fn exchange(&self) -> String {
        format!("{}.deliveries", self.config.prefix)
    }

    pub fn queue(&self, agency: &AgencyId) -> String {
        format!("{}.agency.{agency}", self.config.prefix)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letter", self.config.prefix)
    }

    fn current(&self) -> Option<Arc<Connection>> {
        let guard = self.connection.read().unwrap_or_else(|p| p.into_inner());
        guard.clone().filter(|c| c.status().connected())
    }

    fn set_current(&self, connection: Option<Arc<Connection>>) {
        let mut guard = self.connection.write().unwrap_or_else(|p| p.into_inner());
        *guard = connection;
    }

    /// Opens a connection, bounded by [`CONNECT_TIMEOUT`].
    pub async fn connect(&self) -> Result<Connection, DeliveryError> {
        let properties =
            ConnectionProperties::default().with_connection_name("spean-broker".into());
        let tls = if self.config.ca_cert.as_os_str().is_empty() {
            lapin::tcp::OwnedTLSConfig::default()
        } else {
            let pem = std::fs::read_to_string(&self.config.ca_cert).map_err(|e| {
                DeliveryError::Unavailable(format!("{}: {e}", self.config.ca_cert.display()))
            })?;
            lapin::tcp::OwnedTLSConfig {
                identity: None,
                cert_chain: Some(pem),
            }
        };
        let connect = Connection::connect_with_config(
            self.config.url.expose(),
            properties,
            tls,
            lapin::runtime::default_runtime()?,
        );
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| DeliveryError::Unavailable("connect timed out".into()))?
            .map_err(DeliveryError::from)
    }

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
            let channel = connection.create_channel().await?;
            for agency in part {
                self.ensure_queue(&channel, agency).await?;
            }
            let _ = channel.close(200, "queues declared".into()).await;
            Ok::<(), DeliveryError>(())
        }))
        .await;
        declared.into_iter().collect()
    }

    /// Declares `agency`'s queue unless this process already has; concurrent callers share one
    /// declaration (see [`Amqp::declared`]).
    async fn ensure_queue(
        &self,
        channel: &Channel,
        agency: &AgencyId,
    ) -> Result<(), DeliveryError> {
        let once = {
            let mut declared = self.declared.lock().unwrap_or_else(|p| p.into_inner());
            declared.entry(agency.clone()).or_default().clone()
        };
        once.get_or_try_init(|| self.declare_agency(channel, agency))
            .await
            .map(|_| ())
    }

    /// Makes the next [`Amqp::ensure_queue`] for `agency` declare its queue again.
    fn forget_queue(&self, agency: &AgencyId) {
        let mut declared = self.declared.lock().unwrap_or_else(|p| p.into_inner());
        declared.remove(agency);
    }

    async fn declare_agency(
        &self,
        channel: &Channel,
        agency: &AgencyId,
    ) -> Result<(), DeliveryError> {
        channel
            .queue_declare(
                self.queue(agency).into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                self.queue_arguments(),
            )
            .await?;
        channel
            .queue_bind(
                self.queue(agency).into(),
                self.exchange().into(),
                agency.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

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
            let Some(agency) = origin(
                &delivery.properties,
                &format!("{}.agency.", self.config.prefix),
            ) else {
                tracing::warn!("a dead letter names no agency queue; leaving it in place");
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?;
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
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?;
                break;
            }
        }
        let _ = channel.close(200, "re-driven".into()).await;
        Ok(moved)
    }

    /// Keeps one connection up: connects, declares the topology, watches it, reconnects with
    /// backoff after a loss, and reports health meanwhile. Also reports dead letters.
    pub async fn supervise(self: Arc<Self>, store: Arc<dyn Store>, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        loop {
            if stop.is_cancelled() {
                break;
            }
            match self.clone().establish(store.as_ref()).await {
                Ok(connection) => {
                    tracing::info!("connected to RabbitMQ; exchanges declared");
                    backoff = Duration::from_millis(200);
                    self.set_current(Some(connection.clone()));
                    self.healthy.send_replace(true);
                    self.watch(&connection, &stop).await;
                    self.set_current(None);
                    self.healthy.send_replace(false);
                    if stop.is_cancelled() {
                        let _ = connection.close(200, "shutting down".into()).await;
                        break;
                    }
                    tracing::warn!("lost the RabbitMQ connection; reconnecting");
                }
                Err(e) => {
                    self.healthy.send_replace(false);
                    tracing::warn!(error = %ErrorChain(&e), "cannot reach RabbitMQ; retrying");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(jitter(backoff)) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn establish(
        self: Arc<Self>,
        store: &dyn Store,
    ) -> Result<Arc<Connection>, DeliveryError> {
        let connection = self.connect().await?;
        let agencies: Vec<AgencyId> = store
            .directory()
            .await?
            .map(|(directory, _)| directory.agencies.iter().map(|a| a.id.clone()).collect())
            .unwrap_or_default();
        self.declare_exchanges(&connection).await?;
        let connection = Arc::new(connection);
        // Every agency's queue is declared now, in the background: a session declares its own queue
        // before consuming and the relay declares any queue a publish finds missing, so nothing
        // waits for the whole directory.
        let (background, amqp_queues) = (connection.clone(), self.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            match amqp_queues.declare_queues(&background, &agencies).await {
                Ok(()) => tracing::info!(
                    queues = agencies.len(),
                    seconds = started.elapsed().as_secs_f32(),
                    "agency queues declared"
                ),
                Err(e) => {
                    tracing::warn!(error = %ErrorChain(&e), "declaring agency queues stopped; they are declared on first use")
                }
            }
        });
        Ok(connection)
    }

    async fn watch(&self, connection: &Connection, stop: &CancellationToken) {
        let mut since_check = Duration::ZERO;
        while connection.status().connected() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            }
            since_check += WATCH_INTERVAL;
            if since_check >= DEAD_LETTER_CHECK {
                since_check = Duration::ZERO;
                if let Ok(n) = self.dead_letters(connection).await
                    && n > 0
                {
                    tracing::error!(
                        count = n,
                        queue = %self.dead_letter_queue(),
                        "messages are in the dead-letter queue; inspect and re-drive them with `spean-broker dead-letters`"
                    );
                }
            }
        }
    }

    /// Starts consuming `agency`'s queue for one adapter connection.
    pub async fn open_session(
        &self,
        agency: &AgencyId,
        window: u16,
    ) -> Result<AmqpSession, DeliveryError> {
        let connection = self
            .current()
            .ok_or_else(|| DeliveryError::Unavailable("not connected".into()))?;
        let channel = connection.create_channel().await?;
        let consumer = match self.consume(&channel, agency, window).await {
            Ok(c) => c,
            Err(e) => {
                // Do not leak the channel: a connection has a bounded number of them.
                let _ = channel.close(200, "session not opened".into()).await;
                return Err(e);
            }
        };
        Ok(AmqpSession {
            channel,
            consumer,
            received: std::collections::VecDeque::new(),
            in_flight: HashMap::new(),
        })
    }
}

impl Amqp {
    async fn consume(
        &self,
        channel: &Channel,
        agency: &AgencyId,
        window: u16,
    ) -> Result<Consumer, DeliveryError> {
        self.ensure_queue(channel, agency).await?;
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

async fn confirm_channel(connection: &Connection) -> Result<Channel, DeliveryError> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
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

fn jitter(d: Duration) -> Duration {
    let nanos = uuid::Uuid::now_v7().as_u128() as u64 % 1000;
    d + d.mul_f64(nanos as f64 / 4000.0)
}

/// One adapter connection's consumer on its agency's queue.
pub struct AmqpSession {
    channel: Channel,
    consumer: Consumer,
    /// Received and not yet handed out: the rest of a bundle larger than the room the adapter's
    /// window had when it arrived.
    received: std::collections::VecDeque<Pending>,
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
                self.consumer.next().await
            } else {
                match self.consumer.next().now_or_never() {
                    Some(next) => next,
                    None => break,
                }
            };
            let delivery = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(DeliveryError::Unavailable(
                        "the consumer was cancelled".into(),
                    ));
                }
            };
            let kind = delivery.properties.kind().as_ref().map(|k| k.as_str());
            let Some(deliveries) = bundle::unbundle(kind, &delivery.data) else {
                tracing::error!(
                    queue = %delivery.routing_key,
                    "a message in the queue is not a Spean delivery; dead-lettering it"
                );
                let acker = delivery.acker;
                tokio::spawn(async move {
                    let _ = acker.reject(BasicRejectOptions { requeue: false }).await;
                });
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
        tokio::spawn(async move {
            let _ = channel.close(200, "adapter disconnected".into()).await;
        });
    }
}
