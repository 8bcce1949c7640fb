//! The IMAP driver: one actor per connection owns the socket, the TLS handshake (IMAPS at
//! once, or after STARTTLS), the idle timer and the stores; commands come whole from the
//! [`Framer`], are parsed by imap-codec and answered here.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::auth::AuthMechanism;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::command::{FetchModifier, SelectParameter, StoreModifier};
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName};
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use imap_codec::imap_types::status::StatusDataItemName;
use mail_parser::MessageParser;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::fetch::fetch_item;
use super::framing::{Frame, Framer, FramingError, Next};
use super::list::{self, ListRequest, StatusItem};
use super::render;
use super::search::{
    Candidate, Returns, esearch_response, needs_message, split_return, uses_modseq,
};
use super::selected::{Reporting, SYSTEM_FLAGS, Selected, flags_response, uid_set};
use super::utf7;
use crate::auth::{AuthError, Authenticator};
use crate::config::Config;
use crate::events::{self, ImapAuthFailed, ImapCommand, ImapIdle, ImapSessionOpened};
use crate::inbound::commit::{Acceptor, Incoming};
use crate::message::as_delivered;
use crate::net::{ConnectionGuard, LimitExceeded, Protocol};
use crate::store::{
    FolderEntry, LocalDelivery, RecipientLookup, StoreError, Stores, User, flags, folder_name,
};

/// How long a client may stay silent outside IDLE (RFC 9051: at least 30 minutes).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long a TLS handshake (IMAPS, or after STARTTLS) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often an idling client's folder is checked for changes (on every node alike, so a
/// change made through any node reaches it within this).
const IDLE_POLL: Duration = Duration::from_millis(500);

/// What IMAP sessions need from the rest of the process.
pub struct ImapContext {
    /// The configuration.
    pub config: Arc<Config>,
    /// Mailboxes and bodies.
    pub stores: Stores,
    /// Password checks and their throttle, shared with SMTP AUTH, POP3 and the API.
    pub authenticator: Arc<Authenticator>,
    /// Makes APPENDed messages durable, as accepted mail is.
    pub acceptor: Acceptor,
    /// The server certificate, for IMAPS and STARTTLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Flips to true when the server shuts down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Open sessions per account on this node.
    pub sessions: UserSessions,
}

/// Open IMAP sessions per account on this node, for `imap.max_connections_per_user`.
#[derive(Debug, Default, Clone)]
pub struct UserSessions(Arc<std::sync::Mutex<std::collections::HashMap<i64, usize>>>);

impl UserSessions {
    /// A slot for one more session of `user`, or `None` if it has `limit` already.
    fn enter(&self, user: i64, limit: usize) -> Option<UserSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(user).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(UserSlot {
            sessions: self.clone(),
            user,
        })
    }
}

/// One signed-in session's place in [`UserSessions`], given back when the session ends.
#[derive(Debug)]
struct UserSlot {
    sessions: UserSessions,
    user: i64,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut open = self.sessions.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// Counts an IDLE in `mairust_imap_idle_sessions` while it lasts.
struct Idling;

impl Idling {
    fn start() -> Self {
        events::emit(ImapIdle { started: true });
        Self
    }
}

impl Drop for Idling {
    fn drop(&mut self) {
        events::emit(ImapIdle { started: false });
    }
}

/// Bad commands in a row before sign-in that end the connection.
const BAD_BEFORE_SIGN_IN: u32 = 3;

/// IMAP on one listener, for [`crate::net::Listener`].
pub struct ImapProtocol {
    /// Shared context.
    pub ctx: Arc<ImapContext>,
    /// IMAPS (TLS from the first byte) rather than IMAP with STARTTLS.
    pub implicit_tls: bool,
}

impl Protocol for ImapProtocol {
    type Session = ImapActor;

    fn label(&self) -> &'static str {
        if self.implicit_tls { "imaps" } else { "imap" }
    }

    fn refusal(&self, why: LimitExceeded) -> String {
        let text = match why {
            LimitExceeded::Total => "Too many connections, try again later",
            LimitExceeded::PerIp => "Too many connections from your address, try again later",
        };
        format!("* BYE [UNAVAILABLE] {text}\r\n")
    }

    fn session(&self, stream: TcpStream, peer: SocketAddr, guard: ConnectionGuard) -> ImapArgs {
        ImapArgs {
            ctx: self.ctx.clone(),
            implicit_tls: self.implicit_tls,
            label: self.label(),
            stream,
            peer,
            guard,
        }
    }
}

/// What an IMAP session actor is started with.
pub struct ImapArgs {
    ctx: Arc<ImapContext>,
    implicit_tls: bool,
    label: &'static str,
    stream: TcpStream,
    peer: SocketAddr,
    /// The connection's slot, freed when the session ends however it ends.
    guard: ConnectionGuard,
}

/// One actor per connection; its only message runs the connection to its end.
#[derive(Default)]
pub struct ImapActor;

impl Actor for ImapActor {
    type Msg = ();
    type State = Option<ImapArgs>;
    type Arguments = ImapArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        args: ImapArgs,
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
            events::emit(ImapSessionOpened {
                listener: args.label,
            });
            if let Err(error) = Connection::new(args).run().await {
                tracing::debug!(%peer, %error, "IMAP connection ended with an error");
            }
        }
        myself.stop(None);
        Ok(())
    }
}

type Stream = crate::net::stream::Stream<tokio_rustls::server::TlsStream<TcpStream>>;

/// What a command handler leaves the connection to do.
enum After {
    /// Read the next command.
    Continue,
    /// Close the connection (LOGOUT, or an unrecoverable error).
    Close,
}

/// A tagged completion: `OK`, `NO` or `BAD` with its text.
struct Done {
    status: &'static str,
    text: String,
}

impl Done {
    fn ok(text: impl Into<String>) -> Self {
        Self {
            status: "OK",
            text: text.into(),
        }
    }
    fn no(text: impl Into<String>) -> Self {
        Self {
            status: "NO",
            text: text.into(),
        }
    }
    /// A completion that is not sent (STARTTLS answered before its handshake).
    fn silent() -> Self {
        Self {
            status: "",
            text: String::new(),
        }
    }
    fn bad(text: impl Into<String>) -> Self {
        Self {
            status: "BAD",
            text: text.into(),
        }
    }
}

/// A store failure as the client sees it; the details go to the log.
fn unavailable(error: &StoreError) -> Done {
    match error {
        StoreError::InvalidFolderName(..) => Done::no(format!("[CANNOT] {error}")),
        StoreError::FolderProtected(..) => Done::no(format!("[CANNOT] {error}")),
        StoreError::AlreadyExists(..) => Done::no(format!("[ALREADYEXISTS] {error}")),
        StoreError::NotFound(..) => Done::no(format!("[NONEXISTENT] {error}")),
        other => {
            tracing::error!(error = %other, "IMAP command failed in the store");
            Done::no("[UNAVAILABLE] The mailbox store cannot answer now; try again")
        }
    }
}

struct Connection {
    ctx: Arc<ImapContext>,
    implicit_tls: bool,
    tls_active: bool,
    stream: Stream,
    peer: SocketAddr,
    user: Option<User>,
    selected: Option<Selected>,
    /// What ENABLE (or a command using it) switched on: CONDSTORE, QRESYNC.
    reporting: Reporting,
    /// The signed-in account's place among its open sessions.
    slot: Option<UserSlot>,
    /// Bad commands in a row before sign-in.
    bad_in_a_row: u32,
    /// The session must end after this command (it said BYE).
    closing: bool,
    /// The tag and RETURN options of the SEARCH being run, when it asked for ESEARCH.
    esearch: Option<(String, Returns)>,
    framer: Framer,
    /// Responses waiting to be written.
    out: Vec<u8>,
    _guard: ConnectionGuard,
}

impl Connection {
    fn new(args: ImapArgs) -> Self {
        let max_literal = args.ctx.config.smtp.max_message_size as u64;
        Self {
            ctx: args.ctx,
            implicit_tls: args.implicit_tls,
            tls_active: args.implicit_tls,
            stream: Stream::Plain(args.stream),
            peer: args.peer,
            user: None,
            selected: None,
            reporting: Reporting::default(),
            slot: None,
            bad_in_a_row: 0,
            closing: false,
            esearch: None,
            framer: Framer::new(max_literal),
            out: Vec::new(),
            _guard: args.guard,
        }
    }

    fn capabilities(&self) -> String {
        let mut caps = vec!["IMAP4rev1".to_string()];
        if self.user.is_none() {
            if !self.tls_active && self.ctx.tls.is_some() {
                caps.push("STARTTLS".into());
            }
            if self.may_sign_in() {
                caps.extend(["AUTH=PLAIN".into(), "AUTH=LOGIN".into(), "SASL-IR".into()]);
            } else {
                caps.push("LOGINDISABLED".into());
            }
        }
        caps.extend(
            [
                "ID",
                "ENABLE",
                "IDLE",
                "NAMESPACE",
                "UIDPLUS",
                "MOVE",
                "UNSELECT",
                "CHILDREN",
                "LITERAL+",
                "SPECIAL-USE",
                "LIST-EXTENDED",
                "LIST-STATUS",
                "ESEARCH",
                "CONDSTORE",
                "QRESYNC",
                "STATUS=SIZE",
                "QUOTA",
                "QUOTA=RES-STORAGE",
            ]
            .map(String::from),
        );
        caps.push(format!(
            "APPENDLIMIT={}",
            self.ctx.config.smtp.max_message_size
        ));
        caps.join(" ")
    }

    fn may_sign_in(&self) -> bool {
        self.tls_active || self.ctx.config.smtp.allow_insecure_auth
    }

    async fn start_tls(&mut self) -> io::Result<()> {
        let (Some(acceptor), Some(tcp)) = (self.ctx.tls.clone(), self.stream.take_plain()) else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        self.stream = Stream::Tls(Box::new(tls));
        self.tls_active = true;
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        self.stream.flush().await
    }

    fn untagged(&mut self, line: &str) {
        self.out.extend_from_slice(b"* ");
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn tagged(&mut self, tag: &str, done: &Done) {
        self.out
            .extend_from_slice(format!("{tag} {} {}\r\n", done.status, done.text).as_bytes());
    }

    /// Reads more input; `Ok(false)` at end of input, timeout or shutdown (having said BYE).
    async fn read_more(&mut self, timeout: Duration) -> io::Result<bool> {
        let mut buf = [0u8; 16 * 1024];
        let mut shutdown = self.ctx.shutdown.clone();
        let read = tokio::select! {
            read = tokio::time::timeout(timeout, self.stream.read(&mut buf)) => read,
            _ = async { shutdown.wait_for(|down| *down).await.map(drop) } => {
                self.untagged("BYE [UNAVAILABLE] Server shutting down; reconnect shortly");
                self.flush().await?;
                return Ok(false);
            }
        };
        match read {
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(n)) => {
                self.framer.push(&buf[..n]);
                Ok(true)
            }
            Ok(Err(error)) => Err(error),
            Err(_) => {
                self.untagged("BYE Autologout; idle for too long");
                self.flush().await?;
                Ok(false)
            }
        }
    }

    /// The next plain line (an AUTHENTICATE response, IDLE's DONE); `None` if the client left.
    async fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            match self.framer.next_line() {
                Ok(Some(line)) => return Ok(Some(line)),
                Ok(None) => {}
                Err(_) => return Ok(None),
            }
            if !self.read_more(IDLE_TIMEOUT).await? {
                return Ok(None);
            }
        }
    }

    async fn run(mut self) -> io::Result<()> {
        if self.implicit_tls {
            self.start_tls().await?;
        }
        let greeting = format!(
            "OK [CAPABILITY {}] {} MaiRust IMAP ready",
            self.capabilities(),
            self.ctx.config.server.hostname
        );
        self.untagged(&greeting);
        self.flush().await?;
        loop {
            let next = match self.framer.next_frame() {
                Ok(next) => next,
                Err(error) => {
                    let text = match error {
                        FramingError::LineTooLong => "BYE Line too long; closing".to_string(),
                        FramingError::LiteralTooLarge { limit, .. } => {
                            format!("BYE [TOOBIG] Literal larger than {limit} bytes; closing")
                        }
                    };
                    self.untagged(&text);
                    self.flush().await?;
                    return Ok(());
                }
            };
            match next {
                Next::More => {
                    if !self.read_more(IDLE_TIMEOUT).await? {
                        return Ok(());
                    }
                }
                Next::Frame(Frame::Continue) => {
                    self.out.extend_from_slice(b"+ Ready for literal data\r\n");
                    self.flush().await?;
                }
                Next::Refused(refused) => {
                    let done = Done::no(format!(
                        "[TOOBIG] {} bytes is more than the limit of {}",
                        refused.size, self.ctx.config.smtp.max_message_size
                    ));
                    self.tagged(&refused.tag, &done);
                    self.flush().await?;
                }
                Next::Frame(Frame::Command(bytes)) => {
                    let after = self.command(&bytes).await?;
                    self.flush().await?;
                    if let After::Close = after {
                        let _ = self.stream.shutdown().await;
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn command(&mut self, bytes: &[u8]) -> io::Result<After> {
        // LIST in every form (LIST-EXTENDED, LIST-STATUS) is parsed here; imap-codec knows
        // only RFC 3501's.
        if let Some((tag, request)) = list::parse(bytes) {
            let done = if self.user.is_some() {
                self.list(&request, false).await
            } else {
                Done::bad("Sign in first")
            };
            events::emit(ImapCommand {
                command: "LIST",
                result: match done.status {
                    "OK" => "ok",
                    "NO" => "no",
                    _ => "bad",
                },
            });
            self.tagged(&tag, &done);
            return Ok(self.count_bad(done.status == "BAD"));
        }
        // ESEARCH's RETURN (...) is split off before imap-codec sees the SEARCH.
        let rewritten = split_return(bytes);
        let bytes = match &rewritten {
            Some((command, returns)) => {
                let tag =
                    String::from_utf8_lossy(bytes.split(|&b| b == b' ').next().unwrap_or_default());
                self.esearch = Some((tag.into_owned(), returns.clone()));
                command.as_slice()
            }
            None => bytes,
        };
        let command = match CommandCodec::default().decode(bytes) {
            Ok((_, command)) => command,
            Err(_) => {
                self.esearch = None;
                let tag = bytes
                    .split(|&b| b == b' ' || b == b'\r')
                    .next()
                    .filter(|t| !t.is_empty() && t.iter().all(|&b| b.is_ascii_graphic()))
                    .map_or_else(
                        || "*".to_string(),
                        |t| String::from_utf8_lossy(t).into_owned(),
                    );
                events::emit(ImapCommand {
                    command: "unknown",
                    result: "bad",
                });
                self.tagged(&tag, &Done::bad("Unknown command or invalid arguments"));
                return Ok(self.count_bad(true));
            }
        };
        let name = command.body.name();
        let tag = command.tag.as_ref().to_string();
        let (done, mut after) = self.dispatch(command).await?;
        // Only the SEARCH it was split from may use it.
        self.esearch = None;
        if self.closing {
            after = After::Close;
        }
        if done.status.is_empty() {
            return Ok(after);
        }
        events::emit(ImapCommand {
            command: name,
            result: match done.status {
                "OK" => "ok",
                "NO" => "no",
                _ => "bad",
            },
        });
        self.tagged(&tag, &done);
        if let After::Close = after {
            return Ok(after);
        }
        Ok(self.count_bad(done.status == "BAD"))
    }

    /// Counts bad commands in a row before sign-in; the third ends the connection.
    fn count_bad(&mut self, bad: bool) -> After {
        if !bad || self.user.is_some() {
            self.bad_in_a_row = 0;
            return After::Continue;
        }
        self.bad_in_a_row += 1;
        if self.bad_in_a_row >= BAD_BEFORE_SIGN_IN {
            self.untagged("BYE Too many invalid commands");
            return After::Close;
        }
        After::Continue
    }

    async fn dispatch(&mut self, command: Command<'_>) -> io::Result<(Done, After)> {
        let signed_in = self.user.is_some();
        let done = match command.body {
            CommandBody::Capability => {
                let caps = format!("CAPABILITY {}", self.capabilities());
                self.untagged(&caps);
                Done::ok("CAPABILITY completed")
            }
            CommandBody::Noop | CommandBody::Check => {
                self.refresh().await;
                Done::ok("NOOP completed")
            }
            CommandBody::Logout => {
                // The account's slot is free before the client reads the reply.
                self.slot = None;
                self.untagged("BYE Logging out");
                return Ok((Done::ok("LOGOUT completed"), After::Close));
            }
            CommandBody::Id { .. } => {
                self.untagged("ID (\"name\" \"MaiRust\")");
                Done::ok("ID completed")
            }
            CommandBody::StartTLS if self.tls_active => Done::bad("TLS is already active"),
            CommandBody::StartTLS if self.ctx.tls.is_none() => Done::no("TLS is not available"),
            CommandBody::StartTLS => {
                self.tagged(command.tag.as_ref(), &Done::ok("Begin TLS negotiation now"));
                self.flush().await?;
                // Whatever the client sent before the handshake was not protected.
                self.framer.clear();
                self.start_tls().await?;
                events::emit(ImapCommand {
                    command: "STARTTLS",
                    result: "ok",
                });
                return Ok((Done::silent(), After::Continue));
            }
            CommandBody::Login { .. } | CommandBody::Authenticate { .. } if signed_in => {
                Done::bad("Already signed in")
            }
            CommandBody::Login { .. } | CommandBody::Authenticate { .. } if !self.may_sign_in() => {
                Done::no("[PRIVACYREQUIRED] Use STARTTLS (or port 993) before signing in")
            }
            CommandBody::Login { username, password } => {
                let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                let password = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                self.sign_in(&user, &password).await
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                let initial = initial_response.map(|r| r.declassify().to_vec());
                match self.sasl(&mechanism, initial).await? {
                    Some((user, password)) => self.sign_in(&user, &password).await,
                    None => Done::bad("Authentication cancelled or malformed"),
                }
            }
            _ if !signed_in => Done::bad("Sign in first"),
            CommandBody::Enable { capabilities } => {
                let mut enabled = Vec::new();
                for capability in capabilities.as_ref() {
                    let name = capability.to_string().to_ascii_uppercase();
                    match name.as_str() {
                        "CONDSTORE" => self.reporting.modseq = true,
                        "QRESYNC" => {
                            self.reporting.modseq = true;
                            self.reporting.vanished = true;
                        }
                        _ => continue,
                    }
                    enabled.push(name);
                }
                let line = format!("ENABLED {}", enabled.join(" "));
                self.untagged(line.trim_end());
                Done::ok("ENABLE completed")
            }
            CommandBody::Namespace => {
                self.untagged("NAMESPACE ((\"\" \"/\")) NIL NIL");
                Done::ok("NAMESPACE completed")
            }
            CommandBody::Select {
                mailbox,
                parameters,
            } => self.select(&mailbox, false, &parameters).await,
            CommandBody::Examine {
                mailbox,
                parameters,
            } => self.select(&mailbox, true, &parameters).await,
            CommandBody::Create { mailbox } => match self.folder(&mailbox) {
                // A trailing delimiter only says that folders will be created inside.
                Ok(name) => self.create(&name).await,
                Err(done) => done,
            },
            CommandBody::Delete { mailbox } => match self.folder(&mailbox) {
                Ok(name) => {
                    if self.selected.as_ref().is_some_and(|s| s.name == name) {
                        self.selected = None;
                    }
                    match self
                        .ctx
                        .stores
                        .mailboxes
                        .delete_folder(self.user_id(), &name)
                        .await
                    {
                        Ok(orphans) => {
                            self.ctx.stores.delete_blobs(&orphans).await;
                            Done::ok("DELETE completed")
                        }
                        Err(e) => unavailable(&e),
                    }
                }
                Err(done) => done,
            },
            CommandBody::Rename { from, to } => match (self.folder(&from), self.folder(&to)) {
                (Ok(from), Ok(to)) => {
                    match self
                        .ctx
                        .stores
                        .mailboxes
                        .rename_folder(self.user_id(), &from, &to)
                        .await
                    {
                        Ok(()) => Done::ok("RENAME completed"),
                        Err(e) => unavailable(&e),
                    }
                }
                (Err(done), _) | (_, Err(done)) => done,
            },
            CommandBody::Subscribe { mailbox } | CommandBody::Unsubscribe { mailbox }
                if self.folder(&mailbox).is_err() =>
            {
                self.folder(&mailbox)
                    .err()
                    .unwrap_or_else(|| Done::bad("invalid name"))
            }
            CommandBody::Subscribe { mailbox } => self.subscribe(&mailbox, true).await,
            CommandBody::Unsubscribe { mailbox } => self.subscribe(&mailbox, false).await,
            // LIST itself is parsed by `list::parse` (all its forms) before imap-codec.
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => {
                let request = basic_list(&reference, &mailbox_wildcard, false);
                self.list(&request, false).await
            }
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => {
                let request = basic_list(&reference, &mailbox_wildcard, true);
                self.list(&request, true).await
            }
            CommandBody::Status {
                mailbox,
                item_names,
            } => self.status(&mailbox, &item_names).await,
            CommandBody::Append {
                mailbox,
                flags,
                message,
                ..
            } => {
                let data = match &message {
                    LiteralOrLiteral8::Literal(l) => l.data().to_vec(),
                    LiteralOrLiteral8::Literal8(l) => l.data.to_vec(),
                };
                self.append(&mailbox, &flags, data).await
            }
            CommandBody::Idle => return self.idle().await,
            CommandBody::GetQuotaRoot { mailbox } => match self.folder(&mailbox) {
                Ok(name) => self.quota(Some(&name)).await,
                Err(done) => done,
            },
            CommandBody::GetQuota { root } if root.as_ref().is_empty() => self.quota(None).await,
            CommandBody::GetQuota { .. } => Done::no("[NONEXISTENT] The only quota root is \"\""),
            CommandBody::SetQuota { .. } => {
                Done::no("[NOPERM] Quotas are set by an administrator (REST API)")
            }
            _ if self.selected.is_none() => Done::bad("Select a mailbox first"),
            CommandBody::Unselect => {
                self.selected = None;
                Done::ok("UNSELECT completed")
            }
            CommandBody::Close => {
                if self.selected.as_ref().is_some_and(|s| !s.read_only) {
                    let all = self.deleted_indexes(None);
                    self.expunge(&all).await;
                }
                self.selected = None;
                Done::ok("CLOSE completed")
            }
            CommandBody::Expunge => {
                let doomed = self.deleted_indexes(None);
                self.expunge_and_report(&doomed).await
            }
            CommandBody::ExpungeUid { sequence_set } => {
                let doomed = self.deleted_indexes(Some(&sequence_set));
                self.expunge_and_report(&doomed).await
            }
            CommandBody::Search { criteria, uid, .. } => self.search(criteria.as_ref(), uid).await,
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => {
                self.fetch(&sequence_set, &macro_or_item_names, uid, &modifiers)
                    .await
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                let unchanged_since = modifiers.last().map(|m| match m {
                    StoreModifier::UnchangedSince(v) => *v,
                });
                let change = FlagChange {
                    kind: &kind,
                    silent: matches!(response, StoreResponse::Silent),
                    flags: &flags,
                    unchanged_since,
                };
                self.store(&sequence_set, change, uid).await
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(&sequence_set, &mailbox, uid, false).await,
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(&sequence_set, &mailbox, uid, true).await,
            _ => Done::bad("Command not supported"),
        };
        Ok((done, After::Continue))
    }

    fn user_id(&self) -> i64 {
        self.user.as_ref().map_or(0, |u| u.id)
    }

    /// A mailbox argument as a stored folder name (modified UTF-7 decoded, checked).
    fn folder(&self, mailbox: &Mailbox<'_>) -> Result<String, Done> {
        let raw = match mailbox {
            Mailbox::Inbox => return Ok(crate::store::INBOX.to_string()),
            Mailbox::Other(other) => String::from_utf8_lossy(other.as_ref()).into_owned(),
        };
        let decoded = utf7::decode(&raw)
            .ok_or_else(|| Done::bad(format!("{raw:?} is not a valid modified UTF-7 name")))?;
        let trimmed = decoded.strip_suffix('/').unwrap_or(&decoded);
        folder_name(trimmed).map_err(|e| Done::no(format!("[CANNOT] {e}")))
    }

    async fn sign_in(&mut self, user: &str, password: &str) -> Done {
        let checked = self
            .ctx
            .authenticator
            .authenticate(self.peer.ip(), user, password)
            .await;
        match checked {
            Ok(Some(account)) => {
                let limit = self.ctx.config.imap.max_connections_per_user;
                let Some(slot) = self.ctx.sessions.enter(account.id, limit) else {
                    tracing::warn!(peer = %self.peer, user, limit, "IMAP sign-in refused: too many sessions");
                    return Done::no(format!(
                        "[LIMIT] This account has {limit} IMAP connections open already; close some"
                    ));
                };
                self.slot = Some(slot);
                tracing::info!(peer = %self.peer, user, "IMAP sign-in");
                self.user = Some(account);
                let caps = self.capabilities();
                Done::ok(format!("[CAPABILITY {caps}] Signed in"))
            }
            Ok(None) => {
                events::emit(ImapAuthFailed {
                    peer: self.peer,
                    user,
                });
                Done::no("[AUTHENTICATIONFAILED] Wrong user name or password")
            }
            Err(error @ AuthError::Busy) => {
                tracing::warn!(peer = %self.peer, user, "IMAP sign-in refused: {error}");
                Done::no("[UNAVAILABLE] Too many sign-in attempts in progress; try again shortly")
            }
            Err(error) => {
                tracing::error!(peer = %self.peer, user, %error, "IMAP sign-in lookup failed");
                Done::no("[UNAVAILABLE] Cannot check credentials now; try again")
            }
        }
    }

    /// Runs a SASL exchange; the user name and password, or `None` if cancelled or invalid.
    async fn sasl(
        &mut self,
        mechanism: &AuthMechanism<'_>,
        initial: Option<Vec<u8>>,
    ) -> io::Result<Option<(String, String)>> {
        let b64 = base64::engine::general_purpose::STANDARD;
        match mechanism {
            AuthMechanism::Plain => {
                let response = match initial {
                    Some(r) => r,
                    None => {
                        self.out.extend_from_slice(b"+ \r\n");
                        self.flush().await?;
                        match self.read_line().await? {
                            Some(line) if line != b"*" => match b64.decode(&line) {
                                Ok(r) => r,
                                Err(_) => return Ok(None),
                            },
                            _ => return Ok(None),
                        }
                    }
                };
                let mut fields = response.split(|&b| b == 0);
                let (_authz, user, password) = (fields.next(), fields.next(), fields.next());
                Ok(match (user, password, fields.next()) {
                    (Some(u), Some(p), None) => Some((
                        String::from_utf8_lossy(u).into_owned(),
                        String::from_utf8_lossy(p).into_owned(),
                    )),
                    _ => None,
                })
            }
            AuthMechanism::Login => {
                let mut answers = Vec::new();
                let prompts: [&[u8]; 2] = [b"+ VXNlcm5hbWU6\r\n", b"+ UGFzc3dvcmQ6\r\n"];
                for (i, prompt) in prompts.iter().enumerate() {
                    let answer = match (i, &initial) {
                        (0, Some(first)) => first.clone(),
                        _ => {
                            self.out.extend_from_slice(prompt);
                            self.flush().await?;
                            match self.read_line().await? {
                                Some(line) if line != b"*" => match b64.decode(&line) {
                                    Ok(r) => r,
                                    Err(_) => return Ok(None),
                                },
                                _ => return Ok(None),
                            }
                        }
                    };
                    answers.push(String::from_utf8_lossy(&answer).into_owned());
                }
                let password = answers.pop().unwrap_or_default();
                let user = answers.pop().unwrap_or_default();
                Ok(Some((user, password)))
            }
            _ => Ok(None),
        }
    }

    async fn select(
        &mut self,
        mailbox: &Mailbox<'_>,
        read_only: bool,
        parameters: &[SelectParameter],
    ) -> Done {
        // QRESYNC: the client learns where one mailbox's responses end (RFC 7162 §3.2.11).
        if self.selected.take().is_some() && self.reporting.vanished {
            self.untagged("OK [CLOSED] Previous mailbox closed");
        }
        let mut resync = None;
        for parameter in parameters {
            match parameter {
                SelectParameter::CondStore => self.reporting.modseq = true,
                SelectParameter::QResync { .. } if !self.reporting.vanished => {
                    return Done::bad("QRESYNC parameters need ENABLE QRESYNC first");
                }
                SelectParameter::QResync {
                    uid_validity,
                    mod_sequence_value,
                    known_uids,
                    ..
                } => resync = Some((*uid_validity, *mod_sequence_value, known_uids.clone())),
            }
        }
        let name = match self.folder(mailbox) {
            Ok(name) => name,
            Err(done) => return done,
        };
        let ctx = self.ctx.clone();
        let mailboxes = &ctx.stores.mailboxes;
        let contents = match mailboxes.folder_contents(self.user_id(), &name).await {
            Ok(Some(contents)) => contents,
            Ok(None) => return Done::no(format!("[NONEXISTENT] There is no folder {name:?}")),
            Err(e) => return unavailable(&e),
        };
        let view = Selected::new(name, read_only, contents);
        let all: Vec<&str> = SYSTEM_FLAGS.iter().map(|(n, _)| *n).collect();
        self.untagged(&format!("FLAGS ({})", all.join(" ")));
        if read_only {
            self.untagged("OK [PERMANENTFLAGS ()] Read-only");
        } else {
            self.untagged(&format!("OK [PERMANENTFLAGS ({})] Flags", all.join(" ")));
        }
        self.untagged(&format!("{} EXISTS", view.entries.len()));
        self.untagged("0 RECENT");
        if let Some(first) = view.first_unseen() {
            self.untagged(&format!("OK [UNSEEN {first}] First unseen"));
        }
        self.untagged(&format!(
            "OK [UIDVALIDITY {}] UIDs valid",
            view.state.uidvalidity
        ));
        self.untagged(&format!(
            "OK [UIDNEXT {}] Predicted next UID",
            view.state.uidnext
        ));
        self.untagged(&format!(
            "OK [HIGHESTMODSEQ {}] Highest",
            view.state.highestmodseq
        ));
        // QRESYNC: what vanished and what changed since the client's last state, if its UIDs
        // are still valid.
        if let Some((uidvalidity, since, known)) = resync
            && i64::from(uidvalidity.get()) == view.state.uidvalidity
        {
            let since = i64::try_from(since.get()).unwrap_or(i64::MAX);
            let gone = match mailboxes
                .expunged_since(self.user_id(), &view.name, since)
                .await
            {
                Ok(gone) => gone,
                Err(e) => return unavailable(&e),
            };
            let gone: Vec<i64> = match &known {
                Some(set) => gone
                    .into_iter()
                    .filter(|uid| in_uid_set(set, *uid))
                    .collect(),
                None => gone,
            };
            if !gone.is_empty() {
                self.untagged(&format!("VANISHED (EARLIER) {}", uid_set(&gone)));
            }
            for (index, entry) in view.entries.iter().enumerate() {
                if entry.modseq > since {
                    let line = flags_response(index + 1, entry, self.reporting);
                    self.out.extend_from_slice(line.as_bytes());
                }
            }
        }
        self.selected = Some(view);
        if read_only {
            Done::ok("[READ-ONLY] EXAMINE completed")
        } else {
            Done::ok("[READ-WRITE] SELECT completed")
        }
    }

    /// Brings the selected folder's view up to date, queueing what changed.
    async fn refresh(&mut self) {
        let Some(selected) = &self.selected else {
            return;
        };
        let name = selected.name.clone();
        let known = selected.state;
        match self
            .ctx
            .stores
            .mailboxes
            .folder_state(self.user_id(), &name)
            .await
        {
            Ok(Some(state)) if state == known => return,
            Ok(Some(_)) => {}
            Ok(None) => {
                // Deleted (or renamed) through another session: the session ends, as
                // Dovecot's does, rather than go on with a view of nothing.
                self.untagged("BYE [NONEXISTENT] The selected folder no longer exists");
                self.selected = None;
                self.closing = true;
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot check the selected IMAP folder");
                return;
            }
        }
        match self
            .ctx
            .stores
            .mailboxes
            .folder_contents(self.user_id(), &name)
            .await
        {
            Ok(Some(contents)) => {
                if let Some(selected) = &mut self.selected {
                    let updates = selected.refresh(contents, self.reporting);
                    self.out.extend_from_slice(&updates);
                }
            }
            Ok(None) => self.selected = None,
            Err(error) => tracing::warn!(%error, "cannot read the selected IMAP folder"),
        }
    }

    /// Creates a folder and the levels above it that are missing (RFC 9051 §6.3.4).
    async fn create(&mut self, name: &str) -> Done {
        let mailboxes = &self.ctx.stores.mailboxes;
        let user_id = self.user_id();
        for (at, _) in name.match_indices('/') {
            match mailboxes.create_folder(user_id, &name[..at]).await {
                Ok(()) | Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => return unavailable(&e),
            }
        }
        match mailboxes.create_folder(user_id, name).await {
            Ok(()) => Done::ok("CREATE completed"),
            Err(e) => unavailable(&e),
        }
    }

    /// GETQUOTAROOT (with the folder) or GETQUOTA of the one root, `""`: the user's storage
    /// quota in KiB (RFC 9208), from the current usage.
    async fn quota(&mut self, folder: Option<&str>) -> Done {
        let Some(email) = self.user.as_ref().map(|u| u.email.clone()) else {
            return Done::bad("Sign in first");
        };
        let user = match self.ctx.stores.accounts.credentials(&email).await {
            Ok(Some(credentials)) => credentials.user,
            Ok(None) => return Done::no("[UNAVAILABLE] The account no longer exists"),
            Err(e) => return unavailable(&e),
        };
        if let Some(name) = folder {
            let mut line = b"* QUOTAROOT ".to_vec();
            render::string(&mut line, utf7::encode(name).as_bytes());
            if user.quota_bytes.is_some() {
                line.extend_from_slice(b" \"\"");
            }
            line.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(&line);
        }
        match user.quota_bytes {
            Some(limit) => {
                let kib = |bytes: i64| bytes.max(0).saturating_add(1023) / 1024;
                self.untagged(&format!(
                    "QUOTA \"\" (STORAGE {} {})",
                    kib(user.used_bytes),
                    limit.max(0) / 1024
                ));
                Done::ok("GETQUOTA completed")
            }
            None if folder.is_some() => Done::ok("GETQUOTAROOT completed (no quota)"),
            None => Done::no("[NONEXISTENT] This account has no quota"),
        }
    }

    async fn subscribe(&mut self, mailbox: &Mailbox<'_>, on: bool) -> Done {
        let name = match self.folder(mailbox) {
            Ok(name) => name,
            Err(done) => return done,
        };
        match self
            .ctx
            .stores
            .mailboxes
            .set_subscribed(self.user_id(), &name, on)
            .await
        {
            Ok(()) => Done::ok(if on {
                "SUBSCRIBE completed"
            } else {
                "UNSUBSCRIBE completed"
            }),
            Err(e) => unavailable(&e),
        }
    }

    async fn list(&mut self, request: &ListRequest, lsub: bool) -> Done {
        let command = if lsub { "LSUB" } else { "LIST" };
        // `LIST "" ""` asks for the hierarchy delimiter.
        if request.patterns.iter().all(String::is_empty) {
            self.untagged(&format!("{command} (\\Noselect) \"/\" \"\""));
            return Done::ok(format!("{command} completed"));
        }
        let patterns: Vec<String> = request
            .patterns
            .iter()
            .map(|p| utf7::decode(p).unwrap_or_default())
            .collect();
        let mut request = request.clone();
        request.reference = utf7::decode(&request.reference).unwrap_or_default();
        let folders = match self.ctx.stores.mailboxes.list_folders(self.user_id()).await {
            Ok(folders) => folders,
            Err(e) => return unavailable(&e),
        };
        for listed in list::select(&request, &patterns, &folders) {
            let attributes = listed.attributes.join(" ");
            let mut line = format!("* {command} ({attributes}) \"/\" ").into_bytes();
            render::string(&mut line, utf7::encode(&listed.folder.name).as_bytes());
            line.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(&line);
            if !request.status.is_empty() {
                let folder = listed.folder.clone();
                if let Err(done) = self.status_response(&folder, &request.status).await {
                    return done;
                }
            }
        }
        Done::ok(format!("{command} completed"))
    }

    /// Queues a STATUS response for `folder`.
    async fn status_response(
        &mut self,
        folder: &crate::store::Folder,
        items: &[StatusItem],
    ) -> Result<(), Done> {
        let mut values = Vec::new();
        for item in items {
            let value = match item {
                StatusItem::Messages => folder.messages,
                StatusItem::Recent => 0,
                StatusItem::UidNext => folder.uidnext,
                StatusItem::UidValidity => folder.uidvalidity,
                StatusItem::Unseen => folder.unseen,
                StatusItem::HighestModSeq => folder.highestmodseq,
                // What FETCH RFC822.SIZE adds up to (the Return-Path line included).
                StatusItem::Size => match self
                    .ctx
                    .stores
                    .mailboxes
                    .folder_contents(self.user_id(), &folder.name)
                    .await
                {
                    Ok(Some(contents)) => contents
                        .entries
                        .iter()
                        .map(|e| crate::message::delivered_size(&e.envelope_from, e.size))
                        .sum(),
                    Ok(None) => continue,
                    Err(e) => return Err(unavailable(&e)),
                },
            };
            values.push(format!("{} {value}", item.name()));
        }
        let mut line = b"* STATUS ".to_vec();
        render::string(&mut line, utf7::encode(&folder.name).as_bytes());
        line.extend_from_slice(format!(" ({})\r\n", values.join(" ")).as_bytes());
        self.out.extend_from_slice(&line);
        Ok(())
    }

    async fn status(&mut self, mailbox: &Mailbox<'_>, items: &[StatusDataItemName]) -> Done {
        let name = match self.folder(mailbox) {
            Ok(name) => name,
            Err(done) => return done,
        };
        let folders = match self.ctx.stores.mailboxes.list_folders(self.user_id()).await {
            Ok(folders) => folders,
            Err(e) => return unavailable(&e),
        };
        let Some(folder) = folders.into_iter().find(|f| f.name == name) else {
            return Done::no(format!("[NONEXISTENT] There is no folder {name:?}"));
        };
        let items: Vec<StatusItem> = items
            .iter()
            .filter_map(|item| match item {
                StatusDataItemName::Messages => Some(StatusItem::Messages),
                StatusDataItemName::Recent => Some(StatusItem::Recent),
                StatusDataItemName::UidNext => Some(StatusItem::UidNext),
                StatusDataItemName::UidValidity => Some(StatusItem::UidValidity),
                StatusDataItemName::Unseen => Some(StatusItem::Unseen),
                StatusDataItemName::HighestModSeq => Some(StatusItem::HighestModSeq),
                StatusDataItemName::Size => Some(StatusItem::Size),
                _ => None,
            })
            .collect();
        match self.status_response(&folder, &items).await {
            Ok(()) => Done::ok("STATUS completed"),
            Err(done) => done,
        }
    }

    async fn append(
        &mut self,
        mailbox: &Mailbox<'_>,
        flag_args: &[Flag<'_>],
        data: Vec<u8>,
    ) -> Done {
        let name = match self.folder(mailbox) {
            Ok(name) => name,
            Err(done) => return done,
        };
        let Some(user) = self.user.clone() else {
            return Done::bad("Sign in first");
        };
        let mailboxes = &self.ctx.stores.mailboxes;
        match mailboxes.folder_state(user.id, &name).await {
            Ok(Some(_)) => {}
            Ok(None) => return Done::no(format!("[TRYCREATE] There is no folder {name:?}")),
            Err(e) => return unavailable(&e),
        }
        match self.ctx.stores.accounts.lookup_recipient(&user.email).await {
            Ok(RecipientLookup::Local {
                over_quota: true, ..
            }) => return Done::no("[OVERQUOTA] The mailbox is full"),
            Ok(_) => {}
            Err(e) => return unavailable(&e),
        }
        if let Err(problem) = crate::message::check_header_section(&data) {
            return Done::no(format!("[PARSE] {problem}"));
        }
        // With submission.save_to_sent the server already filed what the client sent; the
        // client's own copy of it (same Message-ID) is not stored twice.
        if self.ctx.config.submission.save_to_sent
            && name == crate::store::SENT
            && let Some(header_id) = crate::message::summarize(&data).message_id
        {
            match mailboxes
                .find_by_message_id(user.id, &name, &header_id)
                .await
            {
                Ok(Some((uidvalidity, uid))) => {
                    return Done::ok(format!(
                        "[APPENDUID {uidvalidity} {uid}] Already saved when it was submitted"
                    ));
                }
                Ok(None) => {}
                Err(e) => return unavailable(&e),
            }
        }
        let id = crate::store::new_id();
        let incoming = Incoming {
            id: id.clone(),
            envelope_from: String::new(),
            deliveries: vec![LocalDelivery {
                user_id: user.id,
                folder: name.clone(),
                flags: flag_bits(flag_args),
            }],
            remote_recipients: Vec::new(),
            data,
            sign_for: None,
        };
        if let Err(error) = self.ctx.acceptor.accept(incoming).await {
            tracing::error!(%error, "cannot store an APPENDed message");
            return Done::no("[UNAVAILABLE] Cannot store the message now; try again");
        }
        let placed = mailboxes.placed(user.id, &id).await;
        if self.selected.as_ref().is_some_and(|s| s.name == name) {
            self.refresh().await;
        }
        match placed {
            Ok(Some((uidvalidity, uid))) => {
                Done::ok(format!("[APPENDUID {uidvalidity} {uid}] APPEND completed"))
            }
            _ => Done::ok("APPEND completed"),
        }
    }

    /// Indexes of the selected folder's `\Deleted` messages (within `uids` if given).
    fn deleted_indexes(&self, uids: Option<&SequenceSet>) -> Vec<usize> {
        let Some(selected) = &self.selected else {
            return Vec::new();
        };
        let within = uids.map(|set| selected.resolve(set, true));
        (0..selected.entries.len())
            .filter(|i| selected.entries[*i].flags & flags::DELETED != 0)
            .filter(|i| within.as_ref().is_none_or(|w| w.binary_search(i).is_ok()))
            .collect()
    }

    /// Removes the messages at `indexes`; returns whether every one is gone.
    async fn expunge(&mut self, indexes: &[usize]) -> bool {
        let Some(selected) = &self.selected else {
            return true;
        };
        let ids: Vec<i64> = indexes.iter().map(|&i| selected.entries[i].id).collect();
        let stores = &self.ctx.stores;
        let mut all = true;
        for id in ids {
            match stores
                .mailboxes
                .delete_mailbox_item(self.user_id(), id)
                .await
            {
                Ok(Some(orphans)) => stores.delete_blobs(&orphans).await,
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(%error, id, "cannot expunge an IMAP message");
                    all = false;
                }
            }
        }
        all
    }

    async fn expunge_and_report(&mut self, doomed: &[usize]) -> Done {
        if self.selected.as_ref().is_some_and(|s| s.read_only) {
            return Done::no("[READ-ONLY] The folder is open read-only");
        }
        let all = self.expunge(doomed).await;
        self.refresh().await;
        if all {
            Done::ok("EXPUNGE completed")
        } else {
            Done::no("[UNAVAILABLE] Some messages could not be expunged; try again")
        }
    }

    /// A stored message's bytes as the client sees them (with its Return-Path).
    async fn body_of(&self, entry: &FolderEntry) -> Result<Vec<u8>, Done> {
        match self.ctx.stores.blobs.get(&entry.blob_key).await {
            Ok(body) => Ok(as_delivered(&entry.envelope_from, &body)),
            Err(error) => {
                tracing::error!(%error, id = entry.id, "cannot read an IMAP message body");
                Err(Done::no(
                    "[UNAVAILABLE] Cannot read the message now; try again",
                ))
            }
        }
    }

    /// Reads the folder again and takes the current flags and modseq of the messages at
    /// `indexes` into the view (other changes wait for the next refresh).
    async fn reload(&mut self, indexes: &[usize]) -> Result<(), Done> {
        let Some(selected) = &self.selected else {
            return Ok(());
        };
        let fresh = match self
            .ctx
            .stores
            .mailboxes
            .folder_contents(self.user_id(), &selected.name)
            .await
        {
            Ok(Some(contents)) => contents.entries,
            Ok(None) => return Ok(()),
            Err(e) => return Err(unavailable(&e)),
        };
        if let Some(selected) = &mut self.selected {
            for &i in indexes {
                let uid = selected.entries[i].uid;
                if let Ok(at) = fresh.binary_search_by_key(&uid, |e| e.uid) {
                    selected.entries[i].flags = fresh[at].flags;
                    selected.entries[i].modseq = fresh[at].modseq;
                }
            }
        }
        Ok(())
    }

    async fn fetch(
        &mut self,
        set: &SequenceSet,
        items: &MacroOrMessageDataItemNames<'_>,
        uid: bool,
        modifiers: &[FetchModifier],
    ) -> Done {
        let Some(selected) = &self.selected else {
            return Done::bad("Select a mailbox first");
        };
        let mut names: Vec<MessageDataItemName<'_>> = match items {
            MacroOrMessageDataItemNames::Macro(m) => m.expand(),
            MacroOrMessageDataItemNames::MessageDataItemNames(n) => n.clone(),
        };
        if let Some(unsupported) = names.iter().find(|n| {
            matches!(
                n,
                MessageDataItemName::Binary { .. } | MessageDataItemName::BinarySize { .. }
            )
        }) {
            return Done::bad(format!("{unsupported:?} is not supported (see CAPABILITY)"));
        }
        let mut changed_since = None;
        let mut vanished = false;
        for modifier in modifiers {
            match modifier {
                FetchModifier::ChangedSince(m) => {
                    changed_since = Some(i64::try_from(m.get()).unwrap_or(i64::MAX));
                }
                FetchModifier::Vanished if !uid || !self.reporting.vanished => {
                    return Done::bad("VANISHED needs UID FETCH and ENABLE QRESYNC");
                }
                FetchModifier::Vanished => vanished = true,
            }
        }
        if vanished && changed_since.is_none() {
            return Done::bad("VANISHED needs CHANGEDSINCE");
        }
        // Asking for a MODSEQ turns CONDSTORE on (RFC 7162 §3.1).
        if changed_since.is_some() || names.contains(&MessageDataItemName::ModSeq) {
            self.reporting.modseq = true;
        }
        if uid && !names.contains(&MessageDataItemName::Uid) {
            names.insert(0, MessageDataItemName::Uid);
        }
        if self.reporting.modseq
            && (changed_since.is_some() || names.contains(&MessageDataItemName::Flags))
            && !names.contains(&MessageDataItemName::ModSeq)
        {
            names.push(MessageDataItemName::ModSeq);
        }
        let needs_body = names.iter().any(|n| {
            !matches!(
                n,
                MessageDataItemName::Uid
                    | MessageDataItemName::Flags
                    | MessageDataItemName::InternalDate
                    | MessageDataItemName::Rfc822Size
                    | MessageDataItemName::ModSeq
            )
        });
        let marks_seen = !selected.read_only
            && names.iter().any(|n| {
                matches!(
                    n,
                    MessageDataItemName::BodyExt { peek: false, .. }
                        | MessageDataItemName::Rfc822
                        | MessageDataItemName::Rfc822Text
                )
            });
        let indexes: Vec<usize> = selected
            .resolve(set, uid)
            .into_iter()
            .filter(|&i| changed_since.is_none_or(|m| selected.entries[i].modseq > m))
            .collect();
        if vanished && let Some(since) = changed_since {
            let name = selected.name.clone();
            match self
                .ctx
                .stores
                .mailboxes
                .expunged_since(self.user_id(), &name, since)
                .await
            {
                Ok(gone) => {
                    let gone: Vec<i64> = gone.into_iter().filter(|u| in_uid_set(set, *u)).collect();
                    if !gone.is_empty() {
                        self.untagged(&format!("VANISHED (EARLIER) {}", uid_set(&gone)));
                    }
                }
                Err(e) => return unavailable(&e),
            }
        }
        // \Seen first, so the FETCH responses show it.
        if marks_seen {
            let Some(selected) = &self.selected else {
                return Done::bad("Select a mailbox first");
            };
            let unseen: Vec<i64> = indexes
                .iter()
                .map(|&i| &selected.entries[i])
                .filter(|e| e.flags & flags::SEEN == 0)
                .map(|e| e.id)
                .collect();
            if !unseen.is_empty() {
                if let Err(e) = self
                    .ctx
                    .stores
                    .mailboxes
                    .set_flags(self.user_id(), &unseen, flags::SEEN, 0)
                    .await
                {
                    return unavailable(&e);
                }
                if let Err(done) = self.reload(&indexes).await {
                    return done;
                }
            }
        }
        for &index in &indexes {
            let Some(entry) = self.selected.as_ref().map(|s| s.entries[index].clone()) else {
                break;
            };
            let body = if needs_body {
                match self.body_of(&entry).await {
                    Ok(body) => Some(body),
                    Err(done) => return done,
                }
            } else {
                None
            };
            let parsed = body
                .as_deref()
                .and_then(|b| MessageParser::default().parse(b));
            let mut line = format!("* {} FETCH (", index + 1).into_bytes();
            for (i, name) in names.iter().enumerate() {
                if i > 0 {
                    line.push(b' ');
                }
                fetch_item(&mut line, name, &entry, body.as_deref(), parsed.as_ref());
            }
            line.extend_from_slice(b")\r\n");
            self.out.extend_from_slice(&line);
        }
        Done::ok(if uid {
            "UID FETCH completed"
        } else {
            "FETCH completed"
        })
    }

    async fn store(&mut self, set: &SequenceSet, change: FlagChange<'_, '_>, uid: bool) -> Done {
        let Some(selected) = &self.selected else {
            return Done::bad("Select a mailbox first");
        };
        if selected.read_only {
            return Done::no("[READ-ONLY] The folder is open read-only");
        }
        let bits = flag_bits(change.flags);
        let all: i64 = SYSTEM_FLAGS.iter().map(|(_, b)| b).sum();
        let (add, remove) = match change.kind {
            StoreType::Add => (bits, 0),
            StoreType::Remove => (0, bits),
            StoreType::Replace => (bits, all & !bits),
        };
        let mut indexes = selected.resolve(set, uid);
        // UNCHANGEDSINCE: messages changed after the client's modseq are left alone and
        // named in MODIFIED (RFC 7162 §3.1.3), judged on their current state.
        let mut modified = Vec::new();
        if let Some(limit) = change.unchanged_since {
            self.reporting.modseq = true;
            if let Err(done) = self.reload(&indexes).await {
                return done;
            }
            let Some(selected) = &self.selected else {
                return Done::bad("Select a mailbox first");
            };
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            indexes.retain(|&i| {
                let entry = &selected.entries[i];
                let keep = entry.modseq <= limit;
                if !keep {
                    modified.push(if uid { entry.uid } else { i as i64 + 1 });
                }
                keep
            });
        }
        let Some(selected) = &self.selected else {
            return Done::bad("Select a mailbox first");
        };
        let ids: Vec<i64> = indexes.iter().map(|&i| selected.entries[i].id).collect();
        if let Err(e) = self
            .ctx
            .stores
            .mailboxes
            .set_flags(self.user_id(), &ids, add, remove)
            .await
        {
            return unavailable(&e);
        }
        if self.reporting.modseq {
            if let Err(done) = self.reload(&indexes).await {
                return done;
            }
        } else if let Some(selected) = &mut self.selected {
            for &i in &indexes {
                let entry = &mut selected.entries[i];
                entry.flags = (entry.flags | add) & !remove;
            }
        }
        // With CONDSTORE on, the new MODSEQ is sent even for .SILENT (RFC 7162 §3.1.3).
        if !change.silent || self.reporting.modseq {
            let Some(selected) = &self.selected else {
                return Done::ok("STORE completed");
            };
            let mut lines = String::new();
            for &i in &indexes {
                lines.push_str(&flags_response(i + 1, &selected.entries[i], self.reporting));
            }
            self.out.extend_from_slice(lines.as_bytes());
        }
        if modified.is_empty() {
            Done::ok("STORE completed")
        } else {
            modified.sort_unstable();
            Done::ok(format!(
                "[MODIFIED {}] Some messages changed meanwhile",
                uid_set(&modified)
            ))
        }
    }

    async fn copy(
        &mut self,
        set: &SequenceSet,
        mailbox: &Mailbox<'_>,
        uid: bool,
        moving: bool,
    ) -> Done {
        let to = match self.folder(mailbox) {
            Ok(name) => name,
            Err(done) => return done,
        };
        let Some(selected) = &self.selected else {
            return Done::bad("Select a mailbox first");
        };
        if moving && selected.read_only {
            return Done::no("[READ-ONLY] The folder is open read-only");
        }
        let user_id = self.user_id();
        let mailboxes = &self.ctx.stores.mailboxes;
        let target = match mailboxes.folder_state(user_id, &to).await {
            Ok(Some(state)) => state,
            Ok(None) => return Done::no(format!("[TRYCREATE] There is no folder {to:?}")),
            Err(e) => return unavailable(&e),
        };
        let sources: Vec<(i64, i64)> = selected
            .resolve(set, uid)
            .into_iter()
            .map(|i| (selected.entries[i].id, selected.entries[i].uid))
            .collect();
        if sources.is_empty() {
            return Done::ok("Nothing to do");
        }
        let (mut from_uids, mut to_uids) = (Vec::new(), Vec::new());
        for (id, old_uid) in sources {
            let result = if moving {
                mailboxes.move_message(user_id, id, &to).await
            } else {
                mailboxes.copy_message(user_id, id, &to).await
            };
            match result {
                Ok(new_uid) => {
                    from_uids.push(old_uid);
                    to_uids.push(new_uid);
                }
                // Expunged meanwhile: nothing to copy.
                Err(StoreError::NotFound(crate::store::Record::Message(_))) => {}
                Err(e) => return unavailable(&e),
            }
        }
        let code = format!(
            "COPYUID {} {} {}",
            target.uidvalidity,
            uid_set(&from_uids),
            uid_set(&to_uids)
        );
        if moving {
            self.untagged(&format!("OK [{code}] Moved"));
            self.refresh().await;
            Done::ok("MOVE completed")
        } else {
            Done::ok(format!("[{code}] COPY completed"))
        }
    }

    async fn search(&mut self, criteria: &[SearchKey<'_>], uid: bool) -> Done {
        let Some(selected) = &self.selected else {
            return Done::bad("Select a mailbox first");
        };
        let entries = selected.entries.clone();
        let needs_body = criteria.iter().any(needs_message);
        let mut hits = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let body = if needs_body {
                match self.body_of(entry).await {
                    Ok(body) => Some(body),
                    Err(done) => return done,
                }
            } else {
                None
            };
            let parsed = body
                .as_deref()
                .and_then(|b| MessageParser::default().parse(b));
            let Some(selected) = &self.selected else {
                break;
            };
            let ctx = Candidate {
                selected,
                index,
                entry,
                raw: body.as_deref(),
                parsed: parsed.as_ref(),
            };
            if criteria.iter().all(|k| ctx.matches(k)) {
                hits.push((if uid { entry.uid } else { index as i64 + 1 }, entry.modseq));
            }
        }
        let list: Vec<String> = hits.iter().map(|(n, _)| n.to_string()).collect();
        let highest = hits.iter().map(|(_, m)| *m).max();
        if let Some((tag, returns)) = self.esearch.take() {
            let found: Vec<i64> = hits.iter().map(|(n, _)| *n).collect();
            let modseq = highest.filter(|_| criteria.iter().any(uses_modseq));
            self.untagged(&esearch_response(&tag, uid, &returns, &found, modseq));
        } else if list.is_empty() {
            self.untagged("SEARCH");
        } else if criteria.iter().any(uses_modseq) {
            // The highest modseq of the messages found (RFC 7162 §3.1.5).
            self.reporting.modseq = true;
            let highest = highest.unwrap_or_default();
            self.untagged(&format!("SEARCH {} (MODSEQ {highest})", list.join(" ")));
        } else {
            self.untagged(&format!("SEARCH {}", list.join(" ")));
        }
        Done::ok(if uid {
            "UID SEARCH completed"
        } else {
            "SEARCH completed"
        })
    }

    /// IDLE until DONE: changes to the selected folder are sent as they happen.
    async fn idle(&mut self) -> io::Result<(Done, After)> {
        let _idling = Idling::start();
        self.out.extend_from_slice(b"+ idling\r\n");
        self.flush().await?;
        let deadline = tokio::time::Instant::now() + IDLE_TIMEOUT;
        let mut shutdown = self.ctx.shutdown.clone();
        loop {
            match self.framer.next_line() {
                Ok(Some(line)) => {
                    let done = if line.eq_ignore_ascii_case(b"DONE") {
                        Done::ok("IDLE terminated")
                    } else {
                        Done::bad("Expected DONE")
                    };
                    return Ok((done, After::Continue));
                }
                Ok(None) => {}
                Err(_) => return Ok((Done::bad("Line too long"), After::Close)),
            }
            let mut buf = [0u8; 1024];
            tokio::select! {
                read = self.stream.read(&mut buf) => match read? {
                    0 => return Ok((Done::ok(""), After::Close)),
                    n => self.framer.push(&buf[..n]),
                },
                _ = tokio::time::sleep(IDLE_POLL) => {
                    self.refresh().await;
                    if self.closing {
                        self.flush().await?;
                        return Ok((Done::silent(), After::Close));
                    }
                    self.flush().await?;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.untagged("BYE Autologout; idle for too long");
                    return Ok((Done::ok("IDLE ended"), After::Close));
                }
                _ = async { shutdown.wait_for(|down| *down).await.map(drop) } => {
                    self.untagged("BYE [UNAVAILABLE] Server shutting down; reconnect shortly");
                    return Ok((Done::ok("IDLE ended"), After::Close));
                }
            }
        }
    }
}

/// What a STORE asks.
struct FlagChange<'a, 'b> {
    kind: &'a StoreType,
    silent: bool,
    flags: &'a [Flag<'b>],
    unchanged_since: Option<u64>,
}

/// Whether `uid` is in a UID set (`*` is no bound: the largest UID in use is above it).
fn in_uid_set(set: &SequenceSet, uid: i64) -> bool {
    let value = |v: &SeqOrUid| match v {
        SeqOrUid::Value(n) => i64::from(n.get()),
        SeqOrUid::Asterisk => i64::MAX,
    };
    set.0.as_ref().iter().any(|s| match s {
        Sequence::Single(v) => value(v) == uid,
        Sequence::Range(a, b) => {
            let (a, b) = (value(a), value(b));
            a.min(b) <= uid && uid <= a.max(b)
        }
    })
}

/// The stored bits of the system flags in `args` (keywords are not kept).
fn flag_bits(args: &[Flag<'_>]) -> i64 {
    args.iter()
        .map(|f| match f {
            Flag::Seen => flags::SEEN,
            Flag::Answered => flags::ANSWERED,
            Flag::Flagged => flags::FLAGGED,
            Flag::Deleted => flags::DELETED,
            Flag::Draft => flags::DRAFT,
            _ => 0,
        })
        .fold(0, |a, b| a | b)
}

/// A LIST or LSUB in RFC 3501's form, as imap-codec parsed it.
fn basic_list(reference: &Mailbox<'_>, pattern: &ListMailbox<'_>, lsub: bool) -> ListRequest {
    let reference = match reference {
        Mailbox::Inbox => crate::store::INBOX.to_string(),
        Mailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
    };
    let pattern = match pattern {
        ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).into_owned(),
        ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).into_owned(),
    };
    ListRequest {
        reference,
        patterns: vec![pattern],
        subscribed_only: lsub,
        ..ListRequest::default()
    }
}
