//! The results of one invocation: a plain-text table for people and the same data as JSON for tools
//! and for `docs/performance.md`.

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::{Shape, Throughput};
use crate::probe::{Machine, Memory};
use crate::spean::{Run, Scale, Timing};

#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub machine: Machine,
    pub quick: bool,
    pub shape: Shape,
    pub timing: Timing,
    pub baseline: Option<Result<Throughput, String>>,
    pub runs: Vec<Run>,
    pub scale: Option<Scale>,
    /// What the numbers include and exclude, so nobody has to guess.
    pub notes: Vec<String>,
}

/// Formats rows as a fixed-width table with a header rule.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn mib(m: Option<Memory>) -> String {
    m.map_or_else(
        || "-".into(),
        |m| format!("{:.1} (now {:.1})", m.peak_mib, m.current_mib),
    )
}

fn ms(v: f64) -> String {
    format!("{v:.1}")
}

impl Report {
    pub fn baseline_rate(&self) -> Option<f64> {
        match &self.baseline {
            Some(Ok(t)) if t.received > 0 => Some(t.per_second),
            _ => None,
        }
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "spean-bench {} on {} CPUs ({}), {:.1} GiB RAM, Linux {}, load average {}{}",
            self.date,
            m.cpus,
            m.cpu_model,
            m.memory_gib,
            m.kernel,
            m.load_average,
            if self.quick { " [--quick]" } else { "" }
        );
        let _ = writeln!(
            out,
            "{} agencies, each one sender and one receiver; closed-loop windows tried: {} in flight per agency\n",
            self.shape.agencies,
            self.shape
                .windows
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );

        let mut rows = Vec::new();
        if let Some(b) = &self.baseline {
            rows.push(match b {
                Ok(t) => throughput_row("baseline: lapin, quorum queue", t, Some(1.0)),
                Err(e) => failed_row("baseline: lapin, quorum queue", e),
            });
        }
        for run in &self.runs {
            rows.push(match (&run.throughput, &run.error) {
                (Some(t), _) => {
                    let ratio = self.baseline_rate().map(|b| t.per_second / b);
                    throughput_row(&run.name, t, ratio)
                }
                (None, Some(e)) => failed_row(&run.name, e),
                (None, None) => failed_row(&run.name, "not measured"),
            });
        }
        out.push_str("Sustained throughput (closed loop)\n");
        out.push_str(&table(
            &[
                "system",
                "msgs/s",
                "vs baseline",
                "msgs/s by window",
                "errors",
                "wire B/msg",
                "p50 ms",
                "p99 ms",
            ],
            &rows,
        ));

        let mut rows = Vec::new();
        for run in &self.runs {
            for l in &run.loads {
                rows.push(vec![
                    run.name.clone(),
                    format!("{:.0}%", l.fraction * 100.0),
                    format!("{:.0}", l.offered_per_second),
                    format!("{}/{}", l.received, l.scheduled),
                    l.send_errors.to_string(),
                    ms(l.latency.p50_ms),
                    ms(l.latency.p90_ms),
                    ms(l.latency.p99_ms),
                    ms(l.latency.max_ms),
                    ms(l.answered.p50_ms),
                    ms(l.answered.p99_ms),
                ]);
            }
        }
        if !rows.is_empty() {
            out.push_str(
                "\nSubmit → recipient's receipt, open loop (from the scheduled send time)\n",
            );
            out.push_str(&table(
                &[
                    "system",
                    "load",
                    "offered/s",
                    "received",
                    "errors",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "max ms",
                    "answered p50",
                    "answered p99",
                ],
                &rows,
            ));
        }

        let rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    mib(r.broker_memory),
                    mib(r.idle_adapter_memory),
                    r.broker_startup_s
                        .map_or_else(|| "-".into(), |s| format!("{s:.1}")),
                    r.broker_cpu_ms_per_referral
                        .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
                ]
            })
            .collect();
        if !rows.is_empty() {
            out.push_str("\nMemory, MiB: peak VmHWM (VmRSS at the end)\n");
            out.push_str(&table(
                &[
                    "system",
                    "broker",
                    "idle spean-adapter",
                    "broker start s",
                    "broker CPU ms/referral",
                ],
                &rows,
            ));
        }

        let rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .flat_map(|r| {
                r.cpu.iter().map(|c| {
                    let u = &c.usage;
                    vec![
                        r.name.clone(),
                        c.phase.clone(),
                        format!("{:.0}", c.per_second),
                        format!("{:.2}", u.broker_ms),
                        format!("{:.2}", u.postgres_ms),
                        format!("{:.2}", u.rabbitmq_ms),
                        format!("{:.2}", u.bench_ms),
                        format!(
                            "{:.2}",
                            u.broker_ms + u.postgres_ms + u.rabbitmq_ms + u.bench_ms
                        ),
                        format!("{:.0}%", u.machine_busy_percent),
                    ]
                })
            })
            .collect();
        if !rows.is_empty() {
            out.push_str(
                "\nCPU ms per referral, by process (and how busy the whole machine was)\n",
            );
            out.push_str(&table(
                &[
                    "system",
                    "phase",
                    "referrals/s",
                    "broker",
                    "PostgreSQL",
                    "RabbitMQ",
                    "benchmark",
                    "sum",
                    "machine busy",
                ],
                &rows,
            ));
        }

        if let Some(s) = &self.scale {
            let _ = writeln!(
                out,
                "\nScale ({}): {} agencies registered, {} connected at once",
                s.path, s.registered_agencies, s.connected_agencies
            );
            let mut rows = vec![
                vec![
                    "broker start s".into(),
                    s.broker_startup_s
                        .map_or_else(|| "-".into(), |v| format!("{v:.1}")),
                ],
                vec![
                    "all agency queues declared after s".into(),
                    s.queues_declared_s
                        .map_or_else(|| "-".into(), |v| format!("{v:.0}")),
                ],
                vec![
                    "queues in vhost".into(),
                    s.queues.map_or_else(|| "-".into(), |q| q.to_string()),
                ],
                vec!["broker MiB after start".into(), mib(s.memory_after_start)],
                vec![
                    "broker MiB, streams open".into(),
                    mib(s.memory_with_streams_open),
                ],
                vec!["broker MiB after load".into(), mib(s.memory_after_load)],
            ];
            if let Some(l) = &s.load {
                let of_max = if l.fraction > 0.0 {
                    format!("{:.0}% of the production maximum", l.fraction * 100.0)
                } else {
                    "fixed: no production maximum in this run".into()
                };
                rows.push(vec![
                    "offered/s".into(),
                    format!("{:.0} ({of_max})", l.offered_per_second),
                ]);
                rows.push(vec![
                    "received".into(),
                    format!("{}/{}", l.received, l.scheduled),
                ]);
                rows.push(vec![
                    "latency ms p50/p90/p99/max".into(),
                    format!(
                        "{:.1} / {:.1} / {:.1} / {:.1}",
                        l.latency.p50_ms, l.latency.p90_ms, l.latency.p99_ms, l.latency.max_ms
                    ),
                ]);
                rows.push(vec![
                    "Submit answered ms p50/p99".into(),
                    format!("{:.1} / {:.1}", l.answered.p50_ms, l.answered.p99_ms),
                ]);
            }
            rows.push(vec![
                "delivery streams reopened".into(),
                s.stream_reconnects.to_string(),
            ]);
            if let Some(e) = &s.error {
                rows.push(vec!["error".into(), e.clone()]);
            }
            out.push_str(&table(&["", "value"], &rows));
        }
        for run in self.runs.iter().filter(|r| r.stream_reconnects > 0) {
            let _ = writeln!(
                out,
                "note: {}: {} delivery streams broke and were reopened",
                run.name, run.stream_reconnects
            );
        }
        out.push('\n');
        for note in &self.notes {
            let _ = writeln!(out, "- {note}");
        }
        out
    }
}

fn throughput_row(name: &str, t: &Throughput, ratio: Option<f64>) -> Vec<String> {
    vec![
        name.to_owned(),
        format!("{:.0}", t.per_second),
        ratio.map_or_else(|| "-".into(), |r| format!("{:.0}%", r * 100.0)),
        t.steps
            .iter()
            .map(|s| format!("{}: {:.0}", s.inflight, s.per_second))
            .collect::<Vec<_>>()
            .join(", "),
        t.send_errors.to_string(),
        t.wire_bytes_per_message
            .map_or_else(|| "-".into(), |b| format!("{b:.0}")),
        ms(t.latency.p50_ms),
        ms(t.latency.p99_ms),
    ]
}

fn failed_row(name: &str, error: &str) -> Vec<String> {
    let mut short: String = error.chars().take(110).collect();
    if error.chars().count() > 110 {
        short.push('…');
    }
    vec![
        name.to_owned(),
        format!("not measured: {short}"),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
    ]
}
