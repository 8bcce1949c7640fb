//! The storage writer: every durable metadata write (accepted messages, and the queue owners'
//! fenced changes) goes through it and is committed in groups.
//!
//! Sessions write a large body to the blob store themselves (in parallel); a small one travels
//! in the request and is written by the commit, in its message's row. Then they wait for the
//! writer's answer before replying `250`. The writer buffers every
//! request; the first one of a batch also sends the writer a `Flush`, which lands behind all
//! requests already in the mailbox. So when `Flush` runs, every concurrent request is in the
//! buffer and they share one transaction (one fsync): group commit without a timer.
//!
//! The accepted messages of a batch are written together in one savepoint; if that fails,
//! they are written again one by one, each in its own savepoint like every queue owner's
//! change, so one failing request (a lost lease, a deleted user) leaves the others in the
//! batch. If the writer dies, pending callers see their reply
//! port dropped and answer `451`: the client still holds the message and retries.
//!
//! Callers wait at most `database.commit_timeout` (a hung database answers `451 4.3.0`, not
//! silence), and at most a bounded number of requests are in the writer's mailbox at once:
//! beyond that, callers wait for a slot within the same timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::supervisor::{ActorSlot, ChildSpec};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::events::{self, ActorMailboxDepth, StorageBatchCommitted, StorageCommitTimedOut};
use crate::store::{
    AcceptedMessage, BlobStore, EntryUpdate, Lease, MailboxStore, StoreError, Stores, WriteOp,
};

/// Where the writer answers a request: `Ok` once it is durable.
pub type CommitReply = RpcReplyPort<Result<(), CommitError>>;

/// Messages to the writer.
pub enum WriterMsg {
    /// Commit one write; the reply says whether it is durable.
    Commit(Box<WriteOp>, CommitReply),
    /// Commit everything buffered (sent by the writer to itself).
    Flush,
    /// Test hook: fail while handling the next flush.
    InjectFault,
}

/// Why a commit did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// The writer is restarting or gone.
    #[error("storage writer unavailable")]
    Unavailable,
    /// A queue owner's lease was taken over; its change was not applied.
    #[error("lease on partition {0} lost")]
    LeaseLost(u32),
    /// No answer within `database.commit_timeout`; the write may or may not have happened.
    #[error("no answer from the storage writer within {0:?}")]
    Timeout(Duration),
    /// The body under this key was deleted as unreferenced before the commit; store it
    /// again and retry.
    #[error("message body {0} vanished before its commit")]
    BodyMissing(String),
    /// The database refused the commit (shared by every request of a failed batch).
    #[error("metadata commit failed: {0}")]
    Failed(Arc<StoreError>),
}

/// The writer actor.
pub struct StorageWriter;

/// The writer's state.
pub struct WriterState {
    store: Arc<dyn MailboxStore>,
    blobs: Arc<dyn BlobStore>,
    max_batch: usize,
    pending: Vec<(Box<WriteOp>, CommitReply)>,
    fail_next_flush: bool,
}

/// Arguments: the store and the largest batch.
pub struct WriterArgs {
    /// Where metadata goes.
    pub store: Arc<dyn MailboxStore>,
    /// Where the bodies are (each new message's body is checked before its commit).
    pub blobs: Arc<dyn BlobStore>,
    /// Most messages per transaction.
    pub max_batch: usize,
}

impl Actor for StorageWriter {
    type Msg = WriterMsg;
    type State = WriterState;
    type Arguments = WriterArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: WriterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(WriterState {
            store: args.store,
            blobs: args.blobs,
            max_batch: args.max_batch.max(1),
            pending: Vec::new(),
            fail_next_flush: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WriterMsg::Commit(msg, reply) => {
                state.pending.push((msg, reply));
                if state.pending.len() >= state.max_batch {
                    flush(state).await?;
                } else if state.pending.len() == 1 {
                    myself.send_message(WriterMsg::Flush)?;
                }
            }
            WriterMsg::Flush => flush(state).await?,
            WriterMsg::InjectFault => state.fail_next_flush = true,
        }
        Ok(())
    }
}

async fn flush(state: &mut WriterState) -> Result<(), ActorProcessingErr> {
    if state.pending.is_empty() {
        return Ok(());
    }
    if std::mem::take(&mut state.fail_next_flush) {
        panic!("injected storage writer fault");
    }
    let (ops, replies): (Vec<WriteOp>, Vec<CommitReply>) = std::mem::take(&mut state.pending)
        .into_iter()
        .map(|(op, reply)| (*op, reply))
        .unzip();
    let started = Instant::now();
    let result = state.store.write_batch(&ops, state.blobs.as_ref()).await;
    events::emit(StorageBatchCommitted {
        elapsed: started.elapsed(),
        batch_size: ops.len(),
    });
    match result {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result.map_err(|e| match e {
                    StoreError::LeaseLost { partition } => CommitError::LeaseLost(partition),
                    StoreError::BlobMissing(key) => CommitError::BodyMissing(key),
                    other => CommitError::Failed(Arc::new(other)),
                }));
            }
        }
        Err(error) => {
            tracing::error!(%error, size = ops.len(), "group commit failed");
            let error = Arc::new(error);
            for reply in replies {
                let _ = reply.send(Err(CommitError::Failed(error.clone())));
            }
        }
    }
    Ok(())
}

/// How the root supervisor builds (and rebuilds) the writer, publishing each new address to
/// `writer`.
pub fn child_spec(stores: &Stores, max_batch: usize, writer: &WriterHandle) -> ChildSpec {
    let store = stores.mailboxes.clone();
    let blobs = stores.blobs.clone();
    let writer = writer.clone();
    ChildSpec::new("storage_writer", move |sup| {
        let args = WriterArgs {
            store: store.clone(),
            blobs: blobs.clone(),
            max_batch,
        };
        let writer = writer.clone();
        async move {
            let (actor, _) = Actor::spawn_linked(None, StorageWriter, args, sup).await?;
            writer.set(actor.clone());
            Ok(actor.get_cell())
        }
    })
}

/// One request counted in the writer's mailbox depth while it lives (also when its caller
/// gives up and drops it).
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        let depth = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        events::emit(ActorMailboxDepth {
            actor: "storage_writer",
            depth,
        });
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let depth = self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) - 1;
        events::emit(ActorMailboxDepth {
            actor: "storage_writer",
            depth,
        });
    }
}

/// The current writer's address; the supervisor replaces it when it restarts the writer, so
/// holders of the handle never keep a dead address.
#[derive(Clone)]
pub struct WriterHandle {
    slot: ActorSlot<WriterMsg>,
    /// Requests allowed in the writer's mailbox at once.
    slots: Arc<tokio::sync::Semaphore>,
    /// Requests waiting: in the mailbox, being committed, or for a slot.
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    timeout: Duration,
}

impl WriterHandle {
    /// A handle whose callers wait at most `timeout`, with at most `max_pending` requests
    /// queued for the writer.
    pub fn new(timeout: Duration, max_pending: usize) -> Self {
        Self {
            slot: ActorSlot::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(max_pending.max(1))),
            waiting: Arc::default(),
            timeout,
        }
    }

    /// Publishes a new writer (from its spawn function).
    pub fn set(&self, writer: ActorRef<WriterMsg>) {
        self.slot.set(writer);
    }

    fn current(&self) -> Option<ActorRef<WriterMsg>> {
        self.slot.get()
    }

    /// Commits an accepted message and waits until it is durable.
    pub async fn commit(&self, message: AcceptedMessage) -> Result<(), CommitError> {
        self.write(WriteOp::Accept(message)).await
    }

    /// Applies a partition owner's changes (and bounces) under its lease.
    pub async fn apply(
        &self,
        lease: &Lease,
        updates: Vec<EntryUpdate>,
        new_messages: Vec<AcceptedMessage>,
    ) -> Result<(), CommitError> {
        self.write(WriteOp::Apply {
            lease: lease.clone(),
            updates,
            new_messages,
        })
        .await
    }

    async fn write(&self, op: WriteOp) -> Result<(), CommitError> {
        let _waiting = Waiting::enter(&self.waiting);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timed_out = CommitError::Timeout(self.timeout);
        let _slot = tokio::time::timeout_at(deadline, self.slots.acquire())
            .await
            .map_err(|_| timed_out.clone())?
            .map_err(|_| CommitError::Unavailable)?;
        let writer = self.current().ok_or(CommitError::Unavailable)?;
        let op = Box::new(op);
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match writer
            .call(|reply| WriterMsg::Commit(op, reply), Some(left))
            .await
        {
            Ok(CallResult::Success(result)) => result,
            Ok(CallResult::Timeout) => {
                events::emit(StorageCommitTimedOut);
                Err(timed_out)
            }
            Ok(_) | Err(_) => Err(CommitError::Unavailable),
        }
    }

    /// Test hook: makes the writer fail on its next flush.
    pub fn inject_fault(&self) -> Result<(), CommitError> {
        let writer = self.current().ok_or(CommitError::Unavailable)?;
        writer
            .send_message(WriterMsg::InjectFault)
            .map_err(|_| CommitError::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::harness::{ClockHold, Harness, real_sleep};
    use crate::actors::{ExitReason, RootSupervisor};
    use crate::store::sql::tests::accepted;

    /// A writer on a fresh SQLite database (bodies inline), under a root supervisor under
    /// the harness.
    async fn writer() -> (tempfile::TempDir, Stores, WriterHandle, Harness) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = crate::config::Config::default();
        config.database.url = format!("sqlite://{}/w.db", dir.path().display());
        config.storage.options.path = dir.path().join("blobs");
        let stores = Stores::open(&config).await.expect("stores");
        let harness = Harness::new().await;
        let handle = WriterHandle::new(Duration::from_secs(10), 64);
        let specs = vec![child_spec(&stores, 100, &handle)];
        Actor::spawn_linked(None, RootSupervisor, specs, harness.parent())
            .await
            .expect("root");
        (dir, stores, handle, harness)
    }

    fn message(n: usize) -> AcceptedMessage {
        let body = format!("Subject: {n}\r\n\r\nbody {n}\r\n").into_bytes();
        let mut m = accepted(&format!("m{n:04}"), &crate::store::blob_key(&body));
        m.size = body.len() as i64;
        m.inline_body = Some(body.into());
        m
    }

    #[tokio::test]
    async fn concurrent_commits_are_all_durable_when_answered() {
        let (_dir, stores, writer, harness) = writer().await;
        let results = futures::future::join_all((0..40).map(|n| {
            let writer = writer.clone();
            async move { writer.commit(message(n)).await }
        }))
        .await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(stores.mailboxes.count_messages().await.expect("count"), 40);
        harness.finish(0).await;
    }

    /// A writer that dies with a batch in hand answers none of it `Ok` (the callers retry,
    /// the client still holds the message); the root supervisor starts it again after the
    /// restart policy's first backoff (100 ms, not a moment sooner), and it commits again.
    #[tokio::test(start_paused = true)]
    async fn a_failing_writer_acknowledges_nothing_and_is_restarted_after_the_backoff() {
        let _clock = ClockHold::hold();
        let (_dir, stores, writer, harness) = writer().await;
        writer.commit(message(0)).await.expect("first");
        writer.inject_fault().expect("fault");
        let lost = writer.commit(message(1)).await;
        assert!(matches!(lost, Err(CommitError::Unavailable)), "{lost:?}");

        let backoff = crate::actors::restart::RestartPolicy::STANDARD.first;
        tokio::time::advance(backoff - Duration::from_millis(1)).await;
        real_sleep(Duration::from_millis(300)).await;
        let early = writer.commit(message(2)).await;
        assert!(
            matches!(early, Err(CommitError::Unavailable)),
            "restarted before its backoff: {early:?}"
        );

        tokio::time::advance(Duration::from_millis(1)).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match writer.commit(message(2)).await {
                Ok(()) => break,
                Err(CommitError::Unavailable) if std::time::Instant::now() < deadline => {
                    real_sleep(Duration::from_millis(20)).await;
                }
                Err(other) => panic!("not committed after the restart: {other}"),
            }
        }
        assert_eq!(stores.mailboxes.count_messages().await.expect("count"), 2);
        // The root supervisor handled the failure: nothing reached the harness.
        assert!(harness.exits().iter().all(|e| *e == ExitReason::Shutdown));
        harness.finish(0).await;
    }

    /// Stands in for a writer whose database hangs: takes requests and never answers.
    struct Hung(Arc<std::sync::atomic::AtomicUsize>);

    impl Actor for Hung {
        type Msg = WriterMsg;
        type State = Vec<CommitReply>;
        type Arguments = ();

        async fn pre_start(
            &self,
            _: ActorRef<WriterMsg>,
            _: (),
        ) -> Result<Vec<CommitReply>, ActorProcessingErr> {
            Ok(Vec::new())
        }

        async fn handle(
            &self,
            _: ActorRef<WriterMsg>,
            message: WriterMsg,
            held: &mut Vec<CommitReply>,
        ) -> Result<(), ActorProcessingErr> {
            if let WriterMsg::Commit(_, reply) = message {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(reply);
            }
            Ok(())
        }
    }

    /// Under the paused clock: a hung writer answers every caller `Timeout` after
    /// `commit_timeout` (never silence, never `Ok`), and holds at most `max_pending` requests:
    /// the others wait for a place and time out without entering its mailbox.
    #[tokio::test(start_paused = true)]
    async fn a_hung_writer_times_callers_out_and_takes_no_more_than_its_bound() {
        let harness = Harness::new().await;
        let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (hung, _) = Actor::spawn_linked(None, Hung(received.clone()), (), harness.parent())
            .await
            .expect("hung writer");
        let writer = WriterHandle::new(Duration::from_secs(10), 2);
        writer.set(hung);
        let started = tokio::time::Instant::now();
        let results = futures::future::join_all((0..5).map(|n| {
            let writer = writer.clone();
            async move { writer.commit(message(n)).await }
        }))
        .await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(CommitError::Timeout(_)))),
            "{results:?}"
        );
        assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(writer.waiting.load(std::sync::atomic::Ordering::SeqCst), 0);
        harness.finish(0).await;
    }
}
