//! Browser sessions for the web UI: sign in with email and password, get an `HttpOnly`,
//! `SameSite=Strict` cookie, and send the session's CSRF token in `X-CSRF-Token` with every
//! state change made with that cookie.
//!
//! Sessions live in the database, so an API replica that did not sign the user in still knows
//! the cookie, and a web-only process (which proxies `/api`) keeps no state.

use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{AppendHeaders, IntoResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiState;
use super::error::{ApiError, ApiJson, ApiResult, ErrorBody, check_len};
use crate::auth;
use crate::config::SecureCookies;
use crate::store::{WebSession, now_millis};

/// Name of the session cookie.
pub const COOKIE: &str = "mairust_session";
/// Header that carries the session's CSRF token on state changes.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session's last-seen time is written at most this often.
const TOUCH_EVERY: Duration = Duration::from_secs(30);

/// Credentials for signing in.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// The account's address.
    pub email: String,
    /// Its password.
    pub password: String,
}

/// The signed-in session, as the page needs it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    /// Who is signed in.
    pub email: String,
    /// Whether the admin console is theirs.
    pub is_admin: bool,
    /// Send this in `X-CSRF-Token` with every POST, PUT, PATCH and DELETE.
    pub csrf_token: String,
    /// When the session ends however active it is (RFC 3339).
    pub expires_at: String,
}

impl SessionInfo {
    fn of(session: &WebSession) -> Self {
        Self {
            email: session.user.email.clone(),
            is_admin: session.user.is_admin,
            csrf_token: session.csrf_token.clone(),
            expires_at: crate::message::rfc3339(session.expires_at),
        }
    }
}

/// Signs in: checks the password (throttled like SMTP AUTH) and sets the session cookie.
#[utoipa::path(post, path = "/api/v1/session", tag = "auth", request_body = SignIn,
    responses((status = 201, body = SessionInfo, description = "signed in; the cookie is set"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "request from another site")))]
pub async fn sign_in(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<SignIn>,
) -> ApiResult<impl IntoResponse> {
    check_same_origin(&headers)?;
    check_len("email", &request.email, 320)?;
    check_len("password", &request.password, 1024)?;
    let user = state
        .authenticate(peer.ip(), &request.email, &request.password)
        .await?
        .ok_or_else(|| ApiError::signed_out("invalid email or password"))?;
    let token = auth::random_secret(32);
    let api = &state.config.api;
    let now = now_millis();
    let expires_at = now.saturating_add(millis(api.session_lifetime));
    let session = WebSession {
        id: 0,
        csrf_token: auth::random_secret(24),
        user,
        expires_at,
    };
    let id = state
        .stores
        .accounts
        .add_web_session(
            session.user.id,
            &auth::token_hash(&token),
            &session.csrf_token,
            expires_at,
        )
        .await?;
    tracing::info!(email = %session.user.email, session = id, "web session started");
    let cookie = cookie_header(
        &token,
        api.session_lifetime.as_secs(),
        secure(api.secure_cookies, &headers),
    )?;
    Ok((
        StatusCode::CREATED,
        AppendHeaders([(SET_COOKIE, cookie)]),
        Json(SessionInfo::of(&session)),
    ))
}

/// The session of the cookie: who is signed in and the CSRF token (after a page reload).
#[utoipa::path(get, path = "/api/v1/session", tag = "auth",
    responses((status = 200, body = SessionInfo), (status = 401, body = ErrorBody)))]
pub async fn current(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> ApiResult<Json<SessionInfo>> {
    let session = cookie_session(&headers, &state)
        .await?
        .ok_or_else(|| ApiError::signed_out("not signed in"))?;
    Ok(Json(SessionInfo::of(&session)))
}

/// Signs out: the session ends on the server (the cookie is worthless after this, even if
/// kept) and the browser is told to drop it.
#[utoipa::path(delete, path = "/api/v1/session", tag = "auth",
    responses((status = 204, description = "signed out"), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "missing or wrong X-CSRF-Token")))]
pub async fn sign_out(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    let session = cookie_session(&headers, &state)
        .await?
        .ok_or_else(|| ApiError::signed_out("not signed in"))?;
    check_csrf(&headers, &session)?;
    if let Some(token) = cookie_token(&headers) {
        state
            .stores
            .accounts
            .delete_web_session(&auth::token_hash(token))
            .await?;
    }
    tracing::info!(email = %session.user.email, session = session.id, "web session ended");
    let cookie = cookie_header("", 0, secure(state.config.api.secure_cookies, &headers))?;
    Ok((
        StatusCode::NO_CONTENT,
        AppendHeaders([(SET_COOKIE, cookie)]),
    ))
}

/// The live session named by the request's cookie, if any.
pub async fn cookie_session(
    headers: &HeaderMap,
    state: &ApiState,
) -> Result<Option<WebSession>, ApiError> {
    let Some(token) = cookie_token(headers) else {
        return Ok(None);
    };
    let idle_since = now_millis().saturating_sub(millis(state.config.api.session_idle_timeout));
    Ok(state
        .stores
        .accounts
        .web_session(&auth::token_hash(token), idle_since, millis(TOUCH_EVERY))
        .await?)
}

/// Refuses a state change made with a session cookie unless it carries the session's CSRF
/// token and, when the browser names it, comes from this site.
pub fn check_csrf(headers: &HeaderMap, session: &WebSession) -> Result<(), ApiError> {
    check_same_origin(headers)?;
    let sent = headers
        .get(CSRF_HEADER)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    if !constant_time_eq(sent, session.csrf_token.as_bytes()) {
        return Err(ApiError::forbidden(
            "missing or wrong X-CSRF-Token: send the csrf_token of GET /api/v1/session with \
             every change made with the session cookie",
        ));
    }
    Ok(())
}

/// A browser names the page's origin in `Origin` on cross-site and on state-changing
/// requests; it must be the site the request was sent to (as the proxy in front of the API
/// says in `X-Forwarded-Host`, else `Host`).
fn check_same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    let target = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get("host"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim);
    match (authority, target) {
        (Some(a), Some(t)) if a.eq_ignore_ascii_case(t) => Ok(()),
        _ => Err(ApiError::forbidden(format!(
            "request from another site ({origin}) refused"
        ))),
    }
}

/// The value of the session cookie in the request's `Cookie` headers.
pub fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

fn secure(policy: SecureCookies, headers: &HeaderMap) -> bool {
    match policy {
        SecureCookies::Always => true,
        SecureCookies::Never => false,
        SecureCookies::Auto => headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https")),
    }
}

fn cookie_header(token: &str, max_age: u64, secure: bool) -> Result<HeaderValue, ApiError> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .map_err(|e| ApiError::unavailable(format!("cannot build the session cookie: {e}")))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; mairust_session=tok; b=2")]);
        assert_eq!(cookie_token(&h), Some("tok"));
        let h = headers(&[("cookie", "a=1"), ("cookie", "mairust_session=x")]);
        assert_eq!(cookie_token(&h), Some("x"));
        assert_eq!(
            cookie_token(&headers(&[("cookie", "mairust_session=")])),
            None
        );
        assert_eq!(
            cookie_token(&headers(&[("cookie", "xmairust_session=t")])),
            None
        );
    }

    #[test]
    fn only_the_same_site_may_send_state_changes() {
        assert!(check_same_origin(&headers(&[("host", "mail.test:8080")])).is_ok());
        let same = headers(&[
            ("origin", "http://mail.test:8080"),
            ("host", "mail.test:8080"),
        ]);
        assert!(check_same_origin(&same).is_ok());
        let proxied = headers(&[
            ("origin", "https://mail.test"),
            ("host", "api:8080"),
            ("x-forwarded-host", "mail.test"),
        ]);
        assert!(check_same_origin(&proxied).is_ok());
        let evil = headers(&[("origin", "https://evil.test"), ("host", "mail.test")]);
        assert!(check_same_origin(&evil).is_err());
        assert!(check_same_origin(&headers(&[("origin", "null"), ("host", "m")])).is_err());
    }

    #[test]
    fn the_cookie_is_secure_behind_https_or_when_configured() {
        let https = headers(&[("x-forwarded-proto", "https")]);
        assert!(secure(SecureCookies::Auto, &https));
        assert!(!secure(SecureCookies::Auto, &HeaderMap::new()));
        assert!(secure(SecureCookies::Always, &HeaderMap::new()));
        assert!(!secure(SecureCookies::Never, &https));
        let c = cookie_header("t", 60, true).unwrap();
        assert_eq!(
            c.to_str().unwrap(),
            "mairust_session=t; Path=/; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
    }
}
