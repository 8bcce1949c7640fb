//! `POST /api/v1/send`: compose a message and accept it like SMTP submission: local
//! recipients get it in their mailbox, remote ones through the queue.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::text::Text;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

use super::ApiState;
use super::auth::{Caller, ClientIp};
use super::error::{ApiError, ApiJson, ApiResult, ErrorBody, check_len};
use super::limits;
use crate::accounts::validate_email;
use crate::inbound::checks::{Candidate, place};
use crate::inbound::commit::Incoming;
use crate::inbound::recipients::{Recipient, RecipientRefusal};
use crate::store::LocalDelivery;
use crate::store::new_id;

/// An attachment of a message to send.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendAttachment {
    /// File name.
    #[schema(pattern = "^[^\\r\\n\\u0000]*$", max_length = 255)]
    pub filename: String,
    /// MIME type; default `application/octet-stream`.
    #[schema(pattern = "^[^\\r\\n\\u0000]*/[^\\r\\n\\u0000]*$", max_length = 255)]
    pub content_type: Option<String>,
    /// The bytes, base64 (padded).
    #[schema(pattern = "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")]
    pub content_base64: String,
}

/// Body of `POST /api/v1/send`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// Sender: the caller's own address (admins: any address in a hosted domain).
    #[schema(format = Email, max_length = 254)]
    pub from: String,
    /// Recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// Copy recipients.
    #[serde(default)]
    pub cc: Vec<String>,
    /// Blind copy recipients (not shown in the headers).
    #[serde(default)]
    pub bcc: Vec<String>,
    /// Subject.
    #[serde(default)]
    #[schema(pattern = "^[^\\r\\n\\u0000]*$", max_length = 2000)]
    pub subject: String,
    /// Plain-text body.
    pub text: Option<String>,
    /// HTML body.
    pub html: Option<String>,
    /// Attachments.
    #[serde(default)]
    pub attachments: Vec<SendAttachment>,
    /// Extra headers: `X-*` and Reply-To, In-Reply-To, References, List-Id,
    /// List-Unsubscribe, List-Unsubscribe-Post, Keywords, Comments (at most 50; values
    /// at most 900 characters on one line).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Answer of `POST /api/v1/send`.
#[derive(Serialize, ToSchema)]
pub struct SendResponse {
    /// The `Message-ID:` of the new message, without brackets.
    pub message_id: String,
    /// Acceptance id (as in Received headers and the queue).
    pub id: String,
    /// Remote recipients, queued for delivery.
    pub queued: Vec<String>,
    /// Local recipients, already in their mailboxes.
    pub delivered: Vec<String>,
}

/// Extra headers callers may set besides `X-*`; the API composes every other one itself.
const ALLOWED_HEADERS: &[&str] = &[
    "reply-to",
    "in-reply-to",
    "references",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "keywords",
    "comments",
];

/// The OpenAPI pattern of an extra header name: what [`validate_header_name`] accepts.
pub const HEADER_NAME_PATTERN: &str = "^([Xx]-[!-9;-~]{1,74}|[Rr][Ee][Pp][Ll][Yy]-[Tt][Oo]|[Ii][Nn]-[Rr][Ee][Pp][Ll][Yy]-[Tt][Oo]|[Rr][Ee][Ff][Ee][Rr][Ee][Nn][Cc][Ee][Ss]|[Ll][Ii][Ss][Tt]-[Ii][Dd]|[Ll][Ii][Ss][Tt]-[Uu][Nn][Ss][Uu][Bb][Ss][Cc][Rr][Ii][Bb][Ee]|[Ll][Ii][Ss][Tt]-[Uu][Nn][Ss][Uu][Bb][Ss][Cc][Rr][Ii][Bb][Ee]-[Pp][Oo][Ss][Tt]|[Kk][Ee][Yy][Ww][Oo][Rr][Dd][Ss]|[Cc][Oo][Mm][Mm][Ee][Nn][Tt][Ss])$";

/// Padded base64 as the document's pattern describes it; unused low bits in the last
/// symbol are ignored rather than refused.
const ATTACHMENT_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Longest subject accepted, in characters.
const MAX_SUBJECT: usize = 2000;
/// Longest extra header value (it must fit a header line once folded).
const MAX_HEADER_VALUE: usize = 900;
/// Most extra headers.
const MAX_HEADERS: usize = 50;

/// Line breaks in a body as the caller wrote them (`\r\n`, `\n` or a lone `\r`) become
/// `\n`, which the composer writes as CRLF: a bare CR or LF never reaches the message, so
/// nothing downstream can split it differently (SMTP smuggling).
fn normalize_newlines(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

fn no_line_breaks(field: &str, value: &str) -> Result<(), ApiError> {
    if value.contains(['\r', '\n', '\0']) {
        return Err(ApiError::bad_request(format!(
            "`{field}` must not contain CR, LF or NUL (header injection)"
        )));
    }
    Ok(())
}

fn validate_header_name(name: &str) -> Result<(), ApiError> {
    let token = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if !token {
        return Err(ApiError::bad_request(format!(
            "`{name}` is not a valid header name"
        )));
    }
    let lower = name.to_ascii_lowercase();
    let custom = lower.len() > 2 && lower.len() <= 76 && lower.starts_with("x-");
    if !custom && !ALLOWED_HEADERS.contains(&lower.as_str()) {
        return Err(ApiError::bad_request(format!(
            "header `{name}` cannot be set: use X-* or one of Reply-To, In-Reply-To, \
             References, List-Id, List-Unsubscribe, List-Unsubscribe-Post, Keywords, Comments \
             (the server sets the others from the request fields)"
        )));
    }
    Ok(())
}

/// The body limit of the send API: a message of `smtp.max_message_size` in base64 (4/3 of
/// its size) plus `api.max_body_bytes` for the JSON around it.
pub fn body_limit(config: &crate::config::Config) -> usize {
    (config.smtp.max_message_size / 3)
        .saturating_add(1)
        .saturating_mul(4)
        .saturating_add(config.api.max_body_bytes)
}

/// Composes and sends a message.
#[utoipa::path(post, path = "/api/v1/send", tag = "messages", request_body = SendRequest,
    responses((status = 202, body = SendResponse), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn send(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    caller: Caller,
    ApiJson(req): ApiJson<SendRequest>,
) -> ApiResult<(StatusCode, Json<SendResponse>)> {
    no_line_breaks("from", &req.from)?;
    no_line_breaks("subject", &req.subject)?;
    check_len("subject", &req.subject, MAX_SUBJECT)?;
    let from = validate_email(&req.from)?;
    let accounts = state.stores.accounts.as_ref();
    if !from.eq_ignore_ascii_case(&caller.0.email) {
        let domain = from.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
        let hosted = accounts
            .list_domains()
            .await?
            .iter()
            .any(|d| d.name == domain);
        if !(caller.0.is_admin && hosted) {
            return Err(ApiError::forbidden(format!(
                "you may send only as {} (administrators: any address in a hosted domain)",
                caller.0.email
            )));
        }
    }
    let mut envelope: Vec<String> = Vec::new();
    for (field, list) in [("to", &req.to), ("cc", &req.cc), ("bcc", &req.bcc)] {
        for address in list {
            no_line_breaks(field, address)?;
            let address = validate_email(address)?;
            if !envelope.contains(&address) {
                envelope.push(address);
            }
        }
    }
    if envelope.is_empty() {
        return Err(ApiError::bad_request(
            "give at least one recipient in to, cc or bcc",
        ));
    }
    if envelope.len() > state.config.smtp.max_recipients {
        return Err(ApiError::bad_request(format!(
            "too many recipients (at most {})",
            state.config.smtp.max_recipients
        )));
    }
    if req.headers.len() > MAX_HEADERS {
        return Err(ApiError::bad_request(format!(
            "too many headers (at most {MAX_HEADERS})"
        )));
    }
    for (name, value) in &req.headers {
        check_len("headers", name, 76)?;
        validate_header_name(name)?;
        no_line_breaks(name, value)?;
        check_len(name, value, MAX_HEADER_VALUE)?;
    }
    let mut attachments = Vec::with_capacity(req.attachments.len());
    for a in &req.attachments {
        no_line_breaks("attachments.filename", &a.filename)?;
        check_len("attachments.filename", &a.filename, 255)?;
        let content_type = a
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into());
        no_line_breaks("attachments.content_type", &content_type)?;
        check_len("attachments.content_type", &content_type, 255)?;
        if !content_type.contains('/') {
            return Err(ApiError::bad_request(format!(
                "`{content_type}` is not a MIME type"
            )));
        }
        let bytes = ATTACHMENT_BASE64.decode(&a.content_base64).map_err(|e| {
            ApiError::bad_request(format!(
                "attachment `{}` is not valid base64: {e}",
                a.filename
            ))
        })?;
        attachments.push((content_type, a.filename.clone(), bytes));
    }

    // Refused before any lookup: the answer must not depend on which addresses exist.
    if let Some(wait) = state.unknown_recipients.blocked_for(caller.0.id) {
        return Err(ApiError::too_many_requests(
            format!(
                "too many messages to addresses that do not exist (at most {} in {} minutes); \
                 check the recipients and try again later",
                limits::UNKNOWN_RECIPIENTS_PER_WINDOW,
                limits::UNKNOWN_RECIPIENT_WINDOW.as_secs() / 60
            ),
            u32::try_from(wait.as_secs().max(1)).unwrap_or(u32::MAX),
        ));
    }
    let mut local = Vec::new();
    let mut remote = Vec::new();
    let mut delivered = Vec::new();
    for address in &envelope {
        // The API's callers are authenticated: they may send anywhere.
        match state.recipients.resolve(address, true).await {
            Ok(Recipient::Local(user_id)) => {
                local.push(LocalDelivery::inbox(user_id));
                delivered.push(address.clone());
            }
            Ok(Recipient::Remote) => remote.push(address.clone()),
            Err(full @ RecipientRefusal::MailboxFull(_)) => {
                return Err(ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "mailbox_full",
                    full.to_string(),
                ));
            }
            Err(unknown @ RecipientRefusal::UnknownUser(_)) => {
                state.unknown_recipients.record(caller.0.id);
                return Err(ApiError::bad_request(unknown.to_string()));
            }
            Err(RecipientRefusal::Lookup(error)) => return Err(error.into()),
            Err(other) => return Err(ApiError::unavailable(other)),
        }
    }

    let hostname = &state.config.server.hostname;
    let id = new_id();
    let message_id = format!("{id}@{hostname}");
    let mut builder = MessageBuilder::new()
        .from(Address::new_address(None::<&str>, from.as_str()))
        .subject(req.subject.as_str())
        .message_id(message_id.as_str())
        .date(chrono::Utc::now().timestamp());
    if !req.to.is_empty() {
        builder = builder.to(req
            .to
            .iter()
            .map(|a| a.trim().to_string())
            .collect::<Vec<_>>());
    }
    if !req.cc.is_empty() {
        builder = builder.cc(req
            .cc
            .iter()
            .map(|a| a.trim().to_string())
            .collect::<Vec<_>>());
    }
    for (name, value) in &req.headers {
        builder = builder.header(name.as_str(), Text::new(value.as_str()));
    }
    match (&req.text, &req.html) {
        (None, None) => builder = builder.text_body(""),
        (text, html) => {
            if let Some(text) = text {
                builder = builder.text_body(normalize_newlines(text));
            }
            if let Some(html) = html {
                builder = builder.html_body(normalize_newlines(html));
            }
        }
    }
    for (content_type, filename, bytes) in attachments {
        builder = builder.attachment(content_type, filename, bytes);
    }
    let body = builder
        .write_to_vec()
        .map_err(|e| ApiError::bad_request(format!("cannot compose the message: {e}")))?;
    // The submitter's Sent folder keeps a copy, committed with the message itself.
    local.push(LocalDelivery::sent_copy(caller.0.id));
    local.sort_unstable();
    local.dedup();
    // The same checks as SMTP's: the caller's permitted `from` is the proven identity.
    let candidate = Candidate {
        data: &body,
        envelope_from: &from,
        sender_identity: Some(&from),
        vouched: true,
        peer: std::net::SocketAddr::new(ip, 0),
        deliveries: &local,
    };
    let accepted = state.checks.run(&candidate).await.map_err(|refusal| {
        let status = if refusal.is_temporary() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::BAD_REQUEST
        };
        let code = if refusal.is_temporary() {
            "unavailable"
        } else {
            "bad_request"
        };
        ApiError::new(status, code, refusal.text)
    })?;
    place(&mut local, &accepted.placements);
    // In the form RFC 5321 §4.4 gives and parsers (SpamAssassin's among them) read: the
    // client's address, an authenticated-submission protocol word, and a comment saying how.
    let single_recipient = match envelope.as_slice() {
        [only] => Some(only.as_str()),
        _ => None,
    };
    let data = crate::message::prepare_for_storage(
        &crate::message::Arrival {
            hostname,
            helo: &crate::message::address_literal(ip),
            peer_ip: ip,
            esmtp: true,
            tls: false,
            authenticated: true,
            id: &id,
            single_recipient,
            fix_missing_headers: false,
            via: Some("via the REST API"),
        },
        &body,
        &accepted.headers,
    );
    if data.len() > state.config.smtp.max_message_size {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the message is {} bytes; the limit is {}",
                data.len(),
                state.config.smtp.max_message_size
            ),
        ));
    }
    state
        .acceptor
        .accept(Incoming {
            id: id.clone(),
            envelope_from: from.clone(),
            deliveries: local,
            remote_recipients: remote.clone(),
            data,
            sign_for: Some(from.clone()),
        })
        .await
        .map_err(|e| match e {
            crate::inbound::commit::AcceptError::Unsendable(e) => {
                ApiError::bad_request(e.to_string())
            }
            other => ApiError::unavailable(other),
        })?;
    tracing::info!(id = %id, from = %from, recipients = envelope.len(), "message submitted over the API");
    Ok((
        StatusCode::ACCEPTED,
        Json(SendResponse {
            message_id,
            id,
            queued: remote,
            delivered,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injection_and_reserved_headers_are_refused() {
        assert!(no_line_breaks("subject", "hi\r\nBcc: x@y").is_err());
        assert!(no_line_breaks("subject", "fine").is_ok());
        assert!(validate_header_name("X-Campaign").is_ok());
        assert!(validate_header_name("reply-to").is_ok());
        assert!(validate_header_name("X-").is_err());
        assert!(validate_header_name("Sender").is_err());
        assert!(validate_header_name("Content-Type").is_err());
        assert!(validate_header_name("From").is_err());
        assert!(validate_header_name("Bad Name").is_err());
        assert!(validate_header_name("Bad:Name").is_err());
    }

    #[test]
    fn bodies_lose_bare_line_breaks() {
        assert_eq!(
            normalize_newlines("outer\r.\rMAIL FROM:<a@b>\r\nx\ny"),
            "outer\n.\nMAIL FROM:<a@b>\nx\ny"
        );
    }
}
