//! The one restart policy every supervisor follows: a child that fails is started again after
//! an exponential backoff (100 ms doubling to 30 s), and one that then ran for a minute counts
//! as healthy again. Each restart is counted in `mairust_actor_restarts_total{actor}`.

use std::time::Duration;

use tokio::time::Instant;

use crate::events::{self, ActorRestarted};

/// When to start a failed child again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// The wait after the first failure.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
    /// A child that ran this long before failing starts over at `first`.
    pub stable_after: Duration,
}

impl RestartPolicy {
    /// The policy of the actor tree.
    pub const STANDARD: Self = Self {
        first: Duration::from_millis(100),
        max: Duration::from_secs(30),
        stable_after: Duration::from_secs(60),
    };

    /// The wait before the restart that follows `failures` consecutive earlier failures.
    pub fn delay(&self, failures: u32) -> Duration {
        self.first
            .saturating_mul(1u32 << failures.min(16))
            .min(self.max)
    }
}

/// One child's restart history.
#[derive(Debug)]
pub struct Restarts {
    policy: RestartPolicy,
    started: Instant,
    consecutive_failures: u32,
}

impl Restarts {
    /// A child started now.
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            started: Instant::now(),
            consecutive_failures: 0,
        }
    }

    /// The child (re)started now.
    pub fn started(&mut self) {
        self.started = Instant::now();
    }

    /// The child failed: counts the restart (`actor` names it in the metric and the log) and
    /// returns how long to wait before starting it again.
    pub fn failed(&mut self, actor: &'static str) -> Duration {
        if self.started.elapsed() >= self.policy.stable_after {
            self.consecutive_failures = 0;
        }
        let delay = self.policy.delay(self.consecutive_failures);
        self.consecutive_failures += 1;
        events::emit(ActorRestarted {
            actor,
            delay,
            attempt: self.consecutive_failures,
        });
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_and_caps() {
        let policy = RestartPolicy::STANDARD;
        assert_eq!(policy.delay(0), Duration::from_millis(100));
        assert_eq!(policy.delay(1), Duration::from_millis(200));
        assert_eq!(policy.delay(3), Duration::from_millis(800));
        assert_eq!(policy.delay(30), policy.max);
    }

    #[tokio::test(start_paused = true)]
    async fn a_child_that_ran_long_enough_starts_over() {
        let mut restarts = Restarts::new(RestartPolicy::STANDARD);
        let delays: Vec<Duration> = (0..3).map(|_| restarts.failed("test")).collect();
        assert_eq!(
            delays,
            [100, 200, 400].map(Duration::from_millis).to_vec(),
            "quick failures back off"
        );
        restarts.started();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(restarts.failed("test"), Duration::from_millis(100));
    }
}
