//! The inbound SMTP server: the sans-I/O session, the per-connection driver, and the policy
//! trait its events ask (MaiRust's policy is part of [`crate::inbound`]).

pub mod address;
pub mod connection;
pub mod policy;
pub mod reply;
pub mod session;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::config::Config;

/// Which port a connection came in on; it decides the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Port 25: mail for hosted domains and existing users only, no AUTH.
    Mx,
    /// Port 587: AUTH (after STARTTLS) required before MAIL.
    Submission,
}

impl ListenerKind {
    /// Label used in logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Mx => "smtp",
            Self::Submission => "submission",
        }
    }
}

/// What a session driver needs from the rest of the process (the policy it is given decides
/// everything else).
pub struct SessionContext {
    /// The configuration.
    pub config: Arc<Config>,
    /// STARTTLS acceptor, if a certificate is available.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Flips to true when the server shuts down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Test hooks.
    pub faults: Arc<Faults>,
}

/// Test-only fault hooks, reachable only when `server.fault_injection` is on.
#[derive(Debug, Default)]
pub struct Faults {
    /// The next session panics as it starts.
    pub panic_next_session: AtomicBool,
}
