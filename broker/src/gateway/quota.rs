//! How many calls each agency may make: a token bucket per agency, so that one agency flooding
//! the broker (a runaway script, a stolen certificate) is refused cheaply, before any database
//! work, and the others' calls go through as usual.
//!
//! Each broker process counts its own calls: a deployment of `n` brokers lets an agency make at
//! most `n` times the rate, which still bounds a flood. A refused call is told when a token is
//! free again, in `grpc-retry-pushback-ms` (gRPC's retry pushback), which is also how an adapter
//! tells "slow down" from a refusal for good.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ids::AgencyId;

/// The metadata key a refused call carries: milliseconds until the agency may call again.
pub const PUSHBACK: &str = "grpc-retry-pushback-ms";

/// Buckets are forgotten after this long without a call, so that the map stays as large as the
/// set of agencies calling, not of every agency that ever called.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// The per-agency buckets. `rate == 0` turns the limit off.
pub struct Quota {
    rate: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    by_agency: HashMap<AgencyId, Bucket>,
    swept: Instant,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Quota {
    /// `rate` calls per second on average, `burst` at once above it (at least one).
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(Buckets {
                by_agency: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// Takes one call's token from `agency`'s bucket; `Err` with how long until one is free.
    pub fn take(&self, agency: &AgencyId) -> Result<(), Duration> {
        self.take_at(agency, Instant::now())
    }

    fn take_at(&self, agency: &AgencyId, now: Instant) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(buckets.swept) > FORGET_AFTER {
            buckets
                .by_agency
                .retain(|_, b| now.duration_since(b.at) < FORGET_AFTER);
            buckets.swept = now;
        }
        let bucket = buckets.by_agency.entry(agency.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refilled = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refilled).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }

    /// The limits, for the message that names them.
    pub fn limits(&self) -> (u32, u32) {
        (self.rate as u32, self.burst as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agency(raw: &str) -> AgencyId {
        AgencyId::parse("agency", raw).unwrap()
    }

    #[test]
    fn an_agency_over_its_rate_waits_and_the_others_do_not() {
        let quota = Quota::new(10, 3);
        let start = Instant::now();
        let flooding = agency("ahc-swu");
        for _ in 0..3 {
            assert!(quota.take_at(&flooding, start).is_ok());
        }
        let wait = quota.take_at(&flooding, start).unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another agency has its own bucket.
        assert!(quota.take_at(&agency("mlup-russey"), start).is_ok());
        // A tenth of a second later, one more call.
        let later = start + Duration::from_millis(100);
        assert!(quota.take_at(&flooding, later).is_ok());
        assert!(quota.take_at(&flooding, later).is_err());
        // Idle for long, the bucket is full again, never fuller than the burst.
        let idle = later + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(quota.take_at(&flooding, idle).is_ok());
        }
        assert!(quota.take_at(&flooding, idle).is_err());
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        let quota = Quota::new(0, 0);
        let now = Instant::now();
        for _ in 0..10_000 {
            assert!(quota.take_at(&agency("ahc-swu"), now).is_ok());
        }
    }
}
