//! The POP3 driver: one actor per connection owns the socket, the TLS handshake (POP3S at
//! once, or after STLS), the idle timer and the stores, and feeds the sans-I/O
//! [`Session`] one command line at a time.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::session::{Action, LineTooLong, Lines, Message, Session, SessionConfig, retrieved};
use crate::auth::{AuthError, Authenticator};
use crate::config::Config;
use crate::events::{self, Pop3AuthFailed, Pop3Command, Pop3SessionOpened};
use crate::message::{as_delivered, delivered_size};
use crate::net::{ConnectionGuard, LimitExceeded, Protocol};
use crate::store::{INBOX, Stores, User};

/// How long a client may stay silent (RFC 1939's autologout timer: at least ten minutes).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// How long a TLS handshake (POP3S, or after STLS) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Messages listed per store query while the maildrop is read at sign-in.
const LISTING_PAGE: u32 = 1000;

/// What POP3 sessions need from the rest of the process.
pub struct Pop3Context {
    /// The configuration.
    pub config: Arc<Config>,
    /// Mailboxes and bodies.
    pub stores: Stores,
    /// Password checks and their throttle, shared with SMTP AUTH and the API.
    pub authenticator: Arc<Authenticator>,
    /// The server certificate, for POP3S and STLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Flips to true when the server shuts down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// POP3 on one listener, for [`crate::net::Listener`].
pub struct Pop3Protocol {
    /// Shared context.
    pub ctx: Arc<Pop3Context>,
    /// POP3S (TLS from the first byte) rather than POP3 with STLS.
    pub implicit_tls: bool,
}

impl Protocol for Pop3Protocol {
    type Session = Pop3Actor;

    fn label(&self) -> &'static str {
        if self.implicit_tls { "pop3s" } else { "pop3" }
    }

    fn refusal(&self, why: LimitExceeded) -> String {
        let text = match why {
            LimitExceeded::Total => "Too many connections, try again later",
            LimitExceeded::PerIp => "Too many connections from your address, try again later",
        };
        format!("-ERR [SYS/TEMP] {text}\r\n")
    }

    fn session(&self, stream: TcpStream, peer: SocketAddr, guard: ConnectionGuard) -> Pop3Args {
        Pop3Args {
            ctx: self.ctx.clone(),
            implicit_tls: self.implicit_tls,
            label: self.label(),
            stream,
            peer,
            _guard: guard,
        }
    }
}

/// What a POP3 session actor is started with.
pub struct Pop3Args {
    ctx: Arc<Pop3Context>,
    implicit_tls: bool,
    label: &'static str,
    stream: TcpStream,
    peer: SocketAddr,
    /// The connection's slot, freed when the session ends however it ends.
    _guard: ConnectionGuard,
}

/// One actor per connection; its only message runs the connection to its end.
#[derive(Default)]
pub struct Pop3Actor;

impl Actor for Pop3Actor {
    type Msg = ();
    type State = Option<Pop3Args>;
    type Arguments = Pop3Args;

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        args: Pop3Args,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(())?;
        Ok(Some(args))
    }

    async fn handle(
        &self,
        myself: ActorRef<()>,
        _message: (),
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(args) = state.take() {
            let peer = args.peer;
            events::emit(Pop3SessionOpened {
                listener: args.label,
            });
            if let Err(error) = Connection::new(args).run().await {
                tracing::debug!(%peer, %error, "POP3 connection ended with an error");
            }
        }
        myself.stop(None);
        Ok(())
    }
}

type Stream = crate::net::stream::Stream<tokio_rustls::server::TlsStream<TcpStream>>;

struct Connection {
    ctx: Arc<Pop3Context>,
    implicit_tls: bool,
    stream: Stream,
    peer: SocketAddr,
    user: Option<User>,
    /// Bytes read and not yet handled.
    lines: Lines,
    _guard: ConnectionGuard,
}

/// The command's name for the metric: a known verb, or `unknown` (a client cannot add
/// series).
fn command_name(line: &[u8]) -> &'static str {
    const VERBS: [&str; 17] = [
        "CAPA", "STLS", "USER", "PASS", "AUTH", "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE",
        "RSET", "NOOP", "QUIT", "APOP", "UTF8", "LANG",
    ];
    let verb = line.split(|&b| b == b' ').next().unwrap_or_default();
    VERBS
        .iter()
        .find(|v| v.as_bytes().eq_ignore_ascii_case(verb))
        .copied()
        .unwrap_or("unknown")
}

fn outcome(reply: &[u8]) -> &'static str {
    if reply.starts_with(b"-") { "err" } else { "ok" }
}

impl Connection {
    fn new(args: Pop3Args) -> Self {
        Self {
            ctx: args.ctx,
            implicit_tls: args.implicit_tls,
            stream: Stream::Plain(args.stream),
            peer: args.peer,
            user: None,
            lines: Lines::default(),
            _guard: args._guard,
        }
    }

    async fn start_tls(&mut self) -> io::Result<()> {
        let (Some(acceptor), Some(tcp)) = (self.ctx.tls.clone(), self.stream.take_plain()) else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        // A client that stops in the middle of the handshake holds its slot no longer.
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        self.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }

    /// Closes our side, then reads (and drops) what the client still sends, briefly: closing
    /// with unread input would reset the connection, and the client could lose the last line.
    async fn linger(&mut self) {
        let _ = self.stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while left > 0 {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
                _ => return,
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    async fn run(mut self) -> io::Result<()> {
        if self.implicit_tls {
            self.start_tls().await?;
        }
        let config = &self.ctx.config;
        let mut session = Session::new(SessionConfig {
            hostname: config.server.hostname.clone(),
            tls_active: self.implicit_tls,
            tls_available: self.ctx.tls.is_some(),
            insecure_auth: config.smtp.allow_insecure_auth,
        });
        self.send(session.greeting().as_bytes()).await?;
        let mut shutdown = self.ctx.shutdown.clone();
        let mut buf = vec![0u8; 8192];
        loop {
            loop {
                let line = match self.lines.next_line() {
                    Ok(Some(line)) => line,
                    Ok(None) => break,
                    Err(LineTooLong) => {
                        self.send(b"-ERR Line too long; closing\r\n").await?;
                        self.linger().await;
                        return Ok(());
                    }
                };
                let command = command_name(&line);
                let action = session.command(&line);
                if !self.act(&mut session, command, action).await? {
                    self.linger().await;
                    return Ok(());
                }
            }
            let read = tokio::select! {
                read = tokio::time::timeout(IDLE_TIMEOUT, self.stream.read(&mut buf)) => read,
                _ = async { shutdown.wait_for(|down| *down).await.map(drop) } => {
                    self.send(b"-ERR [SYS/TEMP] Server shutting down; try again shortly\r\n").await?;
                    return Ok(());
                }
            };
            match read {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => self.lines.push(&buf[..n]),
                Ok(Err(error)) => return Err(error),
                Err(_) => {
                    self.send(b"-ERR Autologout; idle for too long\r\n").await?;
                    return Ok(());
                }
            }
        }
    }

    /// Carries out one action; `false` when the connection is to close.
    async fn act(
        &mut self,
        session: &mut Session,
        command: &'static str,
        action: Action,
    ) -> io::Result<bool> {
        let mut action = action;
        loop {
            let (reply, open) = match action {
                Action::Send(reply) => (reply.into_bytes(), true),
                Action::Close(reply) => (reply.into_bytes(), false),
                Action::StartTls(reply) => {
                    self.send(reply.as_bytes()).await?;
                    events::emit(Pop3Command {
                        command,
                        result: "ok",
                    });
                    // Whatever the client sent before the handshake was not protected.
                    self.lines.clear();
                    self.start_tls().await?;
                    session.tls_started();
                    return Ok(true);
                }
                Action::Authenticate { user, password } => {
                    action = self.authenticate(session, &user, &password).await;
                    continue;
                }
                Action::Retrieve { id, top } => (self.retrieve(id, top).await, true),
                Action::Update(doomed) => {
                    let failed = self.delete(&doomed).await;
                    (session.updated(failed).into_bytes(), false)
                }
            };
            events::emit(Pop3Command {
                command,
                result: outcome(&reply),
            });
            self.send(&reply).await?;
            return Ok(open);
        }
    }

    async fn authenticate(&mut self, session: &mut Session, user: &str, password: &str) -> Action {
        let checked = self
            .ctx
            .authenticator
            .authenticate(self.peer.ip(), user, password)
            .await;
        let account = match checked {
            Ok(Some(account)) => account,
            Ok(None) => {
                events::emit(Pop3AuthFailed {
                    peer: self.peer,
                    user,
                });
                return session.sign_in_failed(false);
            }
            Err(error @ AuthError::Busy) => {
                tracing::warn!(peer = %self.peer, user, "POP3 sign-in refused: {error}");
                return session.sign_in_failed(true);
            }
            Err(error) => {
                tracing::error!(peer = %self.peer, user, %error, "POP3 sign-in lookup failed");
                return session.sign_in_failed(true);
            }
        };
        match self.maildrop(account.id).await {
            Ok(maildrop) => {
                tracing::info!(peer = %self.peer, user, messages = maildrop.len(), "POP3 sign-in");
                self.user = Some(account);
                Action::Send(session.signed_in(maildrop))
            }
            Err(error) => {
                tracing::error!(peer = %self.peer, user, %error, "cannot list the POP3 maildrop");
                session.sign_in_failed(true)
            }
        }
    }

    /// The user's INBOX, oldest first, each message with the size RETR will send.
    async fn maildrop(&self, user_id: i64) -> Result<Vec<Message>, crate::store::StoreError> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .ctx
                .stores
                .mailboxes
                .list_mailbox(user_id, INBOX, LISTING_PAGE, cursor.as_deref())
                .await?;
            out.extend(page.items.iter().map(|item| Message {
                id: item.id,
                size: u64::try_from(delivered_size(&item.envelope_from, item.size)).unwrap_or(0),
            }));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        out.reverse();
        Ok(out)
    }

    async fn retrieve(&self, id: i64, top: Option<usize>) -> Vec<u8> {
        let Some(user) = &self.user else {
            return b"-ERR Sign in first\r\n".to_vec();
        };
        let stores = &self.ctx.stores;
        let item = match stores.mailboxes.get_mailbox_item(user.id, id).await {
            Ok(Some(item)) => item,
            Ok(None) => return b"-ERR That message was deleted meanwhile\r\n".to_vec(),
            Err(error) => {
                tracing::error!(%error, id, "cannot read a POP3 message");
                return b"-ERR [SYS/TEMP] Cannot read the message now; try again\r\n".to_vec();
            }
        };
        match stores.blobs.get(&item.blob_key).await {
            Ok(body) => retrieved(&as_delivered(&item.envelope_from, &body), top),
            Err(error) => {
                tracing::error!(%error, id, "cannot read a POP3 message body");
                b"-ERR [SYS/TEMP] Cannot read the message now; try again\r\n".to_vec()
            }
        }
    }

    /// Removes the messages marked deleted; returns how many could not be.
    async fn delete(&self, doomed: &[i64]) -> usize {
        let Some(user) = &self.user else {
            return 0;
        };
        let stores = &self.ctx.stores;
        let mut failed = 0;
        for &id in doomed {
            match stores.mailboxes.delete_mailbox_item(user.id, id).await {
                Ok(Some(orphans)) => stores.delete_blobs(&orphans).await,
                // Deleted elsewhere meanwhile: what the client wanted.
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(%error, id, "cannot delete a POP3 message");
                    failed += 1;
                }
            }
        }
        failed
    }
}
