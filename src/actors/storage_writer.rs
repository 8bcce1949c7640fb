//! The storage writer: every durable metadata write (accepted messages, and the queue owners'
//! fenced changes) goes through it and is committed in groups.
//!
//! Sessions write the body to the blob store themselves (in parallel), then ask the writer to
//! commit the metadata and wait for the answer before replying `250`. The writer buffers every
//! request; the first one of a batch also sends the writer a `Flush`, which lands behind all
//! requests already in the mailbox. So when `Flush` runs, every concurrent request is in the
//! buffer and they share one transaction (one fsync): group commit without a timer.
//!
//! Each request runs in its own savepoint, so one failing request (a lost lease, a deleted
//! user) leaves the others in the batch. If the writer dies, pending callers see their reply
//! port dropped and answer `451`: the client still holds the message and retries.

use std::sync::Arc;
use std::time::Instant;

use super::supervisor::ActorSlot;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::store::{AcceptedMessage, EntryUpdate, Lease, MetadataStore, StoreError, WriteOp};

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
    /// The database refused the commit.
    #[error("metadata commit failed: {0}")]
    Failed(String),
}

/// The writer actor.
pub struct StorageWriter;

/// The writer's state.
pub struct WriterState {
    store: Arc<dyn MetadataStore>,
    max_batch: usize,
    pending: Vec<(Box<WriteOp>, CommitReply)>,
    fail_next_flush: bool,
}

/// Arguments: the store and the largest batch.
pub struct WriterArgs {
    /// Where metadata goes.
    pub store: Arc<dyn MetadataStore>,
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
    let batch = std::mem::take(&mut state.pending);
    let started = Instant::now();
    let ops: Vec<WriteOp> = batch.iter().map(|(op, _)| (**op).clone()).collect();
    let result = state.store.write_batch(&ops).await;
    metrics::histogram!("mairust_storage_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("mairust_storage_commit_batch_size").record(batch.len() as f64);
    match result {
        Ok(results) => {
            for ((_, reply), result) in batch.into_iter().zip(results) {
                let _ = reply.send(result.map_err(|e| match e {
                    StoreError::LeaseLost { partition } => CommitError::LeaseLost(partition),
                    other => CommitError::Failed(other.to_string()),
                }));
            }
        }
        Err(error) => {
            tracing::error!(%error, size = batch.len(), "group commit failed");
            for (_, reply) in batch {
                let _ = reply.send(Err(CommitError::Failed(error.to_string())));
            }
        }
    }
    Ok(())
}

/// The current writer's address; the supervisor replaces it when it restarts the writer, so
/// holders of the handle never keep a dead address.
#[derive(Clone, Default)]
pub struct WriterHandle(ActorSlot<WriterMsg>);

impl WriterHandle {
    /// Publishes a new writer (from its spawn function).
    pub fn set(&self, writer: ActorRef<WriterMsg>) {
        self.0.set(writer);
    }

    fn current(&self) -> Option<ActorRef<WriterMsg>> {
        self.0.get()
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
        let writer = self.current().ok_or(CommitError::Unavailable)?;
        let op = Box::new(op);
        match writer
            .call(|reply| WriterMsg::Commit(op, reply), None)
            .await
        {
            Ok(CallResult::Success(result)) => result,
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
