//! The actor tree: a root supervisor that restarts its children with backoff, the storage
//! writers that turn concurrent acceptances into group commits, and the partitioned delivery
//! queue (manager, one actor per owned partition, delivery workers).

pub mod connection_cache;
pub mod delivery;
pub mod lease_deadline;
pub mod partition;
pub mod purger;
pub mod queue_handle;
pub mod queue_manager;
pub mod storage_writer;
pub mod supervisor;

pub use lease_deadline::LeaseDeadline;
pub use partition::QueueOpError;
pub use queue_handle::QueueHandle;
pub use queue_manager::{QueueManager, QueueMsg};
pub use storage_writer::{CommitError, StorageWriter, WriterHandle, WriterMsg};
pub use supervisor::{ChildSpec, RootSupervisor, SupervisorMsg};
