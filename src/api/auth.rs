//! Who is calling: HTTP Basic (email and password), a bearer token, or the web UI's session
//! cookie (whose state changes must carry the session's CSRF token).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;

use super::ApiState;
use super::error::ApiError;
use crate::auth;
use crate::store::User;

/// The signed-in user of a request, and how they proved it.
#[derive(Debug, Clone)]
pub struct Caller(pub User, pub Credential);

/// What a request was authenticated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// HTTP Basic: the request itself carries the password.
    Password,
    /// A bearer token.
    Token,
    /// The web UI's session cookie.
    Session,
}

impl Caller {
    /// Fails with 403 unless the caller is an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.0.is_admin {
            Ok(())
        } else {
            Err(ApiError::forbidden("this endpoint is for administrators"))
        }
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        if !parts.headers.contains_key(AUTHORIZATION)
            && super::session::cookie_token(&parts.headers).is_some()
        {
            let session = super::session::cookie_session(&parts.headers, state)
                .await?
                .ok_or_else(|| ApiError::signed_out("your session has ended: sign in again"))?;
            if !parts.method.is_safe() {
                super::session::check_csrf(&parts.headers, &session)?;
            }
            return Ok(Caller(session.user, Credential::Session));
        }
        let (user, credential) = identify(&parts.headers, client_ip(parts), state).await?;
        Ok(Caller(user, credential))
    }
}

/// The client's address, as an extractor (see [`client_ip`]).
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(client_ip(parts)))
    }
}

/// The client's address (for the failure throttle); unspecified when the server was not
/// started with connection info (unit tests).
pub fn client_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

/// Who sent `headers`: the user of a bearer token or of Basic credentials, and which.
pub async fn identify(
    headers: &HeaderMap,
    ip: IpAddr,
    state: &ApiState,
) -> Result<(User, Credential), ApiError> {
    let header = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "authentication required: use HTTP Basic, a bearer token, or sign in \
                 (POST /api/v1/session)",
            )
        })?;
    let (scheme, value) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        let user = state
            .stores
            .accounts
            .user_by_token(&auth::token_hash(value.trim()))
            .await?
            .ok_or_else(|| ApiError::unauthorized("invalid or expired token"))?;
        Ok((user, Credential::Token))
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| ApiError::unauthorized("malformed Basic credentials"))?;
        let (email, password) = decoded
            .split_once(':')
            .ok_or_else(|| ApiError::unauthorized("malformed Basic credentials"))?;
        let user = state
            .authenticate(ip, email, password)
            .await?
            .ok_or_else(|| ApiError::unauthorized("invalid email or password"))?;
        Ok((user, Credential::Password))
    } else {
        Err(ApiError::unauthorized(format!(
            "unsupported authorization scheme `{scheme}`; use Basic or Bearer"
        )))
    }
}
