//! `GET /api/v1/trace`: what happened to a message (admin only).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, ApiQuery, ApiResult, ErrorBody, check_len};
use crate::message::{rfc3339, rfc3339_millis};
use crate::store::{AttemptRecord, QueueEntry, TraceMessage};

/// Most messages one trace lists (a Message-ID header can be reused).
const MAX_MESSAGES: u32 = 20;

/// Query of `GET /api/v1/trace`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TraceQuery {
    /// A queue id, an internal message id, or a `Message-ID:` header (brackets optional).
    #[param(min_length = 1, max_length = 998)]
    pub q: String,
}

/// The messages the query names, newest first.
#[derive(Serialize, ToSchema)]
pub struct Trace {
    /// At most 20.
    pub messages: Vec<TracedMessage>,
}

/// A message and its deliveries.
#[derive(Serialize, ToSchema)]
pub struct TracedMessage {
    /// Internal message id.
    pub id: String,
    /// `Message-ID:` without brackets.
    pub message_id: Option<String>,
    /// `From:` header.
    pub from: String,
    /// Envelope sender (empty for a bounce).
    pub envelope_from: String,
    /// Arrival, RFC 3339.
    pub received_at: String,
    /// Stored size in bytes.
    pub size: i64,
    /// Local mailboxes it was delivered to.
    pub local_recipients: Vec<String>,
    /// One entry per remote recipient.
    pub remote: Vec<RemoteDelivery>,
}

/// A remote recipient's queue row and its attempts.
#[derive(Serialize, ToSchema)]
pub struct RemoteDelivery {
    /// Queue row id (as in `/api/v1/queue`).
    pub queue_id: String,
    /// Recipient address.
    pub recipient: String,
    /// `queued`, `deferred`, `delivered`, `failed` or `cancelled`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// Next attempt, RFC 3339 (meaningful while pending).
    pub next_attempt_at: String,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Every attempt, oldest first.
    pub history: Vec<AttemptView>,
}

/// One attempt.
#[derive(Serialize, ToSchema)]
pub struct AttemptView {
    /// When it ended, RFC 3339 with milliseconds.
    pub attempted_at: String,
    /// `delivered`, `deferred`, `failed` or `bounced`.
    pub outcome: String,
    /// The remote reply or the error (at most 1 KB).
    pub detail: String,
    /// The node that made it.
    pub node: String,
}

fn attempt_view(a: AttemptRecord) -> AttemptView {
    AttemptView {
        attempted_at: rfc3339_millis(a.attempted_at),
        outcome: a.outcome,
        detail: a.detail,
        node: a.node,
    }
}

fn remote_view((entry, history): (QueueEntry, Vec<AttemptRecord>)) -> RemoteDelivery {
    RemoteDelivery {
        queue_id: entry.id.to_string(),
        recipient: entry.recipient,
        status: entry.status.as_str().to_string(),
        attempts: entry.attempts,
        next_attempt_at: rfc3339(entry.next_attempt_at),
        last_error: entry.last_error,
        history: history.into_iter().map(attempt_view).collect(),
    }
}

fn message_view(m: TraceMessage) -> TracedMessage {
    TracedMessage {
        id: m.id,
        message_id: m.message_id,
        from: m.from,
        envelope_from: m.envelope_from,
        received_at: rfc3339(m.received_at),
        size: m.size,
        local_recipients: m.local_recipients,
        remote: m.remote.into_iter().map(remote_view).collect(),
    }
}

/// What happened to a message: where it was delivered locally, and each remote recipient's
/// queue row with its attempts (admin only).
#[utoipa::path(get, path = "/api/v1/trace", tag = "queue", params(TraceQuery),
    responses((status = 200, body = Trace), (status = 404, body = ErrorBody, description = "Nothing matches")),
    security(("basic" = []), ("bearer" = [])))]
pub async fn trace(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<TraceQuery>,
) -> ApiResult<Json<Trace>> {
    caller.require_admin()?;
    check_len("q", &query.q, 998)?;
    if query.q.trim().is_empty() {
        return Err(ApiError::bad_request(
            "q must name a queue id, message id or Message-ID",
        ));
    }
    let messages = state.stores.queue.trace(&query.q, MAX_MESSAGES).await?;
    if messages.is_empty() {
        return Err(ApiError::not_found(format!(
            "no message or queue row matches `{}`",
            query.q.trim()
        )));
    }
    Ok(Json(Trace {
        messages: messages.into_iter().map(message_view).collect(),
    }))
}
