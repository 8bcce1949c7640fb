//! Passwords, bearer tokens and the throttle on repeated authentication failures.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::store::{AccountStore, StoreError, User};

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

/// Caps concurrent argon2 runs so that a flood of login attempts cannot occupy every
/// blocking thread (and every core): callers beyond the cap wait their turn.
fn argon2_slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Semaphore::new(cores.clamp(1, 8))
    })
}

/// Runs a blocking argon2 job off the async threads, at most a few at a time.
async fn run_argon2<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    // The semaphore is never closed, so acquiring only waits.
    let _permit = argon2_slots().acquire().await.ok()?;
    tokio::task::spawn_blocking(job).await.ok()
}

/// [`verify_password`] off the async threads, bounded like every argon2 run.
pub async fn verify_password_async(password: &str, hash: &str) -> bool {
    let (password, hash) = (password.to_string(), hash.to_string());
    run_argon2(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false)
}

/// [`hash_password`] off the async threads, bounded like every argon2 run.
pub async fn hash_password_async(password: &str) -> Result<String, String> {
    let password = password.to_string();
    match run_argon2(move || hash_password(&password)).await {
        Some(Ok(hash)) => Ok(hash),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("the password hashing task failed".into()),
    }
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

/// A hash of a random password with the same argon2 parameters as real ones, verified
/// against when the user does not exist so that unknown and known users cost the same.
pub fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password(&random_secret(16)).unwrap_or_default())
}

/// Why a password could not be checked (a wrong password is `Ok(None)`, not an error).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The account could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Too many guesses at this account are being checked already: answer at once with a
    /// temporary refusal (SMTP `454 4.7.0`, HTTP 429) instead of queueing another.
    #[error(
        "too many sign-in attempts for this account are in progress; try again in a few seconds"
    )]
    Busy,
}

/// How long a verified (email, password, stored hash) triple skips the argon2 check.
const VERIFIED_TTL: Duration = Duration::from_secs(60);

/// The one way a password is checked, for SMTP AUTH and API Basic alike.
///
/// The account is read from the database on every attempt, so deletions and password changes
/// (also from the CLI or another node) apply at once; only the deliberately slow argon2 check
/// is skipped when this exact password matched this exact stored hash within the last minute.
/// Every other attempt goes through the failure throttle (per client address and per account,
/// counted before the check so a parallel burst escalates) and costs one lookup and one argon2
/// run whether or not the user exists, so neither timing nor work reveals which accounts exist.
pub struct Authenticator {
    store: std::sync::Arc<dyn AccountStore>,
    throttle: FailureThrottle,
    /// Verified triples, by digest, with when they were verified.
    verified: Mutex<HashMap<String, Instant>>,
}

impl Authenticator {
    /// Checks passwords against `store`, throttling failures after `free` by `step`.
    pub fn new(store: std::sync::Arc<dyn AccountStore>, step: Duration, free: u32) -> Self {
        Self {
            store,
            throttle: FailureThrottle::new(step, free),
            verified: Mutex::default(),
        }
    }

    /// The account, if `password` is its password; `None` otherwise.
    pub async fn authenticate(
        &self,
        ip: IpAddr,
        email: &str,
        password: &str,
    ) -> Result<Option<User>, AuthError> {
        let creds = self.store.credentials(email).await?;
        let key = creds
            .as_ref()
            .map(|c| token_hash(&format!("{email}\0{password}\0{}", c.password_hash)));
        if let (Some(creds), Some(key)) = (&creds, &key) {
            let fresh = self
                .verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(key)
                .is_some_and(|at| at.elapsed() < VERIFIED_TTL);
            if fresh {
                return Ok(Some(creds.user.clone()));
            }
        }
        let attempt = self.throttle.begin(ip, email, password)?;
        attempt.wait().await;
        let hash = creds
            .as_ref()
            .map_or_else(|| dummy_hash().to_string(), |c| c.password_hash.clone());
        let ok = verify_password_async(password, &hash).await;
        let (Some(creds), Some(key), true) = (creds, key, ok) else {
            attempt.failed();
            return Ok(None);
        };
        attempt.succeeded();
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() > 10_000 {
            verified.clear();
        }
        verified.insert(key, Instant::now());
        Ok(Some(creds.user))
    }
}

/// What the throttle counts failures against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ThrottleKey {
    /// The client's address.
    Addr(IpAddr),
    /// The account tried (lower case), whether or not it exists.
    Account(String),
}

/// Recent failures (and attempts in progress) of one key.
#[derive(Debug, Clone, Copy)]
struct Tally {
    count: u32,
    last: Instant,
}

/// Most keys remembered; beyond it, keys below the free allowance are forgotten first.
const MAX_KEYS: usize = 100_000;

/// Counters behind the throttle's lock.
#[derive(Debug, Default)]
struct ThrottleState {
    tallies: HashMap<ThrottleKey, Tally>,
    /// Attempts being checked, by digest of (account, password).
    in_flight: HashMap<[u8; 32], u32>,
    /// New guesses (attempts that reserved a count) waiting or being checked, per account.
    guesses_in_flight: HashMap<String, u32>,
}

/// Most new guesses at one account waiting or being checked at once. The delay bounds each
/// attempt's wait, not how many wait side by side: without this bound, guesses from many
/// addresses (up to the connection limit) would each wait their 30 s and be checked together.
/// With it, an account sees at most this many guesses per delay, whatever the sources.
pub const MAX_GUESSES_IN_FLIGHT: u32 = 4;

/// Slows down repeated authentication failures, for SMTP AUTH and API Basic alike.
///
/// Failures are counted per client address and per target account. An attempt reserves its
/// place before the password is checked ([`FailureThrottle::begin`]), so a burst of parallel
/// guesses escalates instead of all seeing the same count; only an attempt with exactly the
/// credentials of one already being checked reserves nothing (it cannot be a new guess, and
/// a client opening several sessions at once is not slowed down by itself). After `free`
/// failures within the window, an attempt waits `step` times the number of failures beyond
/// `free` (the larger of the address's and the account's), capped at 30 s. A success only
/// withdraws its own reservation: it never clears failures that other attempts recorded, so
/// owning one account does not buy free guesses at another. At most
/// [`MAX_GUESSES_IN_FLIGHT`] new guesses at one account wait or are checked at once; the
/// rest are refused at once ([`AuthError::Busy`]) and count as nothing.
#[derive(Debug)]
pub struct FailureThrottle {
    step: Duration,
    free: u32,
    window: Duration,
    state: Mutex<ThrottleState>,
}

/// One authentication attempt holding its reservation. Dropping it without
/// [`Attempt::succeeded`] counts as a failure (a client that hangs up during the delay still
/// pays for the guess).
#[must_use = "an attempt counts as a failure unless marked succeeded"]
#[derive(Debug)]
pub struct Attempt<'a> {
    throttle: &'a FailureThrottle,
    keys: [ThrottleKey; 2],
    /// The account, as counted in `guesses_in_flight`.
    account: String,
    digest: [u8; 32],
    reserved: bool,
    succeeded: bool,
    delay: Duration,
}

impl FailureThrottle {
    /// A throttle with the given delay step and number of free failures.
    pub fn new(step: Duration, free: u32) -> Self {
        Self {
            step,
            free,
            window: Duration::from_secs(15 * 60),
            state: Mutex::new(ThrottleState::default()),
        }
    }

    fn delay_for(&self, count: u32) -> Duration {
        if count > self.free {
            (self.step * (count - self.free)).min(Duration::from_secs(30))
        } else {
            Duration::ZERO
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ThrottleState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The form of an account name the throttle counts under.
    fn account_key(account: &str) -> String {
        account.trim().to_ascii_lowercase()
    }

    fn keys(ip: IpAddr, account: &str) -> [ThrottleKey; 2] {
        [
            ThrottleKey::Addr(ip),
            ThrottleKey::Account(Self::account_key(account)),
        ]
    }

    /// Starts an attempt from `ip` at `account` with `secret`: counts it as a failure until it
    /// succeeds, and says how long to wait before checking the password. A new guess at an
    /// account that already has [`MAX_GUESSES_IN_FLIGHT`] is refused with [`AuthError::Busy`].
    pub fn begin(&self, ip: IpAddr, account: &str, secret: &str) -> Result<Attempt<'_>, AuthError> {
        let keys = Self::keys(ip, account);
        let account = Self::account_key(account);
        let mut hasher = Sha256::new();
        hasher.update(account.as_bytes());
        hasher.update([0]);
        hasher.update(secret.as_bytes());
        let digest: [u8; 32] = hasher.finalize().into();
        let now = Instant::now();
        let mut state = self.lock();
        let map = &mut state.tallies;
        if map.len() >= MAX_KEYS {
            let (window, free) = (self.window, self.free);
            map.retain(|_, t| t.last.elapsed() < window && t.count > free);
            if map.len() >= MAX_KEYS {
                // Still full of throttled keys: keep the worst offenders.
                let mut counts: Vec<u32> = map.values().map(|t| t.count).collect();
                counts.sort_unstable();
                let cut = counts[counts.len() / 2];
                map.retain(|_, t| t.count > cut);
            }
        }
        let reserved = !state.in_flight.contains_key(&digest);
        if reserved {
            let guesses = state.guesses_in_flight.entry(account.clone()).or_insert(0);
            if *guesses >= MAX_GUESSES_IN_FLIGHT {
                return Err(AuthError::Busy);
            }
            *guesses += 1;
        }
        let mut prior = 0;
        for key in &keys {
            let tally = state.tallies.entry(key.clone()).or_insert(Tally {
                count: 0,
                last: now,
            });
            if tally.last.elapsed() >= self.window {
                tally.count = 0;
            }
            prior = prior.max(tally.count);
            if reserved {
                tally.count = tally.count.saturating_add(1);
                tally.last = now;
            }
        }
        *state.in_flight.entry(digest).or_insert(0) += 1;
        Ok(Attempt {
            throttle: self,
            keys,
            account,
            digest,
            reserved,
            succeeded: false,
            delay: self.delay_for(prior),
        })
    }

    /// The delay an attempt from `ip` at `account` would get now, without reserving.
    pub fn current_delay(&self, ip: IpAddr, account: &str) -> Duration {
        let state = self.lock();
        let count = Self::keys(ip, account)
            .iter()
            .filter_map(|k| state.tallies.get(k))
            .filter(|t| t.last.elapsed() < self.window)
            .map(|t| t.count)
            .max()
            .unwrap_or(0);
        self.delay_for(count)
    }
}

impl Attempt<'_> {
    /// How long to wait before checking the credentials.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Waits out the delay.
    pub async fn wait(&self) {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
    }

    /// The credentials were right: withdraws this attempt's reservation (and nothing else).
    pub fn succeeded(mut self) {
        self.succeeded = true;
    }

    /// The credentials were wrong: the attempt stays recorded as a failure.
    pub fn failed(self) {}
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let mut state = self.throttle.lock();
        if let Some(n) = state.in_flight.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                state.in_flight.remove(&self.digest);
            }
        }
        if self.reserved
            && let Some(n) = state.guesses_in_flight.get_mut(&self.account)
        {
            *n -= 1;
            if *n == 0 {
                state.guesses_in_flight.remove(&self.account);
            }
        }
        match (self.succeeded, self.reserved) {
            (true, true) => {
                for key in &self.keys {
                    if let Some(tally) = state.tallies.get_mut(key) {
                        tally.count = tally.count.saturating_sub(1);
                        if tally.count == 0 {
                            state.tallies.remove(key);
                        }
                    }
                }
            }
            (false, false) => {
                // A failure that reserved nothing up front is recorded now.
                let now = Instant::now();
                for key in &self.keys {
                    let tally = state.tallies.entry(key.clone()).or_insert(Tally {
                        count: 0,
                        last: now,
                    });
                    tally.count = tally.count.saturating_add(1);
                    tally.last = now;
                }
            }
            _ => {}
        }
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
    fn dummy_hash_has_the_parameters_of_real_hashes() {
        let real = hash_password("pw").expect("hash");
        let params = |h: &str| h.rsplitn(3, '$').nth(2).map(str::to_string);
        assert_eq!(params(dummy_hash()), params(&real));
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn throttle_starts_after_free_failures() {
        let t = FailureThrottle::new(Duration::from_secs(1), 2);
        let delays: Vec<Duration> = (0..4)
            .map(|i| {
                let a = t
                    .begin(IP, "bob@example.test", &format!("guess{i}"))
                    .expect("not busy");
                let d = a.delay();
                a.failed();
                d
            })
            .collect();
        let s = Duration::from_secs;
        assert_eq!(delays, vec![s(0), s(0), s(0), s(1)]);
        assert_eq!(t.current_delay(IP, "bob@example.test"), s(2));
    }

    #[test]
    fn a_success_on_one_account_does_not_reset_failures_on_another() {
        let t = FailureThrottle::new(Duration::from_secs(1), 1);
        for i in 0..3 {
            t.begin(IP, "victim@example.test", &format!("guess{i}"))
                .expect("not busy")
                .failed();
        }
        // The attacker signs in to their own account from the same address...
        let own = t
            .begin(IP, "mine@example.test", "my-password")
            .expect("not busy");
        own.succeeded();
        // ...and the next guess at the victim still waits.
        let guess = t
            .begin(IP, "victim@example.test", "guess3")
            .expect("not busy");
        assert_eq!(guess.delay(), Duration::from_secs(2));
        // Another address guessing the same account waits too (per-account counter).
        let other: IpAddr = [192, 0, 2, 1].into();
        assert!(
            t.begin(other, "victim@example.test", "guess4")
                .expect("not busy")
                .delay()
                >= Duration::from_secs(2)
        );
    }

    #[test]
    fn a_parallel_burst_escalates() {
        let t = FailureThrottle::new(Duration::from_secs(1), 2);
        // Ten attempts in flight at once, none settled yet.
        let attempts: Vec<Attempt<'_>> = (0..10)
            .map(|i| {
                t.begin(IP, &format!("user{i}@example.test"), "guess")
                    .expect("not busy")
            })
            .collect();
        let delays: Vec<u64> = attempts.iter().map(|a| a.delay().as_secs()).collect();
        assert_eq!(delays, vec![0, 0, 0, 1, 2, 3, 4, 5, 6, 7]);
        drop(attempts);
        assert_eq!(t.current_delay(IP, "x"), Duration::from_secs(8));
    }

    #[test]
    fn a_success_withdraws_only_its_own_reservation() {
        let t = FailureThrottle::new(Duration::from_secs(1), 0);
        t.begin(IP, "a@example.test", "guess")
            .expect("not busy")
            .failed();
        t.begin(IP, "b@example.test", "right")
            .expect("not busy")
            .succeeded();
        assert_eq!(
            t.current_delay(IP, "c@example.test"),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn identical_attempts_in_flight_do_not_escalate_but_their_failures_count() {
        let t = FailureThrottle::new(Duration::from_secs(1), 1);
        // One client opening five sessions with the same credentials at once.
        let same: Vec<Attempt<'_>> = (0..5)
            .map(|_| t.begin(IP, "bob@example.test", "pw").expect("not busy"))
            .collect();
        assert!(same.iter().all(|a| a.delay().is_zero()));
        for a in same {
            a.succeeded();
        }
        assert_eq!(t.current_delay(IP, "bob@example.test"), Duration::ZERO);
        // The same wrong password five times at once: every failure is recorded.
        let wrong: Vec<Attempt<'_>> = (0..5)
            .map(|_| t.begin(IP, "bob@example.test", "bad").expect("not busy"))
            .collect();
        drop(wrong);
        assert_eq!(
            t.current_delay(IP, "bob@example.test"),
            Duration::from_secs(4)
        );
    }

    #[test]
    fn guesses_at_one_account_in_flight_are_bounded() {
        let t = FailureThrottle::new(Duration::from_secs(1), 2);
        let account = "victim@example.test";
        // Guesses from many addresses at once: the first few wait their turn...
        let waiting: Vec<Attempt<'_>> = (0..MAX_GUESSES_IN_FLIGHT)
            .map(|i| {
                let ip: IpAddr = [192, 0, 2, i as u8].into();
                t.begin(ip, account, &format!("guess{i}")).expect("room")
            })
            .collect();
        // ...the next is refused at once, from any address, and counts as nothing.
        let other: IpAddr = [198, 51, 100, 1].into();
        assert!(matches!(
            t.begin(other, account, "guess-x"),
            Err(AuthError::Busy)
        ));
        assert!(matches!(
            t.begin(other, "VICTIM@example.test ", "guess-y"),
            Err(AuthError::Busy)
        ));
        assert_eq!(
            t.current_delay(other, "someone@example.test"),
            Duration::ZERO
        );
        // The same credentials as a guess in flight are no new guess: not refused.
        let ip0: IpAddr = [192, 0, 2, 0].into();
        t.begin(ip0, account, "guess0").expect("a repeat").failed();
        // Other accounts are not affected.
        t.begin(other, "bob@example.test", "pw")
            .expect("room")
            .succeeded();
        // As guesses finish, room comes back.
        drop(waiting);
        t.begin(other, account, "guess-z")
            .expect("room again")
            .failed();
    }

    #[test]
    fn tokens_are_stored_hashed() {
        let token = random_secret(32);
        assert_eq!(token.len(), 43);
        assert_ne!(token_hash(&token), token);
        assert_eq!(token_hash(&token).len(), 64);
    }
}
