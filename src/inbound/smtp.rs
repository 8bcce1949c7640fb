//! SMTP's way into the inbound pipeline: who may authenticate, which senders and recipients
//! are accepted (and where each recipient's mail goes), and how a complete message becomes
//! durable before its `250`; and the [`Protocol`] that puts SMTP sessions with this policy
//! behind a [`crate::net::Listener`].
//!
//! The driver ([`crate::smtp::connection`]) turns each event of the sans-I/O session that needs
//! an application decision into one call of a [`SessionPolicy`]. [`SmtpPolicy`] is the real
//! policy over the stores and the acceptor: on a complete message the body (with its
//! `Received:` header) is written and fsynced to the blob store, its metadata is committed
//! through the storage writer's group commit, and only then is the `250` answered.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::checks::{self, Candidate, Checks};
use super::commit::{AcceptError, Acceptor, Incoming};
use super::recipients::{Recipient, RecipientRefusal, Recipients};
use crate::auth::AuthError;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::events::{self, SmtpAuthFailed, SmtpMessageAccepted, SmtpMessageRejected};
use crate::message::{self, Arrival};
use crate::net::{ConnectionGuard, LimitExceeded, Protocol};
use crate::smtp::connection::{SessionActor, SessionArgs};
use crate::smtp::policy::SessionPolicy;
use crate::smtp::session::{Answer, AuthMechanism, Envelope, Reply};
use crate::smtp::{ListenerKind, SessionContext};
use crate::store::{LocalDelivery, Stores, new_id};

/// A session's log lines, the driver's and the policy's, share the driver's target, so one
/// filter directive (`mairust::smtp::connection=debug`) selects a connection's whole story.
const LOG_TARGET: &str = "mairust::smtp::connection";

/// What SMTP's policy needs from the rest of the process.
pub struct SmtpContext {
    /// The configuration.
    pub config: Arc<Config>,
    /// Metadata and blobs.
    pub stores: Stores,
    /// Who each recipient is.
    pub recipients: Recipients,
    /// The acceptance path (blob, group commit, queue hint).
    pub acceptor: Acceptor,
    /// Password checks, shared by all sessions and the API.
    pub authenticator: Arc<Authenticator>,
    /// The checks on a complete message, shared with the API's send path.
    pub checks: Arc<Checks>,
    /// What the session driver needs (TLS, shutdown, test hooks).
    pub session: Arc<SessionContext>,
}

/// SMTP on one listener (MX or submission), for [`crate::net::Listener`].
pub struct SmtpProtocol {
    /// Shared context.
    pub ctx: Arc<SmtpContext>,
    /// MX or submission.
    pub kind: ListenerKind,
}

impl Protocol for SmtpProtocol {
    type Session = SessionActor<SmtpPolicy>;

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
        peer: SocketAddr,
        guard: ConnectionGuard,
    ) -> SessionArgs<SmtpPolicy> {
        SessionArgs {
            ctx: self.ctx.session.clone(),
            kind: self.kind,
            stream,
            peer,
            guard,
            policy: SmtpPolicy::new(self.ctx.clone(), self.kind, peer),
        }
    }
}

/// The policy of a MaiRust listener: hosted domains and users from the store, postmaster
/// routing, submission sender ownership, and acceptance through the acceptor.
pub struct SmtpPolicy {
    ctx: Arc<SmtpContext>,
    kind: ListenerKind,
    peer: SocketAddr,
    /// The client is in `smtp.trusted_networks`: it may relay without AUTH.
    trusted: bool,
    /// The current transaction's accepted recipients, by lower-cased address.
    recipients: HashMap<String, Recipient>,
    /// The user signed in with AUTH on this connection.
    signed_in: Option<i64>,
}

fn reply(code: u16, status: (u8, u16, u16), text: impl Into<String>) -> Reply {
    Reply::new(code, status, text)
}

/// Refuses with `r`, counting the refusal under `reason`.
fn rejected(reason: &'static str, r: Reply) -> Answer {
    events::emit(SmtpMessageRejected { reason });
    Answer::Reject(r)
}

impl SessionPolicy for SmtpPolicy {
    async fn authenticate(
        &mut self,
        mechanism: AuthMechanism,
        authzid: Option<&str>,
        username: &str,
        password: &str,
    ) -> Answer {
        // Acting on behalf of another identity is not supported.
        let proxy = authzid.is_some_and(|z| !z.is_empty() && !z.eq_ignore_ascii_case(username));
        if proxy {
            return Answer::Auth(false);
        }
        self.check_credentials(mechanism, username, password).await
    }

    async fn mail_from(&mut self, address: &str, authenticated: Option<&str>) -> Answer {
        self.recipients.clear();
        if let Some(user) = authenticated
            && let Some(refusal) = self.check_account_still_exists(user).await
        {
            return refusal;
        }
        self.check_sender(address, authenticated)
    }

    async fn rcpt_to(&mut self, address: &str, authenticated: Option<&str>) -> Answer {
        self.check_recipient(address, authenticated).await
    }

    async fn message(&mut self, envelope: Envelope, data: Vec<u8>) -> Answer {
        self.accept(envelope, data).await
    }
}

impl SmtpPolicy {
    /// The policy for one connection from `peer` on a `kind` listener.
    pub fn new(ctx: Arc<SmtpContext>, kind: ListenerKind, peer: SocketAddr) -> Self {
        Self {
            trusted: ctx.config.smtp.is_trusted(peer.ip()),
            ctx,
            kind,
            peer,
            recipients: HashMap::new(),
            signed_in: None,
        }
    }

    async fn check_credentials(
        &mut self,
        mechanism: AuthMechanism,
        username: &str,
        password: &str,
    ) -> Answer {
        let user = match self
            .ctx
            .authenticator
            .authenticate(self.peer.ip(), username, password)
            .await
        {
            Ok(user) => user,
            Err(busy @ AuthError::Busy) => {
                tracing::warn!(target: LOG_TARGET, peer = %self.peer, user = username, "AUTH refused: {busy}");
                return Answer::Reject(reply(454, (4, 7, 0), busy.to_string()));
            }
            Err(error) => {
                tracing::error!(target: LOG_TARGET, %error, "AUTH lookup failed");
                return Answer::Reject(reply(
                    454,
                    (4, 7, 0),
                    "Temporary authentication failure; try again later",
                ));
            }
        };
        if let Some(user) = user {
            self.signed_in = Some(user.id);
            tracing::info!(target: LOG_TARGET, peer = %self.peer, user = username, mechanism = ?mechanism, "SMTP AUTH succeeded");
            Answer::Auth(true)
        } else {
            events::emit(SmtpAuthFailed {
                peer: self.peer,
                user: username,
                mechanism: &mechanism,
            });
            Answer::Auth(false)
        }
    }

    /// A session signed in as `user` sends nothing once the account is deleted (on this node
    /// or another): each transaction checks it again.
    async fn check_account_still_exists(&self, user: &str) -> Option<Answer> {
        match self.ctx.stores.accounts.credentials(user).await {
            Ok(Some(_)) => None,
            Ok(None) => {
                tracing::warn!(target: LOG_TARGET, peer = %self.peer, user, "signed-in account no longer exists; sender refused");
                Some(rejected(
                    "account_deleted",
                    reply(
                        530,
                        (5, 7, 0),
                        format!("Authentication required: the account {user} no longer exists"),
                    ),
                ))
            }
            Err(error) => {
                tracing::error!(target: LOG_TARGET, %error, "account lookup failed");
                Some(Answer::Reject(reply(
                    451,
                    (4, 3, 0),
                    "Temporary lookup failure, try again later",
                )))
            }
        }
    }

    fn check_sender(&self, address: &str, authenticated: Option<&str>) -> Answer {
        // A trusted client without AUTH (an application server) sends as anyone, as with
        // Postfix's mynetworks; a signed-in user only as themselves.
        if self.kind == ListenerKind::Submission && (authenticated.is_some() || !self.trusted) {
            let owner = authenticated.unwrap_or_default();
            if !address.eq_ignore_ascii_case(owner) {
                return rejected(
                    "sender_not_owned",
                    reply(
                        553,
                        (5, 7, 1),
                        format!("<{address}>: Sender address rejected: not owned by user {owner}"),
                    ),
                );
            }
        }
        Answer::Accept
    }

    async fn check_recipient(&mut self, address: &str, authenticated: Option<&str>) -> Answer {
        let may_relay =
            (self.kind == ListenerKind::Submission && authenticated.is_some()) || self.trusted;
        match self.ctx.recipients.resolve(address, may_relay).await {
            Ok(route) => {
                self.recipients.insert(address.to_ascii_lowercase(), route);
                Answer::Accept
            }
            Err(RecipientRefusal::MailboxFull(_)) => rejected(
                "mailbox_full",
                reply(452, (4, 2, 2), format!("<{address}>: Mailbox full")),
            ),
            Err(RecipientRefusal::UnknownUser(_)) => rejected(
                "unknown_user",
                reply(
                    550,
                    (5, 1, 1),
                    format!("<{address}>: Recipient address rejected: User unknown"),
                ),
            ),
            Err(RecipientRefusal::RelayDenied(_)) => rejected(
                "relay_denied",
                reply(554, (5, 7, 1), format!("<{address}>: Relay access denied")),
            ),
            Err(error @ RecipientRefusal::NoPostmaster) => {
                tracing::error!(target: LOG_TARGET, recipient = address, %error);
                rejected(
                    "temporary_failure",
                    reply(
                        451,
                        (4, 3, 0),
                        "Postmaster mailbox unavailable, try again later",
                    ),
                )
            }
            Err(RecipientRefusal::Lookup(error)) => {
                tracing::error!(target: LOG_TARGET, %error, "recipient lookup failed");
                rejected(
                    "temporary_failure",
                    reply(451, (4, 3, 0), "Temporary lookup failure, try again later"),
                )
            }
        }
    }

    async fn accept(&mut self, envelope: Envelope, data: Vec<u8>) -> Answer {
        let mut local = Vec::new();
        let mut remote = Vec::new();
        for rcpt in &envelope.rcpt_to {
            match self.recipients.get(&rcpt.to_ascii_lowercase()) {
                Some(Recipient::Local(user)) => local.push(LocalDelivery::inbox(*user)),
                Some(Recipient::Remote) => remote.push(rcpt.clone()),
                None => {}
            }
        }
        local.sort_unstable();
        local.dedup();
        remote.sort_unstable();
        remote.dedup();
        let candidate = Candidate {
            data: &data,
            envelope_from: &envelope.mail_from,
            // A signed-in submitter sends as themselves; a trusted network's application (no
            // AUTH) as anyone.
            sender_identity: envelope
                .authenticated
                .as_deref()
                .filter(|_| self.kind == ListenerKind::Submission),
            // Mail MaiRust signs: submission and trusted networks.
            vouched: self.kind == ListenerKind::Submission || self.trusted,
            peer: self.peer,
            deliveries: &local,
        };
        let accepted = match self.ctx.checks.run(&candidate).await {
            Ok(accepted) => accepted,
            Err(refusal) => {
                return rejected(
                    refusal.reason,
                    reply(refusal.code, refusal.status, refusal.text),
                );
            }
        };
        checks::place(&mut local, &accepted.placements);
        // For clients that do not keep their own copy (most APPEND it to Sent themselves).
        if self.kind == ListenerKind::Submission
            && self.ctx.config.submission.save_to_sent
            && let Some(user) = self.signed_in
        {
            local.push(LocalDelivery::sent_copy(user));
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
            via: None,
        };
        let stored = message::prepare_for_storage(&arrival, &data, &accepted.headers);
        drop(data);
        let incoming = Incoming {
            id: id.clone(),
            envelope_from: envelope.mail_from.clone(),
            deliveries: local,
            remote_recipients: remote,
            data: stored,
            // Submission checked that From and Sender are the user's own address. A trusted
            // network's mail is signed for its envelope sender's domain (when From is there too).
            sign_for: envelope
                .authenticated
                .clone()
                .or_else(|| self.trusted.then(|| envelope.mail_from.clone())),
        };
        let size = match self.ctx.acceptor.accept(incoming).await {
            Ok(size) => size,
            Err(error) => {
                tracing::error!(target: LOG_TARGET, %error, id = %id, "message not accepted");
                let reason = match error {
                    AcceptError::Blob(_) => "blob_write_failed",
                    AcceptError::Commit(_) => "commit_failed",
                    AcceptError::Worker(_) => "worker_failed",
                    AcceptError::Unsendable(e) => {
                        return rejected("unsendable", reply(550, (5, 6, 0), e.to_string()));
                    }
                };
                return self.temporary_failure(reason);
            }
        };
        events::emit(SmtpMessageAccepted {
            listener: self.kind.label(),
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
        rejected(
            reason,
            reply(
                451,
                (4, 3, 0),
                "Temporary storage failure, message not accepted; try again later",
            ),
        )
    }
}
