//! The inbound pipeline: mail coming in (SMTP on 25 and 587, the API's send) is resolved to
//! its recipients, checked, and made durable before it is acknowledged.
//!
//! - [`recipients`]: who each recipient is (a local mailbox, the postmaster, a remote address
//!   the client may relay to) or why it is refused;
//! - [`smtp`]: SMTP's way in, the policy that answers a session's events and the protocol
//!   that puts sessions behind a listener;
//! - [`checks`]: the chain of checks on a complete message, each returning a typed verdict
//!   (accept, with header fields to add and a folder or flags per recipient, or refuse with
//!   the reply the sender reads), run by SMTP and the API alike;
//! - [`commit`]: the durable commit behind every `250` and `202` (DKIM signing, the body,
//!   the group commit, the queue hint).

pub mod checks;
pub mod commit;
pub mod recipients;
pub mod smtp;
