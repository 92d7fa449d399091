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
//! The [`relay`](Amqp::relay) publishes the store's mailbox (the transactional outbox) in batches,
//! `mandatory` and persistent, each agency's deliveries in a batch bundled into as few messages as
//! [`bundle`](super::bundle) allows. It waits for every publisher confirm, and only then deletes the
//! rows. Rows are *leased* (`lease_until`) so that several broker processes never publish the same
//! row at the same time; a relay that dies mid-batch leaves its leases to expire and another relay
//! republishes. Carried deliveries skip the lease: their rows are written *held* for the relay of
//! the broker that wrote them, which is handed them after the commit ([`Handoff`]); a hold that
//! runs out is leased like any other row.
//! A delivery session consumes its agency's queue with a bounded prefetch and acks a message only when
//! the adapter confirmed every delivery in it on the same stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use prost::Message;
use tokio::sync::{OnceCell, watch};
use tokio_util::sync::CancellationToken;

use tracing::Instrument;

use super::bundle::{self, BUNDLE_TYPE, BundleAck, Outgoing};
use super::{DeliveryError, DeliveryRef, Doorbell, Handoff, Pending, Settle};
use crate::config::AmqpConfig;
use crate::error::ErrorChain;
use crate::gateway::convert;
use crate::ids::AgencyId;
use crate::referral::workflow::Workflow;
use crate::store::{MailboxEntry, Store};

/// A refused first connect can otherwise hang (see the lapin notes in `docs/operations.md`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a relay owns the rows it leased, and how long the rows of deliveries handed to it are
/// held for it; after that another relay may publish them.
pub const LEASE: Duration = Duration::from_secs(15);
/// How long a published batch may wait for its publisher confirms: well inside [`LEASE`], so no
/// other relay publishes those rows while this one may still delete them.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// Published batches waiting for their confirms while the relay leases the next.
const BATCHES_IN_FLIGHT: usize = 4;
/// Handed-off batches waiting for their confirms while the relay takes the next. Fewer than
/// [`BATCHES_IN_FLIGHT`]: a handoff is published as soon as it arrives, so under load this limit
/// is what gathers handoffs into bundles, one message per agency rather than one per write.
const HANDOFFS_IN_FLIGHT: usize = 2;
/// How often a connection, and the dead-letter queue, are checked.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
const DEAD_LETTER_CHECK: Duration = Duration::from_secs(10);
/// Channels used at once to declare the agencies' queues at startup.
const DECLARE_CHANNELS: usize = 8;
/// Outbox rows the relay deletes between two requests to clear them out ([`Store::tidy_outbox`]):
/// at the benchmark's maximum, every three or four seconds.
const TIDY_AFTER_ROWS: usize = 20_000;

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
    pub async fn supervise(self: Arc<Self>, workflow: Arc<Workflow>, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        loop {
            if stop.is_cancelled() {
                break;
            }
            match self.clone().establish(&workflow).await {
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
        workflow: &Workflow,
    ) -> Result<Arc<Connection>, DeliveryError> {
        let connection = self.connect().await?;
        let agencies: Vec<AgencyId> = workflow
            .directory()
            .await
            .map_err(|e| DeliveryError::Unavailable(e.to_string()))?
            .agencies
            .iter()
            .map(|a| a.id.clone())
            .collect();
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

    /// Publishes the outbox until `stop`. Deliveries handed over by this process's writes
    /// ([`Doorbell::queued`]) go first, as they are: their rows are held for this relay, so it
    /// neither leases nor reads them. Otherwise, when woken by the doorbell or the poll interval,
    /// it leases a batch of rows no relay holds (rows written without a carried body, and held
    /// rows whose handoff did not happen in time), loads what they do not carry (one query per
    /// table), and publishes them. Either way a task then waits for the publisher confirms and
    /// deletes the rows RabbitMQ confirmed, while the relay goes on, up to [`BATCHES_IN_FLIGHT`]
    /// batches at once; the leases and holds keep those rows out of the next lease.
    pub async fn relay(
        self: Arc<Self>,
        workflow: Arc<Workflow>,
        doorbell: Arc<Doorbell>,
        poll: Duration,
        stop: CancellationToken,
    ) {
        let mut bell = doorbell.listen_any();
        let mut handoffs = doorbell.take_handoffs();
        if handoffs.is_none() {
            tracing::warn!(
                "another relay in this process takes the handed-off deliveries; this one only leases"
            );
        }
        let mut waiting: Vec<Handoff> = Vec::new();
        // Whether the outbox may hold rows to lease: at start, after the doorbell, and every poll
        // interval. While both are due, leases and handoffs take turns, so that a steady stream of
        // handoffs does not keep rows that must be leased waiting.
        let mut lease_due = true;
        let mut leased_last = false;
        let mut last_lease = tokio::time::Instant::now();
        let mut channel: Option<Channel> = None;
        let mut confirming = tokio::task::JoinSet::new();
        // Handed-off batches still settling. While they are at their limit, new handoffs gather,
        // and go out together in the next batch.
        let mut handing = tokio::task::JoinSet::new();
        while !stop.is_cancelled() {
            while confirming.len() >= BATCHES_IN_FLIGHT {
                confirming.join_next().await;
            }
            while confirming.try_join_next().is_some() {}
            while handing.try_join_next().is_some() {}
            let handoff_room = handing.len() < HANDOFFS_IN_FLIGHT;
            let Some(connection) = self.current() else {
                doorbell.set_handing_off(false);
                // Their rows go out by lease once their holds run out, loaded as they are then.
                waiting.clear();
                channel = None;
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            };
            let open = match channel.take() {
                Some(c) if c.status().connected() => Ok(c),
                _ => confirm_channel(&connection).await,
            };
            let ch = match open {
                Ok(c) => c,
                Err(e) => {
                    doorbell.set_handing_off(false);
                    tracing::warn!(error = %ErrorChain(&e), "relay cannot open a channel");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            doorbell.set_handing_off(handoffs.is_some());
            if matches!(bell.has_changed(), Ok(true)) || last_lease.elapsed() >= poll {
                lease_due = true;
            }
            let handed = if (lease_due && !leased_last) || !handoff_room {
                Vec::new()
            } else {
                take_handed(&mut waiting, handoffs.as_mut(), self.config.publish_batch)
                    .into_iter()
                    .filter(|h| !doorbell.redirected(h))
                    .collect()
            };
            let from_handoff = !handed.is_empty();
            let published = if from_handoff {
                leased_last = false;
                let deliveries = handed
                    .into_iter()
                    .map(|h| {
                        let encoded = bundle::with_id(h.delivery_id, &h.body);
                        (h.agency, h.delivery_id, encoded)
                    })
                    .collect();
                self.publish_encoded(&ch, deliveries, Published::default())
                    .await
            } else if lease_due {
                leased_last = true;
                last_lease = tokio::time::Instant::now();
                bell.borrow_and_update();
                let leased = workflow
                    .store()
                    .lease_outbox(self.config.publish_batch, LEASE)
                    .await;
                match leased {
                    Ok(batch) if batch.is_empty() => {
                        lease_due = false;
                        channel = Some(ch);
                        continue;
                    }
                    Ok(batch) => self.publish(&ch, &workflow, batch).await,
                    Err(e) => {
                        tracing::warn!(error = %ErrorChain(&e), "relay cannot read the outbox; retrying");
                        channel = Some(ch);
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                }
            } else {
                channel = Some(ch);
                let handed = async {
                    match handoffs.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = bell.changed() => lease_due = true,
                    _ = tokio::time::sleep(poll.saturating_sub(last_lease.elapsed())) => lease_due = true,
                    Some(h) = handed, if handoff_room => waiting.extend(h),
                    Some(_) = handing.join_next(), if !handing.is_empty() => {}
                }
                continue;
            };
            match published {
                Ok(published) => {
                    let (amqp, store, settle_on) =
                        (self.clone(), workflow.store().clone(), ch.clone());
                    let settle = async move {
                        let deleted = amqp
                            .settle_published(&settle_on, store.as_ref(), published)
                            .await;
                        amqp.tidy_if_due(&store, deleted);
                    }
                    .in_current_span();
                    if from_handoff {
                        handing.spawn(settle);
                    } else {
                        confirming.spawn(settle);
                    }
                    channel = Some(ch);
                }
                Err(e) => {
                    // The leases and holds stay: these rows are published again when they run out.
                    tracing::warn!(error = %ErrorChain(&e), "publishing failed; the batch will be published again");
                }
            }
        }
        doorbell.set_handing_off(false);
        confirming.shutdown().await;
        handing.shutdown().await;
    }

    /// Publishes one bundle, persistent and `mandatory`, to its agency's routing key.
    async fn publish_one(
        &self,
        channel: &Channel,
        outgoing: &Outgoing,
    ) -> Result<lapin::PublisherConfirm, DeliveryError> {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_type(ShortString::from(BUNDLE_TYPE))
            .with_message_id(ShortString::from(uuid::Uuid::now_v7().to_string()));
        Ok(channel
            .basic_publish(
                self.exchange().into(),
                outgoing.agency.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &outgoing.body,
                properties,
            )
            .await?)
    }

    /// Publishes a leased batch, bundled per agency, without waiting for confirms, and returns what
    /// is needed to settle it. A row that carries its delivery goes as it is; the others are loaded
    /// first, all in one read. Rows whose referral or event no longer exists have nothing to carry:
    /// they are settled as if published.
    async fn publish(
        &self,
        channel: &Channel,
        workflow: &Workflow,
        batch: Vec<MailboxEntry>,
    ) -> Result<Published, DeliveryError> {
        let wanted: Vec<(AgencyId, DeliveryRef)> = batch
            .iter()
            .filter(|e| e.carried.is_none())
            .map(|e| (e.agency.clone(), e.reference()))
            .collect();
        let mut contents = workflow
            .load_deliveries(&wanted)
            .await
            .map_err(|e| DeliveryError::Unavailable(e.to_string()))?
            .into_iter();
        let mut published = Published::default();
        let mut deliveries = Vec::with_capacity(batch.len());
        for entry in batch {
            let encoded = match &entry.carried {
                Some(body) => Some(bundle::with_id(entry.delivery_id, body)),
                None => contents
                    .next()
                    .flatten()
                    .map(|content| convert::delivery(entry.delivery_id, content).encode_to_vec()),
            };
            match encoded {
                Some(encoded) => deliveries.push((entry.agency, entry.delivery_id, encoded)),
                None => published.empty.push(entry.delivery_id),
            }
        }
        self.publish_encoded(channel, deliveries, published).await
    }

    /// Publishes encoded deliveries, in order, bundled per agency, without waiting for confirms,
    /// adding each message to `published`.
    async fn publish_encoded(
        &self,
        channel: &Channel,
        deliveries: Vec<(AgencyId, uuid::Uuid, Vec<u8>)>,
        mut published: Published,
    ) -> Result<Published, DeliveryError> {
        for outgoing in bundle::bundle(deliveries, self.config.bundle_max as usize) {
            let confirm = self.publish_one(channel, &outgoing).await?;
            published.pending.push((outgoing, confirm));
        }
        Ok(published)
    }

    /// Counts rows the relay deleted and, every [`TIDY_AFTER_ROWS`], has the store clear them out
    /// in a task of its own, one at a time, so no batch waits for it.
    fn tidy_if_due(&self, store: &Arc<dyn Store>, deleted: usize) {
        let total = self.deleted.fetch_add(deleted, Ordering::Relaxed) + deleted;
        if total < TIDY_AFTER_ROWS || self.tidying.swap(true, Ordering::AcqRel) {
            return;
        }
        self.deleted.store(0, Ordering::Relaxed);
        let (store, tidying) = (store.clone(), self.tidying.clone());
        tokio::spawn(
            async move {
                if let Err(e) = store.tidy_outbox().await {
                    tracing::warn!(error = %ErrorChain(&e), "could not clear out the outbox's deleted rows");
                }
                tidying.store(false, Ordering::Release);
            }
            .in_current_span(),
        );
    }

    /// Waits for a batch's publisher confirms (bounded by [`CONFIRM_TIMEOUT`], well inside the
    /// lease) and deletes the rows RabbitMQ confirmed. A message RabbitMQ could not route (its
    /// agency's queue does not exist yet: added since start, or still being declared) gets its queue
    /// declared and is published once more. Whatever is not confirmed stays leased and is published
    /// again when the lease ends. Returns how many rows it deleted.
    async fn settle_published(
        &self,
        channel: &Channel,
        store: &dyn Store,
        published: Published,
    ) -> usize {
        let Published { mut empty, pending } = published;
        let mut done = std::mem::take(&mut empty);
        let waited = tokio::time::timeout(CONFIRM_TIMEOUT, async {
            let mut unroutable = Vec::new();
            for (outgoing, confirm) in pending {
                let confirmation = confirm.await?;
                if !confirmation.is_ack() {
                    tracing::warn!(agency = %outgoing.agency, deliveries = outgoing.ids.len(), "RabbitMQ refused a message; it will be published again");
                } else if confirmation.take_message().is_some() {
                    unroutable.push(outgoing);
                } else {
                    done.extend(outgoing.ids);
                }
            }
            for outgoing in unroutable {
                tracing::info!(agency = %outgoing.agency, "no queue for the agency; declaring it");
                self.ensure_queue(channel, &outgoing.agency).await?;
                let confirmation = self.publish_one(channel, &outgoing).await?.await?;
                if confirmation.is_ack() && confirmation.take_message().is_none() {
                    done.extend(outgoing.ids);
                } else {
                    // Declared once, and gone since (deleted by hand?): declare it again next time.
                    self.forget_queue(&outgoing.agency);
                }
            }
            Ok::<(), DeliveryError>(())
        })
        .await;
        match waited {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %ErrorChain(&e), "publisher confirms lost; unconfirmed rows will be published again");
            }
            Err(_) => {
                tracing::warn!(
                    "publisher confirms are late; reopening the channel, unconfirmed rows will be published again"
                );
                let _ = channel.close(200, "confirms timed out".into()).await;
            }
        }
        match store.remove_published(&done).await {
            Ok(()) => done.len(),
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "published rows stay leased; they will be published again");
                0
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

/// A leased batch on its way: rows with nothing to publish, and the published messages (kept for a
/// second publish if unroutable) with their pending confirms.
#[derive(Default)]
struct Published {
    empty: Vec<uuid::Uuid>,
    pending: Vec<(Outgoing, lapin::PublisherConfirm)>,
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

/// The deliveries handed to the relay that it publishes next: those it already took, then what
/// waits in `handoffs`, up to `limit`. A handoff older than its hold less [`CONFIRM_TIMEOUT`] is
/// left out: its row may be leased by another relay before this one could delete it, so it is left
/// to the relays' leases.
fn take_handed(
    waiting: &mut Vec<Handoff>,
    handoffs: Option<&mut tokio::sync::mpsc::Receiver<Vec<Handoff>>>,
    limit: u32,
) -> Vec<Handoff> {
    let limit = limit.max(1) as usize;
    if let Some(handoffs) = handoffs {
        while waiting.len() < limit
            && let Ok(more) = handoffs.try_recv()
        {
            waiting.extend(more);
        }
    }
    let rest = waiting.split_off(waiting.len().min(limit));
    let taken = std::mem::replace(waiting, rest);
    let fresh = LEASE.saturating_sub(CONFIRM_TIMEOUT);
    taken
        .into_iter()
        .filter(|h| h.written.elapsed() < fresh)
        .collect()
}
