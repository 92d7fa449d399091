//! Readings from `/proc`: a process's memory and the loopback interface's byte counters. Read from the
//! kernel rather than from the processes themselves so the broker and adapter need no instrumentation.

use serde::Serialize;

/// A process's resident memory, in MiB.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    /// `VmHWM`: the peak resident set since the process started, which is what a memory limit must fit.
    pub peak_mib: f64,
    /// `VmRSS`: resident now.
    pub current_mib: f64,
}

/// Reads `VmHWM` and `VmRSS` of `pid`; `None` when the process is gone or the kernel hides them.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    };
    Some(Memory {
        peak_mib: field("VmHWM:")?,
        current_mib: field("VmRSS:")?,
    })
}

/// CPU seconds used so far by each process a Spean run spreads its work over, and by the machine:
/// two readings around a phase tell where its CPU went. At low load every referral is a round of
/// small writes, publishes and wake-ups in every process; at the closed loop's maximum they are
/// batched. Per referral, the first costs several times the second, and on a machine where all of
/// them share two cores that, not the broker alone, is what a latency at low load runs into.
#[derive(Debug, Clone, Copy)]
pub struct CpuReading {
    pub broker: f64,
    pub postgres: f64,
    pub rabbitmq: f64,
    /// This process: the senders and the adapters' receiving code.
    pub bench: f64,
    /// The machine's busy time (user, system, interrupts, and time stolen by the hypervisor), and
    /// all of its time, summed over its CPUs.
    pub machine_busy: f64,
    pub machine_total: f64,
}

impl CpuReading {
    /// Reads every process in `/proc`: the broker by `broker_pid`, PostgreSQL and RabbitMQ by
    /// their command names (`postgres`, and Erlang's `beam.smp` with its helpers). Processes that
    /// exited between two readings are not counted; the broker's connection pools keep
    /// PostgreSQL's backends for the whole run.
    pub fn now(broker_pid: u32) -> Self {
        let bench_pid = std::process::id();
        let mut reading = Self {
            broker: 0.0,
            postgres: 0.0,
            rabbitmq: 0.0,
            bench: 0.0,
            machine_busy: 0.0,
            machine_total: 0.0,
        };
        let pids = std::fs::read_dir("/proc").into_iter().flatten().flatten();
        for entry in pids {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Some((command, seconds)) = command_and_cpu(pid) else {
                continue;
            };
            let slot = if pid == broker_pid {
                &mut reading.broker
            } else if pid == bench_pid {
                &mut reading.bench
            } else if command == "postgres" {
                &mut reading.postgres
            } else if matches!(
                command.as_str(),
                "beam.smp" | "erl_child_setup" | "inet_gethost" | "epmd"
            ) {
                &mut reading.rabbitmq
            } else {
                continue;
            };
            *slot += seconds;
        }
        if let Some((busy, total)) = machine_cpu() {
            reading.machine_busy = busy;
            reading.machine_total = total;
        }
        reading
    }

    /// CPU per referral in each process between `self` (earlier) and `later`, with `referrals`
    /// accepted in between; `None` without any.
    pub fn per_referral(&self, later: &Self, referrals: u64) -> Option<CpuUse> {
        if referrals == 0 {
            return None;
        }
        let ms = |before: f64, after: f64| (after - before).max(0.0) * 1000.0 / referrals as f64;
        let total = later.machine_total - self.machine_total;
        Some(CpuUse {
            broker_ms: ms(self.broker, later.broker),
            postgres_ms: ms(self.postgres, later.postgres),
            rabbitmq_ms: ms(self.rabbitmq, later.rabbitmq),
            bench_ms: ms(self.bench, later.bench),
            machine_busy_percent: if total > 0.0 {
                (later.machine_busy - self.machine_busy) * 100.0 / total
            } else {
                0.0
            },
        })
    }
}

/// CPU milliseconds per referral in each process over a phase, and how busy the machine was.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuUse {
    pub broker_ms: f64,
    pub postgres_ms: f64,
    pub rabbitmq_ms: f64,
    pub bench_ms: f64,
    pub machine_busy_percent: f64,
}

/// A process's command name and its CPU seconds (user + system) so far.
fn command_and_cpu(pid: u32) -> Option<(String, f64)> {
    command_and_cpu_of(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The same from the text of a `/proc/<pid>/stat`.
fn command_and_cpu_of(stat: &str) -> Option<(String, f64)> {
    // The command name is in parentheses and may hold spaces and parentheses itself; the fields
    // after the last `)` follow, utime the 12th and stime the 13th.
    let (head, rest) = stat.rsplit_once(')')?;
    let (_, command) = head.split_once('(')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((command.to_owned(), ticks / 100.0))
}

/// The machine's busy and total CPU seconds, from the first line of `/proc/stat`.
fn machine_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let field = |i: usize| ticks.get(i).copied().unwrap_or(0.0);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    let total = busy + field(3) + field(4);
    Some((busy / 100.0, total / 100.0))
}

/// Bytes received on `lo` so far. On loopback every byte sent is also received once, so the delta of
/// this counter is the traffic between all local processes (not twice it).
pub fn loopback_bytes() -> Option<u64> {
    let dev = std::fs::read_to_string("/proc/net/dev").ok()?;
    let line = dev.lines().find(|l| l.trim_start().starts_with("lo:"))?;
    let (_, counters) = line.split_once(':')?;
    counters.split_whitespace().next()?.parse().ok()
}

/// What the numbers were measured on, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    /// `/proc/loadavg` when the run started: other work on the machine skews every number.
    pub load_average: String,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, m)| m.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_gib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        Self {
            load_average,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            memory_gib,
            kernel,
        }
    }
}

/// Today's date (UTC) as `YYYY-MM-DD`, from the system clock; civil-from-days after Howard Hinnant,
/// so the report needs no date crate.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0) + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command name may hold spaces and parentheses; the times are counted after the last `)`.
    #[test]
    fn a_stat_line_gives_its_command_and_its_user_plus_system_time() {
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 \
                    1000 2000000 500 18446744073709551615";
        let (command, seconds) = command_and_cpu_of(stat).unwrap();
        assert_eq!(command, "tokio (rt) 1");
        assert!((seconds - 3.25).abs() < 1e-9, "{seconds}");
    }

    /// This process is found and counted as the benchmark, and time spent between two readings
    /// shows up per referral.
    #[test]
    fn cpu_burnt_between_two_readings_is_counted_for_this_process() {
        let me = std::process::id();
        let before = CpuReading::now(0);
        // Spin until this process has used 0.3 s more CPU, however busy the machine is.
        let cpu = || command_and_cpu(me).unwrap().1;
        let (start, deadline) = (cpu(), std::time::Instant::now());
        let mut x = 0u64;
        while cpu() - start < 0.3 {
            assert!(deadline.elapsed().as_secs() < 30, "got no CPU for 30 s");
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let after = CpuReading::now(0);
        let usage = before.per_referral(&after, 10).unwrap();
        // At least 300 ms over 10 referrals: 30 ms each.
        assert!(usage.bench_ms >= 30.0, "{usage:?}");
        assert!(usage.machine_busy_percent > 0.0, "{usage:?}");
        assert!(before.per_referral(&after, 0).is_none());
    }
}
