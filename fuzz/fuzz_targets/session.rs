//! Fuzzes the SMTP server session: arbitrary bytes, split at arbitrary points, every event
//! answered with success. Run with `cargo +nightly fuzz run session` from the project root.
//!
//! Input layout: byte 0 picks the configuration, byte 1 seeds the split points, the rest is
//! what the client sends.
//!
//! Invariants checked: no panic; the output is only well-formed reply lines
//! (`ddd[ -]...\r\n`); at most one event is outstanding; the 220 is out before
//! `Event::StartTls`; no message is larger than `max_message_size`; nothing is written after
//! the session closed; a timeout always closes it.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use mairust::smtp::session::{Answer, Event, PeerInfo, ServerSession, SessionConfig};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((&seed, input)) = rest.split_first() else {
        return;
    };
    let config = SessionConfig {
        hostname: "fuzz.example".to_owned(),
        submission: flags & 0x01 != 0,
        tls_available: flags & 0x02 != 0,
        allow_insecure_auth: flags & 0x04 != 0,
        vrfy_enabled: flags & 0x08 != 0,
        trusted_client: flags & 0x80 != 0,
        max_message_size: if flags & 0x10 != 0 { 64 } else { 4096 },
        max_recipients: if flags & 0x20 != 0 { 1 } else { 100 },
        max_line_length: 512,
        max_errors: if flags & 0x40 != 0 { 0 } else { 20 },
        max_junk_commands: if flags & 0x40 != 0 { 0 } else { 3 },
    };
    let max_message_size = config.max_message_size;
    let peer = PeerInfo {
        ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
    };
    let mut session = ServerSession::new(config, peer);
    if flags & 0x80 != 0 {
        // Implicit TLS.
        session.tls_started();
        assert!(session.is_tls());
    }

    let mut out = Vec::new();
    drive(&mut session, &mut out, max_message_size);

    // xorshift64, seeded from the input: deterministic split points.
    let mut rng = (u64::from(seed) << 32 | input.len() as u64) | 1;
    let mut pos = 0;
    while pos < input.len() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let len = 1 + (rng % 97) as usize;
        let end = (pos + len).min(input.len());
        let was_closed = session.is_closed();
        let before = out.len();
        session.handle_input(&input[pos..end]);
        drive(&mut session, &mut out, max_message_size);
        if was_closed {
            assert_eq!(out.len(), before, "output after close");
        }
        pos = end;
    }

    session.handle_timeout();
    drive(&mut session, &mut out, max_message_size);
    assert!(session.is_closed());
    assert!(!session.expects_data());
    assert!(!session.wants_input());
    assert_well_formed(&out);
});

/// Drains output and answers every event with success, as a driver would.
fn drive(session: &mut ServerSession, out: &mut Vec<u8>, max_message_size: usize) {
    loop {
        while let Some(bytes) = session.poll_output() {
            assert!(!bytes.is_empty());
            out.extend_from_slice(&bytes);
        }
        let Some(event) = session.poll_event() else {
            break;
        };
        assert!(session.poll_event().is_none(), "two events outstanding");
        assert!(!session.wants_input());
        match event {
            Event::StartTls => {
                assert!(out.ends_with(b"220 2.0.0 Ready to start TLS\r\n"));
                session.tls_started();
                assert!(session.is_tls());
            }
            Event::Authenticate { .. } => session.answer(Answer::Auth(true)),
            Event::Message { data, envelope } => {
                assert!(data.len() <= max_message_size);
                assert!(!envelope.rcpt_to.is_empty());
                session.answer(Answer::Accept);
            }
            Event::MailFrom { .. } | Event::Recipient { .. } => session.answer(Answer::Accept),
        }
    }
}

/// The output consists only of reply lines `ddd[ -]...\r\n` without stray CR or LF.
fn assert_well_formed(mut out: &[u8]) {
    while !out.is_empty() {
        let lf = out
            .iter()
            .position(|&b| b == b'\n')
            .expect("reply line without LF");
        let line = &out[..lf];
        let line = line.strip_suffix(b"\r").expect("reply line without CRLF");
        assert!(line.len() >= 4, "short reply line {line:?}");
        assert!(
            line[..3].iter().all(u8::is_ascii_digit),
            "bad code {line:?}"
        );
        assert!(line[3] == b' ' || line[3] == b'-', "bad separator {line:?}");
        assert!(!line.contains(&b'\r'), "stray CR in {line:?}");
        out = &out[lf + 1..];
    }
}
