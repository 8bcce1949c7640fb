//! STARTTLS and AUTH.

use super::*;

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
