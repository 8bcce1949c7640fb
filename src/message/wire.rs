//! The form a message has when it leaves: only CRLF line breaks and no line over 998 octets
//! (RFC 5322 §2.1.1, RFC 5321 §4.5.3.1.6).
//!
//! [`outbound_form`] runs at acceptance, before DKIM signing, for every message with remote
//! recipients, so the signature covers exactly the bytes the SMTP client sends:
//!
//! - every bare CR and bare LF becomes CRLF, and a missing final CRLF is added; no byte
//!   sequence that another server might read as the end of data (SMTP smuggling) survives;
//! - a MIME leaf part (or a non-MIME body) with a line over 998 octets is re-encoded:
//!   quoted-printable for `text/*`, base64 otherwise; parts already in base64 or
//!   quoted-printable get line breaks that decoders ignore; multiparts and `message/rfc822`
//!   parts are walked into, so only the affected part changes;
//! - a header line over 998 octets is folded at white space; one that has none cannot be
//!   sent and the message is refused ([`WireError`]).

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use mail_parser::{MessageParser, MimeHeaders};

/// Longest line RFC 5322 allows, CRLF not counted.
pub const MAX_LINE: usize = 998;

/// Line length of the encodings written here (RFC 2045 §6.7, §6.8).
const ENCODED_LINE: usize = 76;

/// Why a message cannot leave as it is.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A header line is too long and has no white space to fold at.
    #[error(
        "a header line of {0} octets has no white space to fold at; header lines may be at most 998 octets"
    )]
    UnfoldableHeader(usize),
}

/// `data` with every bare CR and bare LF turned into CRLF and a final CRLF added (unless
/// empty). Borrowed when nothing changes.
pub fn normalize_line_endings(data: &[u8]) -> Cow<'_, [u8]> {
    if is_normal(data) {
        return Cow::Borrowed(data);
    }
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut i = 0;
    while let Some(&b) = data.get(i) {
        match b {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if data.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            _ => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    Cow::Owned(out)
}

fn is_normal(data: &[u8]) -> bool {
    if !data.is_empty() && !data.ends_with(b"\r\n") {
        return false;
    }
    let mut bytes = data.iter().enumerate();
    while let Some((i, &b)) = bytes.next() {
        match b {
            b'\r' if data.get(i + 1) == Some(&b'\n') => {
                bytes.next();
            }
            b'\r' | b'\n' => return false,
            _ => {}
        }
    }
    true
}

/// Whether some line of `data` (CRLF line breaks) is longer than [`MAX_LINE`].
pub fn has_long_line(data: &[u8]) -> bool {
    lines(data).any(|line| content(line).len() > MAX_LINE)
}

/// The message as it will be sent; see the module documentation.
pub fn outbound_form(data: Vec<u8>) -> Result<Vec<u8>, WireError> {
    let data = match normalize_line_endings(&data) {
        Cow::Borrowed(_) => data,
        Cow::Owned(normal) => normal,
    };
    if !has_long_line(&data) {
        return Ok(data);
    }
    let mut out = Vec::with_capacity(data.len() + data.len() / 16);
    entity(&data, true, &mut out)?;
    Ok(out)
}

/// Lines of `data`, each with its CRLF (the last one may lack it).
fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split_inclusive(|&b| b == b'\n')
}

/// A line without its CRLF.
fn content(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r\n").unwrap_or(line)
}

/// Header block (with its lines' CRLFs), whether a blank line follows, and the body.
fn split_entity(data: &[u8]) -> (&[u8], bool, &[u8]) {
    if let Some(body) = data.strip_prefix(b"\r\n") {
        return (&[], true, body);
    }
    match data.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => (&data[..at + 2], true, &data[at + 4..]),
        None => (data, false, &[]),
    }
}

/// Header fields of a block, each with its continuation lines.
fn fields(headers: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut at = 0;
    for line in lines(headers) {
        if at > start && !matches!(line.first(), Some(b' ' | b'\t')) {
            out.push(&headers[start..at]);
            start = at;
        }
        at += line.len();
    }
    if at > start {
        out.push(&headers[start..at]);
    }
    out
}

fn field_is(field: &[u8], name: &str) -> bool {
    field
        .split(|&b| b == b':')
        .next()
        .is_some_and(|n| n.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
}

/// Writes header lines, folding any over [`MAX_LINE`] at white space.
fn write_headers(headers: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    for line in lines(headers) {
        let mut rest = content(line);
        while rest.len() > MAX_LINE {
            // Fold before a space or tab that has text in front of it on this line (a line of
            // only white space would be obsolete syntax); unfolding restores the field.
            let cut = (1..=MAX_LINE).rev().find(|&i| {
                matches!(rest[i], b' ' | b'\t')
                    && rest[..i].iter().any(|b| !b.is_ascii_whitespace())
            });
            let Some(cut) = cut else {
                return Err(WireError::UnfoldableHeader(rest.len()));
            };
            out.extend_from_slice(&rest[..cut]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[cut..];
        }
        out.extend_from_slice(rest);
        out.extend_from_slice(b"\r\n");
    }
    Ok(())
}

/// Rewrites one entity (message or MIME part) so that no line exceeds [`MAX_LINE`].
fn entity(data: &[u8], top: bool, out: &mut Vec<u8>) -> Result<(), WireError> {
    let (headers, separated, body) = split_entity(data);
    if !has_long_line(body) {
        write_headers(headers, out)?;
        if separated {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(body);
        return Ok(());
    }
    // `parse_headers` reads only the header block (it needs the blank line to end it).
    let mut head = headers.to_vec();
    head.extend_from_slice(b"\r\n");
    let parsed = MessageParser::new().parse_headers(&head);
    let content_type = parsed.as_ref().and_then(|m| m.content_type());
    let ctype = content_type.map(|c| c.ctype().to_ascii_lowercase());
    let subtype = content_type
        .and_then(|c| c.subtype())
        .map(str::to_ascii_lowercase);
    let boundary = content_type
        .and_then(|c| c.attribute("boundary"))
        .map(str::to_string);
    let encoding = parsed
        .as_ref()
        .and_then(|m| m.content_transfer_encoding())
        .map(|e| e.trim().to_ascii_lowercase());

    match (ctype.as_deref(), encoding.as_deref()) {
        (Some("multipart"), _) if boundary.is_some() => {
            write_headers(headers, out)?;
            out.extend_from_slice(b"\r\n");
            multipart(body, boundary.as_deref().unwrap_or_default(), out)
        }
        (Some("message"), None | Some("7bit" | "8bit" | "binary"))
            if matches!(subtype.as_deref(), Some("rfc822" | "global")) =>
        {
            // A message/rfc822 part may not be encoded (RFC 2046 §5.2.1): fix the message
            // inside it instead.
            write_headers(headers, out)?;
            out.extend_from_slice(b"\r\n");
            entity(body, false, out)
        }
        (_, Some("base64")) => {
            write_headers(headers, out)?;
            out.extend_from_slice(b"\r\n");
            rewrap(body, false, out);
            Ok(())
        }
        (_, Some("quoted-printable")) => {
            write_headers(headers, out)?;
            out.extend_from_slice(b"\r\n");
            rewrap(body, true, out);
            Ok(())
        }
        _ => {
            let text = matches!(ctype.as_deref(), None | Some("text"));
            let mut has_version = false;
            for field in fields(headers) {
                has_version |= field_is(field, "MIME-Version");
                if !field_is(field, "Content-Transfer-Encoding") {
                    write_headers(field, out)?;
                }
            }
            if top && !has_version {
                out.extend_from_slice(b"MIME-Version: 1.0\r\n");
            }
            if text {
                out.extend_from_slice(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n");
                quoted_printable(body, out);
            } else {
                out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
                base64_lines(body, out);
            }
            Ok(())
        }
    }
}

/// Walks the parts of a multipart body; preamble and epilogue lines (which readers ignore)
/// are cut into pieces if too long.
fn multipart(body: &[u8], boundary: &str, out: &mut Vec<u8>) -> Result<(), WireError> {
    let delimiter = format!("--{boundary}");
    let is_delimiter = |line: &[u8]| -> Option<bool> {
        let rest = content(line).strip_prefix(delimiter.as_bytes())?;
        let (closing, rest) = match rest.strip_prefix(b"--") {
            Some(rest) => (true, rest),
            None => (false, rest),
        };
        rest.iter()
            .all(|b| matches!(b, b' ' | b'\t'))
            .then_some(closing)
    };
    // None: preamble; Some(start): inside a part that began at `start`; after the closing
    // delimiter: epilogue.
    let mut part_start: Option<usize> = None;
    let mut epilogue = false;
    let mut at = 0;
    for line in lines(body) {
        let line_start = at;
        at += line.len();
        if epilogue {
            hard_wrap(line, out);
            continue;
        }
        match is_delimiter(line) {
            Some(closing) => {
                if let Some(start) = part_start {
                    // The CRLF before a delimiter belongs to the delimiter (RFC 2046 §5.1.1).
                    let raw = &body[start..line_start];
                    entity(raw.strip_suffix(b"\r\n").unwrap_or(raw), false, out)?;
                    if !raw.is_empty() {
                        out.extend_from_slice(b"\r\n");
                    }
                }
                out.extend_from_slice(line);
                part_start = Some(at);
                epilogue = closing;
            }
            None if part_start.is_none() => hard_wrap(line, out),
            None => {}
        }
    }
    if let (Some(start), false) = (part_start, epilogue) {
        // Unterminated multipart: treat the rest as the last part.
        entity(&body[start..], false, out)?;
    }
    Ok(())
}

/// Cuts a line into pieces of at most [`MAX_LINE`] octets.
fn hard_wrap(line: &[u8], out: &mut Vec<u8>) {
    let text = content(line);
    if text.len() <= MAX_LINE {
        out.extend_from_slice(line);
        return;
    }
    let pieces: Vec<&[u8]> = text.chunks(MAX_LINE).collect();
    for (i, piece) in pieces.iter().enumerate() {
        out.extend_from_slice(piece);
        if i + 1 < pieces.len() || line.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Breaks the long lines of an encoded body where its decoder ignores a break: anywhere in
/// base64, and as a soft line break (`=` CRLF) in quoted-printable, never inside an `=XX`
/// escape.
fn rewrap(body: &[u8], qp: bool, out: &mut Vec<u8>) {
    for line in lines(body) {
        let mut rest = content(line);
        if rest.len() <= MAX_LINE {
            out.extend_from_slice(line);
            continue;
        }
        let width = if qp { ENCODED_LINE - 1 } else { ENCODED_LINE };
        while rest.len() > width {
            let cut = if qp {
                width - qp_safe_cut(&rest[..width])
            } else {
                width
            };
            out.extend_from_slice(&rest[..cut]);
            if qp {
                out.push(b'=');
            }
            out.extend_from_slice(b"\r\n");
            rest = &rest[cut..];
        }
        out.extend_from_slice(rest);
        if line.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// How many octets to step back from the end of `head` so that a cut there does not split
/// a quoted-printable escape.
fn qp_safe_cut(head: &[u8]) -> usize {
    match head {
        [.., b'=', _] => 2,
        [.., b'='] => 1,
        _ => 0,
    }
}

/// Quoted-printable (RFC 2045 §6.7) of a text body: CRLF line breaks stay hard breaks.
fn quoted_printable(body: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for line in lines(body) {
        let text = content(line);
        let mut column = 0;
        for (i, &b) in text.iter().enumerate() {
            let last = i + 1 == text.len();
            let literal =
                (b'!'..=b'~').contains(&b) && b != b'=' || matches!(b, b' ' | b'\t') && !last;
            let width = if literal { 1 } else { 3 };
            if column + width > ENCODED_LINE - 1 {
                out.extend_from_slice(b"=\r\n");
                column = 0;
            }
            if literal {
                out.push(b);
            } else {
                out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
            column += width;
        }
        if line.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Base64 in lines of 76.
fn base64_lines(body: &[u8], out: &mut Vec<u8>) {
    let encoded = B64.encode(body);
    for piece in encoded.as_bytes().chunks(ENCODED_LINE) {
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decoded_text(message: &[u8]) -> String {
        let parsed = MessageParser::new().parse(message).expect("parses");
        parsed.body_text(0).expect("text body").into_owned()
    }

    #[test]
    fn bare_line_breaks_become_crlf() {
        assert_eq!(
            &*normalize_line_endings(b"a\r.\rMAIL FROM:<x>\r.\nb\n\r\nc"),
            b"a\r\n.\r\nMAIL FROM:<x>\r\n.\r\nb\r\n\r\nc\r\n"
        );
        assert!(matches!(
            normalize_line_endings(b"fine\r\n"),
            Cow::Borrowed(_)
        ));
        assert_eq!(&*normalize_line_endings(b""), b"");
    }

    #[test]
    fn a_long_plain_body_becomes_quoted_printable() {
        let long = "word ".repeat(400) + "=end é";
        let message = format!("Subject: s\r\n\r\nshort\r\n{long}\r\n");
        let out = outbound_form(message.clone().into_bytes()).expect("sendable");
        assert!(!has_long_line(&out));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("MIME-Version: 1.0\r\n"), "{text}");
        assert!(text.contains("Content-Transfer-Encoding: quoted-printable\r\n"));
        assert_eq!(decoded_text(&out), format!("short\r\n{long}\r\n"));
    }

    #[test]
    fn only_the_affected_part_is_reencoded() {
        let long = "x".repeat(3000);
        let message = format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
             preamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nshort part\r\n--b1\r\n\
             Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
             {long}\r\n--b1\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n\
             {b64}\r\n--b1--\r\nepilogue\r\n",
            b64 = B64.encode("y".repeat(2000))
        );
        let out = outbound_form(message.into_bytes()).expect("sendable");
        assert!(!has_long_line(&out));
        let parsed = MessageParser::new().parse(&out).expect("parses");
        let bodies: Vec<Vec<u8>> = parsed.parts[1..]
            .iter()
            .map(|p| p.contents().to_vec())
            .collect();
        assert_eq!(bodies[0], b"short part");
        assert_eq!(bodies[1], long.as_bytes());
        assert_eq!(bodies[2], "y".repeat(2000).as_bytes());
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("Content-Type: text/plain\r\n\r\nshort part\r\n--b1\r\n"));
        assert!(!text.contains("8bit"), "{text}");
    }

    #[test]
    fn long_headers_fold_or_refuse() {
        let value = "v ".repeat(700);
        let message = format!("X-Long: {value}\r\nSubject: s\r\n\r\nbody\r\n");
        let out = outbound_form(message.into_bytes()).expect("folds");
        assert!(!has_long_line(&out));
        let parsed = MessageParser::new().parse(&out).expect("parses");
        assert_eq!(
            parsed.header_raw("X-Long").map(|v| v.replace("\r\n", "")),
            Some(format!(" {value}"))
        );
        let solid = format!("X-Solid: {}\r\n\r\nbody\r\n", "z".repeat(1200));
        assert!(matches!(
            outbound_form(solid.into_bytes()),
            Err(WireError::UnfoldableHeader(_))
        ));
    }

    #[test]
    fn conforming_messages_are_left_alone() {
        let message = b"Subject: s\r\n\r\nline\r\n.dot\r\n".to_vec();
        assert_eq!(outbound_form(message.clone()).expect("ok"), message);
    }

    proptest! {
        #[test]
        fn output_is_always_sendable_text(body in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b' '), Just(b'='), any::<u8>()], 0..4000)) {
            let mut message = b"Subject: p\r\n\r\n".to_vec();
            message.extend_from_slice(&body);
            let out = outbound_form(message).expect("a short header always works");
            prop_assert!(is_normal(&out));
            prop_assert!(!has_long_line(&out));
        }
    }
}
