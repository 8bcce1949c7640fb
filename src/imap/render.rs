//! What FETCH returns, built from a stored message: IMAP strings, ENVELOPE, BODY and
//! BODYSTRUCTURE (RFC 9051 §7.5.2), and body sections by part number. Without I/O.

use mail_parser::{Address, Message, MessagePart, MimeHeaders, PartType};

/// Appends `value` as an IMAP string: quoted when it can be, a literal otherwise.
pub fn string(out: &mut Vec<u8>, value: &[u8]) {
    let quotable = value.len() < 1024
        && value
            .iter()
            .all(|&b| (0x20..0x7f).contains(&b) || b == b'\t');
    if quotable {
        out.push(b'"');
        for &b in value {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, value);
    }
}

/// Appends `value` as a literal.
pub fn literal(out: &mut Vec<u8>, value: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", value.len()).as_bytes());
    out.extend_from_slice(value);
}

/// Appends `value` as a string, or NIL.
pub fn nstring(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(v) => string(out, v.as_bytes()),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// A decoded header text in the form a client decodes: ASCII as is, anything else as one
/// RFC 2047 encoded word (clients of IMAP4rev1 expect no raw 8-bit text in ENVELOPE).
fn header_text(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(v) if !v.is_ascii() => {
            use base64::Engine;
            let word = format!(
                "=?utf-8?b?{}?=",
                base64::engine::general_purpose::STANDARD.encode(v.as_bytes())
            );
            string(out, word.as_bytes());
        }
        other => nstring(out, other),
    }
}

/// A raw header field's value, unfolded and trimmed.
fn raw_header(message: &Message<'_>, name: &str) -> Option<String> {
    message
        .header_raw(name)
        .map(|v| v.replace("\r\n", "").replace('\n', "").trim().to_string())
}

fn addresses(out: &mut Vec<u8>, address: Option<&Address<'_>>) {
    let Some(address) = address else {
        out.extend_from_slice(b"NIL");
        return;
    };
    let mut items = Vec::new();
    let one = |items: &mut Vec<u8>, name: Option<&str>, addr: Option<&str>| {
        let (mailbox, host) = match addr {
            Some(a) => match a.rsplit_once('@') {
                Some((m, h)) => (Some(m), Some(h)),
                None => (Some(a), None),
            },
            None => (None, None),
        };
        items.push(b'(');
        header_text(items, name);
        items.extend_from_slice(b" NIL ");
        nstring(items, mailbox);
        items.push(b' ');
        nstring(items, host);
        items.push(b')');
    };
    match address {
        Address::List(list) => {
            for a in list {
                one(&mut items, a.name.as_deref(), a.address.as_deref());
            }
        }
        Address::Group(groups) => {
            for g in groups {
                if let Some(name) = g.name.as_deref() {
                    // RFC 9051: a group starts with a NIL host and the group name as mailbox.
                    items.extend_from_slice(b"(NIL NIL ");
                    string(&mut items, name.as_bytes());
                    items.extend_from_slice(b" NIL)");
                }
                for a in &g.addresses {
                    one(&mut items, a.name.as_deref(), a.address.as_deref());
                }
                if g.name.is_some() {
                    items.extend_from_slice(b"(NIL NIL NIL NIL)");
                }
            }
        }
    }
    if items.is_empty() {
        out.extend_from_slice(b"NIL");
    } else {
        out.push(b'(');
        out.extend_from_slice(&items);
        out.push(b')');
    }
}

/// Appends the ENVELOPE of `message`.
pub fn envelope(out: &mut Vec<u8>, message: &Message<'_>) {
    out.push(b'(');
    nstring(out, raw_header(message, "Date").as_deref());
    out.push(b' ');
    header_text(out, message.subject());
    out.push(b' ');
    let from = message.from();
    addresses(out, from);
    out.push(b' ');
    addresses(out, message.sender().or(from));
    out.push(b' ');
    addresses(out, message.reply_to().or(from));
    for a in [message.to(), message.cc(), message.bcc()] {
        out.push(b' ');
        addresses(out, a);
    }
    out.push(b' ');
    nstring(out, raw_header(message, "In-Reply-To").as_deref());
    out.push(b' ');
    nstring(out, raw_header(message, "Message-ID").as_deref());
    out.push(b')');
}

/// Appends MIME parameters as `("name" "value" ...)`; false (nothing written) if there are none.
fn attribute_list(out: &mut Vec<u8>, attributes: Option<&[mail_parser::Attribute<'_>]>) -> bool {
    let Some(list) = attributes.filter(|l| !l.is_empty()) else {
        return false;
    };
    out.push(b'(');
    for (i, a) in list.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        string(out, a.name.as_bytes());
        out.push(b' ');
        header_text(out, Some(&a.value));
    }
    out.push(b')');
    true
}

fn params(out: &mut Vec<u8>, part: &MessagePart<'_>, text_default: bool) {
    let attributes = part.content_type().and_then(|c| c.attributes());
    if !attribute_list(out, attributes) {
        out.extend_from_slice(if text_default {
            b"(\"charset\" \"us-ascii\")"
        } else {
            b"NIL"
        });
    }
}

fn disposition(out: &mut Vec<u8>, part: &MessagePart<'_>) {
    let Some(d) = part.content_disposition() else {
        out.extend_from_slice(b"NIL");
        return;
    };
    out.push(b'(');
    string(out, d.ctype().as_bytes());
    out.push(b' ');
    if !attribute_list(out, d.attributes()) {
        out.extend_from_slice(b"NIL");
    }
    out.push(b')');
}

/// Lines of a body, counted as Dovecot counts them: its line feeds (the CRLF before a
/// boundary belongs to the boundary, so a last line without one does not count).
fn lines(body: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', body).count()
}

/// `offset` (as mail-parser gives it: from the start of the outermost message, also for the
/// parts of an encapsulated one) relative to `message`'s own bytes.
fn rel(message: &Message<'_>, offset: u32) -> usize {
    let base = message.part(0).map_or(0, |p| p.raw_header_offset());
    offset.saturating_sub(base) as usize
}

/// The bytes of `part` from `from` to `to` (offsets as mail-parser gives them).
fn bytes<'m>(message: &'m Message<'_>, from: u32, to: u32) -> &'m [u8] {
    message
        .raw_message()
        .get(rel(message, from)..rel(message, to))
        .unwrap_or_default()
}

/// A MIME field of `part` as written (unfolded): Content-ID keeps its angle brackets and a
/// description its encoded words, as clients expect them.
fn raw_field(message: &Message<'_>, part: &MessagePart<'_>, name: &str) -> Option<String> {
    let header = part
        .headers
        .iter()
        .find(|h| h.name.as_str().eq_ignore_ascii_case(name))?;
    let value = bytes(message, header.offset_start, header.offset_end);
    let text = String::from_utf8_lossy(value)
        .replace("\r\n", "")
        .replace('\n', "");
    Some(text.trim().to_string())
}

/// Appends BODYSTRUCTURE (`extended`) or BODY of `message`.
pub fn body_structure(out: &mut Vec<u8>, message: &Message<'_>, extended: bool) {
    part_structure(out, message, 0, extended);
}

fn part_structure(out: &mut Vec<u8>, message: &Message<'_>, index: u32, extended: bool) {
    let Some(part) = message.part(index) else {
        out.extend_from_slice(b"NIL");
        return;
    };
    let body = bytes(message, part.raw_body_offset(), part.raw_end_offset());
    let (ctype, subtype) = part
        .content_type()
        .map(|c| {
            (
                c.ctype().to_ascii_lowercase(),
                c.subtype().map(str::to_ascii_lowercase),
            )
        })
        .unwrap_or_else(|| ("text".into(), Some("plain".into())));
    out.push(b'(');
    if let PartType::Multipart(children) = &part.body {
        for &child in children {
            part_structure(out, message, child, extended);
        }
        out.push(b' ');
        string(out, subtype.as_deref().unwrap_or("mixed").as_bytes());
        if extended {
            out.push(b' ');
            params(out, part, false);
            out.push(b' ');
            disposition(out, part);
            out.extend_from_slice(b" NIL NIL");
        }
        out.push(b')');
        return;
    }
    let subtype = subtype.unwrap_or_else(|| {
        if ctype == "text" {
            "plain".into()
        } else {
            "octet-stream".into()
        }
    });
    string(out, ctype.as_bytes());
    out.push(b' ');
    string(out, subtype.as_bytes());
    out.push(b' ');
    params(out, part, ctype == "text");
    out.push(b' ');
    nstring(out, raw_field(message, part, "Content-ID").as_deref());
    out.push(b' ');
    nstring(
        out,
        raw_field(message, part, "Content-Description").as_deref(),
    );
    out.push(b' ');
    let encoding = part
        .content_transfer_encoding()
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| "7bit".into());
    string(out, encoding.as_bytes());
    out.extend_from_slice(format!(" {}", body.len()).as_bytes());
    match &part.body {
        PartType::Message(nested) => {
            out.push(b' ');
            envelope(out, nested);
            out.push(b' ');
            body_structure(out, nested, extended);
            out.extend_from_slice(format!(" {}", lines(body)).as_bytes());
        }
        _ if ctype == "text" => out.extend_from_slice(format!(" {}", lines(body)).as_bytes()),
        _ => {}
    }
    if extended {
        out.extend_from_slice(b" NIL ");
        disposition(out, part);
        out.extend_from_slice(b" NIL NIL");
    }
    out.push(b')');
}

/// Where a part number leads: the message holding the part, and the part's index in it.
fn part_at<'m, 'x>(message: &'m Message<'x>, path: &[u32]) -> Option<(&'m Message<'x>, u32)> {
    let (mut current, mut index) = (message, 0u32);
    for (step, &n) in path.iter().enumerate() {
        let part = current.part(index)?;
        let nth = |children: &[u32]| children.get((n as usize).checked_sub(1)?).copied();
        match &part.body {
            PartType::Multipart(children) => index = nth(children)?,
            PartType::Message(nested) => {
                let root = nested.part(0)?;
                current = nested;
                index = match &root.body {
                    PartType::Multipart(children) => nth(children)?,
                    _ if n == 1 => 0,
                    _ => return None,
                };
            }
            // Part 1 of a message that is not multipart is its body; a leaf inside a
            // multipart answers to `.1` as itself (as Dovecot does).
            _ if n == 1 && (step == 0 || index != 0) => {}
            _ => return None,
        }
    }
    Some((current, index))
}

/// The message a part number names: the top level for none, or an encapsulated
/// `message/rfc822` part's message.
fn message_at<'m, 'x>(message: &'m Message<'x>, path: Option<&[u32]>) -> Option<&'m Message<'x>> {
    let Some(path) = path else {
        return Some(message);
    };
    let (holder, index) = part_at(message, path)?;
    match &holder.part(index)?.body {
        PartType::Message(nested) => Some(nested),
        _ => None,
    }
}

fn header_block<'a>(message: &'a Message<'_>) -> &'a [u8] {
    let end = message
        .part(0)
        .map_or(0, |p| rel(message, p.raw_body_offset()));
    message.raw_message().get(..end).unwrap_or_default()
}

/// What a body section names (RFC 9051 §6.4.5).
pub enum SectionSpec<'a> {
    /// The whole message (`BODY[]`).
    Whole,
    /// The header of the message at the part number (or the top).
    Header(Option<&'a [u32]>),
    /// Those header fields (`not`: all but those).
    HeaderFields(Option<&'a [u32]>, &'a [String], bool),
    /// The body text of the message at the part number.
    Text(Option<&'a [u32]>),
    /// A part's content.
    Part(&'a [u32]),
    /// A part's own MIME header.
    Mime(&'a [u32]),
}

/// The bytes of a section; `None` if the part does not exist (answered as empty).
pub fn section(message: &Message<'_>, spec: &SectionSpec<'_>) -> Option<Vec<u8>> {
    match spec {
        SectionSpec::Whole => Some(message.raw_message().to_vec()),
        SectionSpec::Header(path) => Some(header_block(message_at(message, *path)?).to_vec()),
        SectionSpec::HeaderFields(path, names, not) => {
            let block = header_block(message_at(message, *path)?);
            Some(select_fields(block, names, *not))
        }
        SectionSpec::Text(path) => {
            let m = message_at(message, *path)?;
            let start = header_block(m).len();
            Some(m.raw_message().get(start..).unwrap_or_default().to_vec())
        }
        SectionSpec::Part(path) => {
            let (holder, index) = part_at(message, path)?;
            let part = holder.part(index)?;
            Some(bytes(holder, part.raw_body_offset(), part.raw_end_offset()).to_vec())
        }
        SectionSpec::Mime(path) => {
            let (holder, index) = part_at(message, path)?;
            let part = holder.part(index)?;
            Some(bytes(holder, part.raw_header_offset(), part.raw_body_offset()).to_vec())
        }
    }
}

/// The header fields of `block` named (or, with `not`, not named) in `names`, and the blank
/// line that ends a header.
fn select_fields(block: &[u8], names: &[String], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut keep = false;
    for line in block.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if !matches!(line.first(), Some(b' ' | b'\t')) {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            let named = names
                .iter()
                .any(|n| n.as_bytes().eq_ignore_ascii_case(name.trim_ascii()));
            keep = named != not;
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MessageParser;

    const MIXED: &[u8] = b"From: =?utf-8?q?J=C3=B6rg?= <jorg@example.org>\r\n\
To: a@example.com, b@example.com\r\nSubject: hi\r\nMessage-ID: <1@x>\r\n\
Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
hello\r\nworld\r\n--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=a.pdf\r\n\r\nAAAA\r\n--b--\r\n";

    fn text(v: Vec<u8>) -> String {
        String::from_utf8(v).expect("utf-8")
    }

    #[test]
    fn strings_are_quoted_or_literal() {
        let mut out = Vec::new();
        string(&mut out, b"a \"b\" \\");
        out.push(b' ');
        string(&mut out, "ü".as_bytes());
        assert_eq!(text(out), "\"a \\\"b\\\" \\\\\" {2}\r\nü");
    }

    #[test]
    fn envelope_and_structure_of_a_multipart_message() {
        let message = MessageParser::default().parse(MIXED).expect("parse");
        let mut out = Vec::new();
        envelope(&mut out, &message);
        assert_eq!(
            text(out),
            "(NIL \"hi\" ((\"=?utf-8?b?SsO2cmc=?=\" NIL \"jorg\" \"example.org\")) \
((\"=?utf-8?b?SsO2cmc=?=\" NIL \"jorg\" \"example.org\")) \
((\"=?utf-8?b?SsO2cmc=?=\" NIL \"jorg\" \"example.org\")) \
((NIL NIL \"a\" \"example.com\")(NIL NIL \"b\" \"example.com\")) NIL NIL NIL \"<1@x>\")"
        );
        let mut out = Vec::new();
        body_structure(&mut out, &message, true);
        assert_eq!(
            text(out),
            "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 12 1 NIL NIL NIL NIL)\
(\"application\" \"pdf\" NIL NIL NIL \"base64\" 4 NIL (\"attachment\" (\"filename\" \"a.pdf\")) NIL NIL) \
\"mixed\" (\"boundary\" \"b\") NIL NIL NIL)"
        );
    }

    #[test]
    fn sections_by_part_number() {
        let message = MessageParser::default().parse(MIXED).expect("parse");
        let part = |path: &[u32]| section(&message, &SectionSpec::Part(path)).map(text);
        assert_eq!(part(&[1]).as_deref(), Some("hello\r\nworld"));
        assert_eq!(part(&[2]).as_deref(), Some("AAAA"));
        assert_eq!(part(&[3]), None);
        let mime = section(&message, &SectionSpec::Mime(&[1])).map(text);
        assert_eq!(mime.as_deref(), Some("Content-Type: text/plain\r\n\r\n"));
        let fields = ["subject".to_string(), "TO".to_string()];
        let picked = section(&message, &SectionSpec::HeaderFields(None, &fields, false)).map(text);
        assert_eq!(
            picked.as_deref(),
            Some("To: a@example.com, b@example.com\r\nSubject: hi\r\n\r\n")
        );
        let header = section(&message, &SectionSpec::Header(None))
            .map(text)
            .unwrap_or_default();
        assert!(header.starts_with("From:") && header.ends_with("boundary=b\r\n\r\n"));
        let single = MessageParser::default()
            .parse(b"Subject: x\r\n\r\nbody\r\n".as_slice())
            .expect("parse");
        assert_eq!(
            section(&single, &SectionSpec::Part(&[1]))
                .map(text)
                .as_deref(),
            Some("body\r\n")
        );
    }
}
