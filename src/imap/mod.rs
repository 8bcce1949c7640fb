//! IMAP (port 143 with STARTTLS, and IMAPS on 993) over each user's folders: the framing of
//! commands, the selected mailbox's view, FETCH items and what they render, SEARCH, and the
//! per-connection driver behind a [`crate::net::Listener`]. Commands are parsed by imap-codec.

pub mod connection;
mod fetch;
pub mod framing;
pub mod list;
pub mod render;
mod search;
pub mod selected;
pub mod utf7;
pub use connection::{ImapContext, ImapProtocol};
