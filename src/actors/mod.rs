//! The actor tree: a root supervisor that restarts its children under one
//! [`restart::RestartPolicy`], the [`exit::ExitReason`] every supervisor reads, and the
//! storage writer that turns concurrent acceptances into group commits. The delivery queue's
//! actors are in [`crate::delivery`].

pub mod exit;
#[cfg(test)]
pub mod harness;
pub mod restart;
pub mod storage_writer;
pub mod supervisor;

pub use exit::ExitReason;
pub use storage_writer::{CommitError, StorageWriter, WriterHandle, WriterMsg};
pub use supervisor::{ChildSpec, RootSupervisor, SupervisorMsg};
