//! RabbitMQ as a cluster, and the network to RabbitMQ failing: a broker given several nodes keeps
//! delivering when the node it uses dies, spreads the agencies' queue leaders over the nodes, and
//! notices a silent partition and recovers from it once the network heals.
//!
//! [`RabbitCluster`] is three RabbitMQ nodes of the test's own, on the machine's RabbitMQ
//! installation but with their own ports, folders and Erlang cookie; the machine's node is left
//! alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command as StdCommand;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use spean_testkit::Patience;
use tokio::process::Command;

use crate::faults::{BEFORE_FAULT, Network};
use crate::helpers::{AdapterProcess, BrokerProcess, Relay, ServingStatus, eventually};
use crate::production::{Production, free_port, wait_for_amqp};
use crate::traffic::{self, ACK};

const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

/// The fewest nodes where a quorum queue survives losing one.
const NODES: usize = 3;

/// A RabbitMQ cluster of the test's own: [`NODES`] nodes on free ports, nodes 2 and 3 joined to
/// node 1. Every node and every `rabbitmqctl` call share one `HOME`, whose `.erlang.cookie` (fresh
/// and random) lets them talk to each other; each node has its own config file, so the machine's
/// `/etc/rabbitmq/rabbitmq.conf` (which pins port 5672) is not read. No plugins. Dropped, every
/// node is killed and the folder removed.
pub struct RabbitCluster {
    /// The `HOME` of the nodes and of `rabbitmqctl`: the cookie, the (empty) plugin list, and a
    /// folder per node.
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

/// One node of a [`RabbitCluster`].
struct Node {
    /// `spean-e2e-<port>@localhost`: how `rabbitmqctl -n` and `list_queues leader` name it.
    name: String,
    /// The AMQP port, on 127.0.0.1 only; the inter-node port is 10000 above it.
    port: u16,
    /// Its config file, database, log and pid file.
    dir: PathBuf,
    /// Set while [`RabbitCluster::stop_node`] has it down, so the harness asks only live nodes.
    down: AtomicBool,
}

impl RabbitCluster {
    /// Starts the nodes, joins them, and returns once `cluster_status` shows all of them running.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cookie = dir.path().join(".erlang.cookie");
        std::fs::write(&cookie, uuid::Uuid::now_v7().simple().to_string()).unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400)).unwrap();
        }
        std::fs::write(dir.path().join("enabled_plugins"), "[].").unwrap();
        let mut ports = BTreeSet::new();
        while ports.len() < NODES {
            ports.insert(free_port());
        }
        let nodes = ports
            .into_iter()
            .map(|port| {
                let node_dir = dir.path().join(format!("node-{port}"));
                std::fs::create_dir_all(node_dir.join("mnesia")).unwrap();
                std::fs::create_dir_all(node_dir.join("log")).unwrap();
                std::fs::write(
                    node_dir.join("rabbitmq.conf"),
                    format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
                )
                .unwrap();
                Node {
                    name: format!("spean-e2e-{port}@localhost"),
                    port,
                    dir: node_dir,
                    down: AtomicBool::new(false),
                }
            })
            .collect();
        let cluster = Self { dir, nodes };
        for i in 0..NODES {
            cluster.launch(i).await;
        }
        for i in 0..NODES {
            cluster.wait_until_up(i).await;
        }
        let first = cluster.nodes[0].name.clone();
        for i in 1..NODES {
            cluster.ctl_ok(i, &["stop_app"]).await;
            cluster.ctl_ok(i, &["join_cluster", &first]).await;
            cluster.ctl_ok(i, &["start_app"]).await;
        }
        cluster.wait_until_all_running().await;
        cluster
    }

    /// Runs `rabbitmq-server -detached` for node `i`, over whatever its folder holds.
    async fn launch(&self, i: usize) {
        let node = &self.nodes[i];
        let status = Command::new(format!("{RABBITMQ_BIN}/rabbitmq-server"))
            .arg("-detached")
            .env("HOME", self.dir.path())
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_DIST_PORT", (node.port + 10000).to_string())
            .env("RABBITMQ_CONFIG_FILE", node.dir.join("rabbitmq"))
            .env("RABBITMQ_MNESIA_BASE", node.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
            .env("RABBITMQ_PID_FILE", node.dir.join("pid"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.path().join("enabled_plugins"),
            )
            // Three Erlang VMs share two cores: schedulers that sleep when idle instead of spinning.
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "+sbwt none +sbwtdcpu none +sbwtdio none",
            )
            .status()
            .await
            .expect("rabbitmq-server is not installed");
        assert!(
            status.success(),
            "RabbitMQ node {} did not start",
            node.name
        );
    }

    /// Waits until node `i` accepts AMQP connections.
    async fn wait_until_up(&self, i: usize) {
        wait_for_amqp(self.nodes[i].port, &self.nodes[i].name).await;
    }

    async fn wait_until_all_running(&self) {
        let all: BTreeSet<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        eventually("every RabbitMQ node to run in the cluster", || async {
            (self.running_nodes().await == all).then_some(())
        })
        .await;
    }

    /// `rabbitmqctl -n <node i> args…`, whatever its exit status.
    async fn ctl(&self, i: usize, args: &[&str]) -> std::process::Output {
        Command::new(format!("{RABBITMQ_BIN}/rabbitmqctl"))
            .arg("-n")
            .arg(&self.nodes[i].name)
            .args(args)
            .env("HOME", self.dir.path())
            .output()
            .await
            .expect("rabbitmqctl is not installed")
    }

    /// `rabbitmqctl -n <node i> args…`, which must succeed; returns what it printed.
    async fn ctl_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.ctl(i, args).await;
        assert!(
            out.status.success(),
            "rabbitmqctl -n {} {args:?} failed: {}{}",
            self.nodes[i].name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A node that is not stopped, for questions about the whole cluster.
    fn live_node(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| !n.down.load(Ordering::SeqCst))
            .expect("every node is stopped")
    }

    /// The nodes `cluster_status` shows running (none if the live node cannot answer).
    pub async fn running_nodes(&self) -> BTreeSet<String> {
        let out = self
            .ctl(self.live_node(), &["cluster_status", "--formatter", "json"])
            .await;
        let Ok(status) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return BTreeSet::new();
        };
        status["running_nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect()
    }

    /// Node `i`'s AMQP port.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// The AMQP URLs of every node for `vhost`, node 1 first, comma-separated as the broker's
    /// `amqp.url` takes a list.
    pub fn urls(&self, vhost: &str) -> String {
        (0..NODES)
            .map(|i| format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", self.port(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Creates `vhost` with every permission for `guest` (who may log in from 127.0.0.1 only,
    /// which is where everything runs).
    pub async fn add_vhost(&self, vhost: &str) {
        let i = self.live_node();
        self.ctl_ok(i, &["add_vhost", vhost]).await;
        self.ctl_ok(
            i,
            &["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        )
        .await;
    }

    /// Node `i` dies: its Erlang VM gets SIGKILL, so its clients and the other nodes see its
    /// sockets drop with no goodbye (no AMQP `connection.close`, no leader handover), as when the
    /// machine or the process fails. `rabbitmqctl stop_app` would be an orderly stop instead. Its
    /// data stays, so [`RabbitCluster::start_node`] brings it back into the cluster.
    pub async fn stop_node(&self, i: usize) {
        let node = &self.nodes[i];
        node.down.store(true, Ordering::SeqCst);
        kill(node);
        let name = node.name.clone();
        eventually(&format!("the cluster to see {name} down"), || async {
            (!self.running_nodes().await.contains(&name)).then_some(())
        })
        .await;
    }

    /// Starts node `i` again after [`RabbitCluster::stop_node`], and waits until it is back in the
    /// cluster.
    pub async fn start_node(&self, i: usize) {
        self.launch(i).await;
        self.wait_until_up(i).await;
        self.nodes[i].down.store(false, Ordering::SeqCst);
        self.wait_until_all_running().await;
    }

    /// The node index leading each queue in `vhost`, by queue name (`list_queues name leader`:
    /// quorum queues name their leader; others are left out).
    pub async fn leaders(&self, vhost: &str) -> BTreeMap<String, usize> {
        let out = self
            .ctl_ok(
                self.live_node(),
                &[
                    "list_queues",
                    "-q",
                    "-p",
                    vhost,
                    "name",
                    "leader",
                    "--formatter",
                    "json",
                ],
            )
            .await;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("list_queues printed no JSON ({e}): {out}"));
        rows.iter()
            .filter_map(|row| {
                let leader = row["leader"].as_str()?;
                let i = self.nodes.iter().position(|n| n.name == leader)?;
                Some((row["name"].as_str()?.to_owned(), i))
            })
            .collect()
    }
}

/// SIGKILL to a node's Erlang VM, by the pid file it wrote when it booted (removed, so a later
/// kill never hits a reused pid).
fn kill(node: &Node) {
    let pid_file = node.dir.join("pid");
    let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|pid| pid.trim().parse().ok())
    else {
        return;
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = std::fs::remove_file(pid_file);
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            if node.dir.join("pid").exists() {
                kill(node);
            } else {
                // Not booted far enough to write its pid file: ask it to stop.
                let _ = StdCommand::new(format!("{RABBITMQ_BIN}/rabbitmqctl"))
                    .args(["-n", &node.name, "stop"])
                    .env("HOME", self.dir.path())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
}

/// A test's database on the machine's PostgreSQL (a [`Production`], whose vhost on the machine's
/// RabbitMQ goes unused) and a vhost on a [`RabbitCluster`] of its own.
pub struct ClusterProduction {
    pub cluster: RabbitCluster,
    vhost: String,
    production: Production,
}

impl ClusterProduction {
    pub async fn start() -> Self {
        let (cluster, production) = tokio::join!(RabbitCluster::start(), Production::new());
        let vhost = format!("spean-e2e-{}", uuid::Uuid::now_v7().simple());
        cluster.add_vhost(&vhost).await;
        Self {
            cluster,
            vhost,
            production,
        }
    }

    /// The settings a broker process needs: [`Production::broker_env`] with every node's URL.
    pub fn broker_env(&self) -> Vec<(String, String)> {
        self.production
            .broker_env()
            .into_iter()
            .map(|(k, v)| match k.as_str() {
                "SPEAN_BROKER_AMQP__URL" => (k, self.cluster.urls(&self.vhost)),
                _ => (k, v),
            })
            .collect()
    }

    /// The node leading each of the agencies' queues, by agency.
    pub async fn agency_queue_leaders(&self) -> BTreeMap<String, usize> {
        self.cluster
            .leaders(&self.vhost)
            .await
            .into_iter()
            .filter_map(|(queue, node)| {
                Some((queue.strip_prefix("spean.agency.")?.to_owned(), node))
            })
            .collect()
    }
}

/// Queues referrals `tag-<n>` for `n` in `range` in the sender's outbox one at a time, one every
/// `every`: a steady stream for a fault to cut through.
async fn send_steadily(
    sender: &AdapterProcess,
    tag: &str,
    range: std::ops::Range<usize>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in range {
        tick.tick().await;
        traffic::send(sender, tag, n..n + 1).await;
    }
}

/// Queues one referral, `<tag>-0` to the first recipient, and returns how long it took to reach
/// the recipient's inbox, which must be within `limit`.
async fn deliver_one(
    sender: &AdapterProcess,
    recipients: &[AdapterProcess],
    tag: &str,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    traffic::send(sender, tag, 0..1).await;
    let client_ref = format!("{tag}-0");
    let patience = Patience {
        limit,
        poll: Duration::from_millis(200),
    };
    let delivered = patience
        .poll(|| async {
            let status = sender.json(&["status", "--all"]).await;
            let id = status["referrals"]
                .as_array()?
                .iter()
                .find(|r| r["client_ref"] == client_ref.as_str())?["referral_id"]
                .as_str()?
                .to_owned();
            recipients[0]
                .inbox()
                .await
                .iter()
                .any(|r| r["referral_id"] == id.as_str())
                .then_some(())
        })
        .await;
    assert!(
        delivered.is_some(),
        "{client_ref} was not delivered within {limit:?}"
    );
    started.elapsed()
}

/// Waits up to `limit` for the broker's health to be `status`, and returns how long it took.
async fn health_within(broker: &BrokerProcess, status: ServingStatus, limit: Duration) -> Duration {
    let started = Instant::now();
    let patience = Patience {
        limit,
        poll: Duration::from_millis(200),
    };
    let reached = patience
        .poll(|| async { (broker.health().await == Ok(status)).then_some(()) })
        .await;
    assert!(
        reached.is_some(),
        "the broker did not report {status:?} within {limit:?} (it reports {:?})",
        broker.health().await
    );
    started.elapsed()
}

/// One three-node cluster, for two things (a cluster takes half a minute to form on this machine):
///
/// 1. The broker spreads the agencies' quorum queues' leaders over the nodes
///    (`x-queue-leader-locator: balanced`). With RabbitMQ's default every leader sat on the node
///    the broker happened to connect to, which then carried all the cluster's delivery work, and
///    whose loss moved every queue's leader at once.
/// 2. The broker is given every node, node 1 first, and node 1 dies mid-stream. The broker moves
///    to the next node and delivery goes on: a referral sent after the node died reaches its
///    recipient within 20 s, the broker reports SERVING again within 60 s, and in the end every
///    referral reached its recipient's adapter exactly once, with its `delivered` and
///    `acknowledged` events back at the sender once each, also across node 1 coming back and
///    rejoining.
#[tokio::test]
async fn a_cluster_spreads_queue_leaders_and_delivery_survives_losing_the_brokers_node() {
    const REFERRALS: usize = 60;
    let started = Instant::now();
    let env = ClusterProduction::start().await;
    assert_eq!(env.cluster.running_nodes().await.len(), NODES);
    eprintln!("cluster formed in {:?}", started.elapsed());
    let mut net = Network::start_with(tempfile::tempdir().unwrap(), &env.broker_env()).await;
    eventually("the broker to declare the agencies' queues", || async {
        net.broker
            .log()
            .contains("agency queues declared")
            .then_some(())
    })
    .await;
    let leaders = env.agency_queue_leaders().await;
    assert!(
        leaders.len() >= NODES,
        "too few agency queues to tell: {leaders:?}"
    );
    let nodes: BTreeSet<usize> = leaders.values().copied().collect();
    assert!(
        nodes.len() > 1,
        "every agency queue is led by the same node: {leaders:?}"
    );

    let Network {
        broker,
        sender,
        recipients,
        responses,
        ..
    } = &mut net;
    let sender = &*sender;
    let (_, (acknowledged_meanwhile, delivered_in, serving_in)) = tokio::join!(
        send_steadily(sender, "node", 0..REFERRALS, Duration::from_millis(250)),
        async {
            traffic::wait_for_arrivals(recipients, BEFORE_FAULT).await;
            env.cluster.stop_node(0).await;
            let stopped = Instant::now();
            let acknowledged = responses.answer_arrivals(recipients, &[ACK]).await;
            let delivered_in =
                deliver_one(sender, recipients, "after-stop", Duration::from_secs(20)).await;
            health_within(
                broker,
                ServingStatus::Serving,
                Duration::from_secs(60).saturating_sub(stopped.elapsed()),
            )
            .await;
            let serving_in = stopped.elapsed();
            // The node comes back and rejoins, most likely while referrals still flow.
            env.cluster.start_node(0).await;
            (acknowledged, delivered_in, serving_in)
        }
    );
    eprintln!(
        "after node 1 died: a new referral delivered in {delivered_in:?}, SERVING after {serving_in:?}"
    );
    assert!(acknowledged_meanwhile >= BEFORE_FAULT);
    assert!(
        net.broker.log().contains("lost the RabbitMQ connection"),
        "the broker was not using node 1"
    );
    let accepted = net.accepted(REFERRALS + 1).await;
    net.finish(accepted).await;
}

/// RabbitMQ reached through a relay that goes silent and then heals: the broker reports
/// NOT_SERVING within 45 s (by its AMQP heartbeat, as `partitions.rs` shows, or sooner by
/// publisher confirms that stay late), keeps accepting referrals meanwhile, and once the network
/// heals reports SERVING again within 60 s and delivers: a referral sent after the heal reaches
/// its recipient within 20 s, and every referral sent before and during the partition reaches its
/// recipient exactly once.
#[tokio::test]
async fn a_silent_partition_to_rabbitmq_is_noticed_and_recovers_when_it_heals() {
    let env = Production::new().await;
    let uri: lapin::uri::AMQPUri = env.amqp_url.parse().unwrap();
    let rabbit = tokio::net::lookup_host((uri.authority.host.as_str(), uri.authority.port))
        .await
        .unwrap()
        .next()
        .unwrap();
    let relay = Relay::start(rabbit).await;
    let settings: Vec<(String, String)> = env
        .broker_env()
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "SPEAN_BROKER_AMQP__URL" => (
                k,
                format!("amqp://guest:guest@{}/{}", relay.addr, uri.vhost),
            ),
            _ => (k, v),
        })
        .collect();
    let mut net = Network::start_with(tempfile::tempdir().unwrap(), &settings).await;
    traffic::send(&net.sender, "before", 0..10).await;
    traffic::wait_for_arrivals(&net.recipients, BEFORE_FAULT).await;

    relay.go_silent();
    let noticed_in = health_within(
        &net.broker,
        ServingStatus::NotServing,
        Duration::from_secs(45),
    )
    .await;
    traffic::send(&net.sender, "during", 10..14).await;
    net.sender.wait_outbox_sent().await;
    assert_eq!(
        net.broker.health().await,
        Ok(ServingStatus::NotServing),
        "the broker serves through a silent partition"
    );

    relay.heal();
    let recovered_in =
        health_within(&net.broker, ServingStatus::Serving, Duration::from_secs(60)).await;
    let delivered_in = deliver_one(
        &net.sender,
        &net.recipients,
        "healed",
        Duration::from_secs(20),
    )
    .await;
    eprintln!(
        "partition noticed in {noticed_in:?}; SERVING {recovered_in:?} after the heal; \
         a new referral delivered in {delivered_in:?}"
    );
    let accepted = net.accepted(15).await;
    net.finish(accepted).await;
}
