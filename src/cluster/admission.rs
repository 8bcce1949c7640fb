//! Whether this node is part of the cluster it was configured for, as its handshakes show.
//!
//! Membership only lists the peers a node has talked to, so a node whose handshake every
//! peer refuses (another `cluster.secret` or CA) would see itself alone, take every
//! partition, and, once the real members stopped, deliver their mail from the shared
//! database. Its QUIC handshakes tell it otherwise: a refusal before any peer accepted it
//! makes it [`Admission::Refused`], which is not ready and owns no partition, until a
//! handshake succeeds. A node that found no peer at all when it started is
//! [`Admission::Alone`] (the first node) and keeps its partitions should a misconfigured
//! newcomer later refuse it: the node that cannot join a running cluster is the one that
//! yields.

use tokio::sync::watch;

/// Where this node stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Starting: no peer has answered yet.
    Joining,
    /// No peer answered within the join wait: the first node.
    Alone,
    /// A peer completed a handshake with this node.
    Admitted,
    /// Every peer that answered refused the handshake; why, for people.
    Refused(String),
}

impl Admission {
    /// Whether this node may own queue partitions.
    pub fn may_own_partitions(&self) -> bool {
        matches!(self, Self::Alone | Self::Admitted)
    }
}

/// Records handshake outcomes into a watched [`Admission`].
#[derive(Debug, Clone)]
pub struct AdmissionTracker {
    state: watch::Sender<Admission>,
}

impl AdmissionTracker {
    /// A tracker starting at [`Admission::Joining`].
    pub fn new() -> Self {
        Self {
            state: watch::Sender::new(Admission::Joining),
        }
    }

    /// The current state, and every change.
    pub fn subscribe(&self) -> watch::Receiver<Admission> {
        self.state.subscribe()
    }

    /// The current state.
    pub fn current(&self) -> Admission {
        self.state.borrow().clone()
    }

    /// A handshake with a peer succeeded (either way).
    pub fn admitted(&self) {
        self.state.send_if_modified(|state| {
            let changed = *state != Admission::Admitted;
            if matches!(state, Admission::Refused(_)) {
                tracing::info!(
                    "a cluster peer accepted this node's handshake; it may own partitions again"
                );
            }
            *state = Admission::Admitted;
            changed
        });
    }

    /// A peer refused this node's handshake (`reason` names the peer and the error).
    pub fn refused(&self, reason: String) {
        self.state.send_if_modified(|state| match state {
            Admission::Joining | Admission::Refused(_) => {
                let first = matches!(state, Admission::Joining);
                if first {
                    tracing::error!(
                        %reason,
                        "a cluster peer refused this node's handshake and none has accepted it: \
                         it is not ready and owns no queue partition until one does; give every \
                         node the same cluster.secret (or CA)"
                    );
                }
                *state = Admission::Refused(reason);
                first
            }
            Admission::Alone | Admission::Admitted => false,
        });
    }

    /// The join wait passed with no answer: this is the first node.
    pub fn alone(&self) {
        self.state.send_if_modified(|state| {
            let joining = *state == Admission::Joining;
            if joining {
                *state = Admission::Alone;
            }
            joining
        });
    }
}

impl Default for AdmissionTracker {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_node_owns_nothing_until_a_handshake_succeeds() {
        let t = AdmissionTracker::new();
        assert!(!t.current().may_own_partitions());
        t.refused("peer 10.0.0.1:7946: crypto error".into());
        assert!(matches!(t.current(), Admission::Refused(r) if r.contains("10.0.0.1")));
        // The join wait ending does not make a refused node the first one.
        t.alone();
        assert!(!t.current().may_own_partitions());
        t.admitted();
        assert_eq!(t.current(), Admission::Admitted);
        // Once in, a misconfigured newcomer's refusal changes nothing.
        t.refused("newcomer".into());
        assert_eq!(t.current(), Admission::Admitted);
    }

    #[test]
    fn the_first_node_keeps_its_partitions_when_a_newcomer_refuses_it() {
        let t = AdmissionTracker::new();
        t.alone();
        assert_eq!(t.current(), Admission::Alone);
        t.refused("newcomer".into());
        assert!(t.current().may_own_partitions());
    }
}
