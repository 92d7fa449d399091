//! The outbox relay: publishes the store's mailbox to RabbitMQ and deletes what RabbitMQ confirmed.
//!
//! Each turn of [`Relay::run`] does one of three things, chosen by [`Relay::choose`]:
//! - **hand off**: publish deliveries this process's writes handed over ([`Dispatch::queued`]) as
//!   they are. Their rows are held for this relay, so it neither leases nor reads them.
//! - **lease**: when woken by the doorbell or the poll interval, lease a batch of rows no relay
//!   holds (rows written without a carried body, and held rows whose handoff did not happen in
//!   time), load what they do not carry (one query per table), and publish them.
//! - **wait** for a handoff, the doorbell, the poll interval or a settling batch.
//!
//! Either way a task then waits for the publisher confirms and deletes the rows RabbitMQ
//! confirmed, while the relay goes on, up to [`BATCHES_IN_FLIGHT`] leased and
//! [`HANDOFFS_IN_FLIGHT`] handed-off batches at once; the leases and holds keep those rows out of
//! the next lease.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::connection::confirm_channel;
use super::{Amqp, LEASE};
use crate::delivery::bundle::{self, BUNDLE_TYPE, Outgoing};
use crate::delivery::{DeliveryError, Dispatch, Handoff, contents};
use crate::error::ErrorChain;
use crate::ids::AgencyId;
use crate::store::{DeliveryRef, MailboxEntry, Store};
use crate::wire;

/// How long a published batch may wait for its publisher confirms: well inside [`LEASE`], so no
/// other relay publishes those rows while this one may still delete them.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// Published batches waiting for their confirms while the relay leases the next.
const BATCHES_IN_FLIGHT: usize = 4;
/// Handed-off batches waiting for their confirms while the relay takes the next. Fewer than
/// [`BATCHES_IN_FLIGHT`]: a handoff is published as soon as it arrives, so under load this limit
/// is what gathers handoffs into bundles, one message per agency rather than one per write.
const HANDOFFS_IN_FLIGHT: usize = 2;
/// Outbox rows the relay deletes between two requests to clear them out ([`Mailbox::tidy_outbox`](crate::store::Mailbox::tidy_outbox)):
/// each request clears out many batches' rows at once, not one batch's.
const TIDY_AFTER_ROWS: usize = 20_000;
/// How long the relay waits before trying again when it has no connection, no channel, or cannot
/// read the outbox.
const NO_CONNECTION_PAUSE: Duration = Duration::from_millis(200);
const NO_CHANNEL_PAUSE: Duration = Duration::from_millis(500);
const STORE_PAUSE: Duration = Duration::from_secs(1);

impl Amqp {
    /// Publishes the outbox until `stop`; see the [module](self) for how.
    pub async fn relay(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        dispatch: Arc<Dispatch>,
        poll: Duration,
        stop: CancellationToken,
    ) {
        Relay::new(self, store, dispatch, poll, stop).run().await;
    }
}

/// What the relay does in its next turn.
enum Turn {
    /// Publish these handed-off deliveries.
    HandOff(Vec<Handoff>),
    /// Lease a batch of rows and publish it.
    Lease,
    /// Nothing is due: wait until something is.
    Wait,
}

/// A relay's state between turns.
struct Relay {
    amqp: Arc<Amqp>,
    store: Arc<dyn Store>,
    dispatch: Arc<Dispatch>,
    poll: Duration,
    stop: CancellationToken,
    bell: watch::Receiver<u64>,
    /// Where this process's writes hand their deliveries over; `None` if another relay in this
    /// process took it.
    handoffs: Option<mpsc::Receiver<Vec<Handoff>>>,
    /// Handed over and not yet published: more than one batch arrived at once, or while
    /// [`HANDOFFS_IN_FLIGHT`] batches were settling.
    waiting: Vec<Handoff>,
    /// Whether the outbox may hold rows to lease: at start, after the doorbell, and every poll
    /// interval. While both are due, leases and handoffs take turns ([`Relay::leased_last`]), so
    /// that a steady stream of handoffs does not keep rows that must be leased waiting.
    lease_due: bool,
    leased_last: bool,
    last_lease: Instant,
    /// The channel publishes go on, kept from one turn to the next while it stays open, and the
    /// connection it is on (whose confirms, if they stay late, condemn it: [`Amqp::give_up_on`]).
    channel: Option<(Channel, Arc<Connection>)>,
    /// Leased batches still settling.
    confirming: JoinSet<()>,
    /// Handed-off batches still settling. While they are at their limit, new handoffs gather, and
    /// go out together in the next batch.
    handing: JoinSet<()>,
}

impl Relay {
    fn new(
        amqp: Arc<Amqp>,
        store: Arc<dyn Store>,
        dispatch: Arc<Dispatch>,
        poll: Duration,
        stop: CancellationToken,
    ) -> Self {
        let bell = dispatch.doorbell.listen_any();
        let handoffs = dispatch.handoffs.take_receiver();
        if handoffs.is_none() {
            tracing::warn!(
                "another relay in this process takes the handed-off deliveries; this one only leases"
            );
        }
        Self {
            amqp,
            store,
            dispatch,
            poll,
            stop,
            bell,
            handoffs,
            waiting: Vec::new(),
            lease_due: true,
            leased_last: false,
            last_lease: Instant::now(),
            channel: None,
            confirming: JoinSet::new(),
            handing: JoinSet::new(),
        }
    }

    async fn run(mut self) {
        while !self.stop.is_cancelled() {
            while self.confirming.len() >= BATCHES_IN_FLIGHT {
                self.confirming.join_next().await;
            }
            while self.confirming.try_join_next().is_some() {}
            while self.handing.try_join_next().is_some() {}
            let Some((channel, connection)) = self.open_channel().await else {
                continue;
            };
            self.dispatch.handoffs.set_open(self.handoffs.is_some());
            let (published, handed_off) = match self.choose() {
                Turn::HandOff(handed) => (self.publish_handed(&channel, handed).await, true),
                Turn::Lease => match self.lease(&channel).await {
                    Some(published) => (published, false),
                    None => {
                        self.channel = Some((channel, connection));
                        continue;
                    }
                },
                Turn::Wait => {
                    self.channel = Some((channel, connection));
                    self.wait().await;
                    continue;
                }
            };
            match published {
                Ok(published) => {
                    self.settle_in_background(&channel, &connection, published, handed_off);
                    self.channel = Some((channel, connection));
                }
                // The channel is dropped with the batch: a publish that failed half-way leaves it
                // in no known state.
                Err(e) => {
                    // The leases and holds stay: these rows are published again when they run out.
                    tracing::warn!(error = %ErrorChain(&e), "publishing failed; the batch will be published again");
                }
            }
        }
        self.dispatch.handoffs.set_open(false);
        self.confirming.shutdown().await;
        self.handing.shutdown().await;
    }

    /// The channel to publish on: the one kept from the last turn if it is still open, else a new
    /// one. `None` (after a pause) while no channel can be had; meanwhile writes hold nothing for
    /// a handoff. Without a connection, what was waiting is dropped: its rows go out by lease once
    /// their holds run out, loaded as they are then.
    async fn open_channel(&mut self) -> Option<(Channel, Arc<Connection>)> {
        let (pause, failure) = match self.amqp.current() {
            None => {
                self.waiting.clear();
                self.channel = None;
                (NO_CONNECTION_PAUSE, None)
            }
            Some(connection) => match self.channel.take() {
                Some((c, on)) if c.status().connected() && Arc::ptr_eq(&on, &connection) => {
                    return Some((c, on));
                }
                _ => match self
                    .amqp
                    .answered(&connection, confirm_channel(&connection))
                    .await
                {
                    Ok(c) => return Some((c, connection)),
                    Err(e) => (NO_CHANNEL_PAUSE, Some(e)),
                },
            },
        };
        self.dispatch.handoffs.set_open(false);
        if let Some(e) = failure {
            tracing::warn!(error = %ErrorChain(&e), "relay cannot open a channel");
        }
        self.pause(pause).await;
        None
    }

    /// Picks the next turn. A lease is due after the doorbell and every poll interval; handoffs go
    /// first unless a lease is due and the last turn was not one, and only while fewer than
    /// [`HANDOFFS_IN_FLIGHT`] handed-off batches are settling.
    fn choose(&mut self) -> Turn {
        if matches!(self.bell.has_changed(), Ok(true)) || self.last_lease.elapsed() >= self.poll {
            self.lease_due = true;
        }
        // A lease waits for its turn if the last turn was one.
        let lease_first = self.lease_due && !self.leased_last;
        if self.handoff_room() && !lease_first {
            let handed: Vec<Handoff> = take_handed(
                &mut self.waiting,
                self.handoffs.as_mut(),
                self.amqp.config.publish_batch,
            );
            if !handed.is_empty() {
                return Turn::HandOff(handed);
            }
        }
        if self.lease_due {
            Turn::Lease
        } else {
            Turn::Wait
        }
    }

    /// Publishes handed-off deliveries as they were handed over.
    async fn publish_handed(
        &mut self,
        channel: &Channel,
        handed: Vec<Handoff>,
    ) -> Result<Published, DeliveryError> {
        self.leased_last = false;
        let deliveries = handed
            .into_iter()
            .map(|h| {
                let encoded = wire::with_id(h.delivery_id, &h.body);
                (h.agency, h.delivery_id, encoded)
            })
            .collect();
        self.amqp
            .publish_encoded(channel, deliveries, Published::default())
            .await
    }

    /// Leases a batch and publishes it. `None` if there was nothing to publish: the outbox had no
    /// row to lease (no lease is due until the doorbell or the poll interval), or could not be read
    /// (after a pause).
    async fn lease(&mut self, channel: &Channel) -> Option<Result<Published, DeliveryError>> {
        self.leased_last = true;
        self.last_lease = Instant::now();
        self.bell.borrow_and_update();
        let leased = self
            .store
            .lease_outbox(self.amqp.config.publish_batch, LEASE)
            .await;
        match leased {
            Ok(batch) if batch.is_empty() => {
                self.lease_due = false;
                None
            }
            Ok(batch) => Some(self.amqp.publish(channel, self.store.as_ref(), batch).await),
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "relay cannot read the outbox; retrying");
                self.pause(STORE_PAUSE).await;
                None
            }
        }
    }

    /// Waits for the first of: a handoff (if there is room for its batch), the doorbell, the poll
    /// interval (either makes a lease due), a handed-off batch settled, or `stop`.
    async fn wait(&mut self) {
        let handoff_room = self.handoff_room();
        let handoffs = &mut self.handoffs;
        let handed = async move {
            match handoffs {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = self.bell.changed() => self.lease_due = true,
            _ = tokio::time::sleep(self.poll.saturating_sub(self.last_lease.elapsed())) => self.lease_due = true,
            Some(h) = handed, if handoff_room => self.waiting.extend(h),
            Some(_) = self.handing.join_next(), if !self.handing.is_empty() => {}
        }
    }

    /// Whether another handed-off batch may go out: fewer than [`HANDOFFS_IN_FLIGHT`] are
    /// settling.
    fn handoff_room(&self) -> bool {
        self.handing.len() < HANDOFFS_IN_FLIGHT
    }

    /// Sleeps for `pause`, or until `stop`.
    async fn pause(&self, pause: Duration) {
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }

    /// Waits for a published batch's confirms and deletes its rows in a task of its own, counted
    /// among the handed-off or the leased batches in flight.
    fn settle_in_background(
        &mut self,
        channel: &Channel,
        connection: &Arc<Connection>,
        published: Published,
        handed_off: bool,
    ) {
        let (amqp, store) = (self.amqp.clone(), self.store.clone());
        let (channel, connection) = (channel.clone(), connection.clone());
        let settle = async move {
            let deleted = amqp
                .settle_published(&channel, &connection, store.as_ref(), published)
                .await;
            amqp.tidy_if_due(&store, deleted);
        }
        .in_current_span();
        if handed_off {
            self.handing.spawn(settle);
        } else {
            self.confirming.spawn(settle);
        }
    }
}

/// A batch on its way: rows with nothing to publish, and the published messages (kept for a
/// second publish if unroutable) with their pending confirms.
#[derive(Default)]
struct Published {
    empty: Vec<uuid::Uuid>,
    pending: Vec<(Outgoing, lapin::PublisherConfirm)>,
}

impl Amqp {
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
        store: &dyn Store,
        batch: Vec<MailboxEntry>,
    ) -> Result<Published, DeliveryError> {
        let wanted: Vec<(AgencyId, DeliveryRef)> = batch
            .iter()
            .filter(|e| e.carried.is_none())
            .map(|e| (e.agency.clone(), e.reference()))
            .collect();
        let mut contents = contents(store, &wanted).await?.into_iter();
        let mut published = Published::default();
        let mut deliveries = Vec::with_capacity(batch.len());
        for entry in batch {
            let encoded = match &entry.carried {
                Some(body) => Some(wire::with_id(entry.delivery_id, body)),
                None => contents
                    .next()
                    .flatten()
                    .map(|content| wire::delivery(entry.delivery_id, content).encode_to_vec()),
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
        connection: &Arc<Connection>,
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
                self.ensure_queue(connection, &outgoing.agency).await?;
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
                    "publisher confirms are late; unconfirmed rows will be published again on a new connection"
                );
                // A silent partition: closing would wait for an answer that never comes, and the
                // connection looks up until the heartbeat notices. Give up on it now instead.
                self.give_up_on(connection);
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
}

/// The deliveries handed to the relay that it publishes next: those it already took, then what
/// waits in `handoffs`, up to `limit`. A handoff older than its hold less [`CONFIRM_TIMEOUT`] is
/// left out: its row may be leased by another relay before this one could delete it, so it is left
/// to the relays' leases.
fn take_handed(
    waiting: &mut Vec<Handoff>,
    handoffs: Option<&mut mpsc::Receiver<Vec<Handoff>>>,
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
