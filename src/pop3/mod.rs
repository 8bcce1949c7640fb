//! POP3 (port 110 with STLS, and POP3S on 995) over each user's INBOX: the sans-I/O session
//! and the per-connection driver that serves it behind a [`crate::net::Listener`].

pub mod connection;
pub mod session;

pub use connection::{Pop3Context, Pop3Protocol};
