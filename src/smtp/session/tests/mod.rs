//! Unit and property tests of the server session, by concern.

mod auth;
mod commands;
mod data;
mod limits;
mod props;

use super::auth::BASE64;
use super::commands::find_crlf;
use super::*;
use base64::Engine as _;
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
