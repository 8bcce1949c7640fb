//! Message content: trace headers added at acceptance, and the fields the API shows, parsed
//! with mail-parser (MIME, RFC 2047 encoded words, charsets).

use mail_parser::{Address, MessageParser, MimeHeaders};

use crate::store::{MessageSummary, Millis};

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
}

/// Returns the message as stored: `Received:` first, then (for submissions) a `Message-ID:`
/// and a `Date:` if the client sent none, then the client's data unchanged.
pub fn prepare_for_storage(arrival: &Arrival<'_>, data: &[u8]) -> Vec<u8> {
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
    if let Some(rcpt) = arrival.single_recipient {
        out.extend_from_slice(format!("\r\n\tfor <{}>", sanitize(rcpt)).as_bytes());
    }
    out.extend_from_slice(format!(";\r\n\t{}\r\n", now.to_rfc2822()).as_bytes());
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
    out.extend_from_slice(data);
    out
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
    MessageSummary {
        from: addresses(msg.from()).into_iter().next().unwrap_or_default(),
        to: addresses(msg.to()),
        cc: addresses(msg.cc()),
        subject: msg.subject().unwrap_or_default().to_string(),
        date: msg.date().map(|d| d.to_timestamp() * 1000),
        message_id: msg.message_id().map(str::to_string),
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

/// A [`Millis`] as RFC 3339 text.
pub fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
    }

    #[test]
    fn received_header_comes_first() {
        let out = prepare_for_storage(&arrival(false), b"Subject: x\r\n\r\nhi\r\n");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with("Received: from client.example ([127.0.0.1])\r\n\tby mx.example.test (MaiRust) with ESMTPSA id abc123\r\n\tfor <bob@example.test>;"), "{text}");
        assert!(text.ends_with("Subject: x\r\n\r\nhi\r\n"));
        assert!(!text.contains("Message-ID"));
    }

    #[test]
    fn submissions_get_message_id_and_date_when_missing() {
        let out = prepare_for_storage(&arrival(true), b"Subject: x\r\n\r\nhi\r\n");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("Message-ID: <abc123@mx.example.test>\r\n"));
        assert!(text.contains("\r\nDate: "));
        let kept = prepare_for_storage(
            &arrival(true),
            b"Message-Id: <a@b>\r\nDATE: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nhi\r\n",
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
