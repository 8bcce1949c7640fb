//! Who is calling: HTTP Basic (email and password) or a bearer token.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;

use super::ApiState;
use super::error::ApiError;
use crate::auth;
use crate::store::User;

/// The signed-in user of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub User);

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
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthorized("authentication required: use HTTP Basic or a bearer token")
            })?;
        let (scheme, value) = header.split_once(' ').unwrap_or((header, ""));
        let user = if scheme.eq_ignore_ascii_case("bearer") {
            state
                .stores
                .meta
                .user_by_token(&auth::token_hash(value.trim()))
                .await?
                .ok_or_else(|| ApiError::unauthorized("invalid or expired token"))?
        } else if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::unauthorized("malformed Basic credentials"))?;
            let (email, password) = decoded
                .split_once(':')
                .ok_or_else(|| ApiError::unauthorized("malformed Basic credentials"))?;
            state
                .authenticate(email, password)
                .await?
                .ok_or_else(|| ApiError::unauthorized("invalid email or password"))?
        } else {
            return Err(ApiError::unauthorized(format!(
                "unsupported authorization scheme `{scheme}`; use Basic or Bearer"
            )));
        };
        Ok(Caller(user))
    }
}
