//! Greeting, EHLO/HELO, mail transactions and the other commands.

use super::*;

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
