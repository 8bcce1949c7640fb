//! Health, readiness and metrics.

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;

/// Result of the readiness checks.
#[derive(Serialize, ToSchema)]
pub struct HealthReport {
    /// `ok` or `unavailable`.
    pub status: &'static str,
    /// Each backend's state: `ok` or `unavailable`.
    pub checks: Checks,
    /// Version of this build.
    pub version: &'static str,
    /// The backends' error messages; only for a signed-in administrator (anyone else gets
    /// the status only, and the errors go to the log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Checks>,
}

/// Per-backend results.
#[derive(Serialize, ToSchema)]
pub struct Checks {
    /// The metadata database.
    pub database: String,
    /// The blob store.
    pub blob_store: String,
    /// The cluster endpoint, when this node is in a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// Runs both checks; `Err` carries the failure's text.
async fn check(state: &ApiState) -> (Result<(), String>, Result<(), String>) {
    let timeout = std::time::Duration::from_secs(5);
    let (db, blobs) = tokio::join!(
        tokio::time::timeout(timeout, state.stores.meta.health()),
        tokio::time::timeout(timeout, state.stores.blobs.health()),
    );
    let flatten = |r: Result<Result<(), String>, tokio::time::error::Elapsed>| {
        r.unwrap_or_else(|_| Err(format!("no answer within {}s", timeout.as_secs())))
    };
    (
        flatten(db.map(|r| r.map_err(|e| e.to_string()))),
        flatten(blobs.map(|r| r.map_err(|e| e.to_string()))),
    )
}

/// Whether the request carries an administrator's credentials. Failing credentials are not
/// an error here: health answers everyone, only the details are withheld.
async fn caller_is_admin(state: &ApiState, headers: &HeaderMap, ip: IpAddr) -> bool {
    if !headers.contains_key(header::AUTHORIZATION) {
        return false;
    }
    super::auth::identify(headers, ip, state)
        .await
        .is_ok_and(|(user, _)| user.is_admin)
}

async fn report(
    state: &ApiState,
    headers: &HeaderMap,
    ip: IpAddr,
) -> (StatusCode, Json<HealthReport>) {
    let (db, blobs) = check(state).await;
    // Backend errors can name hosts, paths and accounts: they go to the log, not to
    // whoever can reach the health port.
    for (backend, result) in [("database", &db), ("blob_store", &blobs)] {
        if let Err(error) = result {
            tracing::warn!(backend, %error, "health check failed");
        }
    }
    let cluster = state.cluster.as_ref().map(|c| {
        if !c.is_up() {
            Err("the cluster endpoint is not running".to_string())
        } else if let Some(reason) = c.refusal() {
            Err(format!(
                "no cluster peer accepted this node ({reason}); give every node the same \
                 cluster.secret (or CA)"
            ))
        } else {
            Ok(())
        }
    });
    if let Some(Err(error)) = &cluster {
        tracing::warn!(backend = "cluster", %error, "health check failed");
    }
    let ok = db.is_ok() && blobs.is_ok() && cluster.as_ref().is_none_or(|c| c.is_ok());
    let status = |r: &Result<(), String>| if r.is_ok() { "ok" } else { "unavailable" }.to_string();
    let checks = Checks {
        database: status(&db),
        blob_store: status(&blobs),
        cluster: cluster.as_ref().map(status),
    };
    let details = if caller_is_admin(state, headers, ip).await {
        let text = |r: Result<(), String>| r.err().unwrap_or_else(|| "ok".into());
        Some(Checks {
            database: text(db),
            blob_store: text(blobs),
            cluster: cluster.map(text),
        })
    } else {
        None
    };
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(HealthReport {
            status: if ok { "ok" } else { "unavailable" },
            checks,
            version: env!("CARGO_PKG_VERSION"),
            details,
        }),
    )
}

/// Overall health with each backend's state (same status code as readiness); an
/// administrator's credentials add the backends' error messages.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, body = HealthReport), (status = 503, body = HealthReport)))]
pub async fn health(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> impl IntoResponse {
    report(&state, &headers, peer.ip()).await
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200)))]
pub async fn live() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: 200 only when the database and the blob store answer and, in a cluster, the
/// cluster endpoint runs (details as for `/health`).
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses((status = 200, body = HealthReport), (status = 503, body = HealthReport)))]
pub async fn ready(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> impl IntoResponse {
    report(&state, &headers, peer.ip()).await
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
