//! Actor-level tests of the delivery queue: the queue manager and a partition queue against a
//! real SQLite store and the real storage writer, under the actor harness (which fails a test
//! on an actor that failed unexpectedly, or on an actor or task left running).
//!
//! They run on the real clock with short timers: SQLite answers from a thread of its own, and
//! a paused clock, which jumps ahead whenever the runtime waits, would run every timeout out
//! before the answer came. The timing rules themselves (restart backoff, commit timeouts,
//! drains, lease deadlines) have paused-clock tests beside their code.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell};

use super::connection_cache::ConnectionCache;
use super::partition::{PartitionArgs, PartitionQueue};
use super::queue_manager::{QueueManager, QueueManagerArgs};
use super::routing::Router;
use super::worker::{DeliveryContext, DestinationLimiter};
use super::{LeaseDeadline, QueueHandle};
use crate::actors::harness::Harness;
use crate::actors::{ExitReason, StorageWriter, WriterHandle};
use crate::config::Config;
use crate::store::{
    AcceptedMessage, LeaseGrant, MessageSummary, QueueStatus, RemoteRecipient, Stores, now_millis,
};

const NODE: &str = "node-a";
const PARTITIONS: u32 = 4;

/// A queue on a fresh SQLite database, its storage writer running under the harness.
struct Fixture {
    _dir: tempfile::TempDir,
    ctx: Arc<DeliveryContext>,
    harness: Harness,
}

async fn fixture() -> Fixture {
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
        _dir: dir,
        ctx,
        harness,
    }
}

/// Queues one message from the null sender (so a failure needs no bounce) to `recipient` at
/// an address literal that is no address: delivery fails at once, permanently.
async fn queue_unroutable(ctx: &DeliveryContext) -> (u32, i64) {
    let domain = "[no-such-address]";
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

/// Waits (real time, bounded) until `check` holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

/// The partition actors under the manager (its children).
fn partitions_of(harness_child: &ActorCell) -> usize {
    harness_child.get_children().len()
}

#[tokio::test]
async fn a_partition_records_a_permanent_failure_under_its_lease_and_stops_cleanly() {
    let f = fixture().await;
    let (partition, row) = queue_unroutable(&f.ctx).await;
    let lease = match f
        .ctx
        .stores
        .queue
        .acquire_lease(partition, NODE, Duration::from_secs(30))
        .await
        .expect("acquire")
    {
        LeaseGrant::Granted(lease) => lease,
        held => panic!("partition {partition} not free: {held:?}"),
    };
    let deadline = Arc::new(LeaseDeadline::default());
    deadline.renewed(tokio::time::Instant::now(), Duration::from_secs(30));
    let args = PartitionArgs {
        ctx: f.ctx.clone(),
        lease,
        wake_pending: Arc::default(),
        deadline,
    };
    Actor::spawn_linked(None, PartitionQueue, args, f.harness.parent())
        .await
        .expect("partition");
    eventually("the row fails", || async {
        status(&f.ctx, row).await == Some(QueueStatus::Failed)
    })
    .await;
    let entry = f.ctx.stores.queue.queue_entry(row).await.expect("row");
    let error = entry.and_then(|e| e.last_error).unwrap_or_default();
    assert!(error.contains("invalid address literal"), "{error}");
    f.harness.finish(0).await;
}

#[tokio::test]
async fn a_partition_refuses_to_retry_a_finished_row_and_keeps_serving() {
    let f = fixture().await;
    let (partition, row) = queue_unroutable(&f.ctx).await;
    let LeaseGrant::Granted(lease) = f
        .ctx
        .stores
        .queue
        .acquire_lease(partition, NODE, Duration::from_secs(30))
        .await
        .expect("acquire")
    else {
        panic!("partition not free");
    };
    let deadline = Arc::new(LeaseDeadline::default());
    deadline.renewed(tokio::time::Instant::now(), Duration::from_secs(30));
    let (actor, _) = Actor::spawn_linked(
        None,
        PartitionQueue,
        PartitionArgs {
            ctx: f.ctx.clone(),
            lease,
            wake_pending: Arc::default(),
            deadline,
        },
        f.harness.parent(),
    )
    .await
    .expect("partition");
    eventually("the row fails", || async {
        status(&f.ctx, row).await == Some(QueueStatus::Failed)
    })
    .await;
    let answer = actor
        .call(
            |reply| super::partition::PartitionMsg::Retry(row, reply),
            Some(Duration::from_secs(10)),
        )
        .await
        .expect("call")
        .success_or(())
        .expect("an answer");
    assert!(
        matches!(answer, Err(super::QueueOpError::Finished(id, "failed")) if id == row),
        "{answer:?}"
    );
    let missing = actor
        .call(
            |reply| super::partition::PartitionMsg::Cancel(row + 1000, false, reply),
            Some(Duration::from_secs(10)),
        )
        .await
        .expect("call")
        .success_or(())
        .expect("an answer");
    assert!(
        matches!(missing, Err(super::QueueOpError::NotFound(_))),
        "{missing:?}"
    );
    f.harness.finish(0).await;
}

#[tokio::test]
async fn the_manager_takes_every_partition_restarts_a_failed_one_and_releases_all_at_stop() {
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

    // Mail is delivered (here: failed for good) by the partition that owns its domain.
    let (_, row) = queue_unroutable(&f.ctx).await;
    eventually("the row fails", || async {
        status(&f.ctx, row).await == Some(QueueStatus::Failed)
    })
    .await;

    // A partition queue that fails is restarted after the backoff, under a newer epoch so
    // nothing of the failed one can write again.
    let before = held_by(&f.ctx, NODE).await;
    let victim = cell.get_children().into_iter().next().expect("a partition");
    victim.stop(ExitReason::Failed("injected".into()).stop());
    eventually("the failed partition runs again", || async {
        partitions_of(&cell) == PARTITIONS as usize
            && held_by(&f.ctx, NODE)
                .await
                .iter()
                .any(|(p, epoch)| before.iter().any(|(bp, be)| bp == p && epoch > be))
    })
    .await;

    // A lease taken away (its epoch moved on) stops that partition; the manager adopts it
    // again with a newer epoch and runs it.
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
