//! Exponential backoff with jitter: reconnects and retries wait 200 ms, then twice as long each time up
//! to 10 s, each wait shortened by a random part so that many adapters do not retry in step.

use std::{
    hash::{BuildHasher, RandomState},
    time::Duration,
};

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(10))
    }
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The next wait: between half and all of the current step, which then doubles (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(random_fraction())
    }

    /// After a success: the next failure starts from the first step again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// A fraction in [0, 1) from the standard library's randomly keyed hasher: enough for jitter, and no
/// extra dependency.
pub(crate) fn random_fraction() -> f64 {
    let bits = RandomState::new().hash_one(std::time::Instant::now()) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_restart_after_reset() {
        let mut backoff = Backoff::default();
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
        for _ in 0..20 {
            assert!(backoff.next_delay() <= Duration::from_secs(10));
        }
        let late = backoff.next_delay();
        assert!(late >= Duration::from_secs(5));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(200));
    }
}
