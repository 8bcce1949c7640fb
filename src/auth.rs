//! Passwords, bearer tokens and the throttle on repeated authentication failures.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::store::{MetadataStore, StoreError, User};

/// Hashes a password with argon2id (PHC string format).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Checks a password against a PHC hash; a malformed hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A random secret of `bytes` bytes, URL-safe base64 without padding.
pub fn random_secret(bytes: usize) -> String {
    use base64::Engine;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// What tokens are stored as: their SHA-256, so a database leak yields no usable token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A hash of a random password, verified against when the user does not exist so that
/// unknown and known users take the same time to reject.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password(&random_secret(16)).unwrap_or_default())
}

/// Checks an email and password against the store. Runs argon2 off the async threads.
pub async fn authenticate(
    store: &dyn MetadataStore,
    email: &str,
    password: &str,
) -> Result<Option<User>, StoreError> {
    let creds = store.credentials(email).await?;
    let hash = creds
        .as_ref()
        .map(|c| c.password_hash.clone())
        .unwrap_or_else(|| dummy_hash().to_string());
    let password = password.to_string();
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    Ok(creds.filter(|_| ok).map(|c| c.user))
}

/// Slows down addresses that keep failing to authenticate.
///
/// After `free` failures within the window, each further attempt waits `step` times the
/// number of failures beyond `free`, capped at 30 s. A success clears the address.
#[derive(Debug)]
pub struct FailureThrottle {
    step: Duration,
    free: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl FailureThrottle {
    /// A throttle with the given delay step and number of free failures.
    pub fn new(step: Duration, free: u32) -> Self {
        Self {
            step,
            free,
            window: Duration::from_secs(15 * 60),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// How long to wait before answering the next attempt from `ip`.
    pub fn delay(&self, ip: IpAddr) -> Duration {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&ip) {
            Some((count, last)) if last.elapsed() < self.window && *count > self.free => {
                (self.step * (count - self.free)).min(Duration::from_secs(30))
            }
            _ => Duration::ZERO,
        }
    }

    /// Records a failure from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            let window = self.window;
            map.retain(|_, (_, last)| last.elapsed() < window);
        }
        let entry = map.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = Instant::now();
    }

    /// Clears `ip` after a success.
    pub fn succeeded(&self, ip: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_round_trip() {
        let hash = hash_password("correct horse").expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong", &hash));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn throttle_starts_after_free_failures() {
        let t = FailureThrottle::new(Duration::from_secs(1), 2);
        let ip: IpAddr = [127, 0, 0, 1].into();
        t.failed(ip);
        t.failed(ip);
        assert_eq!(t.delay(ip), Duration::ZERO);
        t.failed(ip);
        assert_eq!(t.delay(ip), Duration::from_secs(1));
        t.failed(ip);
        assert_eq!(t.delay(ip), Duration::from_secs(2));
        t.succeeded(ip);
        assert_eq!(t.delay(ip), Duration::ZERO);
    }

    #[test]
    fn tokens_are_stored_hashed() {
        let token = random_secret(32);
        assert_eq!(token.len(), 43);
        assert_ne!(token_hash(&token), token);
        assert_eq!(token_hash(&token).len(), 64);
    }
}
