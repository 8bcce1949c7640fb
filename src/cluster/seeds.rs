//! Seeds: the addresses a node announces itself to, from `cluster.seeds` and
//! `cluster.seed_dns`, resolved again on every round so a changed DNS answer (pods coming and
//! going behind a headless Service) is seen.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::identity::Input;
use super::{Member, MemberState};

/// How often seeds are tried while no other member is known.
pub const LONELY_INTERVAL: Duration = Duration::from_secs(1);

/// How often seeds are resolved and tried once joined (finds new nodes and heals partitions).
pub const JOINED_INTERVAL: Duration = Duration::from_secs(10);

/// Every address the configured seeds resolve to now; names that do not resolve are logged and
/// skipped (the next round tries again).
pub async fn resolve(seeds: &[String], seed_dns: Option<&str>) -> BTreeSet<SocketAddr> {
    let mut addrs = BTreeSet::new();
    for name in seeds.iter().map(String::as_str).chain(seed_dns) {
        match tokio::net::lookup_host(name).await {
            Ok(found) => addrs.extend(found),
            Err(error) => {
                tracing::debug!(seed = name, %error, "cluster seed does not resolve now")
            }
        }
    }
    addrs
}

/// Which of the `resolved` seed addresses to announce to: none that is this node; all of them
/// while no other member is alive; otherwise those that are not the address of a member alive
/// or suspect (new nodes, and ones on the other side of a partition).
pub fn to_announce(resolved: &BTreeSet<SocketAddr>, me: &str, view: &[Member]) -> Vec<SocketAddr> {
    let others: Vec<&Member> = view.iter().filter(|m| m.node_id != me).collect();
    let my_addr = view.iter().find(|m| m.node_id == me).map(|m| m.addr);
    let joined = others.iter().any(|m| m.state == MemberState::Alive);
    resolved
        .iter()
        .copied()
        .filter(|addr| Some(*addr) != my_addr)
        .filter(|addr| {
            !joined
                || !others
                    .iter()
                    .any(|m| m.addr == *addr && m.state != MemberState::Down)
        })
        .collect()
}

/// Announces to the seeds forever: every second while alone, every ten seconds once joined.
pub async fn run(
    seeds: Vec<String>,
    seed_dns: Option<String>,
    me: String,
    view: watch::Receiver<Vec<Member>>,
    membership: mpsc::Sender<Input>,
) {
    if seeds.is_empty() && seed_dns.is_none() {
        return;
    }
    loop {
        let resolved = resolve(&seeds, seed_dns.as_deref()).await;
        let current = view.borrow().clone();
        let targets = to_announce(&resolved, &me, &current);
        let alone = !current
            .iter()
            .any(|m| m.node_id != me && m.state == MemberState::Alive);
        if resolved.is_empty() && alone {
            tracing::debug!("no cluster seed resolves yet");
        }
        tracing::trace!(?targets, ?resolved, "announcing to cluster seeds");
        if !targets.is_empty() && membership.send(Input::Announce(targets)).await.is_err() {
            return;
        }
        tokio::time::sleep(if alone {
            LONELY_INTERVAL
        } else {
            JOINED_INTERVAL
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn member(id: &str, port: u16, state: MemberState) -> Member {
        Member {
            node_id: id.into(),
            addr: addr(port),
            roles: vec![Role::Queue],
            state,
        }
    }

    #[test]
    fn alone_announces_to_every_seed_but_itself() {
        let resolved = BTreeSet::from([addr(1), addr(2), addr(3)]);
        let view = [
            member("me", 1, MemberState::Alive),
            member("b", 2, MemberState::Down),
        ];
        assert_eq!(to_announce(&resolved, "me", &view), [addr(2), addr(3)]);
    }

    #[test]
    fn joined_announces_only_to_seeds_that_are_not_live_members() {
        let resolved = BTreeSet::from([addr(1), addr(2), addr(3), addr(4)]);
        let view = [
            member("me", 1, MemberState::Alive),
            member("b", 2, MemberState::Alive),
            member("c", 3, MemberState::Suspect),
            member("d", 4, MemberState::Down),
        ];
        assert_eq!(to_announce(&resolved, "me", &view), [addr(4)]);
    }

    #[tokio::test]
    async fn literal_addresses_resolve_and_bad_names_are_skipped() {
        let seeds = vec!["127.0.0.1:7946".to_string(), "not a name".to_string()];
        let resolved = resolve(&seeds, Some("[::1]:7947")).await;
        assert!(resolved.contains(&addr(7946)));
        assert!(resolved.contains(&"[::1]:7947".parse().unwrap()));
        assert_eq!(resolved.len(), 2);
    }
}
