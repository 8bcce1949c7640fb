//! Fuzzes what an IMAP server reads from strangers: the command framing and parsing, and the
//! rendering of stored messages (ENVELOPE, BODYSTRUCTURE, body sections), which are built
//! from mail anyone can send. Run with `cargo +nightly fuzz run imap` from the project root.
//!
//! Input layout: byte 0 picks the mode (even: client bytes; odd: a stored message), byte 1 the
//! split length or the part number to fetch; the rest is the input.
//!
//! Invariants checked: no panic; every framed command ends in CRLF and the commands are the
//! input in order (the split never changes them); a section of a message is a slice of it.

#![no_main]

use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;
use libfuzzer_sys::fuzz_target;
use mairust::imap::framing::{Frame, Framer, Next};
use mairust::imap::render::{self, SectionSpec};

fn commands(input: &[u8], split: usize) -> Vec<Vec<u8>> {
    let mut framer = Framer::new(4096);
    let mut out = Vec::new();
    for piece in input.chunks(split.max(1)) {
        framer.push(piece);
        loop {
            match framer.next_frame() {
                Ok(Next::Frame(Frame::Command(c))) => out.push(c),
                Ok(Next::Frame(Frame::Continue) | Next::Refused(_)) => {}
                Ok(Next::More) => break,
                Err(_) => return out,
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((&param, input)) = rest.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let split = commands(input, usize::from(param));
        let whole = commands(input, input.len());
        assert_eq!(split, whole, "the split changed the commands");
        for command in &split {
            assert!(command.ends_with(b"\r\n"));
            let _ = CommandCodec::default().decode(command);
        }
    } else if let Some(message) = mail_parser::MessageParser::default().parse(input) {
        let mut out = Vec::new();
        render::envelope(&mut out, &message);
        render::body_structure(&mut out, &message, true);
        let path = [u32::from(param % 4 + 1), u32::from(param / 64 + 1)];
        for spec in [
            SectionSpec::Whole,
            SectionSpec::Header(None),
            SectionSpec::Text(Some(&path[..1])),
            SectionSpec::Part(&path),
            SectionSpec::Mime(&path[..1]),
        ] {
            if let Some(bytes) = render::section(&message, &spec) {
                assert!(bytes.len() <= input.len() + 2);
            }
        }
    }
});
