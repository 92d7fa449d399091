//! The broker's one configuration struct, layered: built-in defaults → a TOML file (`--config`) →
//! `SPEAN_BROKER_*` environment variables (nested keys joined by `__`, e.g.
//! `SPEAN_BROKER_LIMITS__MAX_CASE_FILE_BYTES`). Every field is documented in `config.example.toml`.
//!
//! The defaults are the embedded setup: everything under `./spean-data`, SQLite, a development CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Holds the embedded database, the development PKI and `broker.addr` (the bound address, for
    /// scripts and tests that start the broker on port 0).
    pub data_dir: PathBuf,
    /// Where the gRPC gateway listens. Port 0 picks a free port.
    pub listen: SocketAddr,
    pub database: DatabaseConfig,
    pub amqp: AmqpConfig,
    pub tls: TlsConfig,
    pub directory: DirectoryConfig,
    pub limits: LimitsConfig,
    pub delivery: DeliveryConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://user@host/db`. Empty: `<data_dir>/broker.db`.
    pub url: Secret,
    /// SQLite `synchronous=FULL`: a commit survives power loss, not only a crash of the process.
    pub durable: bool,
    /// PostgreSQL: how long a request waits for a connection, a new one included, before it fails
    /// with UNAVAILABLE.
    pub acquire_timeout_ms: u64,
    /// PostgreSQL: `statement_timeout` and `idle_in_transaction_session_timeout` of every
    /// session, so that a statement stuck behind a lock, or a transaction a vanished broker left
    /// open, holds nobody for long.
    pub statement_timeout_ms: u64,
    /// PostgreSQL: the server's TCP keepalive for the broker's sessions (idle time and interval;
    /// three probes), so that the server ends the sessions of a broker cut off without a reset.
    pub keepalive_s: u64,
}

/// A value that must not appear in logs or `Debug` output (it may hold a password).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "[redacted]"
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:5672/vhost` (or `amqps://`). Empty: deliver through the database
    /// mailbox instead (the embedded default).
    ///
    /// For a RabbitMQ cluster, name every node, comma-separated (a comma inside a password is
    /// written `%2C`): the broker connects to the first that answers and, when its connection is
    /// lost, goes on to the next. With one URL, losing that node stopped all delivery while the
    /// other nodes held a quorum for every queue.
    pub url: Secret,
    /// Prefix of every exchange and queue, so several deployments (or test runs) share one RabbitMQ.
    pub prefix: String,
    /// A message returned to its queue this many times is dead-lettered (`x-delivery-limit`). A
    /// return is a stream that ended with the message unconfirmed, so the limit is high: an adapter
    /// on a flapping field link must not lose a referral to the dead-letter queue, while a message
    /// that a hundred connections in a row failed to store is not bad luck. A message that is not a
    /// Spean delivery at all is dead-lettered at once, whatever the limit.
    pub delivery_limit: u32,
    /// Outbox rows published per batch (pipelined, one wait for all confirms).
    pub publish_batch: u32,
    /// Most deliveries for one agency carried by one message. A batch's deliveries for the same
    /// agency go out together, which spares RabbitMQ a message, a confirm and an ack for each; a
    /// message is acked only when the adapter confirmed all of them, so a stream that drops returns
    /// them all. 1 publishes each delivery alone.
    pub bundle_max: u32,
    /// PEM file of the CA that signed RabbitMQ's certificate, for `amqps://`. Empty: no extra CA.
    pub ca_cert: PathBuf,
    /// The AMQP heartbeat asked of RabbitMQ, in seconds, unless the URL sets `heartbeat` itself. A
    /// partition that drops packets without a reset is noticed only through missed heartbeats,
    /// after about two of them: with RabbitMQ's 60 s that was two minutes of accepted submits and
    /// no deliveries while health said SERVING.
    pub heartbeat_s: u16,
}

impl AmqpConfig {
    /// The nodes named in `url`, in order: one URL each.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.url
            .expose()
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
    }

    /// The URLs to connect with, one per node: each with `heartbeat=`[`AmqpConfig::heartbeat_s`]
    /// added unless it names a heartbeat already.
    pub fn connect_urls(&self) -> Vec<String> {
        self.nodes()
            .map(|url| {
                if url.contains("heartbeat=") {
                    return url.to_owned();
                }
                let joint = if url.contains('?') { '&' } else { '?' };
                format!("{url}{joint}heartbeat={}", self.heartbeat_s)
            })
            .collect()
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: Secret::default(),
            prefix: "spean".into(),
            delivery_limit: 100,
            publish_batch: 256,
            bundle_max: 32,
            ca_cert: PathBuf::new(),
            heartbeat_s: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Folder of the network CA and the broker's certificate. Empty: `<data_dir>/pki`.
    pub pki_dir: PathBuf,
    /// Create the CA, the server certificate and a certificate for every directory agency on start
    /// when they are missing (never replacing one that exists). For development and demos;
    /// production issues certificates with `spean-broker pki` and keeps the CA key offline.
    /// `"auto"` (the default) is on with the embedded SQLite store and off with PostgreSQL, so the
    /// quick start needs no setting and a production broker never makes keys unasked.
    pub dev_pki: DevPki,
    /// DNS names and IP addresses the development server certificate is issued for.
    pub server_names: Vec<String>,
    /// How often each broker re-reads the revoked certificates (`pki revoke`, `pki rotate`) and
    /// closes the delivery streams of one whose revocation has taken effect. On SQLite this read is
    /// how a revocation the CLI wrote reaches the broker; on PostgreSQL a NOTIFY brings it at once
    /// and this read is the fallback for a notice missed while the listening connection was down.
    pub revocation_refresh_ms: u64,
}

/// `tls.dev_pki`: `true`, `false`, or `"auto"` ([`Config::dev_pki`] decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DevPki {
    /// `true` or `false`: as said.
    Set(bool),
    /// `"auto"`: on with the embedded SQLite store, off with PostgreSQL.
    Auto(AutoWord),
}

/// The one word [`DevPki::Auto`] is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoWord {
    Auto,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryConfig {
    /// What to load when the store has no directory yet: `demo` (the built-in copy of
    /// `fixtures/network.json`), `none`, or the path of a directory file.
    pub seed: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest gRPC message accepted; larger ones are refused before they are decoded.
    pub max_message_bytes: usize,
    /// Largest encoded case file in a submission.
    pub max_case_file_bytes: usize,
    /// Open connections the broker holds at once, handshakes included. One more is closed as soon
    /// as it is accepted, so that sockets that never finish a handshake cannot use up the
    /// process's file descriptors and lock every agency out.
    pub max_connections: usize,
    /// How long a new connection has to finish its TLS handshake (and present its certificate)
    /// before it is closed.
    pub handshake_timeout_ms: u64,
    /// Concurrent calls (HTTP/2 streams) on one connection. An adapter needs one delivery stream
    /// and a few calls in flight; a benchmark sender keeps a window of 64.
    pub max_concurrent_streams: u32,
    /// Open delivery streams (`Subscribe`) per agency, across its connections to this broker.
    /// One more is refused with RESOURCE_EXHAUSTED: each stream holds a RabbitMQ channel, and one
    /// agency must not take those the relay and the other agencies need.
    pub max_streams_per_agency: usize,
    /// Calls per second one agency may make on average to this broker, every service counted
    /// (a delivery stream counts once, when it opens). One over it is refused with
    /// RESOURCE_EXHAUSTED, naming this limit, before any database work, and told when to retry
    /// (`grpc-retry-pushback-ms`): one agency flooding the broker must not slow the others. An
    /// adapter sends far fewer; 0 turns the limit off.
    pub requests_per_second_per_agency: u32,
    /// How many calls an agency may make at once above that rate.
    pub request_burst_per_agency: u32,
    /// How long a call may take before the broker answers it with CANCELLED and drops what it was
    /// waiting for: a database connection that hangs without a reset (a silent partition) must
    /// not hold a request, nor its adapter, for the minutes TCP takes to give up. Delivery
    /// streams are bounded only until they are open.
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// How often a waiting delivery session re-reads its mailbox even without a wake-up (a safety net;
    /// writes in this process wake sessions at once).
    pub poll_interval_ms: u64,
    /// How long a connection may stay silent before the broker pings it (HTTP/2 PING). An adapter
    /// whose network vanished without closing the connection (a mobile network dropping, a NAT
    /// forgetting it) sends nothing more, and until the connection closes its delivery stream
    /// keeps the deliveries it was sent and never confirmed.
    pub keepalive_interval_ms: u64,
    /// How long the broker waits for the answer to a ping before it closes the connection; the
    /// stream's unconfirmed deliveries then go to the adapter's next connection.
    pub keepalive_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `spean_broker=debug`; `RUST_LOG` overrides it.
    pub filter: String,
    /// Log a line when each span closes, with the time it was busy and the time it waited: a
    /// submit, a recorded change, a batch of confirmations. For finding where slow answers wait
    /// (the store, the disk, a lock) in a running broker; a line per request, so off by default.
    pub span_timings: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("spean-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database: DatabaseConfig::default(),
            amqp: AmqpConfig::default(),
            tls: TlsConfig::default(),
            directory: DirectoryConfig::default(),
            limits: LimitsConfig::default(),
            delivery: DeliveryConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: Secret::default(),
            durable: true,
            acquire_timeout_ms: 5_000,
            statement_timeout_ms: 60_000,
            keepalive_s: 10,
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            pki_dir: PathBuf::new(),
            dev_pki: DevPki::Auto(AutoWord::Auto),
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            revocation_refresh_ms: 500,
        }
    }
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            seed: "demo".into(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            max_case_file_bytes: 256 * 1024,
            max_connections: 4096,
            handshake_timeout_ms: 10_000,
            max_concurrent_streams: 256,
            max_streams_per_agency: 4,
            requests_per_second_per_agency: 500,
            request_burst_per_agency: 1000,
            request_timeout_ms: 30_000,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            poll_interval_ms: 1000,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 20_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
            span_timings: false,
        }
    }
}

/// The prefix of the environment variables that override settings.
const ENV_PREFIX: &str = "SPEAN_BROKER_";

/// `SPEAN_BROKER_*` variables that are not settings: `SPEAN_BROKER_CONFIG` names the file itself
/// (the command line reads it), and read as a setting it would be an unknown key that stops startup.
const NOT_SETTINGS: &[&str] = &["config"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Config {
    /// Defaults, then `file` if given, then `SPEAN_BROKER_*` variables (except `SPEAN_BROKER_CONFIG`,
    /// which names `file`); validated.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let config: Config = figment
            .merge(Env::prefixed(ENV_PREFIX).ignore(NOT_SETTINGS).split("__"))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.to_owned(),
        };
        let url = self.database_url();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres:")
            || url.starts_with("postgresql:"))
        {
            return Err(invalid(
                "database.url",
                "must be a sqlite:// or postgres:// URL",
            ));
        }
        let amqp_given = !self.amqp.url.expose().trim().is_empty();
        let amqp_nodes_valid = self.amqp.nodes().next().is_some()
            && self
                .amqp
                .nodes()
                .all(|url| url.starts_with("amqp://") || url.starts_with("amqps://"));
        if amqp_given && !amqp_nodes_valid {
            return Err(invalid(
                "amqp.url",
                "must be empty or amqp:// or amqps:// URLs, comma-separated",
            ));
        }
        for (field, value) in [
            ("amqp.delivery_limit", self.amqp.delivery_limit),
            ("amqp.publish_batch", self.amqp.publish_batch),
            ("amqp.bundle_max", self.amqp.bundle_max),
            ("amqp.heartbeat_s", u32::from(self.amqp.heartbeat_s)),
            (
                "database.acquire_timeout_ms",
                u32::try_from(self.database.acquire_timeout_ms).unwrap_or(u32::MAX),
            ),
            (
                "database.statement_timeout_ms",
                u32::try_from(self.database.statement_timeout_ms).unwrap_or(u32::MAX),
            ),
            (
                "database.keepalive_s",
                u32::try_from(self.database.keepalive_s).unwrap_or(u32::MAX),
            ),
            (
                "limits.request_timeout_ms",
                u32::try_from(self.limits.request_timeout_ms).unwrap_or(u32::MAX),
            ),
            (
                "limits.max_concurrent_streams",
                self.limits.max_concurrent_streams,
            ),
            (
                "limits.max_connections",
                u32::try_from(self.limits.max_connections).unwrap_or(u32::MAX),
            ),
            (
                "limits.max_streams_per_agency",
                u32::try_from(self.limits.max_streams_per_agency).unwrap_or(u32::MAX),
            ),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        if self.limits.max_case_file_bytes >= self.limits.max_message_bytes {
            return Err(invalid(
                "limits.max_case_file_bytes",
                "must be smaller than limits.max_message_bytes",
            ));
        }
        let delivery = &self.delivery;
        for (field, ms) in [
            ("delivery.poll_interval_ms", delivery.poll_interval_ms),
            (
                "delivery.keepalive_interval_ms",
                delivery.keepalive_interval_ms,
            ),
            (
                "delivery.keepalive_timeout_ms",
                delivery.keepalive_timeout_ms,
            ),
            (
                "limits.handshake_timeout_ms",
                self.limits.handshake_timeout_ms,
            ),
            ("tls.revocation_refresh_ms", self.tls.revocation_refresh_ms),
        ] {
            if ms == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        Ok(())
    }

    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("broker.db").display())
        } else {
            self.database.url.expose().to_owned()
        }
    }

    /// Warnings for connections to PostgreSQL or RabbitMQ on another host that are not verified
    /// TLS: case data (the case file, until it is sealed end to end, and the free text of events)
    /// would cross the network in clear, or to a server nobody checked.
    pub fn insecure_transports(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let db = self.database_url();
        if (db.starts_with("postgres:") || db.starts_with("postgresql:"))
            && !is_local(url_host(&db))
            && !(db.contains("sslmode=verify-full") || db.contains("sslmode=verify-ca"))
        {
            warnings.push(format!(
                "database.url reaches {} without verified TLS: add sslmode=verify-full (and \
                 sslrootcert=) to the URL",
                url_host(&db)
            ));
        }
        for amqp in self.amqp.nodes() {
            if amqp.starts_with("amqp://") && !is_local(url_host(amqp)) {
                warnings.push(format!(
                    "amqp.url reaches {} in clear: use amqps:// (and amqp.ca_cert)",
                    url_host(amqp)
                ));
            }
        }
        warnings
    }

    /// Whether to create a missing development PKI on start: `tls.dev_pki`, where `"auto"` means on
    /// only for the embedded SQLite store. A PostgreSQL broker is a production one, and there a key
    /// it made itself would be a CA key on the online host and identities no agency holds.
    pub fn dev_pki(&self) -> bool {
        match self.tls.dev_pki {
            DevPki::Set(on) => on,
            DevPki::Auto(_) => self.database_url().starts_with("sqlite:"),
        }
    }

    pub fn pki_dir(&self) -> PathBuf {
        if self.tls.pki_dir.as_os_str().is_empty() {
            self.data_dir.join("pki")
        } else {
            self.tls.pki_dir.clone()
        }
    }

    /// The file `serve` writes the bound address to.
    pub fn address_file(&self) -> PathBuf {
        self.data_dir.join("broker.addr")
    }
}

/// The host of a `scheme://user:password@host:port/path?query` URL; empty for none (a local
/// socket, for PostgreSQL).
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    host.split(':').next().unwrap_or("")
}

/// Whether `host` is this machine: a loopback name or address, or a local socket.
fn is_local(host: &str) -> bool {
    host.is_empty()
        || host == "localhost"
        || host == "::1"
        || host.starts_with("127.")
        || host.starts_with("%2F")
        || host.starts_with("%2f")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_or_unverified_links_to_other_hosts_are_warned_about() {
        let with = |db: &str, amqp: &str| {
            let mut c = Config::default();
            c.database.url = Secret::new(db);
            c.amqp.url = Secret::new(amqp);
            c.insecure_transports()
        };
        assert!(
            with(
                "postgres://spean@127.0.0.1:5432/spean",
                "amqp://g:g@localhost:5672/v"
            )
            .is_empty()
        );
        assert!(
            with(
                "postgres://spean:pw@db.example.org/spean?sslmode=verify-full",
                "amqps://g:g@mq.example.org/v"
            )
            .is_empty()
        );
        let warned = with(
            "postgres://spean:pw@db.example.org:5432/spean?sslmode=require",
            "amqp://g:g@10.0.0.5:5672/v",
        );
        assert_eq!(warned.len(), 2, "{warned:?}");
        assert!(
            warned[0].starts_with("database.url reaches db.example.org"),
            "{warned:?}"
        );
        assert!(
            warned[1].starts_with("amqp.url reaches 10.0.0.5"),
            "{warned:?}"
        );
        assert!(
            !warned.iter().any(|w| w.contains("pw")),
            "a warning printed a password"
        );
        assert_eq!(url_host("postgres://u@[fd00::1]:5432/db"), "fd00::1");
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
        let from_file: Config = Figment::new()
            .merge(Toml::file_exact(&path))
            .extract()
            .unwrap();
        let defaults = Config::default();
        assert_eq!(
            serde_json::to_value(&from_file).unwrap(),
            serde_json::to_value(&defaults).unwrap()
        );
    }

    #[test]
    fn the_amqp_url_asks_for_a_short_heartbeat_unless_it_names_one() {
        let with = |url: &str| AmqpConfig {
            url: Secret::new(url),
            ..AmqpConfig::default()
        };
        assert_eq!(
            with("amqp://guest:guest@127.0.0.1:5672/%2f").connect_urls(),
            ["amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10"]
        );
        assert_eq!(
            with("amqps://h/v?frame_max=8192").connect_urls(),
            ["amqps://h/v?frame_max=8192&heartbeat=10"]
        );
        assert_eq!(
            with("amqp://h/v?heartbeat=30").connect_urls(),
            ["amqp://h/v?heartbeat=30"]
        );
    }

    #[test]
    fn the_amqp_url_may_name_every_node_of_a_cluster() {
        let mut config = Config::default();
        config.database.url = Secret::new("postgres://localhost/spean");
        config.amqp.url = Secret::new("amqp://g:p@n1:5672/v, amqp://g:p@n2:5673/v,amqps://n3/v");
        assert!(config.validate().is_ok());
        assert_eq!(
            config.amqp.connect_urls(),
            [
                "amqp://g:p@n1:5672/v?heartbeat=10",
                "amqp://g:p@n2:5673/v?heartbeat=10",
                "amqps://n3/v?heartbeat=10"
            ]
        );
        let warned = config.insecure_transports();
        assert!(
            warned.iter().any(|w| w.contains("reaches n1")),
            "{warned:?}"
        );
        assert!(
            warned.iter().any(|w| w.contains("reaches n2")),
            "{warned:?}"
        );
        config.amqp.url = Secret::new("amqp://n1/v,http://n2/v");
        let refused = config.validate().unwrap_err().to_string();
        assert!(refused.contains("amqp.url"), "{refused}");
        config.amqp.url = Secret::new(" , ");
        assert!(config.validate().is_err());
    }

    #[test]
    fn the_development_pki_is_on_by_default_only_for_the_embedded_store() {
        let load = |toml: &str| -> Config {
            Figment::from(Serialized::defaults(Config::default()))
                .merge(Toml::string(toml))
                .extract()
                .unwrap()
        };
        assert!(load("").dev_pki());
        assert!(!load("[database]\nurl = \"postgres://spean@db/spean\"").dev_pki());
        assert!(
            load("[database]\nurl = \"postgres://spean@db/spean\"\n[tls]\ndev_pki = true")
                .dev_pki()
        );
        assert!(!load("[tls]\ndev_pki = false").dev_pki());
        assert!(load("[tls]\ndev_pki = \"auto\"").dev_pki());
        assert!(
            Figment::from(Serialized::defaults(Config::default()))
                .merge(Toml::string("[tls]\ndev_pki = \"sometimes\""))
                .extract::<Config>()
                .is_err()
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[limits]\nmax_case_bytes = 3"))
            .extract::<Config>()
            .unwrap_err();
        assert!(err.to_string().contains("max_case_bytes"), "{err}");
    }

    #[test]
    fn a_zero_count_or_interval_is_refused_naming_its_field() {
        type Zero = fn(&mut Config);
        let zeroes: [(&str, Zero); 4] = [
            ("delivery.keepalive_timeout_ms", |c| {
                c.delivery.keepalive_timeout_ms = 0
            }),
            ("amqp.delivery_limit", |c| c.amqp.delivery_limit = 0),
            ("amqp.publish_batch", |c| c.amqp.publish_batch = 0),
            ("amqp.bundle_max", |c| c.amqp.bundle_max = 0),
        ];
        for (field, zero) in zeroes {
            let mut config = Config::default();
            zero(&mut config);
            let err = config.validate().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("configuration: {field}: must be at least 1")
            );
        }
    }
}
