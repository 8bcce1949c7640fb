//! The SMTP client session for outbound delivery, as a state machine with no I/O.
//!
//! # Contract
//!
//! The driver owns the socket and the timers. It creates a session, [`push`]es the
//! transactions to send (several per connection reuse it) and calls [`finish`] when no more
//! will come. Then it loops:
//!
//! 1. drain [`poll_event`]: on [`ClientEvent::StartTls`] write all pending output, do the TLS
//!    handshake and call [`tls_started`] (or [`handle_disconnect`] if it failed); on
//!    [`ClientEvent::ReadyToCommit`] write all pending output (the message data), then either
//!    [`commit`] (sends the end of data) or [`abort_commit`] and close the connection
//!    without writing anything more; [`ClientEvent::TransactionDone`] carries each
//!    transaction's per-recipient results, in the order of `push`;
//!    [`ClientEvent::SessionFailed`] says why the connection gave up;
//! 2. write everything [`poll_output`] returns;
//! 3. stop when [`is_done`];
//! 4. read, with the data timeout while [`expects_data_reply`] and the command timeout
//!    otherwise, and feed the bytes to [`handle_input`], or call [`handle_timeout`] /
//!    [`handle_disconnect`].
//!
//! Every transaction is reported exactly once, also when the connection fails: recipients not
//! finished by then get a temporary failure. Replies decide outcomes per recipient: `2xx`
//! delivered, `4xx` temporary, `5xx` permanent. With PIPELINING, MAIL, the RCPTs and DATA go
//! out in one write. A body needing 8BITMIME is sent even when the server does not offer it
//! (most servers accept it; downgrading would change the signed content).
//!
//! [`push`]: ClientSession::push
//! [`finish`]: ClientSession::finish
//! [`poll_event`]: ClientSession::poll_event
//! [`poll_output`]: ClientSession::poll_output
//! [`tls_started`]: ClientSession::tls_started
//! [`commit`]: ClientSession::commit
//! [`abort_commit`]: ClientSession::abort_commit
//! [`handle_input`]: ClientSession::handle_input
//! [`handle_timeout`]: ClientSession::handle_timeout
//! [`handle_disconnect`]: ClientSession::handle_disconnect
//! [`is_done`]: ClientSession::is_done
//! [`expects_data_reply`]: ClientSession::expects_data_reply

use std::collections::VecDeque;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

pub use crate::smtp::reply::Reply;

/// Most unparsed server input kept before the session gives up.
const MAX_INPUT: usize = 1024 * 1024;

/// When to use STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// When offered; otherwise in clear.
    Opportunistic,
    /// Always; a server without it gets a temporary failure.
    Required,
    /// Never.
    Disabled,
}

/// Credentials for a smarthost.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// How the client behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Our name in EHLO/HELO.
    pub helo_name: String,
    /// STARTTLS policy.
    pub tls: TlsPolicy,
    /// Whether the driver can do TLS at all.
    pub tls_available: bool,
    /// AUTH for a smarthost.
    pub auth: Option<Credentials>,
    /// Allow AUTH without TLS.
    pub allow_plain_auth: bool,
}

/// One message to send.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// Envelope sender; empty for the null sender.
    pub mail_from: String,
    /// Envelope recipients.
    pub rcpt_to: Vec<String>,
    /// The message, CRLF lines, not dot-stuffed.
    pub body: Arc<[u8]>,
    /// Needs SMTPUTF8.
    pub smtputf8: bool,
    /// Contains 8-bit data.
    pub body_8bit: bool,
}

/// The outcome for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the server.
    Delivered,
    /// Try again later.
    Temporary,
    /// Refused for good.
    Permanent,
}

impl Outcome {
    /// What a reply means for the recipients it answers: 2xx delivered, 5xx permanent,
    /// anything else temporary.
    fn of(reply: &Reply) -> Self {
        match reply.code {
            200..=299 => Self::Delivered,
            500..=599 => Self::Permanent,
            _ => Self::Temporary,
        }
    }
}

/// One recipient's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientResult {
    /// The recipient.
    pub recipient: String,
    /// What happened.
    pub outcome: Outcome,
    /// The deciding reply.
    pub reply: Reply,
}

/// What the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Write out pending output, do the TLS handshake, then call `tls_started`.
    StartTls,
    /// The message data of a transaction is queued and only its end (`.` CRLF) is left:
    /// write out pending output, then decide with `commit` or `abort_commit`. Until then the
    /// session sends nothing and leaves server input unread. A server only keeps a message
    /// whose end of data it received, so this is the last point where the driver can still
    /// take the transaction back.
    ReadyToCommit {
        /// Position in push order.
        index: usize,
    },
    /// A transaction finished (index in push order).
    TransactionDone {
        /// Position in push order.
        index: usize,
        /// One result per recipient, in order.
        results: Vec<RecipientResult>,
    },
    /// The connection gave up; unfinished transactions were reported before this.
    SessionFailed {
        /// The server reply that caused it, if any.
        reply: Option<Reply>,
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    AuthPlain,
    AuthLoginUser,
    AuthLoginPass,
    AuthFinal,
    Mail,
    Rcpt(usize),
    Data,
    DataEnd,
    /// Reply to a "." sent only to close a DATA nobody should have opened.
    DataDiscard,
    Rset,
    Quit,
}

#[derive(Debug, Default, Clone)]
struct Capabilities {
    pipelining: bool,
    starttls: bool,
    size: Option<usize>,
    smtputf8: bool,
    eightbit: bool,
    auth_plain: bool,
    auth_login: bool,
}

impl Capabilities {
    fn parse(lines: &[String]) -> Self {
        let mut caps = Self::default();
        for line in lines.iter().skip(1) {
            let upper = line.to_ascii_uppercase();
            let mut words = upper.split_whitespace();
            match words.next() {
                Some("PIPELINING") => caps.pipelining = true,
                Some("STARTTLS") => caps.starttls = true,
                Some("SMTPUTF8") => caps.smtputf8 = true,
                Some("8BITMIME") => caps.eightbit = true,
                Some("SIZE") => {
                    caps.size = words.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0)
                }
                Some("AUTH") => {
                    for mech in words {
                        match mech {
                            "PLAIN" => caps.auth_plain = true,
                            "LOGIN" => caps.auth_login = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        caps
    }
}

struct Current {
    index: usize,
    tx: Transaction,
    results: Vec<Option<Reply>>,
    mail: Option<Reply>,
    data: Option<Reply>,
}

impl Current {
    fn accepted(&self) -> bool {
        self.mail.as_ref().is_some_and(Reply::is_positive)
            && self.results.iter().flatten().any(Reply::is_positive)
    }
}

/// The client session.
pub struct ClientSession {
    config: ClientConfig,
    caps: Capabilities,
    input: Vec<u8>,
    lines: Vec<String>,
    output: Vec<u8>,
    events: VecDeque<ClientEvent>,
    expect: VecDeque<Expect>,
    queue: VecDeque<(usize, Transaction)>,
    current: Option<Current>,
    pushed: usize,
    finished: bool,
    ready: bool,
    tls: bool,
    tls_tried: bool,
    waiting_tls: bool,
    /// Message data is out; the end of data waits for the driver's decision.
    awaiting_commit: bool,
    authenticated: bool,
    quit_sent: bool,
    failed: bool,
    done: bool,
}

fn needs_utf8(tx: &Transaction) -> bool {
    tx.smtputf8 || !tx.mail_from.is_ascii() || tx.rcpt_to.iter().any(|r| !r.is_ascii())
}

/// Dot-stuffs `body` and ends it with `.` CRLF.
#[cfg(test)]
fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    dot_stuff_lines(body, out);
    out.extend_from_slice(b".\r\n");
}

/// Dot-stuffs `body` into complete CRLF lines, without the end of data (which waits for the
/// driver's commit). A bare CR or LF is written as CRLF whatever the stored body holds, so
/// no server can read a different end of data than ours (SMTP smuggling); bodies prepared at
/// acceptance have none, so their DKIM signature holds.
fn dot_stuff_lines(body: &[u8], out: &mut Vec<u8>) {
    let mut line_start = true;
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        match b {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if body.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                line_start = true;
            }
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                line_start = true;
            }
            _ => {
                if line_start && b == b'.' {
                    out.push(b'.');
                }
                out.push(b);
                line_start = false;
            }
        }
        i += 1;
    }
    if !line_start {
        out.extend_from_slice(b"\r\n");
    }
}

/// Splits `123-text`/`123 text` lines; `None` when the line is not a reply line.
fn reply_line(line: &str) -> Option<(u16, bool, &str)> {
    let bytes = line.as_bytes();
    if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code: u16 = line[..3].parse().ok()?;
    if !(200..600).contains(&code) {
        return None;
    }
    match bytes.get(3) {
        None => Some((code, true, "")),
        Some(b' ') => Some((code, true, &line[4..])),
        Some(b'-') => Some((code, false, &line[4..])),
        _ => None,
    }
}

fn enhanced_status(text: &str) -> Option<((u8, u16, u16), &str)> {
    let (first, rest) = text.split_once(' ').unwrap_or((text, ""));
    let mut parts = first.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(2..=5).contains(&class) {
        return None;
    }
    Some(((class, subject, detail), rest))
}

impl ClientSession {
    /// A session waiting for the server's greeting.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            caps: Capabilities::default(),
            input: Vec::new(),
            lines: Vec::new(),
            output: Vec::new(),
            events: VecDeque::new(),
            expect: VecDeque::from([Expect::Greeting]),
            queue: VecDeque::new(),
            current: None,
            pushed: 0,
            finished: false,
            ready: false,
            tls: false,
            tls_tried: false,
            waiting_tls: false,
            awaiting_commit: false,
            authenticated: false,
            quit_sent: false,
            failed: false,
            done: false,
        }
    }

    /// Queues a transaction.
    pub fn push(&mut self, tx: Transaction) {
        let index = self.pushed;
        self.pushed += 1;
        if self.failed || self.done {
            let reply = Reply::new(451, (4, 4, 2), "connection already closed");
            self.report_all_rcpts(index, &tx, &reply);
            return;
        }
        self.queue.push_back((index, tx));
        self.maybe_start();
    }

    /// No more transactions will be pushed.
    pub fn finish(&mut self) {
        self.finished = true;
        self.maybe_start();
    }

    /// Bytes from the server.
    pub fn handle_input(&mut self, data: &[u8]) {
        if self.done {
            return;
        }
        self.input.extend_from_slice(data);
        self.process_input();
        if self.input.len() > MAX_INPUT {
            self.fail(None, "server sent an over-long reply".into(), (4, 4, 0));
        }
    }

    /// Parses buffered input into replies while the session can act on them.
    fn process_input(&mut self) {
        while !self.waiting_tls && !self.awaiting_commit && !self.done {
            let Some(pos) = self.input.iter().position(|&b| b == b'\n') else {
                break;
            };
            let raw: Vec<u8> = self.input.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            let Some((code, last, text)) = reply_line(&line).map(|(c, l, t)| (c, l, t.to_string()))
            else {
                self.fail(
                    None,
                    format!("invalid reply from server: {line:.80}"),
                    (4, 4, 0),
                );
                return;
            };
            self.lines.push(text);
            if last {
                let lines = std::mem::take(&mut self.lines);
                self.on_reply(code, lines);
            }
        }
    }

    /// After [`ClientEvent::ReadyToCommit`]: sends the end of data, so the server may now
    /// accept the message.
    pub fn commit(&mut self) {
        if !self.awaiting_commit || self.done {
            return;
        }
        self.awaiting_commit = false;
        self.output.extend_from_slice(b".\r\n");
        self.expect.push_back(Expect::DataEnd);
        // Anything the server sent meanwhile answers from here on.
        self.process_input();
    }

    /// After [`ClientEvent::ReadyToCommit`]: gives the transaction up without its end of
    /// data. Every recipient of it and of the transactions after it fails temporarily with
    /// `reason`, the session is done and queues nothing more (not even QUIT, which the server
    /// would read as message data): the driver closes the connection, and the server discards
    /// the unterminated message.
    pub fn abort_commit(&mut self, reason: &str) {
        if !self.awaiting_commit || self.done {
            return;
        }
        self.awaiting_commit = false;
        let reply = Reply::new(451, (4, 3, 0), reason);
        if let Some(current) = self.current.take() {
            self.report_all_rcpts(current.index, &current.tx, &reply);
        }
        while let Some((index, tx)) = self.queue.pop_front() {
            self.report_all_rcpts(index, &tx, &reply);
        }
        self.events.push_back(ClientEvent::SessionFailed {
            reply: None,
            reason: reason.to_string(),
        });
        self.failed = true;
        self.done = true;
        self.expect.clear();
        self.output.clear();
    }

    /// Whether the session waits for [`commit`](Self::commit) or
    /// [`abort_commit`](Self::abort_commit).
    pub fn awaiting_commit(&self) -> bool {
        self.awaiting_commit
    }

    /// Output to write to the server.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Vec<u8>> {
        (!self.output.is_empty()).then(|| std::mem::take(&mut self.output))
    }

    /// The next event for the driver.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The TLS handshake after [`ClientEvent::StartTls`] succeeded.
    pub fn tls_started(&mut self) {
        if !self.waiting_tls {
            return;
        }
        self.waiting_tls = false;
        self.tls = true;
        self.caps = Capabilities::default();
        self.input.clear();
        self.command(&format!("EHLO {}", self.config.helo_name), Expect::Ehlo);
    }

    /// The read timer fired.
    pub fn handle_timeout(&mut self) {
        self.abort("timeout waiting for the server");
    }

    /// The connection was lost (or the TLS handshake failed).
    pub fn handle_disconnect(&mut self) {
        if self.quit_sent && self.current.is_none() && self.queue.is_empty() {
            self.done = true;
            return;
        }
        self.abort("connection lost");
    }

    /// Whether the driver should close the connection.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Transactions pushed so far: the index the next one gets in its
    /// [`ClientEvent::TransactionDone`].
    pub fn pushed(&self) -> usize {
        self.pushed
    }

    /// Whether the connection is open, past its greeting, TLS and AUTH, and waits for a
    /// transaction with nothing in flight: it can be kept and given more.
    pub fn is_idle(&self) -> bool {
        self.ready
            && !self.failed
            && !self.done
            && !self.finished
            && !self.awaiting_commit
            && !self.waiting_tls
            && self.current.is_none()
            && self.queue.is_empty()
            && self.expect.is_empty()
    }

    /// Whether the next reply is the one after the message data (longer timeout).
    pub fn expects_data_reply(&self) -> bool {
        self.expect.front() == Some(&Expect::DataEnd)
    }

    /// Whether TLS is active.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    fn send_line(&mut self, line: &str) {
        self.output.extend_from_slice(line.as_bytes());
        self.output.extend_from_slice(b"\r\n");
    }

    /// Sends a command and records which reply answers it.
    fn command(&mut self, line: &str, expect: Expect) {
        self.send_line(line);
        self.expect.push_back(expect);
    }

    /// Gives up because the server refused `what`.
    fn refused(&mut self, what: &str, reply: Reply, status: (u8, u16, u16)) {
        let reason = format!("{what} refused: {}", reply.summary());
        self.fail(Some(reply), reason, status);
    }

    fn abort(&mut self, reason: &str) {
        if self.done {
            return;
        }
        self.awaiting_commit = false;
        if !self.failed {
            self.fail_transactions(&Reply::new(451, (4, 4, 2), reason));
            self.events.push_back(ClientEvent::SessionFailed {
                reply: None,
                reason: reason.to_string(),
            });
        }
        self.failed = true;
        self.done = true;
        self.expect.clear();
    }

    /// Gives up on this connection: every unfinished transaction fails with `reply` (or a
    /// temporary failure), then QUIT.
    fn fail(&mut self, server_reply: Option<Reply>, reason: String, status: (u8, u16, u16)) {
        if self.failed || self.done {
            return;
        }
        if self.awaiting_commit {
            // Mid-data a QUIT would be message data: just drop the connection.
            self.abort(&reason);
            return;
        }
        let reply = Reply::new(451, status, reason.clone());
        self.fail_transactions(&reply);
        self.failed = true;
        self.events.push_back(ClientEvent::SessionFailed {
            reply: server_reply,
            reason,
        });
        self.expect.clear();
        self.quit();
    }

    fn fail_transactions(&mut self, reply: &Reply) {
        if let Some(current) = self.current.take() {
            let results = current
                .tx
                .rcpt_to
                .iter()
                .zip(&current.results)
                .map(|(rcpt, r)| match r {
                    Some(r) if !r.is_positive() || current.data.is_some() => RecipientResult {
                        recipient: rcpt.clone(),
                        outcome: Outcome::of(r),
                        reply: r.clone(),
                    },
                    _ => RecipientResult {
                        recipient: rcpt.clone(),
                        outcome: Outcome::Temporary,
                        reply: reply.clone(),
                    },
                })
                .collect();
            self.events.push_back(ClientEvent::TransactionDone {
                index: current.index,
                results,
            });
        }
        while let Some((index, tx)) = self.queue.pop_front() {
            self.report_all_rcpts(index, &tx, reply);
        }
    }

    fn report_all_rcpts(&mut self, index: usize, tx: &Transaction, reply: &Reply) {
        let results = tx
            .rcpt_to
            .iter()
            .map(|r| RecipientResult {
                recipient: r.clone(),
                outcome: Outcome::of(reply),
                reply: reply.clone(),
            })
            .collect();
        self.events
            .push_back(ClientEvent::TransactionDone { index, results });
    }

    fn quit(&mut self) {
        if !self.quit_sent && !self.done {
            self.quit_sent = true;
            self.command("QUIT", Expect::Quit);
        }
    }

    fn on_reply(&mut self, code: u16, lines: Vec<String>) {
        let (status, text) = match lines.first().and_then(|l| enhanced_status(l)) {
            Some((status, rest)) => (Some(status), rest.to_string()),
            None => (None, lines.first().cloned().unwrap_or_default()),
        };
        let mut text = text;
        for more in lines.iter().skip(1) {
            let more = enhanced_status(more).map(|(_, rest)| rest).unwrap_or(more);
            if !more.is_empty() && code >= 400 {
                text.push(' ');
                text.push_str(more);
            }
        }
        let reply = Reply { code, status, text };
        let Some(expect) = self.expect.pop_front() else {
            self.fail(
                Some(reply),
                "unexpected reply from server".into(),
                (4, 4, 0),
            );
            return;
        };
        match expect {
            Expect::Greeting => {
                if reply.code == 220 {
                    self.command(&format!("EHLO {}", self.config.helo_name), Expect::Ehlo);
                } else {
                    self.refused("greeting", reply, (4, 4, 0));
                }
            }
            Expect::Ehlo => {
                if reply.is_positive() {
                    self.caps = Capabilities::parse(&lines);
                    self.after_hello();
                } else if reply.code >= 500 {
                    self.command(&format!("HELO {}", self.config.helo_name), Expect::Helo);
                } else {
                    self.refused("EHLO", reply, (4, 4, 0));
                }
            }
            Expect::Helo => {
                if reply.is_positive() {
                    self.caps = Capabilities::default();
                    self.after_hello();
                } else {
                    self.refused("HELO", reply, (4, 4, 0));
                }
            }
            Expect::StartTls => {
                if reply.code == 220 {
                    self.waiting_tls = true;
                    self.events.push_back(ClientEvent::StartTls);
                } else {
                    self.tls_tried = true;
                    self.after_hello();
                }
            }
            Expect::AuthPlain | Expect::AuthFinal => {
                if reply.code == 235 {
                    self.authenticated = true;
                    self.ready = true;
                    self.maybe_start();
                } else {
                    self.refused("smarthost AUTH", reply, (4, 7, 0));
                }
            }
            Expect::AuthLoginUser | Expect::AuthLoginPass => {
                let Some(creds) = self.config.auth.clone() else {
                    return;
                };
                if reply.code == 334 {
                    let secret = if expect == Expect::AuthLoginUser {
                        creds.username
                    } else {
                        creds.password
                    };
                    self.send_line(&B64.encode(secret));
                    self.expect.push_back(if expect == Expect::AuthLoginUser {
                        Expect::AuthLoginPass
                    } else {
                        Expect::AuthFinal
                    });
                } else {
                    self.refused("smarthost AUTH", reply, (4, 7, 0));
                }
            }
            Expect::Mail => {
                let ok = reply.is_positive();
                if let Some(current) = self.current.as_mut() {
                    current.mail = Some(reply.clone());
                }
                if !ok {
                    if !self.caps.pipelining {
                        self.end_transaction(false);
                    }
                } else if !self.caps.pipelining {
                    self.send_rcpt(0);
                }
            }
            Expect::Rcpt(i) => {
                let count = match self.current.as_mut() {
                    Some(current) => {
                        if let Some(slot) = current.results.get_mut(i) {
                            *slot = Some(reply.clone());
                        }
                        current.tx.rcpt_to.len()
                    }
                    None => 0,
                };
                if !self.caps.pipelining {
                    if i + 1 < count {
                        self.send_rcpt(i + 1);
                    } else if self.current.as_ref().is_some_and(Current::accepted) {
                        self.command("DATA", Expect::Data);
                    } else {
                        self.end_transaction(true);
                    }
                }
            }
            Expect::Data => {
                let accepted = self.current.as_ref().is_some_and(Current::accepted);
                if reply.code == 354 {
                    if accepted && let Some(current) = &self.current {
                        let index = current.index;
                        let mut out = std::mem::take(&mut self.output);
                        dot_stuff_lines(&current.tx.body, &mut out);
                        self.output = out;
                        self.awaiting_commit = true;
                        self.events.push_back(ClientEvent::ReadyToCommit { index });
                    } else {
                        self.command(".", Expect::DataDiscard);
                    }
                } else {
                    if accepted && let Some(current) = self.current.as_mut() {
                        current.data = Some(reply.clone());
                    }
                    self.end_transaction(true);
                }
            }
            Expect::DataDiscard => self.end_transaction(true),
            Expect::DataEnd => {
                if let Some(current) = self.current.as_mut() {
                    current.data = Some(reply);
                }
                self.end_transaction(false);
            }
            Expect::Rset => self.maybe_start(),
            Expect::Quit => self.done = true,
        }
    }

    /// EHLO/HELO done: STARTTLS, then AUTH, then transactions.
    fn after_hello(&mut self) {
        let can_tls = self.config.tls != TlsPolicy::Disabled && self.config.tls_available;
        if !self.tls && !self.tls_tried && can_tls && self.caps.starttls {
            self.command("STARTTLS", Expect::StartTls);
            return;
        }
        if !self.tls && self.config.tls == TlsPolicy::Required {
            self.fail(
                None,
                "TLS required but not available from the server".into(),
                (4, 7, 10),
            );
            return;
        }
        if let Some(creds) = self.config.auth.clone()
            && !self.authenticated
        {
            if !self.tls && !self.config.allow_plain_auth {
                self.fail(
                    None,
                    "smarthost AUTH requires TLS, which the server does not offer".into(),
                    (4, 7, 10),
                );
            } else if self.caps.auth_plain {
                let token = B64.encode(format!("\0{}\0{}", creds.username, creds.password));
                self.command(&format!("AUTH PLAIN {token}"), Expect::AuthPlain);
            } else if self.caps.auth_login {
                self.command("AUTH LOGIN", Expect::AuthLoginUser);
            } else {
                self.fail(
                    None,
                    "smarthost does not offer AUTH PLAIN or LOGIN".into(),
                    (4, 7, 0),
                );
            }
            return;
        }
        self.ready = true;
        self.maybe_start();
    }

    /// Starts the next transaction, or QUITs, when the connection is idle.
    fn maybe_start(&mut self) {
        while self.ready && !self.failed && self.current.is_none() && self.expect.is_empty() {
            let Some((index, tx)) = self.queue.pop_front() else {
                if self.finished {
                    self.quit();
                }
                return;
            };
            if let Some(limit) = self.caps.size
                && tx.body.len() > limit
            {
                let reply = Reply::new(
                    552,
                    (5, 3, 4),
                    format!("message too big for the server (limit {limit} bytes)"),
                );
                self.report_all_rcpts(index, &tx, &reply);
                continue;
            }
            let utf8 = needs_utf8(&tx);
            if utf8 && !self.caps.smtputf8 {
                let reply = Reply::new(
                    553,
                    (5, 6, 7),
                    "the server does not support SMTPUTF8 addresses",
                );
                self.report_all_rcpts(index, &tx, &reply);
                continue;
            }
            let mut mail = format!("MAIL FROM:<{}>", tx.mail_from);
            if self.caps.size.is_some() {
                mail.push_str(&format!(" SIZE={}", tx.body.len()));
            }
            if tx.body_8bit && self.caps.eightbit {
                mail.push_str(" BODY=8BITMIME");
            }
            if utf8 {
                mail.push_str(" SMTPUTF8");
            }
            let count = tx.rcpt_to.len();
            self.current = Some(Current {
                index,
                results: vec![None; count],
                tx,
                mail: None,
                data: None,
            });
            self.command(&mail, Expect::Mail);
            if self.caps.pipelining {
                for i in 0..count {
                    self.send_rcpt(i);
                }
                self.command("DATA", Expect::Data);
            }
        }
    }

    fn send_rcpt(&mut self, i: usize) {
        let Some(rcpt) = self
            .current
            .as_ref()
            .and_then(|c| c.tx.rcpt_to.get(i))
            .cloned()
        else {
            return;
        };
        self.command(&format!("RCPT TO:<{rcpt}>"), Expect::Rcpt(i));
    }

    /// Reports the current transaction; `rset` when the server may hold an open transaction.
    fn end_transaction(&mut self, rset: bool) {
        let Some(current) = self.current.take() else {
            return;
        };
        let missing = Reply::new(451, (4, 3, 0), "no reply for this recipient");
        let results = current
            .tx
            .rcpt_to
            .iter()
            .enumerate()
            .map(|(i, rcpt)| {
                let reply = match (
                    &current.mail,
                    current.results.get(i).cloned().flatten(),
                    &current.data,
                ) {
                    (Some(mail), _, _) if !mail.is_positive() => mail.clone(),
                    (_, Some(r), Some(data)) if r.is_positive() => data.clone(),
                    (_, Some(r), None) if r.is_positive() => {
                        Reply::new(451, (4, 3, 0), "message data was not sent")
                    }
                    (_, Some(r), _) => r,
                    _ => missing.clone(),
                };
                RecipientResult {
                    recipient: rcpt.clone(),
                    outcome: Outcome::of(&reply),
                    reply,
                }
            })
            .collect();
        self.events.push_back(ClientEvent::TransactionDone {
            index: current.index,
            results,
        });
        if rset && current.mail.as_ref().is_some_and(Reply::is_positive) {
            self.command("RSET", Expect::Rset);
        } else {
            self.maybe_start();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::session::{Answer, Event, PeerInfo, ServerSession, SessionConfig};
    use proptest::prelude::*;

    fn config() -> ClientConfig {
        ClientConfig {
            helo_name: "out.example.test".into(),
            tls: TlsPolicy::Opportunistic,
            tls_available: true,
            auth: None,
            allow_plain_auth: false,
        }
    }

    fn tx(rcpts: &[&str], body: &[u8]) -> Transaction {
        Transaction {
            mail_from: "a@here.test".into(),
            rcpt_to: rcpts.iter().map(|r| r.to_string()).collect(),
            body: Arc::from(body.to_vec()),
            smtputf8: false,
            body_8bit: false,
        }
    }

    /// Feeds server lines one by one and collects output and events.
    fn script(c: &mut ClientSession, server: &[&str]) -> (String, Vec<ClientEvent>) {
        let mut out = String::new();
        let mut events = Vec::new();
        for line in server {
            c.handle_input(format!("{line}\r\n").as_bytes());
            while let Some(o) = c.poll_output() {
                out.push_str(&String::from_utf8_lossy(&o));
            }
            while let Some(e) = c.poll_event() {
                match e {
                    ClientEvent::StartTls => c.tls_started(),
                    ClientEvent::ReadyToCommit { .. } => c.commit(),
                    _ => {}
                }
                while let Some(o) = c.poll_output() {
                    out.push_str(&String::from_utf8_lossy(&o));
                }
                events.push(e);
            }
        }
        (out, events)
    }

    /// Per transaction: its index and each recipient's (address, outcome, reply code).
    type Outcomes = Vec<(usize, Vec<(String, Outcome, u16)>)>;

    fn outcomes(events: &[ClientEvent]) -> Outcomes {
        events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::TransactionDone { index, results } => Some((
                    *index,
                    results
                        .iter()
                        .map(|r| (r.recipient.clone(), r.outcome, r.reply.code))
                        .collect(),
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn pipelined_transaction_with_mixed_recipients() {
        let mut c = ClientSession::new(config());
        c.push(tx(
            &["ok@r.test", "temp@r.test", "bad@r.test"],
            b"Subject: x\r\n\r\n.dot\r\n",
        ));
        c.finish();
        let (out, events) = script(
            &mut c,
            &[
                "220 mx ESMTP",
                "250-mx",
                "250-PIPELINING",
                "250 SIZE 1000",
                "250 2.1.0 ok",
                "250 2.1.5 ok",
                "451 4.2.0 later",
                "550 5.1.1 unknown",
                "354 go",
                "250 2.0.0 queued",
                "221 bye",
            ],
        );
        assert!(out.contains("EHLO out.example.test\r\n"));
        assert!(out.contains("MAIL FROM:<a@here.test> SIZE=20\r\nRCPT TO:<ok@r.test>\r\nRCPT TO:<temp@r.test>\r\nRCPT TO:<bad@r.test>\r\nDATA\r\n"), "{out}");
        assert!(out.contains("Subject: x\r\n\r\n..dot\r\n.\r\n"), "{out}");
        assert!(out.ends_with("QUIT\r\n"));
        assert_eq!(
            outcomes(&events),
            vec![(
                0,
                vec![
                    ("ok@r.test".into(), Outcome::Delivered, 250),
                    ("temp@r.test".into(), Outcome::Temporary, 451),
                    ("bad@r.test".into(), Outcome::Permanent, 550),
                ]
            )]
        );
        assert!(c.is_done());
    }

    #[test]
    fn an_idle_session_takes_later_transactions_without_a_new_greeting() {
        let mut c = ClientSession::new(config());
        let (out, _) = script(&mut c, &["220 mx ESMTP", "250-mx", "250 PIPELINING"]);
        assert_eq!(out, "EHLO out.example.test\r\n");
        assert!(c.is_idle(), "greeted and nothing to send");

        c.push(tx(&["x@r.test"], b"one\r\n"));
        assert!(!c.is_idle());
        let (_, events) = script(&mut c, &["250 ok", "250 ok", "354 go", "250 2.0.0 one"]);
        assert_eq!(
            outcomes(&events),
            vec![(0, vec![("x@r.test".into(), Outcome::Delivered, 250)])]
        );
        assert!(
            c.is_idle(),
            "the transaction is over and nothing else is queued"
        );

        // A refused sender leaves an open transaction behind on a pipelining server: the RSET
        // that ends it must be answered before the session is idle again.
        c.push(tx(&["y@r.test"], b"two\r\n"));
        let (_, events) = script(
            &mut c,
            &["250 ok", "550 5.1.1 no", "554 5.5.1 no recipients"],
        );
        assert_eq!(c.pushed(), 2);
        assert_eq!(
            outcomes(&events),
            vec![(1, vec![("y@r.test".into(), Outcome::Permanent, 550)])]
        );
        assert!(!c.is_idle(), "RSET is in flight");
        let (out, _) = script(&mut c, &["250 reset"]);
        assert!(out.is_empty(), "{out}");
        assert!(c.is_idle());

        c.finish();
        assert!(!c.is_idle());
        assert_eq!(c.poll_output().as_deref(), Some(&b"QUIT\r\n"[..]));
        script(&mut c, &["221 bye"]);
        assert!(c.is_done());
    }

    #[test]
    fn helo_fallback_and_one_command_at_a_time() {
        let mut c = ClientSession::new(config());
        c.push(tx(&["x@r.test"], b"hi\r\n"));
        c.finish();
        let (out, events) = script(
            &mut c,
            &[
                "220 old", "502 what", "250 old", "250 ok", "250 ok", "354 go", "250 ok", "221 bye",
            ],
        );
        assert!(out.contains("HELO out.example.test\r\nMAIL FROM:<a@here.test>\r\nRCPT TO:<x@r.test>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n"), "{out}");
        assert_eq!(outcomes(&events)[0].1[0].1, Outcome::Delivered);
    }

    /// Feeds `lines` without answering [`ClientEvent::ReadyToCommit`]; returns the output
    /// and events.
    fn feed(c: &mut ClientSession, lines: &[&str]) -> (String, Vec<ClientEvent>) {
        let mut out = String::new();
        let mut events = Vec::new();
        for line in lines {
            c.handle_input(format!("{line}\r\n").as_bytes());
            while let Some(o) = c.poll_output() {
                out.push_str(&String::from_utf8_lossy(&o));
            }
            events.extend(std::iter::from_fn(|| c.poll_event()));
        }
        (out, events)
    }

    const UP_TO_DATA: [&str; 6] = [
        "220 mx ESMTP",
        "250-mx",
        "250 PIPELINING",
        "250 2.1.0 ok",
        "250 2.1.5 ok",
        "354 go",
    ];

    #[test]
    fn the_end_of_data_waits_for_the_driver_and_an_abort_never_sends_it() {
        let mut c = ClientSession::new(config());
        c.push(tx(&["x@r.test"], b"line\r\n.dot"));
        c.push(tx(&["y@r.test"], b"second\r\n"));
        c.finish();
        let (out, events) = feed(&mut c, &UP_TO_DATA);
        assert!(out.ends_with("DATA\r\nline\r\n..dot\r\n"), "{out:?}");
        assert_eq!(events, vec![ClientEvent::ReadyToCommit { index: 0 }]);
        assert!(c.awaiting_commit());
        // A reply now (a misbehaving server) is left unread until the decision.
        let (out, events) = feed(&mut c, &["250 2.0.0 queued"]);
        assert_eq!((out.as_str(), events.len()), ("", 0));

        c.abort_commit("lease deadline passed before the end of data; the next owner retries");
        assert!(c.is_done() && !c.awaiting_commit());
        assert_eq!(c.poll_output(), None, "neither the end of data nor QUIT");
        let events: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
        let o = outcomes(&events);
        assert_eq!(
            o,
            vec![
                (0, vec![("x@r.test".into(), Outcome::Temporary, 451)]),
                (1, vec![("y@r.test".into(), Outcome::Temporary, 451)]),
            ]
        );
        assert!(events.iter().any(|e| matches!(e,
            ClientEvent::TransactionDone { results, .. }
                if results[0].reply.text.contains("lease deadline passed"))));
        assert!(matches!(
            events.last(),
            Some(ClientEvent::SessionFailed { .. })
        ));
        // Whatever happens to the connection afterwards, nothing more is reported or sent.
        c.handle_input(b"250 ok\r\n");
        c.handle_disconnect();
        assert_eq!((c.poll_output(), c.poll_event()), (None, None));
    }

    #[test]
    fn a_commit_sends_the_end_of_data_and_reads_on() {
        let mut c = ClientSession::new(config());
        c.push(tx(&["x@r.test"], b"hi\r\n"));
        c.finish();
        feed(&mut c, &UP_TO_DATA);
        // The reply arrived before the driver decided: it is read after the commit.
        let (_, events) = feed(&mut c, &["250 2.0.0 queued"]);
        assert!(events.is_empty());
        c.commit();
        assert_eq!(c.poll_output().as_deref(), Some(&b".\r\nQUIT\r\n"[..]));
        let events: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
        assert_eq!(
            outcomes(&events),
            vec![(0, vec![("x@r.test".into(), Outcome::Delivered, 250)])]
        );
        // A second commit is a no-op.
        c.commit();
        assert_eq!(c.poll_output(), None);
    }

    #[test]
    fn greeting_refusal_fails_everything_temporarily() {
        let mut c = ClientSession::new(config());
        c.push(tx(&["x@r.test"], b"hi\r\n"));
        c.push(tx(&["y@r.test"], b"hi\r\n"));
        c.finish();
        let (out, events) = script(&mut c, &["554 go away", "221 bye"]);
        assert_eq!(out, "QUIT\r\n");
        let o = outcomes(&events);
        assert_eq!(o.len(), 2);
        assert!(o.iter().all(|(_, r)| r[0].1 == Outcome::Temporary));
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ClientEvent::SessionFailed { .. }))
        );
        assert!(c.is_done());
    }

    #[test]
    fn starttls_then_ehlo_again_and_required_tls_missing() {
        let mut c = ClientSession::new(ClientConfig {
            tls: TlsPolicy::Required,
            ..config()
        });
        c.push(tx(&["x@r.test"], b"hi\r\n"));
        c.finish();
        let (out, _) = script(
            &mut c,
            &["220 mx", "250-mx", "250 STARTTLS", "220 go ahead", "250 mx"],
        );
        assert!(
            out.contains("STARTTLS\r\nEHLO out.example.test\r\nMAIL FROM"),
            "{out}"
        );
        assert!(c.is_tls());

        let mut c = ClientSession::new(ClientConfig {
            tls: TlsPolicy::Required,
            ..config()
        });
        c.push(tx(&["x@r.test"], b"hi\r\n"));
        c.finish();
        let (out, events) = script(&mut c, &["220 mx", "250 mx"]);
        assert_eq!(out, "EHLO out.example.test\r\nQUIT\r\n");
        let o = outcomes(&events);
        assert_eq!(o[0].1[0].1, Outcome::Temporary);
        assert!(events.iter().any(|e| matches!(e, ClientEvent::SessionFailed { reason, .. } if reason.contains("TLS required"))));
    }

    #[test]
    fn opportunistic_tls_refused_continues_in_clear() {
        let mut c = ClientSession::new(config());
        c.push(tx(&["x@r.test"], b"hi\r\n"));
        c.finish();
        let (out, _) = script(&mut c, &["220 mx", "250-mx", "250 STARTTLS", "454 not now"]);
        assert!(
            out.ends_with("STARTTLS\r\nMAIL FROM:<a@here.test>\r\n"),
            "{out}"
        );
    }

    #[test]
    fn auth_plain_and_login() {
        let creds = Some(Credentials {
            username: "u".into(),
            password: "p".into(),
        });
        let mut c = ClientSession::new(ClientConfig {
            auth: creds.clone(),
            allow_plain_auth: true,
            ..config()
        });
        c.push(tx(&["x@r.test"], b"hi\r\n"));
        let (out, _) = script(
            &mut c,
            &["220 mx", "250-mx", "250 AUTH PLAIN LOGIN", "235 ok"],
        );
        assert!(
            out.contains(&format!("AUTH PLAIN {}\r\nMAIL FROM", B64.encode("\0u\0p"))),
            "{out}"
        );

        let mut c = ClientSession::new(ClientConfig {
            auth: creds.clone(),
            allow_plain_auth: true,
            ..config()
        });
        c.push(tx(&["x@r.test"], b"hi\r\n"));
        let (out, _) = script(
            &mut c,
            &[
                "220 mx",
                "250-mx",
                "250 AUTH LOGIN",
                "334 VXNlcm5hbWU6",
                "334 UGFzc3dvcmQ6",
                "235 ok",
            ],
        );
        assert!(
            out.contains("AUTH LOGIN\r\ndQ==\r\ncA==\r\nMAIL FROM"),
            "{out}"
        );

        let mut c = ClientSession::new(ClientConfig {
            auth: creds,
            allow_plain_auth: true,
            ..config()
        });
        c.push(tx(&["x@r.test"], b"hi\r\n"));
        let (_, events) = script(
            &mut c,
            &["220 mx", "250-mx", "250 AUTH PLAIN", "535 5.7.8 no"],
        );
        assert_eq!(outcomes(&events)[0].1[0].1, Outcome::Temporary);
    }

    #[test]
    fn size_and_smtputf8_are_checked_before_sending() {
        let mut c = ClientSession::new(config());
        c.push(tx(&["x@r.test"], &[b'a'; 100]));
        let mut utf8 = tx(&["jürgen@r.test"], b"hi\r\n");
        utf8.smtputf8 = true;
        c.push(utf8);
        c.finish();
        let (out, events) = script(&mut c, &["220 mx", "250-mx", "250 SIZE 50"]);
        assert!(!out.contains("MAIL FROM"), "{out}");
        let o = outcomes(&events);
        assert_eq!(o[0].1[0].2, 552);
        assert_eq!(o[1].1[0].2, 553);
        assert!(o.iter().all(|(_, r)| r[0].1 == Outcome::Permanent));
    }

    #[test]
    fn no_accepted_recipient_sends_no_body_and_resets() {
        let mut c = ClientSession::new(config());
        c.push(tx(&["bad@r.test"], b"secret\r\n"));
        c.push(tx(&["ok@r.test"], b"second\r\n"));
        c.finish();
        let (out, events) = script(
            &mut c,
            &[
                "220 mx",
                "250-mx",
                "250 PIPELINING",
                "250 ok",
                "550 no",
                "554 no valid recipients",
                "250 reset",
                "250 ok",
                "250 ok",
                "354 go",
                "250 ok",
                "221 bye",
            ],
        );
        assert!(!out.contains("secret"));
        assert!(out.contains("RSET\r\nMAIL FROM"), "{out}");
        let o = outcomes(&events);
        assert_eq!(o[0].1[0].1, Outcome::Permanent);
        assert_eq!(o[1].1[0].1, Outcome::Delivered);
    }

    #[test]
    fn final_reply_decides_for_accepted_recipients() {
        for (code, outcome) in [
            ("451 4.3.0 later", Outcome::Temporary),
            ("554 5.6.0 rejected", Outcome::Permanent),
        ] {
            let mut c = ClientSession::new(config());
            c.push(tx(&["x@r.test"], b"hi\r\n"));
            let (_, events) = script(
                &mut c,
                &[
                    "220 mx",
                    "250 PIPELINING",
                    "250 ok",
                    "250 ok",
                    "354 go",
                    code,
                ],
            );
            assert_eq!(outcomes(&events)[0].1[0].1, outcome);
        }
    }

    #[test]
    fn disconnect_and_timeout_fail_unfinished_work_temporarily() {
        let mut c = ClientSession::new(config());
        c.push(tx(&["x@r.test"], b"hi\r\n"));
        c.push(tx(&["y@r.test"], b"hi\r\n"));
        let _ = script(&mut c, &["220 mx", "250 mx", "250 ok", "250 ok", "354 go"]);
        assert!(c.expects_data_reply());
        c.handle_disconnect();
        let events: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
        let o = outcomes(&events);
        assert_eq!(o.len(), 2);
        assert!(o.iter().all(|(_, r)| r[0].1 == Outcome::Temporary));
        assert!(c.is_done());

        let mut c = ClientSession::new(config());
        c.push(tx(&["x@r.test"], b"hi\r\n"));
        c.handle_timeout();
        let events: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
        assert_eq!(outcomes(&events)[0].1[0].1, Outcome::Temporary);
        assert!(c.is_done());
    }

    #[test]
    fn garbage_replies_fail_the_session() {
        let mut c = ClientSession::new(config());
        c.push(tx(&["x@r.test"], b"hi\r\n"));
        c.handle_input(b"HTTP/1.1 400 Bad Request\r\n");
        let events: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ClientEvent::SessionFailed { .. }))
        );
        assert_eq!(outcomes(&events)[0].1[0].1, Outcome::Temporary);
    }

    /// Runs a client against the real server session in memory; returns stored bodies and
    /// the client's events.
    fn pair(
        transactions: Vec<Transaction>,
        pipelining_server_tls: bool,
    ) -> (Vec<Vec<u8>>, Vec<ClientEvent>) {
        let mut server = ServerSession::new(
            SessionConfig {
                hostname: "mx.r.test".into(),
                tls_available: pipelining_server_tls,
                max_message_size: 1 << 20,
                ..SessionConfig::default()
            },
            PeerInfo {
                ip: [127, 0, 0, 1].into(),
            },
        );
        let mut client = ClientSession::new(config());
        for t in transactions {
            client.push(t);
        }
        client.finish();
        let mut stored = Vec::new();
        let mut events = Vec::new();
        for _ in 0..10_000 {
            let mut progressed = false;
            while let Some(ev) = server.poll_event() {
                progressed = true;
                match ev {
                    Event::StartTls => server.tls_started(),
                    Event::Message { data, .. } => {
                        stored.push(data);
                        server.answer(Answer::Accept);
                    }
                    _ => server.answer(Answer::Accept),
                }
            }
            while let Some(out) = server.poll_output() {
                progressed = true;
                client.handle_input(&out);
            }
            while let Some(ev) = client.poll_event() {
                progressed = true;
                match ev {
                    ClientEvent::StartTls => client.tls_started(),
                    ClientEvent::ReadyToCommit { .. } => client.commit(),
                    _ => {}
                }
                events.push(ev);
            }
            while let Some(out) = client.poll_output() {
                progressed = true;
                server.handle_input(&out);
            }
            if client.is_done() || !progressed {
                break;
            }
        }
        (stored, events)
    }

    #[test]
    fn pair_with_the_real_server_delivers_bodies_byte_for_byte() {
        let bodies: Vec<&[u8]> = vec![
            b".leading dot\r\n..two\r\n.\r\nend\r\n",
            b"",
            b"no final newline",
            b"Subject: s\r\n\r\nbody\r\n",
        ];
        let txs: Vec<_> = bodies.iter().map(|b| tx(&["x@r.test"], b)).collect();
        let (stored, events) = pair(txs, true);
        assert_eq!(stored.len(), 4, "{events:?}");
        assert_eq!(stored[0], bodies[0]);
        assert_eq!(stored[1], b"");
        assert_eq!(stored[2], b"no final newline\r\n");
        assert_eq!(stored[3], bodies[3]);
        assert!(
            outcomes(&events)
                .iter()
                .all(|(_, r)| r[0].1 == Outcome::Delivered)
        );
    }

    #[test]
    fn bare_line_breaks_never_reach_the_wire() {
        let mut out = Vec::new();
        dot_stuff(b"outer\r.\rMAIL FROM:<x@y>\r.\nRCPT\n.\r\nend", &mut out);
        assert_eq!(
            out,
            b"outer\r\n..\r\nMAIL FROM:<x@y>\r\n..\r\nRCPT\r\n..\r\nend\r\n.\r\n"
        );
    }

    proptest! {
        #[test]
        fn wire_bytes_never_hold_a_bare_cr_or_lf(body in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..200)) {
            let mut out = Vec::new();
            dot_stuff(&body, &mut out);
            for (i, &b) in out.iter().enumerate() {
                if b == b'\r' { prop_assert_eq!(out.get(i + 1), Some(&b'\n')); }
                if b == b'\n' { prop_assert!(i > 0 && out[i - 1] == b'\r'); }
            }
            // The data ends only at the end: no CRLF.CRLF earlier.
            let end = out.windows(5).position(|w| w == b"\r\n.\r\n").map(|p| p + 5);
            prop_assert!(end.is_none() || end == Some(out.len()) || (out.starts_with(b".\r\n") && out.len() == 3));
        }

        #[test]
        fn arbitrary_server_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000), split in 1usize..64) {
            let mut c = ClientSession::new(config());
            c.push(tx(&["x@r.test", "y@r.test"], b"hi\r\n"));
            c.finish();
            for chunk in data.chunks(split) {
                c.handle_input(chunk);
                let _ = c.poll_output();
                while let Some(e) = c.poll_event() {
                    match e {
                        ClientEvent::StartTls => c.tls_started(),
                        ClientEvent::ReadyToCommit { .. } => c.commit(),
                        _ => {}
                    }
                }
            }
            c.handle_disconnect();
            let reported: usize = std::iter::from_fn(|| c.poll_event()).filter(|e| matches!(e, ClientEvent::TransactionDone { .. })).count();
            prop_assert!(reported <= 1);
        }

        #[test]
        fn splitting_server_input_changes_nothing(split in 1usize..40) {
            let script = b"220 mx\r\n250-mx\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n250 ok\r\n221 bye\r\n";
            let run = |chunk: usize| {
                let mut c = ClientSession::new(config());
                c.push(tx(&["x@r.test", "y@r.test"], b"hi\r\n"));
                c.finish();
                let mut out = Vec::new();
                let mut events = Vec::new();
                for part in script.chunks(chunk) {
                    c.handle_input(part);
                    while let Some(e) = c.poll_event() {
                        if matches!(e, ClientEvent::ReadyToCommit { .. }) { c.commit(); }
                        events.push(e);
                    }
                    while let Some(o) = c.poll_output() { out.extend(o); }
                }
                (out, events)
            };
            prop_assert_eq!(run(split), run(script.len()));
        }

        #[test]
        fn bodies_round_trip_through_the_real_server(lines in proptest::collection::vec("[ -~]{0,20}", 0..20)) {
            let mut body = Vec::new();
            for l in &lines { body.extend_from_slice(l.as_bytes()); body.extend_from_slice(b"\r\n"); }
            let (stored, _) = pair(vec![tx(&["x@r.test"], &body)], false);
            prop_assert_eq!(stored, vec![body]);
        }
    }

    // ------------------------------------------------------------ properties of the whole session

    /// A client configuration picked by the low bits of `flags`.
    fn config_from(flags: u8) -> ClientConfig {
        ClientConfig {
            helo_name: "out.example.test".into(),
            tls: match flags & 0x03 {
                0 => TlsPolicy::Opportunistic,
                1 => TlsPolicy::Required,
                _ => TlsPolicy::Disabled,
            },
            tls_available: flags & 0x04 != 0,
            auth: (flags & 0x08 != 0).then(|| Credentials {
                username: "u".into(),
                password: "p".into(),
            }),
            allow_plain_auth: flags & 0x10 != 0,
        }
    }

    /// Pieces of plausible server traffic, to reach deep states more often than random bytes.
    fn server_piece() -> impl Strategy<Value = Vec<u8>> {
        let fixed = prop::sample::select(vec![
            "220 mx ESMTP\r\n",
            "250-mx\r\n",
            "250-PIPELINING\r\n",
            "250-8BITMIME\r\n",
            "250-SMTPUTF8\r\n",
            "250-SIZE 10\r\n",
            "250-STARTTLS\r\n",
            "250-AUTH PLAIN LOGIN\r\n",
            "250-AUTH LOGIN\r\n",
            "250 CHUNKING\r\n",
            "250 ok\r\n",
            "250 2.1.0 ok\r\n",
            "250 2.0.0 queued\r\n",
            "220 2.0.0 Ready to start TLS\r\n",
            "334 \r\n",
            "334 VXNlcm5hbWU6\r\n",
            "334 UGFzc3dvcmQ6\r\n",
            "235 2.7.0 ok\r\n",
            "354 go\r\n",
            "451 4.2.0 later\r\n",
            "452 4.5.3 too many\r\n",
            "500 5.5.2 what\r\n",
            "550-5.1.1 first\r\n",
            "550 5.1.1 no such user\r\n",
            "554 5.7.1 no\r\n",
            "221 2.0.0 bye\r\n",
            "421 4.3.2 shutting down\r\n",
            "250\r\n",
            "\r\n",
            "\n",
            "\r",
            "2",
            "garbage\r\n",
        ])
        .prop_map(|s| s.as_bytes().to_vec());
        prop_oneof![
            8 => fixed,
            1 => prop::collection::vec(any::<u8>(), 0..20),
            1 => prop::collection::vec(prop::sample::select(b"\r\n 25-0.".to_vec()), 0..20),
        ]
    }

    fn server_stream() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(server_piece(), 0..40).prop_map(|pieces| pieces.concat())
    }

    /// Message bodies rich in line breaks and dots.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()],
            0..120,
        )
    }

    /// `data` cut at `points` (taken modulo its length), in order.
    fn split_at_points<'a>(data: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = points.iter().map(|p| p % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut last = 0;
        for cut in cuts {
            pieces.push(&data[last..cut]);
            last = cut;
        }
        pieces.push(&data[last..]);
        pieces
    }

    /// Every CR on the wire is followed by LF and every LF preceded by CR.
    fn assert_crlf_only(out: &[u8]) {
        for (i, &b) in out.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i} in {out:?}");
            }
            if b == b'\n' {
                assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i} in {out:?}");
            }
        }
    }

    /// Drives a client through `pieces` of server input as a driver would (StartTls answered
    /// with a successful handshake), then the connection drops. Returns everything written and
    /// every event.
    fn drive(c: ClientSession, pieces: &[&[u8]]) -> (Vec<u8>, Vec<ClientEvent>) {
        drive_gated(c, pieces, true)
    }

    /// [`drive`], with the driver's answer to every [`ClientEvent::ReadyToCommit`]: commit,
    /// or abort (as past a lease deadline).
    fn drive_gated(
        mut c: ClientSession,
        pieces: &[&[u8]],
        commit: bool,
    ) -> (Vec<u8>, Vec<ClientEvent>) {
        let mut out = Vec::new();
        let mut events = Vec::new();
        let mut drain = |c: &mut ClientSession, out: &mut Vec<u8>| loop {
            while let Some(o) = c.poll_output() {
                assert!(!o.is_empty());
                out.extend(o);
            }
            let Some(e) = c.poll_event() else { break };
            match e {
                ClientEvent::StartTls => c.tls_started(),
                ClientEvent::ReadyToCommit { .. } if commit => c.commit(),
                ClientEvent::ReadyToCommit { .. } => {
                    c.abort_commit("lease deadline passed");
                    assert!(c.poll_output().is_none(), "output after an aborted commit");
                }
                _ => {}
            }
            events.push(e);
        };
        drain(&mut c, &mut out);
        for piece in pieces {
            let was_done = c.is_done();
            let before = out.len();
            c.handle_input(piece);
            drain(&mut c, &mut out);
            if was_done {
                assert_eq!(out.len(), before, "output after the session was done");
            }
        }
        c.handle_disconnect();
        drain(&mut c, &mut out);
        assert!(c.is_done());
        (out, events)
    }

    fn session_with(config: ClientConfig, bodies: &[Vec<u8>]) -> ClientSession {
        let mut c = ClientSession::new(config);
        for (i, b) in bodies.iter().enumerate() {
            let rcpts = if i % 2 == 0 {
                &["x@r.test", "y@r.test"][..]
            } else {
                &["z@r.test"][..]
            };
            c.push(tx(rcpts, b));
        }
        c.finish();
        c
    }

    proptest! {
        #[test]
        fn arbitrary_server_input_never_panics_and_reports_each_transaction_once(
            data in prop_oneof![server_stream(), prop::collection::vec(any::<u8>(), 0..400)],
            points in prop::collection::vec(any::<usize>(), 0..8),
            flags in any::<u8>(),
            bodies in prop::collection::vec(body(), 1..3),
            commit in any::<bool>(),
        ) {
            let c = session_with(config_from(flags), &bodies);
            let (out, events) = drive_gated(c, &split_at_points(&data, &points), commit);
            assert_crlf_only(&out);
            if !commit {
                // No end of data ever left: nothing can have been delivered.
                prop_assert!(events.iter().all(|e| match e {
                    ClientEvent::TransactionDone { results, .. } =>
                        results.iter().all(|r| r.outcome != Outcome::Delivered),
                    _ => true,
                }), "{events:?}");
            }
            let mut reported: Vec<usize> = events.iter().filter_map(|e| match e {
                ClientEvent::TransactionDone { index, results } => {
                    // session_with() gives even transactions two recipients, odd ones one.
                    assert_eq!(results.len(), if index % 2 == 0 { 2 } else { 1 });
                    Some(*index)
                }
                _ => None,
            }).collect();
            reported.sort_unstable();
            prop_assert_eq!(reported, (0..bodies.len()).collect::<Vec<_>>());
            let failures = events
                .iter()
                .filter(|e| matches!(e, ClientEvent::SessionFailed { .. }))
                .count();
            prop_assert!(failures <= 1);
        }

        #[test]
        fn any_split_of_the_server_input_gives_the_same_dialogue(
            data in server_stream(),
            points in prop::collection::vec(any::<usize>(), 1..10),
            flags in any::<u8>(),
        ) {
            // No TLS: the handshake drops what the server sent before it, by design.
            let config = ClientConfig { tls: TlsPolicy::Disabled, ..config_from(flags) };
            let bodies = vec![b"hi\r\n".to_vec(), b".\r\n".to_vec()];
            let whole = drive(session_with(config.clone(), &bodies), &[&data]);
            let split = drive(session_with(config.clone(), &bodies), &split_at_points(&data, &points));
            prop_assert_eq!(&whole, &split);
            let bytes: Vec<&[u8]> = data.chunks(1).collect();
            let byte_by_byte = drive(session_with(config, &bodies), &bytes);
            prop_assert_eq!(&whole, &byte_by_byte);
        }

        #[test]
        fn the_wire_never_holds_a_bare_cr_or_lf_whatever_the_body(
            bodies in prop::collection::vec(body(), 1..4),
        ) {
            let mut server = ServerSession::new(
                SessionConfig { hostname: "mx.r.test".into(), ..SessionConfig::default() },
                PeerInfo { ip: [127, 0, 0, 1].into() },
            );
            let mut client = session_with(config(), &bodies);
            let mut wire = Vec::new();
            let mut stored = 0;
            for _ in 0..10_000 {
                let mut progressed = false;
                while let Some(ev) = server.poll_event() {
                    progressed = true;
                    stored += usize::from(matches!(ev, Event::Message { .. }));
                    server.answer(Answer::Accept);
                }
                while let Some(out) = server.poll_output() {
                    progressed = true;
                    client.handle_input(&out);
                }
                while let Some(e) = client.poll_event() {
                    progressed = true;
                    if matches!(e, ClientEvent::ReadyToCommit { .. }) {
                        client.commit();
                    }
                }
                while let Some(out) = client.poll_output() {
                    progressed = true;
                    wire.extend_from_slice(&out);
                    server.handle_input(&out);
                }
                if client.is_done() || !progressed {
                    break;
                }
            }
            assert_crlf_only(&wire);
            // The server saw exactly the messages the client meant: none split or merged.
            prop_assert_eq!(stored, bodies.len());
        }
    }
}
