//! The REST API (under `/api/v1`), health, metrics and the OpenAPI document.

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod error;
pub mod folders;
pub mod health;
pub mod limits;
pub mod messages;
pub mod queue;
pub mod send;
pub mod session;
pub mod stats;
pub mod trace;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Deserialize;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

use crate::actors::WriterHandle;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::delivery::QueueHandle;
use crate::events::{self, ApiRequestCompleted};
use crate::inbound::commit::Acceptor;
use crate::smtp::Faults;
use crate::store::{Stores, User};
use error::{ApiError, ApiJson, ApiResult};

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    /// The configuration.
    pub config: Arc<Config>,
    /// Metadata and blobs.
    pub stores: Stores,
    /// The Prometheus recorder's handle.
    pub metrics: PrometheusHandle,
    /// The storage writer (for the fault hook).
    pub writer: WriterHandle,
    /// The acceptance path (for the send API).
    pub acceptor: Acceptor,
    /// The checks on a complete message, shared with SMTP.
    pub checks: Arc<crate::inbound::checks::Checks>,
    /// Who each recipient of a sent message is.
    pub recipients: crate::inbound::recipients::Recipients,
    /// The delivery queue's owner (for queue operations).
    pub queue: QueueHandle,
    /// Test-only fault hooks.
    pub faults: Arc<Faults>,
    /// Password checks, shared with SMTP AUTH (so guesses over both count together).
    pub authenticator: Arc<Authenticator>,
    /// This node's id (its lease owner name).
    pub node_id: String,
    /// The cluster, when this node is in one.
    pub cluster: Option<crate::cluster::Cluster>,
    /// Unknown-recipient refusals of the send API, per caller.
    pub unknown_recipients: Arc<limits::AccountLimit>,
}

impl ApiState {
    /// Checks Basic credentials from `ip` (see [`Authenticator`]).
    pub async fn authenticate(
        &self,
        ip: std::net::IpAddr,
        email: &str,
        password: &str,
    ) -> Result<Option<User>, crate::auth::AuthError> {
        self.authenticator.authenticate(ip, email, password).await
    }
}

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "MaiRust API", description = "Mail engine REST API. Errors are `{\"error\": {\"code\", \"message\"}}`."),
    paths(
        health::health, health::live, health::ready, health::metrics,
        session::sign_in, session::current, session::sign_out,
        admin::create_token, admin::list_tokens, admin::delete_token,
        admin::add_domain, admin::list_domains, admin::delete_domain, admin::create_dkim_key,
        admin::list_dkim_keys, admin::delete_dkim_key, admin::dns_records,
        admin::add_user, admin::list_users, admin::delete_user, admin::update_user, admin::set_password,
        folders::list, folders::create, folders::update, folders::delete, folders::empty,
        messages::list, messages::get, messages::raw, messages::html, messages::attachment, messages::patch, messages::delete,
        send::send,
        queue::list, queue::get, queue::retry, queue::cancel,
        cluster::view,
        stats::stats,
        trace::trace,
    ),
    // Referenced from query parameters, which utoipa does not collect by itself.
    components(schemas(messages::RemoteImages)),
    modifiers(&SecuritySchemes)
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

async fn openapi_json(State(state): State<ApiState>) -> axum::Json<serde_json::Value> {
    axum::Json(openapi_document(&state.config))
}

/// A `limit` query parameter: default 50, clamped to 1..=`api.max_page_size`.
pub(crate) fn page_limit(limit: Option<u32>, config: &Config) -> Result<u32, ApiError> {
    Ok(limit.unwrap_or(50).clamp(1, config.api.max_page_size))
}

/// The OpenAPI document as served: utoipa's, completed with what every handler shares (the
/// error answers of the extractors and the authentication), the configured limits, and the
/// rules the derive cannot express, so that the document and the server agree.
pub fn openapi_document(config: &Config) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    let error = |description: &str| {
        json!({"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
    };
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, op) in item.iter_mut() {
                let has_body = op.get("requestBody").is_some();
                let params = op
                    .get("parameters")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let in_path = params.iter().any(|p| p["in"] == "path");
                let secured = op.get("security").is_some();
                if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                    // Any u32 is taken and clamped to 1..=api.max_page_size.
                    for p in params.iter_mut().filter(|p| p["name"] == "limit") {
                        // The server parses a u32; utoipa calls it int32, which is signed.
                        if let Some(schema) = p["schema"].as_object_mut() {
                            schema.remove("format");
                        }
                        p["schema"]["minimum"] = json!(0);
                        p["schema"]["maximum"] = json!(u32::MAX);
                        p["description"] = json!(format!(
                            "Page size; default 50; values outside 1 to {} (api.max_page_size) are clamped",
                            config.api.max_page_size
                        ));
                    }
                }
                // A body is optional where the handler takes an empty one.
                if has_body
                    && method == "post"
                    && (path == "/api/v1/tokens" || path.ends_with("/dkim"))
                {
                    op["requestBody"]["required"] = json!(false);
                }
                let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                    continue;
                };
                let mut add = |code: &str, description: &str| {
                    responses
                        .entry(code.to_string())
                        .or_insert_with(|| error(description));
                };
                if has_body || !params.is_empty() {
                    add("400", "Invalid parameters or body");
                }
                if has_body {
                    add("413", "Body larger than the limit");
                    add("415", "Body is not JSON");
                }
                if in_path {
                    add("404", "Not found");
                }
                if path == "/api/v1/send" {
                    add("507", "A local recipient's mailbox is full");
                }
                if secured {
                    add("401", "Missing or wrong credentials");
                    add("403", "Not allowed for this account");
                    add("503", "A storage backend is unavailable");
                }
                if secured || (path == "/api/v1/session" && method == "post") {
                    add(
                        "429",
                        "Too many requests (sign-in attempts at this account in progress, or a \
                         rate limit); retry after Retry-After seconds",
                    );
                }
            }
        }
    }
    if let Some(send) = doc.pointer_mut("/components/schemas/SendRequest") {
        for list in ["to", "cc", "bcc"] {
            send["properties"][list]["items"]["format"] = json!("email");
            send["properties"][list]["maxItems"] = json!(config.smtp.max_recipients);
        }
        // At least one recipient, in any of the three lists.
        send["anyOf"] = json!([
            {"required": ["to"], "properties": {"to": {"minItems": 1}}},
            {"required": ["cc"], "properties": {"cc": {"minItems": 1}}},
            {"required": ["bcc"], "properties": {"bcc": {"minItems": 1}}},
        ]);
        send["properties"]["headers"]["maxProperties"] = json!(50);
        send["properties"]["headers"]["propertyNames"] =
            json!({"pattern": send::HEADER_NAME_PATTERN});
        send["properties"]["headers"]["additionalProperties"] =
            json!({"type": "string", "pattern": "^[^\\r\\n\\u0000]*$", "maxLength": 900});
    }
    forbid_nul_in_requests(&mut doc);
    mark_times(&mut doc);
    doc
}

/// Every time the API shows is RFC 3339 text (`created_at`, `expires_at`, ...): the
/// document says so with `format: date-time` on each `*_at` string property.
fn mark_times(doc: &mut serde_json::Value) {
    use serde_json::Value;
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for schema in schemas.values_mut() {
        let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
            continue;
        };
        for (name, property) in properties.iter_mut() {
            let string = property.get("type").is_some_and(|t| {
                t == "string"
                    || t.as_array()
                        .is_some_and(|a| a.iter().any(|x| x == "string"))
            });
            if name.ends_with("_at") && string {
                property["format"] = Value::from("date-time");
            }
        }
    }
}

/// No string the server takes may hold a NUL (PostgreSQL cannot store one, so the server
/// refuses it with 400): every string of a request schema without a pattern of its own gets
/// one that says so.
fn forbid_nul_in_requests(doc: &mut serde_json::Value) {
    use serde_json::Value;
    fn walk(value: &mut Value, refs: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    refs.push(target.rsplit('/').next().unwrap_or_default().to_string());
                }
                let string = map.get("type").is_some_and(|t| {
                    t == "string"
                        || t.as_array()
                            .is_some_and(|a| a.iter().any(|x| x == "string"))
                });
                if string && !map.contains_key("pattern") {
                    map.insert("pattern".into(), Value::from("^[^\\u0000]*$"));
                }
                map.values_mut().for_each(|child| walk(child, refs));
            }
            Value::Array(items) => items.iter_mut().for_each(|item| walk(item, refs)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for op in paths
            .values_mut()
            .filter_map(Value::as_object_mut)
            .flat_map(|item| item.values_mut())
        {
            for part in ["parameters", "requestBody"] {
                if let Some(value) = op.get_mut(part) {
                    walk(value, &mut refs);
                }
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    while let Some(name) = refs.pop() {
        if seen.insert(name.clone())
            && let Some(schema) = doc.pointer_mut(&format!("/components/schemas/{name}"))
        {
            walk(schema, &mut refs);
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /api/v1/openapi.json")
}

/// Body of the test-only fault endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    /// `storage_writer`, `smtp_session` or `abort_before_commit`.
    target: String,
}

/// Test hook (only with `server.fault_injection`): makes an actor fail.
async fn inject_fault(
    State(state): State<ApiState>,
    caller: auth::Caller,
    ApiJson(body): ApiJson<FaultRequest>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if !state.config.server.fault_injection {
        return Err(ApiError::not_found("fault injection is disabled"));
    }
    match body.target.as_str() {
        "storage_writer" => state.writer.inject_fault().map_err(ApiError::unavailable)?,
        "abort_before_commit" => crate::store::sql::abort_before_next_commit(),
        "smtp_session" => state
            .faults
            .panic_next_session
            .store(true, Ordering::SeqCst),
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown target `{other}`; use storage_writer or smtp_session"
            )));
        }
    }
    tracing::warn!(target = %body.target, "fault injected");
    Ok(StatusCode::ACCEPTED)
}

/// Refuses a path or query carrying a NUL character (`%00`): no name, address or folder has
/// one, and PostgreSQL cannot store it, so it is bad input, not a storage failure.
async fn refuse_nul(request: Request, next: Next) -> Response {
    let uri = request.uri();
    let encoded_nul = |part: &str| part.as_bytes().windows(3).any(|w| w == b"%00");
    if encoded_nul(uri.path()) || uri.query().is_some_and(encoded_nul) {
        return axum::response::IntoResponse::into_response(ApiError::bad_request(
            "the path or query contains a NUL character",
        ));
    }
    next.run(request).await
}

async fn count_requests(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    events::emit(ApiRequestCompleted {
        method: method.as_str(),
        status: response.status().as_u16(),
    });
    response
}

/// All routes: health and metrics, the REST API with the api role, and `others` (the web
/// UI's pages, or `/api` proxied, which the caller composes: this module knows no web role).
pub fn router(state: ApiState, others: Router<ApiState>) -> Router {
    let v1 = Router::new()
        .route("/openapi.json", get(openapi_json))
        .route(
            "/session",
            get(session::current)
                .post(session::sign_in)
                .delete(session::sign_out),
        )
        .route("/tokens", get(admin::list_tokens).post(admin::create_token))
        .route("/tokens/{id}", axum::routing::delete(admin::delete_token))
        .route("/domains", get(admin::list_domains).post(admin::add_domain))
        .route(
            "/domains/{name}",
            axum::routing::delete(admin::delete_domain),
        )
        .route(
            "/domains/{name}/dkim",
            get(admin::list_dkim_keys).post(admin::create_dkim_key),
        )
        .route("/domains/{name}/dns", get(admin::dns_records))
        .route(
            "/domains/{name}/dkim/{selector}",
            axum::routing::delete(admin::delete_dkim_key),
        )
        .route("/users", get(admin::list_users).post(admin::add_user))
        .route(
            "/users/{email}",
            axum::routing::delete(admin::delete_user).patch(admin::update_user),
        )
        .route("/users/{email}/password", put(admin::set_password))
        .route("/folders", get(folders::list).post(folders::create))
        .route(
            "/folders/{name}",
            axum::routing::patch(folders::update).delete(folders::delete),
        )
        .route(
            "/folders/{name}/messages",
            axum::routing::delete(folders::empty),
        )
        .route("/messages", get(messages::list))
        .route(
            "/messages/{id}",
            get(messages::get)
                .patch(messages::patch)
                .delete(messages::delete),
        )
        .route("/messages/{id}/raw", get(messages::raw))
        .route("/messages/{id}/html", get(messages::html))
        .route("/messages/{id}/attachments/{n}", get(messages::attachment))
        .route(
            "/send",
            post(send::send).layer(axum::extract::DefaultBodyLimit::max(send::body_limit(
                &state.config,
            ))),
        )
        .route("/queue", get(queue::list))
        .route("/queue/{id}", get(queue::get).delete(queue::cancel))
        .route("/queue/{id}/retry", post(queue::retry))
        .route("/cluster", get(cluster::view))
        .route("/stats", get(stats::stats))
        .route("/trace", get(trace::trace))
        .route("/debug/faults", post(inject_fault))
        .layer(middleware::from_fn(error::json_bodies_only));
    let mut app = Router::new()
        .route("/health", get(health::health))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(health::metrics));
    // Health and metrics on every node (probes and scrapes need them on SMTP-only and
    // queue-only pods too); the REST API only with the api role.
    if state.config.server.has_role(crate::config::Role::Api) {
        app = app.nest("/api/v1", v1);
    }
    app.merge(others)
        .fallback(not_found)
        .layer(middleware::from_fn(refuse_nul))
        .layer(middleware::from_fn(count_requests))
        // Every body is capped (also one the handler reads as raw bytes); the send route
        // sets its own, larger cap above.
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.api.max_body_bytes,
        ))
        .with_state(state)
}

/// Messages to the API server actor.
pub enum ApiServerMsg {
    /// The HTTP server stopped with this error.
    Failed(String),
}

/// The API server actor: binds the port and runs axum; it fails (and is restarted) if the
/// server stops.
pub struct ApiServer;

/// Arguments of the API server.
pub struct ApiServerArgs {
    /// Handler state.
    pub state: ApiState,
    /// Address to bind.
    pub addr: SocketAddr,
    /// Flips to true on shutdown.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Routes served beside the API's (see [`router`]).
    pub others: Router<ApiState>,
}

impl Actor for ApiServer {
    type Msg = ApiServerMsg;
    /// The serving task, aborted with the actor.
    type State = crate::task::OwnedTask;
    type Arguments = ApiServerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ApiServerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .map_err(|e| {
                format!(
                    "cannot listen on {} for the API: {e}; check server.bind and server.api_port",
                    args.addr
                )
            })?;
        let api = args.state.config.server.has_role(crate::config::Role::Api);
        tracing::info!(addr = %args.addr, rest_api = api, "API listening");
        let app = router(args.state, args.others);
        let mut shutdown = args.shutdown;
        let task = crate::task::OwnedTask::spawn(async move {
            // Connection info gives handlers the client address (for the failure throttle).
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                })
                .await;
            if let Err(e) = result {
                let _ = myself.send_message(ApiServerMsg::Failed(e.to_string()));
            }
        });
        Ok(task)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ApiServerMsg::Failed(error) = message;
        Err(format!("API server stopped: {error}").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` of `value`.
    fn refs(value: &serde_json::Value, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(target)) = map.get("$ref") {
                    found.push(target.clone());
                }
                map.values().for_each(|v| refs(v, found));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_in_the_document_resolves() {
        let doc = openapi_document(&Config::default());
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for target in found {
            let pointer = target.trim_start_matches('#');
            assert!(doc.pointer(pointer).is_some(), "dangling $ref {target}");
        }
    }

    #[test]
    fn ids_are_strings_and_times_rfc3339_text() {
        let doc = openapi_document(&Config::default());
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        let mut problems = Vec::new();
        for (schema, body) in schemas {
            let Some(properties) = body["properties"].as_object() else {
                continue;
            };
            for (name, property) in properties {
                let is_string = property["type"] == "string"
                    || property["type"]
                        .as_array()
                        .is_some_and(|t| t.iter().any(|x| x == "string"));
                // A partition is named by its number (0 to queue.partitions - 1).
                let id = (name == "id" || name.ends_with("_id")) && schema != "PartitionLease";
                if id && !is_string {
                    problems.push(format!("{schema}.{name} is an id but not a string"));
                }
                if name.ends_with("_at") && !(is_string && property["format"] == "date-time") {
                    problems.push(format!("{schema}.{name} is a time but not RFC 3339 text"));
                }
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
