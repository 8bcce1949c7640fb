//! `GET /api/v1/cluster`: the members this node sees and who holds each partition's lease.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiResult, ErrorBody};
use crate::cluster::MemberState;
use crate::config::Role;
use crate::message::rfc3339_millis;
use crate::store::now_millis;

/// The cluster as this node sees it.
#[derive(Serialize, ToSchema)]
pub struct ClusterView {
    /// This node's id.
    pub node_id: String,
    /// Every known member, this node included, sorted by node id.
    pub members: Vec<ClusterMember>,
    /// Every partition's lease, from the database (the same on every node).
    pub partitions: Vec<PartitionLease>,
}

/// A member.
#[derive(Serialize, ToSchema)]
pub struct ClusterMember {
    /// Its node id.
    pub node_id: String,
    /// Its cluster address.
    pub addr: String,
    /// `alive`, `suspect` or `down`.
    pub state: MemberState,
    /// Its roles.
    #[schema(value_type = Vec<String>)]
    pub roles: Vec<Role>,
}

/// A partition's lease.
#[derive(Serialize, ToSchema)]
pub struct PartitionLease {
    /// The partition.
    pub id: u32,
    /// The node holding a valid lease, or null while none does.
    pub owner: Option<String>,
    /// The fencing epoch, bumped on every takeover.
    pub epoch: i64,
    /// When the lease ends (RFC 3339 with milliseconds, the database's clock), if it has
    /// ever been held.
    pub lease_until: Option<String>,
}

/// Members and partition owners.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster",
    responses((status = 200, body = ClusterView), (status = 503, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn view(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<ClusterView>> {
    caller.require_admin()?;
    let members = match &state.cluster {
        Some(cluster) => cluster
            .members()
            .into_iter()
            .map(|m| ClusterMember {
                node_id: m.node_id,
                addr: m.addr.to_string(),
                state: m.state,
                roles: m.roles,
            })
            .collect(),
        // A single node shows itself.
        None => vec![ClusterMember {
            node_id: state.node_id.clone(),
            addr: String::new(),
            state: MemberState::Alive,
            roles: state.config.server.roles.clone(),
        }],
    };
    let now = now_millis();
    let partitions = state
        .stores
        .queue
        .list_leases()
        .await?
        .into_iter()
        .map(|l| {
            let valid = l.lease_until > now;
            PartitionLease {
                id: l.partition,
                owner: l.owner.filter(|_| valid),
                epoch: l.epoch,
                lease_until: (l.lease_until > 0).then(|| rfc3339_millis(l.lease_until)),
            }
        })
        .collect();
    Ok(Json(ClusterView {
        node_id: state.node_id.clone(),
        members,
        partitions,
    }))
}
