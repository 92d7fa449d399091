//! Building and running a broker: [`Broker::build`] opens the store, prepares the directory and the
//! certificates and binds the listener; [`Broker::run_until_stopped`] serves until the shutdown future
//! completes, then closes delivery streams and waits a bounded time for calls in flight.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use spean_proto::v1::audit_service_server::AuditServiceServer;
use spean_proto::v1::coordinator_service_server::CoordinatorServiceServer;
use spean_proto::v1::delivery_service_server::DeliveryServiceServer;
use spean_proto::v1::directory_service_server::DirectoryServiceServer;
use spean_proto::v1::referral_service_server::ReferralServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::Instrument;

use crate::config::Config;
use crate::delivery::amqp::Amqp;
use crate::delivery::{Backend, Dispatch};
use crate::directory::{Directory, DirectoryError};
use crate::error::{BrokerError, StoreError};
use crate::gateway::{
    AuditGateway, CoordinatorGateway, DeliveryGateway, DirectoryGateway, ReferralGateway, Shared,
    connections, revocations::Revocations,
};
use crate::pki::{Pki, PkiError};
use crate::store::Store;
use crate::store::postgres::{PgLimits, PgStore};
use crate::store::sqlite::SqliteStore;
use crate::workflow::{Limits, Workflow};

/// The built-in demo directory, a copy of the shared fixture network.
pub const DEMO_DIRECTORY: &[u8] = include_bytes!("../../fixtures/network.json");

/// How long shutdown waits for calls in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Streams a client may have reset before the server has accepted them (hyper's default).
const HTTP2_MAX_PENDING_RESETS: usize = 20;
/// Streams the server may reset for a client's protocol errors before it closes the connection
/// (hyper's default).
const HTTP2_MAX_LOCAL_ERROR_RESETS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("directory seed {path}: {source}")]
    Directory {
        path: String,
        source: DirectoryError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartupError {
    let what = what.into();
    move |source| StartupError::Io { what, source }
}

pub struct Broker {
    config: Arc<Config>,
    listener: TcpListener,
    workflow: Arc<Workflow>,
    dispatch: Arc<Dispatch>,
    amqp: Option<Arc<Amqp>>,
    tls: ServerTlsConfig,
}

/// How often health is re-evaluated.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How long the health probe waits for the database before it counts it as not answering.
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the store the configuration names.
///
/// PostgreSQL may be unreachable when the broker starts (both started by the same orchestrator, or
/// the database failing over): transient failures are retried with backoff for up to a minute, each
/// logged with the server's host, port and database but never the URL, which may hold a password.
/// Anything else (a wrong password, a missing database, a failed migration) fails at once.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartupError> {
    /// How long to keep trying to reach PostgreSQL before giving up.
    const CONNECT_PATIENCE: Duration = Duration::from_secs(60);
    /// Bounds one connection attempt, so a host that does not answer cannot stall past the deadline.
    const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
    const FIRST_BACKOFF: Duration = Duration::from_millis(250);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);

    // 0700: the folder holds the database, and with it every case file.
    crate::pki::create_private_dir(&config.data_dir).map_err(io(format!(
        "creating the data folder {}",
        config.data_dir.display()
    )))?;
    let url = config.database_url();
    if !url.starts_with("postgres") {
        return Ok(Arc::new(
            SqliteStore::connect(&url, config.database.durable).await?,
        ));
    }
    let server = url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .map(|o| {
            format!(
                "{}:{}/{}",
                o.get_host(),
                o.get_port(),
                o.get_database().unwrap_or_default()
            )
        })
        .unwrap_or_else(|_| "PostgreSQL".to_owned());
    let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
    let mut backoff = FIRST_BACKOFF;
    let mut attempt: u32 = 1;
    loop {
        // One plain connection first: it fails at once while the server is down, where the pool
        // would keep retrying inside its own acquire timeout without a word in the log. Only this
        // probe is bounded here: the pool bounds its own connecting, and migrations take what they
        // take.
        let probe = tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            <sqlx::PgConnection as sqlx::Connection>::connect(&url),
        )
        .await;
        let result = match probe {
            Ok(Ok(connection)) => {
                let _ = sqlx::Connection::close(connection).await;
                PgStore::connect(&url, pg_limits(&config.database)).await
            }
            Ok(Err(error)) => Err(StoreError::Database(error)),
            Err(_) => Err(StoreError::Database(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer in time",
            )))),
        };
        match result {
            Ok(store) => {
                if attempt > 1 {
                    tracing::info!(%server, attempt, "reached PostgreSQL");
                }
                return Ok(Arc::new(store));
            }
            Err(error)
                if error.is_transient() && tokio::time::Instant::now() + backoff < deadline =>
            {
                tracing::warn!(
                    %server,
                    attempt,
                    retry_in_ms = backoff.as_millis() as u64,
                    error = %crate::error::ErrorChain(&error),
                    "cannot reach PostgreSQL; retrying"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Loads the configured seed into an empty directory.
async fn seed_directory(config: &Config, store: &dyn Store) -> Result<(), StartupError> {
    if store.directory_version().await?.is_some() {
        return Ok(());
    }
    let seed = config.directory.seed.as_str();
    let bytes = match seed {
        "none" => return Ok(()),
        "demo" => DEMO_DIRECTORY.to_vec(),
        path => std::fs::read(path).map_err(io(format!("reading directory seed {path}")))?,
    };
    let directory = Directory::from_json(&bytes).map_err(|source| StartupError::Directory {
        path: seed.to_owned(),
        source,
    })?;
    store.import_directory(&directory).await?;
    tracing::warn!(
        seed,
        agencies = directory.agencies.len(),
        "the directory was empty and was seeded"
    );
    Ok(())
}

/// Makes sure the certificates the server needs are there: with the development PKI on, creates
/// whatever is missing and can be made without replacing anything ([`Pki::ensure_dev`]); with it
/// off, creates nothing and names the first missing file.
///
/// An agency left without an identity because `ca.key` is not here is a warning, not an error: its
/// identity was issued offline (the production layout), and the other agencies are served meanwhile.
async fn ensure_dev_pki(config: &Config, store: &dyn Store) -> Result<(), StartupError> {
    let pki = Pki::new(config.pki_dir());
    if !config.dev_pki() {
        return Ok(pki.check_server_files()?);
    }
    let agencies = match store.directory().await? {
        Some((directory, _)) => directory.agencies.into_iter().map(|a| a.id).collect(),
        None => Vec::new(),
    };
    let report = pki.ensure_dev(&config.tls.server_names, &agencies)?;
    if report.created_ca {
        tracing::warn!(dir = %pki.dir().display(), "created a development CA");
    }
    if !report.without_identity.is_empty() {
        tracing::warn!(
            dir = %pki.dir().display(),
            agencies = %report.without_identity.join(","),
            "these directory agencies have no identity folder here and ca.key is not here to \
             issue one: issue them with `spean-broker pki issue` where the CA key is kept"
        );
    }
    Ok(())
}

impl Broker {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        for warning in config.insecure_transports() {
            tracing::warn!("INSECURE: {warning}");
        }
        let store = open_store(&config).await?;
        seed_directory(&config, store.as_ref()).await?;
        ensure_dev_pki(&config, store.as_ref()).await?;
        let pki = Pki::new(config.pki_dir());
        let read = |path: std::path::PathBuf| {
            std::fs::read(&path).map_err(io(format!("reading {}", path.display())))
        };
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                read(pki.server_cert())?,
                read(pki.server_key())?,
            ))
            .client_ca_root(Certificate::from_pem(read(pki.ca_cert())?))
            .timeout(Duration::from_millis(config.limits.handshake_timeout_ms));
        let dispatch = Arc::new(Dispatch::default());
        let workflow = Arc::new(
            Workflow::new(
                store,
                dispatch.clone(),
                Limits {
                    max_case_file_bytes: config.limits.max_case_file_bytes,
                },
            )
            .await?
            .carrying_deliveries(!config.amqp.url.is_empty(), crate::delivery::amqp::LEASE),
        );
        let amqp = (!config.amqp.url.is_empty()).then(|| Amqp::new(config.amqp.clone()));
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(io(format!("binding {}", config.listen)))?;
        Ok(Self {
            config: Arc::new(config),
            listener,
            workflow,
            dispatch,
            amqp,
            tls,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, StartupError> {
        self.listener
            .local_addr()
            .map_err(io("reading the bound address"))
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let stop = CancellationToken::new();
        // Listening, then read, before the first call is served: a revoked certificate is never
        // let in by a broker that has just started, nor one revoked meanwhile missed.
        let revocations = Arc::new(Revocations::default());
        let feed = Revocations::listen(self.workflow.store().as_ref()).await;
        revocations.reload(self.workflow.store().as_ref()).await?;
        let shared = Shared {
            workflow: self.workflow.clone(),
            config: self.config.clone(),
            stop: stop.clone(),
            quota: Arc::new(crate::gateway::quota::Quota::new(
                self.config.limits.requests_per_second_per_agency,
                self.config.limits.request_burst_per_agency,
            )),
            revocations: revocations.clone(),
        };
        let max = self.config.limits.max_message_bytes;

        let (health, health_service) = tonic_health::server::health_reporter();
        // tonic's reporter starts the server's own entry ("") as SERVING: until the first probe
        // says otherwise, a load balancer (or a test) would send adapters to a broker that has
        // not reached its database or RabbitMQ yet.
        for service in HEALTH_SERVICES {
            health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(spean_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| StartupError::Io {
                what: "building reflection".into(),
                source: std::io::Error::other(e),
            })?;

        // The loops that run beside the server, joined on shutdown so that none is cut off
        // mid-publish or mid-transaction.
        let mut background = tokio::task::JoinSet::new();
        let backend = match &self.amqp {
            Some(amqp) => {
                background.spawn(
                    amqp.clone()
                        .supervise(self.workflow.store().clone(), stop.clone())
                        .instrument(tracing::info_span!("amqp")),
                );
                background.spawn(
                    amqp.clone()
                        .relay(
                            self.workflow.store().clone(),
                            self.dispatch.clone(),
                            Duration::from_millis(self.config.delivery.poll_interval_ms),
                            stop.clone(),
                        )
                        .instrument(tracing::info_span!("outbox_relay")),
                );
                Backend::Amqp(amqp.clone())
            }
            None => Backend::Mailbox {
                store: self.workflow.store().clone(),
                dispatch: self.dispatch.clone(),
                poll: Duration::from_millis(self.config.delivery.poll_interval_ms),
            },
        };
        background.spawn(
            revocations
                .refresh(
                    self.workflow.store().clone(),
                    feed,
                    Duration::from_millis(self.config.tls.revocation_refresh_ms),
                    stop.clone(),
                )
                .instrument(tracing::info_span!("revocations")),
        );
        background.spawn(
            escalate(self.workflow.clone(), stop.clone())
                .instrument(tracing::info_span!("escalation")),
        );
        background.spawn(
            report_health(
                health.clone(),
                self.workflow.store().clone(),
                self.amqp.clone(),
                stop.clone(),
            )
            .instrument(tracing::info_span!("health")),
        );

        let delivery = &self.config.delivery;
        let limits = &self.config.limits;
        let server = Server::builder()
            .timeout(Duration::from_millis(limits.request_timeout_ms))
            .http2_keepalive_interval(Some(Duration::from_millis(delivery.keepalive_interval_ms)))
            .http2_keepalive_timeout(Some(Duration::from_millis(delivery.keepalive_timeout_ms)))
            .max_concurrent_streams(limits.max_concurrent_streams)
            // hyper's guards against streams reset in a flood (CVE-2023-44487 and its kin), which
            // tonic turns off unless they are set: hyper's own defaults.
            .http2_max_pending_accept_reset_streams(Some(HTTP2_MAX_PENDING_RESETS))
            .http2_max_local_error_reset_streams(Some(HTTP2_MAX_LOCAL_ERROR_RESETS))
            .tls_config(self.tls)?
            .layer(crate::gateway::oversize::OversizeLayer { limit: max })
            .add_service(health_service)
            .add_service(reflection)
            .add_service(
                ReferralServiceServer::new(ReferralGateway::new(shared.clone()))
                    .max_decoding_message_size(max),
            )
            .add_service(
                DeliveryServiceServer::new(DeliveryGateway::new(shared.clone(), backend))
                    .max_decoding_message_size(max),
            )
            .add_service(
                CoordinatorServiceServer::new(CoordinatorGateway::new(shared.clone()))
                    .max_decoding_message_size(max),
            )
            .add_service(
                AuditServiceServer::new(AuditGateway::new(shared.clone()))
                    .max_decoding_message_size(max),
            )
            .add_service(
                DirectoryServiceServer::new(DirectoryGateway::new(shared))
                    .max_decoding_message_size(max),
            )
            .serve_with_incoming_shutdown(
                connections::limited(self.listener, limits.max_connections),
                stop.clone().cancelled_owned(),
            );

        tokio::spawn(
            {
                let stop = stop.clone();
                async move {
                    shutdown.await;
                    tracing::info!("shutting down");
                    stop.cancel();
                }
            }
            .instrument(tracing::info_span!("shutdown")),
        );
        tokio::pin!(server);
        let served = tokio::select! {
            result = &mut server => result,
            _ = async { stop.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                tracing::warn!("calls still in flight after the grace period; stopping anyway");
                Ok(())
            }
        };
        stop.cancel();
        let joined = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while background.join_next().await.is_some() {}
        })
        .await;
        if joined.is_err() {
            tracing::warn!(
                "background tasks still running after the grace period; stopping anyway"
            );
        }
        served?;
        Ok(())
    }
}

/// The names the health service answers for: the server as a whole (""), and each service an
/// adapter calls.
const HEALTH_SERVICES: [&str; 4] = [
    "",
    "spean.v1.ReferralService",
    "spean.v1.DeliveryService",
    "spean.v1.DirectoryService",
];

/// Serving while the database answers and, when configured, RabbitMQ is connected; not serving
/// otherwise, so a load balancer sends adapters to another broker meanwhile.
async fn report_health(
    health: HealthReporter,
    store: Arc<dyn crate::store::Store>,
    amqp: Option<Arc<Amqp>>,
    stop: CancellationToken,
) {
    let amqp_health = amqp.as_ref().map(|a| a.healthy());
    let mut last = None;
    loop {
        // Bounded: a connection that hangs without a reset would otherwise keep reporting SERVING.
        let database = matches!(
            tokio::time::timeout(HEALTH_PROBE_TIMEOUT, store.ping()).await,
            Ok(Ok(()))
        );
        let queues = amqp_health.as_ref().is_none_or(|h| *h.borrow());
        let serving = database && queues;
        if last != Some(serving) {
            let status = if serving {
                if last.is_some() {
                    tracing::info!("serving again: the database and RabbitMQ answer");
                }
                ServingStatus::Serving
            } else {
                tracing::warn!(database, rabbitmq = queues, "not serving");
                ServingStatus::NotServing
            };
            for service in HEALTH_SERVICES {
                health.set_service_status(service, status).await;
            }
            last = Some(serving);
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
        }
    }
}

/// The PostgreSQL pool's limits from `database.*`.
fn pg_limits(config: &crate::config::DatabaseConfig) -> PgLimits {
    PgLimits {
        acquire_timeout: Duration::from_millis(config.acquire_timeout_ms),
        statement_timeout: Duration::from_millis(config.statement_timeout_ms),
        keepalive: Duration::from_secs(config.keepalive_s),
    }
}

/// How often a broker looks for acknowledgement deadlines that have passed.
const ESCALATION_TICK: Duration = Duration::from_secs(1);

/// Escalates referrals whose acknowledgement deadline passed, every [`ESCALATION_TICK`], from the
/// first moment the broker runs: a broker that was down past a deadline fires it when it starts.
/// Every broker of a deployment runs this; each escalation is written once
/// ([`Workflow::escalate_due`]).
async fn escalate(workflow: Arc<Workflow>, stop: CancellationToken) {
    loop {
        match workflow.escalate_due().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(escalated = n, "acknowledgement deadlines passed"),
            Err(e) => {
                tracing::warn!(error = %crate::error::ErrorChain(&e), "escalating failed; trying again")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(ESCALATION_TICK) => {}
        }
    }
}
