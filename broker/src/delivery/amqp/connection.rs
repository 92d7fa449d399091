//! One connection to RabbitMQ, kept up for the whole process: opened with a timeout, its topology
//! declared, watched, and opened again with backoff after a loss. Its state is the broker's health.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Amqp;
use crate::delivery::DeliveryError;
use crate::error::ErrorChain;
use crate::ids::AgencyId;
use crate::store::Store;

/// A refused first connect can otherwise hang (see the lapin notes in `docs/operations.md`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a connection is checked.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// How often the dead-letter queue is checked, so that an operator hears of what is in it.
const DEAD_LETTER_CHECK: Duration = Duration::from_secs(10);
/// The first wait before reconnecting, and the longest, between which the wait doubles.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long closing a dropped connection may wait for RabbitMQ's answer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long RabbitMQ may take to answer a method on a connection that looks up (open a channel,
/// declare or count a queue, start a consumer) before the connection is taken for lost
/// ([`Amqp::answered`]). Publisher confirms have their own bound, in the relay.
pub(super) const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

impl Amqp {
    /// True while a connection is up and the exchanges declared.
    pub fn healthy(&self) -> watch::Receiver<bool> {
        self.healthy.subscribe()
    }

    /// The supervised connection, if it is up.
    pub(super) fn current(&self) -> Option<Arc<Connection>> {
        let guard = self.connection.read().unwrap_or_else(|p| p.into_inner());
        guard.clone().filter(|c| c.status().connected())
    }

    /// The supervised connection, if it is up, with its number ([`Amqp::generation`]).
    pub(super) fn current_numbered(&self) -> Option<(Arc<Connection>, u64)> {
        let guard = self.connection.read().unwrap_or_else(|p| p.into_inner());
        let generation = self.generation.load(Ordering::Relaxed);
        guard
            .clone()
            .filter(|c| c.status().connected())
            .map(|c| (c, generation))
    }

    /// Resolves once the connection numbered `generation` is given up on ([`Amqp::give_up_on`]):
    /// whatever waits on it would otherwise wait for the heartbeat to notice.
    pub(super) async fn given_up(&self, generation: u64) {
        let mut suspect = self.suspect.subscribe();
        let _ = suspect.wait_for(|g| *g == generation).await;
    }

    fn set_current(&self, connection: Option<Arc<Connection>>) {
        let mut guard = self.connection.write().unwrap_or_else(|p| p.into_inner());
        if connection.is_some() {
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        *guard = connection;
    }

    /// Reports `connection` dead although it looks up: publisher confirms on it stayed late, which
    /// is what a partition that drops packets looks like before the heartbeat notices (and the
    /// heartbeat may be long). If it is still the supervised connection, the supervisor drops it,
    /// reports NOT_SERVING and connects again, to the next node first. A connection the server
    /// has blocked (a resource alarm) is slow on purpose and is left alone.
    pub(super) fn give_up_on(&self, connection: &Connection) {
        if connection.status().blocked() {
            return;
        }
        let guard = self.connection.read().unwrap_or_else(|p| p.into_inner());
        if guard
            .as_ref()
            .is_some_and(|c| std::ptr::eq(Arc::as_ptr(c), connection))
        {
            self.suspect
                .send_replace(self.generation.load(Ordering::Relaxed));
        }
    }

    /// Waits for RabbitMQ's answer to `asked` on `connection`, up to [`ANSWER_TIMEOUT`]. A
    /// partition that drops packets leaves such an answer pending for as long as the heartbeat
    /// takes to notice (minutes with RabbitMQ's default), and whatever awaits it with it: the
    /// relay opening its channel, an adapter's session, the supervisor's own dead-letter check.
    /// Late, the connection is given up on ([`Amqp::give_up_on`]) like one whose publisher
    /// confirms are late, and the caller gets [`DeliveryError::Unavailable`].
    pub(super) async fn answered<T>(
        &self,
        connection: &Connection,
        asked: impl std::future::Future<Output = Result<T, DeliveryError>>,
    ) -> Result<T, DeliveryError> {
        match tokio::time::timeout(ANSWER_TIMEOUT, asked).await {
            Ok(answer) => answer,
            Err(_) => {
                tracing::warn!(
                    "RabbitMQ did not answer in time on a connection that looks up; taking it for lost"
                );
                self.give_up_on(connection);
                Err(DeliveryError::Unavailable(
                    "RabbitMQ did not answer in time",
                ))
            }
        }
    }

    /// Opens a connection to the first node that answers, trying each configured node once,
    /// starting with the one after the node whose connection was lost last ([`Amqp::next_node`]);
    /// each attempt is bounded by [`CONNECT_TIMEOUT`]. With one node, that node.
    pub async fn connect(&self) -> Result<Connection, DeliveryError> {
        let urls = self.config.connect_urls();
        let first = self.next_node.load(Ordering::Relaxed);
        let mut last = DeliveryError::Unavailable("no RabbitMQ node configured");
        for i in 0..urls.len() {
            let node = (first + i) % urls.len();
            match self.connect_to(&urls[node]).await {
                Ok(connection) => {
                    self.node.store(node, Ordering::Relaxed);
                    if urls.len() > 1 {
                        tracing::info!(
                            node = node + 1,
                            of = urls.len(),
                            "connected to RabbitMQ node"
                        );
                    }
                    return Ok(connection);
                }
                Err(e) => {
                    if urls.len() > 1 {
                        tracing::warn!(node = node + 1, of = urls.len(), error = %ErrorChain(&e), "cannot reach this RabbitMQ node; trying the next");
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// After the connection to the current node was lost, the next attempt starts with the next
    /// node: the lost one may be down, and any node of the cluster serves every queue.
    fn move_to_next_node(&self) {
        let nodes = self.config.nodes().count().max(1);
        let next = (self.node.load(Ordering::Relaxed) + 1) % nodes;
        self.next_node.store(next, Ordering::Relaxed);
    }

    /// Opens a connection to one node, bounded by [`CONNECT_TIMEOUT`].
    async fn connect_to(&self, url: &str) -> Result<Connection, DeliveryError> {
        let properties =
            ConnectionProperties::default().with_connection_name("spean-broker".into());
        let tls = if self.config.ca_cert.as_os_str().is_empty() {
            lapin::tcp::OwnedTLSConfig::default()
        } else {
            let pem = std::fs::read_to_string(&self.config.ca_cert).map_err(|source| {
                DeliveryError::CaCert {
                    path: self.config.ca_cert.clone(),
                    source,
                }
            })?;
            lapin::tcp::OwnedTLSConfig {
                identity: None,
                cert_chain: Some(pem),
            }
        };
        let connect = Connection::connect_with_config(
            url,
            properties,
            tls,
            lapin::runtime::default_runtime()?,
        );
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| DeliveryError::Unavailable("connect timed out"))?
            .map_err(DeliveryError::from)
    }

    /// Keeps one connection up: connects, declares the topology, watches it, reconnects with
    /// backoff after a loss, and reports health meanwhile. Also reports dead letters.
    pub async fn supervise(self: Arc<Self>, store: Arc<dyn Store>, stop: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            if stop.is_cancelled() {
                break;
            }
            match self.clone().establish(store.as_ref()).await {
                Ok(connection) => {
                    tracing::info!("connected to RabbitMQ; exchanges declared");
                    backoff = FIRST_BACKOFF;
                    self.set_current(Some(connection.clone()));
                    self.healthy.send_replace(true);
                    let lost = self.watch(&connection, &stop).await;
                    self.set_current(None);
                    self.healthy.send_replace(false);
                    self.move_to_next_node();
                    // Closing waits for RabbitMQ's answer, which a silent partition never sends.
                    let closing = connection.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            CLOSE_TIMEOUT,
                            closing.close(200, "reconnecting".into()),
                        )
                        .await;
                    });
                    if stop.is_cancelled() {
                        break;
                    }
                    match lost {
                        Lost::Closed => {
                            tracing::warn!("lost the RabbitMQ connection; reconnecting")
                        }
                        Lost::Silent => tracing::warn!(
                            "publisher confirms stay late on a connection that looks up: taking it for lost; reconnecting"
                        ),
                    }
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
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Connects and declares the exchanges. The agencies' queues are declared in the background:
    /// a session declares its own queue before consuming and the relay declares any queue a
    /// publish finds missing, so nothing waits for the whole directory.
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
        let (background, amqp_queues) = (connection.clone(), self.clone());
        let span = tracing::info_span!("declare_queues", queues = agencies.len());
        tokio::spawn(
            async move {
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
            }
            .instrument(span),
        );
        Ok(connection)
    }

    /// Returns when `connection` is lost, is reported dead ([`Amqp::give_up_on`]) or `stop` is
    /// cancelled, logging meanwhile whatever waits in the dead-letter queue.
    async fn watch(&self, connection: &Connection, stop: &CancellationToken) -> Lost {
        let generation = self.generation.load(Ordering::Relaxed);
        let mut suspect = self.suspect.subscribe();
        let mut since_check = Duration::ZERO;
        while connection.status().connected() {
            if *suspect.borrow_and_update() == generation {
                return Lost::Silent;
            }
            tokio::select! {
                _ = stop.cancelled() => return Lost::Closed,
                _ = suspect.changed() => continue,
                _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            }
            since_check += WATCH_INTERVAL;
            if since_check >= DEAD_LETTER_CHECK {
                since_check = Duration::ZERO;
                // Bounded: on a silent partition this check is what notices, even with nothing
                // to publish; unbounded, it would hold this watch past the relay's own verdict.
                if let Ok(n) = self
                    .answered(connection, self.dead_letters(connection))
                    .await
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
        Lost::Closed
    }
}

/// How a supervised connection ended.
enum Lost {
    /// It closed, or the process is stopping.
    Closed,
    /// It looked up, but its publisher confirms stayed late ([`Amqp::give_up_on`]).
    Silent,
}

/// A channel in confirm mode: each publish on it is answered by RabbitMQ's publisher confirm.
pub(super) async fn confirm_channel(connection: &Connection) -> Result<Channel, DeliveryError> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// `d` and up to a quarter more, so that brokers that lost RabbitMQ together do not all reconnect
/// at the same instant.
fn jitter(d: Duration) -> Duration {
    let nanos = uuid::Uuid::now_v7().as_u128() as u64 % 1000;
    d + d.mul_f64(nanos as f64 / 4000.0)
}
