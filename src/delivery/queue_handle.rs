//! The address of the delivery queue, wherever its partitions are owned.
//!
//! Acceptance, bounces and the API call [`QueueHandle`]; it sends to this node's queue manager
//! for the partitions this node owns and, in a cluster, over the cluster to the owner of the
//! others: hints go to the partition's desired owner (rendezvous over the alive queue members),
//! retry and cancel to the node that holds the partition's lease. It also answers those
//! requests when other nodes send them here ([`RequestHandler`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use ractor::ActorRef;

use super::ops::{QueueMsg, QueueOpError};
use crate::actors::supervisor::ActorSlot;
use crate::cluster::{Cluster, ErrorKind, Request, RequestHandler, Response, assignment};
use crate::store::{QueueStore, now_millis};
use crate::task::OwnedTask;

/// The current queue manager's address (replaced on restart) and the routes to other nodes.
#[derive(Clone, Default)]
pub struct QueueHandle {
    slot: ActorSlot<QueueMsg>,
    hints: Arc<Hints>,
    owned: Arc<RwLock<BTreeSet<u32>>>,
    remote: Arc<OnceLock<Remote>>,
}

/// What reaching other nodes needs.
struct Remote {
    cluster: Cluster,
    leases: Arc<dyn QueueStore>,
    /// Partitions hinted here that another node owns, waiting for the forwarder.
    pending: Hints,
    /// Handovers to ask for (holder, partition), waiting for the forwarder.
    handovers: Mutex<Vec<(String, u32)>>,
    wake: tokio::sync::Notify,
}

/// Partitions with new work, collected between two visits of their reader: a flood of
/// acceptances costs one set entry per partition and one wake-up, not one message per mail.
#[derive(Default)]
struct Hints(Mutex<BTreeSet<u32>>);

impl Hints {
    /// Records `partition`; true when the set was empty (the reader must be told).
    fn add(&self, partition: u32) -> bool {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let first = set.is_empty();
        set.insert(partition);
        first
    }

    fn take(&self) -> BTreeSet<u32> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// How long a forwarded request may take before the caller gets 503.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

impl QueueHandle {
    /// Publishes a new manager (from its spawn function).
    pub fn set(&self, manager: ActorRef<QueueMsg>) {
        self.slot.set(manager);
    }

    fn current(&self) -> Option<ActorRef<QueueMsg>> {
        self.slot.get()
    }

    /// Routes what this node does not own through `cluster`; `leases` tells who holds a
    /// partition. Returns the task that forwards hints and handover requests, which runs as
    /// long as the caller holds it; `None` if a cluster was connected already.
    pub fn connect_cluster(
        &self,
        cluster: Cluster,
        leases: Arc<dyn QueueStore>,
    ) -> Option<OwnedTask> {
        let remote = Remote {
            cluster,
            leases,
            pending: Hints::default(),
            handovers: Mutex::default(),
            wake: tokio::sync::Notify::new(),
        };
        self.remote.set(remote).ok()?;
        let handle = self.clone();
        Some(OwnedTask::spawn(async move { handle.forward().await }))
    }

    /// Records the partitions this node's manager runs now (the manager calls it on change).
    pub(crate) fn publish_owned(&self, owned: BTreeSet<u32>) {
        *self.owned.write().unwrap_or_else(|e| e.into_inner()) = owned;
    }

    fn owns(&self, partition: u32) -> bool {
        self.owned
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&partition)
    }

    /// Tells the partition's owner that new work is due (best effort: owners also poll).
    pub fn hint(&self, partition: u32) {
        match self.remote.get() {
            Some(remote) if !self.owns(partition) => {
                if remote.pending.add(partition) {
                    remote.wake.notify_one();
                }
            }
            _ => self.hint_local(partition),
        }
    }

    fn hint_local(&self, partition: u32) {
        if self.hints.add(partition)
            && let Some(manager) = self.current()
        {
            let _ = manager.send_message(QueueMsg::Hint);
        }
    }

    /// The partitions hinted to this node's manager since the last call.
    pub(crate) fn take_hints(&self) -> BTreeSet<u32> {
        self.hints.take()
    }

    /// Sends hinted partitions to their desired owners, one request per owner and round, and
    /// the handover requests. The requests are this task's own: they stop with it.
    async fn forward(&self) {
        let Some(remote) = self.remote.get() else {
            return;
        };
        let mut requests = tokio::task::JoinSet::new();
        loop {
            remote.wake.notified().await;
            while requests.try_join_next().is_some() {}
            let handovers =
                std::mem::take(&mut *remote.handovers.lock().unwrap_or_else(|e| e.into_inner()));
            for (holder, partition) in handovers {
                let cluster = remote.cluster.clone();
                requests.spawn(async move {
                    if let Err(error) = cluster
                        .request(&holder, Request::Handover { partition })
                        .await
                    {
                        tracing::debug!(node = %holder, partition, %error, "cannot ask for a partition handover");
                    }
                });
            }
            let partitions = remote.pending.take();
            let members: Vec<String> = remote
                .cluster
                .members()
                .into_iter()
                .filter(|m| m.owns_partitions())
                .map(|m| m.node_id)
                .collect();
            let mut by_owner: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            for p in partitions {
                // With no queue member alive, whoever acquires the partition polls it.
                if let Some(owner) = assignment::owner_of(p, &members) {
                    by_owner.entry(owner.to_string()).or_default().push(p);
                }
            }
            for (owner, partitions) in by_owner {
                if owner == remote.cluster.node_id() {
                    for p in partitions {
                        self.hint_local(p);
                    }
                    continue;
                }
                let cluster = remote.cluster.clone();
                requests.spawn(async move {
                    let request = Request::Hint {
                        partitions: partitions.clone(),
                    };
                    if let Err(error) = cluster.request(&owner, request).await {
                        // The owner's backstop poll finds the work anyway.
                        tracing::debug!(node = %owner, ?partitions, %error, "cannot forward queue hint");
                    }
                });
            }
        }
    }

    /// The node that holds `partition`'s lease now, if any.
    async fn lease_holder(remote: &Remote, partition: u32) -> Result<Option<String>, QueueOpError> {
        let leases = remote
            .leases
            .list_leases()
            .await
            .map_err(|e| QueueOpError::Store(Arc::new(e)))?;
        let now = now_millis();
        Ok(leases
            .into_iter()
            .find(|l| l.partition == partition && l.lease_until > now)
            .and_then(|l| l.owner))
    }

    /// Runs `request` on the owner of `partition`: here if this node holds it, else on the
    /// node holding its lease.
    async fn on_owner(&self, partition: u32, request: Request) -> Result<(), QueueOpError> {
        let remote = match self.remote.get() {
            Some(remote) if !self.owns(partition) => remote,
            _ => return self.local(request, None).await,
        };
        let Some(owner) = Self::lease_holder(remote, partition).await? else {
            return Err(QueueOpError::NoOwner(partition));
        };
        if owner == remote.cluster.node_id() {
            return self.local(request, None).await;
        }
        let answer = tokio::time::timeout(REMOTE_TIMEOUT, remote.cluster.request(&owner, request))
            .await
            .map_err(|_| QueueOpError::Unreachable {
                partition,
                node: owner.clone(),
                reason: "no answer in time".into(),
            })?
            .map_err(|e| QueueOpError::Unreachable {
                partition,
                node: owner.clone(),
                reason: e.to_string(),
            })?;
        match answer {
            Response::Ok => Ok(()),
            Response::Error { kind, message } => Err(QueueOpError::Remote { kind, message }),
        }
    }

    /// Runs `request` (from node `from`, if it came over the cluster) on this node's manager.
    async fn local(&self, request: Request, from: Option<&str>) -> Result<(), QueueOpError> {
        let manager = self.current().ok_or(QueueOpError::Unavailable)?;
        let call = match request {
            Request::Retry { partition, id } => {
                manager
                    .call(
                        |reply| QueueMsg::Retry(partition, id, reply),
                        Some(Duration::from_secs(30)),
                    )
                    .await
            }
            Request::Cancel {
                partition,
                id,
                bounce,
            } => {
                manager
                    .call(
                        |reply| QueueMsg::Cancel(partition, id, bounce, reply),
                        Some(Duration::from_secs(30)),
                    )
                    .await
            }
            Request::Hint { partitions } => {
                for p in partitions {
                    self.hint_local(p);
                }
                return Ok(());
            }
            Request::Offer { partition } => {
                let _ = manager.send_message(QueueMsg::Offered(partition));
                return Ok(());
            }
            Request::Handover { partition } => {
                if let Some(from) = from {
                    let _ = manager.send_message(QueueMsg::Handover(partition, from.to_string()));
                }
                return Ok(());
            }
        };
        call.map_err(|_| QueueOpError::Unavailable)?
            .success_or(QueueOpError::Unavailable)?
    }

    /// Makes a row due now.
    pub async fn retry(&self, partition: u32, id: i64) -> Result<(), QueueOpError> {
        self.on_owner(partition, Request::Retry { partition, id })
            .await
    }

    /// Cancels a row, bouncing it if asked.
    pub async fn cancel(&self, partition: u32, id: i64, bounce: bool) -> Result<(), QueueOpError> {
        self.on_owner(
            partition,
            Request::Cancel {
                partition,
                id,
                bounce,
            },
        )
        .await
    }

    /// Asks `holder` to hand `partition` over to this node, its desired owner (best effort).
    pub(crate) fn ask_handover(&self, holder: &str, partition: u32) {
        let Some(remote) = self.remote.get() else {
            return;
        };
        remote
            .handovers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((holder.to_string(), partition));
        remote.wake.notify_one();
    }

    /// Offers a partition this leaving node has just released to the node that owns it once
    /// this one is gone (bounded: shutdown does not wait long for it).
    pub(crate) async fn offer_released(&self, partition: u32) {
        let Some(remote) = self.remote.get() else {
            return;
        };
        let me = remote.cluster.node_id();
        let others: Vec<String> = remote
            .cluster
            .members()
            .into_iter()
            .filter(|m| m.owns_partitions() && m.node_id != me)
            .map(|m| m.node_id)
            .collect();
        let Some(owner) = assignment::owner_of(partition, &others) else {
            return;
        };
        let offer = remote.cluster.request(owner, Request::Offer { partition });
        match tokio::time::timeout(Duration::from_secs(1), offer).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::debug!(node = %owner, partition, %error, "cannot offer a released partition")
            }
            Err(_) => {
                tracing::debug!(node = %owner, partition, "offer of a released partition timed out")
            }
        }
    }

    /// Partitions owned by this node.
    pub fn owned(&self) -> Vec<u32> {
        self.owned
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }
}

/// What a refused queue operation is called on the wire.
fn error_kind(error: &QueueOpError) -> ErrorKind {
    match error {
        QueueOpError::NotFound(_) => ErrorKind::NotFound,
        QueueOpError::Finished(..) | QueueOpError::InFlight(_) => ErrorKind::Conflict,
        QueueOpError::NotOwned(_) => ErrorKind::NotOwned,
        QueueOpError::Remote { kind, .. } => *kind,
        _ => ErrorKind::Unavailable,
    }
}

#[async_trait::async_trait]
impl RequestHandler for QueueHandle {
    async fn handle(&self, from: &str, request: Request) -> Response {
        tracing::debug!(node = %from, ?request, "cluster request");
        // Only this node's own partitions: a request is never forwarded twice.
        match self.local(request, Some(from)).await {
            Ok(()) => Response::Ok,
            Err(error) => Response::Error {
                kind: error_kind(&error),
                message: error.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_hints_is_one_message_per_visit() {
        let hints = Hints::default();
        assert!(hints.add(3), "the first hint tells the manager");
        for _ in 0..10_000 {
            assert!(!hints.add(3));
            assert!(!hints.add(5));
        }
        assert_eq!(hints.take(), BTreeSet::from([3, 5]));
        assert!(
            hints.add(5),
            "after a visit the next hint tells the manager again"
        );
    }

    #[test]
    fn refusals_keep_their_kind_across_nodes() {
        assert_eq!(error_kind(&QueueOpError::NotFound(4)), ErrorKind::NotFound);
        assert_eq!(error_kind(&QueueOpError::InFlight(4)), ErrorKind::Conflict);
        assert_eq!(error_kind(&QueueOpError::NotOwned(2)), ErrorKind::NotOwned);
        assert_eq!(
            error_kind(&QueueOpError::Unavailable),
            ErrorKind::Unavailable
        );
        let remote = QueueOpError::Remote {
            kind: ErrorKind::Conflict,
            message: "x".into(),
        };
        assert_eq!(error_kind(&remote), ErrorKind::Conflict);
    }
}
