//! Production delivery through RabbitMQ.
//!
//! The store's mailbox is a transactional outbox: the [relay](relay) publishes its rows to one
//! quorum queue per agency, and a delivery [session](session) consumes the agency's queue, acking a
//! message only when the adapter confirmed every delivery in it on the same stream.
//!
//! # Layout
//! - this file: the [`Amqp`] handle every part shares, and the names of its exchanges and queues.
//! - [`connection`]: one supervised connection, opened with a timeout to the first node that
//!   answers, reconnected with backoff (to the next node) when lost or found dead; the health it
//!   reports.
//! - [`topology`]: declaring the exchanges and queues, idempotently, and the queues' arguments.
//! - [`dead_letters`]: counting what RabbitMQ dead-lettered, and re-driving it.
//! - [`relay`]: the outbox relay (handoffs, leases, publisher confirms).
//! - [`session`]: one adapter connection's consumer on its agency's queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use lapin::Connection;
use tokio::sync::{OnceCell, watch};

use crate::config::AmqpConfig;
use crate::ids::AgencyId;

mod connection;
mod dead_letters;
mod relay;
mod session;
mod topology;

pub use self::session::AmqpSession;

/// How long a relay owns the rows it leased, and how long the rows of deliveries handed to it are
/// held for it; after that another relay may publish them.
pub const LEASE: Duration = Duration::from_secs(15);

/// The broker's link to RabbitMQ, shared by the supervisor, the relay and every session.
pub struct Amqp {
    /// Where RabbitMQ is, the names' prefix, and the limits of publishing and redelivery.
    config: AmqpConfig,
    /// The supervised connection while it is up; sessions and the relay open channels on it.
    connection: RwLock<Option<Arc<Connection>>>,
    /// Whether the connection is up and the exchanges declared, for the health service.
    healthy: watch::Sender<bool>,
    /// Counts the connections the supervisor has set up; the current one's number.
    generation: AtomicU64,
    /// The number of a connection found dead while it still looks up (its publisher confirms stay
    /// late: a partition that drops packets), which the supervisor then drops and replaces.
    suspect: watch::Sender<u64>,
    /// Index in [`AmqpConfig::nodes`] of the node connected to last, and of the node to try first.
    node: AtomicUsize,
    next_node: AtomicUsize,
    /// Agencies whose queue this process has declared, or is declaring. Declaring one quorum queue
    /// from two channels at once lets the second return before RabbitMQ has started the queue, and
    /// a consumer on it then crashes RabbitMQ's channel and, with it, the whole connection (3.10:
    /// `basic.consume` fails with `noproc`, answered with INTERNAL_ERROR). So each queue is declared
    /// once per process, and whoever needs it waits for that one declaration.
    declared: Mutex<HashMap<AgencyId, Arc<OnceCell<()>>>>,
    /// Rows the relay deleted since the outbox was last tidied: a tidy is due every so many.
    deleted: AtomicUsize,
    /// Whether a tidy is running, so that only one runs at a time.
    tidying: Arc<AtomicBool>,
}

impl Amqp {
    pub fn new(config: AmqpConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            connection: RwLock::new(None),
            healthy: watch::channel(false).0,
            generation: AtomicU64::new(0),
            suspect: watch::channel(0).0,
            node: AtomicUsize::new(0),
            next_node: AtomicUsize::new(0),
            declared: Mutex::new(HashMap::new()),
            deleted: AtomicUsize::new(0),
            tidying: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The direct exchange every delivery is published to; the routing key is the agency id.
    pub fn exchange(&self) -> String {
        format!("{}.deliveries", self.config.prefix)
    }

    /// `agency`'s quorum queue.
    pub fn queue(&self, agency: &AgencyId) -> String {
        format!("{}.agency.{agency}", self.config.prefix)
    }

    /// What every agency's queue name starts with: [`Amqp::queue`] without the agency id.
    fn queue_prefix(&self) -> String {
        format!("{}.agency.", self.config.prefix)
    }

    /// The dead-letter exchange and its queue, which share one name.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letter", self.config.prefix)
    }
}
