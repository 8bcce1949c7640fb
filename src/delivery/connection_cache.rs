//! Idle outbound SMTP connections, kept open for a short while after a delivery so that mail
//! for the same host arriving just after it (the next wake-up of a partition, or another
//! partition's rows) leaves over the connection already open: no TCP connect, greeting, EHLO,
//! TLS handshake or AUTH again. Postfix's connection cache does the same for its
//! `smtp_connection_cache_time_limit` (2 s).
//!
//! Each idle connection is owned by a keeper task that closes it (QUIT) when its idle time is
//! up, drops it when the server speaks or hangs up unasked (a `421` idle timeout), and hands
//! it over when a delivery asks for it. Idle connections hold no slot of the
//! [`DestinationLimiter`](super::worker::DestinationLimiter): a delivery takes its slot
//! first and then a cached connection before opening a new one, so a host has no more
//! connections in use or idle than its limit (besides any still saying QUIT).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::delivery::outbound::Connection;

/// A connection is not reused past this age (Postfix's `smtp_connection_reuse_time_limit`),
/// so a long-lived one does not pin a host whose DNS or configuration changed meanwhile.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);

/// Idle connections per destination host, each held by its keeper task.
pub struct ConnectionCache {
    idle_time: Duration,
    per_host: usize,
    max_messages: usize,
    hosts: Mutex<HashMap<String, Vec<Keeper>>>,
}

/// The handle of one idle connection's keeper: send it a channel and it sends the connection
/// back, unless it closed the connection meanwhile (then the send or the reply fails).
struct Keeper {
    take: oneshot::Sender<oneshot::Sender<Connection>>,
}

impl ConnectionCache {
    /// Keeps up to `per_host` idle connections per host for `idle_time` each (zero keeps
    /// none), and reuses a connection until it has carried `max_messages`.
    pub fn new(idle_time: Duration, per_host: usize, max_messages: usize) -> Self {
        Self {
            idle_time,
            per_host: per_host.max(1),
            max_messages,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// An idle connection to `host`, the most recently used first; `None` when there is none.
    pub async fn take(&self, host: &str) -> Option<Connection> {
        let key = host.to_ascii_lowercase();
        loop {
            let keeper = {
                let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
                let list = hosts.get_mut(&key)?;
                let keeper = list.pop();
                if list.is_empty() {
                    hosts.remove(&key);
                }
                keeper?
            };
            let (reply, connection) = oneshot::channel();
            if keeper.take.send(reply).is_ok()
                && let Ok(conn) = connection.await
            {
                return Some(conn);
            }
            // That keeper closed its connection just now: try the next one.
        }
    }

    /// Keeps `conn` for the next delivery to its host when it can take more mail and there is
    /// room; otherwise closes it (in the background: the caller's results need not wait for
    /// the QUIT).
    pub fn put(&self, conn: Connection) {
        if self.idle_time.is_zero() || !conn.reusable(self.max_messages, MAX_CONNECTION_AGE) {
            tokio::spawn(conn.close());
            return;
        }
        let key = conn.host().to_ascii_lowercase();
        let (take, asked) = oneshot::channel();
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let list = hosts.entry(key).or_default();
        list.retain(|k| !k.take.is_closed());
        if list.len() < self.per_host {
            list.push(Keeper { take });
            tokio::spawn(keep(conn, asked, self.idle_time));
        } else {
            tokio::spawn(conn.close());
        }
    }
}

/// Holds `conn` until a delivery asks for it, its idle time is up, or the server speaks.
async fn keep(
    mut conn: Connection,
    asked: oneshot::Receiver<oneshot::Sender<Connection>>,
    idle_time: Duration,
) {
    enum Next {
        HandOver(oneshot::Sender<Connection>),
        Close,
        Drop,
    }
    let next = tokio::select! {
        asked = asked => match asked {
            Ok(reply) => Next::HandOver(reply),
            Err(_) => Next::Close,
        },
        () = tokio::time::sleep(idle_time) => Next::Close,
        () = conn.spoke_unasked() => Next::Drop,
    };
    match next {
        Next::HandOver(reply) => {
            if let Err(conn) = reply.send(conn) {
                conn.close().await;
            }
        }
        Next::Close => conn.close().await,
        Next::Drop => {
            tracing::debug!(host = %conn.host(), addr = %conn.addr(), "idle connection closed by the server");
        }
    }
}
