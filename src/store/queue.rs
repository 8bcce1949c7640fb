//! The delivery queue's persistence: queue rows and partition leases with fencing epochs.
//!
//! A partition's owner holds a lease row `(partition, owner, epoch, lease_until)`; times come
//! from the database's clock. Every change an owner makes to its partition's rows runs in a
//! transaction that first checks (and, on PostgreSQL, row-locks) its lease with the epoch it
//! was granted, and every row UPDATE in it repeats that condition and must change its row. A
//! takeover or an adoption bumps the epoch, so a replica that was presumed dead (or a previous
//! actor of the same node) cannot change anything afterwards: its next transaction fails with
//! [`StoreError::LeaseLost`].

use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Millis, Page, StoreError};

/// The partition of a recipient domain: a stable hash, so every node agrees.
pub fn partition_of(domain: &str, partitions: u32) -> u32 {
    let digest = Sha256::digest(domain.trim().to_ascii_lowercase().as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(head) % u64::from(partitions.max(1))) as u32
}

/// Where a queue row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueStatus {
    /// Waiting for its first attempt.
    Queued,
    /// Waiting for a retry.
    Deferred,
    /// Accepted by the remote server.
    Delivered,
    /// Failed permanently or expired; the sender was notified.
    Failed,
    /// Cancelled by an administrator.
    Cancelled,
}

impl QueueStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Deferred => "deferred",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a stored or user-given name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "deferred" => Self::Deferred,
            "delivered" => Self::Delivered,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Whether the row still waits for delivery.
    pub fn is_pending(self) -> bool {
        matches!(self, Self::Queued | Self::Deferred)
    }
}

/// One queue row, with what delivery needs of its message.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    /// Row id.
    pub id: i64,
    /// The message (acceptance id).
    pub message_id: String,
    /// Envelope sender (empty for bounces).
    pub sender: String,
    /// Envelope recipient.
    pub recipient: String,
    /// The recipient's domain.
    pub domain: String,
    /// Partition of the domain.
    pub partition: u32,
    /// State.
    pub status: QueueStatus,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due.
    pub next_attempt_at: Millis,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// When the row was queued.
    pub created_at: Millis,
    /// When it gives up.
    pub expires_at: Millis,
    /// Last change.
    pub updated_at: Millis,
    /// Current holder of the partition's lease, if any.
    pub owner: Option<String>,
    /// The message body's blob key.
    pub blob_key: String,
    /// The message size.
    pub size: i64,
    /// When the message was accepted.
    pub received_at: Millis,
}

/// A granted lease: the fencing token for every change to the partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The partition.
    pub partition: u32,
    /// The holder.
    pub owner: String,
    /// The epoch; bumped on every takeover.
    pub epoch: i64,
}

/// The answer to a lease acquisition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseGrant {
    /// The lease was free or expired and is now ours.
    Granted(Lease),
    /// Someone holds a valid lease (possibly this very owner: see
    /// [`QueueStore::adopt_lease`]).
    Held {
        /// The holder, if any.
        owner: Option<String>,
        /// How long until it expires, by the database's clock (never negative): the moment
        /// to try again.
        expires_in: Duration,
    },
}

/// One partition's lease row, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseInfo {
    /// The partition.
    pub partition: u32,
    /// The holder; `None` when released or never taken.
    pub owner: Option<String>,
    /// The fencing epoch.
    pub epoch: i64,
    /// Until when the lease is valid (ms since the epoch, database clock).
    pub lease_until: Millis,
}

/// A change an owner makes to one of its rows.
#[derive(Debug, Clone)]
pub struct EntryUpdate {
    /// Row id.
    pub id: i64,
    /// New state.
    pub status: QueueStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// Next attempt (for pending rows).
    pub next_attempt_at: Millis,
    /// The failure, if any.
    pub last_error: Option<String>,
    /// The delivery attempt this update records (none for a retry or a cancellation).
    pub attempt: Option<Attempt>,
}

/// One delivery attempt, kept for the message trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// `delivered`, `deferred`, `failed` (no one to notify) or `bounced` (sender notified).
    pub outcome: &'static str,
    /// The remote reply or the local error (stored truncated to [`ATTEMPT_DETAIL_MAX`]).
    pub detail: String,
}

/// The longest attempt detail stored, in bytes.
pub const ATTEMPT_DETAIL_MAX: usize = 1024;

/// A stored attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// When it ended.
    pub attempted_at: Millis,
    /// See [`Attempt::outcome`].
    pub outcome: String,
    /// See [`Attempt::detail`].
    pub detail: String,
    /// The node that made it.
    pub node: String,
}

/// What the message trace shows of a message.
#[derive(Debug, Clone)]
pub struct TraceMessage {
    /// Internal id.
    pub id: String,
    /// `Message-ID:` header.
    pub message_id: Option<String>,
    /// `From:` header.
    pub from: String,
    /// Envelope sender.
    pub envelope_from: String,
    /// Arrival.
    pub received_at: Millis,
    /// Stored size.
    pub size: i64,
    /// Local mailboxes holding it.
    pub local_recipients: Vec<String>,
    /// Its queue rows, each with its attempts (oldest first).
    pub remote: Vec<(QueueEntry, Vec<AttemptRecord>)>,
}

/// Filter of the queue listing.
#[derive(Debug, Clone, Default)]
pub struct QueueFilter {
    /// Only rows in this state.
    pub status: Option<QueueStatus>,
    /// Only rows for this domain.
    pub domain: Option<String>,
    /// Only rows whose recipient contains this text (any case).
    pub recipient: Option<String>,
}

/// Persistence of the delivery queue.
#[async_trait::async_trait]
pub trait QueueStore: Send + Sync + 'static {
    /// Records the partition count on first start and refuses a different one later (rows
    /// are placed by it).
    async fn ensure_partition_count(&self, partitions: u32) -> Result<(), StoreError>;
    /// Takes a free or expired lease (bumping its epoch); [`LeaseGrant::Held`] with the time
    /// left while a lease is valid, also when `owner` itself holds it.
    async fn acquire_lease(
        &self,
        partition: u32,
        owner: &str,
        ttl: Duration,
    ) -> Result<LeaseGrant, StoreError>;
    /// Takes over a still-valid lease that `owner` already holds (after an actor or process
    /// restart), bumping its epoch so that whatever ran under the old epoch is fenced off, and
    /// extending it by `ttl`. `None` when `owner` does not hold it or it expired.
    async fn adopt_lease(
        &self,
        partition: u32,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError>;
    /// Extends every valid lease of `owner`; returns those it still holds. Runs on a
    /// connection of its own, so a busy main pool cannot delay it past the leases' expiry.
    async fn renew_leases(&self, owner: &str, ttl: Duration) -> Result<Vec<Lease>, StoreError>;
    /// Gives a lease up at once (graceful handover); does nothing unless owner and epoch
    /// still match.
    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError>;
    /// Every partition's lease row, by partition.
    async fn list_leases(&self) -> Result<Vec<LeaseInfo>, StoreError>;
    /// Destination domains of a partition that have due rows, the longest-waiting first,
    /// leaving out `skip` (domains that cannot take another connection now), at most `limit`.
    async fn due_domains(
        &self,
        partition: u32,
        skip: &[String],
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;
    /// Due pending rows of one domain in a partition, oldest first.
    async fn due_entries(
        &self,
        partition: u32,
        domain: &str,
        limit: u32,
    ) -> Result<Vec<QueueEntry>, StoreError>;
    /// When the next pending row of a partition is due.
    async fn next_due(&self, partition: u32) -> Result<Option<Millis>, StoreError>;
    /// A page of the queue, newest first.
    async fn list_queue(
        &self,
        filter: &QueueFilter,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<QueueEntry>, StoreError>;
    /// One row.
    async fn queue_entry(&self, id: i64) -> Result<Option<QueueEntry>, StoreError>;
    /// Pending row counts by partition and status, for metrics (reads only the index of
    /// pending rows, however much history the table keeps).
    async fn queue_depth(&self) -> Result<Vec<(u32, QueueStatus, i64)>, StoreError>;
    /// Activity since `since` and the deferred mail by domain, for the dashboard; every
    /// count reads an index (the recent or pending rows), not the retained history.
    async fn activity(&self, since: Millis, top_domains: u32) -> Result<Activity, StoreError>;
    /// The messages `q` names (a queue id, an internal message id or a `Message-ID:`
    /// header, with or without brackets), newest first, at most `limit`.
    async fn trace(&self, q: &str, limit: u32) -> Result<Vec<TraceMessage>, StoreError>;
}

/// What [`QueueStore::activity`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activity {
    /// Messages accepted (by SMTP or the send API) since the cutoff.
    pub accepted: i64,
    /// Remote recipients whose row reached `delivered` since the cutoff.
    pub delivered: i64,
    /// Remote recipients whose row reached `failed` (bounced to the sender) since the cutoff.
    pub bounced: i64,
    /// Remote recipients deferred since the cutoff and still waiting for a retry.
    pub deferred: i64,
    /// Deferred rows by recipient domain, most first (then by name).
    pub deferred_by_domain: Vec<(String, i64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_in_range() {
        assert_eq!(
            partition_of("Example.COM", 64),
            partition_of("example.com", 64)
        );
        for d in ["a.test", "b.test", "example.org", "x.y.z"] {
            assert!(partition_of(d, 64) < 64);
        }
    }
}
