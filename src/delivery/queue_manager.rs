//! The queue manager: holds this node's partition leases and runs one partition actor per
//! lease.
//!
//! Which partitions it wants follows membership: alone, every partition; in a cluster, those
//! whose rendezvous owner among the alive queue members is this node
//! ([`crate::cluster::assignment`]). It acquires a wanted lease as soon as it is free or expired
//! (the database says when the holder's lease ends, and it retries at that moment), and a
//! partition it no longer wants is drained (no new deliveries, in-flight ones record their
//! results) and released at once so the new owner can take it. The lease in the database, not
//! membership, decides who may write: two nodes that disagree about membership can both *want*
//! a partition, but only one holds its lease.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;
use tokio::time::Instant;

use super::lease_deadline::LeaseDeadline;
use super::ops::{QueueMsg, QueueOpError};
use super::partition::{PartitionArgs, PartitionMsg, PartitionQueue};
use super::worker::DeliveryContext;
use crate::actors::ExitReason;
use crate::actors::restart::{RestartPolicy, Restarts};
use crate::cluster::admission::Admission;
use crate::cluster::{Member, assignment};
use crate::events::{
    self, LeasesRenewed, PartitionAcquired, PartitionQueueExited, PartitionsOwned, QueueDepth,
    QueuePartitionDepth,
};
use crate::store::{Lease, LeaseGrant, QueueStatus};
use crate::task::OwnedTask;

/// The manager actor.
pub struct QueueManager;

/// Arguments of the manager.
pub struct QueueManagerArgs {
    /// What delivery needs.
    pub ctx: Arc<DeliveryContext>,
    /// Lease owner name of this process.
    pub node_id: String,
    /// The cluster's members and this node's admission, when it is in one; `None` takes
    /// every free partition. A node the cluster refused counts itself out.
    pub members: Option<(watch::Receiver<Vec<Member>>, watch::Receiver<Admission>)>,
}

struct Owned {
    lease: Lease,
    actor: Option<ActorRef<PartitionMsg>>,
    /// Set while a hint's `Wake` waits in the partition's mailbox (it clears it), so hints
    /// never pile up behind a busy partition.
    wake_pending: Arc<AtomicBool>,
    /// Past this instant the partition starts no delivery and completes none.
    deadline: Arc<LeaseDeadline>,
    /// Being handed over: its actor is stopping and the lease is released after.
    draining: bool,
    /// The task handing it over (stopping the actor, then releasing the lease).
    handover: Option<OwnedTask>,
    /// Its actor failed: the next start re-adopts the lease with a new epoch first.
    failed: bool,
    /// Its actor's failures, for the restart backoff.
    restarts: Restarts,
    /// Until it fires, the failed actor is not started again.
    restart_timer: Option<OwnedTask>,
    /// Taken although another node should own it, because nobody held it for a while after
    /// its lease ended (its desired owner may be cut off from the database, or wrongly
    /// believed alive). Kept until that
    /// owner asks for it, rather than dropped at once and left orphaned again.
    orphan: bool,
}

impl Owned {
    /// A lease granted by a statement that started at `started`: valid until its deadline.
    fn new(lease: Lease, started: Instant, ttl: Duration, orphan: bool) -> Self {
        let deadline = Arc::new(LeaseDeadline::default());
        deadline.renewed(started, ttl);
        Self {
            lease,
            actor: None,
            wake_pending: Arc::default(),
            deadline,
            draining: false,
            handover: None,
            failed: false,
            restarts: Restarts::new(RestartPolicy::STANDARD),
            restart_timer: None,
            orphan,
        }
    }
}

/// The manager's state.
pub struct QueueManagerState {
    ctx: Arc<DeliveryContext>,
    node_id: String,
    owned: HashMap<u32, Owned>,
    /// Alive queue members (this node included); `None` outside a cluster.
    members: Option<Vec<String>>,
    /// Wanted partitions held by another node, and when that node's lease ends.
    held_until: HashMap<u32, Instant>,
    /// Unwanted partitions seen without a valid lease, and since when.
    unheld_since: HashMap<u32, Instant>,
    /// The pending `Acquire` message, and when it fires.
    acquire_timer: Option<(Instant, OwnedTask)>,
    ticks: u64,
    /// The periodic `Tick`.
    _ticker: OwnedTask,
    /// Forwards membership changes.
    _members_watch: Option<OwnedTask>,
}

/// After a holder's lease ends, how long to wait before asking, so the database's clock has
/// passed it too.
const EXPIRY_SLACK: Duration = Duration::from_millis(50);

impl QueueManagerState {
    /// Whether this node should own `partition` now.
    fn wants(&self, partition: u32) -> bool {
        match &self.members {
            None => true,
            Some(members) => assignment::owner_of(partition, members) == Some(&self.node_id),
        }
    }

    /// Starts tracking a newly acquired lease, valid from `started` (before the statement).
    fn track(&mut self, lease: Lease, started: Instant, orphan: bool) {
        events::emit(PartitionAcquired {
            partition: lease.partition,
            epoch: lease.epoch,
            takeover: lease.epoch > 1,
        });
        let ttl = self.ctx.config.queue.lease_ttl;
        self.owned
            .insert(lease.partition, Owned::new(lease, started, ttl, orphan));
    }

    fn publish(&self) {
        let running: BTreeSet<u32> = self
            .owned
            .iter()
            .filter(|(_, o)| !o.draining)
            .map(|(p, _)| *p)
            .collect();
        events::emit(PartitionsOwned {
            count: self.owned.len(),
        });
        self.ctx.queue.publish_owned(running);
    }
}

/// The alive queue members of `view`, with `me` (which is alive as long as it runs) when it
/// may own partitions, and without it otherwise (so it wants none).
fn queue_members(view: &[Member], me: &str, admission: &Admission) -> Vec<String> {
    let mut ids: Vec<String> = view
        .iter()
        .filter(|m| m.owns_partitions())
        .map(|m| m.node_id.clone())
        .collect();
    ids.retain(|id| id != me);
    if admission.may_own_partitions() {
        ids.push(me.to_string());
    }
    ids.sort();
    ids.dedup();
    ids
}

impl QueueManager {
    async fn start_partition(
        myself: &ActorRef<QueueMsg>,
        ctx: &Arc<DeliveryContext>,
        owned: &Owned,
    ) -> Option<ActorRef<PartitionMsg>> {
        // A new actor wakes by itself at start; a flag left by a dead one must not block hints.
        owned.wake_pending.store(false, Ordering::Release);
        let args = PartitionArgs {
            ctx: ctx.clone(),
            lease: owned.lease.clone(),
            wake_pending: owned.wake_pending.clone(),
            deadline: owned.deadline.clone(),
        };
        match Actor::spawn_linked(None, PartitionQueue, args, myself.get_cell()).await {
            Ok((actor, _)) => Some(actor),
            Err(error) => {
                tracing::error!(partition = owned.lease.partition, %error, "cannot start partition queue");
                None
            }
        }
    }

    /// Renews every lease this node holds and stops the partitions whose lease is gone.
    /// Returns false when the database could not be asked.
    async fn renew(state: &mut QueueManagerState) -> bool {
        let ctx = state.ctx.clone();
        let ttl = ctx.config.queue.lease_ttl;
        let started = Instant::now();
        let held = match ctx.stores.queue.renew_leases(&state.node_id, ttl).await {
            Ok(held) => held,
            Err(error) => {
                // The leases stay valid until their deadline, and the partitions' own fenced
                // writes fail if they expire: nothing to stop yet.
                tracing::warn!(%error, "cannot renew partition leases");
                return false;
            }
        };
        events::emit(LeasesRenewed {
            elapsed: started.elapsed(),
            held: held.len(),
        });
        let held: HashMap<u32, Lease> = held.into_iter().map(|l| (l.partition, l)).collect();
        state.owned.retain(|partition, owned| {
            let kept = held.get(partition) == Some(&owned.lease);
            if kept {
                owned.deadline.renewed(started, ttl);
            } else {
                owned.deadline.clear();
                tracing::warn!(partition, "partition lease lost; stopping its queue");
                if let Some(actor) = owned.actor.take() {
                    actor.stop(ExitReason::LeaseLost.stop());
                }
            }
            kept
        });
        // Leases this node holds but does not track (this actor restarted, or the process
        // restarted under the same node id) are taken over with a new epoch, which fences
        // anything the previous holder might still have running.
        for (partition, _) in held {
            if state.owned.contains_key(&partition) {
                continue;
            }
            let started = Instant::now();
            match ctx
                .stores
                .queue
                .adopt_lease(partition, &state.node_id, ttl)
                .await
            {
                Ok(Some(lease)) => {
                    tracing::info!(partition, epoch = lease.epoch, "partition lease adopted");
                    state
                        .owned
                        .insert(partition, Owned::new(lease, started, ttl, false));
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(partition, %error, "cannot adopt partition lease"),
            }
        }
        true
    }

    /// Takes the wanted partitions that are free or whose holder's lease has ended, and
    /// schedules the next try at the earliest end of the others.
    async fn acquire(myself: &ActorRef<QueueMsg>, state: &mut QueueManagerState) {
        let ctx = state.ctx.clone();
        let ttl = ctx.config.queue.lease_ttl;
        let now = Instant::now();
        for partition in 0..ctx.config.queue.partitions {
            if state.owned.contains_key(&partition) || !state.wants(partition) {
                continue;
            }
            if state.held_until.get(&partition).is_some_and(|t| *t > now) {
                continue;
            }
            let started = Instant::now();
            match ctx
                .stores
                .queue
                .acquire_lease(partition, &state.node_id, ttl)
                .await
            {
                Ok(LeaseGrant::Granted(lease)) => {
                    state.held_until.remove(&partition);
                    state.track(lease, started, false);
                }
                Ok(LeaseGrant::Held { owner, expires_in }) => {
                    state
                        .held_until
                        .insert(partition, Instant::now() + expires_in + EXPIRY_SLACK);
                    // Its holder may not know yet that this node should own it, or may hold
                    // it as an orphan: ask.
                    if let Some(holder) = owner.filter(|h| *h != state.node_id) {
                        ctx.queue.ask_handover(&holder, partition);
                    }
                }
                Err(error) => {
                    tracing::warn!(partition, %error, "cannot acquire partition lease");
                    break;
                }
            }
        }
        // Forget holders of partitions no longer wanted, then wake at the first expiry.
        let wanted: Vec<u32> = state.held_until.keys().copied().collect();
        for p in wanted {
            if !state.wants(p) {
                state.held_until.remove(&p);
            }
        }
        if let Some(at) = state.held_until.values().min().copied() {
            Self::schedule_acquire(myself, state, at);
        }
        Self::start_missing(myself, state).await;
        state.publish();
    }

    fn schedule_acquire(myself: &ActorRef<QueueMsg>, state: &mut QueueManagerState, at: Instant) {
        if let Some((when, timer)) = &state.acquire_timer
            && *when <= at
            && !timer.is_finished()
        {
            return;
        }
        // Replacing the timer drops (aborts) the previous one.
        let after = at.saturating_duration_since(Instant::now());
        let timer = OwnedTask::adopt(&myself.send_after(after, || QueueMsg::Acquire));
        state.acquire_timer = Some((at, timer));
    }

    async fn start_missing(myself: &ActorRef<QueueMsg>, state: &mut QueueManagerState) {
        let ctx = state.ctx.clone();
        let ttl = ctx.config.queue.lease_ttl;
        let mut lost = Vec::new();
        for (partition, owned) in state.owned.iter_mut() {
            if owned.actor.is_some()
                || owned.draining
                || owned
                    .restart_timer
                    .as_ref()
                    .is_some_and(|t| !t.is_finished())
            {
                continue;
            }
            if owned.failed {
                // A new epoch for the new actor: nothing of the failed one can write again.
                let started = Instant::now();
                match ctx
                    .stores
                    .queue
                    .adopt_lease(*partition, &state.node_id, ttl)
                    .await
                {
                    Ok(Some(lease)) => {
                        owned.lease = lease;
                        owned.deadline.renewed(started, ttl);
                        owned.failed = false;
                    }
                    Ok(None) => {
                        lost.push(*partition);
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(partition, %error, "cannot re-adopt partition lease; retrying at the next tick");
                        continue;
                    }
                }
            }
            owned.actor = Self::start_partition(myself, &ctx, owned).await;
            if owned.actor.is_some() {
                owned.restarts.started();
            }
        }
        for partition in lost {
            tracing::warn!(partition, "partition lease lost while its queue restarted");
            state.owned.remove(&partition);
        }
    }

    /// Hands over the partitions this node holds but no longer wants: the partition actor
    /// stops (its workers finish and record), then the lease is released.
    fn drain_unwanted(myself: &ActorRef<QueueMsg>, state: &mut QueueManagerState) {
        let wanted: Vec<u32> = state
            .owned
            .keys()
            .copied()
            .filter(|p| state.wants(*p))
            .collect();
        for p in wanted {
            if let Some(owned) = state.owned.get_mut(&p) {
                owned.orphan = false;
            }
        }
        let unwanted: Vec<u32> = state
            .owned
            .iter()
            .filter(|(p, o)| !o.draining && !o.orphan && !state.wants(**p))
            .map(|(p, _)| *p)
            .collect();
        for partition in unwanted {
            Self::hand_over(myself, state, partition);
        }
        state.publish();
    }

    /// Stops `partition`'s actor (its workers finish and record), then releases the lease.
    fn hand_over(myself: &ActorRef<QueueMsg>, state: &mut QueueManagerState, partition: u32) {
        let Some(owned) = state.owned.get_mut(&partition) else {
            return;
        };
        owned.draining = true;
        tracing::info!(
            partition,
            "partition wanted by another node; handing it over"
        );
        let actor = owned.actor.take();
        let lease = owned.lease.clone();
        let ctx = state.ctx.clone();
        let me = myself.clone();
        owned.handover = Some(OwnedTask::spawn(async move {
            if let Some(actor) = actor {
                let _ = actor
                    .stop_and_wait(ExitReason::Handover.stop(), Some(STOP_TIMEOUT))
                    .await;
            }
            if let Err(error) = ctx.stores.queue.release_lease(&lease).await {
                // It expires by itself; the new owner takes it then.
                tracing::warn!(partition = lease.partition, %error, "cannot release lease");
            }
            let _ = me.send_message(QueueMsg::Released(lease.partition, lease));
        }));
    }

    /// Takes partitions that nobody has held for [`orphan_grace`] although their
    /// desired owner is a member (it may be cut off from the database, or unable to start
    /// them): mail must not wait for it.
    async fn adopt_orphans(state: &mut QueueManagerState) {
        // Outside a cluster every partition is wanted anyway; a node its cluster refused
        // (not among its own queue members) adopts nothing either.
        let Some(members) = &state.members else {
            return;
        };
        if !members.contains(&state.node_id) {
            return;
        }
        let ctx = state.ctx.clone();
        let ttl = ctx.config.queue.lease_ttl;
        let leases = match ctx.stores.queue.list_leases().await {
            Ok(leases) => leases,
            Err(error) => {
                tracing::debug!(%error, "cannot list partition leases");
                return;
            }
        };
        let now = Instant::now();
        let now_ms = crate::store::now_millis();
        for lease in leases {
            let p = lease.partition;
            if state.owned.contains_key(&p) || state.wants(p) {
                state.unheld_since.remove(&p);
                continue;
            }
            if lease.owner.is_some() && lease.lease_until > now_ms {
                state.unheld_since.remove(&p);
                continue;
            }
            let since = *state.unheld_since.entry(p).or_insert(now);
            if now.duration_since(since) < orphan_grace(ttl) {
                continue;
            }
            let started = Instant::now();
            match ctx.stores.queue.acquire_lease(p, &state.node_id, ttl).await {
                Ok(LeaseGrant::Granted(lease)) => {
                    state.unheld_since.remove(&p);
                    tracing::warn!(
                        partition = p,
                        "partition left without an owner; taking it over until its desired owner asks for it"
                    );
                    state.track(lease, started, true);
                }
                Ok(LeaseGrant::Held { .. }) => {
                    state.unheld_since.remove(&p);
                }
                Err(error) => {
                    tracing::warn!(partition = p, %error, "cannot acquire partition lease");
                    return;
                }
            }
        }
    }

    async fn tick(myself: &ActorRef<QueueMsg>, state: &mut QueueManagerState) {
        if Self::renew(state).await {
            Self::acquire(myself, state).await;
            Self::adopt_orphans(state).await;
            Self::start_missing(myself, state).await;
            Self::drain_unwanted(myself, state);
        }
        state.ticks += 1;
        if state.ticks % 5 == 1 {
            update_depth_metrics(&state.ctx).await;
        }
    }

    fn forward(
        state: &QueueManagerState,
        partition: u32,
    ) -> Result<&ActorRef<PartitionMsg>, QueueOpError> {
        state
            .owned
            .get(&partition)
            .filter(|o| !o.draining)
            .and_then(|o| o.actor.as_ref())
            .ok_or(QueueOpError::NotOwned(partition))
    }
}

/// How long a partition must be seen without a valid lease before a node that is not its
/// desired owner takes it: long enough for a live desired owner, which retries at the very
/// moment the lease ends, to get it first.
fn orphan_grace(ttl: Duration) -> Duration {
    (ttl / 4).max(Duration::from_secs(1))
}

/// How long a stopping partition may take (its own drain is bounded shorter).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

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
        let ticker = OwnedTask::adopt(&myself.send_interval(period, || QueueMsg::Tick));
        let mut members = None;
        let mut watch_task = None;
        if let Some((mut view, mut admission)) = args.members {
            let current = |view: &mut watch::Receiver<Vec<Member>>,
                           admission: &mut watch::Receiver<Admission>,
                           me: &str| {
                queue_members(
                    &view.borrow_and_update(),
                    me,
                    &admission.borrow_and_update(),
                )
            };
            members = Some(current(&mut view, &mut admission, &args.node_id));
            let me = myself.clone();
            let node_id = args.node_id.clone();
            watch_task = Some(OwnedTask::spawn(async move {
                loop {
                    let changed = tokio::select! {
                        changed = view.changed() => changed,
                        changed = admission.changed() => changed,
                    };
                    if changed.is_err() {
                        break;
                    }
                    let ids = current(&mut view, &mut admission, &node_id);
                    if me.send_message(QueueMsg::Members(ids)).is_err() {
                        break;
                    }
                }
            }));
        }
        myself.send_message(QueueMsg::Tick)?;
        Ok(QueueManagerState {
            ctx: args.ctx,
            node_id: args.node_id,
            owned: HashMap::new(),
            members,
            held_until: HashMap::new(),
            unheld_since: HashMap::new(),
            acquire_timer: None,
            ticks: 0,
            _ticker: ticker,
            _members_watch: watch_task,
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
            QueueMsg::Acquire => {
                state.acquire_timer = None;
                Self::acquire(&myself, state).await;
            }
            QueueMsg::Members(members) => {
                if state.members.as_ref() != Some(&members) {
                    tracing::info!(?members, "queue members changed");
                    state.members = Some(members);
                    Self::drain_unwanted(&myself, state);
                    Self::acquire(&myself, state).await;
                }
            }
            QueueMsg::Released(partition, lease) => {
                if state
                    .owned
                    .get(&partition)
                    .is_some_and(|o| o.lease == lease)
                {
                    state.owned.remove(&partition);
                    tracing::info!(partition, "partition handed over");
                }
                state.publish();
                // Tell the new owner at once rather than at its lease expiry timer.
                state.ctx.queue.hint(partition);
                if state.wants(partition) {
                    state.held_until.remove(&partition);
                    Self::acquire(&myself, state).await;
                }
            }
            QueueMsg::Handover(partition, from) => {
                let desired = state
                    .members
                    .as_ref()
                    .and_then(|m| assignment::owner_of(partition, m))
                    .map(str::to_string);
                let holds = state.owned.get(&partition).is_some_and(|o| !o.draining);
                if holds && desired.as_deref() == Some(from.as_str()) {
                    tracing::info!(partition, node = %from, "handover asked by the desired owner");
                    Self::hand_over(&myself, state, partition);
                    state.publish();
                }
            }
            QueueMsg::Offered(partition) => {
                if !state.owned.contains_key(&partition) {
                    let started = Instant::now();
                    let ttl = state.ctx.config.queue.lease_ttl;
                    match state
                        .ctx
                        .stores
                        .queue
                        .acquire_lease(partition, &state.node_id, ttl)
                        .await
                    {
                        Ok(LeaseGrant::Granted(lease)) => {
                            state.held_until.remove(&partition);
                            // Until membership says the leaver is gone, another node may be
                            // the desired owner: keep it until that one asks.
                            let orphan = !state.wants(partition);
                            state.track(lease, started, orphan);
                            Self::start_missing(&myself, state).await;
                            state.publish();
                        }
                        Ok(LeaseGrant::Held { .. }) => {}
                        Err(error) => {
                            tracing::warn!(partition, %error, "cannot acquire an offered partition");
                        }
                    }
                }
            }
            QueueMsg::Hint => {
                let mut acquire = false;
                for partition in state.ctx.queue.take_hints() {
                    match state.owned.get(&partition) {
                        Some(owned) => {
                            if let Some(actor) = &owned.actor
                                && !owned.wake_pending.swap(true, Ordering::AcqRel)
                            {
                                let _ = actor.send_message(PartitionMsg::Wake);
                            }
                        }
                        // Work for a partition this node wants but does not hold yet: its
                        // holder may just have released it.
                        None if state.wants(partition) => {
                            state.held_until.remove(&partition);
                            acquire = true;
                        }
                        None => {}
                    }
                }
                if acquire {
                    Self::acquire(&myself, state).await;
                }
            }
            QueueMsg::Restart(partition) => {
                if let Some(owned) = state.owned.get_mut(&partition) {
                    owned.restart_timer = None;
                    Self::start_missing(&myself, state).await;
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
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, reason)) = crate::actors::exit::child_exit(event) else {
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
        match reason {
            ExitReason::LeaseLost => {
                // The next tick re-acquires it if it is free again.
                state.owned.remove(&partition);
                state.publish();
            }
            // Stopped by this manager, which took the actor out of `owned` first.
            ExitReason::Shutdown | ExitReason::Handover => {}
            ExitReason::Stopped | ExitReason::Failed(_) => {
                let Some(owned) = state.owned.get_mut(&partition) else {
                    return Ok(());
                };
                owned.actor = None;
                owned.failed = true;
                let delay = owned.restarts.failed("partition_queue");
                events::emit(PartitionQueueExited {
                    partition,
                    reason: &reason,
                    restart_in: delay,
                });
                owned.restart_timer = Some(OwnedTask::adopt(
                    &myself.send_after(delay, move || QueueMsg::Restart(partition)),
                ));
            }
        }
        Ok(())
    }

    /// Drains every partition (concurrently), then releases the leases, so another node can
    /// take them over at once.
    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.queue.publish_owned(BTreeSet::new());
        let owned: Vec<Owned> = state.owned.drain().map(|(_, o)| o).collect();
        let count = owned.len();
        // Each partition is released as soon as its own deliveries are recorded, and offered
        // to the node that will own it, which takes it at once rather than when it notices
        // that this node left.
        let ctx = &state.ctx;
        futures::future::join_all(owned.into_iter().map(|owned| async move {
            if let Some(actor) = &owned.actor {
                let _ = actor
                    .stop_and_wait(ExitReason::Shutdown.stop(), Some(STOP_TIMEOUT))
                    .await;
            }
            match ctx.stores.queue.release_lease(&owned.lease).await {
                Ok(()) => ctx.queue.offer_released(owned.lease.partition).await,
                Err(error) => {
                    tracing::warn!(partition = owned.lease.partition, %error, "cannot release lease");
                }
            }
        }))
        .await;
        events::emit(PartitionsOwned { count: 0 });
        tracing::info!(released = count, "partition leases released");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;

    fn member(id: &str, roles: &[Role], state: crate::cluster::MemberState) -> Member {
        Member {
            node_id: id.into(),
            addr: "127.0.0.1:7946".parse().expect("addr"),
            roles: roles.to_vec(),
            state,
        }
    }

    #[test]
    fn queue_members_that_are_not_down_own_partitions_and_this_node_is_one_unless_refused() {
        use crate::cluster::MemberState::{Alive, Down, Suspect};
        let view = vec![
            member("api-0", &[Role::Api], Alive),
            member("core-1", &[Role::Smtp, Role::Queue], Alive),
            member("core-2", &[Role::Queue], Suspect),
            member("core-3", &[Role::Queue], Down),
        ];
        let admitted = Admission::Admitted;
        assert_eq!(
            queue_members(&view, "core-0", &admitted),
            vec!["core-0", "core-1", "core-2"]
        );
        assert_eq!(
            queue_members(&view, "core-1", &Admission::Alone),
            vec!["core-1", "core-2"]
        );
        // Refused by its peers (or still joining), a node counts itself out: it wants nothing.
        let refused = Admission::Refused("peer refused".into());
        assert_eq!(queue_members(&view, "core-1", &refused), vec!["core-2"]);
        assert_eq!(
            queue_members(&[], "core-9", &Admission::Joining),
            Vec::<String>::new()
        );
    }
}
