//! DATA and BDAT.

use super::*;

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
fn bdat_chunks_join_and_a_crlf_may_span_them() {
    let mut h = greeted(config());
    h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
    h.take();
    h.take_events();
    assert_eq!(h.send("BDAT 6\r\nhel"), "");
    assert!(h.session.expects_data());
    assert_eq!(h.send("lo\r"), "250 2.0.0 6 octets received\r\n");
    assert!(!h.session.expects_data());
    assert_eq!(
        h.send("BDAT 10 LAST\r\n\n.\r\nQUIT\r\nNOOP\r\n"),
        "250 2.0.0 Message accepted\r\n250 2.0.0 Ok\r\n"
    );
    assert_eq!(h.messages(), vec![&b"hello\r\n.\r\nQUIT\r\n"[..]]);
    assert!(!h.session.is_closed());
}

#[test]
fn bdat_with_a_bare_cr_or_lf_is_refused_like_data() {
    // A bare CR in the header section would become a line break on the way out: a From
    // header no check saw (the forgery this rule stops).
    for (chunks, why) in [
        (
            &["Subject: hi\rFrom: bob@x.test\r\n\r\nbody\r\n"][..],
            "bare CR",
        ),
        (&["Subject: hi\r\n\r\nunix\nline\r\n"][..], "bare LF"),
        (&["Subject: hi\r\n\r\nends in CR\r"][..], "CR at the end"),
        (
            &["Subject: hi\r", "X\r\n\r\nb\r\n"][..],
            "CR at a chunk's end",
        ),
        (
            &["Subject: hi\r\n\r\nb\r\n", "\nb\r\n"][..],
            "LF at a chunk's start",
        ),
    ] {
        let mut h = greeted(config());
        h.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
        h.take();
        let last = chunks.len() - 1;
        let mut out = String::new();
        for (n, chunk) in chunks.iter().enumerate() {
            let tail = if n == last { " LAST" } else { "" };
            out += &h.send(&format!("BDAT {}{tail}\r\n{chunk}", chunk.len()));
        }
        assert!(
            out.ends_with(
                "550 5.6.11 Message rejected: bare CR or LF in message data; use CRLF line endings\r\n"
            ),
            "{why}: {out}"
        );
        assert!(h.messages().is_empty(), "{why}");
        // The transaction is over; the session goes on.
        assert_eq!(
            h.send("RCPT TO:<c@d.example>\r\n"),
            "503 5.5.1 Need MAIL command\r\n"
        );
    }
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
