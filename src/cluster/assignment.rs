//! Which node should own each partition: rendezvous (highest random weight) hashing over the
//! alive queue-role members. A join or a loss moves only the partitions whose best-scoring node
//! changed, and every node computes the same answer from the same member list.
//!
//! The score is SHA-256 of the node id and the partition (not `std::hash`, which is not stable
//! across platforms or compiler versions), so mixed versions agree.

use sha2::{Digest, Sha256};

/// The score of `node` for `partition`; the highest wins.
fn score(node: &str, partition: u32) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(b"mairust-partition-v1\0");
    hasher.update(node.as_bytes());
    hasher.update([0]);
    hasher.update(partition.to_be_bytes());
    let digest = hasher.finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(head)
}

/// The desired owner of `partition` among `nodes` (ties, practically impossible, go to the
/// smaller node id); `None` when there is no node.
pub fn owner_of<S: AsRef<str>>(partition: u32, nodes: &[S]) -> Option<&str> {
    nodes.iter().map(|n| n.as_ref()).max_by(|a, b| {
        score(a, partition)
            .cmp(&score(b, partition))
            .then_with(|| b.cmp(a))
    })
}

/// The partitions of `0..partitions` whose desired owner among `nodes` is `node`.
pub fn desired_for<S: AsRef<str>>(node: &str, partitions: u32, nodes: &[S]) -> Vec<u32> {
    (0..partitions)
        .filter(|p| owner_of(*p, nodes) == Some(node))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_has_exactly_one_owner_and_the_spread_is_even() {
        let nodes = ["core-0", "core-1", "core-2"];
        let mut counts = [0usize; 3];
        for p in 0..64 {
            let owner = owner_of(p, &nodes).expect("an owner");
            let i = nodes.iter().position(|n| *n == owner).expect("a member");
            counts[i] += 1;
        }
        assert_eq!(counts.iter().sum::<usize>(), 64);
        for c in counts {
            assert!((10..=35).contains(&c), "uneven spread {counts:?}");
        }
        let total: usize = nodes.iter().map(|n| desired_for(n, 64, &nodes).len()).sum();
        assert_eq!(total, 64);
    }

    #[test]
    fn the_answer_does_not_depend_on_member_order() {
        let a = ["x", "y", "z"];
        let b = ["z", "x", "y"];
        for p in 0..256 {
            assert_eq!(owner_of(p, &a), owner_of(p, &b));
        }
    }

    #[test]
    fn a_loss_moves_only_the_lost_nodes_partitions() {
        let before = ["core-0", "core-1", "core-2"];
        let after = ["core-0", "core-2"];
        for p in 0..512 {
            let was = owner_of(p, &before).expect("owner");
            let now = owner_of(p, &after).expect("owner");
            if was != "core-1" {
                assert_eq!(was, now, "partition {p} moved without cause");
            }
        }
    }

    #[test]
    fn a_join_takes_partitions_only_for_the_new_node() {
        let before = ["core-0", "core-1"];
        let after = ["core-0", "core-1", "core-2"];
        let mut moved = 0;
        for p in 0..512 {
            let was = owner_of(p, &before).expect("owner");
            let now = owner_of(p, &after).expect("owner");
            if was != now {
                assert_eq!(now, "core-2", "partition {p} moved between old nodes");
                moved += 1;
            }
        }
        assert!(moved > 100, "the new node got only {moved} of 512");
    }

    #[test]
    fn no_nodes_no_owner_and_the_scores_are_fixed() {
        let none: [&str; 0] = [];
        assert_eq!(owner_of(3, &none), None);
        // A fixed value: a change of the hash would move every partition of a running
        // cluster during a rolling upgrade.
        assert_eq!(owner_of(0, &["a", "b"]), owner_of(0, &["b", "a"]));
        assert_eq!(score("core-0", 7), 0x9dba_4929_7b7b_094e);
        assert_ne!(score("core-0", 7), score("core-0", 8));
    }
}
