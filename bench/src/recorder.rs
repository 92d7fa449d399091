//! Where receivers report what arrived. Each message carries a [`Tag`] with its phase and its
//! scheduled send time, so a receiver needs no shared map of in-flight messages: it parses the tag and
//! subtracts. Messages from an earlier phase (stragglers) are not counted in the current one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;

/// What a message says about itself: `b<phase>-<seq>-<micros since the recorder's base>`. It is a valid
/// Spean `client_ref` ([A-Za-z0-9._:-]) and a readable prefix of a baseline message body.
#[derive(Debug, Clone, Copy)]
pub struct Tag {
    pub phase: u32,
    pub seq: u64,
    pub sent_us: u64,
}

impl Tag {
    pub fn encode(&self) -> String {
        format!("b{}-{}-{}", self.phase, self.seq, self.sent_us)
    }

    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.strip_prefix('b')?.split('-');
        Some(Self {
            phase: parts.next()?.parse().ok()?,
            seq: parts.next()?.parse().ok()?,
            sent_us: parts.next()?.parse().ok()?,
        })
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

struct Phase {
    id: u32,
    /// Latency in microseconds from scheduled send to receipt.
    latency: Histogram<u64>,
    received: u64,
    /// In a closed loop, each receipt frees a slot for the next send.
    window: Option<Arc<Semaphore>>,
}

pub struct Recorder {
    /// The clock every tag's send time is measured from.
    base: Instant,
    phase: Mutex<Phase>,
    /// Feedback deliveries (e.g. `delivered`) received and confirmed: part of the work, not measured.
    pub feedback: AtomicU64,
    /// Subscriber streams that broke and were reopened; a non-zero count qualifies the numbers.
    pub reconnects: AtomicU64,
}

impl Recorder {
    pub fn new() -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            base: Instant::now(),
            phase: Mutex::new(Phase {
                id: 0,
                latency: histogram()?,
                received: 0,
                window: None,
            }),
            feedback: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        }))
    }

    pub fn micros_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_micros()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Phase> {
        // A panic while holding this lock leaves plain counters behind, still usable.
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts counting messages of phase `id` only.
    pub fn begin(&self, id: u32, window: Option<Arc<Semaphore>>) -> anyhow::Result<()> {
        *self.lock() = Phase {
            id,
            latency: histogram()?,
            received: 0,
            window,
        };
        Ok(())
    }

    /// Forgets the latencies so far (the warm-up) but keeps counting receipts.
    pub fn reset_latency(&self) {
        self.lock().latency.reset();
    }

    /// A message with this tag text arrived.
    pub fn received(&self, tag: &str) {
        let now = self.micros_at(Instant::now());
        let Some(tag) = Tag::decode(tag) else { return };
        let mut phase = self.lock();
        if tag.phase != phase.id {
            return;
        }
        phase.received += 1;
        phase
            .latency
            .saturating_record(now.saturating_sub(tag.sent_us).max(1));
        if let Some(window) = &phase.window {
            window.add_permits(1);
        }
    }

    pub fn count(&self) -> u64 {
        self.lock().received
    }

    pub fn latency(&self) -> Latency {
        Latency::of(&self.lock().latency)
    }
}

/// 1 µs to 10 minutes at 3 significant digits.
fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

/// Counts shared by the tasks of one load phase.
#[derive(Debug, Default)]
pub struct Sends {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    /// Sends started but not yet answered (open loop).
    pub pending: AtomicU64,
    pub first_error: Mutex<Option<String>>,
}

impl Sends {
    pub fn failed(&self, error: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(error);
        }
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Scheduled send → the system's answer to the send (for Spean, `Submit` returning: the referral is
/// stored and queued). Beside the end-to-end latency it splits where the time went: before the
/// referral was accepted, or between its acceptance and its receipt.
pub struct Answers(Mutex<Histogram<u64>>);

impl Answers {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self(Mutex::new(histogram()?)))
    }

    pub fn record(&self, micros: u64) {
        self.lock().saturating_record(micros.max(1));
    }

    pub fn latency(&self) -> Latency {
        Latency::of(&self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Histogram<u64>> {
        // A panic while holding this lock leaves a histogram behind, still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
