//! Membership: foca (SWIM) driven by one task, fed with datagrams and timers, and the view of
//! the members that the rest of the process reads.
//!
//! foca only notifies members going up and down, not suspicion, so the view is rebuilt from
//! foca's full membership state (alive, suspect and down members alike) after every event
//! ([`view`]); a change is published on a watch channel and in the
//! `mairust_cluster_members{state}` gauge.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec};
use tokio::sync::{mpsc, watch};

pub use super::identity::{Input, NodeIdentity, WireRole};
use super::transport::Transport;
use super::{Member, MemberState, envelope};
#[cfg(test)]
use crate::config::Role;
use crate::events::{self, ClusterMembersChanged};

/// Largest foca packet; the datagram adds the envelope's version byte. QUIC datagrams fit
/// about 1150 bytes at the minimum path MTU of 1200, so this always fits; the transport still
/// checks each datagram against the connection's limit.
pub const MAX_PACKET_SIZE: usize = 1024;

/// How long a member declared down stays in the view before it is forgotten.
pub const FORGET_DOWN_AFTER: Duration = Duration::from_secs(10 * 60);

/// The view: `me` (alive) and every other member foca knows, one entry per node id (the
/// newest identity), sorted by node id.
pub fn view(
    me: &NodeIdentity,
    known: impl IntoIterator<Item = (NodeIdentity, foca::State)>,
) -> Vec<Member> {
    let mut newest: BTreeMap<String, (u64, Member)> = BTreeMap::new();
    newest.insert(
        me.node_id.clone(),
        (u64::MAX, me.member(MemberState::Alive)),
    );
    for (id, state) in known {
        if id.node_id.is_empty() {
            continue;
        }
        let state = match state {
            foca::State::Alive => MemberState::Alive,
            foca::State::Suspect => MemberState::Suspect,
            foca::State::Down => MemberState::Down,
        };
        let replace = newest
            .get(&id.node_id)
            .is_none_or(|(bump, _)| *bump < id.bump);
        if replace {
            newest.insert(id.node_id.clone(), (id.bump, id.member(state)));
        }
    }
    newest.into_values().map(|(_, member)| member).collect()
}

/// An announce sent to a seed is addressed to a stand-in ([`NodeIdentity::seed`]: the
/// sender knows the seed's address, not its node id), and foca accepts an announce only if it
/// names this node's id; so one addressed to a stand-in is readdressed to `me` here. Anything
/// else is returned as it is.
pub fn address_announce(data: Bytes, me: &NodeIdentity) -> Bytes {
    use foca::Codec;
    let Ok(mut header) = PostcardCodec.decode_header(&data[..]) else {
        return data;
    };
    let header: &mut foca::Header<NodeIdentity> = &mut header;
    if header.message != foca::Message::Announce || !header.dst.node_id.is_empty() {
        return data;
    }
    header.dst = me.clone();
    let mut readdressed = bytes::BytesMut::new();
    match PostcardCodec.encode_header(header, &mut readdressed) {
        Ok(()) => readdressed.freeze(),
        Err(_) => data,
    }
}

/// How many members of `view` are alive, suspect and down.
pub fn counts(view: &[Member]) -> ClusterMembersChanged {
    let count = |state| view.iter().filter(|m| m.state == state).count();
    ClusterMembersChanged {
        alive: count(MemberState::Alive),
        suspect: count(MemberState::Suspect),
        down: count(MemberState::Down),
    }
}

/// foca's timings: probe every second, suspect a member that misses a probe and its
/// indirect probes (~0.5 s), declare it down 2 s later; so a dead node is down within about
/// 3.5 s, well inside a 4 s lease.
pub fn foca_config() -> foca::Config {
    let mut config = foca::Config::new_lan(NonZeroU32::MIN.saturating_add(15));
    config.probe_period = Duration::from_secs(1);
    config.probe_rtt = Duration::from_millis(400);
    // Down within about 3 s of a crash: before a 4 s lease expires, so a takeover waits for
    // the lease, not for membership.
    config.suspect_to_down_after = Duration::from_millis(1500);
    config.remove_down_after = Some(FORGET_DOWN_AFTER);
    config.max_packet_size = NonZeroUsize::MIN.saturating_add(MAX_PACKET_SIZE - 1);
    // Down members are asked to come back often, so a healed partition converges quickly.
    config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(5),
        num_members: NonZeroUsize::MIN.saturating_add(2),
    });
    config
}

/// Runs foca until [`Input::Leave`] or until every sender is gone.
pub async fn run(
    me: NodeIdentity,
    transport: Arc<Transport>,
    view_tx: watch::Sender<Vec<Member>>,
    inputs: mpsc::Sender<Input>,
    mut rx: mpsc::Receiver<Input>,
) {
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut seed);
    let rng: rand_foca::rngs::StdRng = rand_foca::SeedableRng::from_seed(seed);
    let mut foca = Foca::new(me, foca_config(), rng, PostcardCodec);
    let mut runtime = AccumulatingRuntime::new();
    let mut last = view_tx.borrow().clone();
    events::emit(counts(&last));
    while let Some(input) = rx.recv().await {
        let mut leaving = None;
        let result = match input {
            Input::Data(data) => {
                let data = address_announce(data, foca.identity());
                foca.handle_data(&data, &mut runtime)
            }
            Input::Timer(timer) => foca.handle_timer(timer, &mut runtime),
            Input::Announce(addrs) => addrs
                .into_iter()
                .try_for_each(|addr| foca.announce(NodeIdentity::seed(addr), &mut runtime)),
            Input::Leave(done) => {
                leaving = Some(done);
                foca.leave_cluster(&mut runtime)
            }
        };
        if let Err(error) = result {
            // Malformed or stale packets, our own packets echoed back: nothing to act on.
            tracing::debug!(%error, "membership input ignored");
        }
        flush(&mut runtime, &transport, &inputs);
        let current = view(
            foca.identity(),
            foca.iter_membership_state()
                .map(|m| (m.id().clone(), m.state())),
        );
        if current != last {
            events::emit(counts(&current));
            view_tx.send_replace(current.clone());
            last = current;
        }
        if let Some(done) = leaving {
            let _ = done.send(());
            return;
        }
    }
}

/// Hands foca's output to the transport, the timers and the log.
fn flush(
    runtime: &mut AccumulatingRuntime<NodeIdentity>,
    transport: &Arc<Transport>,
    inputs: &mpsc::Sender<Input>,
) {
    while let Some((to, packet)) = runtime.to_send() {
        transport.send_datagram(to.addr, Bytes::from(envelope::seal(&packet)));
    }
    while let Some((after, timer)) = runtime.to_schedule() {
        let inputs = inputs.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = inputs.send(Input::Timer(timer)).await;
        });
    }
    while let Some(notification) = runtime.to_notify() {
        match notification {
            OwnedNotification::MemberUp(id) => {
                tracing::info!(node_id = %id.node_id, addr = %id.addr, "cluster member up");
            }
            OwnedNotification::MemberDown(id) => {
                tracing::warn!(node_id = %id.node_id, addr = %id.addr, "cluster member down");
            }
            OwnedNotification::Rejoin(id) => {
                tracing::warn!(
                    node_id = %id.node_id,
                    bump = id.bump,
                    "this node was declared down by its peers and rejoined"
                );
            }
            OwnedNotification::Active => tracing::info!("joined the cluster"),
            OwnedNotification::Idle => {
                tracing::info!("no other cluster member known; announcing to the seeds")
            }
            OwnedNotification::Defunct => {
                tracing::warn!("this node was declared down by its peers")
            }
            OwnedNotification::Rename(old, new) => {
                tracing::info!(node_id = %new.node_id, old_bump = old.bump, new_bump = new.bump, "cluster member restarted");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn id(node_id: &str, port: u16, bump: u64) -> NodeIdentity {
        NodeIdentity {
            node_id: node_id.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            roles: vec![WireRole::Queue],
            bump,
        }
    }

    #[test]
    fn the_view_has_me_and_every_known_member_sorted() {
        let me = id("b", 2, 5);
        let members = view(
            &me,
            [
                (id("c", 3, 1), foca::State::Suspect),
                (id("a", 1, 1), foca::State::Alive),
                (id("d", 4, 1), foca::State::Down),
            ],
        );
        let got: Vec<_> = members
            .iter()
            .map(|m| (m.node_id.as_str(), m.state))
            .collect();
        assert_eq!(
            got,
            [
                ("a", MemberState::Alive),
                ("b", MemberState::Alive),
                ("c", MemberState::Suspect),
                ("d", MemberState::Down),
            ]
        );
        assert_eq!(members[0].roles, [Role::Queue]);
        let c = counts(&members);
        assert_eq!((c.alive, c.suspect, c.down), (2, 1, 1));
    }

    #[test]
    fn the_newest_identity_of_a_node_wins_and_i_am_always_alive() {
        let me = id("me", 1, 5);
        let members = view(
            &me,
            [
                (id("x", 7, 9), foca::State::Alive),
                (id("x", 8, 3), foca::State::Down),
                (id("me", 9, 100), foca::State::Down),
                (
                    NodeIdentity::seed(SocketAddr::from(([127, 0, 0, 1], 5))),
                    foca::State::Alive,
                ),
            ],
        );
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].node_id, "me");
        assert_eq!(members[0].state, MemberState::Alive);
        assert_eq!(members[0].addr.port(), 1);
        assert_eq!(members[1].addr.port(), 7);
        assert_eq!(members[1].state, MemberState::Alive);
    }

    #[test]
    fn a_renewed_identity_wins_the_conflict() {
        use foca::Identity;
        let old = id("a", 1, 10);
        let new = old.renew().unwrap();
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
        assert_eq!(old.addr(), new.addr());
    }

    #[test]
    fn an_announce_to_a_seed_is_readdressed_to_me() {
        use foca::{Codec, Header, Message};
        let me = id("me", 1, 5);
        let encode = |dst: NodeIdentity, message: Message<NodeIdentity>| {
            let mut buf = bytes::BytesMut::new();
            PostcardCodec
                .encode_header(
                    &Header {
                        src: id("other", 2, 1),
                        src_incarnation: 0,
                        dst,
                        message,
                    },
                    &mut buf,
                )
                .unwrap();
            buf.freeze()
        };
        let decode = |data: Bytes| -> Header<NodeIdentity> {
            PostcardCodec.decode_header(&data[..]).unwrap()
        };
        let to_seed = encode(NodeIdentity::seed(me.addr), Message::Announce);
        assert_eq!(decode(address_announce(to_seed, &me)).dst, me);
        // A probe to a stand-in, or an announce to someone else, is left alone.
        let ping = encode(NodeIdentity::seed(me.addr), Message::Ping(1));
        assert_eq!(address_announce(ping.clone(), &me), ping);
        let elsewhere = encode(id("third", 3, 1), Message::Announce);
        assert_eq!(address_announce(elsewhere.clone(), &me), elsewhere);
        let garbage = Bytes::from_static(b"\xff\xff");
        assert_eq!(address_announce(garbage.clone(), &me), garbage);
    }

    #[test]
    fn roles_survive_the_wire() {
        for role in [Role::Smtp, Role::Queue, Role::Api, Role::Web] {
            assert_eq!(Role::from(WireRole::from(role)), role);
        }
    }

    #[test]
    fn down_is_declared_within_the_lease() {
        let config = foca_config();
        let worst = config.probe_period + config.probe_rtt + config.suspect_to_down_after;
        assert!(worst <= Duration::from_secs(4), "{worst:?}");
        assert!(config.max_packet_size.get() == MAX_PACKET_SIZE);
    }
}
