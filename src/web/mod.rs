//! The `web` role: the web UI's pages (embedded in the binary) and, when the api role runs in
//! another process, `/api` proxied to it (`web.api_url`).
//!
//! A web-only process serves [`router`] on `server.api_port` and opens no database or blob
//! store: its readiness is the upstream API's. Next to the api role, [`ui_router`] is merged
//! into the API's router and `/api` is the local API.

pub mod proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::api::error::ApiError;
use crate::config::Config;
pub use proxy::Proxy;

/// How long readiness waits for the upstream API's `/health/live`.
const UPSTREAM_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The UI pages may load only this origin's files: no inline script or style, no framing.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("assets/index.html");
const STYLE_CSS: &str = include_str!("assets/style.css");
const APP_JS: &str = include_str!("assets/app.js");
const CORE_JS: &str = include_str!("assets/core.js");
const MAIL_JS: &str = include_str!("assets/mail.js");
const ADMIN_JS: &str = include_str!("assets/admin.js");

/// State of a web-only process's handlers.
#[derive(Clone)]
pub struct WebState {
    /// The configuration.
    pub config: Arc<Config>,
    /// The Prometheus recorder's handle.
    pub metrics: PrometheusHandle,
    /// The proxy to `web.api_url`.
    pub proxy: Proxy,
}

/// The UI's routes (`/` and `/assets/...`), for any router state: the web-only router and the
/// API's router (all-in-one) serve the same pages.
pub fn ui_router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
}

/// Everything a web-only process serves: health, metrics, the UI and `/api` proxied.
pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/health", get(ready))
        .route("/health/live", get(crate::api::health::live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(ui_router())
        .merge(proxy::routes(state.proxy.clone()))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such page; the API is under /api/v1")
}

/// A UI response: the page with the headers that keep it from running anything foreign.
fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX_HTML)
}

async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "style.css" => page("text/css; charset=utf-8", STYLE_CSS),
        "app.js" => page("text/javascript; charset=utf-8", APP_JS),
        "core.js" => page("text/javascript; charset=utf-8", CORE_JS),
        "mail.js" => page("text/javascript; charset=utf-8", MAIL_JS),
        "admin.js" => page("text/javascript; charset=utf-8", ADMIN_JS),
        _ => ApiError::not_found(format!("no asset named {file}")).into_response(),
    }
}

/// Readiness of a web-only node.
#[derive(Serialize)]
pub struct WebHealthReport {
    /// `ok` or `unavailable`.
    pub status: &'static str,
    /// What was checked.
    pub checks: WebChecks,
    /// Version of this build.
    pub version: &'static str,
}

/// The checks of a web-only node.
#[derive(Serialize)]
pub struct WebChecks {
    /// The API behind `web.api_url`: `ok` or `unavailable`.
    pub api_upstream: String,
}

/// 200 when the upstream API answers its liveness probe within 2 s, else 503; the cause goes
/// to the log (it names hosts), the answer says only which check failed.
async fn ready(State(state): State<WebState>) -> impl IntoResponse {
    let result = state.proxy.check_upstream(UPSTREAM_CHECK_TIMEOUT).await;
    if let Err(error) = &result {
        tracing::warn!(backend = "api_upstream", api_url = %state.proxy.base(), %error, "health check failed");
    }
    let ok = result.is_ok();
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(WebHealthReport {
            status: if ok { "ok" } else { "unavailable" },
            checks: WebChecks {
                api_upstream: if ok { "ok" } else { "unavailable" }.into(),
            },
            version: env!("CARGO_PKG_VERSION"),
        }),
    )
}

async fn metrics(State(state): State<WebState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Serves [`router`] on `addr` until `shutdown` flips, then gives open requests (a download
/// may be long) `drain` to finish.
pub async fn serve(
    state: WebState,
    addr: SocketAddr,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    drain: Duration,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %addr, api_url = %state.proxy.base(), "web listening");
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let mut stop = shutdown.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    tokio::select! {
        result = server => result,
        _ = async {
            let _ = shutdown.wait_for(|s| *s).await;
            tokio::time::sleep(drain).await;
        } => {
            tracing::warn!("requests still open after the drain timeout; stopping anyway");
            Ok(())
        }
    }
}
