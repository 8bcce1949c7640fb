//! `GET /api/v1/stats`: the admin dashboard's numbers.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiResult, ErrorBody};
use crate::store::now_millis;

/// How many domains `deferred_by_domain` lists.
const TOP_DOMAINS: u32 = 20;

/// The window of `last_hour`.
const HOUR_MS: i64 = 3_600_000;

/// The dashboard's numbers.
#[derive(Serialize, ToSchema)]
pub struct Stats {
    /// Activity in the last hour.
    pub last_hour: LastHour,
    /// Pending queue rows (one per remote recipient) by status: `queued`, `deferred`.
    pub queue: BTreeMap<String, i64>,
    /// Deferred rows by recipient domain, most first; at most 20.
    pub deferred_by_domain: Vec<DomainCount>,
    /// What the operator must fix in this node's configuration (a host name that is not a
    /// fully qualified domain name, an example admin password), each saying how.
    pub setup_warnings: Vec<String>,
}

/// Activity in the last hour.
#[derive(Serialize, ToSchema)]
pub struct LastHour {
    /// Messages accepted (SMTP and the send API).
    pub accepted: i64,
    /// Remote recipients delivered.
    pub delivered: i64,
    /// Remote recipients that failed for good (the sender got a bounce).
    pub bounced: i64,
    /// Remote recipients deferred and still waiting for a retry.
    pub deferred: i64,
}

/// A domain and its count.
#[derive(Serialize, ToSchema)]
pub struct DomainCount {
    /// Recipient domain.
    pub domain: String,
    /// Deferred rows for it.
    pub count: i64,
}

/// The admin dashboard's numbers (admin only).
#[utoipa::path(get, path = "/api/v1/stats", tag = "admin",
    responses((status = 200, body = Stats), (status = 403, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn stats(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<Stats>> {
    caller.require_admin()?;
    let activity = state
        .stores
        .queue
        .activity(now_millis().saturating_sub(HOUR_MS), TOP_DOMAINS)
        .await?;
    let mut queue = BTreeMap::from([("queued".to_string(), 0), ("deferred".to_string(), 0)]);
    for (_, status, count) in state.stores.queue.queue_depth().await? {
        *queue.entry(status.as_str().to_string()).or_default() += count;
    }
    Ok(Json(Stats {
        last_hour: LastHour {
            accepted: activity.accepted,
            delivered: activity.delivered,
            bounced: activity.bounced,
            deferred: activity.deferred,
        },
        queue,
        deferred_by_domain: activity
            .deferred_by_domain
            .into_iter()
            .map(|(domain, count)| DomainCount { domain, count })
            .collect(),
        setup_warnings: state.config.setup_warnings(),
    }))
}
