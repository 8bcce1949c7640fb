//! One partition's queue: schedules its due rows, hands them to delivery workers grouped by
//! destination domain, and records each recipient's result under its lease epoch.
//!
//! Rows being delivered are tracked in memory only (`in_flight`): if the process dies, they
//! are still pending in the database and the next owner delivers them. That is the one window
//! for a duplicate: a remote server answered `250` and the process died before the result was
//! committed. A worker records each message's definitive results as soon as the server
//! answers, while it sends the next message, and sends no further end of data before that
//! commit ends: the window is one message wide, not a connection's batch.
//!
//! Delivery workers are tasks of the partition's own `JoinSet`: a worker's results are its
//! task's output, and its message to the actor is only a signal to collect them. So results
//! cannot be lost in the mailbox of a stopping actor, and no worker outlives its actor: a
//! stopping partition waits for them (bounded), aborts the rest and records what they
//! returned while it still holds the lease; dropping the state aborts whatever is left.
//!
//! Handlers never wait out a retry: recording results and the administrator's retry and
//! cancel run as commit tasks of the partition's own (a second `JoinSet`), whose rows stay in
//! `in_flight` until they end, so the actor keeps answering while the storage writer retries.
//!
//! No delivery starts, and no end of data is sent, past the lease's local deadline
//! ([`LeaseDeadline`]): a node cut off from the database stops acting before its lease can
//! expire and be taken over.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::lease_deadline::LeaseDeadline;
use super::ops::QueueOpError;
use super::worker::{self as delivery, DeliveryContext, EntryResult, Outcome};
use crate::actors::ExitReason;
use crate::actors::storage_writer::CommitError;
use crate::delivery::dsn::FailedRecipient;
use crate::events::{
    self, BounceBuildFailed, BouncesQueued, DeliveryDeferred, DeliveryFailed, DeliverySucceeded,
    FencedWriteRejected,
};
use crate::store::{
    AcceptedMessage, Attempt, EntryUpdate, Lease, QueueEntry, QueueStatus, now_millis,
};
use crate::task::OwnedTask;

/// Messages to a partition queue.
pub enum PartitionMsg {
    /// Look for due rows.
    Wake,
    /// A delivery worker (this task, when known) is returning: collect the finished outputs
    /// of the partition's workers.
    WorkerDone(Option<tokio::task::Id>),
    /// A commit task ended: release its rows.
    Committed,
    /// Make a row due now.
    Retry(i64, RpcReplyPort<Result<(), QueueOpError>>),
    /// Cancel a row, bouncing it if asked.
    Cancel(i64, bool, RpcReplyPort<Result<(), QueueOpError>>),
}

/// The partition actor.
pub struct PartitionQueue;

/// Arguments of a partition actor.
pub struct PartitionArgs {
    /// What delivery needs.
    pub ctx: Arc<DeliveryContext>,
    /// The lease that fences every change.
    pub lease: Lease,
    /// Set by the manager when it sends a hint's `Wake`; cleared when the wake runs.
    pub wake_pending: Arc<std::sync::atomic::AtomicBool>,
    /// Until when this node may act for the partition; moved by the manager on every
    /// successful renewal.
    pub deadline: Arc<LeaseDeadline>,
}

/// What a delivery worker returns: its domain and every row's result.
type WorkerOutput = (String, Vec<EntryResult>);

/// What a commit task returns: the rows it held in `in_flight`, and whether to look for work.
struct Committed {
    rows: Vec<i64>,
    wake: bool,
}

/// A partition actor's state.
pub struct PartitionState {
    ctx: Arc<DeliveryContext>,
    lease: Lease,
    wake_pending: Arc<std::sync::atomic::AtomicBool>,
    deadline: Arc<LeaseDeadline>,
    in_flight: HashSet<i64>,
    /// Running workers per domain.
    workers: HashMap<String, usize>,
    /// The workers themselves; dropping the set aborts them.
    tasks: JoinSet<WorkerOutput>,
    /// Per running worker: its domain and rows, to release them even if it panicked.
    running: HashMap<tokio::task::Id, (String, Vec<i64>)>,
    /// Results being recorded, and the administrator's retries and cancels; dropping the set
    /// aborts them (the rows stay pending in the database).
    commits: JoinSet<Committed>,
    /// The next scheduled `Wake`.
    timer: Option<OwnedTask>,
    /// The backstop poll.
    _poll: OwnedTask,
}

/// How long a stopping partition waits for its delivery workers to return their results.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// How soon a partition looks again when its lease deadline has passed (or was never set):
/// the manager's next renewal moves it, at an unknown moment within a third of the TTL.
const DEADLINE_RECHECK: Duration = Duration::from_millis(250);

/// Whether a delivery may start now; `Err(after)` when not, with when to look again.
fn may_deliver(deadline: Option<Instant>, now: Instant) -> Result<(), Duration> {
    match deadline {
        Some(deadline) if now < deadline => Ok(()),
        _ => Err(DEADLINE_RECHECK),
    }
}

/// When to wake for the next due row, given the earliest due time; `None` when nothing is
/// pending or it is due already (then the finishing worker's signal wakes the partition).
fn next_wake(
    next_due: Option<crate::store::Millis>,
    now: crate::store::Millis,
) -> Option<Duration> {
    let wait = next_due? - now;
    (wait > 0).then(|| Duration::from_millis(wait as u64))
}

/// Waits up to `timeout` for every task of `tasks`, then aborts the rest; returns the
/// outputs of those that finished (also any that finished while being aborted) and how many
/// ended without one (aborted or panicked).
async fn drain<T: 'static>(tasks: &mut JoinSet<T>, timeout: Duration) -> (Vec<T>, usize) {
    let mut outputs = Vec::new();
    let mut lost = 0;
    let _ = tokio::time::timeout(timeout, async {
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(output) => outputs.push(output),
                Err(_) => lost += 1,
            }
        }
    })
    .await;
    tasks.abort_all();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(output) => outputs.push(output),
            Err(_) => lost += 1,
        }
    }
    (outputs, lost)
}

/// Commits `updates` (and bounce messages) under the lease through the storage writer's
/// group commit, retrying transient errors.
async fn apply(
    ctx: &DeliveryContext,
    lease: &Lease,
    updates: &[EntryUpdate],
    bounces: &[AcceptedMessage],
) -> Result<(), CommitError> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        match ctx
            .writer
            .apply(lease, updates.to_vec(), bounces.to_vec())
            .await
        {
            Err(CommitError::LeaseLost(partition)) => {
                events::emit(FencedWriteRejected { partition });
                return Err(CommitError::LeaseLost(partition));
            }
            Err(error) if attempt < 4 => {
                tracing::warn!(partition = lease.partition, %error, attempt, "queue update failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 3;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Turns delivery results into row updates and bounces and commits them under `lease`.
async fn record(
    ctx: &DeliveryContext,
    lease: &Lease,
    results: &[EntryResult],
) -> Result<(), CommitError> {
    let now = now_millis();
    let mut updates = Vec::with_capacity(results.len());
    let mut failures: HashMap<String, (QueueEntry, Vec<FailedRecipient>)> = HashMap::new();
    for r in results {
        let attempts = r.entry.attempts + 1;
        let mut update = EntryUpdate {
            id: r.entry.id,
            status: QueueStatus::Delivered,
            attempts,
            next_attempt_at: r.entry.next_attempt_at,
            last_error: None,
            attempt: None,
        };
        let failed = match r.outcome {
            Outcome::Delivered => {
                events::emit(DeliverySucceeded {
                    id: r.entry.id,
                    message: &r.entry.message_id,
                    recipient: &r.entry.recipient,
                    mta: r.remote_mta.as_deref().unwrap_or(""),
                    reply: &r.detail,
                    latency_seconds: (now - r.entry.received_at).max(0) as f64 / 1000.0,
                });
                None
            }
            Outcome::Temporary if now < r.entry.expires_at => {
                let wait = ctx.config.delivery.retry_after(attempts);
                update.status = QueueStatus::Deferred;
                update.next_attempt_at = now + wait.as_millis() as i64;
                update.last_error = Some(r.detail.clone());
                events::emit(DeliveryDeferred {
                    id: r.entry.id,
                    recipient: &r.entry.recipient,
                    attempts,
                    retry_in: wait,
                    error: &r.detail,
                });
                None
            }
            Outcome::Temporary => Some(FailedRecipient {
                recipient: r.entry.recipient.clone(),
                status: "4.4.7".into(),
                diagnostic: format!(
                    "delivery time expired after {attempts} attempts; last error: {}",
                    r.detail
                ),
                remote_mta: r.remote_mta.clone(),
            }),
            Outcome::Permanent => Some(FailedRecipient {
                recipient: r.entry.recipient.clone(),
                status: r.status.clone().unwrap_or_else(|| "5.0.0".into()),
                diagnostic: r.detail.clone(),
                remote_mta: r.remote_mta.clone(),
            }),
        };
        if let Some(failed) = failed {
            events::emit(DeliveryFailed {
                id: r.entry.id,
                recipient: &r.entry.recipient,
                attempts,
                error: &failed.diagnostic,
            });
            update.status = QueueStatus::Failed;
            update.last_error = Some(failed.diagnostic.clone());
            failures
                .entry(r.entry.message_id.clone())
                .or_insert_with(|| (r.entry.clone(), Vec::new()))
                .1
                .push(failed);
        }
        updates.push(update);
    }
    let mut bounces = Vec::new();
    for (entry, failed) in failures.values() {
        match delivery::bounce(ctx, entry, failed).await {
            Ok(bounce) => bounces.extend(bounce),
            Err(error) => {
                // Never commit a failure without its bounce: the rows stay pending and the
                // next attempt (which fails the same way, or succeeds) tries again.
                let wait = ctx.config.delivery.retry_after(entry.attempts + 1);
                let retry_at = now + wait.as_millis() as i64;
                events::emit(BounceBuildFailed {
                    message: &entry.message_id,
                    error: &error,
                    retry_in: wait,
                });
                // `updates` has one row per result, in the same order.
                for (update, _) in updates.iter_mut().zip(results).filter(|(u, r)| {
                    u.status == QueueStatus::Failed && r.entry.message_id == entry.message_id
                }) {
                    update.status = QueueStatus::Deferred;
                    update.next_attempt_at = retry_at;
                    update.last_error = Some(format!(
                        "{}; the bounce could not be built ({error}), retrying",
                        update.last_error.as_deref().unwrap_or("failed")
                    ));
                }
            }
        }
    }
    // The attempt as it ends up in the row (a failure whose bounce could not be built is
    // a deferral), written in the same transaction as the row.
    for (update, r) in updates.iter_mut().zip(results) {
        let outcome = match update.status {
            QueueStatus::Delivered => "delivered",
            QueueStatus::Failed if r.entry.sender.is_empty() => "failed",
            QueueStatus::Failed => "bounced",
            _ => "deferred",
        };
        let detail = match update.status {
            QueueStatus::Delivered => r.detail.clone(),
            _ => update
                .last_error
                .clone()
                .unwrap_or_else(|| r.detail.clone()),
        };
        update.attempt = Some(Attempt { outcome, detail });
    }
    apply(ctx, lease, &updates, &bounces).await?;
    events::emit(BouncesQueued {
        count: bounces.len(),
    });
    delivery::hint_bounces(ctx, &bounces);
    Ok(())
}

/// What a worker records its definitive results through as they arrive (see
/// [`delivery::RecordResults`]): [`record`] under this partition's lease; a lost lease stops
/// the partition, as it does when the partition records.
fn recorder(
    ctx: &Arc<DeliveryContext>,
    lease: &Lease,
    partition: &ActorRef<PartitionMsg>,
) -> delivery::RecordResults {
    let (ctx, lease, partition) = (ctx.clone(), lease.clone(), partition.clone());
    Arc::new(move |results: Vec<EntryResult>| {
        let (ctx, lease, partition) = (ctx.clone(), lease.clone(), partition.clone());
        tokio::spawn(async move {
            match record(&ctx, &lease, &results).await {
                Ok(()) => {}
                Err(CommitError::LeaseLost(_)) => {
                    partition.stop(ExitReason::LeaseLost.stop());
                }
                Err(error) => {
                    // The rows stay pending and are retried: a duplicate is possible, a loss not.
                    tracing::error!(partition = lease.partition, %error, "cannot record delivery results");
                }
            }
        })
    })
}

impl PartitionQueue {
    /// Rows this partition can send now: for each domain with a free connection slot (the
    /// longest-waiting first), its due rows that are not already being delivered. Domains at
    /// their limit are skipped in the query, so one busy destination never hides the others.
    async fn sendable(
        state: &PartitionState,
    ) -> Result<Vec<(String, Vec<QueueEntry>)>, crate::store::StoreError> {
        let ctx = &state.ctx;
        let partition = state.lease.partition;
        let limit = ctx.config.delivery.concurrency_per_destination;
        let per_connection = ctx.config.delivery.max_messages_per_connection;
        let saturated: Vec<String> = state
            .workers
            .iter()
            .filter(|(_, active)| **active >= limit)
            .map(|(domain, _)| domain.clone())
            .collect();
        let mut budget = ctx.config.queue.batch_size as usize;
        let domains = ctx
            .stores
            .queue
            .due_domains(partition, &saturated, ctx.config.queue.batch_size)
            .await?;
        let mut out = Vec::new();
        for domain in domains {
            if budget == 0 {
                break;
            }
            let active = state.workers.get(&domain).copied().unwrap_or(0);
            let free = limit.saturating_sub(active);
            let wanted = free * per_connection;
            // Room for every row of the busy connections (still among the oldest) and enough
            // to fill the free ones: `active + free` is the limit.
            let fetch = u32::try_from(limit * per_connection).unwrap_or(u32::MAX);
            let rows = ctx
                .stores
                .queue
                .due_entries(partition, &domain, fetch)
                .await?;
            let rows: Vec<QueueEntry> = rows
                .into_iter()
                .filter(|e| !state.in_flight.contains(&e.id))
                .take(wanted.min(budget))
                .collect();
            budget -= rows.len();
            if !rows.is_empty() {
                out.push((domain, rows));
            }
        }
        Ok(out)
    }

    async fn wake(myself: &ActorRef<PartitionMsg>, state: &mut PartitionState) {
        let ctx = state.ctx.clone();
        let partition = state.lease.partition;
        if let Err(after) = may_deliver(state.deadline.deadline(), Instant::now()) {
            tracing::debug!(partition, "lease deadline not valid; no delivery starts");
            Self::schedule(myself, state, after);
            return;
        }
        let by_domain = match Self::sendable(state).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(partition, %error, "cannot read due queue entries");
                Self::schedule(myself, state, Duration::from_secs(5));
                return;
            }
        };
        // At most `concurrency_per_destination` connections per domain; rows beyond that wait
        // for a worker to finish and then leave together over one connection.
        let per_connection = ctx.config.delivery.max_messages_per_connection;
        let limit = ctx.config.delivery.concurrency_per_destination;
        'domains: for (domain, entries) in by_domain {
            let active = state.workers.get(&domain).copied().unwrap_or(0);
            let batches = delivery::batches(entries, per_connection);
            for batch in batches.into_iter().take(limit.saturating_sub(active)) {
                // The queries above took time: the deadline may have passed meanwhile.
                if let Err(after) = may_deliver(state.deadline.deadline(), Instant::now()) {
                    Self::schedule(myself, state, after);
                    break 'domains;
                }
                let ids: Vec<i64> = batch.iter().map(|e| e.id).collect();
                state.in_flight.extend(ids.iter().copied());
                *state.workers.entry(domain.clone()).or_default() += 1;
                let record = recorder(&ctx, &state.lease, myself);
                let ctx = ctx.clone();
                let me = myself.clone();
                let deadline = state.deadline.clone();
                let worker_domain = domain.clone();
                let handle = state.tasks.spawn(async move {
                    let results =
                        delivery::deliver(&ctx, &worker_domain, batch, &deadline, &record).await;
                    // Only a signal: the output stays in the partition's JoinSet, where even
                    // a stopping actor still collects it.
                    let _ = me.send_message(PartitionMsg::WorkerDone(tokio::task::try_id()));
                    (worker_domain, results)
                });
                state.running.insert(handle.id(), (domain.clone(), ids));
            }
        }
        match ctx.stores.queue.next_due(partition).await {
            Ok(next_due) => {
                if let Some(wait) = next_wake(next_due, now_millis()) {
                    Self::schedule(myself, state, wait);
                }
            }
            Err(error) => {
                tracing::warn!(partition, %error, "cannot read next due time");
                Self::schedule(myself, state, Duration::from_secs(5));
            }
        }
    }

    fn schedule(myself: &ActorRef<PartitionMsg>, state: &mut PartitionState, after: Duration) {
        // Replacing the timer drops (aborts) the previous one.
        state.timer = Some(OwnedTask::adopt(
            &myself.send_after(after, || PartitionMsg::Wake),
        ));
    }

    /// Releases a finished (or failed) worker's domain slot; returns its rows.
    fn finished(state: &mut PartitionState, id: tokio::task::Id) -> Vec<i64> {
        let Some((domain, rows)) = state.running.remove(&id) else {
            return Vec::new();
        };
        if let Some(n) = state.workers.get_mut(&domain) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.workers.remove(&domain);
            }
        }
        rows
    }

    /// Takes every finished worker's output out of the JoinSet, releasing its slot. The rows
    /// of a worker that returned stay in flight until their results are recorded; a failed
    /// worker's are released at once.
    fn collect(state: &mut PartitionState) -> (Vec<EntryResult>, Vec<i64>) {
        let (mut results, mut rows) = (Vec::new(), Vec::new());
        while let Some(joined) = state.tasks.try_join_next_with_id() {
            match joined {
                Ok((id, (_, r))) => {
                    rows.extend(Self::finished(state, id));
                    results.extend(r);
                }
                Err(error) => {
                    // Its rows are still pending in the database: they are tried again.
                    tracing::error!(partition = state.lease.partition, %error, "delivery worker failed");
                    for row in Self::finished(state, error.id()) {
                        state.in_flight.remove(&row);
                    }
                }
            }
        }
        (results, rows)
    }

    /// Runs `commit` as a task of the partition's, holding `rows` in flight until it ends;
    /// it signals `Committed` when done.
    fn spawn_commit(
        myself: &ActorRef<PartitionMsg>,
        state: &mut PartitionState,
        rows: Vec<i64>,
        commit: impl std::future::Future<Output = bool> + Send + 'static,
    ) {
        state.in_flight.extend(rows.iter().copied());
        let me = myself.clone();
        state.commits.spawn(async move {
            let wake = commit.await;
            let _ = me.send_message(PartitionMsg::Committed);
            Committed { rows, wake }
        });
    }

    /// Commit tasks signalled: release the rows of those that ended, and look for work if one
    /// asks for it (or failed, so its rows are due again).
    async fn committed(myself: &ActorRef<PartitionMsg>, state: &mut PartitionState) {
        let mut wake = false;
        while let Some(joined) = state.commits.try_join_next() {
            match joined {
                Ok(done) => {
                    for row in done.rows {
                        state.in_flight.remove(&row);
                    }
                    wake |= done.wake;
                }
                Err(error) => {
                    // Its rows stay in flight until the partition restarts; say so loudly.
                    tracing::error!(partition = state.lease.partition, %error, "queue commit task failed");
                }
            }
        }
        if wake {
            Self::wake(myself, state).await;
        }
    }

    /// A worker signalled: record whatever finished (in a commit task), then look for more
    /// work once that is done.
    fn worker_done(
        myself: &ActorRef<PartitionMsg>,
        state: &mut PartitionState,
        worker: Option<tokio::task::Id>,
    ) {
        let (results, rows) = Self::collect(state);
        if let Some(id) = worker
            && state.running.contains_key(&id)
        {
            // It signalled just before returning: its output is not in the set yet.
            myself.send_after(Duration::from_millis(1), move || {
                PartitionMsg::WorkerDone(Some(id))
            });
        }
        if results.is_empty() && rows.is_empty() {
            return;
        }
        let (ctx, lease, me) = (state.ctx.clone(), state.lease.clone(), myself.clone());
        Self::spawn_commit(myself, state, rows, async move {
            match record(&ctx, &lease, &results).await {
                Ok(()) => {}
                Err(CommitError::LeaseLost(_)) => {
                    me.stop(ExitReason::LeaseLost.stop());
                    return false;
                }
                Err(error) => {
                    // The rows stay pending and will be retried: a duplicate is possible, a
                    // loss not.
                    tracing::error!(partition = lease.partition, %error, "cannot record delivery results");
                }
            }
            true
        });
    }

    /// A row of this partition that is still pending.
    async fn owned_pending(
        ctx: &DeliveryContext,
        lease: &Lease,
        id: i64,
    ) -> Result<QueueEntry, QueueOpError> {
        let entry = ctx
            .stores
            .queue
            .queue_entry(id)
            .await
            .map_err(|e| QueueOpError::Store(Arc::new(e)))?
            .filter(|e| e.partition == lease.partition)
            .ok_or(QueueOpError::NotFound(id))?;
        if !entry.status.is_pending() {
            return Err(QueueOpError::Finished(id, entry.status.as_str()));
        }
        Ok(entry)
    }

    async fn retry(ctx: &DeliveryContext, lease: &Lease, id: i64) -> Result<(), QueueOpError> {
        let entry = Self::owned_pending(ctx, lease, id).await?;
        let update = EntryUpdate {
            id,
            status: entry.status,
            attempts: entry.attempts,
            next_attempt_at: now_millis(),
            last_error: entry.last_error,
            attempt: None,
        };
        apply(ctx, lease, &[update], &[])
            .await
            .map_err(QueueOpError::Commit)
    }

    async fn cancel(
        ctx: &DeliveryContext,
        lease: &Lease,
        id: i64,
        bounce: bool,
    ) -> Result<(), QueueOpError> {
        let entry = Self::owned_pending(ctx, lease, id).await?;
        let reason = "delivery cancelled by the administrator".to_string();
        let update = EntryUpdate {
            id,
            status: QueueStatus::Cancelled,
            attempts: entry.attempts,
            next_attempt_at: entry.next_attempt_at,
            last_error: Some(reason.clone()),
            attempt: None,
        };
        let mut bounces = Vec::new();
        if bounce {
            let failed = [FailedRecipient {
                recipient: entry.recipient.clone(),
                status: "5.0.0".into(),
                diagnostic: reason,
                remote_mta: None,
            }];
            // Not cancelled without its bounce: the administrator gets the error and retries.
            let bounce = delivery::bounce(ctx, &entry, &failed)
                .await
                .map_err(|e| QueueOpError::Bounce(Arc::new(e)))?;
            bounces.extend(bounce);
        }
        apply(ctx, lease, &[update], &bounces)
            .await
            .map_err(QueueOpError::Commit)?;
        events::emit(BouncesQueued {
            count: bounces.len(),
        });
        delivery::hint_bounces(ctx, &bounces);
        Ok(())
    }

    /// Runs the administrator's retry or cancel of row `id` as a commit task (the row is in
    /// flight meanwhile, so no worker picks it up), answering `reply` when it ends.
    fn operate(
        myself: &ActorRef<PartitionMsg>,
        state: &mut PartitionState,
        id: i64,
        cancel: Option<bool>,
        reply: RpcReplyPort<Result<(), QueueOpError>>,
    ) {
        if state.in_flight.contains(&id) {
            let _ = reply.send(Err(QueueOpError::InFlight(id)));
            return;
        }
        let (ctx, lease, me) = (state.ctx.clone(), state.lease.clone(), myself.clone());
        Self::spawn_commit(myself, state, vec![id], async move {
            let result = match cancel {
                None => Self::retry(&ctx, &lease, id).await,
                Some(bounce) => Self::cancel(&ctx, &lease, id, bounce).await,
            };
            let (ok, lost) = (result.is_ok(), is_lease_lost(&result));
            let _ = reply.send(result);
            if lost {
                me.stop(ExitReason::LeaseLost.stop());
            }
            // A retried row is due now.
            ok && cancel.is_none()
        });
    }
}

fn is_lease_lost(result: &Result<(), QueueOpError>) -> bool {
    matches!(result, Err(QueueOpError::Commit(CommitError::LeaseLost(_))))
}

impl Actor for PartitionQueue {
    type Msg = PartitionMsg;
    type State = PartitionState;
    type Arguments = PartitionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: PartitionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Hints can be lost (for example across nodes), so poll as a backstop.
        let poll = OwnedTask::adopt(
            &myself.send_interval(args.ctx.config.queue.poll_interval, || PartitionMsg::Wake),
        );
        myself.send_message(PartitionMsg::Wake)?;
        Ok(PartitionState {
            ctx: args.ctx,
            lease: args.lease,
            wake_pending: args.wake_pending,
            deadline: args.deadline,
            in_flight: HashSet::new(),
            workers: HashMap::new(),
            tasks: JoinSet::new(),
            running: HashMap::new(),
            commits: JoinSet::new(),
            timer: None,
            _poll: poll,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let partition = state.lease.partition;
        // Whatever finished before the stop and was not collected yet comes out here too, and
        // the commits under way end (or are aborted, their rows left pending) meanwhile.
        let ((outputs, lost), (_, commits_lost)) = tokio::join!(
            drain(&mut state.tasks, DRAIN_TIMEOUT),
            drain(&mut state.commits, DRAIN_TIMEOUT)
        );
        if commits_lost > 0 {
            tracing::warn!(
                partition,
                commits = commits_lost,
                "queue commits aborted at stop; their rows will be retried"
            );
        }
        if lost > 0 {
            tracing::warn!(
                partition,
                workers = lost,
                "delivery workers aborted or failed at stop; their rows will be retried"
            );
        }
        let results: Vec<EntryResult> = outputs.into_iter().flat_map(|(_, r)| r).collect();
        if !results.is_empty()
            && let Err(error) = record(&state.ctx, &state.lease, &results).await
        {
            // Lost lease (counted) or a failed commit: the rows stay pending for the next owner.
            tracing::warn!(partition, %error, "cannot record delivery results at stop");
        }
        state.running.clear();
        state.in_flight.clear();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PartitionMsg::Wake => {
                state
                    .wake_pending
                    .store(false, std::sync::atomic::Ordering::Release);
                Self::wake(&myself, state).await
            }
            PartitionMsg::WorkerDone(worker) => Self::worker_done(&myself, state, worker),
            PartitionMsg::Committed => Self::committed(&myself, state).await,
            PartitionMsg::Retry(id, reply) => Self::operate(&myself, state, id, None, reply),
            PartitionMsg::Cancel(id, bounce, reply) => {
                Self::operate(&myself, state, id, Some(bounce), reply)
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn no_delivery_starts_past_the_deadline() {
        let deadline = LeaseDeadline::default();
        assert_eq!(
            may_deliver(deadline.deadline(), Instant::now()),
            Err(DEADLINE_RECHECK),
            "before the first renewal"
        );
        deadline.renewed(Instant::now(), Duration::from_secs(4));
        assert_eq!(may_deliver(deadline.deadline(), Instant::now()), Ok(()));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            may_deliver(deadline.deadline(), Instant::now()),
            Err(DEADLINE_RECHECK),
            "a quarter of the TTL before expiry"
        );
        // A renewal lets deliveries start again at the next look.
        tokio::time::advance(DEADLINE_RECHECK).await;
        deadline.renewed(Instant::now(), Duration::from_secs(4));
        assert_eq!(may_deliver(deadline.deadline(), Instant::now()), Ok(()));
    }

    #[test]
    fn the_next_wake_is_at_the_next_due_row() {
        assert_eq!(next_wake(None, 1_000), None);
        assert_eq!(
            next_wake(Some(1_000), 1_000),
            None,
            "due now: a worker wakes it"
        );
        assert_eq!(next_wake(Some(900), 1_000), None);
        assert_eq!(
            next_wake(Some(3_500), 1_000),
            Some(Duration::from_millis(2_500))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_keeps_every_finished_output_and_aborts_the_rest() {
        let mut tasks = JoinSet::new();
        // Finished before the stop, never collected.
        tasks.spawn(async { 1 });
        tasks.spawn(async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            2
        });
        tasks.spawn(async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            3
        });
        tasks.spawn(async { panic!("worker bug") });
        tokio::task::yield_now().await;
        let started = Instant::now();
        let (mut outputs, lost) = drain(&mut tasks, Duration::from_secs(15)).await;
        outputs.sort_unstable();
        assert_eq!(outputs, vec![1, 2]);
        assert_eq!(
            lost, 2,
            "the one still running at the timeout, and the panic"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(15));
        assert!(tasks.is_empty(), "no worker outlives the drain");
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_ends_as_soon_as_the_workers_do() {
        let mut tasks = JoinSet::new();
        tasks.spawn(async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            "done"
        });
        let started = Instant::now();
        let (outputs, lost) = drain(&mut tasks, Duration::from_secs(15)).await;
        assert_eq!((outputs, lost), (vec!["done"], 0));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[test]
    fn a_lost_lease_in_a_queue_operation_is_recognised() {
        assert!(is_lease_lost(&Err(QueueOpError::Commit(
            CommitError::LeaseLost(3)
        ))));
        assert!(!is_lease_lost(&Err(QueueOpError::NotFound(1))));
        assert!(!is_lease_lost(&Ok(())));
    }
}
