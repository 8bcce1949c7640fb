//! IMAP (port 143 with STARTTLS, and IMAPS on 993) over each user's folders: the framing of
//! commands, the selected mailbox's view, what FETCH renders, and the per-connection driver
//! behind a [`crate::net::Listener`]. Commands are parsed by imap-codec.

pub mod connection;
pub mod framing;
pub mod render;
pub mod selected;
pub mod utf7;
pub use connection::{ImapContext, ImapProtocol};
