//! Bounded polling for effects across processes: a test or benchmark never sleeps a fixed time
//! hoping something happened, and never waits forever when it did not.

use std::future::Future;
use std::time::Duration;

/// How long any effect across processes may take before a test fails: generous, because a loaded
/// CI machine is slow, yet bounded, so a lost message fails the test instead of hanging it.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How long to wait for something, and how often to look.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// After this, the wait gives up.
    pub limit: Duration,
    /// The pause between two looks: short enough not to slow a test, long enough not to load
    /// the process being watched.
    pub poll: Duration,
}

impl Patience {
    /// The tests' patience: [`PATIENCE`], looking every 100 ms.
    pub const TESTS: Self = Self {
        limit: PATIENCE,
        poll: Duration::from_millis(100),
    };

    /// Polls `check` until it returns `Some`, and returns that; `None` once `limit` has passed.
    pub async fn poll<T, F, Fut>(self, mut check: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.limit;
        loop {
            if let Some(value) = check().await {
                return Some(value);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}

/// Waits until `check` returns `Some`, polling with [`Patience::TESTS`]; panics naming `what`
/// after [`PATIENCE`], so a failed test says which effect never came.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match Patience::TESTS.poll(check).await {
        Some(value) => value,
        None => panic!("timed out waiting for {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Patience = Patience {
        limit: Duration::from_millis(50),
        poll: Duration::from_millis(1),
    };

    #[tokio::test]
    async fn polling_returns_the_first_answer() {
        let mut looks = 0;
        let found = QUICK
            .poll(|| {
                looks += 1;
                let now = looks;
                async move { (now == 3).then_some(now) }
            })
            .await;
        assert_eq!(found, Some(3));
    }

    #[tokio::test]
    async fn polling_gives_up_after_the_limit() {
        let found: Option<()> = QUICK.poll(|| async { None }).await;
        assert_eq!(found, None);
    }
}
