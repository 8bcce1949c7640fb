//! A POP3 session (RFC 1939, with CAPA and response codes from RFC 2449, STLS from RFC 2595,
//! AUTH PLAIN from RFC 5034) as a state machine without I/O: a command line in, an
//! [`Action`] out. What needs the outside world (a password check, a message's bytes, the
//! deletions at QUIT, the TLS handshake) comes out as an action that the driver carries out
//! and answers.

use base64::Engine;

/// Bytes from the client cut into command lines, however the network split them.
#[derive(Debug, Default)]
pub struct Lines {
    pending: Vec<u8>,
}

/// A line longer than [`MAX_LINE`] arrived: the connection is to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTooLong;

impl Lines {
    /// Adds bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next complete line without its CRLF (or bare LF), if one has arrived.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, LineTooLong> {
        match self.pending.iter().position(|&b| b == b'\n') {
            Some(end) if end <= MAX_LINE + 1 => {
                let mut line: Vec<u8> = self.pending.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Ok(Some(line))
            }
            Some(_) => Err(LineTooLong),
            None if self.pending.len() > MAX_LINE + 1 => Err(LineTooLong),
            None => Ok(None),
        }
    }

    /// Forgets what has not been handled (after STLS: it came before the handshake).
    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

/// What a session needs to know about its connection.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The server's name, in the greeting.
    pub hostname: String,
    /// The connection is encrypted (POP3S, or after STLS).
    pub tls_active: bool,
    /// STLS can be offered.
    pub tls_available: bool,
    /// Passwords may be sent before TLS (`smtp.allow_insecure_auth`, shared with SMTP).
    pub insecure_auth: bool,
}

/// One message of the maildrop as the session sees it (its INBOX at sign-in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The mailbox entry (the API's message id).
    pub id: i64,
    /// Its size in octets as RETR sends it (before dot-stuffing).
    pub size: u64,
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes and read the next command.
    Send(String),
    /// Check the credentials, then call [`Session::signed_in`] with the maildrop (or
    /// [`Session::sign_in_failed`]) and send what it returns.
    Authenticate {
        /// The user name (an email address).
        user: String,
        /// The password.
        password: String,
    },
    /// Send the line, then run the TLS handshake and call [`Session::tls_started`].
    StartTls(String),
    /// Send message `id` as [`retrieved`] frames it (`top`: the header and that many body
    /// lines only).
    Retrieve {
        /// The mailbox entry.
        id: i64,
        /// TOP's line count.
        top: Option<usize>,
    },
    /// Delete these entries (the UPDATE state), then send [`Session::updated`]'s line and
    /// close.
    Update(Vec<i64>),
    /// Send the line and close the connection.
    Close(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Before sign-in; `user` is what USER gave.
    Authorization { user: Option<String> },
    /// `AUTH PLAIN` without an initial response: the next line is the response.
    AuthPlainContinuation,
    /// The credentials are being checked.
    Authenticating,
    /// Signed in.
    Transaction,
    /// QUIT was given.
    Done,
}

/// Bad commands in a row before sign-in that end the connection.
const MAX_BAD_COMMANDS: u32 = 3;

/// The longest command line (RFC 2449 allows 255 octets; AUTH PLAIN's response may be
/// longer, RFC 5034).
pub const MAX_LINE: usize = 4096;

/// One POP3 session.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    state: State,
    maildrop: Vec<Message>,
    deleted: Vec<bool>,
    bad_commands: u32,
}

fn ok(text: &str) -> String {
    format!("+OK {text}\r\n")
}

fn err(text: &str) -> String {
    format!("-ERR {text}\r\n")
}

impl Session {
    /// A new session; send [`greeting`](Self::greeting) first.
    pub fn new(config: SessionConfig) -> Self {
        Self {
            config,
            state: State::Authorization { user: None },
            maildrop: Vec::new(),
            deleted: Vec::new(),
            bad_commands: 0,
        }
    }

    /// The server's first line.
    pub fn greeting(&self) -> String {
        ok(&format!("{} MaiRust POP3 ready", self.config.hostname))
    }

    /// Whether passwords may be given now.
    fn may_authenticate(&self) -> bool {
        self.config.tls_active || self.config.insecure_auth
    }

    fn bad(&mut self, text: &str) -> Action {
        if !matches!(self.state, State::Transaction) {
            self.bad_commands += 1;
            if self.bad_commands >= MAX_BAD_COMMANDS {
                self.state = State::Done;
                return Action::Close(err("Too many bad commands; closing"));
            }
        }
        Action::Send(err(text))
    }

    /// Handles one command line (without its CRLF).
    pub fn command(&mut self, line: &[u8]) -> Action {
        let Ok(line) = std::str::from_utf8(line) else {
            return self.bad("Commands are ASCII");
        };
        if self.state == State::AuthPlainContinuation {
            self.state = State::Authorization { user: None };
            if line == "*" {
                return Action::Send(err("Authentication cancelled"));
            }
            return self.auth_plain(line);
        }
        let (verb, args) = match line.split_once(' ') {
            Some((verb, args)) => (verb, args),
            None => (line, ""),
        };
        let verb = verb.to_ascii_uppercase();
        match (&self.state, verb.as_str()) {
            (_, "CAPA") => Action::Send(self.capabilities()),
            (_, "NOOP") if self.state == State::Transaction => Action::Send(ok("")),
            (State::Transaction, "QUIT") => {
                self.state = State::Done;
                let doomed: Vec<i64> = self
                    .maildrop
                    .iter()
                    .zip(&self.deleted)
                    .filter(|(_, deleted)| **deleted)
                    .map(|(m, _)| m.id)
                    .collect();
                Action::Update(doomed)
            }
            (_, "QUIT") => {
                self.state = State::Done;
                Action::Close(ok(&format!("{} signing off", self.config.hostname)))
            }
            (State::Authorization { .. }, "STLS") => {
                if self.config.tls_active {
                    self.bad("Already using TLS")
                } else if !self.config.tls_available {
                    self.bad("TLS is not available")
                } else {
                    Action::StartTls(ok("Begin TLS negotiation"))
                }
            }
            (State::Authorization { .. }, "USER") => {
                if !self.may_authenticate() {
                    return self.bad("[AUTH] Use STLS before sending a password");
                }
                if args.is_empty() {
                    return self.bad("USER needs a name");
                }
                self.state = State::Authorization {
                    user: Some(args.to_string()),
                };
                Action::Send(ok("Send PASS"))
            }
            (State::Authorization { user }, "PASS") => match user.clone() {
                Some(user) if self.may_authenticate() => {
                    self.state = State::Authenticating;
                    Action::Authenticate {
                        user,
                        password: args.to_string(),
                    }
                }
                _ => self.bad("Send USER first"),
            },
            (State::Authorization { .. }, "AUTH") => {
                if args.is_empty() {
                    return Action::Send("+OK Mechanisms follow\r\nPLAIN\r\n.\r\n".into());
                }
                if !self.may_authenticate() {
                    return self.bad("[AUTH] Use STLS before sending a password");
                }
                let (mechanism, initial) = args.split_once(' ').unwrap_or((args, ""));
                if !mechanism.eq_ignore_ascii_case("PLAIN") {
                    return self.bad("Unsupported mechanism; use PLAIN");
                }
                if initial.is_empty() {
                    self.state = State::AuthPlainContinuation;
                    return Action::Send("+ \r\n".into());
                }
                self.auth_plain(initial)
            }
            (State::Transaction, verb) => self.transaction(verb, args),
            (_, "USER" | "PASS" | "AUTH" | "STLS") => self.bad("Not allowed now"),
            (State::Authorization { .. }, "STAT" | "LIST" | "UIDL" | "RETR" | "TOP" | "DELE")
            | (State::Authorization { .. }, "RSET" | "NOOP") => self.bad("Sign in first"),
            _ => self.bad("Unknown command"),
        }
    }

    /// AUTH PLAIN's response (RFC 4616): `authzid NUL authcid NUL password`, base64.
    fn auth_plain(&mut self, response: &str) -> Action {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(response.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        let Some(decoded) = decoded else {
            return self.bad("Invalid base64 in the PLAIN response");
        };
        let mut parts = decoded.split('\0');
        let (Some(authzid), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.bad("The PLAIN response is authzid NUL user NUL password");
        };
        // Acting for another identity is not supported.
        if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(user) {
            return Action::Send(err("[AUTH] Authentication failed"));
        }
        self.state = State::Authenticating;
        Action::Authenticate {
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    /// The credentials were right: the session now numbers `maildrop` from 1.
    pub fn signed_in(&mut self, maildrop: Vec<Message>) -> String {
        self.deleted = vec![false; maildrop.len()];
        self.maildrop = maildrop;
        self.state = State::Transaction;
        self.bad_commands = 0;
        let (count, size) = self.totals();
        ok(&format!("Signed in; {count} messages ({size} octets)"))
    }

    /// The credentials were wrong (`temporary`: the check could not be made now).
    pub fn sign_in_failed(&mut self, temporary: bool) -> Action {
        self.state = State::Authorization { user: None };
        if temporary {
            Action::Send(err(
                "[SYS/TEMP] Authentication temporarily unavailable; try again later",
            ))
        } else {
            self.bad("[AUTH] Authentication failed")
        }
    }

    /// The TLS handshake after STLS succeeded: everything before it is forgotten.
    pub fn tls_started(&mut self) {
        self.config.tls_active = true;
        self.state = State::Authorization { user: None };
        self.bad_commands = 0;
    }

    /// The line after the UPDATE state removed the deleted messages (`failed` of them could
    /// not be).
    pub fn updated(&self, failed: usize) -> String {
        if failed == 0 {
            ok(&format!("{} signing off", self.config.hostname))
        } else {
            err(&format!(
                "[SYS/TEMP] {failed} deleted messages could not be removed; they are still there"
            ))
        }
    }

    fn totals(&self) -> (usize, u64) {
        self.live()
            .fold((0, 0), |(count, size), (_, m)| (count + 1, size + m.size))
    }

    /// The messages not marked deleted, with their numbers.
    fn live(&self) -> impl Iterator<Item = (usize, &Message)> {
        self.maildrop
            .iter()
            .zip(&self.deleted)
            .enumerate()
            .filter(|(_, (_, deleted))| !**deleted)
            .map(|(i, (m, _))| (i + 1, m))
    }

    /// Message number `arg` if it names a message not marked deleted.
    fn message(&self, arg: &str) -> Result<(usize, &Message), String> {
        let n: usize = arg
            .parse()
            .map_err(|_| err(&format!("Not a message number: {arg}")))?;
        match n.checked_sub(1).and_then(|i| self.maildrop.get(i)) {
            Some(_) if self.deleted[n - 1] => Err(err(&format!("Message {n} is deleted"))),
            Some(m) => Ok((n, m)),
            None => Err(err(&format!("No message {n}"))),
        }
    }

    fn transaction(&mut self, verb: &str, args: &str) -> Action {
        let mut args = args.split_ascii_whitespace();
        let (first, second, extra) = (args.next(), args.next(), args.next());
        let send = |r: Result<String, String>| Action::Send(r.unwrap_or_else(|e| e));
        match (verb, first, second, extra) {
            ("STAT", None, ..) => {
                let (count, size) = self.totals();
                Action::Send(ok(&format!("{count} {size}")))
            }
            ("LIST" | "UIDL", Some(n), None, _) => send(self.message(n).map(|(n, m)| {
                let value = if verb == "LIST" {
                    m.size.to_string()
                } else {
                    m.id.to_string()
                };
                ok(&format!("{n} {value}"))
            })),
            ("LIST" | "UIDL", None, ..) => {
                let mut out = ok("Listing follows");
                for (n, m) in self.live() {
                    let value = if verb == "LIST" {
                        m.size.to_string()
                    } else {
                        m.id.to_string()
                    };
                    out.push_str(&format!("{n} {value}\r\n"));
                }
                out.push_str(".\r\n");
                Action::Send(out)
            }
            ("RETR", Some(n), None, _) => match self.message(n) {
                Ok((_, m)) => Action::Retrieve {
                    id: m.id,
                    top: None,
                },
                Err(e) => Action::Send(e),
            },
            ("TOP", Some(n), Some(lines), None) => match (self.message(n), lines.parse()) {
                (Ok((_, m)), Ok(lines)) => Action::Retrieve {
                    id: m.id,
                    top: Some(lines),
                },
                (Err(e), _) => Action::Send(e),
                (_, Err(_)) => Action::Send(err(&format!("Not a line count: {lines}"))),
            },
            ("DELE", Some(n), None, _) => match self.message(n).map(|(n, _)| n) {
                Ok(n) => {
                    self.deleted[n - 1] = true;
                    Action::Send(ok(&format!("Message {n} deleted")))
                }
                Err(e) => Action::Send(e),
            },
            ("RSET", None, ..) => {
                self.deleted.iter_mut().for_each(|d| *d = false);
                let (count, size) = self.totals();
                Action::Send(ok(&format!("{count} messages ({size} octets)")))
            }
            ("STAT" | "RSET" | "NOOP", Some(_), ..) => {
                Action::Send(err(&format!("{verb} takes no arguments")))
            }
            ("LIST" | "UIDL" | "RETR" | "DELE", ..) => {
                Action::Send(err(&format!("{verb} takes one message number")))
            }
            ("TOP", ..) => Action::Send(err("TOP takes a message number and a line count")),
            _ => Action::Send(err("Unknown command")),
        }
    }

    fn capabilities(&self) -> String {
        let mut out = ok("Capability list follows");
        out.push_str("TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n");
        let signing_in = matches!(self.state, State::Authorization { .. });
        if signing_in && self.may_authenticate() {
            out.push_str("USER\r\nSASL PLAIN\r\n");
        }
        if signing_in && self.config.tls_available && !self.config.tls_active {
            out.push_str("STLS\r\n");
        }
        out.push_str("IMPLEMENTATION MaiRust\r\n.\r\n");
        out
    }
}

/// RETR's or TOP's answer for a message whose bytes are `raw`: `+OK`, the message (only the
/// header and `top` body lines for TOP) with every line starting with `.` dot-stuffed, ending
/// in CRLF, then the terminating `.` line.
pub fn retrieved(raw: &[u8], top: Option<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 64 + 32);
    out.extend_from_slice(format!("+OK {} octets\r\n", raw.len()).as_bytes());
    let mut in_body = false;
    let mut body_lines = 0;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        if in_body && top.is_some_and(|top| body_lines >= top) {
            break;
        }
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        if in_body {
            body_lines += 1;
        } else if line == b"\r\n" || line == b"\n" {
            in_body = true;
        }
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(tls_active: bool) -> Session {
        Session::new(SessionConfig {
            hostname: "mx.example.test".into(),
            tls_active,
            tls_available: true,
            insecure_auth: false,
        })
    }

    fn sent(action: Action) -> String {
        match action {
            Action::Send(text) => text,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn signed_in(sizes: &[u64]) -> Session {
        let mut s = session(true);
        assert_eq!(
            sent(s.command(b"USER bob@example.test")),
            "+OK Send PASS\r\n"
        );
        assert_eq!(
            s.command(b"PASS secret"),
            Action::Authenticate {
                user: "bob@example.test".into(),
                password: "secret".into()
            }
        );
        let maildrop = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| Message {
                id: 100 + i as i64,
                size,
            })
            .collect();
        assert!(s.signed_in(maildrop).starts_with("+OK"));
        s
    }

    #[test]
    fn passwords_wait_for_tls_and_stls_is_offered_until_then() {
        let mut s = session(false);
        let capa = sent(s.command(b"CAPA"));
        assert!(
            capa.contains("STLS\r\n") && !capa.contains("USER\r\n"),
            "{capa}"
        );
        assert!(sent(s.command(b"USER bob")).starts_with("-ERR [AUTH]"));
        assert!(sent(s.command(b"AUTH PLAIN AGJvYgBzZWNyZXQ=")).starts_with("-ERR [AUTH]"));
        assert_eq!(
            s.command(b"STLS"),
            Action::StartTls("+OK Begin TLS negotiation\r\n".into())
        );
        s.tls_started();
        let capa = sent(s.command(b"CAPA"));
        assert!(
            !capa.contains("STLS") && capa.contains("SASL PLAIN\r\n"),
            "{capa}"
        );
        assert!(sent(s.command(b"STLS")).starts_with("-ERR"));
    }

    #[test]
    fn auth_plain_takes_an_initial_response_or_a_continuation() {
        let mut s = session(true);
        let expected = Action::Authenticate {
            user: "bob".into(),
            password: "secret".into(),
        };
        assert_eq!(s.command(b"AUTH PLAIN AGJvYgBzZWNyZXQ="), expected);
        assert!(matches!(s.sign_in_failed(false), Action::Send(e) if e.starts_with("-ERR [AUTH]")));
        assert_eq!(sent(s.command(b"auth plain")), "+ \r\n");
        assert_eq!(s.command(b"AGJvYgBzZWNyZXQ="), expected);
        s.sign_in_failed(true);
        assert_eq!(sent(s.command(b"AUTH PLAIN")), "+ \r\n");
        assert!(sent(s.command(b"*")).starts_with("-ERR"));
        // Acting as another user is refused without a check.
        let other = base64::engine::general_purpose::STANDARD.encode("carol\0bob\0secret");
        assert!(sent(s.command(format!("AUTH PLAIN {other}").as_bytes())).starts_with("-ERR"));
    }

    #[test]
    fn three_bad_commands_before_sign_in_close_the_connection() {
        let mut s = session(true);
        assert!(sent(s.command(b"HELO")).starts_with("-ERR"));
        assert!(sent(s.command(b"RETR 1")).starts_with("-ERR"));
        assert!(matches!(s.command(b"\xff"), Action::Close(_)));
    }

    #[test]
    fn the_maildrop_is_numbered_listed_and_deleted_only_at_quit() {
        let mut s = signed_in(&[10, 20, 30]);
        assert_eq!(sent(s.command(b"STAT")), "+OK 3 60\r\n");
        assert_eq!(
            sent(s.command(b"LIST")),
            "+OK Listing follows\r\n1 10\r\n2 20\r\n3 30\r\n.\r\n"
        );
        assert_eq!(sent(s.command(b"UIDL 2")), "+OK 2 101\r\n");
        assert_eq!(sent(s.command(b"dele 2")), "+OK Message 2 deleted\r\n");
        assert!(sent(s.command(b"RETR 2")).starts_with("-ERR Message 2 is deleted"));
        assert!(sent(s.command(b"LIST 4")).starts_with("-ERR No message 4"));
        assert!(sent(s.command(b"LIST x")).starts_with("-ERR Not a message number"));
        assert_eq!(sent(s.command(b"STAT")), "+OK 2 40\r\n");
        assert_eq!(
            sent(s.command(b"UIDL")),
            "+OK Listing follows\r\n1 100\r\n3 102\r\n.\r\n"
        );
        assert_eq!(
            s.command(b"RETR 3"),
            Action::Retrieve { id: 102, top: None }
        );
        assert_eq!(
            s.command(b"TOP 1 0"),
            Action::Retrieve {
                id: 100,
                top: Some(0)
            }
        );
        assert!(sent(s.command(b"RSET")).starts_with("+OK 3 messages"));
        s.command(b"DELE 1");
        s.command(b"DELE 3");
        assert_eq!(s.command(b"QUIT"), Action::Update(vec![100, 102]));
        assert!(s.updated(0).starts_with("+OK"));
        assert!(s.updated(1).starts_with("-ERR [SYS/TEMP]"));
    }

    /// The whole dialogue for `input` cut into pieces of `split` bytes (0: at once), with
    /// every password right and every message `RETR` able to send.
    fn dialogue(input: &[u8], split: usize) -> Vec<String> {
        let mut s = session(true);
        let mut lines = Lines::default();
        let mut out = Vec::new();
        let pieces: Vec<&[u8]> = if split == 0 {
            vec![input]
        } else {
            input.chunks(split).collect()
        };
        for piece in pieces {
            lines.push(piece);
            loop {
                let line = match lines.next_line() {
                    Ok(Some(line)) => line,
                    Ok(None) => break,
                    Err(LineTooLong) => {
                        out.push("too long".into());
                        return out;
                    }
                };
                match s.command(&line) {
                    Action::Authenticate { .. } => {
                        let maildrop =
                            vec![Message { id: 7, size: 10 }, Message { id: 8, size: 20 }];
                        out.push(s.signed_in(maildrop));
                    }
                    Action::Retrieve { id, top } => out.push(format!("retrieve {id} {top:?}")),
                    Action::Update(ids) => {
                        out.push(format!("update {ids:?}"));
                        return out;
                    }
                    Action::Close(text) => {
                        out.push(text);
                        return out;
                    }
                    Action::Send(text) | Action::StartTls(text) => out.push(text),
                }
            }
        }
        out
    }

    proptest::proptest! {
        /// However the network splits the client's bytes, the dialogue is the same.
        #[test]
        fn any_split_of_the_input_gives_the_same_dialogue(
            commands in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Just("CAPA"), proptest::strategy::Just("USER bob@example.test"),
                proptest::strategy::Just("PASS secret"), proptest::strategy::Just("STAT"),
                proptest::strategy::Just("LIST"), proptest::strategy::Just("UIDL 2"),
                proptest::strategy::Just("RETR 1"), proptest::strategy::Just("TOP 2 3"),
                proptest::strategy::Just("DELE 1"), proptest::strategy::Just("RSET"),
                proptest::strategy::Just("NOOP"), proptest::strategy::Just("XYZZY"),
                proptest::strategy::Just("AUTH PLAIN"), proptest::strategy::Just("AGJvYgBzZWNyZXQ="),
                proptest::strategy::Just("QUIT"),
            ], 0..24),
            bare_lf in proptest::bool::ANY,
            split in 1usize..17,
        ) {
            let end = if bare_lf { "\n" } else { "\r\n" };
            let input: Vec<u8> = commands.iter().flat_map(|c| format!("{c}{end}").into_bytes()).collect();
            proptest::prop_assert_eq!(dialogue(&input, split), dialogue(&input, 0));
        }
    }

    #[test]
    fn a_line_over_the_limit_is_refused_wherever_it_is_cut() {
        let long = vec![b'x'; MAX_LINE + 10];
        for split in [1, 7, 4096, long.len()] {
            let mut lines = Lines::default();
            let mut verdict = Ok(None);
            for piece in long.chunks(split) {
                lines.push(piece);
                verdict = lines.next_line();
                if verdict.is_err() {
                    break;
                }
            }
            assert_eq!(verdict, Err(LineTooLong), "split {split}");
        }
        let mut lines = Lines::default();
        lines.push(b"NOOP\r\nSTAT\nrest");
        assert_eq!(lines.next_line(), Ok(Some(b"NOOP".to_vec())));
        assert_eq!(lines.next_line(), Ok(Some(b"STAT".to_vec())));
        assert_eq!(lines.next_line(), Ok(None));
    }

    #[test]
    fn quit_before_sign_in_deletes_nothing() {
        let mut s = session(true);
        assert!(matches!(s.command(b"QUIT"), Action::Close(line) if line.starts_with("+OK")));
    }

    #[test]
    fn a_retrieved_message_is_dot_stuffed_and_top_stops_after_its_lines() {
        let raw = b"Subject: x\r\n.hidden: y\r\n\r\nline 1\r\n.line 2\r\nline 3";
        let whole = retrieved(raw, None);
        assert_eq!(
            String::from_utf8(whole).expect("utf8"),
            format!(
                "+OK {} octets\r\nSubject: x\r\n..hidden: y\r\n\r\nline 1\r\n..line 2\r\nline 3\r\n.\r\n",
                raw.len()
            )
        );
        let top = String::from_utf8(retrieved(raw, Some(1))).expect("utf8");
        assert!(top.ends_with("\r\n\r\nline 1\r\n.\r\n"), "{top}");
        let header = String::from_utf8(retrieved(raw, Some(0))).expect("utf8");
        assert!(header.ends_with("..hidden: y\r\n\r\n.\r\n"), "{header}");
    }
}
