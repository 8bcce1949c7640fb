//! Per-account limits on what would otherwise be an oracle: the send API answers at once
//! whether an address exists in a hosted domain, so its unknown-recipient refusals are
//! counted per caller, and a caller past the limit gets every send refused (`429`) until the
//! window ends: refusing only unknown addresses would still tell them from known ones.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Unknown-recipient refusals one account may get per window.
pub const UNKNOWN_RECIPIENTS_PER_WINDOW: u32 = 10;

/// The window of [`UNKNOWN_RECIPIENTS_PER_WINDOW`].
pub const UNKNOWN_RECIPIENT_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Most accounts remembered; beyond it, expired windows are forgotten first.
const MAX_ACCOUNTS: usize = 100_000;

/// Counts events per account in fixed windows.
#[derive(Debug)]
pub struct AccountLimit {
    limit: u32,
    window: Duration,
    counts: Mutex<HashMap<i64, (u32, Instant)>>,
}

impl AccountLimit {
    /// At most `limit` events per account per `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            counts: Mutex::default(),
        }
    }

    /// The seconds until `account` may act again, if it is over the limit now.
    pub fn blocked_for(&self, account: i64) -> Option<Duration> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (count, started) = counts.get(&account)?;
        let left = self.window.checked_sub(started.elapsed())?;
        (*count >= self.limit).then_some(left)
    }

    /// Records one event of `account`.
    pub fn record(&self, account: i64) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.len() >= MAX_ACCOUNTS {
            let window = self.window;
            counts.retain(|_, (_, started)| started.elapsed() < window);
        }
        let entry = counts.entry(account).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            *entry = (0, Instant::now());
        }
        entry.0 = entry.0.saturating_add(1);
    }
}

impl Default for AccountLimit {
    /// The send API's limit on unknown-recipient refusals.
    fn default() -> Self {
        Self::new(UNKNOWN_RECIPIENTS_PER_WINDOW, UNKNOWN_RECIPIENT_WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_past_the_limit_waits_for_the_window() {
        let limit = AccountLimit::new(3, Duration::from_millis(200));
        for _ in 0..2 {
            limit.record(1);
        }
        assert!(limit.blocked_for(1).is_none());
        limit.record(1);
        assert!(limit.blocked_for(1).is_some());
        assert!(
            limit.blocked_for(2).is_none(),
            "other accounts are not affected"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert!(limit.blocked_for(1).is_none(), "a new window");
        limit.record(1);
        assert!(limit.blocked_for(1).is_none());
    }
}
