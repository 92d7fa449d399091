//! When a message is tried again, and when its endpoint is given up on: the `[webhooks]` settings
//! and the backoff they drive.
//!
//! Each failure waits longer: `first_retry`, doubling up to `max_retry_interval`, each wait drawn at
//! random from the upper half of its step ("equal jitter"), so that many messages failing together
//! do not come back in step, and yet the gaps never shrink. An endpoint whose oldest undelivered
//! message has been failing for longer than `disable_after` is disabled (its messages are kept).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::backoff::random_fraction;

/// The `[webhooks]` settings (`SPEAN_ADAPTER_WEBHOOKS__<KEY>` in the environment). Durations are
/// written `45s`, `30m`, `2h`, `3d`, or as a number of seconds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// The wait after a message's first failed attempt; each later failure doubles it.
    #[serde(with = "humane")]
    pub first_retry: Duration,
    /// The longest wait between two attempts of one message: an endpoint back after a long outage
    /// is found within this long.
    #[serde(with = "humane")]
    pub max_retry_interval: Duration,
    /// How long the oldest undelivered message of an endpoint may keep failing before the endpoint
    /// is disabled. The issue promises retries for at least three days.
    #[serde(with = "humane")]
    pub disable_after: Duration,
    /// How long one POST may take, connection included, before it counts as failed.
    #[serde(with = "humane")]
    pub request_timeout: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            first_retry: Duration::from_secs(5),
            max_retry_interval: Duration::from_secs(3_600),
            disable_after: Duration::from_secs(3 * 86_400),
            request_timeout: Duration::from_secs(15),
        }
    }
}

impl WebhookSettings {
    /// The wait before the next attempt of a message that has now failed `failures` times (1 after
    /// its first failure): the step `first_retry * 2^(failures-1)`, capped, then jittered.
    pub fn retry_delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        let step = self
            .first_retry
            .saturating_mul(1 << doublings)
            .min(self.max_retry_interval);
        let half = step / 2;
        half + half.mul_f64(random_fraction())
    }
}

/// Durations as people write them in the file (`45s`, `30m`, `2h`, `3d`) or as a number of
/// seconds (what an environment variable most easily holds).
mod humane {
    use super::*;

    const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        format!("{}s", d.as_secs()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Seconds(seconds) => Ok(Duration::from_secs(seconds)),
            Raw::Text(text) => parse(&text).map_err(serde::de::Error::custom),
        }
    }

    pub(super) fn parse(raw: &str) -> Result<Duration, String> {
        let invalid = || format!("must be a duration like 3d, 2h, 30m or 45s, not {raw:?}");
        let raw = raw.trim();
        if let Ok(seconds) = raw.parse::<u64>() {
            return Ok(Duration::from_secs(seconds));
        }
        let mut chars = raw.chars();
        let unit = chars.next_back().ok_or_else(invalid)?;
        let count: u64 = chars.as_str().parse().map_err(|_| invalid())?;
        let (_, per) = UNITS.iter().find(|(u, _)| *u == unit).ok_or_else(invalid)?;
        count
            .checked_mul(*per)
            .map(Duration::from_secs)
            .ok_or_else(invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_with_units_or_as_seconds() {
        assert_eq!(humane::parse("3d"), Ok(Duration::from_secs(259_200)));
        assert_eq!(humane::parse("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(humane::parse("7"), Ok(Duration::from_secs(7)));
        assert!(humane::parse("soon").is_err());
        assert!(humane::parse("5w").is_err());
    }

    #[test]
    fn each_wait_is_in_the_upper_half_of_a_doubling_step_up_to_the_cap() {
        let settings = WebhookSettings::default();
        let mut step = settings.first_retry;
        for failures in 1..40 {
            let wait = settings.retry_delay(failures);
            assert!(
                wait >= step / 2 && wait <= step,
                "{failures}: {wait:?} vs {step:?}"
            );
            step = (step * 2).min(settings.max_retry_interval);
        }
    }
}
