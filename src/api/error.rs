//! API errors: every failure is `{"error": {"code", "message"}}` with a fitting status.

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::{BlobError, StoreError};

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
    /// A 401 carries the Basic challenge, except for browsers' sessions: a browser answers
    /// that challenge with its login dialog, and then sends the cached password by itself
    /// (which no CSRF token guards).
    pub basic_challenge: bool,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u32>,
}

/// The JSON shape of an error, for the OpenAPI document.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Inside [`ErrorBody`].
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code: `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `payload_too_large`, `unsupported_media_type`, `too_many_requests`, `unavailable`,
    /// `internal`; from a web
    /// node's proxy also `bad_gateway` and `gateway_timeout`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            basic_challenge: true,
            retry_after: None,
        }
    }

    /// 401 for a browser session (sign-in, an ended session): no Basic challenge.
    pub fn signed_out(message: impl Into<String>) -> Self {
        Self {
            basic_challenge: false,
            ..Self::unauthorized(message)
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 429, asking the client to come back after `retry_after` seconds.
    pub fn too_many_requests(message: impl Into<String>, retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
        }
    }

    /// 503, logging the cause.
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "API request failed on a backend");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "a storage backend is unavailable; try again later",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: self.code.to_string(),
                    message: self.message,
                },
            }),
        )
            .into_response();
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            // The body was not (or not wholly) read: refused by its size, or by who sent it
            // before the handler ran. The server then closes the connection, and saying so
            // keeps clients from sending another request on it.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = if self.basic_challenge {
                "Basic realm=\"mairust\", Bearer"
            } else {
                "Bearer"
            };
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists(_) | StoreError::DomainHasUsers { .. } => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            StoreError::NotFound(_) => Self::not_found(e.to_string()),
            StoreError::FolderProtected(..) => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            StoreError::NotAnAddress(_)
            | StoreError::DomainNotHosted(_)
            | StoreError::InvalidFolderName(..)
            | StoreError::InvalidCursor(_) => Self::bad_request(e.to_string()),
            other => Self::unavailable(other),
        }
    }
}

impl From<crate::accounts::AccountError> for ApiError {
    fn from(e: crate::accounts::AccountError) -> Self {
        use crate::accounts::AccountError;
        match e {
            AccountError::Store(e) => e.into(),
            AccountError::Hash(cause) => Self::unavailable(cause),
            not_hosted @ AccountError::DomainNotHosted(_) => {
                Self::not_found(not_hosted.to_string())
            }
            invalid => Self::bad_request(invalid.to_string()),
        }
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        match e {
            crate::auth::AuthError::Store(e) => e.into(),
            busy @ crate::auth::AuthError::Busy => Self::too_many_requests(busy.to_string(), 5),
        }
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        Self::unavailable(e)
    }
}

/// The answer to a body over the configured limit.
fn body_too_large() -> ApiError {
    ApiError::too_large(
        "request body too large (see api.max_body_bytes; the send API allows what \
         smtp.max_message_size needs)",
    )
}

fn not_json() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as JSON with `Content-Type: application/json`",
    )
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => body_too_large(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => not_json(),
            _ => Self::bad_request(format!("invalid JSON body: {}", r.body_text())),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            body_too_large()
        } else {
            Self::bad_request(format!("cannot read the body: {}", r.body_text()))
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(format!("invalid query string: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request(format!("invalid path: {}", r.body_text()))
    }
}

/// A JSON object body (not an array, which serde would also map onto a struct), with
/// rejections as [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<serde_json::Value>::from_request(req, state).await?;
        checked_object(value)
            .and_then(|value| {
                serde_json::from_value(value)
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
            })
            .map(Self)
    }
}

/// A body must be a JSON object (serde would also take a struct as an array of its fields)
/// and no string in it may hold a NUL character (PostgreSQL cannot store one).
fn checked_object(value: serde_json::Value) -> Result<serde_json::Value, ApiError> {
    fn has_nul(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().any(has_nul),
            serde_json::Value::Object(map) => map
                .iter()
                .any(|(key, value)| key.contains('\0') || has_nul(value)),
            _ => false,
        }
    }
    if !value.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    if has_nul(&value) {
        return Err(ApiError::bad_request(
            "a string in the body contains a NUL character",
        ));
    }
    Ok(value)
}

/// `Query` whose rejections are [`ApiError`]s.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `Path` whose rejections are [`ApiError`]s.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// A JSON body that may be left out (no bytes at all): then `T::default()`. Anything else
/// must be a JSON object sent as JSON (see [`json_bodies_only`]).
pub struct OptionalJson<T>(pub T);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: serde::de::DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = axum::body::Bytes::from_request(req, state).await?;
        if body.is_empty() {
            return Ok(Self(T::default()));
        }
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        checked_object(value)
            .and_then(|value| {
                serde_json::from_value(value)
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
            })
            .map(Self)
    }
}

/// Middleware: a request that carries a body (a `Content-Length` above 0, or chunked) must
/// declare it JSON (`application/json` or `application/*+json`), or it gets `415`, whatever
/// the route does with the body. A route that ignores its body would otherwise accept a
/// form post or a `text/plain` one that a browser sends cross-site without a preflight.
pub async fn json_bodies_only(
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let headers = request.headers();
    let has_body = headers.contains_key(axum::http::header::TRANSFER_ENCODING)
        || headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    if has_body && !is_json(headers) {
        return not_json().into_response();
    }
    next.run(request).await
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"))
}

/// Refuses a string field longer than `max` characters.
pub fn check_len(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.chars().count() > max {
        return Err(ApiError::bad_request(format!(
            "`{field}` is too long (at most {max} characters)"
        )));
    }
    Ok(())
}

/// The result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        let with = |value: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(
                axum::http::header::CONTENT_TYPE,
                value.parse().expect("header"),
            );
            is_json(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!with("application/jsonx"));
        assert!(!with("json"));
        assert!(!is_json(&axum::http::HeaderMap::new()));
    }
}
