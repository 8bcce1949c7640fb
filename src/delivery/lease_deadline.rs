//! A node's local bound on how long it may still act for a partition.
//!
//! The lease's expiry is decided by the database's clock, which the node cannot read without
//! a round trip. What it knows for sure is when it *sent* its last successful renewal: the
//! database extended the lease to at least that moment plus the TTL (a statement cannot run
//! before it was sent). So the node trusts its lease until `started + ttl - margin` by its own
//! monotonic clock, and the margin absorbs what the local reasoning cannot see: the drift
//! between the two clocks over one TTL, the scheduling delay of the check itself, and the
//! time the last bytes of a message take to reach the remote server after the check passed.
//! Past the deadline the partition starts no delivery and sends no end of DATA, so a node cut
//! off from the database stops acting before anybody else can take its lease.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The least margin kept before the lease's expiry, however short the TTL.
const MIN_MARGIN: Duration = Duration::from_millis(500);

/// The margin kept before the lease's expiry: a quarter of the TTL (clock drift and delays
/// grow with the interval they accumulate over), at least [`MIN_MARGIN`], and never more
/// than half the TTL, so a short TTL still leaves a usable deadline.
pub fn margin(ttl: Duration) -> Duration {
    (ttl / 4).max(MIN_MARGIN).min(ttl / 2)
}

/// Until when this node may act for one partition; shared by the manager (which moves it
/// on every successful renewal) and the partition's actor and workers (which check it).
///
/// Uses tokio's clock so that tests can run it under a paused clock.
#[derive(Debug, Default)]
pub struct LeaseDeadline {
    until: Mutex<Option<Instant>>,
}

impl LeaseDeadline {
    /// A renewal (or acquisition, or adoption) that was sent at `started` succeeded with
    /// `ttl`: the lease is trusted until `started + ttl - margin(ttl)`. A deadline never
    /// moves back: an older renewal finishing late proves nothing new.
    pub fn renewed(&self, started: Instant, ttl: Duration) {
        let deadline = started + ttl.saturating_sub(margin(ttl));
        let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        if until.is_none_or(|current| current < deadline) {
            *until = Some(deadline);
        }
    }

    /// Forgets the deadline: the lease is known lost or released.
    pub fn clear(&self) {
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Whether the lease may still be acted on now.
    pub fn is_valid(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() < d)
    }

    /// The current deadline; `None` before the first renewal or after [`clear`](Self::clear).
    pub fn deadline(&self) -> Option<Instant> {
        *self.until.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_a_quarter_of_the_ttl_within_bounds() {
        assert_eq!(margin(Duration::from_secs(4)), Duration::from_secs(1));
        assert_eq!(margin(Duration::from_secs(1)), Duration::from_millis(500));
        assert_eq!(
            margin(Duration::from_millis(600)),
            Duration::from_millis(300)
        );
        assert_eq!(margin(Duration::from_secs(40)), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn valid_until_the_margin_before_expiry() {
        let deadline = LeaseDeadline::default();
        assert!(!deadline.is_valid(), "never renewed: not valid");
        assert_eq!(deadline.deadline(), None);
        let started = Instant::now();
        deadline.renewed(started, Duration::from_secs(4));
        assert_eq!(deadline.deadline(), Some(started + Duration::from_secs(3)));
        assert!(deadline.is_valid());
        tokio::time::advance(Duration::from_millis(2999)).await;
        assert!(deadline.is_valid());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!deadline.is_valid(), "valid strictly before the deadline");
        // The next renewal, sent now, moves it on.
        deadline.renewed(Instant::now(), Duration::from_secs(4));
        assert!(deadline.is_valid());
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_older_renewal_does_not_move_the_deadline_back() {
        let deadline = LeaseDeadline::default();
        let early = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        let late = Instant::now();
        deadline.renewed(late, Duration::from_secs(4));
        deadline.renewed(early, Duration::from_secs(4));
        assert_eq!(deadline.deadline(), Some(late + Duration::from_secs(3)));
        deadline.clear();
        assert!(!deadline.is_valid());
    }
}
