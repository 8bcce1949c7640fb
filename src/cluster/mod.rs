//! The cluster: membership and requests between MaiRust nodes over QUIC.
//!
//! Everything outside this module sees a small handle ([`Cluster`]): start it, read the live
//! members, watch membership change, send a [`Request`] to a member. quinn (the transport,
//! mutual TLS) and foca (SWIM failure detection over QUIC datagrams) stay inside. Membership is
//! liveness only: who owns a partition is decided by the fenced lease in the database, and
//! [`assignment`] only says who *should*.

pub mod assignment;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::Role;

/// What this node knows of a member's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed probes; declared down unless it answers soon.
    Suspect,
    /// Declared down (or left).
    Down,
}

impl MemberState {
    /// The name in the API and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Down => "down",
        }
    }
}

/// A member of the cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its node id (`cluster.node_id`), also the owner name on its partition leases.
    pub node_id: String,
    /// Its advertised cluster address.
    pub addr: SocketAddr,
    /// The roles it runs; only `queue` members own partitions.
    pub roles: Vec<Role>,
    /// Liveness.
    pub state: MemberState,
}

impl Member {
    /// Whether it should own partitions now: runs the queue role and is not down. A suspect
    /// member keeps its partitions, so a missed probe or two moves nothing; its leases protect
    /// the mail if it really is gone.
    pub fn owns_partitions(&self) -> bool {
        self.state != MemberState::Down && self.roles.contains(&Role::Queue)
    }
}

/// A request one node sends another over a QUIC stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// New work is due in these partitions (sent to their owner by the accepting node).
    Hint {
        /// The partitions.
        partitions: Vec<u32>,
    },
    /// Make a queue row due now (sent to its partition's owner).
    Retry {
        /// The row's partition.
        partition: u32,
        /// The row.
        id: i64,
    },
    /// Cancel a queue row, bouncing it if asked (sent to its partition's owner).
    Cancel {
        /// The row's partition.
        partition: u32,
        /// The row.
        id: i64,
        /// Whether the sender gets a bounce.
        bounce: bool,
    },
    /// The sender is the partition's desired owner and asks the holder of its lease to hand
    /// it over (drain, then release).
    Handover {
        /// The partition.
        partition: u32,
    },
}

/// Why a request was refused, in a form both ends agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The thing asked about does not exist.
    NotFound,
    /// It exists but is in a state that forbids the change.
    Conflict,
    /// The receiver does not own the partition.
    NotOwned,
    /// The receiver cannot serve it now.
    Unavailable,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Done.
    Ok,
    /// Refused, with a message for people.
    Error {
        /// The kind.
        kind: ErrorKind,
        /// What went wrong.
        message: String,
    },
}

/// Serves the requests other nodes send to this one.
#[async_trait::async_trait]
pub trait RequestHandler: Send + Sync + 'static {
    /// Answers `request` from node `from`.
    async fn handle(&self, from: &str, request: Request) -> Response;
}
