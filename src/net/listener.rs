//! A listener actor for any line protocol: binds, accepts, counts each connection against
//! the shared [`ConnectionLimits`] as it is accepted, and supervises one session actor per
//! connection that got a slot.
//!
//! The limit is checked in the accept task, before a socket enters any mailbox: a flood of
//! connections is refused (with the protocol's own words) as fast as it arrives, and the
//! listener's mailbox holds at most the connections that have a slot. Accepting runs in a task
//! owned by the listener's state, so it stops with the listener and a restarted listener can
//! bind again. A session that panics is logged and counted; it takes down its own connection
//! only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::limits::{ConnectionGuard, ConnectionLimits, LimitExceeded};
use crate::events::{self, SmtpConnectionRefused, SmtpSessionFailed};
use crate::task::OwnedTask;

/// What a protocol plugs into a [`Listener`].
pub trait Protocol: Send + Sync + 'static {
    /// The actor that serves one connection.
    type Session: Actor + Default;

    /// The listener's name in logs and metrics (`smtp`, `submission`, ...).
    fn label(&self) -> &'static str;

    /// What a connection refused by a limit is told before it is closed (a whole line).
    fn refusal(&self, why: LimitExceeded) -> String;

    /// The session actor's arguments for a connection that got its slot.
    fn session(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        guard: ConnectionGuard,
    ) -> <Self::Session as Actor>::Arguments;
}

/// Messages to a listener.
pub enum ListenerMsg {
    /// A connection was accepted and holds its slot.
    Accepted(TcpStream, SocketAddr, ConnectionGuard),
}

/// What a listener is started with.
pub struct ListenerArgs<P> {
    /// The protocol served.
    pub protocol: Arc<P>,
    /// The limits shared by every listener of the process.
    pub limits: Arc<ConnectionLimits>,
    /// Address to bind.
    pub addr: SocketAddr,
}

/// The listener actor.
pub struct Listener<P>(std::marker::PhantomData<fn() -> P>);

impl<P> Default for Listener<P> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// The listener's state.
pub struct ListenerState<P> {
    protocol: Arc<P>,
    _accept: OwnedTask,
}

async fn accept_loop<P: Protocol>(
    listener: TcpListener,
    myself: ActorRef<ListenerMsg>,
    protocol: Arc<P>,
    limits: Arc<ConnectionLimits>,
) {
    let mut backoff = Duration::from_millis(10);
    // Refusals being written: owned here (they stop with the listener) and capped, so a
    // flood costs at most this many sockets lingering for the refusal's few seconds.
    let mut refusing = tokio::task::JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                match limits.try_acquire(peer.ip()) {
                    Ok(guard) => {
                        if myself
                            .send_message(ListenerMsg::Accepted(stream, peer, guard))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(why) => {
                        events::emit(SmtpConnectionRefused {
                            listener: protocol.label(),
                            peer,
                            limit: &why,
                        });
                        while refusing.try_join_next().is_some() {}
                        if refusing.len() < MAX_REFUSALS_IN_FLIGHT {
                            refusing.spawn(refuse(stream, protocol.refusal(why)));
                        }
                    }
                }
            }
            Err(error) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(listener = protocol.label(), %error, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Most refusals written at once; past that a refused socket is closed without a reply.
const MAX_REFUSALS_IN_FLIGHT: usize = 256;

async fn refuse(mut stream: TcpStream, line: String) {
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(line.as_bytes())).await;
    let _ = stream.shutdown().await;
}

impl<P: Protocol> Actor for Listener<P> {
    type Msg = ListenerMsg;
    type State = ListenerState<P>;
    type Arguments = ListenerArgs<P>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ListenerArgs<P>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let label = args.protocol.label();
        let listener = TcpListener::bind(args.addr).await.map_err(|e| {
            format!(
                "cannot listen on {} for {label}: {e}; check server.bind and the port settings",
                args.addr
            )
        })?;
        tracing::info!(listener = label, addr = %args.addr, "listener ready");
        let accept = OwnedTask::spawn(accept_loop(
            listener,
            myself,
            args.protocol.clone(),
            args.limits,
        ));
        Ok(ListenerState {
            protocol: args.protocol,
            _accept: accept,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ListenerMsg::Accepted(stream, peer, guard) = message;
        let _ = stream.set_nodelay(true);
        let args = state.protocol.session(stream, peer, guard);
        Actor::spawn_linked(None, P::Session::default(), args, myself.get_cell()).await?;
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
                listener: state.protocol.label(),
                error: &error,
            });
        }
        Ok(())
    }
}
