//! Health, readiness and metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;

/// Result of the readiness checks.
#[derive(Serialize, ToSchema)]
pub struct HealthReport {
    /// `ok` or `unavailable`.
    pub status: &'static str,
    /// Each backend's state: `ok` or the error.
    pub checks: Checks,
    /// Version of this build.
    pub version: &'static str,
}

/// Per-backend results.
#[derive(Serialize, ToSchema)]
pub struct Checks {
    /// The metadata database.
    pub database: String,
    /// The blob store.
    pub blob_store: String,
}

async fn report(state: &ApiState) -> (StatusCode, Json<HealthReport>) {
    let timeout = std::time::Duration::from_secs(5);
    let (db, blobs) = tokio::join!(
        tokio::time::timeout(timeout, state.stores.meta.health()),
        tokio::time::timeout(timeout, state.stores.blobs.health()),
    );
    let describe = |r: Result<Result<(), String>, tokio::time::error::Elapsed>| match r {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => e,
        Err(_) => "timed out".to_string(),
    };
    let database = describe(db.map(|r| r.map_err(|e| e.to_string())));
    let blob_store = describe(blobs.map(|r| r.map_err(|e| e.to_string())));
    let ok = database == "ok" && blob_store == "ok";
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(HealthReport {
            status: if ok { "ok" } else { "unavailable" },
            checks: Checks {
                database,
                blob_store,
            },
            version: env!("CARGO_PKG_VERSION"),
        }),
    )
}

/// Overall health with each backend's state (same status code as readiness).
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, body = HealthReport), (status = 503, body = HealthReport)))]
pub async fn health(State(state): State<ApiState>) -> impl IntoResponse {
    report(&state).await
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200)))]
pub async fn live() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: 200 only when the database and the blob store answer.
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses((status = 200, body = HealthReport), (status = 503, body = HealthReport)))]
pub async fn ready(State(state): State<ApiState>) -> impl IntoResponse {
    report(&state).await
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
