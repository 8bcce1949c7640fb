//! Message content: trace headers added at acceptance, and the fields the API shows, parsed
//! with mail-parser (MIME, RFC 2047 encoded words, charsets).

pub mod html;
pub mod wire;

use std::borrow::Cow;

use mail_parser::{Address, HeaderName, HeaderValue, MessageParser, MimeHeaders};

use crate::store::MessageSummary;

/// How a message arrived, for its `Received:` header (RFC 5321 §4.4, RFC 3848).
#[derive(Debug, Clone)]
pub struct Arrival<'a> {
    /// Our host name.
    pub hostname: &'a str,
    /// The client's EHLO/HELO name.
    pub helo: &'a str,
    /// The client's address.
    pub peer_ip: std::net::IpAddr,
    /// ESMTP (EHLO) rather than SMTP (HELO).
    pub esmtp: bool,
    /// Over TLS.
    pub tls: bool,
    /// Authenticated.
    pub authenticated: bool,
    /// Acceptance id.
    pub id: &'a str,
    /// The sole recipient, if there is exactly one (never reveal a list of BCCs).
    pub single_recipient: Option<&'a str>,
    /// Whether to add `Message-ID:` and `Date:` when missing (submissions).
    pub fix_missing_headers: bool,
    /// A comment after the id saying how the message came, when not over SMTP.
    pub via: Option<&'a str>,
}

/// An address as a `Received:` line's client name when there is no HELO name: an address
/// literal (RFC 5321 §4.1.3).
pub fn address_literal(ip: std::net::IpAddr) -> String {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => format!("[{v4}]"),
        std::net::IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// Header fields a client must not set, dropped from every incoming message (Postfix's
/// `message_drop_headers` default): `Bcc:`/`Resent-Bcc:` would show every recipient the
/// blind copies, `Return-Path:` is added at final delivery from the envelope (RFC 5321
/// §4.4), and `Content-Length:` could make a reader see a different end of the message.
/// `Delivered-To:` is kept: other hosts add it for loop detection.
pub const DROPPED_HEADERS: &[&str] = &["bcc", "resent-bcc", "return-path", "content-length"];

/// Returns the message as stored: `Received:` first, then the `added` header lines (the
/// inbound checks'), then (for submissions) a `Message-ID:` and a `Date:` if the client sent
/// none, then the client's data without the [`DROPPED_HEADERS`] fields, otherwise unchanged.
pub fn prepare_for_storage(arrival: &Arrival<'_>, data: &[u8], added: &[String]) -> Vec<u8> {
    let now = chrono::Utc::now();
    let protocol = match (arrival.esmtp, arrival.tls, arrival.authenticated) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "ESMTPA",
        (true, true, true) => "ESMTPSA",
    };
    let helo = sanitize(arrival.helo);
    let mut out = Vec::with_capacity(data.len() + 512);
    out.extend_from_slice(
        format!(
            "Received: from {helo} ([{}])\r\n\tby {} (MaiRust) with {protocol} id {}",
            arrival.peer_ip, arrival.hostname, arrival.id
        )
        .as_bytes(),
    );
    if let Some(via) = arrival.via {
        out.extend_from_slice(format!("\r\n\t({})", sanitize(via)).as_bytes());
    }
    if let Some(rcpt) = arrival.single_recipient {
        out.extend_from_slice(format!("\r\n\tfor <{}>", sanitize(rcpt)).as_bytes());
    }
    out.extend_from_slice(format!(";\r\n\t{}\r\n", now.to_rfc2822()).as_bytes());
    for line in added {
        out.extend_from_slice(line.as_bytes());
    }
    if arrival.fix_missing_headers {
        let headers = header_section(data);
        if !has_header(headers, "message-id") {
            out.extend_from_slice(
                format!("Message-ID: <{}@{}>\r\n", arrival.id, arrival.hostname).as_bytes(),
            );
        }
        if !has_header(headers, "date") {
            out.extend_from_slice(format!("Date: {}\r\n", now.to_rfc2822()).as_bytes());
        }
    }
    out.extend_from_slice(&strip_client_headers(data));
    out
}

/// `data` without the [`DROPPED_HEADERS`] fields (and their continuation lines) of its
/// header section; the body and every other byte are untouched.
pub fn strip_client_headers(data: &[u8]) -> Cow<'_, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let mut pos = 0;
    let mut dropping = false;
    while pos < data.len() {
        let end = data[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(data.len(), |i| pos + i + 1);
        let line = &data[pos..end];
        if line == b"\r\n" || line == b"\n" {
            break; // the empty line that ends the header section
        }
        if !matches!(line[0], b' ' | b'\t') {
            dropping = is_dropped_field(line);
        }
        if dropping {
            out.get_or_insert_with(|| data[..pos].to_vec());
        } else if let Some(out) = out.as_mut() {
            out.extend_from_slice(line);
        }
        pos = end;
    }
    match out {
        None => Cow::Borrowed(data),
        Some(mut out) => {
            out.extend_from_slice(&data[pos..]);
            Cow::Owned(out)
        }
    }
}

/// The header line starts a field named in [`DROPPED_HEADERS`] (`Bcc :` included, the
/// obsolete syntax of RFC 5322 §4.5).
fn is_dropped_field(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = line[..colon].trim_ascii_end();
    DROPPED_HEADERS
        .iter()
        .any(|d| name.eq_ignore_ascii_case(d.as_bytes()))
}

/// `Return-Path: <sender>` for the envelope sender (empty for the null sender), as final
/// delivery adds it (RFC 5321 §4.4). MaiRust stores one body for every recipient and adds
/// this line when a mailbox copy is read, so the body stays content-addressed and shared.
pub fn return_path_line(envelope_from: &str) -> String {
    format!("Return-Path: <{}>\r\n", sanitize(envelope_from))
}

/// A stored message as mail clients and the API get it: its `Return-Path:` line, then the
/// stored bytes.
pub fn as_delivered(envelope_from: &str, stored: &[u8]) -> Vec<u8> {
    let mut out = return_path_line(envelope_from).into_bytes();
    out.extend_from_slice(stored);
    out
}

/// The length of [`as_delivered`] for a stored body of `size` bytes.
pub fn delivered_size(envelope_from: &str, size: i64) -> i64 {
    let line = return_path_line(envelope_from).len();
    size.saturating_add(i64::try_from(line).unwrap_or(0))
}

/// What makes a header section unsafe to check, sign and send: readers would not agree on
/// its fields, so a check could pass on fields other than those a recipient sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderProblem {
    /// A CR or LF that is not part of a CRLF pair.
    #[error("bare CR or LF in the header section; use CRLF line endings")]
    BareLineBreak,
    /// A NUL octet (`From\0:` is a From field to some readers and not to others).
    #[error("NUL in the header section")]
    Nul,
    /// A line that is neither `name: value` (the name printable US-ASCII) nor a continuation.
    #[error("header line {0} is not a field (name: value) or a continuation line")]
    NotAField(usize),
    /// RFC 5322 §3.6 allows one `From:` field; with two, readers pick different ones.
    #[error("more than one From header field")]
    SeveralFroms,
}

/// Checks the header section of a message whose sender is vouched for (submission, a trusted
/// network, the API) before its fields are checked and it is signed: every line a field or a
/// continuation, CRLF line breaks only, no NUL, one `From:` at most.
pub fn check_header_section(data: &[u8]) -> Result<(), HeaderProblem> {
    let mut froms = 0;
    let mut rest = data;
    let mut number = 0;
    while !rest.is_empty() {
        number += 1;
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(at) if at > 0 && rest[at - 1] == b'\r' => (&rest[..at - 1], &rest[at + 1..]),
            Some(_) => return Err(HeaderProblem::BareLineBreak),
            None => (rest, &rest[rest.len()..]),
        };
        if line.is_empty() {
            break; // the empty line that ends the header section
        }
        if line.contains(&b'\r') {
            return Err(HeaderProblem::BareLineBreak);
        }
        if line.contains(&0) {
            return Err(HeaderProblem::Nul);
        }
        if !matches!(line[0], b' ' | b'\t') {
            let name = line
                .iter()
                .position(|&b| b == b':')
                .map(|colon| line[..colon].trim_ascii_end())
                .filter(|name| !name.is_empty() && name.iter().all(|b| (33..=126).contains(b)))
                .ok_or(HeaderProblem::NotAField(number))?;
            if name.eq_ignore_ascii_case(b"from") {
                froms += 1;
                if froms > 1 {
                    return Err(HeaderProblem::SeveralFroms);
                }
            }
        }
        rest = next;
    }
    Ok(())
}

/// The addresses in the `From:` and `Sender:` fields of `data` that are not `owner`. A
/// field that holds no address at all, or one the parser does not see as such (`From :`),
/// is listed as well, so that it is refused too.
pub fn foreign_senders(data: &[u8], owner: &str) -> Vec<String> {
    let raw_fields = header_field_names(data)
        .filter(|name| name.eq_ignore_ascii_case(b"from") || name.eq_ignore_ascii_case(b"sender"))
        .count();
    let Some(msg) = MessageParser::default().parse_headers(data) else {
        return if raw_fields == 0 {
            Vec::new()
        } else {
            vec!["(unreadable header)".to_owned()]
        };
    };
    let mut foreign = Vec::new();
    let mut parsed_fields = 0;
    for name in [HeaderName::From, HeaderName::Sender] {
        for value in msg.header_values(name) {
            parsed_fields += 1;
            let mut found = false;
            if let HeaderValue::Address(address) = value {
                for addr in address.iter() {
                    found = true;
                    match addr.address() {
                        Some(a) if a.trim().eq_ignore_ascii_case(owner) => {}
                        Some(a) => foreign.push(a.to_string()),
                        None => foreign.push(display(addr).unwrap_or_default()),
                    }
                }
            }
            if !found {
                foreign.push("(no address)".to_owned());
            }
        }
    }
    if raw_fields > parsed_fields {
        // A reader might take a field for From that the parser did not.
        foreign.push("(unreadable header)".to_owned());
    }
    foreign
}

/// The names of the header fields of `data` (before the first empty line), as written
/// (trailing white space before the colon trimmed).
fn header_field_names(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n')
        .take_while(|line| !line.is_empty() && *line != b"\r")
        .filter(|line| !matches!(line.first(), Some(b' ' | b'\t')))
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            Some(line[..colon].trim_ascii_end())
        })
}

/// Keeps client-supplied text from breaking the header it is written into.
fn sanitize(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(255).collect()
}

fn header_section(data: &[u8]) -> &[u8] {
    if data.starts_with(b"\r\n") {
        return &[];
    }
    match data.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &data[..end + 2],
        None => data,
    }
}

fn has_header(headers: &[u8], name: &str) -> bool {
    headers.split(|&b| b == b'\n').any(|line| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
            && line[name.len()] == b':'
    })
}

fn display(addr: &mail_parser::Addr<'_>) -> Option<String> {
    match (addr.name(), addr.address()) {
        (Some(name), Some(address)) if !name.is_empty() => Some(format!("{name} <{address}>")),
        (_, Some(address)) => Some(address.to_string()),
        (Some(name), None) => Some(name.to_string()),
        (None, None) => None,
    }
}

fn addresses(addr: Option<&Address<'_>>) -> Vec<String> {
    addr.map(|a| a.iter().filter_map(display).collect())
        .unwrap_or_default()
}

/// Parses the fields the mailbox listing shows. Unparseable input yields empty fields, never
/// an error: the message was accepted and must stay readable raw.
pub fn summarize(data: &[u8]) -> MessageSummary {
    let Some(msg) = MessageParser::default().parse(data) else {
        return MessageSummary::default();
    };
    // Decoded header text may hold a NUL (`=?utf-8?q?=00?=`), which PostgreSQL cannot store:
    // such a message would never commit. The listed fields drop it; the body keeps it.
    let clean = |s: &str| s.replace('\0', "");
    let clean_all = |v: Vec<String>| v.iter().map(|s| clean(s)).collect();
    MessageSummary {
        from: clean(&addresses(msg.from()).into_iter().next().unwrap_or_default()),
        to: clean_all(addresses(msg.to())),
        cc: clean_all(addresses(msg.cc())),
        subject: clean(msg.subject().unwrap_or_default()),
        date: msg.date().map(|d| d.to_timestamp() * 1000),
        message_id: msg.message_id().map(clean),
        has_attachments: msg.attachment_count() > 0,
    }
}

/// The domain of the `From:` address, lower case.
pub fn from_domain(data: &[u8]) -> Option<String> {
    let msg = MessageParser::default().parse_headers(data)?;
    let address = msg.from()?.first()?.address()?;
    address
        .rsplit_once('@')
        .map(|(_, domain)| domain.to_ascii_lowercase())
}

/// One attachment's description.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AttachmentInfo {
    /// File name, if the sender gave one.
    pub filename: Option<String>,
    /// MIME type, e.g. `application/pdf`.
    pub content_type: String,
    /// Decoded size in bytes.
    pub size: usize,
}

/// A message's readable content.
#[derive(Debug, Clone)]
pub struct Content {
    /// First text/plain body (or text converted from HTML).
    pub text: Option<String>,
    /// First text/html body.
    pub html: Option<String>,
    /// Attachments, in order.
    pub attachments: Vec<AttachmentInfo>,
}

fn content_type_of(part: &mail_parser::MessagePart<'_>) -> String {
    part.content_type()
        .map(|ct| match ct.subtype() {
            Some(sub) => format!("{}/{}", ct.ctype(), sub),
            None => ct.ctype().to_string(),
        })
        .unwrap_or_else(|| "application/octet-stream".into())
        .to_ascii_lowercase()
}

/// Parses bodies and attachments for the message view.
pub fn content(data: &[u8]) -> Content {
    let Some(msg) = MessageParser::default().parse(data) else {
        return Content {
            text: Some(String::from_utf8_lossy(data).into_owned()),
            html: None,
            attachments: Vec::new(),
        };
    };
    let html = msg
        .html_bodies()
        .next()
        .filter(|p| p.is_content_type("text", "html"))
        .and_then(|_| msg.body_html(0))
        .map(|s| s.into_owned());
    Content {
        text: msg.body_text(0).map(|s| s.into_owned()),
        html,
        attachments: msg
            .attachments()
            .map(|part| AttachmentInfo {
                filename: part.attachment_name().map(str::to_string),
                content_type: content_type_of(part),
                size: part.contents().len(),
            })
            .collect(),
    }
}

/// The `n`-th attachment (0-based): its description and decoded bytes.
pub fn attachment(data: &[u8], n: usize) -> Option<(AttachmentInfo, Vec<u8>)> {
    let msg = MessageParser::default().parse(data)?;
    let part = msg.attachments().nth(n)?;
    Some((
        AttachmentInfo {
            filename: part.attachment_name().map(str::to_string),
            content_type: content_type_of(part),
            size: part.contents().len(),
        },
        part.contents().to_vec(),
    ))
}

/// A message's HTML body and the Content-IDs of its attachments, for the HTML view.
#[derive(Debug, Clone)]
pub struct HtmlBody {
    /// First text/html body, decoded.
    pub html: String,
    /// `(Content-ID without angle brackets, attachment index)` for each attachment that has one.
    pub content_ids: Vec<(String, usize)>,
}

/// The first text/html body and the attachments' Content-IDs, or `None` when the message has
/// no HTML part (an HTML body that mail-parser converted from text does not count).
pub fn html_body(data: &[u8]) -> Option<HtmlBody> {
    let msg = MessageParser::default().parse(data)?;
    msg.html_bodies()
        .next()
        .filter(|p| p.is_content_type("text", "html"))?;
    let html = msg.body_html(0)?.into_owned();
    let content_ids = msg
        .attachments()
        .enumerate()
        .filter_map(|(n, part)| {
            let id = part
                .content_id()?
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>');
            (!id.is_empty()).then(|| (id.to_string(), n))
        })
        .collect();
    Some(HtmlBody { html, content_ids })
}

pub use crate::store::{rfc3339, rfc3339_millis};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_fields_never_carry_a_nul() {
        let raw = b"From: =?utf-8?q?a=00b?= <a@x.test>\r\nSubject: =?utf-8?q?hi=00there?=\r\n\r\nbody\r\n";
        let summary = summarize(raw);
        assert_eq!(summary.subject, "hithere");
        assert!(!summary.from.contains('\0'), "{:?}", summary.from);
    }

    fn arrival<'a>(fix: bool) -> Arrival<'a> {
        Arrival {
            hostname: "mx.example.test",
            helo: "client.example",
            peer_ip: [127, 0, 0, 1].into(),
            esmtp: true,
            tls: true,
            authenticated: true,
            id: "abc123",
            single_recipient: Some("bob@example.test"),
            fix_missing_headers: fix,
            via: None,
        }
    }

    #[test]
    fn client_headers_that_must_not_pass_are_dropped() {
        let data = b"Bcc: secret@x.test,\r\n other@x.test\r\nFrom: a@b\r\nReturn-Path: <forged@x>\r\n\
Content-Length: 3\r\nresent-bcc : y@x\r\nSubject: Bcc: kept\r\nDelivered-To: d@x\r\n\r\nBcc: body line\r\n";
        let out = strip_client_headers(data);
        assert_eq!(
            &*out,
            &b"From: a@b\r\nSubject: Bcc: kept\r\nDelivered-To: d@x\r\n\r\nBcc: body line\r\n"[..]
        );
        let clean = b"From: a@b\r\n\r\nx\r\n";
        assert!(matches!(strip_client_headers(clean), Cow::Borrowed(_)));
        assert_eq!(&*strip_client_headers(b""), b"");
        assert_eq!(&*strip_client_headers(b"Bcc: x"), b"");
        let stored = prepare_for_storage(&arrival(false), data, &[]);
        assert!(!String::from_utf8_lossy(&stored).contains("secret"));
    }

    #[test]
    fn return_path_carries_the_envelope_sender() {
        assert_eq!(return_path_line("a@b.test"), "Return-Path: <a@b.test>\r\n");
        assert_eq!(return_path_line(""), "Return-Path: <>\r\n");
        assert_eq!(return_path_line("a\r\nX: y"), "Return-Path: <aX: y>\r\n");
    }

    #[test]
    fn senders_in_from_and_sender_must_be_the_owner() {
        let own = "alice@example.test";
        assert!(foreign_senders(b"From: Alice <ALICE@example.test>\r\n\r\nx", own).is_empty());
        assert!(foreign_senders(b"Subject: none\r\n\r\nx", own).is_empty());
        assert_eq!(
            foreign_senders(b"From: ceo@other.test\r\n\r\nx", own),
            vec!["ceo@other.test"]
        );
        assert_eq!(
            foreign_senders(b"From: alice@example.test, ceo@other.test\r\n\r\nx", own),
            vec!["ceo@other.test"]
        );
        assert_eq!(
            foreign_senders(
                b"From: alice@example.test\r\nSender: ceo@other.test\r\n\r\nx",
                own
            ),
            vec!["ceo@other.test"]
        );
        assert_eq!(
            foreign_senders(
                b"From: alice@example.test\r\nFrom: ceo@other.test\r\n\r\nx",
                own
            ),
            vec!["ceo@other.test"]
        );
        assert_eq!(
            foreign_senders(
                b"From: \"alice@example.test\" <ceo@other.test>\r\n\r\nx",
                own
            ),
            vec!["ceo@other.test"]
        );
        assert!(!foreign_senders(b"From: undisclosed:;\r\n\r\nx", own).is_empty());
        assert!(
            !foreign_senders(
                b"From: alice@example.test\r\nFROM : ceo@other.test\r\n\r\nx",
                own
            )
            .is_empty()
        );
        // Only the header section counts.
        assert!(
            foreign_senders(
                b"From: alice@example.test\r\n\r\nFrom: ceo@other.test\r\n",
                own
            )
            .is_empty()
        );
    }

    #[test]
    fn header_sections_readers_could_disagree_on_are_found() {
        let ok = b"From: a@x.test\r\nSubject: s\r\n folded\r\nResent-From: b@x.test\r\n\r\nFrom: body\r\n\n\0";
        assert_eq!(check_header_section(ok), Ok(()));
        assert_eq!(check_header_section(b"From : a@x.test\r\n\r\n"), Ok(()));
        assert_eq!(check_header_section(b""), Ok(()));
        assert_eq!(check_header_section(b"Subject: no body"), Ok(()));
        for (data, problem) in [
            (
                &b"Subject: hi\rFrom: b@x.test\r\n\r\nx\r\n"[..],
                HeaderProblem::BareLineBreak,
            ),
            (
                b"Subject: hi\nFrom: b@x.test\r\n\r\n",
                HeaderProblem::BareLineBreak,
            ),
            (b"Subject: hi\r", HeaderProblem::BareLineBreak),
            (b"From\0: b@x.test\r\n\r\n", HeaderProblem::Nul),
            (b"Subject: a\0b\r\n\r\n", HeaderProblem::Nul),
            (
                b"Subject: a\r\nno colon here\r\n\r\n",
                HeaderProblem::NotAField(2),
            ),
            (b": empty name\r\n\r\n", HeaderProblem::NotAField(1)),
            (b"Fr\x01om: b@x.test\r\n\r\n", HeaderProblem::NotAField(1)),
            (b"Fr om: b@x.test\r\n\r\n", HeaderProblem::NotAField(1)),
            (
                b"From: a@x.test\r\nFROM: b@x.test\r\n\r\n",
                HeaderProblem::SeveralFroms,
            ),
        ] {
            assert_eq!(
                check_header_section(data),
                Err(problem.clone()),
                "{}",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[test]
    fn the_checks_header_lines_follow_received() {
        let added = ["Authentication-Results: mx.example.test; none\r\n".to_string()];
        let out = prepare_for_storage(&arrival(false), b"Subject: x\r\n\r\nhi\r\n", &added);
        let text = String::from_utf8(out).expect("utf8");
        let received_end = text.find(";\r\n\t").expect("date") + 3;
        let line_end = text[received_end..].find("\r\n").expect("date line") + received_end + 2;
        assert!(
            text[line_end..]
                .starts_with("Authentication-Results: mx.example.test; none\r\nSubject: x"),
            "{text}"
        );
    }

    #[test]
    fn received_header_comes_first() {
        let out = prepare_for_storage(&arrival(false), b"Subject: x\r\n\r\nhi\r\n", &[]);
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with("Received: from client.example ([127.0.0.1])\r\n\tby mx.example.test (MaiRust) with ESMTPSA id abc123\r\n\tfor <bob@example.test>;"), "{text}");
        assert!(text.ends_with("Subject: x\r\n\r\nhi\r\n"));
        assert!(!text.contains("Message-ID"));
    }

    #[test]
    fn submissions_get_message_id_and_date_when_missing() {
        let out = prepare_for_storage(&arrival(true), b"Subject: x\r\n\r\nhi\r\n", &[]);
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("Message-ID: <abc123@mx.example.test>\r\n"));
        assert!(text.contains("\r\nDate: "));
        let kept = prepare_for_storage(
            &arrival(true),
            b"Message-Id: <a@b>\r\nDATE: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nhi\r\n",
            &[],
        );
        let text = String::from_utf8(kept).expect("utf8");
        assert_eq!(text.matches("Message-I").count(), 1);
        assert_eq!(text.to_ascii_lowercase().matches("\ndate:").count(), 1);
    }

    #[test]
    fn header_fields_are_decoded() {
        let raw = b"From: =?UTF-8?B?SsO8cmdlbg==?= <j@example.test>\r\n\
To: a@example.test, B <b@example.test>\r\n\
Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\n\
Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <m1@example.test>\r\n\r\nHello\r\n";
        let s = summarize(raw);
        assert_eq!(s.from, "Jürgen <j@example.test>");
        assert_eq!(s.to, vec!["a@example.test", "B <b@example.test>"]);
        assert_eq!(s.subject, "Grüße");
        assert_eq!(s.message_id.as_deref(), Some("m1@example.test"));
        assert_eq!(s.date, Some(1_795_514_400_000));
        assert!(!s.has_attachments);
    }

    #[test]
    fn attachments_are_listed_and_extracted() {
        let raw = b"From: a@example.test\r\nSubject: files\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
Content-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n\
Content-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQ=\r\n--b--\r\n";
        assert!(summarize(raw).has_attachments);
        let c = content(raw);
        assert_eq!(c.text.as_deref().map(str::trim), Some("see attached"));
        assert_eq!(c.attachments.len(), 1);
        assert_eq!(c.attachments[0].filename.as_deref(), Some("r.pdf"));
        assert_eq!(c.attachments[0].content_type, "application/pdf");
        let (info, bytes) = attachment(raw, 0).expect("attachment 0");
        assert_eq!(bytes, b"%PDF-1.4");
        assert_eq!(info.size, 8);
        assert!(attachment(raw, 1).is_none());
    }
}
