//! What every protocol's listeners share: the listener actor, the connection limits, a
//! stream that STARTTLS upgrades in place, TLS (certificates and configurations), and the
//! drain at shutdown. SMTP uses it now; IMAP and POP3 plug in the same way.

pub mod limits;
pub mod listener;
pub mod stream;
pub mod tls;

use std::time::Duration;

pub use limits::{ConnectionGuard, ConnectionLimits, LimitExceeded};
pub use listener::{Listener, ListenerArgs, Protocol};

/// After sessions were told to stop (their `421`, `BYE`...): waits until every counted
/// connection has ended, at most `timeout`.
pub async fn drain(limits: &ConnectionLimits, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while limits.open_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
