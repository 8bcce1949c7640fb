//! Fuzzes the POP3 session: arbitrary bytes, split at arbitrary points, every password right.
//! Run with `cargo +nightly fuzz run pop3` from the project root.
//!
//! Input layout: byte 0 picks the configuration, byte 1 the split length, the rest is what the
//! client sends.
//!
//! Invariants checked: no panic; every reply starts with `+OK`, `-ERR` or the SASL `+ `
//! continuation and ends in CRLF; a multi-line reply ends in `.` CRLF; nothing is handled after
//! the session asked to close; deletions happen only at QUIT after sign-in.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mairust::pop3::session::{Action, Lines, Message, Session, SessionConfig};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((&split, input)) = rest.split_first() else {
        return;
    };
    let mut session = Session::new(SessionConfig {
        hostname: "fuzz.example".to_owned(),
        tls_active: flags & 0x01 != 0,
        tls_available: flags & 0x02 != 0,
        insecure_auth: flags & 0x04 != 0,
    });
    let mut lines = Lines::default();
    let mut signed_in = false;
    let check = |reply: &str| {
        assert!(
            reply.starts_with("+OK") || reply.starts_with("-ERR") || reply == "+ \r\n",
            "{reply:?}"
        );
        assert!(reply.ends_with("\r\n"), "{reply:?}");
        if reply.starts_with("+OK") && reply.matches("\r\n").count() > 1 {
            assert!(reply.ends_with("\r\n.\r\n"), "{reply:?}");
        }
    };
    for piece in input.chunks(usize::from(split).max(1)) {
        lines.push(piece);
        loop {
            let line = match lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(_) => return,
            };
            match session.command(&line) {
                Action::Send(reply) | Action::StartTls(reply) => check(&reply),
                Action::Authenticate { .. } => {
                    let maildrop = (1..=3).map(|id| Message { id, size: 100 * id as u64 });
                    check(&session.signed_in(maildrop.collect()));
                    signed_in = true;
                }
                Action::Retrieve { id, .. } => assert!(signed_in && (1..=3).contains(&id)),
                Action::Update(ids) => {
                    assert!(signed_in && ids.iter().all(|id| (1..=3).contains(id)));
                    return;
                }
                Action::Close(reply) => {
                    check(&reply);
                    return;
                }
            }
        }
    }
});
