//! The actor tree: a root supervisor that restarts its children with backoff, and the storage
//! writer that turns concurrent acceptances into group commits. The delivery queue's actors
//! are in [`crate::delivery`].

pub mod storage_writer;
pub mod supervisor;

pub use storage_writer::{CommitError, StorageWriter, WriterHandle, WriterMsg};
pub use supervisor::{ChildSpec, RootSupervisor, SupervisorMsg};
