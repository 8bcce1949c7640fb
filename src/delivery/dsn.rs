//! Delivery status notifications (RFC 3464): the bounce sent to the envelope sender when
//! delivery fails permanently, expires, or is cancelled with notification.
//!
//! A DSN is `multipart/report; report-type=delivery-status` with a human-readable part, a
//! `message/delivery-status` part with one block per failed recipient, and the original
//! headers as `text/rfc822-headers`. It is sent from the null sender, so it can never cause
//! another bounce; `Auto-Submitted: auto-replied` (RFC 3834) keeps responders quiet.

use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::MimePart;

use crate::store::Millis;

/// One recipient the report is about.
#[derive(Debug, Clone)]
pub struct FailedRecipient {
    /// The recipient address.
    pub recipient: String,
    /// Enhanced status code, e.g. `5.1.1`.
    pub status: String,
    /// What the remote server (or we) said, e.g. `550 5.1.1 User unknown`.
    pub diagnostic: String,
    /// The host that answered, if any.
    pub remote_mta: Option<String>,
}

/// What a DSN is built from.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// Our host name.
    pub reporting_mta: &'a str,
    /// The original envelope sender (the DSN's recipient).
    pub original_sender: &'a str,
    /// The original message's acceptance id.
    pub original_id: &'a str,
    /// When the original arrived.
    pub arrival: Millis,
    /// Id for the DSN's own Message-ID.
    pub dsn_id: &'a str,
    /// The original message (only its headers are included).
    pub original: &'a [u8],
    /// The failed recipients.
    pub recipients: &'a [FailedRecipient],
}

fn rfc2822(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc2822()
}

fn header_section(data: &[u8]) -> String {
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(data.len().min(64 * 1024));
    String::from_utf8_lossy(&data[..end]).into_owned()
}

/// Builds the DSN message.
pub fn build(report: &Report<'_>) -> Vec<u8> {
    let mut human = format!(
        "This is the mail system at host {}.\r\n\r\n\
         I'm sorry to have to inform you that your message could not\r\n\
         be delivered to one or more recipients.\r\n\r\n",
        report.reporting_mta
    );
    for r in report.recipients {
        human.push_str(&format!("<{}>: {}\r\n", r.recipient, r.diagnostic));
    }

    let mut status = format!(
        "Reporting-MTA: dns; {}\r\nX-MaiRust-Queue-ID: {}\r\nArrival-Date: {}\r\n",
        report.reporting_mta,
        report.original_id,
        rfc2822(report.arrival)
    );
    for r in report.recipients {
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n",
            r.recipient, r.status
        ));
        if let Some(mta) = &r.remote_mta {
            status.push_str(&format!("Remote-MTA: dns; {mta}\r\n"));
        }
        status.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", r.diagnostic));
    }

    let body = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new("text/plain", human),
            MimePart::new("message/delivery-status", status).transfer_encoding("7bit"),
            MimePart::new("text/rfc822-headers", header_section(report.original)),
        ],
    );
    let from = format!("MAILER-DAEMON@{}", report.reporting_mta);
    MessageBuilder::new()
        .from(("Mail Delivery System", from.as_str()))
        .to(report.original_sender)
        .subject("Undelivered Mail Returned to Sender")
        .message_id(format!("{}@{}", report.dsn_id, report.reporting_mta))
        .date(chrono::Utc::now().timestamp())
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied"),
        )
        .body(body)
        .write_to_vec()
        .unwrap_or_default()
}

/// Why a bounce could not be built now; the failure is kept pending and tried again, so the
/// sender is never left without a notice.
#[derive(Debug, thiserror::Error)]
pub enum BounceError {
    /// The original message could not be read.
    #[error("cannot read the original message: {0}")]
    Original(crate::store::BlobError),
    /// The sender could not be looked up.
    #[error("cannot look up the sender: {0}")]
    Sender(crate::store::StoreError),
    /// The bounce's body could not be stored.
    #[error("cannot store the bounce: {0}")]
    Store(crate::store::BlobError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders};

    #[test]
    fn dsn_is_a_delivery_status_report() {
        let original =
            b"From: alice@here.test\r\nTo: bob@remote.test\r\nSubject: hi\r\n\r\nsecret body\r\n";
        let raw = build(&Report {
            reporting_mta: "mx.here.test",
            original_sender: "alice@here.test",
            original_id: "abc",
            arrival: 1_795_514_400_000,
            dsn_id: "dsn1",
            original,
            recipients: &[FailedRecipient {
                recipient: "bob@remote.test".into(),
                status: "5.1.1".into(),
                diagnostic: "550 5.1.1 User unknown".into(),
                remote_mta: Some("mx.remote.test".into()),
            }],
        });
        let msg = MessageParser::default().parse(&raw).expect("parses");
        let ct = msg.content_type().expect("content type");
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
        assert_eq!(
            msg.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        let text = String::from_utf8_lossy(&raw);
        assert!(text.contains("Final-Recipient: rfc822; bob@remote.test"));
        assert!(text.contains("Status: 5.1.1"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 User unknown"));
        assert!(text.contains("Content-Type: text/rfc822-headers"));
        assert!(text.contains("Subject: hi"));
        assert!(
            !text.contains("secret body"),
            "only headers of the original are returned"
        );
    }
}
