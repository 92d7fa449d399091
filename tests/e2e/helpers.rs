//! Starting, killing and driving the real binaries. The harness the benchmark shares (finding the
//! binaries, starting the broker until it listens, the adapter's command line, `eventually`, story
//! 1's referral) is `spean-testkit`; here the tests' handles wrap it, panic on failure, and add what
//! only tests ask: clients, health, the mailbox, the adapter's JSON commands and log counts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

use spean_proto::v1 as pb;
use spean_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use spean_proto::v1::delivery_service_client::DeliveryServiceClient;
use spean_proto::v1::referral_service_client::ReferralServiceClient;
use spean_testkit::Patience;
pub use spean_testkit::{KHMER_NAME, PATIENCE, eventually, lama};
use sqlx::Connection as _;
use tokio::process::Command;
use tonic::transport::Channel;
pub use tonic_health::pb::health_check_response::ServingStatus;

/// A binary built by cargo in this workspace's target folder.
pub fn bin(name: &str) -> PathBuf {
    spean_testkit::binary(name).unwrap_or_else(|e| panic!("{e}"))
}

/// A `spean-broker serve` process over a data folder that outlives it, so it can be restarted.
/// Derefs to the shared [`spean_testkit::BrokerProcess`] for its address, folders and log.
pub struct BrokerProcess {
    process: spean_testkit::BrokerProcess,
    /// The settings the test gave, without the harness's defaults: a restart starts with them
    /// again, and administrative commands get them (and only them).
    settings: Vec<(String, String)>,
}

impl Deref for BrokerProcess {
    type Target = spean_testkit::BrokerProcess;

    fn deref(&self) -> &Self::Target {
        &self.process
    }
}

impl BrokerProcess {
    /// Starts the broker on `listen` (use `127.0.0.1:0` the first time) and waits until it answers.
    pub async fn start(data_dir: &Path, listen: &str) -> Self {
        Self::start_with(data_dir, listen, &[]).await
    }

    /// Like [`BrokerProcess::start`], with extra `SPEAN_BROKER_*` settings (database, RabbitMQ).
    pub async fn start_with(data_dir: &Path, listen: &str, env: &[(String, String)]) -> Self {
        // Deliveries polled often, so tests wait little; logs at info, which tests read.
        let mut all = vec![
            (
                "SPEAN_BROKER_DELIVERY__POLL_INTERVAL_MS".to_owned(),
                "200".to_owned(),
            ),
            ("RUST_LOG".to_owned(), "info".to_owned()),
        ];
        all.extend_from_slice(env);
        // A start waits for two things in turn, the address file and then a connection, and
        // either may take [`PATIENCE`] (a broker waiting for its database writes no address).
        let patience = Patience {
            limit: PATIENCE * 2,
            ..Patience::TESTS
        };
        let process = spean_testkit::BrokerProcess::start(data_dir, listen, &all, patience)
            .await
            .unwrap_or_else(|e| panic!("starting the broker: {e}"));
        Self {
            process,
            settings: env.to_vec(),
        }
    }

    /// Starts a killed broker again on the same address, data and settings.
    pub async fn start_again(&mut self) {
        let (dir, listen, env) = (
            self.data_dir.clone(),
            self.addr.to_string(),
            self.settings.clone(),
        );
        *self = Self::start_with(&dir, &listen, &env).await;
    }

    /// Runs an administrative command with this broker's data folder and settings.
    pub async fn admin(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("spean-broker"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .envs(self.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .await
            .unwrap()
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill(&mut self) {
        self.process.kill().await.unwrap();
    }

    /// What the broker's gRPC health service answers for the whole server (any agency's certificate
    /// works), or why it could not be asked. Tests that expect NOT_SERVING assert exactly that, so a
    /// broker that stopped answering at all does not pass for one that reports itself unhealthy.
    pub async fn health(&self) -> Result<ServingStatus, String> {
        let channel = self
            .endpoint("ahc-swu")
            .unwrap()
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|e| format!("health check failed: {e}"))?
            .into_inner()
            .status;
        ServingStatus::try_from(status).map_err(|_| format!("unknown serving status {status}"))
    }

    /// Waits until the broker's health service answers exactly `status`.
    pub async fn wait_for_health(&self, status: ServingStatus) {
        eventually(&format!("the broker to report {status:?}"), || async {
            (self.health().await == Ok(status)).then_some(())
        })
        .await;
    }

    /// What waits in the embedded broker's mailbox (`<data_dir>/broker.db`) for an adapter to
    /// confirm: (agency, event id, or `None` for a referral itself). A row goes when it is confirmed.
    pub async fn mailbox(&self) -> Vec<(String, Option<String>)> {
        let url = format!("sqlite://{}", self.data_dir.join("broker.db").display());
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let rows = sqlx::query_as("SELECT agency_id, event_id FROM mailbox ORDER BY seq")
            .fetch_all(&mut db)
            .await
            .unwrap();
        let _ = db.close().await;
        rows
    }

    /// A gRPC client presenting `agency`'s certificate.
    pub async fn client(&self, agency: &str) -> GrpcClient {
        self.client_at(&self.url(), agency).await
    }

    /// A gRPC client presenting `agency`'s certificate, reaching the broker through `url` (a
    /// [`Relay`]'s, say).
    pub async fn client_at(&self, url: &str, agency: &str) -> GrpcClient {
        let channel = spean_testkit::agency_endpoint(url, &self.identity(agency))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        GrpcClient {
            referrals: ReferralServiceClient::new(channel.clone()),
            coordinator: CoordinatorServiceClient::new(channel.clone()),
            delivery: DeliveryServiceClient::new(channel),
        }
    }
}

/// A TCP relay in front of the broker (or RabbitMQ) that can go silent: it then neither reads nor
/// writes, yet keeps every connection open, as a mobile network that dropped or a NAT that forgot
/// the connection does. Neither end sees a close or a reset. It can [`heal`](Relay::heal) again.
pub struct Relay {
    pub addr: SocketAddr,
    /// True while the relay is silent; every connection's pipes watch it.
    silent: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    pub async fn start(to: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (silent, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, to, watch.clone()));
            }
        });
        Self { addr, silent }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// From now on nothing passes either way, and nothing is closed.
    pub fn go_silent(&self) {
        self.silent.send_replace(true);
    }

    /// The network is back: new connections are forwarded again. The connections held while
    /// silent are closed, not resumed: the NAT or mobile network that forgot them answers their
    /// next packet with a reset, so neither end may count on them, and each must notice and
    /// connect again (RabbitMQ and the broker would also have given up on them by their
    /// heartbeats).
    pub fn heal(&self) {
        self.silent.send_replace(false);
    }
}

/// Forwards one accepted connection to `to` through two [`pipe`]s. A connection made while the
/// relay is silent reaches nothing (its packets are lost like any other) and is closed when the
/// relay heals.
async fn forward(
    client: tokio::net::TcpStream,
    to: SocketAddr,
    mut silent: tokio::sync::watch::Receiver<bool>,
) {
    if *silent.borrow_and_update() {
        let _ = silent.wait_for(|silent| !*silent).await;
        return;
    }
    let Ok(upstream) = tokio::net::TcpStream::connect(to).await else {
        return;
    };
    let (from_client, to_client) = client.into_split();
    let (from_upstream, to_upstream) = upstream.into_split();
    tokio::spawn(pipe(from_client, to_upstream, silent.clone()));
    tokio::spawn(pipe(from_upstream, to_client, silent));
}

/// Copies `from` to `to` until either closes or the relay goes silent; silent, it holds both open
/// until the relay heals (or is dropped), and then closes both (see [`Relay::heal`]).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut silent: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 16 * 1024];
    while !*silent.borrow_and_update() {
        tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            changed = silent.changed() => {
                if changed.is_err() {
                    // The relay is gone: so are its connections.
                    return;
                }
            }
        }
    }
    let _ = silent.wait_for(|silent| !*silent).await;
    drop((from, to));
}

pub struct GrpcClient {
    pub referrals: ReferralServiceClient<Channel>,
    pub coordinator: CoordinatorServiceClient<Channel>,
    pub delivery: DeliveryServiceClient<Channel>,
}

/// A raw delivery stream, as an adapter opens it: confirmations go in through `confirms`.
pub struct RawStream {
    pub confirms: tokio::sync::mpsc::Sender<pb::SubscribeRequest>,
    pub deliveries: tonic::Streaming<pb::Delivery>,
}

impl RawStream {
    /// Confirms a delivery, as an adapter does once it has stored it.
    pub async fn confirm(&self, delivery_id: String) {
        self.confirms
            .send(pb::SubscribeRequest {
                request: Some(pb::subscribe_request::Request::Confirm(pb::Confirm {
                    delivery_id,
                })),
            })
            .await
            .unwrap();
    }

    /// The next delivery, which must come within `limit`; `what` names it in the failure.
    pub async fn next_within(&mut self, limit: Duration, what: &str) -> pb::Delivery {
        tokio::time::timeout(limit, self.deliveries.message())
            .await
            .unwrap_or_else(|_| panic!("{what}: nothing came within {limit:?}"))
            .unwrap()
            .unwrap()
    }
}

impl GrpcClient {
    /// Submits story 1's referral under `client_ref` and returns its referral id.
    pub async fn submit_lama(&mut self, client_ref: &str) -> String {
        referral_id_of(self.referrals.submit(lama(client_ref)).await.unwrap())
    }

    /// The referral as this agency sees it through `Get`, which must succeed.
    pub async fn referral(&mut self, referral_id: &str) -> pb::Referral {
        self.referrals
            .get(pb::GetRequest {
                referral_id: referral_id.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Opens a delivery stream with the given window. `UNAVAILABLE` ("reconnect") is retried for
    /// a while, as an adapter does: the broker answers so while its link to RabbitMQ is being
    /// re-established, which a loaded machine can make happen at any moment.
    pub async fn subscribe(&mut self, window: u32) -> RawStream {
        let started = std::time::Instant::now();
        loop {
            let (confirms, rx) = tokio::sync::mpsc::channel(window.max(1) as usize + 1);
            confirms
                .send(pb::SubscribeRequest {
                    request: Some(pb::subscribe_request::Request::Hello(pb::Hello { window })),
                })
                .await
                .unwrap();
            match self
                .delivery
                .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            {
                Ok(answer) => {
                    return RawStream {
                        confirms,
                        deliveries: answer.into_inner(),
                    };
                }
                Err(status)
                    if status.code() == tonic::Code::Unavailable
                        && started.elapsed() < Duration::from_secs(20) =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(status) => panic!("subscribe: {status:?}"),
            }
        }
    }
}

/// One agency's `spean-adapter`: its own store file, the broker's identity folder for the agency, a
/// daemon that can be started, SIGKILLed and restarted, and the one-shot commands. Derefs to the
/// shared [`spean_testkit::AdapterProcess`] for its agency, store and log.
pub struct AdapterProcess {
    process: spean_testkit::AdapterProcess,
}

impl Deref for AdapterProcess {
    type Target = spean_testkit::AdapterProcess;

    fn deref(&self) -> &Self::Target {
        &self.process
    }
}

impl AdapterProcess {
    pub fn new(broker: &BrokerProcess, agency: &str, dir: &Path) -> Self {
        Self::with_identity(broker, agency, broker.identity(agency), dir)
    }

    /// The adapter of `agency` presenting the identity folder `identity` (an old, expired or
    /// revoked certificate) instead of the one the broker's PKI holds now.
    pub fn with_identity(
        broker: &BrokerProcess,
        agency: &str,
        identity: PathBuf,
        dir: &Path,
    ) -> Self {
        let process = spean_testkit::AdapterProcess::new(agency, identity, broker.url(), dir)
            // Repeated deliveries are logged at debug level: on, so that a log counts every one.
            .with_env("RUST_LOG", "info,spean_adapter::delivery=debug");
        Self { process }
    }

    /// The adapter as an agency installs it: its sealing key published (`keys publish`), as its
    /// daemon would on connecting, so that other agencies can send to it before it first runs.
    pub async fn installed(broker: &BrokerProcess, agency: &str, dir: &Path) -> Self {
        let adapter = Self::new(broker, agency, dir);
        let out = adapter.run(&["keys", "publish"]).await;
        assert!(
            out.status.success(),
            "{agency}: keys publish: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        adapter
    }

    /// Runs a one-shot command and returns its output, whatever its exit status.
    pub async fn run(&self, args: &[&str]) -> std::process::Output {
        self.process.run(args).await.unwrap()
    }

    /// Runs a command with `--json`, requires success, and parses what it printed.
    pub async fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        let out = self.run(&all).await;
        assert!(
            out.status.success(),
            "{} {:?} failed: {}",
            self.agency,
            args,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{} {:?} printed no JSON ({e}): {}",
                self.agency,
                args,
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Points later commands and daemon starts at another broker.
    pub fn point_to(&mut self, broker: &BrokerProcess) {
        self.process.point_to(broker.url());
    }

    /// Points later commands and daemon starts at `url` (a relay in front of the broker).
    pub fn point_to_url(&mut self, url: String) {
        self.process.point_to(url);
    }

    /// Starts the daemon (`run`), with extra environment variables.
    pub fn start_with(&mut self, env: &[(&str, &str)]) {
        self.process.start_with(env).unwrap();
    }

    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// SIGKILL: the daemon gets no chance to finish anything.
    pub async fn kill(&mut self) {
        self.process.kill().await.unwrap();
    }

    /// Waits for the daemon to exit on its own and returns how it ended.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        let mut child = self.process.take_daemon().expect("no daemon running");
        tokio::time::timeout(PATIENCE, child.wait())
            .await
            .expect("the daemon did not exit")
            .unwrap()
    }

    /// How many times the daemon's delivery stream was accepted by a broker, per its log.
    pub fn subscriptions(&self) -> usize {
        self.log().matches("subscribed to deliveries").count()
    }

    /// Waits until the daemon has subscribed `n` times in all (its log says so).
    pub async fn wait_subscribed(&self, n: usize) {
        eventually(
            &format!("{} to subscribe to deliveries ({n} in all)", self.agency),
            || async { (self.subscriptions() >= n).then_some(()) },
        )
        .await;
    }

    /// How many distinct deliveries carried each feedback event to the daemon, from its log: the
    /// info line `event received` for a new one and, at debug level (always on here),
    /// `duplicate event delivery` for a repeat under another delivery id.
    pub fn event_deliveries(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for line in self.log().lines().map(spean_testkit::log::strip_ansi) {
            if line.contains("event received") || line.contains("duplicate event delivery") {
                let id = field(&line, "event_id")
                    .unwrap_or_else(|| panic!("no event_id in the log line {line:?}"));
                *counts.entry(id.to_owned()).or_default() += 1;
            }
        }
        counts
    }

    /// Deliveries the daemon stored (its store's `deliveries` table: one row per delivery id).
    pub async fn stored_deliveries(&self) -> i64 {
        let url = format!("sqlite://{}", self.store().display());
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let n = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
            .fetch_one(&mut db)
            .await
            .unwrap();
        let _ = db.close().await;
        n
    }

    /// Outbox rows not sent yet or rejected, as `status --json` lists them.
    pub async fn unsent(&self) -> Vec<serde_json::Value> {
        let status = self.json(&["status", "--all"]).await;
        status["outbox"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until the outbox holds nothing pending, and requires that the broker refused nothing.
    pub async fn wait_outbox_sent(&self) {
        let unsent = eventually(&format!("{}'s outbox to drain", self.agency), || async {
            let unsent = self.unsent().await;
            (!unsent.iter().any(|r| r["status"] == "pending")).then_some(unsent)
        })
        .await;
        assert!(
            unsent.is_empty(),
            "the broker rejected requests from {}: {unsent:?}",
            self.agency
        );
    }

    /// This agency's inbox (all states) as JSON objects.
    pub async fn inbox(&self) -> Vec<serde_json::Value> {
        self.json(&["inbox", "--all"])
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The state of a referral this agency sent, as its `status` shows it.
    pub async fn sent_state(&self, referral_id: &str) -> Option<String> {
        let status = self.json(&["status", "--all"]).await;
        let rows = status
            .get("referrals")
            .and_then(|r| r.as_array())
            .cloned()
            .or_else(|| status.as_array().cloned())
            .unwrap_or_default();
        rows.iter()
            .find(|r| r["referral_id"] == referral_id)
            .and_then(|r| r["state"].as_str().map(str::to_owned))
    }
}

/// The value of `name=value` in a text log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=");
    let start = line.find(&key)? + key.len();
    line[start..].split_whitespace().next()
}

/// The referral id in a `Submit` answer.
pub fn referral_id_of(answer: tonic::Response<pb::SubmitResponse>) -> String {
    answer
        .into_inner()
        .referral
        .unwrap()
        .envelope
        .unwrap()
        .referral_id
}

/// Two brokers on `settings` sharing one PKI (the first's), both serving.
pub async fn two_brokers(
    dir: &Path,
    mut settings: Vec<(String, String)>,
) -> (BrokerProcess, BrokerProcess) {
    let first = BrokerProcess::start_with(&dir.join("broker"), "127.0.0.1:0", &settings).await;
    first.wait_for_health(ServingStatus::Serving).await;
    settings.push((
        "SPEAN_BROKER_TLS__PKI_DIR".into(),
        dir.join("broker/pki").display().to_string(),
    ));
    let second = BrokerProcess::start_with(&dir.join("broker-2"), "127.0.0.1:0", &settings).await;
    second.wait_for_health(ServingStatus::Serving).await;
    (first, second)
}

/// An action as `by` makes it through gRPC, as an adapter would: its free text (the person, the
/// note and the details' text) sealed with the test keys (`spean_testkit::sealed`) to `readers`
/// and to `by`, and nothing in clear.
pub fn sealed_action(
    by: &str,
    readers: &[&str],
    referral_id: &str,
    request_id: &str,
    text: pb::FreeText,
) -> Option<pb::Action> {
    Some(pb::Action {
        referral_id: referral_id.to_owned(),
        request_id: request_id.to_owned(),
        actor_person: String::new(),
        note: String::new(),
        sealed_text: spean_testkit::sealed::seal_text(by, referral_id, &text, readers),
    })
}

/// The free text of an action: a person, a note and the details' text.
pub fn words(person: &str, note: &str, detail: &str) -> pb::FreeText {
    pb::FreeText {
        actor_person: person.into(),
        note: note.into(),
        detail: detail.into(),
    }
}

/// The repository's directory as `edit` changes it, written to `dir` as `name`; the setting that
/// seeds a new broker with it.
pub fn seeded_directory(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> (String, String) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/network.json");
    let mut directory: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
    edit(&mut directory);
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec(&directory).unwrap()).unwrap();
    (
        "SPEAN_BROKER_DIRECTORY__SEED".into(),
        path.display().to_string(),
    )
}
