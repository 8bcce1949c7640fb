//! The delivery queue for administrators. Changes go through the partition's owner, which
//! applies them under its lease.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, ApiPath, ApiQuery, ApiResult, ErrorBody, check_len};
use crate::cluster::ErrorKind;
use crate::delivery::QueueOpError;
use crate::message::rfc3339;
use crate::store::{QueueEntry, QueueFilter, QueueStatus};

/// Query of `GET /api/v1/queue`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct QueueQuery {
    /// `queued`, `deferred`, `delivered`, `failed` or `cancelled`.
    #[param(value_type = Option<QueueStatusName>, inline)]
    pub status: Option<String>,
    /// Recipient domain.
    pub domain: Option<String>,
    /// Part of the recipient address (any case), e.g. `bob@` or `example.com`.
    #[param(max_length = 254)]
    pub recipient: Option<String>,
    /// Page size; default 50, clamped to 1..=`api.max_page_size`.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[+-]?[0-9]{1,18}$")]
    pub cursor: Option<String>,
}

/// A queue status, for the OpenAPI document.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum QueueStatusName {
    /// Waiting for its first attempt.
    Queued,
    /// Waiting for a retry.
    Deferred,
    /// Accepted by the remote server.
    Delivered,
    /// Refused for good or expired.
    Failed,
    /// Cancelled by an administrator.
    Cancelled,
}

/// Query of `DELETE /api/v1/queue/{id}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CancelQuery {
    /// Send the sender a bounce (DSN).
    #[serde(default)]
    pub bounce: bool,
}

/// One queue row.
#[derive(Serialize, ToSchema)]
pub struct QueueItem {
    /// Row id.
    pub id: String,
    /// Acceptance id of the message.
    pub message_id: String,
    /// Envelope sender (empty for bounces).
    pub sender: String,
    /// Envelope recipient.
    pub recipient: String,
    /// Recipient domain.
    pub domain: String,
    /// `queued`, `deferred`, `delivered`, `failed` or `cancelled`.
    pub status: QueueStatus,
    /// Attempts made.
    pub attempts: u32,
    /// Next attempt, RFC 3339 (pending rows).
    pub next_attempt_at: Option<String>,
    /// The last error.
    pub last_error: Option<String>,
    /// Queue partition.
    pub partition: u32,
    /// Node holding the partition's lease.
    pub owner: Option<String>,
    /// When it was queued, RFC 3339.
    pub created_at: String,
    /// When it expires, RFC 3339.
    pub expires_at: String,
}

/// A page of queue rows.
#[derive(Serialize, ToSchema)]
pub struct QueuePage {
    /// Newest first.
    pub items: Vec<QueueItem>,
    /// Cursor for the next page.
    pub next_cursor: Option<String>,
}

fn item(e: QueueEntry) -> QueueItem {
    QueueItem {
        id: e.id.to_string(),
        next_attempt_at: e.status.is_pending().then(|| rfc3339(e.next_attempt_at)),
        created_at: rfc3339(e.created_at),
        expires_at: rfc3339(e.expires_at),
        message_id: e.message_id,
        sender: e.sender,
        recipient: e.recipient,
        domain: e.domain,
        status: e.status,
        attempts: e.attempts,
        last_error: e.last_error,
        partition: e.partition,
        owner: e.owner,
    }
}

impl From<QueueOpError> for ApiError {
    fn from(e: QueueOpError) -> Self {
        match e {
            QueueOpError::NotFound(_)
            | QueueOpError::Remote {
                kind: ErrorKind::NotFound,
                ..
            } => ApiError::not_found(e.to_string()),
            QueueOpError::Finished(..)
            | QueueOpError::InFlight(_)
            | QueueOpError::Remote {
                kind: ErrorKind::Conflict,
                ..
            } => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            QueueOpError::NotOwned(_)
            | QueueOpError::NoOwner(_)
            | QueueOpError::Unreachable { .. }
            | QueueOpError::Remote { .. }
            | QueueOpError::Unavailable
            | QueueOpError::Store(_)
            | QueueOpError::Commit(_)
            | QueueOpError::Bounce(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
        }
    }
}

async fn load(state: &ApiState, id: &str) -> ApiResult<QueueEntry> {
    let numeric: i64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("queue entry {id} not found")))?;
    state
        .stores
        .queue
        .queue_entry(numeric)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("queue entry {id} not found")))
}

/// Lists queue rows, newest first.
#[utoipa::path(get, path = "/api/v1/queue", tag = "queue", params(QueueQuery),
    responses((status = 200, body = QueuePage), (status = 400, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<QueueQuery>,
) -> ApiResult<Json<QueuePage>> {
    caller.require_admin()?;
    if let Some(r) = &query.recipient {
        check_len("recipient", r, 254)?;
    }
    let status = match query.status.as_deref() {
        None => None,
        Some(s) => Some(QueueStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown status `{s}`; use queued, deferred, delivered, failed or cancelled"
            ))
        })?),
    };
    let limit = super::page_limit(query.limit, &state.config)?;
    let page = state
        .stores
        .queue
        .list_queue(
            &QueueFilter {
                status,
                domain: query.domain,
                recipient: query.recipient.filter(|r| !r.is_empty()),
            },
            limit,
            query.cursor.as_deref(),
        )
        .await?;
    Ok(Json(QueuePage {
        items: page.items.into_iter().map(item).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One queue row.
#[utoipa::path(get, path = "/api/v1/queue/{id}", tag = "queue",
    params(("id" = String, Path, description = "Queue row id")),
    responses((status = 200, body = QueueItem), (status = 404, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<QueueItem>> {
    caller.require_admin()?;
    Ok(Json(item(load(&state, &id).await?)))
}

/// Makes a pending row due now.
#[utoipa::path(post, path = "/api/v1/queue/{id}/retry", tag = "queue",
    params(("id" = String, Path, description = "Queue row id")),
    responses((status = 200, body = QueueItem), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn retry(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<QueueItem>> {
    caller.require_admin()?;
    let entry = load(&state, &id).await?;
    state.queue.retry(entry.partition, entry.id).await?;
    tracing::info!(id = entry.id, by = %caller.0.email, "queue entry retry requested");
    Ok(Json(item(load(&state, &id).await?)))
}

/// Cancels a pending row; with `?bounce=true` the sender gets a DSN.
#[utoipa::path(delete, path = "/api/v1/queue/{id}", tag = "queue",
    params(("id" = String, Path, description = "Queue row id"), CancelQuery),
    responses((status = 200, body = QueueItem), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn cancel(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<CancelQuery>,
) -> ApiResult<Json<QueueItem>> {
    caller.require_admin()?;
    let entry = load(&state, &id).await?;
    state
        .queue
        .cancel(entry.partition, entry.id, query.bounce)
        .await?;
    tracing::info!(id = entry.id, bounce = query.bounce, by = %caller.0.email, "queue entry cancelled");
    Ok(Json(item(load(&state, &id).await?)))
}
