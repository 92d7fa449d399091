//! The two ways of offering load, shared by the baseline and Spean so both are driven identically.
//!
//! - [`closed_loop`]: a fixed window of messages in flight end to end (send → receipt); a slot frees
//!   only when the receiver has the message. Finds the sustained maximum without building a backlog.
//! - [`open_loop`]: sends on a fixed schedule whatever happens to earlier sends, and measures latency
//!   from the *scheduled* time, so a slow system cannot hide its queueing by slowing the sender down
//!   (coordinated omission).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::probe;
use crate::recorder::{Answers, Latency, Recorder, Sends, Tag};

/// Sends one message from agency `from` to agency `to`, carrying `tag`; resolves when the system has
/// taken responsibility for it (Spean: `Submit` answered; RabbitMQ: publisher confirm).
pub trait Submitter: Clone + Send + Sync + 'static {
    /// Feedback deliveries each message brings (counted in [`Recorder::feedback`]): a message is
    /// complete only when they have arrived too.
    const FEEDBACK_PER_MESSAGE: u64;

    fn submit(
        &self,
        from: usize,
        to: usize,
        tag: String,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// How many senders and how much each keeps in flight: the same for the baseline and Spean.
#[derive(Debug, Clone, Serialize)]
pub struct Shape {
    /// Agencies (baseline: queues); each has one sending and one receiving client.
    pub agencies: usize,
    /// The closed loop's windows, tried in turn: messages each sending agency keeps in flight end
    /// to end. See [`sustained`].
    pub windows: Vec<usize>,
}

/// The recipient of a sender's `seq`-th message: every other agency in turn, never itself.
fn recipient(from: usize, seq: u64, agencies: usize) -> usize {
    let others = agencies.saturating_sub(1).max(1) as u64;
    (from + 1 + (seq % others) as usize) % agencies
}

/// Phase ids, so each phase ignores stragglers of the previous one.
static NEXT_PHASE: AtomicU32 = AtomicU32::new(1);

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Messages received per second during the measured window.
    pub per_second: f64,
    /// Messages each sending agency kept in flight.
    pub inflight: usize,
    /// Every closed loop run in the search for this one (see [`sustained`]), this one included.
    pub steps: Vec<Step>,
    pub received: u64,
    /// Feedback deliveries that arrived in the window.
    pub feedback: u64,
    pub seconds: f64,
    /// Sends the system accepted over the whole phase (warm-up and window).
    pub accepted: u64,
    pub send_errors: u64,
    pub first_error: Option<String>,
    /// Loopback bytes during the window divided by messages received in it.
    pub wire_bytes_per_message: Option<f64>,
    /// Latency in the closed loop: mostly the window's queueing, not a service level.
    pub latency: Latency,
}

/// One closed loop of the search for the sustained maximum.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub inflight: usize,
    pub per_second: f64,
    /// Sends accepted over the step (warm-up and window).
    pub accepted: u64,
}

/// A step must beat the best so far by this much to count as a gain.
const GAIN: f64 = 1.05;
/// Steps in a row without a gain that end the search: one alone may be a dip of the machine's.
const PATIENCE: u32 = 2;

/// The sustained maximum: closed loops with each of `shape.windows` in turn, the best of them.
///
/// One fixed window measures latency as much as capacity: with too few messages in flight the
/// system waits between them and the loop reports less than it sustains. So the window widens
/// until throughput stops rising (two steps in a row gaining less than 5 % on the best so far end
/// the search), and the best step is the maximum. The baseline and Spean search the same windows.
pub async fn sustained<S: Submitter>(
    submitter: &S,
    recorder: &Arc<Recorder>,
    shape: &Shape,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Throughput> {
    let mut best: Option<Throughput> = None;
    let mut steps = Vec::new();
    let mut search = Search::default();
    for &inflight in &shape.windows {
        let step = closed_loop(
            submitter,
            recorder,
            shape.agencies,
            inflight,
            warmup,
            measure,
        )
        .await?;
        steps.push(Step {
            inflight,
            per_second: step.per_second,
            accepted: step.accepted,
        });
        let go_on = search.go_on(step.per_second);
        if best.as_ref().is_none_or(|b| step.per_second > b.per_second) {
            best = Some(step);
        }
        if !go_on {
            break;
        }
    }
    let mut best = best.context("no closed-loop window to try")?;
    best.steps = steps;
    Ok(best)
}

/// Where the search for the sustained maximum stands: the best rate so far, and the steps in a
/// row since one gained on it.
#[derive(Debug, Default)]
struct Search {
    best: Option<f64>,
    misses: u32,
}

impl Search {
    /// Records a step's rate; false once the search should stop.
    fn go_on(&mut self, rate: f64) -> bool {
        if self.best.is_none_or(|b| rate >= b * GAIN) {
            self.misses = 0;
        } else {
            self.misses += 1;
        }
        self.best = Some(self.best.map_or(rate, |b| b.max(rate)));
        self.misses < PATIENCE
    }
}

/// Runs one closed loop: `warmup` unmeasured, then `measure` measured; then waits (bounded) for
/// what is still in flight so the next phase starts on an idle system.
async fn closed_loop<S: Submitter>(
    submitter: &S,
    recorder: &Arc<Recorder>,
    agencies: usize,
    inflight: usize,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Throughput> {
    let phase = NEXT_PHASE.fetch_add(1, Ordering::Relaxed);
    let window = Arc::new(Semaphore::new(agencies * inflight));
    recorder.begin(phase, Some(window.clone()))?;
    let sends = Arc::new(Sends::default());
    let seq = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for from in 0..agencies {
        for _ in 0..inflight {
            let (submitter, window, sends, seq, recorder) = (
                submitter.clone(),
                window.clone(),
                sends.clone(),
                seq.clone(),
                recorder.clone(),
            );
            workers.spawn(async move {
                loop {
                    let Ok(slot) = window.acquire().await else {
                        return;
                    };
                    // The slot comes back when the message is received (see `Recorder::received`).
                    slot.forget();
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let tag = Tag {
                        phase,
                        seq: n,
                        sent_us: recorder.micros_at(Instant::now()),
                    };
                    let to = recipient(from, n, agencies);
                    match submitter.submit(from, to, tag.encode()).await {
                        Ok(()) => {
                            sends.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            sends.failed(e);
                            window.add_permits(1);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            });
        }
    }
    tokio::time::sleep(warmup).await;
    recorder.reset_latency();
    let feedback = || recorder.feedback.load(Ordering::Relaxed);
    let (start, received_before, feedback_before, bytes_before) = (
        Instant::now(),
        recorder.count(),
        feedback(),
        probe::loopback_bytes(),
    );
    tokio::time::sleep(measure).await;
    let (end, received_after, feedback_after, bytes_after) = (
        Instant::now(),
        recorder.count(),
        feedback(),
        probe::loopback_bytes(),
    );
    let latency = recorder.latency();
    workers.shutdown().await;
    settle(recorder, &sends, Duration::from_secs(15)).await;

    let received = received_after - received_before;
    let feedback = feedback_after - feedback_before;
    // What the window completed in full: a message whose feedback is still on the way is not done.
    // In a short measured window with many referrals in flight the feedback lags the messages, and
    // counting the messages alone overstates the rate.
    let complete = match S::FEEDBACK_PER_MESSAGE {
        0 => received,
        n => received.min(feedback / n),
    };
    let seconds = (end - start).as_secs_f64();
    Ok(Throughput {
        per_second: complete as f64 / seconds,
        inflight,
        steps: Vec::new(),
        received,
        feedback,
        seconds,
        accepted: sends.ok.load(Ordering::Relaxed),
        send_errors: sends.errors.load(Ordering::Relaxed),
        first_error: sends.first_error(),
        wire_bytes_per_message: match (bytes_before, bytes_after) {
            (Some(b), Some(a)) if received > 0 => {
                Some(a.saturating_sub(b) as f64 / received as f64)
            }
            _ => None,
        },
        latency,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct OpenLoad {
    /// The offered rate as a fraction of the closed-loop maximum it was derived from.
    pub fraction: f64,
    pub offered_per_second: f64,
    pub scheduled: u64,
    pub accepted: u64,
    pub received: u64,
    pub send_errors: u64,
    pub first_error: Option<String>,
    /// Scheduled send → receipt by the recipient's client.
    pub latency: Latency,
    /// Scheduled send → the answer to the send, for the sends accepted.
    pub answered: Latency,
}

/// Sends `rate` messages per second for `duration`, each on its own task at its scheduled instant,
/// spread over the agencies in turn; then waits up to `drain` for the last receipts.
pub async fn open_loop<S: Submitter>(
    submitter: &S,
    recorder: &Arc<Recorder>,
    agencies: usize,
    fraction: f64,
    rate: f64,
    duration: Duration,
    drain: Duration,
) -> anyhow::Result<OpenLoad> {
    let phase = NEXT_PHASE.fetch_add(1, Ordering::Relaxed);
    recorder.begin(phase, None)?;
    let sends = Arc::new(Sends::default());
    let answers = Arc::new(Answers::new()?);
    let scheduled = (rate * duration.as_secs_f64()).round() as u64;
    let start = Instant::now() + Duration::from_millis(10);
    for n in 0..scheduled {
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let from = (n % agencies as u64) as usize;
        let to = recipient(from, n / agencies as u64, agencies);
        let tag = Tag {
            phase,
            seq: n,
            sent_us: recorder.micros_at(due),
        };
        let (submitter, sends, answers) = (submitter.clone(), sends.clone(), answers.clone());
        sends.pending.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            match submitter.submit(from, to, tag.encode()).await {
                Ok(()) => {
                    let waited = Instant::now().saturating_duration_since(due);
                    answers.record(u64::try_from(waited.as_micros()).unwrap_or(u64::MAX));
                    sends.ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => sends.failed(e),
            }
            sends.pending.fetch_sub(1, Ordering::Relaxed);
        });
    }
    settle(recorder, &sends, drain).await;
    Ok(OpenLoad {
        fraction,
        offered_per_second: rate,
        scheduled,
        accepted: sends.ok.load(Ordering::Relaxed),
        received: recorder.count(),
        send_errors: sends.errors.load(Ordering::Relaxed),
        first_error: sends.first_error(),
        latency: recorder.latency(),
        answered: answers.latency(),
    })
}

/// Waits until every started send is answered and every accepted message received, or `limit`.
async fn settle(recorder: &Recorder, sends: &Sends, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let done = sends.pending.load(Ordering::Relaxed) == 0
            && recorder.count() >= sends.ok.load(Ordering::Relaxed);
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many of `rates` the search measures before it stops.
    fn steps_taken(rates: &[f64]) -> usize {
        let mut search = Search::default();
        rates
            .iter()
            .position(|&rate| !search.go_on(rate))
            .map_or(rates.len(), |i| i + 1)
    }

    #[test]
    fn the_window_widens_until_two_steps_in_a_row_gain_less_than_five_percent() {
        assert_eq!(steps_taken(&[100.0, 150.0, 200.0, 260.0, 300.0]), 5);
        assert_eq!(steps_taken(&[100.0, 150.0, 140.0, 155.0, 300.0]), 4);
        // One dip is not the end: the next step gains on the best again.
        assert_eq!(steps_taken(&[100.0, 80.0, 120.0, 119.0, 118.0]), 5);
        assert_eq!(steps_taken(&[100.0, 104.0, 200.0]), 3);
    }

    /// Answers each send after 20 ms and delivers it 30 ms later.
    #[derive(Clone)]
    struct Slow(Arc<Recorder>);

    impl Submitter for Slow {
        const FEEDBACK_PER_MESSAGE: u64 = 0;

        async fn submit(&self, _from: usize, _to: usize, tag: String) -> Result<(), String> {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let recorder = self.0.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                recorder.received(&tag);
            });
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_open_loop_splits_the_answer_from_the_delivery() {
        let recorder = Recorder::new().unwrap();
        let submitter = Slow(recorder.clone());
        let rate = 50.0;
        let load = open_loop(
            &submitter,
            &recorder,
            4,
            0.5,
            rate,
            Duration::from_millis(400),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!((load.scheduled, load.accepted, load.received), (20, 20, 20));
        assert_eq!(load.answered.count, 20);
        // Lower bounds only: the sleeps guarantee them, and a busy machine may add to them.
        assert!(load.answered.p50_ms >= 20.0, "{:?}", load.answered);
        assert!(load.latency.p50_ms >= 50.0, "{:?}", load.latency);
        assert!(load.latency.p50_ms > load.answered.p50_ms);
    }

    #[test]
    fn each_sender_sends_to_every_other_agency_in_turn() {
        let to: Vec<usize> = (0..6).map(|seq| recipient(1, seq, 4)).collect();
        assert_eq!(to, [2, 3, 0, 2, 3, 0]);
    }
}
