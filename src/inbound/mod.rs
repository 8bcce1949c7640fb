//! The inbound pipeline: mail coming in (SMTP on 25 and 587, the API's send) is resolved to
//! its recipients, checked, and made durable before it is acknowledged.
//!
//! - [`smtp`]: SMTP's way in, the policy that answers a session's events and the protocol
//!   that puts sessions behind a listener;
//! - [`commit`]: the durable commit behind every `250` and `202` (DKIM signing, the body,
//!   the group commit, the queue hint).

pub mod commit;
pub mod smtp;
