//! What the session asks of the application ([`Event`]) and what it answers ([`Answer`]).

use std::fmt;

use super::Reply;
// Named only by the doc links.
#[cfg(doc)]
use super::ServerSession;

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
