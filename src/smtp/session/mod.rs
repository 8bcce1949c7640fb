//! The SMTP server session as a pure state machine.
//!
//! [`ServerSession`] implements the server side of one SMTP connection (RFC 5321) with the
//! extensions PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME, SMTPUTF8 (RFC 6531),
//! ENHANCEDSTATUSCODES (RFC 2034), CHUNKING (RFC 3030), STARTTLS (RFC 3207) and AUTH PLAIN/LOGIN
//! (RFC 4954). It opens no socket, reads no clock and spawns nothing, in the way `quinn-proto`
//! sits under `quinn`: the caller (the *driver*, a task or actor that owns the TCP/TLS stream and
//! the read timer) hands it received bytes and gets back bytes to write and *events*, which are
//! the pieces of work only the application can do (check a password, accept a recipient, store a
//! message durably). Command syntax is parsed with `smtp-proto`; the rest is ours.
//!
//! # Methods by kind
//!
//! - inputs: [`handle_input`](ServerSession::handle_input) (bytes read from the socket),
//!   [`answer`](ServerSession::answer) (the result of the outstanding event),
//!   [`tls_started`](ServerSession::tls_started) (the TLS handshake finished),
//!   [`handle_timeout`](ServerSession::handle_timeout) (the read timer fired);
//! - outputs: [`poll_output`](ServerSession::poll_output) (bytes to write) and
//!   [`poll_event`](ServerSession::poll_event) (work for the application);
//! - getters: [`is_closed`](ServerSession::is_closed),
//!   [`expects_data`](ServerSession::expects_data),
//!   [`wants_input`](ServerSession::wants_input), [`is_tls`](ServerSession::is_tls),
//!   [`authenticated_user`](ServerSession::authenticated_user),
//!   [`helo`](ServerSession::helo), and for the driver's deadlines and error delay
//!   [`has_partial_command`](ServerSession::has_partial_command),
//!   [`lines_read`](ServerSession::lines_read), [`in_transfer`](ServerSession::in_transfer),
//!   [`error_count`](ServerSession::error_count).
//!
//! # Driver loop
//!
//! ```text
//! let mut session = ServerSession::new(config, peer);    // queues the 220 greeting
//! loop {
//!     while let Some(bytes) = session.poll_output() { write_all(bytes) }   // 1. always first
//!     if session.is_closed() { flush; close the connection; break }        // 2.
//!     if let Some(event) = session.poll_event() {                          // 3.
//!         match event {
//!             Event::StartTls => { handshake on the same socket; session.tls_started() }
//!             other => session.answer(do_the_work(other)),
//!         }
//!         continue;
//!     }
//!     // 4. read, with the data timeout if expects_data() else the command timeout
//!     match read_with_timeout() {
//!         Timeout => session.handle_timeout(),
//!         Eof => break,                        // the client went away: drop the session
//!         Bytes(b) => session.handle_input(&b),
//!     }
//! }
//! ```
//!
//! * After every input call, drain [`poll_output`](ServerSession::poll_output) and write what
//!   it returns **before** acting on an event: the replies produced before an event (for
//!   `STARTTLS` the `220 2.0.0 Ready to start TLS`) must reach the client first.
//! * At most one event is outstanding at a time. While it is, the session processes no further
//!   buffered input (pipelined commands wait) and [`wants_input`](ServerSession::wants_input)
//!   is false: the driver should stop reading from the socket then, so TCP back-pressure bounds
//!   what a pipelining client can push. Input handed in anyway is buffered up to about
//!   `max_message_size + 2 * max_line_length + 64 KiB`; past that the excess is dropped, and once
//!   the buffered part has been processed the session answers `421 4.7.0` and closes (it cannot
//!   resume after a gap in the stream).
//! * Every event is answered with [`answer`](ServerSession::answer), except
//!   [`Event::StartTls`], which is completed with [`tls_started`](ServerSession::tls_started)
//!   (a failed handshake: just drop the connection and the session).
//! * The driver should not run its read timer while an event is outstanding: the client is
//!   waiting for us then. [`handle_timeout`](ServerSession::handle_timeout) always closes.
//! * When [`is_closed`](ServerSession::is_closed) turns true, write out what
//!   [`poll_output`](ServerSession::poll_output) still returns, then close the connection.
//!   Input, answers and timeouts are ignored from then on.
//!
//! # STARTTLS
//!
//! On `STARTTLS` the session queues `220 2.0.0 Ready to start TLS`, **discards every byte
//! buffered after the `STARTTLS` line** (and any input handed in until
//! [`tls_started`](ServerSession::tls_started)), so that plaintext pipelined behind `STARTTLS`
//! can never be executed as if it had come over TLS (the CVE-2011-0411 command injection), and
//! emits [`Event::StartTls`]. [`tls_started`](ServerSession::tls_started) resets the session to
//! the state right after the greeting (no HELO/EHLO, no AUTH, no transaction remembered; no
//! second greeting is sent), as RFC 3207 requires. For implicit TLS (port 465), call
//! [`tls_started`](ServerSession::tls_started) right after [`new`](ServerSession::new), before
//! any input: the greeting is still queued and goes out over TLS.
//!
//! # Line endings and SMTP smuggling
//!
//! Command lines end only with CRLF. A command line that holds a bare CR or a bare LF is answered
//! `500 5.5.2 Bare CR or LF not allowed in commands` and discarded as a whole: it is never split
//! into two commands.
//!
//! In `DATA`, the message ends only at CRLF `.` CRLF (the CRLF of the `DATA` line counts, so
//! `.` CRLF right after the `354` is an empty message), and dot-stuffing is undone on lines that
//! begin after a CRLF. A bare LF (not preceded by CR) or a bare CR (not followed by LF) never
//! ends the message and never starts a line, so `\n.\n`, `\r\n.\n`, `\n.\r\n` or `\r.\r\n` are
//! plain message content and whatever follows them stays in the message. **Choice:** such a
//! message is not "repaired" (normalising it would make this server see a different message
//! boundary, or a different message, than a downstream server might) but **rejected** once its
//! real end has been read, with `550 5.6.11 Message rejected: bare CR or LF in message data; use
//! CRLF line endings`. This closes SMTP smuggling (CVE-2023-51764 and relatives) in both
//! directions: nothing is ever delivered from a message in which another SMTP implementation
//! could see a different end of data. `BDAT` chunks are counted octets, so they may carry bare
//! CR or LF freely (RFC 3030).
//!
//! # Limits and memory
//!
//! A command line longer than `max_line_length` octets (CRLF included) is answered
//! `500 5.5.2 Line too long` once its CRLF arrives; the bytes in between are dropped as they
//! come, never buffered. A message body is stored up to `max_message_size` octets (after
//! dot-unstuffing); a bigger one is read to its end without storing more and answered
//! `552 5.3.4`. So the session holds at most about `max_line_length` octets of command input,
//! `max_message_size` octets of body, and the pipelining buffer described above.
//!
//! After `max_errors` bad commands (replies 500, 501, 502, 503, 504, 530, 538, 555, failed
//! authentications, and senders or recipients the application refused with a 5xx, so that
//! probing for users is bounded) the session answers `421 4.7.0 Too many errors` and closes.
//! Junk commands (NOOP, RSET, VRFY, HELP and RCPTs beyond `max_recipients`) are free up to
//! `max_junk_commands` per session (counted again from zero after each accepted message); each
//! one beyond that counts as an error, as Postfix's `smtpd_junk_command_limit` does.
//!
//! Numbers the parser would misread are checked on the raw command text first: a `BDAT` chunk
//! size that does not fit in a `usize` is `501 5.5.4`, a `SIZE=` that does not is `552 5.3.4`.
//!
//! Every reply carries an enhanced status code (RFC 2034), except the `220` greeting, the
//! replies to HELO and EHLO, and the `354` and `334` intermediate replies.

mod auth;
mod commands;
mod data;
mod event;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

pub use super::reply::Reply;
pub use event::{Answer, AuthMechanism, Envelope, Event};

use data::{BdatChunk, DataParser};

/// RFC 5321 section 4.5.3.1.4: a command line is at least 512 octets long.
const MIN_LINE_LENGTH: usize = 512;

/// Room for pipelined input beyond one message and two command lines (see the module doc).
const PIPELINE_SLACK: usize = 64 * 1024;

/// Configuration of one session, normally shared by all sessions of one listener.
///
/// Values are clamped to safe minimums by [`ServerSession::new`] (see each field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// The server's host name, used in the greeting, the EHLO reply and 421 replies.
    pub hostname: String,
    /// Submission rules (port 587): AUTH is offered, and MAIL needs a successful AUTH first.
    /// `false` is a public MX (port 25): AUTH is neither offered nor accepted.
    pub submission: bool,
    /// A certificate exists: offer and accept STARTTLS while the session is not yet TLS.
    pub tls_available: bool,
    /// Offer and accept AUTH without TLS. Off by default: passwords in plaintext.
    pub allow_insecure_auth: bool,
    /// The largest message accepted, in octets (advertised as `SIZE`). At least 1 (0 would
    /// advertise "no limit" to clients).
    pub max_message_size: usize,
    /// The largest number of accepted recipients in one transaction. At least 1.
    pub max_recipients: usize,
    /// The longest command line, CRLF included, in octets. At least 512 (RFC 5321). It also
    /// bounds AUTH responses, so leave room for long base64 credentials (default 2048).
    pub max_line_length: usize,
    /// After this many bad commands the session answers 421 and closes. 0 disables the limit.
    pub max_errors: usize,
    /// Junk commands (NOOP, RSET, VRFY, HELP, excess RCPTs) allowed before each further one
    /// counts as an error. 0 disables the limit.
    pub max_junk_commands: usize,
    /// Answer VRFY with a non-committal 252 instead of 502.
    pub vrfy_enabled: bool,
    /// The client is in `smtp.trusted_networks`: on submission, MAIL needs no AUTH first.
    pub trusted_client: bool,
}

impl Default for SessionConfig {
    /// A port-25 session on `localhost`, 25 MiB messages, 100 recipients (the RFC 5321
    /// minimum a server must accept), 2048-octet lines, 20 errors, 100 junk commands, no TLS,
    /// VRFY off.
    fn default() -> Self {
        Self {
            hostname: "localhost".to_owned(),
            submission: false,
            tls_available: false,
            allow_insecure_auth: false,
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_line_length: 2048,
            max_errors: 20,
            max_junk_commands: 100,
            vrfy_enabled: false,
            trusted_client: false,
        }
    }
}

/// What the session knows about the client's end of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    /// The client's IP address, shown in the EHLO reply.
    pub ip: IpAddr,
}

/// The server side of one SMTP connection, as a state machine without I/O.
///
/// See the [module documentation](self) for the call order. In short: feed bytes with
/// [`handle_input`](Self::handle_input), write what [`poll_output`](Self::poll_output) returns,
/// then handle what [`poll_event`](Self::poll_event) returns and [`answer`](Self::answer) it.
#[derive(Debug)]
pub struct ServerSession {
    config: SessionConfig,
    peer: PeerInfo,
    state: State,
    /// Received bytes not yet processed start at `input[consumed..]`.
    input: Vec<u8>,
    consumed: usize,
    /// Inside an over-long command line: dropping bytes up to its CRLF.
    discarding: bool,
    /// While `discarding`: the last byte dropped was a CR.
    discard_cr: bool,
    /// Input was dropped because the pipelining buffer was full.
    overflowed: bool,
    pipeline_cap: usize,
    output: Vec<u8>,
    /// The outstanding event, until polled.
    event: Option<Event>,
    /// What the outstanding event's answer resolves; `Some` until answered.
    pending: Option<Pending>,
    helo: Option<String>,
    esmtp: bool,
    tls: bool,
    auth_user: Option<String>,
    tx: Transaction,
    errors: usize,
    /// Junk commands since the start or the last accepted message.
    junk: usize,
    /// Complete command lines read so far (lets the driver see progress).
    lines: u64,
    closed: bool,
    received_input: bool,
}

/// What the session is reading.
#[derive(Debug)]
enum State {
    /// Command lines.
    Command,
    /// The client response to an empty `334` after `AUTH PLAIN`.
    AuthPlain,
    /// The user name after `AUTH LOGIN`.
    AuthLoginUser,
    /// The password after `AUTH LOGIN`.
    AuthLoginPass { username: String },
    /// A DATA body.
    Data(DataParser),
    /// The octets of a BDAT chunk.
    Bdat(BdatChunk),
}

/// The event whose answer the session waits for, with what it needs to apply the answer.
#[derive(Debug)]
enum Pending {
    StartTls,
    Auth {
        username: String,
    },
    MailFrom {
        address: String,
        body_8bit: bool,
        smtputf8: bool,
    },
    Recipient {
        address: String,
    },
    Message,
}

/// The current mail transaction.
#[derive(Debug, Default)]
struct Transaction {
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
    body_8bit: bool,
    smtputf8: bool,
    /// The body so far (empty once `oversize`).
    body: Vec<u8>,
    /// The body went over `max_message_size`: the rest is read and dropped.
    oversize: bool,
    /// A BDAT chunk was accepted: RCPT and DATA are out of sequence now.
    bdat: bool,
    /// The line breaks of the BDAT chunks so far (DATA checks its own as it unstuffs).
    bdat_line_breaks: data::LineBreakCheck,
}

impl ServerSession {
    /// Creates a session for a new connection and queues the `220` greeting.
    ///
    /// Config values below their minimums are raised to them (see [`SessionConfig`]).
    #[must_use]
    pub fn new(mut config: SessionConfig, peer: PeerInfo) -> Self {
        config.max_line_length = config.max_line_length.max(MIN_LINE_LENGTH);
        config.max_message_size = config.max_message_size.max(1);
        config.max_recipients = config.max_recipients.max(1);
        let pipeline_cap = config
            .max_message_size
            .saturating_add(config.max_line_length.saturating_mul(2))
            .saturating_add(PIPELINE_SLACK);
        let greeting = Reply::without_status(220, format!("{} ESMTP ready", config.hostname));
        let mut session = Self {
            config,
            peer,
            state: State::Command,
            input: Vec::new(),
            consumed: 0,
            discarding: false,
            discard_cr: false,
            overflowed: false,
            pipeline_cap,
            output: Vec::new(),
            event: None,
            pending: None,
            helo: None,
            esmtp: false,
            tls: false,
            auth_user: None,
            tx: Transaction::default(),
            errors: 0,
            junk: 0,
            lines: 0,
            closed: false,
            received_input: false,
        };
        session.send(&greeting);
        session
    }

    // ---------------------------------------------------------------- getters

    /// The session is over (QUIT, 421, timeout): write out the remaining output, then close the
    /// connection.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The session is reading a DATA body or a BDAT chunk: the driver arms its (longer) data
    /// timeout instead of the command timeout.
    #[must_use]
    pub fn expects_data(&self) -> bool {
        !self.closed
            && self.pending.is_none()
            && matches!(self.state, State::Data(_) | State::Bdat(_))
    }

    /// A command line (or AUTH response) has started but its CRLF has not arrived yet. With
    /// [`lines_read`](Self::lines_read) this lets the driver bound the time one command may
    /// take, whatever the gaps between its bytes.
    #[must_use]
    pub fn has_partial_command(&self) -> bool {
        !self.closed
            && self.pending.is_none()
            && !matches!(self.state, State::Data(_) | State::Bdat(_))
            && (self.discarding || self.consumed < self.input.len())
    }

    /// How many complete command lines the session has read.
    #[must_use]
    pub fn lines_read(&self) -> u64 {
        self.lines
    }

    /// A message transfer is under way: inside DATA, inside a BDAT chunk, or between the
    /// chunks of a BDAT transaction. The driver bounds the whole transfer with its data
    /// deadline.
    #[must_use]
    pub fn in_transfer(&self) -> bool {
        !self.closed
            && (matches!(self.state, State::Data(_) | State::Bdat(_))
                || (self.tx.bdat && self.pending.is_none()))
    }

    /// Bad commands counted so far (see `max_errors`).
    #[must_use]
    pub fn error_count(&self) -> usize {
        self.errors
    }

    /// The session can make progress with more input: false while an event is outstanding
    /// (the driver should stop reading then) and after close.
    #[must_use]
    pub fn wants_input(&self) -> bool {
        !self.closed && self.pending.is_none()
    }

    /// TLS is active (after [`tls_started`](Self::tls_started)).
    #[must_use]
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The user authenticated with AUTH, if any.
    #[must_use]
    pub fn authenticated_user(&self) -> Option<&str> {
        self.auth_user.as_deref()
    }

    /// The HELO/EHLO argument, once the client greeted.
    #[must_use]
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// The peer this session talks to.
    #[must_use]
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// The effective configuration (after clamping).
    #[must_use]
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    // ---------------------------------------------------------------- inputs

    /// Hands the session bytes read from the connection. It buffers them and processes as far
    /// as it can: until the input runs out, an event is emitted, or the session closes. Then
    /// call [`poll_output`](Self::poll_output) and [`poll_event`](Self::poll_event).
    ///
    /// Ignored after close and between [`Event::StartTls`] and
    /// [`tls_started`](Self::tls_started) (such bytes are plaintext sent after `STARTTLS`).
    pub fn handle_input(&mut self, data: &[u8]) {
        if self.closed
            || data.is_empty()
            || self.overflowed
            || matches!(self.pending, Some(Pending::StartTls))
        {
            return;
        }
        self.received_input = true;
        if self.pending.is_some() {
            let buffered = self.input.len() - self.consumed;
            let room = self.pipeline_cap.saturating_sub(buffered);
            if data.len() > room {
                self.input.extend_from_slice(&data[..room]);
                self.overflowed = true;
            } else {
                self.input.extend_from_slice(data);
            }
            return;
        }
        self.input.extend_from_slice(data);
        self.process();
    }

    /// Resolves the outstanding event (other than [`Event::StartTls`]) and resumes processing
    /// of buffered input, which may produce output and the next event.
    ///
    /// Ignored when no event is outstanding. It may be called before the event was polled; the
    /// event is then dropped unpolled.
    pub fn answer(&mut self, answer: Answer) {
        if self.closed {
            return;
        }
        let Some(pending) = self.pending.take() else {
            return;
        };
        if matches!(pending, Pending::StartTls) {
            self.pending = Some(pending);
            return;
        }
        self.event = None;
        match pending {
            Pending::StartTls => {}
            Pending::Auth { username } => {
                let (ok, reply) = resolve(
                    answer,
                    Reply::new(235, (2, 7, 0), "Authentication successful"),
                    Reply::new(535, (5, 7, 8), "Authentication credentials invalid"),
                );
                if ok {
                    self.auth_user = Some(username);
                    self.send(&reply);
                } else {
                    self.error(reply);
                }
            }
            Pending::MailFrom {
                address,
                body_8bit,
                smtputf8,
            } => {
                let (ok, reply) = resolve(
                    answer,
                    Reply::new(250, (2, 1, 0), "Sender OK"),
                    Reply::new(550, (5, 7, 1), "Sender rejected"),
                );
                if ok {
                    self.tx = Transaction {
                        mail_from: Some(address),
                        body_8bit,
                        smtputf8,
                        ..Transaction::default()
                    };
                    self.send(&reply);
                } else {
                    self.refused(reply);
                }
            }
            Pending::Recipient { address } => {
                let (ok, reply) = resolve(
                    answer,
                    Reply::new(250, (2, 1, 5), "Recipient OK"),
                    Reply::new(550, (5, 1, 1), "Recipient rejected"),
                );
                if ok {
                    self.tx.rcpt_to.push(address);
                    self.send(&reply);
                } else {
                    self.refused(reply);
                }
            }
            Pending::Message => {
                let (ok, reply) = resolve(
                    answer,
                    Reply::new(250, (2, 0, 0), "Message accepted"),
                    Reply::new(550, (5, 7, 1), "Message rejected"),
                );
                if ok {
                    self.junk = 0;
                }
                self.send(&reply);
            }
        }
        self.process();
    }

    /// The TLS handshake that followed [`Event::StartTls`] completed: the session is now TLS
    /// and back in the state right after the greeting (no greeting is sent again).
    ///
    /// Also accepted right after [`new`](Self::new), before any input, to mark an implicit-TLS
    /// session (port 465). Ignored at any other time.
    pub fn tls_started(&mut self) {
        if self.closed {
            return;
        }
        match self.pending {
            Some(Pending::StartTls) => {}
            None if !self.received_input && !self.tls => {}
            _ => return,
        }
        self.pending = None;
        self.event = None;
        self.tls = true;
        self.helo = None;
        self.esmtp = false;
        self.auth_user = None;
        self.tx = Transaction::default();
        self.state = State::Command;
        self.input = Vec::new();
        self.consumed = 0;
        self.discarding = false;
        self.discard_cr = false;
        self.overflowed = false;
    }

    /// The driver's read timer fired: queues `421 4.4.2 <hostname> Error: timeout exceeded` and
    /// closes the session (an outstanding event is dropped).
    pub fn handle_timeout(&mut self) {
        if self.closed {
            return;
        }
        let reply = Reply::new(
            421,
            (4, 4, 2),
            format!("{} Error: timeout exceeded", self.config.hostname),
        );
        self.send(&reply);
        self.close();
    }

    // ---------------------------------------------------------------- outputs

    /// Bytes to write to the connection, in order; they may hold several replies. Call after
    /// every input call until it returns `None`, and write them before acting on an event.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Vec<u8>> {
        if self.output.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.output))
        }
    }

    /// The next piece of work for the application. At most one event is outstanding: after
    /// this returns `Some`, it returns `None` until the event is answered (or, for
    /// [`Event::StartTls`], until [`tls_started`](Self::tls_started)).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.event.take()
    }

    // ---------------------------------------------------------------- internals

    fn send(&mut self, reply: &Reply) {
        reply.write_to(&mut self.output);
    }

    /// Sends a reply to a bad command and counts it toward `max_errors`.
    fn error(&mut self, reply: Reply) {
        self.send(&reply);
        self.errors += 1;
        if self.config.max_errors > 0 && self.errors >= self.config.max_errors {
            self.send(&Reply::new(421, (4, 7, 0), "Too many errors"));
            self.close();
        }
    }

    /// Sends the application's refusal of a sender or recipient: a 5xx counts as an error
    /// (probing for addresses), a 4xx (full mailbox, lookup failure) does not.
    fn refused(&mut self, reply: Reply) {
        if reply.code >= 500 {
            self.error(reply);
        } else {
            self.send(&reply);
        }
    }

    /// Sends the reply to a junk command, which counts as an error once the session has sent
    /// more than `max_junk_commands` of them.
    fn junk(&mut self, reply: Reply) {
        self.junk = self.junk.saturating_add(1);
        if self.config.max_junk_commands > 0 && self.junk > self.config.max_junk_commands {
            self.error(reply);
        } else {
            self.send(&reply);
        }
    }

    fn close(&mut self) {
        self.closed = true;
        self.event = None;
        self.pending = None;
        self.state = State::Command;
        self.tx = Transaction::default();
        self.input = Vec::new();
        self.consumed = 0;
    }

    fn emit(&mut self, event: Event, pending: Pending) {
        self.event = Some(event);
        self.pending = Some(pending);
    }

    fn auth_offered(&self) -> bool {
        self.config.submission && (self.tls || self.config.allow_insecure_auth)
    }

    /// Processes buffered input until it runs out, an event is emitted, or the session closes.
    fn process(&mut self) {
        while !self.closed && self.pending.is_none() {
            let progressed = match self.state {
                State::Data(_) => self.step_data(),
                State::Bdat(_) => self.step_bdat(),
                _ => self.step_line(),
            };
            if !progressed {
                break;
            }
        }
        self.compact();
        if self.overflowed && !self.closed && self.pending.is_none() {
            // Everything before the gap is processed; the stream cannot be resumed after it.
            let reply = Reply::new(
                421,
                (4, 7, 0),
                format!("{} Error: too much pipelined input", self.config.hostname),
            );
            self.send(&reply);
            self.close();
        }
    }

    fn compact(&mut self) {
        if self.consumed >= self.input.len() {
            self.input.clear();
        } else if self.consumed > 0 {
            self.input.drain(..self.consumed);
        }
        self.consumed = 0;
        let keep = self.config.max_line_length.max(PIPELINE_SLACK);
        if self.input.capacity() > 2 * keep && self.input.len() <= keep {
            self.input.shrink_to(keep);
        }
    }
}

/// Applies an answer: whether it succeeded, and the reply to send (the default one when the
/// given reply's code does not fit).
fn resolve(answer: Answer, ok: Reply, err: Reply) -> (bool, Reply) {
    match answer {
        Answer::Accept | Answer::Auth(true) => (true, ok),
        Answer::AcceptWith(reply) => (true, if reply.is_positive() { reply } else { ok }),
        Answer::Reject(reply) => (false, if reply.is_negative() { reply } else { err }),
        Answer::Auth(false) => (false, err),
    }
}
