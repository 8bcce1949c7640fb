//! Command lines: reading them (length limit, bare CR/LF) and the commands other than DATA,
//! BDAT and AUTH (EHLO/HELO, MAIL, RCPT, RSET, NOOP, VRFY, HELP, QUIT, STARTTLS...).

use std::borrow::Cow;
use std::net::IpAddr;

use smtp_proto::{
    Error as ParseError, MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8, MailFrom, RcptTo,
    Request,
};

use super::{Event, Pending, Reply, ServerSession, State, Transaction};

/// Longest client-supplied text quoted back in a reply.
const MAX_ECHO: usize = 64;

/// The MAIL FROM flags this server supports (BODY=7BIT, BODY=8BITMIME, SMTPUTF8).
const SUPPORTED_MAIL_FLAGS: u64 = MAIL_BODY_7BIT | MAIL_BODY_8BITMIME | MAIL_SMTPUTF8;

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
    /// Reads the next command line and handles it.
    pub(super) fn step_line(&mut self) -> bool {
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
        if self.config.submission && self.auth_user.is_none() && !self.config.trusted_client {
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
        let address = crate::smtp::address::wire_form(&from.address).into_owned();
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
            crate::smtp::address::wire_form(&to.address).into_owned()
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
pub(super) fn find_crlf(buf: &[u8]) -> Option<usize> {
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
pub(super) fn number_overflows(word: &str) -> bool {
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
