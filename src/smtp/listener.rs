//! The SMTP listener actor: accepts connections and supervises one session actor per
//! connection.
//!
//! Accepting runs in a task owned by the listener's state, so it stops with the listener and a
//! restarted listener can bind again. A session that panics is logged and counted; it takes
//! down its own connection only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::connection::{SessionActor, SessionArgs};
use super::{LimitExceeded, ListenerKind, SmtpContext};
use crate::events::{self, SmtpConnectionRefused, SmtpSessionFailed};

/// Messages to a listener.
pub enum ListenerMsg {
    /// A connection was accepted.
    Accepted(TcpStream, SocketAddr),
}

/// What a listener is started with.
pub struct ListenerArgs {
    /// Shared session context.
    pub ctx: Arc<SmtpContext>,
    /// MX or submission.
    pub kind: ListenerKind,
    /// Address to bind.
    pub addr: SocketAddr,
}

/// The listener actor.
pub struct SmtpListener;

/// Aborts the accept task when the listener's state goes away.
struct AcceptTask(tokio::task::JoinHandle<()>);

impl Drop for AcceptTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The listener's state.
pub struct ListenerState {
    ctx: Arc<SmtpContext>,
    kind: ListenerKind,
    _accept: AcceptTask,
}

async fn accept_loop(listener: TcpListener, myself: ActorRef<ListenerMsg>, kind: ListenerKind) {
    let mut backoff = Duration::from_millis(10);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                if myself
                    .send_message(ListenerMsg::Accepted(stream, peer))
                    .is_err()
                {
                    return;
                }
            }
            Err(error) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(listener = kind.label(), %error, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn refuse(mut stream: TcpStream, hostname: String, why: LimitExceeded) {
    let text = match why {
        LimitExceeded::Total => "Too many connections, try again later",
        LimitExceeded::PerIp => "Too many connections from your address, try again later",
    };
    let reply = format!("421 4.7.0 {hostname} {text}\r\n");
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(reply.as_bytes())).await;
    let _ = stream.shutdown().await;
}

impl Actor for SmtpListener {
    type Msg = ListenerMsg;
    type State = ListenerState;
    type Arguments = ListenerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ListenerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let listener = TcpListener::bind(args.addr).await.map_err(|e| {
            format!(
                "cannot listen on {} for {}: {e}; check server.bind and the port settings",
                args.addr,
                args.kind.label()
            )
        })?;
        tracing::info!(listener = args.kind.label(), addr = %args.addr, "SMTP listener ready");
        let task = tokio::spawn(accept_loop(listener, myself, args.kind));
        Ok(ListenerState {
            ctx: args.ctx,
            kind: args.kind,
            _accept: AcceptTask(task),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ListenerMsg::Accepted(stream, peer) = message;
        let label = state.kind.label();
        match state.ctx.limits.try_acquire(peer.ip()) {
            Err(why) => {
                events::emit(SmtpConnectionRefused {
                    listener: label,
                    peer,
                    limit: &why,
                });
                tokio::spawn(refuse(
                    stream,
                    state.ctx.config.server.hostname.clone(),
                    why,
                ));
            }
            Ok(guard) => {
                let _ = stream.set_nodelay(true);
                let args = SessionArgs {
                    ctx: state.ctx.clone(),
                    kind: state.kind,
                    stream,
                    peer,
                    guard,
                };
                Actor::spawn_linked(None, SessionActor, args, myself.get_cell()).await?;
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(_, error) = event {
            events::emit(SmtpSessionFailed {
                listener: state.kind.label(),
                error: &error,
            });
        }
        Ok(())
    }
}
