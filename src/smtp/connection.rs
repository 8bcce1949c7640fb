//! The per-connection driver: one session actor owns the socket, the timer and the TLS
//! upgrade, and feeds the sans-I/O [`ServerSession`] with bytes and the answers to its events.
//!
//! The acceptance path lives here: on a complete message the body (with its `Received:`
//! header) is written and fsynced to the blob store, its metadata is committed through the
//! storage writer's group commit, and only then is `250` sent.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::session::{
    Answer, AuthMechanism, Envelope, Event, PeerInfo, Reply, ServerSession, SessionConfig,
};
use super::{ConnectionGuard, ListenerKind, SmtpContext};
use crate::acceptance::{AcceptError, Incoming, new_id};
use crate::auth;
use crate::events::{
    self, SmtpAuthFailed, SmtpConnectionClosed, SmtpConnectionOpened, SmtpForeignHeaderSender,
    SmtpMessageAccepted, SmtpMessageRejected,
};
use crate::message::{self, Arrival};
use crate::store::RecipientLookup;

/// The connection, plain or after STARTTLS.
type Stream = super::stream::Stream<tokio_rustls::server::TlsStream<TcpStream>>;

/// What a session actor is started with.
pub struct SessionArgs {
    /// Shared context.
    pub ctx: Arc<SmtpContext>,
    /// The listener it came in on.
    pub kind: ListenerKind,
    /// The accepted socket.
    pub stream: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// Its slot in the connection limits, freed when the session ends however it ends.
    pub guard: ConnectionGuard,
}

/// One actor per connection; its only message runs the connection to its end.
pub struct SessionActor;

impl Actor for SessionActor {
    type Msg = ();
    type State = Option<SessionArgs>;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        args: SessionArgs,
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

/// Where an accepted recipient goes.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// A local user's mailbox.
    Local(i64),
    /// The delivery queue (authenticated submission only).
    Remote,
}

struct Connection {
    ctx: Arc<SmtpContext>,
    kind: ListenerKind,
    peer: SocketAddr,
    stream: Stream,
    session: ServerSession,
    /// The current transaction's accepted recipients, by lower-cased address.
    recipients: HashMap<String, Route>,
    _guard: ConnectionGuard,
}

fn reply(code: u16, status: (u8, u16, u16), text: impl Into<String>) -> Reply {
    Reply::new(code, status, text)
}

impl Connection {
    fn new(args: SessionArgs) -> Self {
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
            },
            PeerInfo { ip: args.peer.ip() },
        );
        Self {
            kind: args.kind,
            peer: args.peer,
            stream: Stream::Plain(args.stream),
            session,
            recipients: HashMap::new(),
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
        let mut buf = vec![0u8; 64 * 1024];
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
                self.handle_event(event).await?;
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
                    Ok(Ok(n)) => self.session.handle_input(&buf[..n]),
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
                // Acting on behalf of another identity is not supported.
                let proxy =
                    authzid.is_some_and(|z| !z.is_empty() && !z.eq_ignore_ascii_case(&username));
                let ok = !proxy && self.authenticate(mechanism, &username, &password).await;
                self.session.answer(Answer::Auth(ok));
            }
            Event::MailFrom { address, .. } => {
                self.recipients.clear();
                let answer = self.check_sender(&address);
                self.session.answer(answer);
            }
            Event::Recipient { address } => {
                let answer = self.check_recipient(&address).await;
                self.session.answer(answer);
            }
            Event::Message { envelope, data } => {
                let answer = self.accept(envelope, data).await;
                self.session.answer(answer);
            }
        }
        Ok(())
    }

    async fn authenticate(&self, mechanism: AuthMechanism, username: &str, password: &str) -> bool {
        // The attempt is counted before the check, so parallel guesses escalate.
        let attempt = self.ctx.throttle.begin(self.peer.ip(), username, password);
        attempt.wait().await;
        let user = match auth::authenticate(self.ctx.stores.meta.as_ref(), username, password).await
        {
            Ok(user) => user,
            Err(error) => {
                tracing::error!(%error, "AUTH lookup failed");
                None
            }
        };
        if user.is_some() {
            attempt.succeeded();
            tracing::info!(peer = %self.peer, user = username, mechanism = ?mechanism, "SMTP AUTH succeeded");
            true
        } else {
            attempt.failed();
            events::emit(SmtpAuthFailed {
                peer: self.peer,
                user: username,
                mechanism: &mechanism,
            });
            false
        }
    }

    fn check_sender(&self, address: &str) -> Answer {
        if self.kind == ListenerKind::Submission {
            let owner = self.session.authenticated_user().unwrap_or_default();
            if !address.eq_ignore_ascii_case(owner) {
                events::emit(SmtpMessageRejected {
                    reason: "sender_not_owned",
                });
                return Answer::Reject(reply(
                    553,
                    (5, 7, 1),
                    format!("<{address}>: Sender address rejected: not owned by user {owner}"),
                ));
            }
        }
        Answer::Accept
    }

    async fn check_recipient(&mut self, address: &str) -> Answer {
        let rejected = |reason: &'static str, r: Reply| {
            events::emit(SmtpMessageRejected { reason });
            Answer::Reject(r)
        };
        let lookup = self.ctx.stores.meta.lookup_recipient(address).await;
        let postmaster = match &lookup {
            // RFC 5321 §4.5.1: bare <postmaster> and postmaster@ every hosted domain MUST be
            // accepted; a real user of that name keeps their own mail.
            Ok(RecipientLookup::NotHosted) => address.eq_ignore_ascii_case("postmaster"),
            Ok(RecipientLookup::UnknownUser) => address
                .split_once('@')
                .is_some_and(|(local, _)| local.eq_ignore_ascii_case("postmaster")),
            _ => false,
        };
        if postmaster {
            return match self.postmaster_mailbox().await {
                Ok(Some(user_id)) => {
                    self.recipients
                        .insert(address.to_ascii_lowercase(), Route::Local(user_id));
                    Answer::Accept
                }
                Ok(None) => {
                    tracing::error!(
                        recipient = address,
                        "no mailbox for postmaster; set smtp.postmaster to a local user"
                    );
                    rejected(
                        "temporary_failure",
                        reply(
                            451,
                            (4, 3, 0),
                            "Postmaster mailbox unavailable, try again later",
                        ),
                    )
                }
                Err(error) => {
                    tracing::error!(%error, "postmaster lookup failed");
                    rejected(
                        "temporary_failure",
                        reply(451, (4, 3, 0), "Temporary lookup failure, try again later"),
                    )
                }
            };
        }
        match lookup {
            Ok(RecipientLookup::Local {
                user_id,
                over_quota,
            }) => {
                if over_quota {
                    return rejected(
                        "mailbox_full",
                        reply(452, (4, 2, 2), format!("<{address}>: Mailbox full")),
                    );
                }
                self.recipients
                    .insert(address.to_ascii_lowercase(), Route::Local(user_id));
                Answer::Accept
            }
            Ok(RecipientLookup::UnknownUser) => rejected(
                "unknown_user",
                reply(
                    550,
                    (5, 1, 1),
                    format!("<{address}>: Recipient address rejected: User unknown"),
                ),
            ),
            Ok(RecipientLookup::NotHosted)
                if self.kind == ListenerKind::Submission
                    && self.session.authenticated_user().is_some() =>
            {
                self.recipients
                    .insert(address.to_ascii_lowercase(), Route::Remote);
                Answer::Accept
            }
            Ok(RecipientLookup::NotHosted) => rejected(
                "relay_denied",
                reply(554, (5, 7, 1), format!("<{address}>: Relay access denied")),
            ),
            Err(error) => {
                tracing::error!(%error, "recipient lookup failed");
                rejected(
                    "temporary_failure",
                    reply(451, (4, 3, 0), "Temporary lookup failure, try again later"),
                )
            }
        }
    }

    /// The user who receives mail to `postmaster`: `smtp.postmaster`, else `admin.email`, else
    /// the oldest admin account.
    async fn postmaster_mailbox(&self) -> Result<Option<i64>, crate::store::StoreError> {
        let config = &self.ctx.config;
        let meta = self.ctx.stores.meta.as_ref();
        match config
            .smtp
            .postmaster
            .as_ref()
            .or(config.admin.email.as_ref())
        {
            Some(address) => Ok(meta.credentials(address).await?.map(|c| c.user.id)),
            None => Ok(meta
                .list_users()
                .await?
                .into_iter()
                .filter(|u| u.is_admin)
                .min_by_key(|u| (u.created_at, u.id))
                .map(|u| u.id)),
        }
    }

    async fn accept(&mut self, envelope: Envelope, data: Vec<u8>) -> Answer {
        if self.kind == ListenerKind::Submission {
            let owner = envelope.authenticated.as_deref().unwrap_or_default();
            let foreign = message::foreign_senders(&data, owner);
            if let Some(first) = foreign.first() {
                events::emit(SmtpForeignHeaderSender {
                    peer: self.peer,
                    user: owner,
                    from: first,
                });
                let shown: String = first.chars().take(64).collect();
                return Answer::Reject(reply(
                    553,
                    (5, 7, 1),
                    format!("<{shown}>: From/Sender header rejected: not owned by user {owner}"),
                ));
            }
        }
        let started = Instant::now();
        let id = new_id();
        let single_recipient = match envelope.rcpt_to.as_slice() {
            [only] => Some(only.as_str()),
            _ => None,
        };
        let arrival = Arrival {
            hostname: &self.ctx.config.server.hostname,
            helo: &envelope.helo,
            peer_ip: self.peer.ip(),
            esmtp: envelope.esmtp,
            tls: envelope.tls,
            authenticated: envelope.authenticated.is_some(),
            id: &id,
            single_recipient,
            fix_missing_headers: self.kind == ListenerKind::Submission,
        };
        let stored = message::prepare_for_storage(&arrival, &data);
        drop(data);

        let mut local = Vec::new();
        let mut remote = Vec::new();
        for rcpt in &envelope.rcpt_to {
            match self.recipients.get(&rcpt.to_ascii_lowercase()) {
                Some(Route::Local(user)) => local.push(*user),
                Some(Route::Remote) => remote.push(rcpt.clone()),
                None => {}
            }
        }
        local.sort_unstable();
        local.dedup();
        remote.sort_unstable();
        remote.dedup();
        let incoming = Incoming {
            id: id.clone(),
            envelope_from: envelope.mail_from.clone(),
            local_recipients: local,
            remote_recipients: remote,
            data: stored,
            // Submission checked that From and Sender are the user's own address.
            sign_for: envelope.authenticated.clone(),
        };
        let size = match self.ctx.acceptor.accept(incoming).await {
            Ok(size) => size,
            Err(error) => {
                tracing::error!(%error, id = %id, "message not accepted");
                let reason = match error {
                    AcceptError::Blob(_) => "blob_write_failed",
                    AcceptError::Commit(_) => "commit_failed",
                    AcceptError::Unsendable(e) => {
                        events::emit(SmtpMessageRejected {
                            reason: "unsendable",
                        });
                        return Answer::Reject(reply(550, (5, 6, 0), e.to_string()));
                    }
                };
                return self.temporary_failure(reason);
            }
        };
        let label = self.kind.label();
        events::emit(SmtpMessageAccepted {
            listener: label,
            id: &id,
            peer: self.peer,
            from: &envelope.mail_from,
            recipients: envelope.rcpt_to.len(),
            size,
            elapsed: started.elapsed(),
        });
        self.recipients.clear();
        Answer::AcceptWith(reply(250, (2, 0, 0), format!("Ok: queued as {id}")))
    }

    fn temporary_failure(&self, reason: &'static str) -> Answer {
        events::emit(SmtpMessageRejected { reason });
        Answer::Reject(reply(
            451,
            (4, 3, 0),
            "Temporary storage failure, message not accepted; try again later",
        ))
    }
}

/// Resolves once shutdown starts (the watch guard must not live across an await).
async fn shutting_down(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
