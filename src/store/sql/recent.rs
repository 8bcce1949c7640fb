//! A short-lived memory of lookups made on every message, so that each is not a database
//! round trip:
//! - recipients (most mail goes to a few mailboxes). Only users without a quota are kept
//!   (their answer cannot turn into "over quota"). A user deleted on another node meanwhile
//!   is still caught: the commit of the message fails on its foreign key and the client gets
//!   `451` and retries, by when the entry has expired.
//! - a domain's DKIM signing key, or that it has none. A key added on another node signs
//!   mail here at most [`TTL`] later; one deleted there may sign for that long still, which
//!   is harmless while its record is published.
//!
//! Changes made through this node empty the memory at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a lookup is trusted.
pub(super) const TTL: Duration = Duration::from_secs(2);

/// Most keys kept; past it the memory starts over (a bound, not an eviction policy).
const CAPACITY: usize = 10_000;

/// Key (lower case) → (answer, when it was looked up).
#[derive(Debug)]
pub(super) struct Recent<V> {
    entries: Mutex<HashMap<String, (V, Instant)>>,
}

impl<V> Default for Recent<V> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<V: Clone> Recent<V> {
    /// The answer for `key` if it was looked up less than [`TTL`] ago.
    pub(super) fn get(&self, key: &str) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(value, _)| value.clone())
    }

    /// Remembers the answer for `key`.
    pub(super) fn put(&self, key: String, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(key, (value, Instant::now()));
    }

    /// Forgets everything (what was looked up changed).
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
    fn an_entry_is_kept_until_cleared_and_the_memory_stays_bounded() {
        let cache = Recent::<i64>::default();
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
