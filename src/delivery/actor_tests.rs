//! Actor-level tests of the delivery queue: the queue manager and a partition queue against a
//! real SQLite store and the real storage writer, under the actor harness (which fails a test
//! on an actor that failed unexpectedly, or on an actor or task left running).
//!
//! They run under tokio's paused clock, held still (`ClockHold`): time moves only when a test
//! advances it, so a restart backoff or a lease deadline is checked at the instant it should
//! take effect, while SQLite takes the real time it needs (`eventually`, `real_sleep`).

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorRef};
use tokio::time::Instant;

use super::connection_cache::ConnectionCache;
use super::partition::{PartitionArgs, PartitionMsg, PartitionQueue};
use super::queue_manager::{QueueManager, QueueManagerArgs};
use super::routing::Router;
use super::worker::{DeliveryContext, DestinationLimiter};
use super::{LeaseDeadline, QueueHandle, QueueMsg, QueueOpError};
use crate::actors::harness::{ClockHold, Harness, eventually, real_sleep, wait_for};
use crate::actors::restart::RestartPolicy;
use crate::actors::{ExitReason, StorageWriter, WriterHandle};
use crate::config::Config;
use crate::store::{
    AcceptedMessage, LeaseGrant, MessageSummary, QueueStatus, RemoteRecipient, Stores, now_millis,
};

const NODE: &str = "node-a";
const PARTITIONS: u32 = 4;
/// An address literal that is no address: delivery to it fails at once, for good.
const UNROUTABLE: &str = "[no-such-address]";

/// A queue on a fresh SQLite database, its storage writer running under the harness, the
/// clock held.
struct Fixture {
    _clock: ClockHold,
    _dir: tempfile::TempDir,
    ctx: Arc<DeliveryContext>,
    harness: Harness,
}

async fn fixture() -> Fixture {
    // First, before anything waits on the store.
    let clock = ClockHold::hold();
    crate::net::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::default();
    config.database.url = format!("sqlite://{}/queue.db", dir.path().display());
    config.storage.options.path = dir.path().join("blobs");
    config.queue.partitions = PARTITIONS;
    config.queue.lease_ttl = Duration::from_secs(3);
    config.queue.poll_interval = Duration::from_millis(200);
    // Nothing here routes through DNS; a closed loopback port if anything tried.
    config.delivery.dns_servers = vec!["127.0.0.1:9".parse().expect("addr")];
    let config = Arc::new(config);
    let stores = Stores::open(&config).await.expect("stores");
    stores
        .queue
        .ensure_partition_count(PARTITIONS)
        .await
        .expect("partitions");
    let harness = Harness::new().await;
    let writer = WriterHandle::new(config.database.commit_timeout, 64);
    let args = crate::actors::storage_writer::WriterArgs {
        store: stores.mailboxes.clone(),
        blobs: stores.blobs.clone(),
        max_batch: config.database.max_batch,
    };
    let (actor, _) = Actor::spawn_linked(None, StorageWriter, args, harness.parent())
        .await
        .expect("writer");
    writer.set(actor);
    let ctx = Arc::new(DeliveryContext {
        router: Router::new(&config.delivery).expect("router"),
        limiter: DestinationLimiter::new(config.delivery.concurrency_per_destination),
        connections: ConnectionCache::new(
            config.delivery.connection_cache_time,
            config.delivery.concurrency_per_destination,
            config.delivery.max_messages_per_connection,
        ),
        tls: crate::net::tls::outbound_client_config(),
        queue: QueueHandle::default(),
        writer,
        stores,
        config,
    });
    Fixture {
        _clock: clock,
        _dir: dir,
        ctx,
        harness,
    }
}

/// Queues one message from the null sender (so a failure needs no bounce) to `recipient` at
/// an address literal that is no address: delivery fails at once, permanently.
async fn queue_unroutable(ctx: &DeliveryContext) -> (u32, i64) {
    let domain = UNROUTABLE;
    let partition = crate::store::partition_of(domain, PARTITIONS);
    let body = b"Subject: t\r\n\r\nx\r\n".to_vec();
    let id = crate::store::new_id();
    ctx.writer
        .commit(AcceptedMessage {
            id: id.clone(),
            blob_key: ctx.stores.blobs.key_for(&body),
            inline_body: Some(body.clone().into()),
            size: body.len() as i64,
            received_at: now_millis(),
            envelope_from: String::new(),
            summary: MessageSummary::default(),
            deliveries: vec![],
            remote_recipients: vec![RemoteRecipient {
                recipient: format!("x@{domain}"),
                domain: domain.into(),
                partition,
            }],
            expires_at: now_millis() + 3_600_000,
        })
        .await
        .expect("queued");
    let row = ctx
        .stores
        .queue
        .trace(&id, 1)
        .await
        .expect("trace")
        .into_iter()
        .next()
        .and_then(|m| m.remote.into_iter().next())
        .expect("a queue row")
        .0
        .id;
    (partition, row)
}

async fn status(ctx: &DeliveryContext, row: i64) -> Option<QueueStatus> {
    ctx.stores
        .queue
        .queue_entry(row)
        .await
        .expect("row")
        .map(|e| e.status)
}

async fn held_by(ctx: &DeliveryContext, owner: &str) -> Vec<(u32, i64)> {
    let now = now_millis();
    ctx.stores
        .queue
        .list_leases()
        .await
        .expect("leases")
        .into_iter()
        .filter(|l| l.owner.as_deref() == Some(owner) && l.lease_until > now)
        .map(|l| (l.partition, l.epoch))
        .collect()
}

/// A local lease deadline renewed now for `ttl`.
fn trusted_for(ttl: Duration) -> Arc<LeaseDeadline> {
    let deadline = Arc::new(LeaseDeadline::default());
    deadline.renewed(Instant::now(), ttl);
    deadline
}

/// Takes `partition`'s lease for this node and starts its queue under the harness, acting
/// until `deadline`.
async fn start_partition(
    f: &Fixture,
    partition: u32,
    deadline: Arc<LeaseDeadline>,
) -> ActorRef<PartitionMsg> {
    let queue = &f.ctx.stores.queue;
    let grant = queue.acquire_lease(partition, NODE, Duration::from_secs(30));
    let lease = match grant.await.expect("acquire") {
        LeaseGrant::Granted(lease) => lease,
        held => panic!("partition {partition} not free: {held:?}"),
    };
    let args = PartitionArgs {
        ctx: f.ctx.clone(),
        lease,
        wake_pending: Arc::default(),
        deadline,
    };
    let (actor, _) = Actor::spawn_linked(None, PartitionQueue, args, f.harness.parent())
        .await
        .expect("partition");
    actor
}

/// The partition actors under the manager (its children).
fn partitions_of(harness_child: &ActorCell) -> usize {
    harness_child.get_children().len()
}

#[tokio::test(start_paused = true)]
async fn a_partition_records_a_permanent_failure_under_its_lease_and_stops_cleanly() {
    let f = fixture().await;
    let (partition, row) = queue_unroutable(&f.ctx).await;
    start_partition(&f, partition, trusted_for(Duration::from_secs(30))).await;
    eventually("the row fails", || async {
        status(&f.ctx, row).await == Some(QueueStatus::Failed)
    })
    .await;
    let entry = f.ctx.stores.queue.queue_entry(row).await.expect("row");
    let error = entry.and_then(|e| e.last_error).unwrap_or_default();
    assert!(error.contains("invalid address literal"), "{error}");
    f.harness.finish(0).await;
}

#[tokio::test(start_paused = true)]
async fn a_partition_refuses_to_retry_a_finished_row_and_keeps_serving() {
    let f = fixture().await;
    let (partition, row) = queue_unroutable(&f.ctx).await;
    let actor = start_partition(&f, partition, trusted_for(Duration::from_secs(30))).await;
    eventually("the row fails", || async {
        status(&f.ctx, row).await == Some(QueueStatus::Failed)
    })
    .await;
    let answer = ask(&actor, |reply| PartitionMsg::Retry(row, reply)).await;
    assert!(
        matches!(answer, Err(QueueOpError::Finished(id, "failed")) if id == row),
        "{answer:?}"
    );
    let missing = ask(&actor, |reply| {
        PartitionMsg::Cancel(row + 1000, false, reply)
    })
    .await;
    assert!(
        matches!(missing, Err(QueueOpError::NotFound(_))),
        "{missing:?}"
    );
    f.harness.finish(0).await;
}

/// Asks `actor` and waits for its answer (at most 10 s).
async fn ask<M, T>(actor: &ActorRef<M>, message: impl FnOnce(ractor::RpcReplyPort<T>) -> M) -> T
where
    M: ractor::Message,
    T: Send + 'static,
{
    actor
        .call(message, Some(Duration::from_secs(10)))
        .await
        .expect("call")
        .success_or(())
        .expect("an answer")
}

/// Whether the manager runs a queue for `partition` now: a queue operation on a row that
/// does not exist reaches the partition's actor (not found there) or is refused by the
/// manager (not owned). The answer comes after the manager handled everything before it.
async fn runs(manager: &ActorRef<QueueMsg>, partition: u32) -> bool {
    let answer = ask(manager, |reply| QueueMsg::Retry(partition, -1, reply)).await;
    match answer {
        Err(QueueOpError::NotFound(_)) => true,
        Err(QueueOpError::NotOwned(_)) => false,
        other => panic!("unexpected answer: {other:?}"),
    }
}

async fn epoch_of(ctx: &DeliveryContext, partition: u32) -> Option<i64> {
    held_by(ctx, NODE)
        .await
        .into_iter()
        .find(|(p, _)| *p == partition)
        .map(|(_, epoch)| epoch)
}

#[tokio::test(start_paused = true)]
async fn the_manager_restarts_a_failed_partition_after_a_growing_backoff_and_releases_all_at_stop()
{
    let f = fixture().await;
    let (manager, _) = Actor::spawn_linked(
        None,
        QueueManager,
        QueueManagerArgs {
            ctx: f.ctx.clone(),
            node_id: NODE.into(),
            members: None,
        },
        f.harness.parent(),
    )
    .await
    .expect("manager");
    f.ctx.queue.set(manager.clone());
    let cell = manager.get_cell();
    eventually("every partition leased and running", || async {
        held_by(&f.ctx, NODE).await.len() == PARTITIONS as usize
            && partitions_of(&cell) == PARTITIONS as usize
    })
    .await;

    // Mail is delivered (here: failed for good) by the partition that owns its domain, at
    // once on the acceptor's hint: the clock stands still, so no poll finds it.
    let (partition, row) = queue_unroutable(&f.ctx).await;
    f.ctx.queue.hint(partition);
    eventually("the row fails", || async {
        status(&f.ctx, row).await == Some(QueueStatus::Failed)
    })
    .await;

    // A partition queue that fails is started again after the restart policy's backoff, not
    // a moment sooner, and under a newer epoch so nothing of the failed one can write again.
    // Failing again soon after, it waits twice as long.
    let mut victim = cell.get_children().into_iter().next().expect("a partition");
    let mut failing = None;
    for failures in 0..2 {
        let backoff = RestartPolicy::STANDARD.delay(failures);
        let children: Vec<_> = cell.get_children().iter().map(|c| c.get_id()).collect();
        victim.stop(ExitReason::Failed("injected".into()).stop());
        let partition = wait_for("the manager sees the failure", || async {
            for p in 0..PARTITIONS {
                if !runs(&manager, p).await {
                    return Some(p);
                }
            }
            None
        })
        .await;
        assert!(failing.is_none_or(|p| p == partition));
        failing = Some(partition);
        let epoch = epoch_of(&f.ctx, partition).await.expect("still leased");

        tokio::time::advance(backoff - Duration::from_millis(1)).await;
        real_sleep(Duration::from_millis(300)).await;
        assert!(
            !runs(&manager, partition).await,
            "restarted before its backoff of {backoff:?}"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        eventually("the failed partition runs again", || async {
            runs(&manager, partition).await
        })
        .await;
        let renewed = epoch_of(&f.ctx, partition).await.expect("leased");
        assert!(renewed > epoch, "epoch {renewed} after {epoch}");
        victim = cell
            .get_children()
            .into_iter()
            .find(|c| !children.contains(&c.get_id()))
            .expect("the restarted partition");
    }

    // A lease taken away (its epoch moved on) stops that partition at the next renewal; the
    // manager adopts it again with a newer epoch and runs it.
    let (partition, epoch) = held_by(&f.ctx, NODE).await[0];
    let moved = f
        .ctx
        .stores
        .queue
        .adopt_lease(partition, NODE, Duration::from_secs(3))
        .await
        .expect("adopt")
        .expect("held");
    assert!(moved.epoch > epoch);
    eventually("the partition is fenced and taken again", || async {
        // Renewals come every third of the lease's TTL: let the clock run towards them.
        tokio::time::advance(Duration::from_millis(50)).await;
        held_by(&f.ctx, NODE)
            .await
            .iter()
            .any(|(p, e)| *p == partition && *e > moved.epoch)
            && partitions_of(&cell) == PARTITIONS as usize
    })
    .await;

    // At stop every lease is released, so another node can take the partitions at once.
    manager
        .stop_and_wait(ExitReason::Shutdown.stop(), Some(Duration::from_secs(30)))
        .await
        .expect("manager stops");
    assert!(held_by(&f.ctx, NODE).await.is_empty());
    f.harness.finish(0).await;
}

/// Past its local lease deadline a partition starts no delivery, however often it looks;
/// once a renewal moves the deadline, its next look delivers.
#[tokio::test(start_paused = true)]
async fn a_partition_starts_no_delivery_past_its_lease_deadline_until_a_renewal() {
    let f = fixture().await;
    let partition = crate::store::partition_of(UNROUTABLE, PARTITIONS);
    let ttl = f.ctx.config.queue.lease_ttl;
    let deadline = trusted_for(ttl);
    let actor = start_partition(&f, partition, deadline.clone()).await;
    let barrier = || async {
        let answer = ask(&actor, |reply| PartitionMsg::Cancel(-1, false, reply)).await;
        assert!(
            matches!(answer, Err(QueueOpError::NotFound(_))),
            "{answer:?}"
        );
    };
    barrier().await;

    let until = deadline.deadline().expect("a deadline");
    tokio::time::advance(until - Instant::now()).await;
    assert!(!deadline.is_valid());
    let (_, row) = queue_unroutable(&f.ctx).await;
    for _ in 0..10 {
        tokio::time::advance(f.ctx.config.queue.poll_interval).await;
        real_sleep(Duration::from_millis(50)).await;
        barrier().await;
        assert_eq!(
            status(&f.ctx, row).await,
            Some(QueueStatus::Queued),
            "delivered past the lease deadline"
        );
    }

    deadline.renewed(Instant::now(), ttl);
    tokio::time::advance(f.ctx.config.queue.poll_interval).await;
    eventually("the row is delivered (fails for good)", || async {
        status(&f.ctx, row).await == Some(QueueStatus::Failed)
    })
    .await;
    f.harness.finish(0).await;
}
