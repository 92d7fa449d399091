//! `spean-bench`: measures Spean against raw RabbitMQ in the same run, on the same machine.
//!
//! # Layout
//! - `servers`: a fresh PostgreSQL database and RabbitMQ vhost per run, removed afterwards.
//! - `baseline`: the ceiling — lapin, 1 KiB persistent messages, quorum queues, confirms, manual acks.
//! - `broker`: the real `spean-broker` process (started by `spean-testkit`, the harness the
//!   end-to-end tests use too), agencies' gRPC clients, adapter-equivalent subscribers.
//! - `load`: closed-loop (sustained maximum) and open-loop (latency at a fixed offered rate) drivers.
//! - `recorder`: where receivers report arrivals; tags carry their own send time.
//! - `spean`: one Spean run (throughput, latency at fractions of it, memory) and the scale run.
//! - `probe`: memory and loopback bytes from `/proc`; the machine's description.
//! - `report`: the human table and the JSON.
//!
//! Nothing here asserts a time: it measures and reports, and the reader compares with the targets.

mod baseline;
mod broker;
mod load;
mod probe;
mod recorder;
mod report;
mod servers;
mod spean;

use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::load::Shape;
use crate::report::Report;
use crate::servers::{Database, Servers, Vhost};
use crate::spean::Timing;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    All,
    Baseline,
    Embedded,
    Production,
    Scale,
}

/// Measures Spean's throughput, latency and memory against a raw RabbitMQ baseline.
/// Build first: `cargo build --release --workspace`.
#[derive(Debug, Parser)]
#[command(name = "spean-bench")]
struct Cli {
    /// Short phases, fewer windows, no `durable=false` run: noisier numbers, in under a minute.
    #[arg(long)]
    quick: bool,
    /// Print the report as JSON on stdout instead of tables.
    #[arg(long)]
    json: bool,
    /// Keep the run's folder (broker logs, databases, certificates) and print where it is.
    #[arg(long)]
    keep: bool,
    #[arg(long, value_enum, default_value = "all")]
    mode: Mode,
    /// Agencies taking part; each sends and receives. The baseline uses as many queues, publishers
    /// and consumers.
    #[arg(long, default_value_t = 16)]
    agencies: usize,
    /// The closed loop's windows, tried in turn until throughput stops rising: messages each
    /// sending agency keeps in flight end to end. The best is the sustained maximum.
    /// Default: 4,8,16,32,64 (`--quick`: 8,32).
    #[arg(long, value_delimiter = ',')]
    inflight: Vec<usize>,
    /// Offer these rates (referrals per second) in the open loops instead of fractions of the
    /// measured maximum: to compare two builds' latency at the same load, when their maxima differ.
    #[arg(long, value_delimiter = ',')]
    open_rates: Vec<f64>,
    /// Agencies registered in the scale run.
    #[arg(long, default_value_t = 1000)]
    scale_agencies: usize,
    /// Of those, how many have a delivery stream open at once (and send).
    #[arg(long, default_value_t = 200)]
    scale_connected: usize,
    /// Administrative PostgreSQL URL; each run creates and drops its own database there, with
    /// this URL's options. The default turns TLS off: the server is on this machine, as RabbitMQ
    /// is, and the baseline talks to RabbitMQ without TLS too.
    #[arg(
        long,
        env = "SPEAN_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
    )]
    postgres_url: String,
    /// RabbitMQ URL without a vhost; each run creates and deletes its own vhost there.
    #[arg(
        long,
        env = "SPEAN_BENCH_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672"
    )]
    amqp_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Ignored on purpose: it fails only when a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    anyhow::ensure!(cli.agencies >= 2, "--agencies must be at least 2");
    anyhow::ensure!(
        !cli.inflight.contains(&0),
        "--inflight: each window must be at least 1"
    );
    let report = bench(&cli).await?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

async fn bench(cli: &Cli) -> anyhow::Result<Report> {
    let servers = Servers {
        postgres_admin_url: cli.postgres_url.clone(),
        amqp_url: cli.amqp_url.clone(),
    };
    let shape = Shape {
        agencies: cli.agencies,
        windows: match (cli.inflight.is_empty(), cli.quick) {
            (false, _) => cli.inflight.clone(),
            (true, false) => vec![4, 8, 16, 32, 64],
            (true, true) => vec![8, 32],
        },
    };
    let timing = if cli.quick {
        Timing {
            warmup: Duration::from_millis(500),
            measure: Duration::from_secs(2),
            open_duration: Duration::from_millis(1500),
            drain: Duration::from_secs(2),
            fractions: vec![0.2, 0.8],
            rates: cli.open_rates.clone(),
            adapter_settle: Duration::from_secs(1),
        }
    } else {
        Timing {
            warmup: Duration::from_secs(3),
            measure: Duration::from_secs(15),
            open_duration: Duration::from_secs(10),
            drain: Duration::from_secs(15),
            fractions: vec![0.1, 0.2, 0.5, 0.8],
            rates: cli.open_rates.clone(),
            adapter_settle: Duration::from_secs(3),
        }
    };
    let root = tempfile::Builder::new().prefix("spean-bench-").tempdir()?;
    let root = if cli.keep {
        let kept = root.keep();
        eprintln!("keeping the run's folder: {}", kept.display());
        Root::Kept(kept)
    } else {
        Root::Temporary(root)
    };
    let wants = |m: Mode| cli.mode == Mode::All || cli.mode == m;
    let mut report = Report {
        date: probe::today(),
        machine: probe::Machine::read(),
        quick: cli.quick,
        shape: shape.clone(),
        timing: timing.clone(),
        baseline: None,
        runs: Vec::new(),
        scale: None,
        notes: {
            let mut notes = notes();
            let (seal_us, open_us) = broker::sealing_cost(2000);
            notes.push(format!(
                "Sealing, measured here apart from the load (median of 2000): {seal_us:.0} µs to seal a \
                 ~1 KiB case file to its recipient and its sender (HPKE Auth mode, X25519), as the \
                 sending adapter does for every referral; {open_us:.0} µs to open it, as the receiving \
                 adapter does. Both are in every run's load: the senders seal each referral and the \
                 receivers open it."
            ));
            notes
        },
    };

    if wants(Mode::Baseline) || wants(Mode::Production) {
        eprintln!("baseline: lapin against RabbitMQ …");
        let result = baseline::run(&servers, &shape, timing.warmup, timing.measure).await;
        if let Ok(t) = &result {
            eprintln!("  baseline: {:.0} messages/s sustained", t.per_second);
        }
        report.baseline = Some(result.map_err(|e| format!("{e:#}")));
    }
    if wants(Mode::Production) {
        eprintln!("production: PostgreSQL + RabbitMQ …");
        let run = match production_env(&servers).await {
            Ok((db, vhost, env)) => {
                let run = spean::run(
                    "spean: PostgreSQL + RabbitMQ",
                    &env,
                    &shape,
                    &timing,
                    root.path(),
                )
                .await;
                cleanup(db, vhost).await;
                run
            }
            Err(e) => spean::Run::failed("spean: PostgreSQL + RabbitMQ", format!("{e:#}")),
        };
        report.runs.push(run);
    }
    if wants(Mode::Embedded) {
        eprintln!("embedded: SQLite + database mailbox …");
        report.runs.push(
            spean::run(
                "spean: embedded (SQLite, durable)",
                &[],
                &shape,
                &timing,
                root.path(),
            )
            .await,
        );
    }
    // Reported next to the durable run, never instead of it: it shows what fsync costs. Left out
    // of `--quick`, which is for a first look in under a minute.
    if wants(Mode::Embedded) && !cli.quick {
        let env = [(
            "SPEAN_BROKER_DATABASE__DURABLE".to_owned(),
            "false".to_owned(),
        )];
        report.runs.push(
            spean::run(
                "spean: embedded (SQLite, durable=false)",
                &env,
                &shape,
                &timing,
                root.path(),
            )
            .await,
        );
    }
    if wants(Mode::Scale) {
        eprintln!(
            "scale: {} agencies, {} connected …",
            cli.scale_agencies, cli.scale_connected
        );
        // 20 % of the production maximum measured in this run, if there is one: the latency target's load.
        let measured = report
            .runs
            .iter()
            .find(|r| r.name.contains("PostgreSQL"))
            .and_then(|r| r.throughput.as_ref())
            .map(|t| t.per_second)
            .filter(|r| *r > 0.0);
        let (fraction, rate) = measured.map_or((0.0, 100.0), |max| (0.2, max * 0.2));
        report.scale = Some(match production_env(&servers).await {
            Ok((db, vhost, env)) => {
                let mut scale = spean::scale(
                    "PostgreSQL + RabbitMQ",
                    &env,
                    &vhost,
                    spean::ScalePlan {
                        registered: cli.scale_agencies,
                        connected: cli.scale_connected,
                        fraction,
                        rate,
                    },
                    &timing,
                    root.path(),
                )
                .await;
                scale.queues = vhost.queue_count().await.ok();
                cleanup(db, vhost).await;
                scale
            }
            Err(e) => spean::Scale {
                error: Some(format!("{e:#}")),
                ..spean::Scale::new(
                    "PostgreSQL + RabbitMQ",
                    cli.scale_agencies,
                    cli.scale_connected,
                )
            },
        });
    }
    Ok(report)
}

/// A fresh database and vhost, and the broker settings that point at them.
async fn production_env(
    servers: &Servers,
) -> anyhow::Result<(Database, Vhost, Vec<(String, String)>)> {
    let db = Database::create(servers).await?;
    let vhost = match Vhost::create(servers).await {
        Ok(v) => v,
        Err(e) => {
            let _ = db.drop_now().await;
            return Err(e);
        }
    };
    let env = vec![
        ("SPEAN_BROKER_DATABASE__URL".to_owned(), db.url.clone()),
        ("SPEAN_BROKER_AMQP__URL".to_owned(), vhost.url.clone()),
        // The benchmark's network: its CA and keys are made on first start.
        ("SPEAN_BROKER_TLS__DEV_PKI".to_owned(), "true".to_owned()),
        (
            "SPEAN_BROKER_AMQP__PREFIX".to_owned(),
            format!("bench-{}", uuid::Uuid::now_v7().simple()),
        ),
    ];
    Ok((db, vhost, env))
}

/// Where a run keeps its files: removed afterwards unless `--keep`.
enum Root {
    Temporary(tempfile::TempDir),
    Kept(std::path::PathBuf),
}

impl Root {
    fn path(&self) -> &std::path::Path {
        match self {
            Root::Temporary(dir) => dir.path(),
            Root::Kept(path) => path,
        }
    }
}

async fn cleanup(db: Database, vhost: Vhost) {
    if let Err(e) = vhost.delete().await {
        eprintln!("  could not delete the run's vhost: {e:#}");
    }
    if let Err(e) = db.drop_now().await {
        eprintln!("  could not drop the run's database: {e:#}");
    }
}

fn notes() -> Vec<String> {
    vec![
        "All processes (benchmark, broker, PostgreSQL, RabbitMQ) share this machine's CPUs; the \
         benchmark's own TLS and HTTP/2 work competes with the broker's."
            .into(),
        "Closed loop: each agency keeps a window of referrals in flight from Submit to the recipient's \
         receipt; throughput counts receipts in the measured window after a warm-up. The window \
         widens (--inflight) until two steps in a row gain less than 5 %; the best step is the \
         maximum, for the baseline and Spean alike."
            .into(),
        "Open loop: sends on a fixed schedule at a fraction of that run's own maximum; latency runs \
         from the scheduled send time to the recipient client's receipt of the delivery, so queueing \
         in the sender is included. `answered` runs from the same scheduled time to the Submit \
         call's answer (the referral stored and queued); the rest of the latency is delivery."
            .into(),
        "Wire B/msg: bytes received on `lo` during the closed-loop window divided by messages received. \
         It counts every local hop (client↔broker gRPC over TLS incl. confirms and `delivered` feedback \
         deliveries, broker↔PostgreSQL, broker↔RabbitMQ both ways) and any other loopback traffic on \
         the machine at the time."
            .into(),
        "Memory: VmHWM (peak resident) and VmRSS from /proc/<pid>/status. The idle adapter is a real \
         `spean-adapter run` connected to the broker with nothing addressed to it."
            .into(),
        "CPU ms per referral: user + system time from /proc/<pid>/stat over the phase (the closed \
         loop's every window; an open loop including the wait for its last receipts) divided by the \
         referrals accepted in it: the broker; every `postgres` process; RabbitMQ's `beam.smp` and \
         its helpers; the benchmark (senders and the adapters' receiving code). Machine busy: \
         /proc/stat's busy share over the phase, including time stolen by the hypervisor."
            .into(),
    ]
}
