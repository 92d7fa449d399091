//! The production path for end-to-end tests: a fresh PostgreSQL database and a fresh RabbitMQ vhost per
//! test, on the machine's servers (URLs from `SPEAN_TEST_POSTGRES_URL` and `SPEAN_TEST_AMQP_URL`), or
//! a private RabbitMQ node for a test that stops RabbitMQ. A missing server fails the test: it never
//! skips.

use std::process::Command as StdCommand;

use lapin::options::{BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sqlx::Connection as _;

use crate::helpers::eventually;

/// The password in a private cluster's broker URL: it must never appear in the broker's log.
pub const PASSWORD: &str = "e2e-secret-b6f1";

fn postgres_admin_url() -> String {
    std::env::var("SPEAN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn amqp_server() -> (String, u16) {
    let url = std::env::var("SPEAN_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into());
    let port = url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or(5672);
    (url.trim_end_matches('/').to_owned(), port)
}

/// A RabbitMQ node of the test's own, on its own ports and folder, so stopping it disturbs no other test.
pub struct PrivateRabbit {
    dir: tempfile::TempDir,
    node: String,
    pub port: u16,
    /// The TLS listener's port, when it has one.
    pub tls_port: Option<u16>,
}

impl PrivateRabbit {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Also listens with TLS, presenting the broker's development server certificate from `pki`.
    pub async fn start_with_tls(pki: &std::path::Path) -> Self {
        Self::start_with(Some(pki)).await
    }

    async fn start_with(tls_from: Option<&std::path::Path>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let node = format!("spean-e2e-{port}@localhost");
        std::fs::write(dir.path().join("enabled_plugins"), "[].").unwrap();
        let tls_port = tls_from.map(|pki| {
            let tls_port = free_port();
            let conf = format!(
                "listeners.ssl.default = {tls_port}\n\
                 ssl_options.cacertfile = {ca}\n\
                 ssl_options.certfile = {cert}\n\
                 ssl_options.keyfile = {key}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                ca = pki.join("ca.pem").display(),
                cert = pki.join("broker.pem").display(),
                key = pki.join("broker.key").display(),
            );
            std::fs::write(dir.path().join("rabbitmq.conf"), conf).unwrap();
            tls_port
        });
        let p = |name: &str| dir.path().join(name);
        std::fs::create_dir_all(p("mnesia")).unwrap();
        std::fs::create_dir_all(p("log")).unwrap();
        let status = StdCommand::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .arg("-detached")
            .env("HOME", dir.path())
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", (port + 10000).to_string())
            .env("RABBITMQ_MNESIA_BASE", p("mnesia"))
            .env("RABBITMQ_LOG_BASE", p("log"))
            .env("RABBITMQ_PID_FILE", p("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", p("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", p("rabbitmq"))
            .status()
            .expect("rabbitmq-server is not installed");
        assert!(status.success(), "the private RabbitMQ node did not start");
        let rabbit = Self {
            dir,
            node,
            port,
            tls_port,
        };
        rabbit.wait_until_up().await;
        rabbit
    }

    fn ctl(&self, args: &[&str]) {
        let output = self.ctl_output(args);
        assert!(output.status.success(), "rabbitmqctl {args:?} failed");
    }

    fn ctl_output(&self, args: &[&str]) -> std::process::Output {
        StdCommand::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .env("HOME", self.dir.path())
            .output()
            .unwrap()
    }

    pub async fn wait_until_up(&self) {
        wait_for_amqp(self.port, "the private RabbitMQ node").await;
    }

    /// Stops the RabbitMQ application: every connection drops and the port closes; data stays.
    pub fn stop(&self) {
        self.ctl(&["stop_app"]);
    }

    pub async fn start_again(&self) {
        self.ctl(&["start_app"]);
        self.wait_until_up().await;
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        let _ = StdCommand::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
            .arg("-n")
            .arg(&self.node)
            .arg("stop")
            .env("HOME", self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Waits until the RabbitMQ node on `port` (`what`, for the message) accepts an AMQP connection.
pub(crate) async fn wait_for_amqp(port: u16, what: &str) {
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    eventually(&format!("{what} to accept connections"), || {
        let url = url.clone();
        async move {
            let c = Connection::connect(&url, ConnectionProperties::default())
                .await
                .ok()?;
            let _ = c.close(200, "ok".into()).await;
            Some(())
        }
    })
    .await;
}

pub(crate) fn free_port() -> u16 {
    // Ports above 20000 so the distribution port (+10000) stays valid.
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if (20000..55000).contains(&port) {
            return port;
        }
    }
}

/// A PostgreSQL cluster of the test's own (`initdb` in a temporary folder, on a free port), so
/// stopping it disturbs no other test. It runs as the `postgres` OS user, which owns its folder; it is
/// stopped and removed on drop.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    pub port: u16,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl PrivatePostgres {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let chown = StdCommand::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            chown.success(),
            "cannot give the cluster folder to postgres"
        );
        let pg = Self {
            dir,
            port: free_port(),
        };
        pg.as_postgres(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )
        .await;
        pg.start_again().await;
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Runs a PostgreSQL program as the `postgres` user (it refuses to run as root).
    async fn as_postgres(&self, program: &str, args: &[&str]) {
        let out = tokio::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/{program}"))
            .args(args)
            .output()
            .await
            .expect("runuser is required");
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server and waits until it accepts connections.
    pub async fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log").display().to_string();
        self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ],
        )
        .await;
    }

    /// Stops the server the way an operator or a failover does: every session is cut, the port closes.
    pub async fn stop(&self) {
        self.as_postgres("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])
            .await;
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = StdCommand::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// One test's PostgreSQL database and RabbitMQ vhost.
pub struct Production {
    pub database_url: String,
    admin_url: String,
    database: String,
    pub amqp_url: String,
    vhost: String,
    rabbit: Option<PrivateRabbit>,
    /// For a broker reaching RabbitMQ over TLS: the `amqps://` URL and the CA file to trust.
    amqps: Option<(String, std::path::PathBuf)>,
    /// The test's own PostgreSQL, when it stops and starts it; else the machine's is used.
    postgres: Option<PrivatePostgres>,
}

impl Production {
    /// On the machine's PostgreSQL and RabbitMQ.
    pub async fn new() -> Self {
        Self::create(None, None).await
    }

    /// On the machine's PostgreSQL and a private RabbitMQ node this test may stop.
    pub async fn with_private_rabbit() -> Self {
        Self::create(Some(PrivateRabbit::start().await), None).await
    }

    /// On a private PostgreSQL cluster this test may stop, and the machine's RabbitMQ. The broker's
    /// URL carries a password (the cluster trusts local connections and ignores it), so that a test
    /// can check it never reaches a log.
    pub async fn with_private_postgres() -> Self {
        let postgres = PrivatePostgres::start().await;
        let mut env = Self::create(None, Some(postgres)).await;
        env.database_url =
            env.database_url
                .replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
        env
    }

    /// On the machine's PostgreSQL and a private RabbitMQ node that the broker reaches over TLS,
    /// with certificates from the network PKI in `pki`.
    pub async fn with_tls_rabbit(pki: &std::path::Path) -> Self {
        let rabbit = PrivateRabbit::start_with_tls(pki).await;
        let tls_port = rabbit.tls_port.expect("a TLS listener");
        let mut env = Self::create(Some(rabbit), None).await;
        env.amqps = Some((
            format!("amqps://guest:guest@localhost:{tls_port}/{}", env.vhost),
            pki.join("ca.pem"),
        ));
        env
    }

    async fn create(rabbit: Option<PrivateRabbit>, postgres: Option<PrivatePostgres>) -> Self {
        let admin_url = postgres
            .as_ref()
            .map_or_else(postgres_admin_url, PrivatePostgres::admin_url);
        let database = format!("spean_e2e_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} is required: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(b, _)| b);
        let database_url = format!("{base}/{database}");

        let vhost = format!("spean-e2e-{}", uuid::Uuid::now_v7().simple());
        let (server, node) = match &rabbit {
            Some(r) => (format!("amqp://guest:guest@127.0.0.1:{}", r.port), Some(r)),
            None => (amqp_server().0, None),
        };
        rabbitmqctl(node, &["add_vhost", &vhost]);
        rabbitmqctl(
            node,
            &["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"],
        );
        let amqp_url = format!("{server}/{vhost}");
        Connection::connect(&amqp_url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ at {server} is required: {e}"));
        Self {
            database_url,
            admin_url,
            database,
            amqp_url,
            vhost,
            rabbit,
            amqps: None,
            postgres,
        }
    }

    pub fn postgres(&self) -> &PrivatePostgres {
        self.postgres.as_ref().expect("no private PostgreSQL")
    }

    pub fn rabbit(&self) -> &PrivateRabbit {
        self.rabbit.as_ref().expect("no private RabbitMQ node")
    }

    /// The settings a broker process needs for this environment.
    pub fn broker_env(&self) -> Vec<(String, String)> {
        let amqp_url = self
            .amqps
            .as_ref()
            .map_or(self.amqp_url.clone(), |(url, _)| url.clone());
        let mut env = vec![
            (
                "SPEAN_BROKER_DATABASE__URL".into(),
                self.database_url.clone(),
            ),
            ("SPEAN_BROKER_AMQP__URL".into(), amqp_url),
            ("SPEAN_BROKER_AMQP__DELIVERY_LIMIT".into(), "5".into()),
            // The test network's CA and keys are made on first start, as an operator never would.
            ("SPEAN_BROKER_TLS__DEV_PKI".into(), "true".into()),
        ];
        if let Some((_, ca)) = &self.amqps {
            env.push((
                "SPEAN_BROKER_AMQP__CA_CERT".into(),
                ca.display().to_string(),
            ));
        }
        env
    }

    /// Cuts every PostgreSQL session of the test's database (the brokers'), as a failover would.
    pub async fn terminate_sessions(&self) -> i64 {
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await.unwrap();
        let rows: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.database)
        .fetch_all(&mut admin)
        .await
        .unwrap();
        rows.len() as i64
    }

    async fn channel(&self) -> (Connection, lapin::Channel) {
        let c = Connection::connect(&self.amqp_url, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = c.create_channel().await.unwrap();
        (c, ch)
    }

    /// A passive declare of `queue`, on a channel of its own since a miss closes the channel.
    async fn passive_declare(&self, queue: &str) -> Result<lapin::Queue, lapin::Error> {
        let (c, ch) = self.channel().await;
        let declared = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = c.close(200, "ok".into()).await;
        declared
    }

    /// Messages ready in a queue, which must exist.
    pub async fn depth(&self, queue: &str) -> u32 {
        self.passive_declare(queue).await.unwrap().message_count()
    }

    /// Messages an agency's queue has handed to a consumer that has not acked them yet
    /// (`rabbitmqctl`: a passive declare counts only the ready ones).
    pub fn unacked(&self, agency: &str) -> u32 {
        let queue = format!("spean.agency.{agency}");
        let args = [
            "list_queues",
            "-q",
            "-p",
            &self.vhost,
            "name",
            "messages_unacknowledged",
        ];
        let output = match &self.rabbit {
            Some(r) => r.ctl_output(&args),
            None => StdCommand::new("rabbitmqctl").args(args).output().unwrap(),
        };
        assert!(output.status.success(), "rabbitmqctl list_queues failed");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|line| {
                let (name, count) = line.split_once('\t')?;
                (name == queue).then(|| count.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no queue {queue}"))
    }

    /// Outbox rows not yet published (and confirmed by RabbitMQ) for `agency`.
    pub async fn outbox(&self, agency: &str) -> i64 {
        self.count("SELECT count(*) FROM mailbox WHERE agency_id = $1", agency)
            .await
    }

    /// Referrals queued in `agency`'s outbox that carry their delivery (with its case file) in the
    /// row, rather than being read back when published.
    pub async fn carried_referrals(&self, agency: &str) -> i64 {
        self.count(
            "SELECT count(*) FROM mailbox WHERE agency_id = $1 AND event_id IS NULL \
             AND body IS NOT NULL",
            agency,
        )
        .await
    }

    /// From now on, records every outbox row a relay leases: a trigger on `mailbox` notes each
    /// `UPDATE` that sets `lease_until`. For telling a relay's lease from a handoff, which publishes
    /// and deletes rows without updating them. Call it once the broker has created its tables.
    pub async fn watch_leases(&self) {
        let mut db = sqlx::PgConnection::connect(&self.database_url)
            .await
            .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE test_leases_seen (delivery_id uuid NOT NULL); \
             CREATE FUNCTION test_lease_seen() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN INSERT INTO test_leases_seen VALUES (NEW.delivery_id); RETURN NEW; END $$; \
             CREATE TRIGGER test_lease_seen BEFORE UPDATE OF lease_until ON mailbox \
             FOR EACH ROW WHEN (NEW.lease_until IS NOT NULL) EXECUTE FUNCTION test_lease_seen();",
        )
        .execute(&mut db)
        .await
        .unwrap();
        let _ = db.close().await;
    }

    /// Outbox rows leased since [`Production::watch_leases`].
    pub async fn leases_seen(&self) -> i64 {
        let mut db = sqlx::PgConnection::connect(&self.database_url)
            .await
            .unwrap();
        let n = sqlx::query_scalar("SELECT count(*) FROM test_leases_seen")
            .fetch_one(&mut db)
            .await
            .unwrap();
        let _ = db.close().await;
        n
    }

    async fn count(&self, query: &'static str, agency: &str) -> i64 {
        let mut db = sqlx::PgConnection::connect(&self.database_url)
            .await
            .unwrap();
        let rows = sqlx::query_scalar(query)
            .bind(agency)
            .fetch_one(&mut db)
            .await
            .unwrap();
        let _ = db.close().await;
        rows
    }

    /// `settings` with RabbitMQ out of reach ([`Production::unreachable_amqp_url`]): a broker
    /// started with them accepts referrals and keeps them in its outbox.
    pub fn out_of_reach(&self, settings: &[(String, String)]) -> Vec<(String, String)> {
        settings
            .iter()
            .cloned()
            .map(|(k, v)| match k.as_str() {
                "SPEAN_BROKER_AMQP__URL" => (k, self.unreachable_amqp_url()),
                _ => (k, v),
            })
            .collect()
    }

    /// An AMQP URL for this environment's vhost on a port where nothing listens: a RabbitMQ out of
    /// reach.
    pub fn unreachable_amqp_url(&self) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/{}",
            free_port(),
            self.vhost
        )
    }

    /// Whether a queue exists.
    async fn queue_exists(&self, queue: &str) -> bool {
        self.passive_declare(queue).await.is_ok()
    }

    /// Publishes bytes that are not a Spean delivery straight into an agency's queue, once the broker
    /// declared it, and requires that RabbitMQ routed the message there (not returned it).
    pub async fn publish_poison(&self, agency: &str) {
        let queue = format!("spean.agency.{agency}");
        eventually(&format!("the broker to declare {queue}"), || async {
            self.queue_exists(&queue).await.then_some(())
        })
        .await;
        let (c, ch) = self.channel().await;
        // The broker binds the queue right after declaring it; binding again is a no-op that closes
        // the gap between the two.
        ch.queue_bind(
            queue.as_str().into(),
            "spean.deliveries".into(),
            agency.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        let confirmation = ch
            .basic_publish(
                "spean.deliveries".into(),
                agency.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                b"\xff\xfe not a delivery",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirmation.is_ack(), "RabbitMQ refused the poison message");
        assert!(
            confirmation.take_message().is_none(),
            "the poison message was returned: {queue} is not bound"
        );
        let _ = c.close(200, "ok".into()).await;
    }
}

fn rabbitmqctl(node: Option<&PrivateRabbit>, args: &[&str]) {
    match node {
        Some(r) => r.ctl(args),
        None => {
            let status = StdCommand::new("rabbitmqctl")
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .expect("rabbitmqctl is required");
            assert!(status.success(), "rabbitmqctl {args:?} failed");
        }
    }
}

impl Drop for Production {
    /// Drops the database and the vhost (with every queue in it), also when the test failed.
    fn drop(&mut self) {
        if self.rabbit.is_none() {
            let _ = StdCommand::new("rabbitmqctl")
                .args(["delete_vhost", &self.vhost])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        if self.postgres.is_some() {
            // The whole cluster goes with the PrivatePostgres.
            return;
        }
        let _ = StdCommand::new("psql")
            .arg(&self.admin_url)
            .arg("-qc")
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.database
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}
