//! Fuzzes the SMTP client session: arbitrary server bytes, split at arbitrary points, against
//! arbitrary message bodies. Run with `cargo +nightly fuzz run client` from the project root.
//!
//! Input layout: byte 0 picks the configuration, byte 1 seeds the split points, byte 2 is the
//! length of the message body that follows it, the rest is what the server sends.
//!
//! Invariants checked: no panic; the client writes only CRLF-terminated lines (no bare CR or
//! LF, whatever the body); nothing is written once the session is done; after the connection
//! drops the session is done and every transaction was reported exactly once, with one result
//! per recipient; at most one `SessionFailed`.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use mairust::delivery::client::{
    ClientConfig, ClientEvent, ClientSession, Credentials, TlsPolicy, Transaction,
};

fuzz_target!(|data: &[u8]| {
    let [flags, seed, body_len, rest @ ..] = data else {
        return;
    };
    let body_len = usize::from(*body_len).min(rest.len());
    let (body, input) = rest.split_at(body_len);
    let config = ClientConfig {
        helo_name: "fuzz.example".to_owned(),
        tls: match flags & 0x03 {
            0 => TlsPolicy::Opportunistic,
            1 => TlsPolicy::Required,
            _ => TlsPolicy::Disabled,
        },
        tls_available: flags & 0x04 != 0,
        auth: (flags & 0x08 != 0).then(|| Credentials {
            username: "user".to_owned(),
            password: "secret".to_owned(),
        }),
        allow_plain_auth: flags & 0x10 != 0,
    };
    let body: Arc<[u8]> = Arc::from(body);
    let mut expected = vec![2];
    let mut session = ClientSession::new(config);
    session.push(Transaction {
        mail_from: "a@here.example".to_owned(),
        rcpt_to: vec!["x@there.example".to_owned(), "y@there.example".to_owned()],
        body: Arc::clone(&body),
        smtputf8: flags & 0x20 != 0,
        body_8bit: flags & 0x40 != 0,
    });
    if flags & 0x80 != 0 {
        // A second transaction on the same connection (RSET between them, or not).
        expected.push(1);
        session.push(Transaction {
            mail_from: String::new(),
            rcpt_to: vec!["z@there.example".to_owned()],
            body,
            smtputf8: false,
            body_8bit: false,
        });
    }
    session.finish();

    let mut out = Vec::new();
    let mut tally = Tally {
        reported: vec![0; expected.len()],
        expected,
        failures: 0,
    };
    drive(&mut session, &mut out, &mut tally);

    // xorshift64, seeded from the input: deterministic split points.
    let mut rng = (u64::from(*seed) << 32 | input.len() as u64) | 1;
    let mut pos = 0;
    while pos < input.len() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let len = 1 + (rng % 97) as usize;
        let end = (pos + len).min(input.len());
        let was_done = session.is_done();
        let before = out.len();
        session.handle_input(&input[pos..end]);
        drive(&mut session, &mut out, &mut tally);
        if was_done {
            assert_eq!(out.len(), before, "output after the session was done");
        }
        pos = end;
    }

    session.handle_disconnect();
    drive(&mut session, &mut out, &mut tally);
    assert!(session.is_done());
    assert!(
        tally.reported.iter().all(|&n| n == 1),
        "reports per transaction: {:?}",
        tally.reported
    );
    assert!(
        tally.failures <= 1,
        "{} SessionFailed events",
        tally.failures
    );
    assert_crlf_only(&out);
});

/// What the events said so far.
struct Tally {
    /// Recipients per transaction, in push order.
    expected: Vec<usize>,
    /// `TransactionDone` events per transaction.
    reported: Vec<usize>,
    /// `SessionFailed` events.
    failures: usize,
}

/// Drains output and events as a driver would; every TLS handshake succeeds.
fn drive(session: &mut ClientSession, out: &mut Vec<u8>, tally: &mut Tally) {
    loop {
        while let Some(bytes) = session.poll_output() {
            assert!(!bytes.is_empty());
            out.extend_from_slice(&bytes);
        }
        let Some(event) = session.poll_event() else {
            break;
        };
        match event {
            ClientEvent::StartTls => session.tls_started(),
            ClientEvent::ReadyToCommit { .. } => session.commit(),
            ClientEvent::TransactionDone { index, results } => {
                assert_eq!(results.len(), tally.expected[index]);
                tally.reported[index] += 1;
            }
            ClientEvent::SessionFailed { .. } => tally.failures += 1,
        }
    }
}

/// Every CR is followed by LF and every LF preceded by CR.
fn assert_crlf_only(out: &[u8]) {
    for (i, &b) in out.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
        if b == b'\n' {
            assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i}");
        }
    }
}
