//! The queue manager: holds this node's partition leases and runs one partition-queue actor
//! per owned partition.
//!
//! Every tick (a third of the lease lifetime) it renews all its leases in one statement; a
//! partition whose lease did not renew is lost (another node took over), and its actor is
//! stopped. Then it tries to acquire each partition it should own (on a single node: all) that
//! is free or expired. A partition actor that fails is restarted with the same lease at the
//! next tick. On stop it stops its partition actors and releases their leases at once, so a
//! graceful shutdown hands partitions over without waiting for expiry.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::supervisor::ActorSlot;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::delivery::DeliveryContext;
use super::lease_deadline::LeaseDeadline;
use super::partition::{PartitionArgs, PartitionExit, PartitionMsg, PartitionQueue, QueueOpError};
use crate::events::{self, PartitionQueueExited, QueueDepth, QueuePartitionDepth};
use crate::store::{Lease, LeaseGrant, QueueStatus};

/// Messages to the queue manager.
pub enum QueueMsg {
    /// Renew and acquire leases, refresh queue metrics.
    Tick,
    /// New work in the partitions [`QueueHandle::take_hints`] returns.
    Hint,
    /// Make a row due now (through its partition's owner).
    Retry(u32, i64, RpcReplyPort<Result<(), QueueOpError>>),
    /// Cancel a row, optionally bouncing it.
    Cancel(u32, i64, bool, RpcReplyPort<Result<(), QueueOpError>>),
    /// The partitions this node owns.
    Owned(RpcReplyPort<Vec<u32>>),
}

/// The manager actor.
pub struct QueueManager;

/// Arguments of the manager.
pub struct QueueManagerArgs {
    /// What delivery needs.
    pub ctx: Arc<DeliveryContext>,
    /// Lease owner name of this process.
    pub node_id: String,
}

struct Owned {
    lease: Lease,
    actor: Option<ActorRef<PartitionMsg>>,
    /// Set while a hint's `Wake` waits in the partition's mailbox (it clears it), so hints
    /// never pile up behind a busy partition.
    wake_pending: Arc<AtomicBool>,
    /// Moved on every successful renewal; the partition's actor and workers check it.
    deadline: Arc<LeaseDeadline>,
}

/// The manager's state.
pub struct QueueManagerState {
    ctx: Arc<DeliveryContext>,
    node_id: String,
    owned: HashMap<u32, Owned>,
    ticks: u64,
}

impl QueueManager {
    async fn start_partition(
        myself: &ActorRef<QueueMsg>,
        state: &QueueManagerState,
        lease: &Lease,
    ) -> Option<ActorRef<PartitionMsg>> {
        let args = PartitionArgs {
            ctx: state.ctx.clone(),
            lease: lease.clone(),
            wake_pending: state
                .owned
                .get(&lease.partition)
                .map(|o| o.wake_pending.clone())
                .unwrap_or_default(),
            deadline: state
                .owned
                .get(&lease.partition)
                .map(|o| o.deadline.clone())
                .unwrap_or_default(),
        };
        // A new actor wakes by itself at start; a flag left by a dead one must not block hints.
        args.wake_pending.store(false, Ordering::Release);
        match Actor::spawn_linked(None, PartitionQueue, args, myself.get_cell()).await {
            Ok((actor, _)) => Some(actor),
            Err(error) => {
                tracing::error!(partition = lease.partition, %error, "cannot start partition queue");
                None
            }
        }
    }

    async fn tick(myself: &ActorRef<QueueMsg>, state: &mut QueueManagerState) {
        let ctx = state.ctx.clone();
        let ttl = ctx.config.queue.lease_ttl;
        let started = tokio::time::Instant::now();
        match ctx.stores.queue.renew_leases(&state.node_id, ttl).await {
            Ok(held) => {
                let held: HashMap<u32, Lease> =
                    held.into_iter().map(|l| (l.partition, l)).collect();
                state.owned.retain(|partition, owned| {
                    let kept = held.get(partition) == Some(&owned.lease);
                    if kept {
                        owned.deadline.renewed(started, ttl);
                    } else {
                        owned.deadline.clear();
                        tracing::warn!(partition, "partition lease lost; stopping its queue");
                        if let Some(actor) = owned.actor.take() {
                            actor.stop(Some(PartitionExit::LeaseLost.reason()));
                        }
                    }
                    kept
                });
                // Leases held but not tracked (for example after this actor restarted) are
                // adopted rather than left to expire.
                for (partition, lease) in held {
                    state.owned.entry(partition).or_insert_with(|| {
                        let deadline = Arc::new(LeaseDeadline::default());
                        deadline.renewed(started, ttl);
                        Owned {
                            lease,
                            actor: None,
                            wake_pending: Arc::default(),
                            deadline,
                        }
                    });
                }
            }
            Err(error) => {
                // Keep going: the leases stay valid until they expire, and the partition actors'
                // own fenced writes fail if they do.
                tracing::warn!(%error, "cannot renew partition leases");
                return;
            }
        }
        for partition in 0..ctx.config.queue.partitions {
            if state.owned.contains_key(&partition) {
                continue;
            }
            let started = tokio::time::Instant::now();
            match ctx
                .stores
                .queue
                .acquire_lease(partition, &state.node_id, ttl)
                .await
            {
                Ok(LeaseGrant::Granted(lease)) => {
                    tracing::info!(partition, epoch = lease.epoch, "partition acquired");
                    let deadline = Arc::new(LeaseDeadline::default());
                    deadline.renewed(started, ttl);
                    state.owned.insert(
                        partition,
                        Owned {
                            lease,
                            actor: None,
                            wake_pending: Arc::default(),
                            deadline,
                        },
                    );
                }
                Ok(LeaseGrant::Held { .. }) => {}
                Err(error) => {
                    tracing::warn!(partition, %error, "cannot acquire partition lease");
                    break;
                }
            }
        }
        let mut missing = Vec::new();
        for (partition, owned) in &state.owned {
            if owned.actor.is_none() {
                missing.push((*partition, owned.lease.clone()));
            }
        }
        for (partition, lease) in missing {
            let actor = Self::start_partition(myself, state, &lease).await;
            if let Some(owned) = state.owned.get_mut(&partition) {
                owned.actor = actor;
            }
        }
        state.ticks += 1;
        if state.ticks % 5 == 1 {
            update_depth_metrics(&ctx).await;
        }
    }

    fn forward(
        state: &QueueManagerState,
        partition: u32,
    ) -> Result<&ActorRef<PartitionMsg>, QueueOpError> {
        state
            .owned
            .get(&partition)
            .and_then(|o| o.actor.as_ref())
            .ok_or(QueueOpError::NotOwned(partition))
    }
}

async fn update_depth_metrics(ctx: &DeliveryContext) {
    match ctx.stores.queue.queue_depth().await {
        Ok(rows) => {
            let mut by_status: HashMap<QueueStatus, i64> = HashMap::new();
            for (partition, status, count) in rows {
                *by_status.entry(status).or_default() += count;
                if status.is_pending() {
                    events::emit(QueuePartitionDepth {
                        partition,
                        status: status.as_str(),
                        count,
                    });
                }
            }
            // Pending rows only: finished ones are history, counted by
            // `mairust_delivery_attempts_total` as they happen.
            for status in [QueueStatus::Queued, QueueStatus::Deferred] {
                events::emit(QueueDepth {
                    status: status.as_str(),
                    count: by_status.get(&status).copied().unwrap_or(0),
                });
            }
        }
        Err(error) => tracing::debug!(%error, "cannot read queue depth"),
    }
}

impl Actor for QueueManager {
    type Msg = QueueMsg;
    type State = QueueManagerState;
    type Arguments = QueueManagerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: QueueManagerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.ctx
            .stores
            .queue
            .ensure_partition_count(args.ctx.config.queue.partitions)
            .await?;
        let period = (args.ctx.config.queue.lease_ttl / 3).max(Duration::from_millis(200));
        myself.send_interval(period, || QueueMsg::Tick);
        myself.send_message(QueueMsg::Tick)?;
        Ok(QueueManagerState {
            ctx: args.ctx,
            node_id: args.node_id,
            owned: HashMap::new(),
            ticks: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            QueueMsg::Tick => Self::tick(&myself, state).await,
            QueueMsg::Hint => {
                for partition in state.ctx.queue.take_hints() {
                    let Some(owned) = state.owned.get(&partition) else {
                        continue;
                    };
                    if let Some(actor) = &owned.actor
                        && !owned.wake_pending.swap(true, Ordering::AcqRel)
                    {
                        let _ = actor.send_message(PartitionMsg::Wake);
                    }
                }
            }
            QueueMsg::Retry(partition, id, reply) => match Self::forward(state, partition) {
                Ok(actor) => {
                    let _ = actor.send_message(PartitionMsg::Retry(id, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            QueueMsg::Cancel(partition, id, bounce, reply) => match Self::forward(state, partition)
            {
                Ok(actor) => {
                    let _ = actor.send_message(PartitionMsg::Cancel(id, bounce, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            QueueMsg::Owned(reply) => {
                let mut owned: Vec<u32> = state.owned.keys().copied().collect();
                owned.sort_unstable();
                let _ = reply.send(owned);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, reason)) = super::supervisor::child_exit(event) else {
            return Ok(());
        };
        let Some(partition) = state
            .owned
            .iter()
            .find(|(_, o)| {
                o.actor
                    .as_ref()
                    .is_some_and(|a| a.get_id() == cell.get_id())
            })
            .map(|(p, _)| *p)
        else {
            return Ok(());
        };
        if PartitionExit::from_reason(&reason) == Some(PartitionExit::LeaseLost) {
            // The next tick re-acquires it if it is free again.
            state.owned.remove(&partition);
        } else {
            if let Some(owned) = state.owned.get_mut(&partition) {
                owned.actor = None;
            }
            events::emit(PartitionQueueExited {
                partition,
                reason: &reason,
            });
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for (_, owned) in state.owned.drain() {
            if let Some(actor) = owned.actor {
                let _ = actor
                    .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10)))
                    .await;
            }
            if let Err(error) = state.ctx.stores.queue.release_lease(&owned.lease).await {
                tracing::warn!(partition = owned.lease.partition, %error, "cannot release lease");
            }
        }
        tracing::info!("partition leases released");
        Ok(())
    }
}

/// The current queue manager's address, replaced on restart.
#[derive(Clone, Default)]
pub struct QueueHandle {
    slot: ActorSlot<QueueMsg>,
    hints: Arc<Hints>,
}

/// Partitions with new work, collected between two visits of the manager: a flood of
/// acceptances while the manager is busy costs one set entry per partition and one message,
/// not one message per accepted mail.
#[derive(Default)]
struct Hints(Mutex<BTreeSet<u32>>);

impl Hints {
    /// Records `partition`; true when the set was empty (the manager must be told).
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

impl QueueHandle {
    /// Publishes a new manager (from its spawn function).
    pub fn set(&self, manager: ActorRef<QueueMsg>) {
        self.slot.set(manager);
    }

    fn current(&self) -> Option<ActorRef<QueueMsg>> {
        self.slot.get()
    }

    /// Tells the partition's owner that new work is due (best effort: owners also poll).
    pub fn hint(&self, partition: u32) {
        if self.hints.add(partition)
            && let Some(manager) = self.current()
        {
            let _ = manager.send_message(QueueMsg::Hint);
        }
    }

    /// The partitions hinted since the last call.
    fn take_hints(&self) -> BTreeSet<u32> {
        self.hints.take()
    }

    /// Makes a row due now.
    pub async fn retry(&self, partition: u32, id: i64) -> Result<(), QueueOpError> {
        let manager = self.current().ok_or(QueueOpError::Unavailable)?;
        manager
            .call(
                |reply| QueueMsg::Retry(partition, id, reply),
                Some(Duration::from_secs(30)),
            )
            .await
            .map_err(|_| QueueOpError::Unavailable)?
            .success_or(QueueOpError::Unavailable)?
    }

    /// Cancels a row.
    pub async fn cancel(&self, partition: u32, id: i64, bounce: bool) -> Result<(), QueueOpError> {
        let manager = self.current().ok_or(QueueOpError::Unavailable)?;
        manager
            .call(
                |reply| QueueMsg::Cancel(partition, id, bounce, reply),
                Some(Duration::from_secs(30)),
            )
            .await
            .map_err(|_| QueueOpError::Unavailable)?
            .success_or(QueueOpError::Unavailable)?
    }

    /// Partitions owned by this node.
    pub async fn owned(&self) -> Vec<u32> {
        let Some(manager) = self.current() else {
            return Vec::new();
        };
        match manager
            .call(QueueMsg::Owned, Some(Duration::from_secs(5)))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(owned)) => owned,
            _ => Vec::new(),
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
}
