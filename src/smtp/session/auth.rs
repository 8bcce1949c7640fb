//! The AUTH PLAIN and AUTH LOGIN exchanges (RFC 4954, RFC 4616).

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::{AuthMechanism, Event, Pending, Reply, ServerSession, State};

/// Base64 as clients send it in AUTH: standard alphabet, padding optional.
pub(super) const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl ServerSession {
    pub(super) fn cmd_auth(&mut self, mechanism: u64, initial: &str) {
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
    pub(super) fn handle_auth_response(&mut self, line: &[u8]) {
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
}

fn bad_auth_response() -> Reply {
    Reply::new(501, (5, 5, 2), "Cannot decode response")
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
