//! Command lines, error limits and pipelining limits.

use super::*;

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
    let out =
        h.send("RCPT TO:<u1@d.example>\r\nRCPT TO:<u2@d.example>\r\nRCPT TO:<u3@d.example>\r\n");
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
    let out = h.send("RCPT TO:<e@d.example>\r\nRCPT TO:<f@d.example>\r\nRCPT TO:<g@d.example>\r\n");
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
