//! The inbound SMTP server: the sans-I/O session, the per-connection driver, the policy its
//! events ask, and the [`Protocol`] that puts it behind a [`crate::net::Listener`].

pub mod address;
pub mod connection;
pub mod policy;
pub mod reply;
pub mod session;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::acceptance::Acceptor;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::net::{ConnectionGuard, LimitExceeded, Protocol};
use crate::store::Stores;

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

/// Everything a session needs from the rest of the process.
pub struct SmtpContext {
    /// The configuration.
    pub config: Arc<Config>,
    /// Metadata and blobs.
    pub stores: Stores,
    /// The acceptance path (blob, group commit, queue hint).
    pub acceptor: Acceptor,
    /// STARTTLS acceptor, if a certificate is available.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Password checks, shared by all sessions and the API.
    pub authenticator: Arc<Authenticator>,
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

/// SMTP on one listener (MX or submission), for [`crate::net::Listener`].
pub struct SmtpProtocol {
    /// Shared session context.
    pub ctx: Arc<SmtpContext>,
    /// MX or submission.
    pub kind: ListenerKind,
}

impl Protocol for SmtpProtocol {
    type Session = connection::SessionActor;

    fn label(&self) -> &'static str {
        self.kind.label()
    }

    fn refusal(&self, why: LimitExceeded) -> String {
        let text = match why {
            LimitExceeded::Total => "Too many connections, try again later",
            LimitExceeded::PerIp => "Too many connections from your address, try again later",
        };
        format!("421 4.7.0 {} {text}\r\n", self.ctx.config.server.hostname)
    }

    fn session(
        &self,
        stream: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        guard: ConnectionGuard,
    ) -> connection::SessionArgs {
        connection::SessionArgs {
            ctx: self.ctx.clone(),
            kind: self.kind,
            stream,
            peer,
            guard,
        }
    }
}
