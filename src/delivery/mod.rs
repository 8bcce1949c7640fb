//! Outbound delivery: the partitioned queue (a manager holding the leases, one actor per owned
//! partition), the delivery workers, the SMTP client and its driver, routing (MX or a
//! smarthost), idle-connection reuse, the lease deadline, and bounces (RFC 3464).

pub mod client;
pub mod connection_cache;
pub mod dsn;
pub mod lease_deadline;
pub mod ops;
pub mod outbound;
pub mod partition;
pub mod purger;
pub mod queue_handle;
pub mod queue_manager;
pub mod routing;
pub mod worker;

pub use lease_deadline::LeaseDeadline;
pub use ops::{QueueMsg, QueueOpError};
pub use queue_handle::QueueHandle;
pub use queue_manager::QueueManager;

#[cfg(test)]
mod actor_tests;
