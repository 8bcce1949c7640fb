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

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use smtp_proto::{
    Error as ParseError, MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8, MailFrom, RcptTo,
    Request,
};

/// RFC 5321 section 4.5.3.1.4: a command line is at least 512 octets long.
const MIN_LINE_LENGTH: usize = 512;

/// Room for pipelined input beyond one message and two command lines (see the module doc).
const PIPELINE_SLACK: usize = 64 * 1024;

/// Longest client-supplied text quoted back in a reply.
const MAX_ECHO: usize = 64;

/// Base64 as clients send it in AUTH: standard alphabet, padding optional.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The MAIL FROM flags this server supports (BODY=7BIT, BODY=8BITMIME, SMTPUTF8).
const SUPPORTED_MAIL_FLAGS: u64 = MAIL_BODY_7BIT | MAIL_BODY_8BITMIME | MAIL_SMTPUTF8;

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
        }
    }
}

/// What the session knows about the client's end of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    /// The client's IP address, shown in the EHLO reply.
    pub ip: IpAddr,
}

/// A SASL mechanism this server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMechanism {
    /// RFC 4616 PLAIN: `authzid NUL authcid NUL passwd`.
    Plain,
    /// The de-facto LOGIN mechanism: user name and password in two base64 responses.
    Login,
}

impl AuthMechanism {
    /// The mechanism's name as it appears in `AUTH` and the EHLO reply.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
        }
    }
}

impl fmt::Display for AuthMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The envelope of a complete message, handed over with [`Event::Message`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The HELO/EHLO argument as the client gave it.
    pub helo: String,
    /// The client greeted with EHLO (ESMTP) rather than HELO.
    pub esmtp: bool,
    /// The reverse-path; empty for the null sender `<>`.
    pub mail_from: String,
    /// The recipients the application accepted, in order.
    pub rcpt_to: Vec<String>,
    /// `BODY=8BITMIME` was given.
    pub body_8bit: bool,
    /// `SMTPUTF8` was given.
    pub smtputf8: bool,
    /// The authenticated user (the SASL authentication identity), if any.
    pub authenticated: Option<String>,
    /// The message came over TLS.
    pub tls: bool,
}

/// Work for the application, returned by [`ServerSession::poll_event`].
///
/// Answer each with [`ServerSession::answer`], except `StartTls`, which is completed with
/// [`ServerSession::tls_started`].
#[derive(Clone, PartialEq, Eq)]
pub enum Event {
    /// The client asked for TLS and the `220` is queued: write all pending output, run the TLS
    /// handshake on the same connection, then call [`ServerSession::tls_started`].
    StartTls,
    /// Check these credentials; answer [`Answer::Auth`] (or [`Answer::Reject`] with e.g.
    /// `454 4.7.0` on a temporary failure). The session identity becomes `username` on success;
    /// an application that does not support proxy authorization should reject an `authzid`
    /// that differs from `username`.
    Authenticate {
        /// The mechanism used.
        mechanism: AuthMechanism,
        /// The authorization identity (PLAIN only), if the client sent a non-empty one.
        authzid: Option<String>,
        /// The authentication identity.
        username: String,
        /// The password.
        password: String,
    },
    /// `MAIL FROM`: accept or reject the sender. Answer [`Answer::Accept`] or
    /// [`Answer::Reject`]. Syntax, parameters and the declared size were already checked.
    MailFrom {
        /// The reverse-path; empty for the null sender `<>`.
        address: String,
        /// The size the client declared with `SIZE=`, if any.
        size: Option<usize>,
    },
    /// `RCPT TO`: accept or reject one recipient. Only accepted ones enter the envelope.
    Recipient {
        /// The forward-path (`postmaster` for `<postmaster>`).
        address: String,
    },
    /// A complete message: make it durable, then answer [`Answer::Accept`] /
    /// [`Answer::AcceptWith`] (e.g. `250 2.0.0 Ok: queued as ...`) or [`Answer::Reject`].
    /// The transaction is reset after the reply, whatever it is.
    Message {
        /// The envelope.
        envelope: Envelope,
        /// The body: dot-unstuffed for DATA (it ends with CRLF unless empty), the joined chunks
        /// for BDAT.
        data: Vec<u8>,
    },
}

impl fmt::Debug for Event {
    /// Like a derived `Debug`, but never prints the password, and prints the body's length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StartTls => f.write_str("StartTls"),
            Self::Authenticate {
                mechanism,
                authzid,
                username,
                password: _,
            } => f
                .debug_struct("Authenticate")
                .field("mechanism", mechanism)
                .field("authzid", authzid)
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Self::MailFrom { address, size } => f
                .debug_struct("MailFrom")
                .field("address", address)
                .field("size", size)
                .finish(),
            Self::Recipient { address } => f
                .debug_struct("Recipient")
                .field("address", address)
                .finish(),
            Self::Message { envelope, data } => f
                .debug_struct("Message")
                .field("envelope", envelope)
                .field("data_len", &data.len())
                .finish(),
        }
    }
}

/// The application's result for the outstanding [`Event`].
///
/// The variant alone decides whether the command succeeded. A reply whose code does not fit the
/// variant (a 2xx in `Reject`, a 4xx/5xx in `AcceptWith`) is replaced by the default reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Success with the default reply (`250 2.1.0`, `250 2.1.5`, `250 2.0.0`, `235 2.7.0`).
    Accept,
    /// Success with this 2xx reply (e.g. a queue id after a message).
    AcceptWith(Reply),
    /// Failure with this 4xx or 5xx reply.
    Reject(Reply),
    /// For [`Event::Authenticate`]: `true` is `235 2.7.0 Authentication successful`, `false`
    /// is `535 5.7.8 Authentication credentials invalid`. For other events `Auth(true)` is
    /// [`Answer::Accept`] and `Auth(false)` a rejection with the default reply.
    Auth(bool),
}

/// An SMTP reply: code, optional enhanced status code and text.
///
/// Rendered as `550 5.1.1 text\r\n`; a text with several lines (separated by `\n`) becomes a
/// multi-line reply (`250-...` lines then `250 ...`), the status repeated on each line. Control
/// and non-ASCII characters in the text are rendered as `?`, and a code outside 200..=599 as
/// `451`, so the output is always well-formed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code (class, subject, detail), e.g. `(5, 1, 1)`.
    pub status: Option<(u8, u16, u16)>,
    /// The human-readable text; `\n` separates the lines of a multi-line reply.
    pub text: String,
}

impl Reply {
    /// A reply with an enhanced status code: `Reply::new(550, (5, 1, 1), "No such user")`.
    #[must_use]
    pub fn new(code: u16, status: (u8, u16, u16), text: impl Into<String>) -> Self {
        Self {
            code,
            status: Some(status),
            text: text.into(),
        }
    }

    /// A reply without an enhanced status code (greeting, EHLO, 354, 334).
    #[must_use]
    pub fn without_status(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            status: None,
            text: text.into(),
        }
    }

    /// The code is 2xx.
    #[must_use]
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The code is 4xx or 5xx.
    #[must_use]
    pub fn is_negative(&self) -> bool {
        (400..600).contains(&self.code)
    }

    /// Appends the wire form (one or more CRLF-terminated lines) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_string().as_bytes());
    }

    /// The wire form as bytes.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl fmt::Display for Reply {
    /// Writes the wire form, CRLFs included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = if (200..600).contains(&self.code) {
            self.code
        } else {
            451
        };
        let mut lines: Vec<&str> = self.text.lines().collect();
        if lines.is_empty() {
            lines.push("");
        }
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            write!(f, "{code}{sep}")?;
            if let Some((class, subject, detail)) = self.status {
                write!(f, "{class}.{subject}.{detail}")?;
                if !line.is_empty() {
                    f.write_str(" ")?;
                }
            }
            for ch in line.chars() {
                let printable = ch == ' ' || ch.is_ascii_graphic();
                f.write_char(if printable { ch } else { '?' })?;
            }
            f.write_str("\r\n")?;
        }
        Ok(())
    }
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
}

/// One BDAT chunk being read.
#[derive(Debug)]
struct BdatChunk {
    size: usize,
    remaining: usize,
    last: bool,
    /// The chunk is out of sequence: read its octets, drop them, then send this reply.
    refusal: Option<Refusal>,
}

#[derive(Debug)]
struct Refusal {
    reply: Reply,
    counts_as_error: bool,
}

/// Where the DATA body parser stands. CR and LF are only special as the pair CRLF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataPos {
    /// Right after a CRLF (or the DATA line's CRLF).
    LineStart,
    /// Inside a line.
    Mid,
    /// After a CR held back until we know whether LF follows.
    Cr,
    /// After a `.` at the start of a line (dropped: stuffing or the end marker).
    Dot,
    /// After `.` CR at the start of a line: LF ends the message.
    DotCr,
}

#[derive(Debug)]
struct DataParser {
    pos: DataPos,
    /// A bare CR or bare LF was seen.
    bare: bool,
}

/// Where DATA/BDAT octets go: into the body up to the size limit, then nowhere.
struct Sink<'a> {
    body: &'a mut Vec<u8>,
    oversize: &'a mut bool,
    limit: usize,
}

impl Sink<'_> {
    fn push(&mut self, bytes: &[u8]) {
        if *self.oversize || bytes.is_empty() {
            return;
        }
        if self.body.len().saturating_add(bytes.len()) > self.limit {
            *self.oversize = true;
            *self.body = Vec::new();
        } else {
            self.body.extend_from_slice(bytes);
        }
    }
}

impl DataParser {
    fn new() -> Self {
        Self {
            pos: DataPos::LineStart,
            bare: false,
        }
    }

    /// Consumes body bytes from `input`. Returns how many were consumed and whether the end of
    /// data (CRLF `.` CRLF) was reached; bytes after the end are left alone.
    fn feed(&mut self, input: &[u8], sink: &mut Sink<'_>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            let byte = input[i];
            match self.pos {
                DataPos::Mid => {
                    let rest = &input[i..];
                    match rest.iter().position(|&b| b == b'\r' || b == b'\n') {
                        None => {
                            sink.push(rest);
                            i = input.len();
                        }
                        Some(k) => {
                            sink.push(&rest[..k]);
                            if rest[k] == b'\r' {
                                self.pos = DataPos::Cr;
                            } else {
                                self.bare = true;
                                sink.push(b"\n");
                            }
                            i += k + 1;
                        }
                    }
                }
                DataPos::LineStart => {
                    i += 1;
                    match byte {
                        b'.' => self.pos = DataPos::Dot,
                        b'\r' => self.pos = DataPos::Cr,
                        b'\n' => {
                            self.bare = true;
                            sink.push(b"\n");
                            self.pos = DataPos::Mid;
                        }
                        _ => {
                            sink.push(&[byte]);
                            self.pos = DataPos::Mid;
                        }
                    }
                }
                DataPos::Cr => {
                    if byte == b'\n' {
                        i += 1;
                        sink.push(b"\r\n");
                        self.pos = DataPos::LineStart;
                    } else {
                        // The held CR was bare; look at `byte` again inside the line.
                        self.bare = true;
                        sink.push(b"\r");
                        self.pos = DataPos::Mid;
                    }
                }
                DataPos::Dot => {
                    if byte == b'\r' {
                        i += 1;
                        self.pos = DataPos::DotCr;
                    } else {
                        // The dot was stuffing; `byte` is line content.
                        self.pos = DataPos::Mid;
                    }
                }
                DataPos::DotCr => {
                    if byte == b'\n' {
                        return (i + 1, true);
                    }
                    self.bare = true;
                    sink.push(b"\r");
                    self.pos = DataPos::Mid;
                }
            }
        }
        (i, false)
    }
}

/// What the command-line reader found.
enum Line {
    /// A complete line: `input[start..end]` without its CRLF.
    Complete { start: usize, end: usize },
    /// An over-long line ended (its bytes are gone).
    TooLong,
    /// More input is needed.
    Incomplete,
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

    fn step_data(&mut self) -> bool {
        let State::Data(parser) = &mut self.state else {
            return false;
        };
        let buf = &self.input[self.consumed..];
        if buf.is_empty() {
            return false;
        }
        let mut sink = Sink {
            body: &mut self.tx.body,
            oversize: &mut self.tx.oversize,
            limit: self.config.max_message_size,
        };
        let (used, ended) = parser.feed(buf, &mut sink);
        let bare = parser.bare;
        self.consumed += used;
        if ended {
            self.state = State::Command;
            self.finish_data(bare);
        }
        true
    }

    fn step_bdat(&mut self) -> bool {
        let State::Bdat(chunk) = &mut self.state else {
            return false;
        };
        let buf = &self.input[self.consumed..];
        let take = chunk.remaining.min(buf.len());
        if take == 0 && chunk.remaining > 0 {
            return false;
        }
        if chunk.refusal.is_none() {
            let mut sink = Sink {
                body: &mut self.tx.body,
                oversize: &mut self.tx.oversize,
                limit: self.config.max_message_size,
            };
            sink.push(&buf[..take]);
        }
        self.consumed += take;
        chunk.remaining -= take;
        if chunk.remaining == 0
            && let State::Bdat(chunk) = std::mem::replace(&mut self.state, State::Command)
        {
            self.finish_chunk(chunk);
        }
        true
    }

    /// Reads the next command line and handles it.
    fn step_line(&mut self) -> bool {
        match self.next_line() {
            Line::Incomplete => false,
            Line::TooLong => {
                self.state = State::Command;
                self.error(Reply::new(500, (5, 5, 2), "Line too long"));
                true
            }
            Line::Complete { start, end } => {
                self.lines = self.lines.wrapping_add(1);
                // A copy (at most max_line_length octets) frees `self` for the handlers.
                let raw = self.input[start..end + 2].to_vec();
                let line = &raw[..raw.len() - 2];
                if line.contains(&b'\r') || line.contains(&b'\n') {
                    self.state = State::Command;
                    self.error(Reply::new(
                        500,
                        (5, 5, 2),
                        "Bare CR or LF not allowed in commands",
                    ));
                } else if matches!(self.state, State::Command) {
                    self.handle_command(&raw);
                } else {
                    self.handle_auth_response(line);
                }
                true
            }
        }
    }

    /// Finds the next CRLF-terminated line in the buffered input, enforcing the length limit
    /// without buffering an over-long line.
    fn next_line(&mut self) -> Line {
        let max = self.config.max_line_length;
        let buf = &self.input[self.consumed..];
        if buf.is_empty() {
            return Line::Incomplete;
        }
        if self.discarding {
            let end = if self.discard_cr && buf[0] == b'\n' {
                Some(1)
            } else {
                find_crlf(buf).map(|i| i + 2)
            };
            return match end {
                Some(end) => {
                    self.consumed += end;
                    self.discarding = false;
                    self.discard_cr = false;
                    Line::TooLong
                }
                None => {
                    self.discard_cr = buf.last() == Some(&b'\r');
                    self.consumed += buf.len();
                    Line::Incomplete
                }
            };
        }
        match find_crlf(buf) {
            Some(i) => {
                let start = self.consumed;
                self.consumed += i + 2;
                if i + 2 > max {
                    Line::TooLong
                } else {
                    Line::Complete {
                        start,
                        end: start + i,
                    }
                }
            }
            None => {
                let ends_cr = buf.last() == Some(&b'\r');
                let shortest = buf.len() - usize::from(ends_cr);
                if shortest + 2 > max {
                    self.discarding = true;
                    self.discard_cr = ends_cr;
                    self.consumed += buf.len();
                }
                Line::Incomplete
            }
        }
    }

    fn handle_command(&mut self, raw: &[u8]) {
        let request = match Request::parse(&mut raw.iter()) {
            Ok(request) => request,
            Err(err) => {
                self.error(parse_error_reply(err));
                return;
            }
        };
        match request {
            Request::Ehlo { host } => self.cmd_hello(host.into_owned(), true),
            Request::Helo { host } => self.cmd_hello(host.into_owned(), false),
            Request::Mail { from } => self.cmd_mail(from, raw),
            Request::Rcpt { to } => self.cmd_rcpt(to, raw),
            Request::Data => self.cmd_data(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.cmd_bdat(chunk_size, is_last, raw),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.cmd_auth(mechanism, &initial_response),
            Request::StartTls => self.cmd_starttls(),
            Request::Rset => {
                self.tx = Transaction::default();
                self.junk(Reply::new(250, (2, 0, 0), "Ok"));
            }
            Request::Noop { .. } => self.junk(Reply::new(250, (2, 0, 0), "Ok")),
            Request::Quit => {
                self.send(&Reply::new(221, (2, 0, 0), "Bye"));
                self.close();
            }
            Request::Help { .. } => self.junk(Reply::new(
                214,
                (2, 0, 0),
                "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY STARTTLS AUTH",
            )),
            Request::Vrfy { .. } => {
                if self.config.vrfy_enabled {
                    self.junk(Reply::new(
                        252,
                        (2, 5, 0),
                        "Cannot VRFY user, but will accept message and attempt delivery",
                    ));
                } else {
                    self.error(Reply::new(502, (5, 5, 1), "VRFY command is disabled"));
                }
            }
            Request::Expn { .. } => {
                self.error(Reply::new(502, (5, 5, 1), "EXPN command is disabled"));
            }
            Request::Lhlo { .. } => {
                self.error(Reply::new(500, (5, 5, 2), "Command unrecognized"));
            }
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                self.error(Reply::new(502, (5, 5, 1), "Command not implemented"));
            }
        }
    }

    fn cmd_hello(&mut self, host: String, esmtp: bool) {
        // RFC 5321 4.1.4: HELO/EHLO also resets the transaction.
        self.tx = Transaction::default();
        self.helo = Some(host);
        self.esmtp = esmtp;
        let reply = if esmtp {
            let mut lines = vec![
                format!(
                    "{} Hello {}",
                    self.config.hostname,
                    address_literal(self.peer.ip)
                ),
                "PIPELINING".to_owned(),
                format!("SIZE {}", self.config.max_message_size),
                "8BITMIME".to_owned(),
                "SMTPUTF8".to_owned(),
                "ENHANCEDSTATUSCODES".to_owned(),
                "CHUNKING".to_owned(),
            ];
            if self.config.tls_available && !self.tls {
                lines.push("STARTTLS".to_owned());
            }
            if self.auth_offered() {
                lines.push("AUTH PLAIN LOGIN".to_owned());
            }
            Reply::without_status(250, lines.join("\n"))
        } else {
            Reply::without_status(250, self.config.hostname.clone())
        };
        self.send(&reply);
    }

    fn cmd_mail(&mut self, from: MailFrom<Cow<'_, str>>, raw: &[u8]) {
        if self.helo.is_none() {
            return self.error(Reply::new(503, (5, 5, 1), "Send HELO/EHLO first"));
        }
        if self.tx.mail_from.is_some() {
            return self.error(Reply::new(503, (5, 5, 1), "Nested MAIL command"));
        }
        if self.config.submission && self.auth_user.is_none() {
            return self.error(Reply::new(530, (5, 7, 0), "Authentication required"));
        }
        let has_params = from.flags != 0 || from.size != 0 || from.auth.is_some();
        let unsupported = from.flags & !SUPPORTED_MAIL_FLAGS != 0
            || from.trans_id.is_some()
            || from.by != 0
            || from.env_id.is_some()
            || from.solicit.is_some()
            || from.mtrk.is_some()
            || from.hold_for != 0
            || from.hold_until != 0
            || from.mt_priority != 0
            || (from.auth.is_some() && !self.auth_offered());
        if unsupported {
            return self.error(Reply::new(555, (5, 5, 4), "Unsupported MAIL parameter"));
        }
        if has_params && !self.esmtp {
            return self.error(Reply::new(555, (5, 5, 4), "MAIL parameters require EHLO"));
        }
        if from.address.is_empty() && bracketed_is_postmaster(raw) {
            return self.error(Reply::new(501, (5, 1, 7), "Bad sender address syntax"));
        }
        if std::str::from_utf8(raw).is_err() {
            return self.error(Reply::new(501, (5, 5, 4), "Invalid UTF-8 in command"));
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        if !smtputf8 && !from.address.is_ascii() {
            return self.send(&Reply::new(
                553,
                (5, 6, 7),
                "Non-ASCII address requires SMTPUTF8",
            ));
        }
        if from.size > self.config.max_message_size || size_param_overflows(raw) {
            return self.send(&Reply::new(
                552,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            ));
        }
        let address = from.address.into_owned();
        let size = (from.size > 0).then_some(from.size);
        self.emit(
            Event::MailFrom {
                address: address.clone(),
                size,
            },
            Pending::MailFrom {
                address,
                body_8bit: from.flags & MAIL_BODY_8BITMIME != 0,
                smtputf8,
            },
        );
    }

    fn cmd_rcpt(&mut self, to: RcptTo<Cow<'_, str>>, raw: &[u8]) {
        if self.tx.mail_from.is_none() {
            return self.error(Reply::new(503, (5, 5, 1), "Need MAIL command"));
        }
        if self.tx.bdat {
            return self.error(Reply::new(503, (5, 5, 1), "RCPT not allowed after BDAT"));
        }
        if to.flags != 0 || to.orcpt.is_some() || to.rrvs != 0 {
            return self.error(Reply::new(555, (5, 5, 4), "Unsupported RCPT parameter"));
        }
        let address = if !to.address.is_empty() {
            to.address.into_owned()
        } else if bracketed_is_postmaster(raw) {
            // smtp-proto maps <postmaster> to "", RFC 5321 requires accepting it.
            "postmaster".to_owned()
        } else {
            return self.error(Reply::new(501, (5, 1, 3), "Bad recipient address syntax"));
        };
        if std::str::from_utf8(raw).is_err() {
            return self.error(Reply::new(501, (5, 5, 4), "Invalid UTF-8 in command"));
        }
        if !self.tx.smtputf8 && !address.is_ascii() {
            return self.send(&Reply::new(
                553,
                (5, 6, 7),
                "Non-ASCII address requires SMTPUTF8",
            ));
        }
        if self.tx.rcpt_to.len() >= self.config.max_recipients {
            return self.junk(Reply::new(452, (4, 5, 3), "Too many recipients"));
        }
        self.emit(
            Event::Recipient {
                address: address.clone(),
            },
            Pending::Recipient { address },
        );
    }

    fn cmd_data(&mut self) {
        if self.tx.mail_from.is_none() {
            return self.error(Reply::new(503, (5, 5, 1), "Need MAIL command"));
        }
        if self.tx.bdat {
            return self.error(Reply::new(503, (5, 5, 1), "DATA not allowed after BDAT"));
        }
        if self.tx.rcpt_to.is_empty() {
            return self.send(&Reply::new(554, (5, 5, 1), "No valid recipients"));
        }
        self.tx.body = Vec::new();
        self.tx.oversize = false;
        self.state = State::Data(DataParser::new());
        self.send(&Reply::without_status(
            354,
            "End data with <CR><LF>.<CR><LF>",
        ));
    }

    fn cmd_bdat(&mut self, size: usize, last: bool, raw: &[u8]) {
        if bdat_size_overflows(raw) {
            // smtp-proto misreads such a number as a small one: never read that many octets.
            return self.error(Reply::new(501, (5, 5, 4), "BDAT chunk size too large"));
        }
        // The chunk's octets are always read, even when the command is refused: otherwise
        // they would be taken for commands.
        let refusal = if !self.esmtp {
            Some(Refusal {
                reply: Reply::new(503, (5, 5, 1), "BDAT requires EHLO"),
                counts_as_error: true,
            })
        } else if self.tx.mail_from.is_none() {
            Some(Refusal {
                reply: Reply::new(503, (5, 5, 1), "Need MAIL command"),
                counts_as_error: true,
            })
        } else if self.tx.rcpt_to.is_empty() {
            Some(Refusal {
                reply: Reply::new(554, (5, 5, 1), "No valid recipients"),
                counts_as_error: false,
            })
        } else {
            if !self.tx.bdat {
                self.tx.bdat = true;
                self.tx.body = Vec::new();
                self.tx.oversize = false;
            }
            None
        };
        self.state = State::Bdat(BdatChunk {
            size,
            remaining: size,
            last,
            refusal,
        });
    }

    fn finish_chunk(&mut self, chunk: BdatChunk) {
        if let Some(refusal) = chunk.refusal {
            if chunk.last {
                self.tx = Transaction::default();
            }
            if refusal.counts_as_error {
                self.error(refusal.reply);
            } else {
                self.send(&refusal.reply);
            }
        } else if !chunk.last {
            self.send(&Reply::new(
                250,
                (2, 0, 0),
                format!("{} octets received", chunk.size),
            ));
        } else {
            let tx = std::mem::take(&mut self.tx);
            if tx.oversize {
                self.send(&size_exceeded());
            } else {
                self.deliver(tx);
            }
        }
    }

    fn finish_data(&mut self, bare: bool) {
        let tx = std::mem::take(&mut self.tx);
        if bare {
            self.send(&Reply::new(
                550,
                (5, 6, 11),
                "Message rejected: bare CR or LF in message data; use CRLF line endings",
            ));
        } else if tx.oversize {
            self.send(&size_exceeded());
        } else {
            self.deliver(tx);
        }
    }

    fn deliver(&mut self, tx: Transaction) {
        let envelope = Envelope {
            helo: self.helo.clone().unwrap_or_default(),
            esmtp: self.esmtp,
            mail_from: tx.mail_from.unwrap_or_default(),
            rcpt_to: tx.rcpt_to,
            body_8bit: tx.body_8bit,
            smtputf8: tx.smtputf8,
            authenticated: self.auth_user.clone(),
            tls: self.tls,
        };
        self.emit(
            Event::Message {
                envelope,
                data: tx.body,
            },
            Pending::Message,
        );
    }

    fn cmd_auth(&mut self, mechanism: u64, initial: &str) {
        if !self.config.submission {
            return self.error(Reply::new(503, (5, 5, 1), "AUTH not available"));
        }
        if !self.esmtp {
            return self.error(Reply::new(503, (5, 5, 1), "Send EHLO first"));
        }
        if self.auth_user.is_some() {
            return self.error(Reply::new(503, (5, 5, 1), "Already authenticated"));
        }
        if self.tx.mail_from.is_some() {
            return self.error(Reply::new(
                503,
                (5, 5, 1),
                "AUTH not allowed during a mail transaction",
            ));
        }
        if !self.tls && !self.config.allow_insecure_auth {
            return self.error(Reply::new(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ));
        }
        let mechanism = match mechanism {
            smtp_proto::AUTH_PLAIN => AuthMechanism::Plain,
            smtp_proto::AUTH_LOGIN => AuthMechanism::Login,
            _ => {
                return self.error(Reply::new(
                    504,
                    (5, 5, 4),
                    "Unrecognized authentication type",
                ));
            }
        };
        match (mechanism, initial.is_empty()) {
            (AuthMechanism::Plain, true) => {
                self.state = State::AuthPlain;
                self.send(&Reply::without_status(334, ""));
            }
            (AuthMechanism::Plain, false) => {
                match decode_base64(initial.as_bytes()).and_then(|b| parse_plain(&b)) {
                    Some((authzid, username, password)) => {
                        self.start_auth(mechanism, authzid, username, password);
                    }
                    None => self.error(bad_auth_response()),
                }
            }
            (AuthMechanism::Login, true) => {
                self.state = State::AuthLoginUser;
                self.send(&Reply::without_status(334, "VXNlcm5hbWU6"));
            }
            (AuthMechanism::Login, false) => match decode_text(initial.as_bytes()) {
                Some(username) => {
                    self.state = State::AuthLoginPass { username };
                    self.send(&Reply::without_status(334, "UGFzc3dvcmQ6"));
                }
                None => self.error(bad_auth_response()),
            },
        }
    }

    /// A client response line during an AUTH exchange.
    fn handle_auth_response(&mut self, line: &[u8]) {
        let state = std::mem::replace(&mut self.state, State::Command);
        if line == b"*" {
            return self.send(&Reply::new(501, (5, 0, 0), "Authentication cancelled"));
        }
        match state {
            State::AuthPlain => match decode_base64(line).and_then(|b| parse_plain(&b)) {
                Some((authzid, username, password)) => {
                    self.start_auth(AuthMechanism::Plain, authzid, username, password);
                }
                None => self.error(bad_auth_response()),
            },
            State::AuthLoginUser => match decode_text(line) {
                Some(username) => {
                    self.state = State::AuthLoginPass { username };
                    self.send(&Reply::without_status(334, "UGFzc3dvcmQ6"));
                }
                None => self.error(bad_auth_response()),
            },
            State::AuthLoginPass { username } => match decode_text(line) {
                Some(password) => {
                    self.start_auth(AuthMechanism::Login, None, username, password);
                }
                None => self.error(bad_auth_response()),
            },
            other => self.state = other,
        }
    }

    fn start_auth(
        &mut self,
        mechanism: AuthMechanism,
        authzid: Option<String>,
        username: String,
        password: String,
    ) {
        self.emit(
            Event::Authenticate {
                mechanism,
                authzid,
                username: username.clone(),
                password,
            },
            Pending::Auth { username },
        );
    }

    fn cmd_starttls(&mut self) {
        if self.tls {
            return self.error(Reply::new(503, (5, 5, 1), "Already using TLS"));
        }
        if !self.config.tls_available {
            return self.send(&Reply::new(454, (4, 7, 0), "TLS not available"));
        }
        self.send(&Reply::new(220, (2, 0, 0), "Ready to start TLS"));
        // CVE-2011-0411: nothing pipelined behind STARTTLS may survive into the TLS session.
        self.consumed = self.input.len();
        self.discarding = false;
        self.discard_cr = false;
        self.overflowed = false;
        self.emit(Event::StartTls, Pending::StartTls);
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

fn size_exceeded() -> Reply {
    Reply::new(
        552,
        (5, 3, 4),
        "Message size exceeds fixed maximum message size",
    )
}

fn bad_auth_response() -> Reply {
    Reply::new(501, (5, 5, 2), "Cannot decode response")
}

fn parse_error_reply(err: ParseError) -> Reply {
    match err {
        ParseError::UnknownCommand => Reply::new(500, (5, 5, 2), "Command unrecognized"),
        ParseError::SyntaxError { syntax } => {
            Reply::new(501, (5, 5, 4), format!("Syntax: {syntax}"))
        }
        ParseError::InvalidSenderAddress => Reply::new(501, (5, 1, 7), "Bad sender address syntax"),
        ParseError::InvalidRecipientAddress => {
            Reply::new(501, (5, 1, 3), "Bad recipient address syntax")
        }
        ParseError::InvalidParameter { param } => {
            Reply::new(501, (5, 5, 4), format!("Invalid {param} parameter"))
        }
        ParseError::UnsupportedParameter { param } => {
            let param: String = param.chars().take(MAX_ECHO).collect();
            Reply::new(555, (5, 5, 4), format!("Unsupported parameter {param}"))
        }
        _ => Reply::new(501, (5, 5, 4), "Syntax error"),
    }
}

/// The client's address as an RFC 5321 address literal.
fn address_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// Position of the first CRLF in `buf`.
fn find_crlf(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(k) = buf[from..].iter().position(|&b| b == b'\n') {
        let lf = from + k;
        if lf > 0 && buf[lf - 1] == b'\r' {
            return Some(lf - 1);
        }
        from = lf + 1;
    }
    None
}

/// The argument of a `BDAT` line is a run of digits too large for a `usize`.
fn bdat_size_overflows(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let mut words = text.split_ascii_whitespace();
    words.next();
    words.next().is_some_and(number_overflows)
}

/// A `SIZE=` parameter of a `MAIL` line holds a run of digits too large for a `usize`.
fn size_param_overflows(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    // Parameters follow the path; a `>` inside the path would only make us look at more text.
    let params = text.rsplit_once('>').map_or("", |(_, rest)| rest);
    params.split_ascii_whitespace().any(|param| {
        param
            .split_once('=')
            .is_some_and(|(key, value)| key.eq_ignore_ascii_case("SIZE") && number_overflows(value))
    })
}

/// `word` is all ASCII digits and does not fit in a `usize`.
fn number_overflows(word: &str) -> bool {
    !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit()) && word.parse::<usize>().is_err()
}

/// The path between the first `<` and the next `>` of a command line is `postmaster`.
fn bracketed_is_postmaster(raw: &[u8]) -> bool {
    let Some(lt) = raw.iter().position(|&b| b == b'<') else {
        return false;
    };
    let rest = &raw[lt + 1..];
    let Some(gt) = rest.iter().position(|&b| b == b'>') else {
        return false;
    };
    rest[..gt].eq_ignore_ascii_case(b"postmaster")
}

/// Decodes a base64 SASL response; `=` is the empty response (RFC 4954).
fn decode_base64(response: &[u8]) -> Option<Vec<u8>> {
    let response = response.trim_ascii();
    if response == b"=" {
        return Some(Vec::new());
    }
    BASE64.decode(response).ok()
}

/// Decodes a base64 response holding UTF-8 text (AUTH LOGIN).
fn decode_text(response: &[u8]) -> Option<String> {
    String::from_utf8(decode_base64(response)?).ok()
}

/// Splits a PLAIN message `authzid NUL authcid NUL passwd` (RFC 4616).
fn parse_plain(message: &[u8]) -> Option<(Option<String>, String, String)> {
    let mut parts = message.split(|&b| b == 0);
    let authzid = std::str::from_utf8(parts.next()?).ok()?;
    let authcid = std::str::from_utf8(parts.next()?).ok()?;
    let passwd = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || authcid.is_empty() {
        return None;
    }
    let authzid = (!authzid.is_empty()).then(|| authzid.to_owned());
    Some((authzid, authcid.to_owned(), passwd.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    const HOST: &str = "mx.example.com";

    fn config() -> SessionConfig {
        SessionConfig {
            hostname: HOST.to_owned(),
            tls_available: true,
            max_message_size: 10_000,
            max_recipients: 5,
            max_errors: 10,
            ..SessionConfig::default()
        }
    }

    fn submission() -> SessionConfig {
        SessionConfig {
            submission: true,
            ..config()
        }
    }

    fn peer() -> PeerInfo {
        PeerInfo {
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        }
    }

    type Responder = Box<dyn FnMut(&Event) -> Answer>;

    /// Feeds scripts into a session, collects its output, and answers every event with the
    /// responder (StartTls is completed with tls_started()).
    struct Harness {
        session: ServerSession,
        output: Vec<u8>,
        events: Vec<Event>,
        responder: Responder,
    }

    impl Harness {
        fn new(config: SessionConfig) -> Self {
            Self::with(config, Box::new(accept_all))
        }

        fn with(config: SessionConfig, responder: Responder) -> Self {
            let mut h = Self {
                session: ServerSession::new(config, peer()),
                output: Vec::new(),
                events: Vec::new(),
                responder,
            };
            h.pump();
            h
        }

        fn feed(&mut self, bytes: &[u8]) {
            self.session.handle_input(bytes);
            self.pump();
        }

        fn pump(&mut self) {
            loop {
                while let Some(out) = self.session.poll_output() {
                    self.output.extend_from_slice(&out);
                }
                let Some(event) = self.session.poll_event() else {
                    break;
                };
                assert!(
                    self.session.poll_event().is_none(),
                    "two events outstanding"
                );
                assert!(!self.session.wants_input());
                let answer = (self.responder)(&event);
                let is_tls = event == Event::StartTls;
                self.events.push(event);
                if is_tls {
                    // The 220 must be out before the handshake.
                    assert!(self.output.ends_with(b"220 2.0.0 Ready to start TLS\r\n"));
                    self.session.tls_started();
                } else {
                    self.session.answer(answer);
                }
            }
        }

        /// Feeds `bytes` and returns the output it produced.
        fn send(&mut self, bytes: &str) -> String {
            self.feed(bytes.as_bytes());
            self.take()
        }

        fn take(&mut self) -> String {
            String::from_utf8_lossy(&std::mem::take(&mut self.output)).into_owned()
        }

        fn take_events(&mut self) -> Vec<Event> {
            std::mem::take(&mut self.events)
        }

        fn messages(&self) -> Vec<&[u8]> {
            self.events
                .iter()
                .filter_map(|e| match e {
                    Event::Message { data, .. } => Some(data.as_slice()),
                    _ => None,
                })
                .collect()
        }
    }

    fn accept_all(event: &Event) -> Answer {
        match event {
            Event::Authenticate { .. } => Answer::Auth(true),
            _ => Answer::Accept,
        }
    }

    /// A session after EHLO, with the greeting and EHLO reply consumed.
    fn greeted(config: SessionConfig) -> Harness {
        let mut h = Harness::new(config);
        h.send("EHLO client.example.org\r\n");
        h.take_events();
        h
    }

    /// A submission session after STARTTLS and EHLO.
    fn tls_submission() -> Harness {
        let mut h = Harness::new(submission());
        h.send("EHLO c\r\nSTARTTLS\r\n");
        h.send("EHLO c\r\n");
        h.take_events();
        h
    }

    fn b64(s: &str) -> String {
        BASE64.encode(s)
    }

    /// Splits output into reply lines and checks each is `ddd[ -]...\r\n`.
    fn assert_well_formed(out: &[u8]) {
        let mut rest = out;
        while !rest.is_empty() {
            let end = find_crlf(rest).expect("reply line not CRLF-terminated");
            let line = &rest[..end];
            assert!(line.len() >= 4, "short reply line {line:?}");
            assert!(
                line[..3].iter().all(u8::is_ascii_digit),
                "bad code {line:?}"
            );
            assert!(line[3] == b' ' || line[3] == b'-', "bad separator {line:?}");
            assert!(
                !line.contains(&b'\r') && !line.contains(&b'\n'),
                "CR/LF in {line:?}"
            );
            rest = &rest[end + 2..];
        }
    }

    // ------------------------------------------------------------ greeting, EHLO, HELO

    #[test]
    fn greeting_is_queued_on_creation() {
        let mut s = ServerSession::new(config(), peer());
        assert_eq!(
            s.poll_output().as_deref(),
            Some(&b"220 mx.example.com ESMTP ready\r\n"[..])
        );
        assert!(s.poll_output().is_none());
        assert!(s.poll_event().is_none());
        assert!(!s.is_closed() && !s.is_tls() && !s.expects_data() && s.wants_input());
    }

    #[test]
    fn ehlo_lists_extensions_on_port_25() {
        let mut h = Harness::new(config());
        h.take();
        assert_eq!(
            h.send("EHLO client.example.org\r\n"),
            "250-mx.example.com Hello [192.0.2.1]\r\n\
             250-PIPELINING\r\n\
             250-SIZE 10000\r\n\
             250-8BITMIME\r\n\
             250-SMTPUTF8\r\n\
             250-ENHANCEDSTATUSCODES\r\n\
             250-CHUNKING\r\n\
             250 STARTTLS\r\n"
        );
        assert_eq!(h.session.helo(), Some("client.example.org"));
    }

    #[test]
    fn ehlo_without_tls_certificate_omits_starttls() {
        let mut h = Harness::new(SessionConfig {
            tls_available: false,
            ..config()
        });
        h.take();
        let out = h.send("EHLO c\r\n");
        assert!(!out.contains("STARTTLS"));
        assert!(out.ends_with("250 CHUNKING\r\n"));
    }

    #[test]
    fn ehlo_on_submission_offers_auth_only_over_tls() {
        let mut h = Harness::new(submission());
        h.take();
        let before = h.send("EHLO c\r\n");
        assert!(before.contains("250 STARTTLS\r\n"));
        assert!(!before.contains("AUTH"));
        h.send("STARTTLS\r\n");
        let after = h.send("EHLO c\r\n");
        assert!(!after.contains("STARTTLS"));
        assert!(after.ends_with("250 AUTH PLAIN LOGIN\r\n"));
    }

    #[test]
    fn ehlo_offers_auth_without_tls_when_insecure_auth_is_allowed() {
        let mut h = Harness::new(SessionConfig {
            allow_insecure_auth: true,
            ..submission()
        });
        h.take();
        assert!(
            h.send("EHLO c\r\n")
                .ends_with("250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n")
        );
    }

    #[test]
    fn ehlo_shows_ipv6_address_literal() {
        let mut s = ServerSession::new(
            config(),
            PeerInfo {
                ip: "2001:db8::1".parse().unwrap(),
            },
        );
        let _ = s.poll_output();
        s.handle_input(b"EHLO c\r\n");
        let out = s.poll_output().unwrap();
        assert!(out.starts_with(b"250-mx.example.com Hello [IPv6:2001:db8::1]\r\n"));
    }

    #[test]
    fn helo_gets_plain_250_and_disables_esmtp_parameters() {
        let mut h = Harness::new(config());
        h.take();
        assert_eq!(h.send("HELO client\r\n"), "250 mx.example.com\r\n");
        assert_eq!(
            h.send("MAIL FROM:<a@b.example> SIZE=100\r\n"),
            "555 5.5.4 MAIL parameters require EHLO\r\n"
        );
        assert_eq!(
            h.send("MAIL FROM:<a@b.example>\r\n"),
            "250 2.1.0 Sender OK\r\n"
        );
        h.send("RCPT TO:<c@d.example>\r\n");
        assert_eq!(
            h.send("BDAT 3 LAST\r\nabc"),
            "503 5.5.1 BDAT requires EHLO\r\n"
        );
        assert_eq!(h.send("AUTH PLAIN\r\n"), "503 5.5.1 AUTH not available\r\n");
        let events = h.take_events();
        assert!(matches!(
            &events[..],
            [Event::MailFrom { .. }, Event::Recipient { .. }]
        ));
    }

    #[test]
    fn ehlo_requires_a_domain() {
        let mut h = Harness::new(config());
        h.take();
        assert_eq!(h.send("EHLO\r\n"), "501 5.5.4 Syntax: EHLO domain\r\n");
    }

    #[test]
    fn ehlo_resets_the_transaction() {
        let mut h = greeted(config());
        h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
        h.send("EHLO again\r\n");
        assert_eq!(h.send("DATA\r\n"), "503 5.5.1 Need MAIL command\r\n");
    }

    // ------------------------------------------------------------ transactions

    #[test]
    fn full_pipelined_transaction_in_one_write() {
        let mut h = Harness::with(
            config(),
            Box::new(|e| match e {
                Event::Message { .. } => {
                    Answer::AcceptWith(Reply::new(250, (2, 0, 0), "Ok: queued as 42"))
                }
                _ => Answer::Accept,
            }),
        );
        h.take();
        let out = h.send(
            "EHLO client.example.org\r\n\
             MAIL FROM:<alice@example.org> BODY=8BITMIME SIZE=30\r\n\
             RCPT TO:<bob@example.com>\r\n\
             RCPT TO:<carol@example.com>\r\n\
             DATA\r\n\
             Subject: hi\r\n\
             \r\n\
             ..dotted\r\n\
             .\r\n\
             QUIT\r\n",
        );
        let (_, after_ehlo) = out.split_once("250 STARTTLS\r\n").unwrap();
        assert_eq!(
            after_ehlo,
            "250 2.1.0 Sender OK\r\n\
             250 2.1.5 Recipient OK\r\n\
             250 2.1.5 Recipient OK\r\n\
             354 End data with <CR><LF>.<CR><LF>\r\n\
             250 2.0.0 Ok: queued as 42\r\n\
             221 2.0.0 Bye\r\n"
        );
        assert!(h.session.is_closed());
        let events = h.take_events();
        assert_eq!(
            events,
            vec![
                Event::MailFrom {
                    address: "alice@example.org".into(),
                    size: Some(30)
                },
                Event::Recipient {
                    address: "bob@example.com".into()
                },
                Event::Recipient {
                    address: "carol@example.com".into()
                },
                Event::Message {
                    envelope: Envelope {
                        helo: "client.example.org".into(),
                        esmtp: true,
                        mail_from: "alice@example.org".into(),
                        rcpt_to: vec!["bob@example.com".into(), "carol@example.com".into()],
                        body_8bit: true,
                        smtputf8: false,
                        authenticated: None,
                        tls: false,
                    },
                    data: b"Subject: hi\r\n\r\n.dotted\r\n".to_vec(),
                },
            ]
        );
    }

    #[test]
    fn outstanding_event_blocks_pipelined_commands() {
        let mut s = ServerSession::new(config(), peer());
        let _ = s.poll_output();
        s.handle_input(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nNOOP\r\n");
        let out = s.poll_output().unwrap();
        assert!(
            out.ends_with(b"250 STARTTLS\r\n"),
            "only the EHLO reply so far"
        );
        assert_eq!(
            s.poll_event(),
            Some(Event::MailFrom {
                address: "a@b.example".into(),
                size: None
            })
        );
        assert!(s.poll_event().is_none());
        assert!(!s.wants_input());
        // More input while blocked is buffered, not processed.
        s.handle_input(b"NOOP\r\n");
        assert!(s.poll_output().is_none());
        // Answering an event that is not the outstanding one is impossible; a second answer
        // is ignored.
        s.answer(Answer::Accept);
        assert_eq!(s.poll_output().unwrap(), b"250 2.1.0 Sender OK\r\n");
        assert_eq!(
            s.poll_event(),
            Some(Event::Recipient {
                address: "c@d.example".into()
            })
        );
        s.answer(Answer::Reject(Reply::new(550, (5, 1, 1), "No such user")));
        s.answer(Answer::Accept);
        assert_eq!(
            s.poll_output().unwrap(),
            b"550 5.1.1 No such user\r\n250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n"
        );
        assert!(s.wants_input());
    }

    #[test]
    fn null_sender_is_valid() {
        let mut h = greeted(config());
        assert_eq!(h.send("MAIL FROM:<>\r\n"), "250 2.1.0 Sender OK\r\n");
        assert_eq!(
            h.take_events(),
            vec![Event::MailFrom {
                address: String::new(),
                size: None
            }]
        );
    }

    #[test]
    fn mail_order_errors() {
        let mut h = Harness::new(config());
        h.take();
        assert_eq!(
            h.send("MAIL FROM:<a@b.example>\r\n"),
            "503 5.5.1 Send HELO/EHLO first\r\n"
        );
        assert_eq!(
            h.send("RCPT TO:<a@b.example>\r\n"),
            "503 5.5.1 Need MAIL command\r\n"
        );
        assert_eq!(h.send("DATA\r\n"), "503 5.5.1 Need MAIL command\r\n");
        h.send("EHLO c\r\n");
        assert_eq!(
            h.send("MAIL FROM:<a@b.example>\r\n"),
            "250 2.1.0 Sender OK\r\n"
        );
        assert_eq!(
            h.send("MAIL FROM:<a@b.example>\r\n"),
            "503 5.5.1 Nested MAIL command\r\n"
        );
        assert_eq!(h.send("DATA\r\n"), "554 5.5.1 No valid recipients\r\n");
        assert_eq!(h.send("RSET\r\n"), "250 2.0.0 Ok\r\n");
        assert_eq!(
            h.send("MAIL FROM:<a@b.example>\r\n"),
            "250 2.1.0 Sender OK\r\n"
        );
    }

    #[test]
    fn mail_syntax_and_parameter_errors() {
        let mut h = greeted(config());
        assert_eq!(
            h.send("MAIL FROM:a@b.example\r\n"),
            "501 5.5.4 Syntax: MAIL FROM:<reverse-path> [parameters]\r\n"
        );
        assert_eq!(
            h.send("MAIL FROM:<not an address>\r\n"),
            "501 5.1.7 Bad sender address syntax\r\n"
        );
        assert_eq!(
            h.send("MAIL FROM:<a@b.example> FOO=BAR\r\n"),
            "555 5.5.4 Unsupported parameter FOO=BAR\r\n"
        );
        assert_eq!(
            h.send("MAIL FROM:<a@b.example> RET=FULL\r\n"),
            "555 5.5.4 Unsupported MAIL parameter\r\n"
        );
        assert_eq!(
            h.send("MAIL FROM:<a@b.example> BODY=BINARYMIME\r\n"),
            "555 5.5.4 Unsupported MAIL parameter\r\n"
        );
        assert_eq!(
            h.send("MAIL FROM:<postmaster>\r\n"),
            "501 5.1.7 Bad sender address syntax\r\n"
        );
        assert!(h.take_events().is_empty());
    }

    #[test]
    fn mail_size_parameter_over_limit_is_552() {
        let mut h = greeted(config());
        assert_eq!(
            h.send("MAIL FROM:<a@b.example> SIZE=10001\r\n"),
            "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
        );
        assert!(h.take_events().is_empty());
        assert_eq!(
            h.send("MAIL FROM:<a@b.example> SIZE=10000\r\n"),
            "250 2.1.0 Sender OK\r\n"
        );
        assert_eq!(
            h.take_events(),
            vec![Event::MailFrom {
                address: "a@b.example".into(),
                size: Some(10000)
            }]
        );
    }

    #[test]
    fn smtputf8_is_required_for_non_ascii_addresses() {
        let mut h = greeted(config());
        assert_eq!(
            h.send("MAIL FROM:<j\u{f6}rg@example.de>\r\n"),
            "553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n"
        );
        assert_eq!(
            h.send("MAIL FROM:<j\u{f6}rg@example.de> SMTPUTF8\r\n"),
            "250 2.1.0 Sender OK\r\n"
        );
        assert_eq!(
            h.send("RCPT TO:<\u{e9}l\u{e8}ve@example.fr>\r\n"),
            "250 2.1.5 Recipient OK\r\n"
        );
        h.send("DATA\r\nhi\r\n.\r\n");
        let events = h.take_events();
        let Some(Event::Message { envelope, .. }) = events.last() else {
            panic!("no message: {events:?}");
        };
        assert!(envelope.smtputf8);
        assert_eq!(
            envelope.rcpt_to,
            vec!["\u{e9}l\u{e8}ve@example.fr".to_owned()]
        );
    }

    #[test]
    fn mail_rejected_by_app_starts_no_transaction() {
        let mut h = Harness::with(
            config(),
            Box::new(|e| match e {
                Event::MailFrom { .. } => Answer::Reject(Reply::new(550, (5, 7, 1), "Go away")),
                _ => Answer::Accept,
            }),
        );
        h.send("EHLO c\r\n");
        h.take();
        assert_eq!(
            h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"),
            "550 5.7.1 Go away\r\n503 5.5.1 Need MAIL command\r\n"
        );
    }

    #[test]
    fn answer_replies_that_do_not_fit_are_replaced() {
        let mut h = Harness::with(
            config(),
            Box::new(|e| match e {
                Event::MailFrom { .. } => Answer::Reject(Reply::new(250, (2, 0, 0), "huh")),
                Event::Recipient { .. } => Answer::AcceptWith(Reply::new(550, (5, 0, 0), "huh")),
                _ => Answer::Auth(false),
            }),
        );
        h.send("EHLO c\r\n");
        h.take();
        assert_eq!(
            h.send("MAIL FROM:<a@b.example>\r\n"),
            "550 5.7.1 Sender rejected\r\n"
        );
        h.responder = Box::new(|e| match e {
            Event::Recipient { .. } => Answer::AcceptWith(Reply::new(550, (5, 0, 0), "huh")),
            Event::Message { .. } => Answer::Auth(false),
            _ => Answer::Auth(true),
        });
        assert_eq!(
            h.send("MAIL FROM:<a@b.example>\r\n"),
            "250 2.1.0 Sender OK\r\n"
        );
        assert_eq!(
            h.send("RCPT TO:<c@d.example>\r\n"),
            "250 2.1.5 Recipient OK\r\n"
        );
        h.send("DATA\r\n");
        assert_eq!(h.send("x\r\n.\r\n"), "550 5.7.1 Message rejected\r\n");
    }

    #[test]
    fn rejected_recipients_stay_out_of_the_envelope() {
        let mut h = Harness::with(
            config(),
            Box::new(|e| match e {
                Event::Recipient { address } if address.starts_with("nobody") => {
                    Answer::Reject(Reply::new(550, (5, 1, 1), "No such user"))
                }
                _ => Answer::Accept,
            }),
        );
        h.send("EHLO c\r\nMAIL FROM:<a@b.example>\r\n");
        h.take();
        assert_eq!(
            h.send("RCPT TO:<nobody@d.example>\r\n"),
            "550 5.1.1 No such user\r\n"
        );
        assert_eq!(h.send("DATA\r\n"), "554 5.5.1 No valid recipients\r\n");
        h.send("RCPT TO:<somebody@d.example>\r\nDATA\r\nx\r\n.\r\n");
        let events = h.take_events();
        let Some(Event::Message { envelope, .. }) = events.last() else {
            panic!("no message");
        };
        assert_eq!(envelope.rcpt_to, vec!["somebody@d.example".to_owned()]);
    }

    #[test]
    fn rcpt_errors_and_postmaster() {
        let mut h = greeted(config());
        h.send("MAIL FROM:<a@b.example>\r\n");
        h.take_events();
        assert_eq!(
            h.send("RCPT TO:<>\r\n"),
            "501 5.1.3 Bad recipient address syntax\r\n"
        );
        assert_eq!(
            h.send("RCPT TO:<c@d.example> NOTIFY=NEVER\r\n"),
            "555 5.5.4 Unsupported RCPT parameter\r\n"
        );
        assert_eq!(
            h.send("RCPT TO:<Postmaster>\r\n"),
            "250 2.1.5 Recipient OK\r\n"
        );
        assert_eq!(
            h.take_events(),
            vec![Event::Recipient {
                address: "postmaster".into()
            }]
        );
    }

    #[test]
    fn too_many_recipients_is_452() {
        let mut h = greeted(SessionConfig {
            max_recipients: 2,
            ..config()
        });
        let out = h.send(
            "MAIL FROM:<a@b.example>\r\n\
             RCPT TO:<r1@d.example>\r\n\
             RCPT TO:<r2@d.example>\r\n\
             RCPT TO:<r3@d.example>\r\n",
        );
        assert_eq!(
            out,
            "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n250 2.1.5 Recipient OK\r\n\
             452 4.5.3 Too many recipients\r\n"
        );
        assert_eq!(h.take_events().len(), 3, "no event for the third recipient");
    }

    #[test]
    fn rset_noop_quit() {
        let mut h = greeted(config());
        assert_eq!(h.send("NOOP\r\n"), "250 2.0.0 Ok\r\n");
        h.send("MAIL FROM:<a@b.example>\r\n");
        assert_eq!(h.send("RSET\r\n"), "250 2.0.0 Ok\r\n");
        assert_eq!(
            h.send("RCPT TO:<c@d.example>\r\n"),
            "503 5.5.1 Need MAIL command\r\n"
        );
        assert_eq!(h.send("QUIT\r\nNOOP\r\n"), "221 2.0.0 Bye\r\n");
        assert!(h.session.is_closed());
        assert!(!h.session.wants_input());
        assert_eq!(h.send("NOOP\r\n"), "");
        h.session.handle_timeout();
        assert_eq!(h.take(), "");
    }

    #[test]
    fn help_vrfy_expn_and_unknown_commands() {
        let mut h = greeted(config());
        assert!(h.send("HELP\r\n").starts_with("214 2.0.0 "));
        assert_eq!(
            h.send("VRFY bob\r\n"),
            "502 5.5.1 VRFY command is disabled\r\n"
        );
        assert_eq!(
            h.send("EXPN staff\r\n"),
            "502 5.5.1 EXPN command is disabled\r\n"
        );
        assert_eq!(h.send("FOO bar\r\n"), "500 5.5.2 Command unrecognized\r\n");
        assert_eq!(h.send("\r\n"), "500 5.5.2 Command unrecognized\r\n");
        assert_eq!(
            h.send("ETRN example.com\r\n"),
            "502 5.5.1 Command not implemented\r\n"
        );

        let mut h = greeted(SessionConfig {
            vrfy_enabled: true,
            ..config()
        });
        assert_eq!(
            h.send("VRFY bob\r\n"),
            "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"
        );
    }

    // ------------------------------------------------------------ DATA

    #[test]
    fn data_unstuffs_dots_and_accepts_an_empty_message() {
        let mut h = greeted(config());
        h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
        assert_eq!(
            h.send("DATA\r\n"),
            "354 End data with <CR><LF>.<CR><LF>\r\n"
        );
        assert!(h.session.expects_data());
        assert_eq!(h.send(".\r\n"), "250 2.0.0 Message accepted\r\n");
        assert!(!h.session.expects_data());
        assert_eq!(h.messages(), vec![&b""[..]]);
        h.take_events();

        h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n");
        h.send("..\r\n...x\r\n.y\r\na.b\r\n\r\n.\r\n");
        assert_eq!(h.messages(), vec![&b".\r\n..x\r\ny\r\na.b\r\n\r\n"[..]]);
    }

    #[test]
    fn data_end_split_across_writes() {
        let mut h = greeted(config());
        h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n");
        h.take();
        for piece in ["hel", "lo\r", "\n", ".", "\r", "\n"] {
            h.feed(piece.as_bytes());
        }
        assert_eq!(h.take(), "250 2.0.0 Message accepted\r\n");
        assert_eq!(h.messages(), vec![&b"hello\r\n"[..]]);
    }

    #[test]
    fn transaction_is_reset_after_the_message_but_ehlo_and_auth_are_kept() {
        let mut h = tls_submission();
        h.send(&format!("AUTH PLAIN {}\r\n", b64("\0u\0p")));
        h.send("MAIL FROM:<u@example.org>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nx\r\n.\r\n");
        h.take();
        assert_eq!(
            h.send("RCPT TO:<c@d.example>\r\n"),
            "503 5.5.1 Need MAIL command\r\n"
        );
        assert_eq!(
            h.send("MAIL FROM:<u@example.org>\r\n"),
            "250 2.1.0 Sender OK\r\n"
        );
        let events = h.take_events();
        let Some(Event::Message { envelope, .. }) =
            events.iter().find(|e| matches!(e, Event::Message { .. }))
        else {
            panic!("no message");
        };
        assert_eq!(envelope.authenticated.as_deref(), Some("u"));
        assert!(envelope.tls);
    }

    #[test]
    fn message_over_size_limit_is_consumed_then_552() {
        let mut h = greeted(SessionConfig {
            max_message_size: 600,
            ..config()
        });
        h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n");
        h.take();
        h.take_events();
        let line = format!("{}\r\n", "x".repeat(98));
        for _ in 0..20 {
            assert_eq!(h.send(&line), "");
        }
        assert!(
            h.session.tx.body.is_empty(),
            "nothing kept once over the limit"
        );
        assert_eq!(
            h.send("MAIL FROM:<smuggled@x.example>\r\n.\r\nNOOP\r\n"),
            "552 5.3.4 Message size exceeds fixed maximum message size\r\n250 2.0.0 Ok\r\n"
        );
        assert!(h.take_events().is_empty());
        assert_eq!(
            h.send("RCPT TO:<c@d.example>\r\n"),
            "503 5.5.1 Need MAIL command\r\n"
        );
    }

    #[test]
    fn message_exactly_at_size_limit_is_accepted() {
        let mut h = greeted(SessionConfig {
            max_message_size: 600,
            ..config()
        });
        h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n");
        h.take();
        let body = format!("{}\r\n", "y".repeat(598));
        assert_eq!(
            h.send(&format!("{body}.\r\n")),
            "250 2.0.0 Message accepted\r\n"
        );
        assert_eq!(h.messages(), vec![body.as_bytes()]);
    }

    const SMUGGLE: &str =
        "MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@d.example>\r\nDATA\r\nforged\r\n";

    #[test]
    fn smuggling_variants_never_end_data_early() {
        for fake_end in [
            "\n.\n",
            "\r\n.\n",
            "\n.\r\n",
            "\r.\r\n",
            "\r\n.\r",
            "\r\n.\rX\r\n",
        ] {
            let mut h = greeted(config());
            h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n");
            h.take_events();
            h.take();
            let out = h.send(&format!("Subject: x\r\n\r\nbody{fake_end}{SMUGGLE}"));
            assert_eq!(out, "", "data ended early on {fake_end:?}");
            assert!(h.session.expects_data());
            let out = h.send("\r\n.\r\nNOOP\r\n");
            assert_eq!(
                out,
                "550 5.6.11 Message rejected: bare CR or LF in message data; use CRLF line \
                 endings\r\n250 2.0.0 Ok\r\n",
                "for {fake_end:?}"
            );
            assert!(h.take_events().is_empty(), "for {fake_end:?}");
        }
    }

    #[test]
    fn bare_cr_or_lf_anywhere_rejects_the_message() {
        for body in ["a\rb\r\n", "a\nb\r\n", "\n", "\r\r\n", ".\r.\r\n", "x\r"] {
            let mut h = greeted(config());
            h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n");
            h.take();
            let out = h.send(&format!("{body}\r\n.\r\n"));
            assert!(out.starts_with("550 5.6.11 "), "{body:?}: {out}");
            assert!(h.messages().is_empty());
        }
    }

    #[test]
    fn data_needs_mail_and_recipients() {
        let mut h = greeted(config());
        assert_eq!(h.send("DATA\r\n"), "503 5.5.1 Need MAIL command\r\n");
        h.send("MAIL FROM:<a@b.example>\r\n");
        assert_eq!(h.send("DATA\r\n"), "554 5.5.1 No valid recipients\r\n");
        assert!(!h.session.expects_data());
    }

    // ------------------------------------------------------------ BDAT

    #[test]
    fn bdat_chunks_join_and_allow_bare_lf() {
        let mut h = greeted(config());
        h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
        h.take();
        h.take_events();
        assert_eq!(h.send("BDAT 6\r\nhel"), "");
        assert!(h.session.expects_data());
        assert_eq!(h.send("lo\n"), "250 2.0.0 6 octets received\r\n");
        assert!(!h.session.expects_data());
        assert_eq!(
            h.send("BDAT 9 LAST\r\n.\r\nQUIT\r\nNOOP\r\n"),
            "250 2.0.0 Message accepted\r\n250 2.0.0 Ok\r\n"
        );
        assert_eq!(h.messages(), vec![&b"hello\n.\r\nQUIT\r\n"[..]]);
        assert!(!h.session.is_closed());
    }

    #[test]
    fn bdat_zero_last_completes_the_message() {
        let mut h = greeted(config());
        h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
        h.take();
        assert_eq!(
            h.send("BDAT 3\r\nabcBDAT 0 LAST\r\n"),
            "250 2.0.0 3 octets received\r\n250 2.0.0 Message accepted\r\n"
        );
        assert_eq!(h.messages(), vec![&b"abc"[..]]);
        h.take_events();
        h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
        assert_eq!(h.send("BDAT 0 LAST\r\n"), "250 2.0.0 Message accepted\r\n");
        assert_eq!(h.messages(), vec![&b""[..]]);
    }

    #[test]
    fn data_after_bdat_is_503() {
        let mut h = greeted(config());
        h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 2\r\nab");
        h.take();
        assert_eq!(
            h.send("DATA\r\n"),
            "503 5.5.1 DATA not allowed after BDAT\r\n"
        );
        assert_eq!(
            h.send("RCPT TO:<e@d.example>\r\n"),
            "503 5.5.1 RCPT not allowed after BDAT\r\n"
        );
        assert_eq!(h.send("BDAT 1 LAST\r\nc"), "250 2.0.0 Message accepted\r\n");
        assert_eq!(h.messages(), vec![&b"abc"[..]]);
    }

    #[test]
    fn bdat_without_recipients_consumes_the_chunk() {
        let mut h = greeted(config());
        assert_eq!(
            h.send("BDAT 12\r\nQUIT\r\nQUIT\r\n"),
            "503 5.5.1 Need MAIL command\r\n"
        );
        assert!(
            !h.session.is_closed(),
            "chunk bytes were taken for commands"
        );
        h.send("MAIL FROM:<a@b.example>\r\n");
        assert_eq!(
            h.send("BDAT 6 LAST\r\nRSET\r\n"),
            "554 5.5.1 No valid recipients\r\n"
        );
        assert!(
            h.take_events()
                .iter()
                .all(|e| !matches!(e, Event::Message { .. }))
        );
        // The failed LAST chunk ended the transaction.
        assert_eq!(
            h.send("MAIL FROM:<a@b.example>\r\n"),
            "250 2.1.0 Sender OK\r\n"
        );
    }

    #[test]
    fn bdat_over_size_is_consumed_and_552_at_last() {
        let mut h = greeted(SessionConfig {
            max_message_size: 600,
            ..config()
        });
        h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
        h.take();
        let chunk = "z".repeat(500);
        assert_eq!(
            h.send(&format!("BDAT 500\r\n{chunk}")),
            "250 2.0.0 500 octets received\r\n"
        );
        assert_eq!(
            h.send(&format!("BDAT 500\r\n{chunk}")),
            "250 2.0.0 500 octets received\r\n"
        );
        assert!(h.session.tx.body.is_empty());
        assert_eq!(
            h.send("BDAT 4 LAST\r\nQUITNOOP\r\n"),
            "552 5.3.4 Message size exceeds fixed maximum message size\r\n250 2.0.0 Ok\r\n"
        );
        assert!(h.messages().is_empty());
    }

    #[test]
    fn bdat_syntax_error() {
        let mut h = greeted(config());
        assert_eq!(
            h.send("BDAT x\r\n"),
            "501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n"
        );
    }

    // ------------------------------------------------------------ STARTTLS

    #[test]
    fn starttls_discards_pipelined_plaintext() {
        let mut s = ServerSession::new(config(), peer());
        let _ = s.poll_output();
        s.handle_input(
            b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<v@d.example>\r\n",
        );
        let out = s.poll_output().unwrap();
        assert!(out.ends_with(b"250 STARTTLS\r\n220 2.0.0 Ready to start TLS\r\n"));
        assert_eq!(s.poll_event(), Some(Event::StartTls));
        assert!(!s.wants_input());
        // Plaintext that arrives before the handshake is over is dropped too.
        s.handle_input(b"MAIL FROM:<evil@x.example>\r\n");
        s.answer(Answer::Accept); // not a way to finish STARTTLS
        assert!(!s.is_tls());
        s.tls_started();
        assert!(s.is_tls());
        assert!(s.poll_output().is_none(), "no second greeting");
        assert!(s.poll_event().is_none());
        // EHLO is forgotten.
        s.handle_input(b"MAIL FROM:<a@b.example>\r\n");
        assert_eq!(
            s.poll_output().unwrap(),
            b"503 5.5.1 Send HELO/EHLO first\r\n"
        );
        s.handle_input(b"EHLO c\r\n");
        let ehlo = s.poll_output().unwrap();
        assert!(!String::from_utf8_lossy(&ehlo).contains("STARTTLS"));
        assert!(s.poll_event().is_none());
    }

    #[test]
    fn starttls_refusals() {
        let mut h = greeted(SessionConfig {
            tls_available: false,
            ..config()
        });
        assert_eq!(
            h.send("STARTTLS\r\nNOOP\r\n"),
            "454 4.7.0 TLS not available\r\n250 2.0.0 Ok\r\n"
        );
        let mut h = greeted(config());
        h.send("STARTTLS\r\n");
        assert!(h.session.is_tls());
        assert_eq!(h.send("STARTTLS\r\n"), "503 5.5.1 Already using TLS\r\n");
    }

    #[test]
    fn implicit_tls_before_any_input() {
        let mut s = ServerSession::new(submission(), peer());
        s.tls_started();
        assert!(s.is_tls());
        assert_eq!(
            s.poll_output().unwrap(),
            b"220 mx.example.com ESMTP ready\r\n"
        );
        s.handle_input(b"EHLO c\r\n");
        let out = String::from_utf8(s.poll_output().unwrap()).unwrap();
        assert!(out.ends_with("250 AUTH PLAIN LOGIN\r\n"));
        // Later calls without STARTTLS are ignored.
        let mut s = ServerSession::new(config(), peer());
        s.handle_input(b"NOOP\r\n");
        s.tls_started();
        assert!(!s.is_tls());
    }

    // ------------------------------------------------------------ AUTH

    #[test]
    fn auth_plain_with_initial_response() {
        let mut h = tls_submission();
        assert_eq!(
            h.send("MAIL FROM:<u@example.org>\r\n"),
            "530 5.7.0 Authentication required\r\n"
        );
        assert_eq!(
            h.send(&format!(
                "AUTH PLAIN {}\r\n",
                b64("\0user@example.org\0secret")
            )),
            "235 2.7.0 Authentication successful\r\n"
        );
        assert_eq!(
            h.take_events(),
            vec![Event::Authenticate {
                mechanism: AuthMechanism::Plain,
                authzid: None,
                username: "user@example.org".into(),
                password: "secret".into(),
            }]
        );
        assert_eq!(h.session.authenticated_user(), Some("user@example.org"));
        assert_eq!(
            h.send(&format!("AUTH PLAIN {}\r\n", b64("\0a\0b"))),
            "503 5.5.1 Already authenticated\r\n"
        );
        assert_eq!(
            h.send("MAIL FROM:<u@example.org>\r\n"),
            "250 2.1.0 Sender OK\r\n"
        );
    }

    #[test]
    fn auth_plain_with_continuation_and_authzid() {
        let mut h = tls_submission();
        assert_eq!(h.send("AUTH PLAIN\r\n"), "334 \r\n");
        assert_eq!(
            h.send(&format!("{}\r\n", b64("admin\0user\0pw"))),
            "235 2.7.0 Authentication successful\r\n"
        );
        assert_eq!(
            h.take_events(),
            vec![Event::Authenticate {
                mechanism: AuthMechanism::Plain,
                authzid: Some("admin".into()),
                username: "user".into(),
                password: "pw".into(),
            }]
        );
    }

    #[test]
    fn auth_login() {
        let mut h = tls_submission();
        assert_eq!(h.send("AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
        assert_eq!(
            h.send(&format!("{}\r\n", b64("user"))),
            "334 UGFzc3dvcmQ6\r\n"
        );
        assert_eq!(
            h.send(&format!("{}\r\n", b64("pass word"))),
            "235 2.7.0 Authentication successful\r\n"
        );
        assert_eq!(
            h.take_events(),
            vec![Event::Authenticate {
                mechanism: AuthMechanism::Login,
                authzid: None,
                username: "user".into(),
                password: "pass word".into(),
            }]
        );
        // With the user name as initial response.
        let mut h = tls_submission();
        assert_eq!(
            h.send(&format!("AUTH LOGIN {}\r\n", b64("user"))),
            "334 UGFzc3dvcmQ6\r\n"
        );
        assert_eq!(
            h.send(&format!("{}\r\n", b64("pw"))),
            "235 2.7.0 Authentication successful\r\n"
        );
    }

    #[test]
    fn auth_failure() {
        let mut h = tls_submission();
        h.responder = Box::new(|_| Answer::Auth(false));
        assert_eq!(
            h.send(&format!("AUTH PLAIN {}\r\n", b64("\0user\0wrong"))),
            "535 5.7.8 Authentication credentials invalid\r\n"
        );
        assert_eq!(h.session.authenticated_user(), None);
        assert_eq!(
            h.send("MAIL FROM:<u@example.org>\r\n"),
            "530 5.7.0 Authentication required\r\n"
        );
        // A temporary failure chosen by the application.
        h.responder = Box::new(|_| {
            Answer::Reject(Reply::new(
                454,
                (4, 7, 0),
                "Temporary authentication failure",
            ))
        });
        assert_eq!(
            h.send(&format!("AUTH PLAIN {}\r\n", b64("\0user\0pw"))),
            "454 4.7.0 Temporary authentication failure\r\n"
        );
    }

    #[test]
    fn auth_cancel_and_bad_responses() {
        let mut h = tls_submission();
        assert_eq!(h.send("AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
        assert_eq!(h.send("*\r\n"), "501 5.0.0 Authentication cancelled\r\n");
        assert_eq!(
            h.send("AUTH PLAIN\r\n*\r\n"),
            "334 \r\n501 5.0.0 Authentication cancelled\r\n"
        );
        assert_eq!(
            h.send("AUTH PLAIN !!!!\r\n"),
            "501 5.5.2 Cannot decode response\r\n"
        );
        assert_eq!(
            h.send(&format!("AUTH PLAIN {}\r\n", b64("no-nul-here"))),
            "501 5.5.2 Cannot decode response\r\n"
        );
        assert_eq!(
            h.send("AUTH CRAM-MD5\r\n"),
            "504 5.5.4 Unrecognized authentication type\r\n"
        );
        assert_eq!(h.send("NOOP\r\n"), "250 2.0.0 Ok\r\n");
        assert!(h.take_events().is_empty());
    }

    #[test]
    fn auth_is_refused_on_port_25_and_without_tls() {
        let mut h = greeted(config());
        assert_eq!(
            h.send(&format!("AUTH PLAIN {}\r\n", b64("\0u\0p"))),
            "503 5.5.1 AUTH not available\r\n"
        );
        let mut h = greeted(submission());
        assert_eq!(
            h.send(&format!("AUTH PLAIN {}\r\n", b64("\0u\0p"))),
            "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
        );
        let mut h = greeted(SessionConfig {
            allow_insecure_auth: true,
            ..submission()
        });
        assert_eq!(
            h.send(&format!("AUTH PLAIN {}\r\n", b64("\0u\0p"))),
            "235 2.7.0 Authentication successful\r\n"
        );
        assert!(
            h.take_events()
                .iter()
                .all(|e| matches!(e, Event::Authenticate { .. }))
        );
    }

    #[test]
    fn auth_is_forgotten_after_starttls() {
        let mut h = Harness::new(SessionConfig {
            allow_insecure_auth: true,
            ..submission()
        });
        h.send(&format!("EHLO c\r\nAUTH PLAIN {}\r\n", b64("\0u\0p")));
        assert_eq!(h.session.authenticated_user(), Some("u"));
        h.send("STARTTLS\r\n");
        assert_eq!(h.session.authenticated_user(), None);
    }

    // ------------------------------------------------------------ command lines

    #[test]
    fn bare_lf_or_cr_in_a_command_is_not_split() {
        let mut h = greeted(config());
        assert_eq!(
            h.send("NOOP\nQUIT\r\n"),
            "500 5.5.2 Bare CR or LF not allowed in commands\r\n"
        );
        assert_eq!(
            h.send("NOOP\rQUIT\r\n"),
            "500 5.5.2 Bare CR or LF not allowed in commands\r\n"
        );
        assert_eq!(
            h.send("QUIT\r\r\n"),
            "500 5.5.2 Bare CR or LF not allowed in commands\r\n"
        );
        assert!(!h.session.is_closed());
        assert_eq!(h.send("QUIT\r\n"), "221 2.0.0 Bye\r\n");
    }

    #[test]
    fn long_lines_are_refused_without_buffering() {
        let mut h = greeted(config());
        let long = format!("NOOP {}", "a".repeat(5000));
        assert_eq!(
            h.send(&format!("{long}\r\nNOOP\r\n")),
            "500 5.5.2 Line too long\r\n250 2.0.0 Ok\r\n"
        );
        // In small pieces, with the CRLF split across writes.
        for piece in long.as_bytes().chunks(100) {
            h.feed(piece);
            assert!(
                h.session.input.len() <= 2048,
                "buffered {}",
                h.session.input.len()
            );
        }
        h.feed(b"\r");
        assert_eq!(h.take(), "");
        h.feed(b"\nNOOP\r\n");
        assert_eq!(h.take(), "500 5.5.2 Line too long\r\n250 2.0.0 Ok\r\n");
    }

    #[test]
    fn line_length_limit_includes_crlf() {
        let mut h = greeted(SessionConfig {
            max_line_length: 600,
            ..config()
        });
        let ok = format!("NOOP {}\r\n", "b".repeat(600 - 7));
        assert_eq!(ok.len(), 600);
        assert_eq!(h.send(&ok), "250 2.0.0 Ok\r\n");
        let long = format!("NOOP {}\r\n", "b".repeat(600 - 6));
        assert_eq!(h.send(&long), "500 5.5.2 Line too long\r\n");
        // A line of exactly 599 octets plus a CR at the end of a write is still fine.
        h.feed(&ok.as_bytes()[..599]);
        assert_eq!(h.send("\n"), "250 2.0.0 Ok\r\n");
    }

    #[test]
    fn timeout_closes_with_421() {
        let mut h = greeted(config());
        h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\npartial");
        h.take();
        h.session.handle_timeout();
        h.pump();
        assert_eq!(
            h.take(),
            "421 4.4.2 mx.example.com Error: timeout exceeded\r\n"
        );
        assert!(h.session.is_closed());
        assert!(!h.session.expects_data());
        h.session.handle_timeout();
        h.pump();
        assert_eq!(h.take(), "");
    }

    #[test]
    fn too_many_errors_closes_with_421() {
        let mut h = greeted(SessionConfig {
            max_errors: 3,
            ..config()
        });
        let out = h.send("FOO\r\nBAR\r\nNOOP\r\nBAZ\r\nNOOP\r\n");
        assert_eq!(
            out,
            "500 5.5.2 Command unrecognized\r\n500 5.5.2 Command unrecognized\r\n\
             250 2.0.0 Ok\r\n500 5.5.2 Command unrecognized\r\n421 4.7.0 Too many errors\r\n"
        );
        assert!(h.session.is_closed());
        assert_eq!(h.send("NOOP\r\n"), "");
    }

    #[test]
    fn refused_recipients_count_as_errors_but_temporary_ones_do_not() {
        let config = SessionConfig {
            max_errors: 3,
            ..config()
        };
        let mut h = Harness::with(
            config.clone(),
            Box::new(|event| match event {
                Event::Recipient { address } if address.starts_with("temp") => {
                    Answer::Reject(Reply::new(451, (4, 3, 0), "later"))
                }
                Event::Recipient { .. } => Answer::Reject(Reply::new(550, (5, 1, 1), "unknown")),
                _ => Answer::Accept,
            }),
        );
        h.send("EHLO c\r\nMAIL FROM:<a@b.example>\r\n");
        h.take();
        for i in 0..5 {
            let out = h.send(&format!("RCPT TO:<temp{i}@d.example>\r\n"));
            assert_eq!(out, "451 4.3.0 later\r\n");
        }
        assert!(!h.session.is_closed());
        let out = h
            .send("RCPT TO:<u1@d.example>\r\nRCPT TO:<u2@d.example>\r\nRCPT TO:<u3@d.example>\r\n");
        assert_eq!(
            out,
            "550 5.1.1 unknown\r\n550 5.1.1 unknown\r\n550 5.1.1 unknown\r\n421 4.7.0 Too many errors\r\n"
        );
        assert!(h.session.is_closed());
    }

    #[test]
    fn junk_commands_count_as_errors_past_their_limit() {
        let mut h = greeted(SessionConfig {
            max_errors: 2,
            max_junk_commands: 3,
            ..config()
        });
        // An accepted message starts the junk count again.
        h.send("NOOP\r\nRSET\r\nHELP\r\n");
        h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nx\r\n.\r\n");
        h.take();
        let out = h.send("NOOP\r\nNOOP\r\nRSET\r\n");
        assert_eq!(out, "250 2.0.0 Ok\r\n".repeat(3));
        assert!(!h.session.is_closed());
        let out = h.send("NOOP\r\nNOOP\r\nNOOP\r\n");
        assert_eq!(
            out,
            "250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n421 4.7.0 Too many errors\r\n"
        );
        assert!(h.session.is_closed());
    }

    #[test]
    fn excess_recipients_are_junk() {
        let mut h = greeted(SessionConfig {
            max_errors: 1,
            max_junk_commands: 2,
            max_recipients: 1,
            ..config()
        });
        h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
        h.take();
        let out =
            h.send("RCPT TO:<e@d.example>\r\nRCPT TO:<f@d.example>\r\nRCPT TO:<g@d.example>\r\n");
        assert_eq!(
            out,
            "452 4.5.3 Too many recipients\r\n452 4.5.3 Too many recipients\r\n\
             452 4.5.3 Too many recipients\r\n421 4.7.0 Too many errors\r\n"
        );
    }

    #[test]
    fn numbers_too_large_for_the_parser_are_refused() {
        let mut h = greeted(config());
        h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
        h.take();
        let out = h.send("BDAT 999999999999999999999 LAST\r\nabcdeNOOP\r\n");
        assert_eq!(
            out,
            "501 5.5.4 BDAT chunk size too large\r\n500 5.5.2 Command unrecognized\r\n"
        );
        assert!(h.messages().is_empty());
        // Leading zeros are still a number that fits.
        let out = h.send("BDAT 0000000000000000000000005 LAST\r\nabcde");
        assert_eq!(out, "250 2.0.0 Message accepted\r\n");
        assert_eq!(h.messages(), vec![&b"abcde"[..]]);

        let out = h.send("MAIL FROM:<a@b.example> SIZE=999999999999999999995\r\n");
        assert_eq!(
            out,
            "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
        );
        let out = h.send("MAIL FROM:<a@b.example> SIZE=00000000000000000000000100\r\n");
        assert_eq!(out, "250 2.1.0 Sender OK\r\n");
    }

    #[test]
    fn partial_commands_and_transfers_are_visible_to_the_driver() {
        let mut h = greeted(config());
        assert!(!h.session.has_partial_command());
        let before = h.session.lines_read();
        h.send("NOO");
        assert!(h.session.has_partial_command());
        assert_eq!(h.session.lines_read(), before);
        h.send("P\r\n");
        assert!(!h.session.has_partial_command());
        assert_eq!(h.session.lines_read(), before + 1);
        h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
        assert!(!h.session.in_transfer());
        h.send("BDAT 2\r\nab");
        assert!(h.session.in_transfer(), "between chunks");
        h.send("BDAT 1 LAST\r\n");
        assert!(h.session.in_transfer());
        h.send("c");
        assert!(!h.session.in_transfer());
        h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nx");
        assert!(h.session.in_transfer());
        assert!(!h.session.has_partial_command());
        h.send("\r\n.\r\n");
        assert!(!h.session.in_transfer());
    }

    #[test]
    fn pipelined_input_beyond_the_cap_closes_after_the_buffered_part() {
        let mut s = ServerSession::new(
            SessionConfig {
                max_message_size: 1000,
                ..config()
            },
            peer(),
        );
        let _ = s.poll_output();
        s.handle_input(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nNOOP\r\n");
        let _ = s.poll_output();
        assert!(s.poll_event().is_some());
        let cap = s.pipeline_cap;
        s.handle_input(&vec![b'x'; cap + 10]);
        assert!(s.input.len() <= cap + 64);
        s.handle_input(b"NOOP\r\n");
        s.answer(Answer::Accept);
        let out = String::from_utf8(s.poll_output().unwrap()).unwrap();
        assert_eq!(
            out,
            "250 2.1.0 Sender OK\r\n250 2.0.0 Ok\r\n\
             421 4.7.0 mx.example.com Error: too much pipelined input\r\n"
        );
        assert!(s.is_closed());
    }

    // ------------------------------------------------------------ replies

    #[test]
    fn reply_rendering() {
        assert_eq!(
            Reply::new(550, (5, 1, 1), "No such user").to_string(),
            "550 5.1.1 No such user\r\n"
        );
        assert_eq!(
            Reply::new(250, (2, 0, 0), "first\nsecond\r\nthird").to_string(),
            "250-2.0.0 first\r\n250-2.0.0 second\r\n250 2.0.0 third\r\n"
        );
        assert_eq!(Reply::without_status(334, "").to_string(), "334 \r\n");
        assert_eq!(Reply::new(250, (2, 0, 0), "").to_string(), "250 2.0.0\r\n");
        assert_eq!(
            Reply::new(99, (5, 0, 0), "bad\u{7}\u{e9}").to_string(),
            "451 5.0.0 bad??\r\n"
        );
        let mut out = Vec::new();
        Reply::without_status(221, "Bye").write_to(&mut out);
        assert_eq!(out, Reply::without_status(221, "Bye").to_bytes());
    }

    #[test]
    fn event_debug_hides_the_password() {
        let event = Event::Authenticate {
            mechanism: AuthMechanism::Plain,
            authzid: None,
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{event:?}").contains("hunter2"));
    }

    // ------------------------------------------------------------ properties

    /// Runs a whole input through a fresh session in the given pieces and returns what came
    /// out: the output bytes and the events.
    fn run(config: SessionConfig, pieces: &[&[u8]]) -> (Vec<u8>, Vec<Event>) {
        let mut h = Harness::new(config);
        for piece in pieces {
            h.feed(piece);
        }
        (h.output, h.events)
    }

    fn auth_config() -> SessionConfig {
        SessionConfig {
            submission: true,
            allow_insecure_auth: true,
            max_message_size: 300,
            max_recipients: 3,
            max_errors: 50,
            ..config()
        }
    }

    /// Pieces of plausible SMTP traffic, to reach deep states more often than random bytes.
    fn smtp_piece() -> impl Strategy<Value = Vec<u8>> {
        let fixed = prop::sample::select(vec![
            "EHLO c\r\n",
            "HELO c\r\n",
            "MAIL FROM:<a@b.example>\r\n",
            "MAIL FROM:<> SIZE=100 BODY=8BITMIME\r\n",
            "MAIL FROM:<a@b.example> SIZE=99999\r\n",
            "RCPT TO:<c@d.example>\r\n",
            "RCPT TO:<postmaster>\r\n",
            "DATA\r\n",
            "BDAT 5\r\n",
            "BDAT 3 LAST\r\n",
            "BDAT 0 LAST\r\n",
            "RSET\r\n",
            "NOOP\r\n",
            "QUIT\r\n",
            "VRFY x\r\n",
            "STARTTLS\r\n",
            "AUTH PLAIN\r\n",
            "AUTH PLAIN AHUAcA==\r\n",
            "AUTH LOGIN\r\n",
            "dXNlcg==\r\n",
            "*\r\n",
            "\r\n.\r\n",
            ".\r\n",
            "..\r\n",
            "\r\n",
            "\n",
            "\r",
            ".",
            "hello world",
        ])
        .prop_map(|s| s.as_bytes().to_vec());
        prop_oneof![
            6 => fixed,
            1 => prop::collection::vec(any::<u8>(), 0..20),
            1 => prop::collection::vec(prop::sample::select(b"\r\n. aQ".to_vec()), 0..20),
        ]
    }

    fn smtp_stream() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(smtp_piece(), 0..40).prop_map(|pieces| pieces.concat())
    }

    fn split_at_points(data: &[u8], points: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = points.iter().map(|p| p % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut last = 0;
        for cut in cuts {
            pieces.push(data[last..cut].to_vec());
            last = cut;
        }
        pieces.push(data[last..].to_vec());
        pieces
    }

    fn has_bare_cr_or_lf(data: &[u8]) -> bool {
        data.iter().enumerate().any(|(i, &b)| {
            (b == b'\n' && (i == 0 || data[i - 1] != b'\r'))
                || (b == b'\r' && data.get(i + 1) != Some(&b'\n'))
        })
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics_and_output_is_well_formed(
            data in prop_oneof![smtp_stream(), prop::collection::vec(any::<u8>(), 0..400)],
            points in prop::collection::vec(any::<usize>(), 0..8),
            secure in any::<bool>(),
        ) {
            let cfg = if secure { auth_config() } else { config() };
            let pieces = split_at_points(&data, &points);
            let slices: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            let (out, _) = run(cfg, &slices);
            assert_well_formed(&out);
        }

        #[test]
        fn splitting_the_input_does_not_change_the_dialogue(
            data in smtp_stream(),
            points in prop::collection::vec(any::<usize>(), 1..10),
        ) {
            // No STARTTLS offered: it discards what follows it in the same write by design.
            let cfg = SessionConfig { tls_available: false, ..auth_config() };
            let whole = run(cfg.clone(), &[&data]);
            let pieces = split_at_points(&data, &points);
            let slices: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            let split = run(cfg.clone(), &slices);
            prop_assert_eq!(&whole, &split);
            let bytes: Vec<&[u8]> = data.chunks(1).collect();
            let byte_by_byte = run(cfg, &bytes);
            prop_assert_eq!(&whole, &byte_by_byte);
        }

        #[test]
        fn dot_stuffing_round_trips(
            lines in prop::collection::vec("\\.{0,3}[a-z. ]{0,12}", 0..20),
            points in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let body: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\r\n").into_bytes()).collect();
            let mut stream = b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n".to_vec();
            for line in &lines {
                if line.starts_with('.') {
                    stream.push(b'.');
                }
                stream.extend_from_slice(line.as_bytes());
                stream.extend_from_slice(b"\r\n");
            }
            stream.extend_from_slice(b".\r\nQUIT\r\n");
            let pieces = split_at_points(&stream, &points);
            let slices: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            let (out, events) = run(config(), &slices);
            let messages: Vec<&Vec<u8>> = events.iter().filter_map(|e| match e {
                Event::Message { data, .. } => Some(data),
                _ => None,
            }).collect();
            prop_assert_eq!(messages, vec![&body]);
            prop_assert!(out.ends_with(b"250 2.0.0 Message accepted\r\n221 2.0.0 Bye\r\n"));
        }

        #[test]
        fn data_with_bare_cr_or_lf_is_never_delivered(
            body in prop::collection::vec(prop::sample::select(b"\r\n.aQ".to_vec()), 0..60),
            points in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let mut stream = b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n".to_vec();
            stream.extend_from_slice(&body);
            stream.extend_from_slice(b"\r\n.\r\n");
            let pieces = split_at_points(&stream, &points);
            let slices: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            let (out, events) = run(config(), &slices);

            // The reference: the message is what lies between the DATA line's CRLF and the
            // first CRLF "." CRLF, the CRLF before the dot included.
            let mut virt = b"\r\n".to_vec();
            virt.extend_from_slice(&body);
            virt.extend_from_slice(b"\r\n.\r\n");
            let end = virt.windows(5).position(|w| w == b"\r\n.\r\n").expect("terminator");
            let region = &virt[2..end + 2];
            let messages: Vec<&Vec<u8>> = events.iter().filter_map(|e| match e {
                Event::Message { data, .. } => Some(data),
                _ => None,
            }).collect();
            for data in &messages {
                prop_assert!(!has_bare_cr_or_lf(data));
            }
            if has_bare_cr_or_lf(region) {
                prop_assert!(messages.is_empty());
                let text = String::from_utf8_lossy(&out);
                prop_assert!(text.contains("550 5.6.11 "));
            } else {
                let mut expected = Vec::new();
                for line in region.split_inclusive(|&b| b == b'\n') {
                    expected.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
                }
                prop_assert_eq!(messages, vec![&expected]);
            }
        }
    }
}
