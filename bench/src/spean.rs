//! One Spean run end to end: start a broker on a configuration, find its sustained maximum in a
//! closed loop, then offer fractions of that maximum open-loop for latency, and read memory. And the
//! scale run: many registered agencies, a few hundred connected at once.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use crate::broker::{self, BrokerProcess, Senders};
use crate::load::{self, OpenLoad, Shape, Throughput};
use crate::probe::{CpuReading, CpuUse, Memory};
use crate::recorder::Recorder;
use crate::servers::Vhost;

/// How long each phase lasts; `--quick` shortens all of them.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub warmup: Duration,
    pub measure: Duration,
    pub open_duration: Duration,
    pub drain: Duration,
    /// Offered loads as fractions of the measured maximum.
    pub fractions: Vec<f64>,
    /// Offered loads in referrals per second, instead of `fractions` when not empty.
    pub rates: Vec<f64>,
    /// How long the idle adapter runs before its memory is read.
    pub adapter_settle: Duration,
}

impl Timing {
    /// The open loops' offered loads, each as (fraction of `max`, referrals per second).
    fn offers(&self, max: f64) -> Vec<(f64, f64)> {
        if self.rates.is_empty() {
            self.fractions
                .iter()
                .map(|&f| (f, (max * f).max(1.0)))
                .collect()
        } else {
            self.rates.iter().map(|&r| (r / max, r.max(1.0))).collect()
        }
    }
}

/// An agency in the directory that takes no part in the load: the idle adapter's.
const IDLE_AGENCY: &str = "bench-idle";

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub name: String,
    /// Why the run could not be measured, when it could not.
    pub error: Option<String>,
    pub broker_startup_s: Option<f64>,
    pub throughput: Option<Throughput>,
    pub loads: Vec<OpenLoad>,
    /// Broker memory at the end of the run (peak covers the whole run).
    pub broker_memory: Option<Memory>,
    pub idle_adapter_memory: Option<Memory>,
    /// Broker CPU time during the closed loop per referral accepted there: far below
    /// 1 s / throughput means the broker waits rather than computes.
    pub broker_cpu_ms_per_referral: Option<f64>,
    /// Where the CPU went, per referral, in the closed loop and in each open loop.
    pub cpu: Vec<PhaseCpu>,
    pub feedback_deliveries: u64,
    pub stream_reconnects: u64,
}

impl Run {
    /// A run that could not be measured, and why.
    pub fn failed(name: &str, error: String) -> Self {
        Self {
            name: name.into(),
            error: Some(error),
            broker_startup_s: None,
            throughput: None,
            loads: Vec::new(),
            broker_memory: None,
            idle_adapter_memory: None,
            broker_cpu_ms_per_referral: None,
            cpu: Vec::new(),
            feedback_deliveries: 0,
            stream_reconnects: 0,
        }
    }
}

/// Runs Spean with `env` (its storage and delivery settings) in a data folder under `root`.
pub async fn run(
    name: &str,
    env: &[(String, String)],
    shape: &Shape,
    timing: &Timing,
    root: &Path,
) -> Run {
    let dir = root.join(name.replace(|c: char| !c.is_ascii_alphanumeric(), "-"));
    let mut ids = broker::agency_ids(shape.agencies);
    ids.push(IDLE_AGENCY.into());
    let broker = match BrokerProcess::start(&dir, &ids, env).await {
        Ok(b) => b,
        Err(e) => return Run::failed(name, format!("{e:#}")),
    };
    ids.pop();
    let mut run = Run::failed(name, String::new());
    run.error = None;
    run.broker_startup_s = Some(broker.startup().as_secs_f64());
    if let Err(e) = measure(&broker, &ids, shape, timing, &dir, &mut run).await {
        run.error = Some(format!("{e:#} (broker log: {})", broker.log_tail()));
    }
    run.broker_memory = broker.memory();
    broker.stop().await;
    run
}

async fn measure(
    broker: &BrokerProcess,
    ids: &[String],
    shape: &Shape,
    timing: &Timing,
    dir: &Path,
    run: &mut Run,
) -> anyhow::Result<()> {
    match broker::idle_adapter_memory(broker, IDLE_AGENCY, dir, timing.adapter_settle).await {
        Ok(m) => run.idle_adapter_memory = Some(m),
        Err(e) => eprintln!("  idle adapter: {e:#}"),
    }
    let recorder = Recorder::new()?;
    let mut subscribers = JoinSet::new();
    broker::subscribe_all(broker, ids, dir, &recorder, &mut subscribers).await?;
    let senders = Senders::new(broker, ids, dir).await?;

    let broker_pid = broker.pid();
    let pid = broker_pid.unwrap_or(0);
    let (reading, started) = (CpuReading::now(pid), Instant::now());
    let throughput =
        load::sustained(&senders, &recorder, shape, timing.warmup, timing.measure).await?;
    // Over every step of the search, each referral accepted in any of them.
    let accepted: u64 = throughput.steps.iter().map(|s| s.accepted).sum();
    let closed = PhaseCpu::between("closed loop", reading, started, pid, accepted);
    // The memory table's broker column is the closed loop's broker share, from the same readings.
    run.broker_cpu_ms_per_referral = closed
        .as_ref()
        .filter(|_| broker_pid.is_some())
        .map(|c| c.usage.broker_ms);
    run.cpu.extend(closed);
    eprintln!(
        "  {}: {:.0} referrals/s sustained with {} in flight per agency ({} errors)",
        run.name, throughput.per_second, throughput.inflight, throughput.send_errors
    );
    let max = throughput.per_second;
    let failed = throughput.received == 0;
    run.throughput = Some(throughput);
    if failed {
        anyhow::bail!("no referral was delivered in the closed loop");
    }
    // Referrals accepted so far in this run; each brings two `delivered` feedback deliveries.
    let mut referrals = accepted;
    for (fraction, rate) in timing.offers(max) {
        quiet(&recorder, &run.name, referrals).await;
        let (reading, started) = (CpuReading::now(pid), Instant::now());
        let offered = load::open_loop(
            &senders,
            &recorder,
            shape.agencies,
            fraction,
            rate,
            timing.open_duration,
            timing.drain,
        )
        .await?;
        eprintln!(
            "  {}: {:.0}% = {rate:.0}/s: p50 {:.1} ms, p99 {:.1} ms ({}/{} received)",
            run.name,
            fraction * 100.0,
            offered.latency.p50_ms,
            offered.latency.p99_ms,
            offered.received,
            offered.scheduled
        );
        referrals += offered.accepted;
        run.cpu.extend(PhaseCpu::between(
            &format!("{rate:.0}/s"),
            reading,
            started,
            pid,
            offered.accepted,
        ));
        run.loads.push(offered);
    }
    run.feedback_deliveries = recorder.feedback.load(Ordering::Relaxed);
    run.stream_reconnects = recorder.reconnects.load(Ordering::Relaxed);
    subscribers.shutdown().await;
    Ok(())
}

/// Where one phase's CPU went.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseCpu {
    /// `closed loop` (every window tried), or an open loop's offered rate.
    pub phase: String,
    /// Referrals accepted per second over the phase (for an open loop, including the wait for
    /// its last receipts).
    pub per_second: f64,
    pub usage: CpuUse,
}

impl PhaseCpu {
    /// The phase that began with `reading` at `started` and ends now, with `referrals` accepted.
    fn between(
        phase: &str,
        reading: CpuReading,
        started: Instant,
        broker_pid: u32,
        referrals: u64,
    ) -> Option<Self> {
        let usage = reading.per_referral(&CpuReading::now(broker_pid), referrals)?;
        Some(Self {
            phase: phase.into(),
            per_second: referrals as f64 / started.elapsed().as_secs_f64().max(1e-3),
            usage,
        })
    }
}

/// Longest wait for the last phase's feedback before an open loop starts anyway.
const QUIET_LIMIT: Duration = Duration::from_secs(30);

/// Waits until the `delivered` feedback of all `referrals` accepted so far has reached the
/// adapters (two each: the sender's and the recipient's), so an open loop starts on a quiet system.
/// A closed loop ends once its referrals are received, with their feedback still on the way;
/// without this wait the next phase's first seconds compete with it, and its tail shows that
/// rather than its own load.
async fn quiet(recorder: &Recorder, name: &str, referrals: u64) {
    let start = std::time::Instant::now();
    let expected = 2 * referrals;
    while recorder.feedback.load(Ordering::Relaxed) < expected {
        if start.elapsed() > QUIET_LIMIT {
            eprintln!(
                "  {name}: {} of {expected} feedback deliveries arrived in {}s; going on",
                recorder.feedback.load(Ordering::Relaxed),
                QUIET_LIMIT.as_secs()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    pub path: String,
    pub error: Option<String>,
    pub registered_agencies: usize,
    pub connected_agencies: usize,
    pub broker_startup_s: Option<f64>,
    /// Queues in the run's vhost after the load (AMQP path only).
    pub queues: Option<usize>,
    /// How long after the broker started until every agency's queue existed.
    pub queues_declared_s: Option<f64>,
    pub memory_after_start: Option<Memory>,
    pub memory_with_streams_open: Option<Memory>,
    /// At the end of the load; its peak is the run's peak.
    pub memory_after_load: Option<Memory>,
    pub load: Option<OpenLoad>,
    pub stream_reconnects: u64,
}

impl Scale {
    /// Nothing measured yet.
    pub fn new(path: &str, registered: usize, connected: usize) -> Self {
        Self {
            path: path.into(),
            error: None,
            registered_agencies: registered,
            connected_agencies: connected,
            broker_startup_s: None,
            queues: None,
            queues_declared_s: None,
            memory_after_start: None,
            memory_with_streams_open: None,
            memory_after_load: None,
            load: None,
            stream_reconnects: 0,
        }
    }
}

/// What the scale run registers, connects and offers.
#[derive(Debug, Clone, Copy)]
pub struct ScalePlan {
    pub registered: usize,
    /// Agencies with a delivery stream open at once; they are also the senders.
    pub connected: usize,
    /// `rate` as a fraction of a measured maximum (0 when there was none).
    pub fraction: f64,
    /// Referrals per second offered open-loop among the connected agencies.
    pub rate: f64,
}

/// Registers `plan.registered` agencies, connects `plan.connected` of them at once, and offers
/// `plan.rate` referrals per second among the connected ones.
pub async fn scale(
    path: &str,
    env: &[(String, String)],
    vhost: &Vhost,
    plan: ScalePlan,
    timing: &Timing,
    root: &Path,
) -> Scale {
    let ScalePlan {
        registered,
        connected,
        fraction,
        rate,
    } = plan;
    let mut result = Scale::new(path, registered, connected);
    let ids = broker::agency_ids(registered);
    let dir = root.join(format!("scale-{path}"));
    let broker = match BrokerProcess::start(&dir, &ids, env).await {
        Ok(b) => b,
        Err(e) => {
            result.error = Some(format!("{e:#}"));
            return result;
        }
    };
    result.broker_startup_s = Some(broker.startup().as_secs_f64());
    result.memory_after_start = broker.memory();
    // A first start declares every agency's quorum queue, which keeps RabbitMQ busy for a minute
    // or more; the load is measured once that is done, as on every later start.
    let declaring = std::time::Instant::now();
    let deadline = declaring + Duration::from_secs(600);
    while vhost.queue_count().await.unwrap_or(0) < registered + 1 {
        if std::time::Instant::now() > deadline {
            result.error = Some("the agency queues were not all declared in 10 minutes".into());
            broker.stop().await;
            return result;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    result.queues_declared_s = Some(declaring.elapsed().as_secs_f64());
    eprintln!(
        "  scale: {registered} agency queues declared in {:.0} s",
        declaring.elapsed().as_secs_f64()
    );
    let connected_ids = &ids[..connected.min(ids.len())];
    let outcome: anyhow::Result<()> = async {
        let recorder = Recorder::new()?;
        let mut subscribers = JoinSet::new();
        broker::subscribe_all(&broker, connected_ids, &dir, &recorder, &mut subscribers).await?;
        result.memory_with_streams_open = broker.memory();
        let senders = Senders::new(&broker, connected_ids, &dir).await?;
        let offered = load::open_loop(
            &senders,
            &recorder,
            connected_ids.len(),
            fraction,
            rate,
            timing.open_duration,
            timing.drain,
        )
        .await?;
        eprintln!(
            "  scale: {rate:.0}/s over {} connected of {registered}: p50 {:.1} ms, p99 {:.1} ms",
            connected_ids.len(),
            offered.latency.p50_ms,
            offered.latency.p99_ms
        );
        result.load = Some(offered);
        result.memory_after_load = broker.memory();
        result.stream_reconnects = recorder.reconnects.load(Ordering::Relaxed);
        subscribers.shutdown().await;
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        result.error = Some(format!("{e:#} (broker log: {})", broker.log_tail()));
    }
    broker.stop().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(fractions: Vec<f64>, rates: Vec<f64>) -> Timing {
        Timing {
            warmup: Duration::ZERO,
            measure: Duration::ZERO,
            open_duration: Duration::ZERO,
            drain: Duration::ZERO,
            fractions,
            rates,
            adapter_settle: Duration::ZERO,
        }
    }

    #[test]
    fn open_loops_offer_fractions_of_the_maximum_unless_rates_are_given() {
        assert_eq!(
            timing(vec![0.1, 0.5], vec![]).offers(600.0),
            vec![(0.1, 60.0), (0.5, 300.0)]
        );
        assert_eq!(
            timing(vec![0.1, 0.5], vec![60.0, 150.0]).offers(600.0),
            vec![(0.1, 60.0), (0.25, 150.0)]
        );
    }
}
