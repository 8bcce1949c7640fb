//! The signed-in user's own mail. Another user's message is indistinguishable from a missing
//! one (404).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, ErrorBody};
use crate::message::{self, AttachmentInfo};
use crate::store::{MailboxItem, flags};

/// Query of `GET /api/v1/messages`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// A folder's name from `GET /api/v1/folders`; default `INBOX`. What the caller sent
    /// through the send API is in `Sent`.
    pub folder: Option<String>,
    /// Page size; default 50, clamped to 1..=`api.max_page_size`.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[+-]?[0-9]{1,18}$")]
    pub cursor: Option<String>,
}

/// A message in a listing.
#[derive(Serialize, ToSchema)]
pub struct MessageListItem {
    /// Message id.
    pub id: String,
    /// `From:`.
    pub from: String,
    /// `To:` addresses.
    pub to: Vec<String>,
    /// Decoded subject.
    pub subject: String,
    /// `Date:` (or arrival time), RFC 3339.
    pub date: String,
    /// Size in bytes as stored.
    pub size: i64,
    /// Read flag.
    pub seen: bool,
    /// Flagged (starred).
    pub flagged: bool,
    /// Answered.
    pub answered: bool,
    /// The folder it is in.
    pub folder: String,
    /// Whether the message has attachments.
    pub has_attachments: bool,
}

/// A page of messages.
#[derive(Serialize, ToSchema)]
pub struct MessagePage {
    /// Newest first.
    pub items: Vec<MessageListItem>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A whole message.
#[derive(Serialize, ToSchema)]
pub struct MessageDetail {
    /// Message id.
    pub id: String,
    /// `From:`.
    pub from: String,
    /// `To:` addresses.
    pub to: Vec<String>,
    /// `Cc:` addresses.
    pub cc: Vec<String>,
    /// Decoded subject.
    pub subject: String,
    /// `Date:` (or arrival time), RFC 3339.
    pub date: String,
    /// `Message-ID:` without brackets.
    pub message_id: Option<String>,
    /// Plain-text body.
    pub text: Option<String>,
    /// HTML body.
    pub html: Option<String>,
    /// Attachments; fetch one at `/attachments/{n}`.
    pub attachments: Vec<AttachmentInfo>,
    /// Read flag.
    pub seen: bool,
    /// Flagged (starred).
    pub flagged: bool,
    /// Answered.
    pub answered: bool,
    /// The folder it is in.
    pub folder: String,
    /// Arrival time, RFC 3339.
    pub received_at: String,
    /// Size in bytes as stored.
    pub size: i64,
}

/// Body of `PATCH /api/v1/messages/{id}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessagePatch {
    /// New read flag (`\Seen`).
    pub seen: Option<bool>,
    /// New flagged (starred) state (`\Flagged`).
    pub flagged: Option<bool>,
    /// New answered state (`\Answered`).
    pub answered: Option<bool>,
    /// Move the message to this folder (a name from `GET /api/v1/folders`); it keeps its id.
    pub folder: Option<super::folders::FolderName>,
}

fn date_of(item: &MailboxItem) -> String {
    message::rfc3339(item.summary.date.unwrap_or(item.received_at))
}

/// The size of the message as `raw` serves it: the stored body and its `Return-Path:`.
fn raw_size(item: &MailboxItem) -> i64 {
    message::delivered_size(&item.envelope_from, item.size)
}

fn list_item(item: MailboxItem) -> MessageListItem {
    let (size, seen) = (raw_size(&item), item.seen());
    MessageListItem {
        id: item.id.to_string(),
        date: date_of(&item),
        from: item.summary.from,
        to: item.summary.to,
        subject: item.summary.subject,
        size,
        seen,
        flagged: item.flags & flags::FLAGGED != 0,
        answered: item.flags & flags::ANSWERED != 0,
        folder: item.folder,
        has_attachments: item.summary.has_attachments,
    }
}

fn parse_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>()
        .map_err(|_| ApiError::not_found(format!("message {id} not found")))
}

async fn load(state: &ApiState, caller: &Caller, id: &str) -> ApiResult<(MailboxItem, Vec<u8>)> {
    let item = state
        .stores
        .mailboxes
        .get_mailbox_item(caller.0.id, parse_id(id)?)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("message {id} not found")))?;
    let raw = state.stores.blobs.get(&item.blob_key).await?;
    Ok((item, raw))
}

/// Lists the caller's messages, newest first.
#[utoipa::path(get, path = "/api/v1/messages", tag = "messages", params(ListQuery),
    responses((status = 200, body = MessagePage), (status = 400, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<MessagePage>> {
    let limit = super::page_limit(query.limit, &state.config)?;
    let folder = query.folder.as_deref().unwrap_or("INBOX");
    let page = state
        .stores
        .mailboxes
        .list_mailbox(caller.0.id, folder, limit, query.cursor.as_deref())
        .await?;
    Ok(Json(MessagePage {
        items: page.items.into_iter().map(list_item).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One of the caller's messages, decoded.
#[utoipa::path(get, path = "/api/v1/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "Message id")),
    responses((status = 200, body = MessageDetail), (status = 404, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<MessageDetail>> {
    let (item, raw) = load(&state, &caller, &id).await?;
    let content = message::content(&raw);
    let (size, seen) = (raw_size(&item), item.seen());
    Ok(Json(MessageDetail {
        id: item.id.to_string(),
        date: date_of(&item),
        received_at: message::rfc3339(item.received_at),
        from: item.summary.from,
        to: item.summary.to,
        cc: item.summary.cc,
        subject: item.summary.subject,
        message_id: item.summary.message_id,
        text: content.text,
        html: content.html,
        attachments: content.attachments,
        seen,
        flagged: item.flags & flags::FLAGGED != 0,
        answered: item.flags & flags::ANSWERED != 0,
        folder: item.folder,
        size,
    }))
}

/// The message as stored, after a `Return-Path:` with its envelope sender (RFC 5321 §4.4).
#[utoipa::path(get, path = "/api/v1/messages/{id}/raw", tag = "messages",
    params(("id" = String, Path, description = "Message id")),
    responses((status = 200, content_type = "message/rfc822", body = Vec<u8>), (status = 404, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn raw(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let (item, raw) = load(&state, &caller, &id).await?;
    let out = message::as_delivered(&item.envelope_from, &raw);
    let mut response = ([(header::CONTENT_TYPE, "message/rfc822")], out).into_response();
    mark_untrusted(&mut response);
    Ok(response)
}

/// Content the sender wrote, served from the UI's origin: never sniffed into another type,
/// and sandboxed (no scripts, no same-origin access) should a browser render it, whatever
/// content type the sender gave an attachment (`text/html`, `image/svg+xml`, scripts).
fn mark_untrusted(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(header::HeaderValue::from_static(
            "sandbox; default-src 'none'",
        ));
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
}

/// Whether the HTML view keeps remote images.
#[derive(Deserialize, ToSchema, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RemoteImages {
    /// Drop them (the default): loading one tells the sender the mail was read.
    #[default]
    Block,
    /// Keep `http:`/`https:` images.
    Allow,
}

/// Query of `GET /api/v1/messages/{id}/html`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HtmlQuery {
    /// `block` (default) or `allow`.
    pub remote_images: Option<RemoteImages>,
}

/// The header that tells how many remote images the HTML view dropped.
const REMOTE_IMAGES_BLOCKED: &str = "x-remote-images-blocked";

/// The message's HTML part, sanitized for a sandboxed frame: no scripts, event handlers,
/// styles, forms, frames or plugins; links open a new window without referrer; remote images
/// dropped unless `remote_images=allow`; `cid:` images point at their attachment.
#[utoipa::path(get, path = "/api/v1/messages/{id}/html", tag = "messages",
    params(("id" = String, Path, description = "Message id"), HtmlQuery),
    responses(
        (status = 200, content_type = "text/html; charset=utf-8", body = String,
            description = "Sanitized HTML fragment",
            headers(("X-Remote-Images-Blocked" = u64, description = "Remote images dropped"),
                ("Content-Security-Policy" = String, description = "sandbox; no scripts; images from this server and data: (and http/https when allowed)"))),
        (status = 404, body = ErrorBody, description = "No such message, or it has no HTML part")),
    security(("basic" = []), ("bearer" = [])))]
pub async fn html(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<HtmlQuery>,
) -> ApiResult<Response> {
    let allow = query.remote_images.unwrap_or_default() == RemoteImages::Allow;
    let (item, raw) = load(&state, &caller, &id).await?;
    let message_id = item.id;
    // Parsing and sanitizing a large HTML mail is CPU work: off the async workers.
    let sanitized = tokio::task::spawn_blocking(move || {
        let body = message::html_body(&raw)?;
        let images = body
            .content_ids
            .into_iter()
            .map(|(cid, n)| {
                (
                    cid,
                    format!("/api/v1/messages/{message_id}/attachments/{n}"),
                )
            })
            .collect();
        Some(message::html::sanitize(&body.html, images, allow))
    })
    .await
    .map_err(ApiError::unavailable)?
    .ok_or_else(|| ApiError::not_found(format!("message {id} has no HTML part")))?;
    let csp = if allow {
        "sandbox; default-src 'none'; img-src 'self' data: https: http:"
    } else {
        "sandbox; default-src 'none'; img-src 'self' data:"
    };
    let blocked = sanitized.remote_images_blocked.to_string();
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, csp),
            (
                header::HeaderName::from_static(REMOTE_IMAGES_BLOCKED),
                blocked.as_str(),
            ),
        ],
        sanitized.html,
    )
        .into_response();
    mark_untrusted(&mut response);
    Ok(response)
}

/// The `n`-th attachment (from 0), decoded.
#[utoipa::path(get, path = "/api/v1/messages/{id}/attachments/{n}", tag = "messages",
    params(("id" = String, Path, description = "Message id"), ("n" = u64, Path, minimum = 0, description = "Attachment index from 0")),
    responses((status = 200, description = "The attachment's bytes with its content type"), (status = 404, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn attachment(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath((id, n)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    // Any index is a valid question; one that is not a small number has no attachment.
    let n: usize = n
        .parse()
        .map_err(|_| ApiError::not_found(format!("message {id} has no attachment {n}")))?;
    let (_, raw) = load(&state, &caller, &id).await?;
    let (info, bytes) = message::attachment(&raw, n)
        .ok_or_else(|| ApiError::not_found(format!("message {id} has no attachment {n}")))?;
    let filename = info
        .filename
        .unwrap_or_else(|| format!("attachment-{n}"))
        .replace(['"', '\\', '\r', '\n'], "_");
    let content_type = header::HeaderValue::from_str(&info.content_type)
        .unwrap_or(header::HeaderValue::from_static("application/octet-stream"));
    let disposition =
        header::HeaderValue::from_str(&format!("attachment; filename=\"{filename}\""))
            .unwrap_or(header::HeaderValue::from_static("attachment"));
    let mut response = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response();
    mark_untrusted(&mut response);
    Ok(response)
}

/// Updates flags, or moves the message to another folder.
#[utoipa::path(patch, path = "/api/v1/messages/{id}", tag = "messages", request_body = MessagePatch,
    params(("id" = String, Path, description = "Message id")),
    responses((status = 200, body = MessageListItem), (status = 404, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn patch(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<MessagePatch>,
) -> ApiResult<Json<MessageListItem>> {
    let numeric = parse_id(&id)?;
    let mailboxes = &state.stores.mailboxes;
    if let Some(super::folders::FolderName(folder)) = &body.folder {
        mailboxes.move_message(caller.0.id, numeric, folder).await?;
    }
    let (mut add, mut remove) = (0, 0);
    for (flag, on) in [
        (flags::SEEN, body.seen),
        (flags::FLAGGED, body.flagged),
        (flags::ANSWERED, body.answered),
    ] {
        match on {
            Some(true) => add |= flag,
            Some(false) => remove |= flag,
            None => {}
        }
    }
    if (add, remove) != (0, 0)
        && mailboxes
            .set_flags(caller.0.id, &[numeric], add, remove)
            .await?
            == 0
    {
        return Err(ApiError::not_found(format!("message {id} not found")));
    }
    let item = state
        .stores
        .mailboxes
        .get_mailbox_item(caller.0.id, numeric)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("message {id} not found")))?;
    Ok(Json(list_item(item)))
}

/// Deletes a message from the caller's mailbox.
#[utoipa::path(delete, path = "/api/v1/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "Message id")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn delete(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let orphans = state
        .stores
        .mailboxes
        .delete_mailbox_item(caller.0.id, parse_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("message {id} not found")))?;
    state.stores.delete_blobs(&orphans).await;
    Ok(StatusCode::NO_CONTENT)
}
