//! Administration: domains, users, and bearer tokens.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiState;
use super::auth::{Caller, ClientIp, Credential};
use super::error::{ApiError, ApiJson, ApiPath, ApiResult, ErrorBody, OptionalJson, check_len};
use crate::accounts::{self, MAX_PASSWORD, NewAccount, normalize_address, validate_domain};
use crate::auth;
use crate::store::{Domain, User, UserChanges, now_millis};

/// A list of items.
#[derive(Serialize, ToSchema)]
pub struct Items<T> {
    /// The items.
    pub items: Vec<T>,
}

/// Body of `POST /api/v1/domains`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDomain {
    /// Domain name, e.g. `example.com`.
    #[schema(
        pattern = "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\\.?$",
        max_length = 253
    )]
    pub name: String,
}

/// Body of `POST /api/v1/users`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Address in a hosted domain (administrator accounts may use any domain).
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    /// 8 to 1024 characters, no control characters.
    #[schema(
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
        min_length = 8,
        max_length = 1024
    )]
    pub password: String,
    /// Mailbox quota in bytes; absent means unlimited.
    #[schema(minimum = 0, maximum = 9007199254740991_i64)]
    #[serde(default, deserialize_with = "whole_number")]
    pub quota_bytes: Option<i64>,
    /// Grants administration rights.
    #[serde(default)]
    pub is_admin: bool,
}

/// Largest integer a JSON number carries exactly (2^53 - 1).
const MAX_JSON_INTEGER: i64 = 9_007_199_254_740_991;

/// An optional integer up to 2^53 - 1 in magnitude, which may also be written `5.0`: JSON
/// Schema's `integer` includes that form, so clients generated from the document may send it.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let value = match (number.as_i64(), number.as_f64()) {
        (Some(n), _) => Some(n),
        (None, Some(f)) if f.fract() == 0.0 && f.abs() <= MAX_JSON_INTEGER as f64 => Some(f as i64),
        _ => None,
    };
    match value {
        Some(n) if n.abs() <= MAX_JSON_INTEGER => Ok(Some(n)),
        _ => Err(serde::de::Error::custom(format!(
            "`{number}` is not a whole number of at most 2^53 - 1"
        ))),
    }
}

/// Body of `PUT /api/v1/users/{email}/password`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    /// 8 to 1024 characters, no control characters.
    #[schema(
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
        min_length = 8,
        max_length = 1024
    )]
    pub password: String,
    /// Your current password: needed to change your own password unless the request is
    /// authenticated with it (HTTP Basic), so that a borrowed session cannot lock you out.
    #[schema(max_length = 1024)]
    pub current_password: Option<String>,
}

/// Body of `PATCH /api/v1/users/{email}`: the fields to change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    /// Mailbox quota in bytes; `null` is unlimited.
    #[schema(minimum = 0, maximum = 9007199254740991_i64)]
    #[serde(default, deserialize_with = "present_whole_number")]
    pub quota_bytes: Option<Option<i64>>,
    /// Whether the account may manage the system.
    pub is_admin: Option<bool>,
}

/// A field that may be `null`: `Some(None)` when it is, `None` when it is absent.
fn present_whole_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<i64>>, D::Error> {
    whole_number(d).map(Some)
}

/// Body of `POST /api/v1/tokens`.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// A label for the token (at most 200 characters, no control characters).
    #[schema(pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$", max_length = 200)]
    pub name: Option<String>,
    /// Lifetime: a number and `s`, `m`, `h` or `d`, such as `1h` or `30d`, from 1s to 366d;
    /// default `api.token_ttl`.
    #[schema(
        pattern = "^(([1-9]|[1-9][0-9]|[12][0-9]{2}|3[0-5][0-9]|36[0-6])d|([1-9]|[1-9][0-9]{1,2}|[1-7][0-9]{3}|8[0-6][0-9]{2}|87[0-7][0-9]|878[0-4])h|([1-9]|[1-9][0-9]{1,4}|[1-4][0-9]{5}|5[01][0-9]{4}|52[0-6][0-9]{3}|5270[0-3][0-9]|527040)m|([1-9]|[1-9][0-9]{1,6}|[12][0-9]{7}|30[0-9]{6}|31[0-5][0-9]{5}|316[01][0-9]{4}|3162[01][0-9]{3}|31622[0-3][0-9]{2}|31622400)s)$"
    )]
    pub ttl: Option<String>,
}

/// A new bearer token; it is shown only once.
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// Token id, for `DELETE /api/v1/tokens/{id}` (a string, like every id in the API).
    pub id: String,
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    /// Expiry, RFC 3339.
    pub expires_at: String,
}

/// One of the caller's tokens (the secret itself is never shown again).
#[derive(Serialize, ToSchema)]
pub struct TokenSummary {
    /// Token id.
    pub id: String,
    /// The label given at creation.
    pub name: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Expiry, RFC 3339.
    pub expires_at: String,
}

/// Body of `POST /api/v1/domains/{name}/dkim`.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct DkimRequest {
    /// `rsa` (2048 bits, the default: every receiver verifies it) or `ed25519` (RFC 8463;
    /// add it beside an RSA key, and the domain's mail carries both signatures).
    pub algorithm: Option<crate::dkim::Algorithm>,
    /// Selector; default `mairust` followed by the date (and `-2`, `-3`... if taken).
    #[schema(pattern = "^[A-Za-z0-9_-]{1,63}$")]
    pub selector: Option<String>,
}

/// A domain's DKIM key and the DNS record to publish.
#[derive(Serialize, ToSchema)]
pub struct DkimResponse {
    /// Signing domain.
    pub domain: String,
    /// Selector.
    pub selector: String,
    /// `ed25519` or `rsa`.
    pub algorithm: String,
    /// Name of the TXT record, e.g. `sel._domainkey.example.com`.
    pub dns_name: String,
    /// Value of the TXT record.
    pub dns_value: String,
    /// The same value as the character-strings of at most 255 bytes a zone file needs
    /// (`"part1" "part2"`); an RSA key's value is longer than one.
    pub dns_value_strings: Vec<String>,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Whether this key signs new mail (the domain's newest key of its algorithm).
    pub signing: bool,
}

impl DkimResponse {
    fn new(key: &crate::store::DkimKeyRecord, signing: bool) -> Self {
        let (dns_name, dns_value) = crate::dkim::dns_record(key);
        Self {
            domain: key.domain.clone(),
            selector: key.selector.clone(),
            algorithm: key.algorithm.clone(),
            dns_name,
            dns_value_strings: crate::dkim::txt_strings(&dns_value),
            dns_value,
            created_at: crate::message::rfc3339(key.created_at),
            signing,
        }
    }
}

/// The hosted domain named in a path, or 404.
async fn hosted_domain(state: &ApiState, name: &str) -> Result<String, ApiError> {
    // A name that is not even valid is certainly not hosted: 404 like any other.
    let domain = validate_domain(name)
        .map_err(|_| ApiError::not_found(format!("domain {name} not found")))?;
    if !state
        .stores
        .accounts
        .list_domains()
        .await?
        .iter()
        .any(|d| d.name == domain)
    {
        return Err(ApiError::not_found(format!("domain {domain} not found")));
    }
    Ok(domain)
}

/// Lists the domain's DKIM keys with their DNS records, newest first; the newest of each
/// algorithm signs. Keep every listed record published: mail signed with an older key
/// verifies only while it is.
#[utoipa::path(get, path = "/api/v1/domains/{name}/dkim", tag = "admin",
    params(("name" = String, Path, description = "Hosted domain")),
    responses((status = 200, body = Items<DkimResponse>), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn list_dkim_keys(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Items<DkimResponse>>> {
    caller.require_admin()?;
    let domain = hosted_domain(&state, &name).await?;
    let keys = state.stores.dkim.dkim_keys(&domain).await?;
    let signing = crate::store::dkim_keys::signing_subset(keys.clone());
    let signs = |k: &crate::store::DkimKeyRecord| signing.iter().any(|s| s.selector == k.selector);
    Ok(Json(Items {
        items: keys
            .iter()
            .map(|k| DkimResponse::new(k, signs(k)))
            .collect(),
    }))
}

/// A DNS record to publish for a hosted domain.
#[derive(Serialize, ToSchema)]
pub struct DnsRecord {
    /// `MX` or `TXT`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Owner name, fully qualified without the final dot.
    pub name: String,
    /// Record data (TXT without quotes).
    pub value: String,
    /// For TXT, the value as the character-strings of at most 255 bytes a zone file needs
    /// (`"part1" "part2"`); for MX, the value alone.
    pub value_strings: Vec<String>,
    /// What it is for.
    pub purpose: String,
}

impl DnsRecord {
    fn new(kind: &'static str, name: String, value: String, purpose: String) -> Self {
        let value_strings = if kind == "TXT" {
            crate::dkim::txt_strings(&value)
        } else {
            vec![value.clone()]
        };
        Self {
            kind,
            name,
            value,
            value_strings,
            purpose,
        }
    }
}

/// The DNS records a hosted domain needs: MX to this server (`server.hostname`), SPF,
/// one DKIM TXT record per key, and a starting DMARC policy that only reports.
#[utoipa::path(get, path = "/api/v1/domains/{name}/dns", tag = "admin",
    params(("name" = String, Path, description = "Hosted domain")),
    responses((status = 200, body = Items<DnsRecord>), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn dns_records(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Items<DnsRecord>>> {
    caller.require_admin()?;
    let domain = hosted_domain(&state, &name).await?;
    let hostname = state.config.server.hostname.trim_end_matches('.');
    let keys = state.stores.dkim.dkim_keys(&domain).await?;
    let signing = crate::store::dkim_keys::signing_subset(keys.clone());
    let mut items = vec![
        DnsRecord::new(
            "MX",
            domain.clone(),
            format!("10 {hostname}."),
            format!("mail for {domain} comes to this server"),
        ),
        DnsRecord::new(
            "TXT",
            domain.clone(),
            "v=spf1 mx -all".into(),
            "SPF: only the domain's MX hosts send its mail".into(),
        ),
    ];
    for key in &keys {
        let (dns_name, dns_value) = crate::dkim::dns_record(key);
        let purpose = if signing.iter().any(|s| s.selector == key.selector) {
            format!("DKIM: a signing key ({}, {})", key.algorithm, key.selector)
        } else {
            format!(
                "DKIM: an older key ({}, {}), keep while mail signed with it may be checked",
                key.algorithm, key.selector
            )
        };
        items.push(DnsRecord::new("TXT", dns_name, dns_value, purpose));
    }
    items.push(DnsRecord::new(
        "TXT",
        format!("_dmarc.{domain}"),
        format!("v=DMARC1; p=none; rua=mailto:postmaster@{domain}"),
        "DMARC: reports only; tighten p= once the reports look right".into(),
    ));
    Ok(Json(Items { items }))
}

/// Removes one of the domain's DKIM keys (after its DNS record is no longer needed). If it
/// was the signing key, the next newest signs from now on.
#[utoipa::path(delete, path = "/api/v1/domains/{name}/dkim/{selector}", tag = "admin",
    params(("name" = String, Path, description = "Hosted domain"),
        ("selector" = String, Path, description = "Selector of the key")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn delete_dkim_key(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath((name, selector)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let domain = hosted_domain(&state, &name).await?;
    state
        .stores
        .dkim
        .delete_dkim_key(&domain, &selector)
        .await?;
    tracing::info!(domain = %domain, selector = %selector, by = %caller.0.email, "DKIM key deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Whether a selector is one DNS label of letters, digits, '-' and '_'.
fn valid_selector(selector: &str) -> bool {
    !selector.is_empty()
        && selector.len() <= 63
        && selector
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Longest token name accepted.
pub const MAX_TOKEN_NAME: usize = 200;

/// Adds a hosted domain.
#[utoipa::path(post, path = "/api/v1/domains", tag = "admin", request_body = NewDomain,
    responses((status = 201, body = Domain), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn add_domain(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewDomain>,
) -> ApiResult<(StatusCode, Json<Domain>)> {
    caller.require_admin()?;
    let name = validate_domain(&body.name)?;
    let domain = state.stores.accounts.add_domain(&name).await?;
    tracing::info!(domain = %domain.name, by = %caller.0.email, "domain added");
    Ok((StatusCode::CREATED, Json(domain)))
}

/// Lists hosted domains.
#[utoipa::path(get, path = "/api/v1/domains", tag = "admin",
    responses((status = 200, body = Items<Domain>)), security(("basic" = []), ("bearer" = [])))]
pub async fn list_domains(
    State(state): State<ApiState>,
    caller: Caller,
) -> ApiResult<Json<Items<Domain>>> {
    caller.require_admin()?;
    Ok(Json(Items {
        items: state.stores.accounts.list_domains().await?,
    }))
}

/// Removes a domain that has no users.
#[utoipa::path(delete, path = "/api/v1/domains/{name}", tag = "admin",
    params(("name" = String, Path, description = "Domain name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn delete_domain(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    state.stores.accounts.delete_domain(&name).await?;
    tracing::info!(domain = %name, by = %caller.0.email, "domain deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Adds a user.
#[utoipa::path(post, path = "/api/v1/users", tag = "admin", request_body = NewUser,
    responses((status = 201, body = User), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "The domain is not hosted"), (status = 409, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn add_user(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    caller.require_admin()?;
    let user = accounts::add_user(
        state.stores.accounts.as_ref(),
        NewAccount {
            email: &body.email,
            password: &body.password,
            is_admin: body.is_admin,
            quota_bytes: body.quota_bytes,
        },
    )
    .await?;
    tracing::info!(user = %user.email, by = %caller.0.email, "user added");
    Ok((StatusCode::CREATED, Json(user)))
}

/// Lists users.
#[utoipa::path(get, path = "/api/v1/users", tag = "admin",
    responses((status = 200, body = Items<User>)), security(("basic" = []), ("bearer" = [])))]
pub async fn list_users(
    State(state): State<ApiState>,
    caller: Caller,
) -> ApiResult<Json<Items<User>>> {
    caller.require_admin()?;
    Ok(Json(Items {
        items: state.stores.accounts.list_users().await?,
    }))
}

/// Deletes a user and their mailbox.
#[utoipa::path(delete, path = "/api/v1/users/{email}", tag = "admin",
    params(("email" = String, Path, description = "User's address")),
    responses((status = 204), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Your own account")),
    security(("basic" = []), ("bearer" = [])))]
pub async fn delete_user(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(email): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let email = normalize_address(&email);
    if email == caller.0.email {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "you cannot delete your own account",
        ));
    }
    let orphans = state.stores.accounts.delete_user(&email).await?;
    state.stores.delete_blobs(&orphans).await;
    tracing::info!(user = %email, by = %caller.0.email, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Sets a user's password (admins for anyone, users for themselves) and revokes the user's
/// bearer tokens.
#[utoipa::path(put, path = "/api/v1/users/{email}/password", tag = "admin", request_body = NewPassword,
    params(("email" = String, Path, description = "User's address")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn set_password(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    caller: Caller,
    ApiPath(email): ApiPath<String>,
    ApiJson(body): ApiJson<NewPassword>,
) -> ApiResult<StatusCode> {
    // The path's address as the store keys it, or `%20me@...` would pass for another's.
    let email = normalize_address(&email);
    let own = email == caller.0.email;
    if !own {
        caller.require_admin()?;
    }
    accounts::validate_password(&body.password)?;
    // The document's limit holds whether or not the field is needed.
    if let Some(current) = &body.current_password {
        check_len("current_password", current, MAX_PASSWORD)?;
    }
    if own && caller.1 != Credential::Password {
        let current = body.current_password.as_deref().ok_or_else(|| {
            ApiError::bad_request("give your current password in current_password")
        })?;
        if state
            .authenticate(ip, &caller.0.email, current)
            .await?
            .is_none()
        {
            return Err(ApiError::forbidden("the current password is wrong"));
        }
    }
    accounts::set_password(
        state.stores.accounts.as_ref(),
        &state.config.server.data_dir,
        &email,
        &body.password,
    )
    .await?;
    tracing::info!(user = %email, by = %caller.0.email, "password changed; the user's tokens are revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Changes a user's quota or admin flag (admin only; not your own admin flag).
#[utoipa::path(patch, path = "/api/v1/users/{email}", tag = "admin", request_body = UserPatch,
    params(("email" = String, Path, description = "User's address")),
    responses((status = 200, body = User), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Your own admin flag")),
    security(("basic" = []), ("bearer" = [])))]
pub async fn update_user(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(email): ApiPath<String>,
    ApiJson(body): ApiJson<UserPatch>,
) -> ApiResult<Json<User>> {
    caller.require_admin()?;
    let email = normalize_address(&email);
    if body.quota_bytes.flatten().is_some_and(|q| q < 0) {
        return Err(ApiError::bad_request("quota_bytes must not be negative"));
    }
    if body.is_admin.is_some() && email == caller.0.email {
        // Demoting yourself could leave nobody able to manage the system.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "you cannot change your own admin flag; ask another administrator",
        ));
    }
    let user = state
        .stores
        .accounts
        .update_user(
            &email,
            &UserChanges {
                quota_bytes: body.quota_bytes,
                is_admin: body.is_admin,
            },
        )
        .await?;
    tracing::info!(user = %user.email, quota_bytes = ?user.quota_bytes, is_admin = user.is_admin, by = %caller.0.email, "user changed");
    Ok(Json(user))
}

/// Longest token lifetime.
const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// A token lifetime: digits without a leading zero and one unit (`s`, `m`, `h`, `d`), from
/// 1s to 366d; exactly what the OpenAPI document's pattern describes.
fn parse_ttl(text: &str) -> Option<Duration> {
    let unit = match text.as_bytes().last()? {
        b's' => 1,
        b'm' => 60,
        b'h' => 3600,
        b'd' => 86_400,
        _ => return None,
    };
    let digits = &text[..text.len() - 1];
    if digits.is_empty()
        || digits.len() > 9
        || digits.starts_with('0')
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let ttl = Duration::from_secs(digits.parse::<u64>().ok()?.checked_mul(unit)?);
    (ttl <= MAX_TTL).then_some(ttl)
}

/// Issues a bearer token for the caller.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "auth", request_body(content = TokenRequest, description = "optional"),
    responses((status = 201, body = TokenResponse), (status = 401, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn create_token(
    State(state): State<ApiState>,
    caller: Caller,
    OptionalJson(request): OptionalJson<TokenRequest>,
) -> ApiResult<(StatusCode, Json<TokenResponse>)> {
    if let Some(name) = &request.name {
        check_len("name", name, MAX_TOKEN_NAME)?;
        if name.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "`name` must not contain control characters",
            ));
        }
    }
    if let Some(ttl) = &request.ttl {
        check_len("ttl", ttl, 64)?;
    }
    let ttl = match request.ttl.as_deref() {
        None => state.config.api.token_ttl,
        Some(text) => parse_ttl(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid ttl `{text}`: give a number and s, m, h or d, from 1s to 366d"
            ))
        })?,
    };
    let token = auth::random_secret(32);
    let expires_at = now_millis().saturating_add(ttl.as_millis() as i64);
    let name = request.name.unwrap_or_else(|| "api".into());
    let id = state
        .stores
        .accounts
        .add_token(caller.0.id, &auth::token_hash(&token), &name, expires_at)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenResponse {
            id: id.to_string(),
            token,
            expires_at: crate::message::rfc3339(expires_at),
        }),
    ))
}

/// Lists the caller's unexpired tokens, newest first.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "auth",
    responses((status = 200, body = Items<TokenSummary>), (status = 401, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn list_tokens(
    State(state): State<ApiState>,
    caller: Caller,
) -> ApiResult<Json<Items<TokenSummary>>> {
    let items = state
        .stores
        .accounts
        .list_tokens(caller.0.id)
        .await?
        .into_iter()
        .map(|t| TokenSummary {
            id: t.id.to_string(),
            name: t.name,
            created_at: crate::message::rfc3339(t.created_at),
            expires_at: crate::message::rfc3339(t.expires_at),
        })
        .collect();
    Ok(Json(Items { items }))
}

/// Revokes one of the caller's tokens.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "auth",
    params(("id" = String, Path, description = "Token id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn delete_token(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    // Any string is a fair question; one that is no token id names no token.
    let revoked = match id.parse::<i64>() {
        Ok(number) => {
            state
                .stores
                .accounts
                .delete_token(caller.0.id, number)
                .await?
        }
        Err(_) => false,
    };
    if !revoked {
        // Another user's token is 404 too, so ids reveal nothing.
        return Err(ApiError::not_found(format!("token {id} not found")));
    }
    tracing::info!(token_id = id, by = %caller.0.email, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_are_whole_numbers_read_exactly_and_null_is_unlimited() {
        let patch = |json: &str| serde_json::from_str::<UserPatch>(json).map(|p| p.quota_bytes);
        // A float with a zero fraction near 2^51 must not round to a neighbour.
        assert_eq!(
            patch(r#"{"quota_bytes": 2251799813685247.0}"#).expect("whole"),
            Some(Some(2_251_799_813_685_247))
        );
        assert_eq!(patch(r#"{"quota_bytes": null}"#).expect("null"), Some(None));
        assert_eq!(patch("{}").expect("absent"), None);
        assert!(patch(r#"{"quota_bytes": 1.5}"#).is_err());
    }

    #[test]
    fn ttl_grammar_matches_the_document() {
        assert_eq!(parse_ttl("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_ttl("30d"), Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_ttl("366d"), Some(MAX_TTL));
        assert_eq!(parse_ttl("31622400s"), Some(MAX_TTL));
        for bad in [
            "", "s", "0s", "01h", "367d", "8785h", "1h30m", "+1h", " 1h", "1H", "soon",
        ] {
            assert_eq!(parse_ttl(bad), None, "{bad}");
        }
    }
}

/// Adds a DKIM key under a new selector; it signs outbound mail from the domain from now
/// on. Earlier keys stay until deleted, so publish the new record and keep the old ones
/// while mail signed with them may still be verified (rotation).
#[utoipa::path(post, path = "/api/v1/domains/{name}/dkim", tag = "admin",
    params(("name" = String, Path, description = "Hosted domain")),
    request_body(content = DkimRequest, description = "optional"),
    responses((status = 201, body = DkimResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn create_dkim_key(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    OptionalJson(request): OptionalJson<DkimRequest>,
) -> ApiResult<(StatusCode, Json<DkimResponse>)> {
    caller.require_admin()?;
    let domain = hosted_domain(&state, &name).await?;
    let selector = match request.selector {
        Some(selector) => selector,
        None => {
            // `mairust<date>`, then `-2`, `-3`... so a second key the same day gets its own.
            let taken: Vec<String> = state
                .stores
                .dkim
                .dkim_keys(&domain)
                .await?
                .into_iter()
                .map(|k| k.selector)
                .collect();
            let base = format!("mairust{}", chrono::Utc::now().format("%Y%m%d"));
            std::iter::once(base.clone())
                .chain((2..).map(|n| format!("{base}-{n}")))
                .find(|s| !taken.contains(s))
                .unwrap_or(base)
        }
    };
    if !valid_selector(&selector) {
        return Err(ApiError::bad_request(
            "selector must be 1 to 63 letters, digits, '-' and '_'",
        ));
    }
    let algorithm = request.algorithm.unwrap_or(crate::dkim::Algorithm::Rsa);
    let key = {
        let (domain, selector) = (domain.clone(), selector.clone());
        let cipher = state.stores.cipher.clone();
        tokio::task::spawn_blocking(move || {
            crate::dkim::generate(&domain, &selector, algorithm, cipher.as_ref())
        })
        .await
        .map_err(ApiError::unavailable)?
        .map_err(ApiError::unavailable)?
    };
    state.stores.dkim.put_dkim_key(&key).await?;
    tracing::info!(domain = %domain, selector = %selector, algorithm = %key.algorithm, by = %caller.0.email, "DKIM key created");
    Ok((StatusCode::CREATED, Json(DkimResponse::new(&key, true))))
}
