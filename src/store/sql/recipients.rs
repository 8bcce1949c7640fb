//! A short-lived memory of recipient lookups: most mail goes to a few mailboxes, and without
//! it every `RCPT TO` is a database round trip.
//!
//! Only users without a quota are kept (their answer cannot turn into "over quota"). A user
//! deleted on another node meanwhile is still caught: the commit of the message fails on its
//! foreign key and the client gets `451` and retries, by when the entry has expired. Changes
//! made through this node empty the cache at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a lookup is trusted.
const TTL: Duration = Duration::from_secs(2);

/// Most addresses kept; past it the cache starts over (a bound, not an eviction policy).
const CAPACITY: usize = 10_000;

/// Address (lower case) → (user id, when it was looked up).
#[derive(Debug, Default)]
pub(super) struct RecipientCache {
    entries: Mutex<HashMap<String, (i64, Instant)>>,
}

impl RecipientCache {
    /// The user id of `address` if it was looked up less than [`TTL`] ago.
    pub(super) fn get(&self, address: &str) -> Option<i64> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(address)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|&(user_id, _)| user_id)
    }

    /// Remembers a user without a quota.
    pub(super) fn put(&self, address: String, user_id: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(address, (user_id, Instant::now()));
    }

    /// Forgets everything (a user was changed or deleted).
    pub(super) fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_kept_until_cleared_and_the_cache_stays_bounded() {
        let cache = RecipientCache::default();
        cache.put("a@x.test".into(), 1);
        assert_eq!(cache.get("a@x.test"), Some(1));
        assert_eq!(cache.get("b@x.test"), None);
        cache.clear();
        assert_eq!(cache.get("a@x.test"), None);
        for i in 0..=CAPACITY {
            cache.put(format!("u{i}@x.test"), i as i64);
        }
        assert!(cache.entries.lock().expect("lock").len() <= CAPACITY);
        assert_eq!(
            cache.get(&format!("u{CAPACITY}@x.test")),
            Some(CAPACITY as i64)
        );
    }
}
