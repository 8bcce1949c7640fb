//! What the queue's callers and its actors say to each other: the queue manager's messages and
//! why a queue operation was refused. One module both sides import, so the handle the rest of
//! the process uses depends on no actor's code.

use std::sync::Arc;

use ractor::RpcReplyPort;

use super::dsn::BounceError;
use crate::actors::CommitError;
use crate::store::{Lease, StoreError};

/// Messages to the queue manager.
pub enum QueueMsg {
    /// Renew and acquire leases, refresh queue metrics.
    Tick,
    /// Try the wanted partitions whose holder's lease has ended by now.
    Acquire,
    /// New work in the partitions [`super::QueueHandle`] collected.
    Hint,
    /// The alive queue members changed (cluster only).
    Members(Vec<String>),
    /// A drained partition's lease was released (or could not be).
    Released(u32, Lease),
    /// Node (the second field), the partition's desired owner, asks for it.
    Handover(u32, String),
    /// A leaving node released the partition and offers it: take it now.
    Offered(u32),
    /// A failed partition queue's restart backoff has passed: start it again.
    Restart(u32),
    /// Make a row due now (through its partition's owner).
    Retry(u32, i64, RpcReplyPort<Result<(), QueueOpError>>),
    /// Cancel a row, optionally bouncing it.
    Cancel(u32, i64, bool, RpcReplyPort<Result<(), QueueOpError>>),
}

/// Why a queue operation was refused.
///
/// The storage variants print their cause in their own message (which the API returns), so
/// they do not report it again as `source()`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueOpError {
    /// No such row in this partition.
    #[error("queue entry {0} not found")]
    NotFound(i64),
    /// The row is delivered, failed or cancelled already.
    #[error("queue entry {0} is {1} and can no longer change")]
    Finished(i64, &'static str),
    /// A delivery of the row is in progress.
    #[error("queue entry {0} is being delivered right now; try again in a moment")]
    InFlight(i64),
    /// This node does not own the partition.
    #[error("partition {0} is not owned by this node")]
    NotOwned(u32),
    /// The queue is restarting or has no owner.
    #[error("the delivery queue is unavailable; try again")]
    Unavailable,
    /// The row could not be read from the database.
    #[error("queue storage error: {0}")]
    Store(Arc<StoreError>),
    /// The change was not committed (the database failed, the writer was unavailable or the
    /// lease was lost).
    #[error("queue storage error: {0}")]
    Commit(CommitError),
    /// The bounce a cancellation asked for could not be built, so nothing was cancelled.
    #[error("queue storage error: {0}")]
    Bounce(Arc<BounceError>),
    /// No node holds the partition's lease right now (a takeover is under way).
    #[error(
        "partition {0} has no owner right now (a takeover is under way); try again in a few seconds"
    )]
    NoOwner(u32),
    /// The node that owns the partition could not be asked.
    #[error(
        "the owner of partition {partition}, node {node}, cannot be reached ({reason}); try again in a few seconds"
    )]
    Unreachable {
        /// The partition.
        partition: u32,
        /// Its owner.
        node: String,
        /// Why the request failed.
        reason: String,
    },
    /// The owning node refused the operation.
    #[error("{message}")]
    Remote {
        /// How it refused.
        kind: crate::cluster::ErrorKind,
        /// Its message.
        message: String,
    },
}
