//! The per-connection driver: one session actor owns the socket, the timer and the TLS
//! upgrade, and feeds the sans-I/O [`ServerSession`] with bytes and the answers to its events.
//!
//! What those answers are (AUTH, senders, recipients, the acceptance path behind the `250`) is
//! decided by a [`SessionPolicy`]; the driver only asks it, one call per event.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::policy::SessionPolicy;
use super::session::{Event, PeerInfo, ServerSession, SessionConfig};
use super::{ListenerKind, SessionContext};
use crate::events::{self, SmtpConnectionClosed, SmtpConnectionOpened};
use crate::net::ConnectionGuard;

/// The connection, plain or after STARTTLS.
type Stream = crate::net::stream::Stream<tokio_rustls::server::TlsStream<TcpStream>>;

/// What a session actor is started with.
pub struct SessionArgs<P> {
    /// Shared context.
    pub ctx: Arc<SessionContext>,
    /// The listener it came in on.
    pub kind: ListenerKind,
    /// The accepted socket.
    pub stream: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// Its slot in the connection limits, freed when the session ends however it ends.
    pub guard: ConnectionGuard,
    /// What decides the session's events.
    pub policy: P,
}

/// One actor per connection; its only message runs the connection to its end.
pub struct SessionActor<P>(std::marker::PhantomData<fn() -> P>);

impl<P> Default for SessionActor<P> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<P: SessionPolicy + Sync + 'static> Actor for SessionActor<P> {
    type Msg = ();
    type State = Option<SessionArgs<P>>;
    type Arguments = SessionArgs<P>;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        args: SessionArgs<P>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(Some(args))
    }

    async fn post_start(
        &self,
        myself: ActorRef<()>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        myself.send_message(())?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<()>,
        _message: (),
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(args) = state.take() {
            let label = args.kind.label();
            events::emit(SmtpConnectionOpened { listener: label });
            let _active = ActiveGauge(label);
            if args
                .ctx
                .faults
                .panic_next_session
                .swap(false, Ordering::SeqCst)
            {
                panic!("injected session fault");
            }
            let peer = args.peer;
            if let Err(error) = Connection::new(args).run().await {
                tracing::debug!(%peer, %error, "SMTP connection ended with an error");
            }
        }
        myself.stop(None);
        Ok(())
    }
}

/// Decrements the active-connections gauge however the session ends.
struct ActiveGauge(&'static str);

impl Drop for ActiveGauge {
    fn drop(&mut self) {
        events::emit(SmtpConnectionClosed { listener: self.0 });
    }
}

/// Read buffer of a session exchanging commands.
const COMMAND_BUFFER: usize = 4 * 1024;
/// Read buffer of a session once it transfers a message.
const TRANSFER_BUFFER: usize = 64 * 1024;

/// One connection: its stream, its session state machine and the policy that answers the
/// session's events.
struct Connection<P> {
    ctx: Arc<SessionContext>,
    stream: Stream,
    session: ServerSession,
    policy: P,
    _guard: ConnectionGuard,
}

impl<P: SessionPolicy> Connection<P> {
    fn new(args: SessionArgs<P>) -> Self {
        let config = &args.ctx.config;
        let session = ServerSession::new(
            SessionConfig {
                hostname: config.server.hostname.clone(),
                submission: args.kind == ListenerKind::Submission,
                tls_available: args.ctx.tls.is_some(),
                allow_insecure_auth: config.smtp.allow_insecure_auth,
                max_message_size: config.smtp.max_message_size,
                max_recipients: config.smtp.max_recipients,
                max_line_length: config.smtp.max_line_length,
                max_errors: config.smtp.max_errors,
                max_junk_commands: config.smtp.max_junk_commands,
                vrfy_enabled: config.smtp.vrfy,
                trusted_client: config.smtp.is_trusted(args.peer.ip()),
            },
            PeerInfo { ip: args.peer.ip() },
        );
        Self {
            stream: Stream::Plain(args.stream),
            session,
            policy: args.policy,
            ctx: args.ctx,
            _guard: args.guard,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        let mut wrote = false;
        while let Some(out) = self.session.poll_output() {
            self.stream.write_all(&out).await?;
            wrote = true;
        }
        if wrote {
            self.stream.flush().await?;
        }
        Ok(())
    }

    async fn run(mut self) -> anyhow::Result<()> {
        // Small while the session only exchanges commands (most of an idle session's memory),
        // grown while a message transfer fills it.
        let mut buf = vec![0u8; COMMAND_BUFFER];
        let mut shutdown = self.ctx.shutdown.clone();
        let smtp = &self.ctx.config.smtp;
        let (command_deadline, data_deadline) = (smtp.command_deadline, smtp.data_deadline);
        // When the command line being read began (and the line count then), and when the
        // current DATA/BDAT transfer began: the read timeouts are idle timeouts, these bound
        // the whole, so a client trickling one byte at a time cannot hold the connection.
        let mut command_started: Option<(Instant, u64)> = None;
        let mut transfer_started: Option<Instant> = None;
        let mut errors_seen = 0;
        loop {
            if let Some(event) = self.session.poll_event() {
                // Boxed: the event's future (a TLS handshake, the acceptance path) is large,
                // and inline it would be part of every session's task, idle ones included.
                Box::pin(self.handle_event(event)).await?;
                continue;
            }
            self.delay_errors(&mut errors_seen).await;
            self.flush().await?;
            if self.session.is_closed() {
                break;
            }
            let now = Instant::now();
            if !self.session.in_transfer() {
                transfer_started = None;
            } else if transfer_started.is_none() {
                transfer_started = Some(now);
            }
            let lines = self.session.lines_read();
            command_started = match command_started {
                _ if !self.session.has_partial_command() => None,
                Some((at, seen)) if seen == lines => Some((at, seen)),
                _ => Some((now, lines)),
            };
            let mut timeout = if self.session.expects_data() {
                self.ctx.config.smtp.data_timeout
            } else {
                self.ctx.config.smtp.command_timeout
            };
            if let Some(at) = transfer_started {
                timeout = timeout.min(data_deadline.saturating_sub(at.elapsed()));
            }
            if let Some((at, _)) = command_started {
                timeout = timeout.min(command_deadline.saturating_sub(at.elapsed()));
            }
            tokio::select! {
                read = tokio::time::timeout(timeout, self.stream.read(&mut buf)) => match read {
                    Err(_) => self.session.handle_timeout(),
                    Ok(Ok(0)) => break,
                    Ok(Ok(n)) => {
                        self.session.handle_input(&buf[..n]);
                        // A transfer that fills the buffer gets a bigger one, doubling up to
                        // the transfer size: small messages never pay for zeroing 64 KiB.
                        if n == buf.len() && transfer_started.is_some() && n < TRANSFER_BUFFER {
                            buf.resize(n * 2, 0);
                        }
                    }
                    Ok(Err(e)) => return Err(e.into()),
                },
                _ = shutting_down(&mut shutdown) => {
                    let bye = format!("421 4.3.2 {} Service shutting down\r\n", self.ctx.config.server.hostname);
                    let _ = self.stream.write_all(bye.as_bytes()).await;
                    break;
                }
            }
        }
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    /// Waits `smtp.error_delay` for each bad command past `smtp.soft_error_limit` since the
    /// last call, before their replies go out (Postfix's `smtpd_error_sleep_time`).
    async fn delay_errors(&self, errors_seen: &mut usize) {
        let errors = self.session.error_count();
        let soft = self.ctx.config.smtp.soft_error_limit;
        if errors <= *errors_seen {
            return;
        }
        let new = if soft == 0 {
            0
        } else {
            errors.saturating_sub((*errors_seen).max(soft))
        };
        *errors_seen = errors;
        if new > 0 {
            let delay = self
                .ctx
                .config
                .smtp
                .error_delay
                .saturating_mul(u32::try_from(new).unwrap_or(u32::MAX));
            tokio::time::sleep(delay).await;
        }
    }

    async fn handle_event(&mut self, event: Event) -> anyhow::Result<()> {
        match event {
            Event::StartTls => {
                self.flush().await?;
                let Some(acceptor) = self.ctx.tls.clone() else {
                    anyhow::bail!("STARTTLS without a certificate");
                };
                let Some(tcp) = self.stream.take_plain() else {
                    anyhow::bail!("STARTTLS on a TLS stream");
                };
                let tls = tokio::time::timeout(
                    self.ctx.config.smtp.command_timeout,
                    acceptor.accept(tcp),
                )
                .await??;
                self.stream = Stream::Tls(Box::new(tls));
                self.session.tls_started();
            }
            Event::Authenticate {
                mechanism,
                authzid,
                username,
                password,
            } => {
                let answer = self
                    .policy
                    .authenticate(mechanism, authzid.as_deref(), &username, &password)
                    .await;
                self.session.answer(answer);
            }
            Event::MailFrom { address, .. } => {
                let answer = self
                    .policy
                    .mail_from(&address, self.session.authenticated_user())
                    .await;
                self.session.answer(answer);
            }
            Event::Recipient { address } => {
                let answer = self
                    .policy
                    .rcpt_to(&address, self.session.authenticated_user())
                    .await;
                self.session.answer(answer);
            }
            Event::Message { envelope, data } => {
                let answer = self.policy.message(envelope, data).await;
                self.session.answer(answer);
            }
        }
        Ok(())
    }
}

/// Resolves once shutdown starts (the watch guard must not live across an await).
async fn shutting_down(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
