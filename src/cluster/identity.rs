//! A member's identity as foca carries it, and what the membership task is fed.
//!
//! Its own file so the transport (which feeds datagrams in) and membership (which drives the
//! transport) both depend on it without depending on each other.

use std::net::SocketAddr;

use bytes::Bytes;
use foca::Timer;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{Member, MemberState};
use crate::config::Role;

/// A role as it travels in a member's identity (the config enum stays free of wire concerns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WireRole {
    /// [`Role::Smtp`].
    Smtp,
    /// [`Role::Queue`].
    Queue,
    /// [`Role::Api`].
    Api,
    /// [`Role::Web`].
    Web,
    /// [`Role::Imap`] (last: older members still decode the variants before it).
    Imap,
}

impl From<Role> for WireRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Smtp => Self::Smtp,
            Role::Queue => Self::Queue,
            Role::Api => Self::Api,
            Role::Web => Self::Web,
            Role::Imap => Self::Imap,
        }
    }
}

impl From<WireRole> for Role {
    fn from(role: WireRole) -> Self {
        match role {
            WireRole::Smtp => Self::Smtp,
            WireRole::Queue => Self::Queue,
            WireRole::Api => Self::Api,
            WireRole::Web => Self::Web,
            WireRole::Imap => Self::Imap,
        }
    }
}

/// A member's identity in foca: who it is, where to reach it, what it runs, and which run of
/// it this is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// `cluster.node_id`; foca's address of the identity, so one node id is one member.
    pub node_id: String,
    /// Its advertised cluster address.
    pub addr: SocketAddr,
    /// Its roles.
    pub roles: Vec<WireRole>,
    /// Start time in milliseconds since the epoch, bumped when it rejoins: a restarted node
    /// (or one that rejoins after being declared down) wins over its older identity.
    pub bump: u64,
}

impl NodeIdentity {
    /// This process's identity.
    pub fn new(node_id: String, addr: SocketAddr, roles: &[Role]) -> Self {
        let bump = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        Self {
            node_id,
            addr,
            roles: roles.iter().copied().map(WireRole::from).collect(),
            bump,
        }
    }

    /// A stand-in for a seed whose identity is not known yet: foca only uses it to address an
    /// announce, and the seed answers with its real identity.
    pub fn seed(addr: SocketAddr) -> Self {
        Self {
            node_id: String::new(),
            addr,
            roles: Vec::new(),
            bump: 0,
        }
    }

    /// The member it is, in `state`.
    pub fn member(&self, state: MemberState) -> Member {
        Member {
            node_id: self.node_id.clone(),
            addr: self.addr,
            roles: self.roles.iter().copied().map(Role::from).collect(),
            state,
        }
    }
}

impl foca::Identity for NodeIdentity {
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> String {
        self.node_id.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

/// What the membership task acts on.
#[derive(Debug)]
pub enum Input {
    /// A datagram from a peer (envelope already opened).
    Data(Bytes),
    /// A foca timer fired.
    Timer(Timer<NodeIdentity>),
    /// Announce this node to these addresses (seeds).
    Announce(Vec<SocketAddr>),
    /// Leave the cluster; answered once the goodbye is handed to the transport.
    Leave(oneshot::Sender<()>),
}
