//! MaiRust: a mail engine that receives mail over SMTP, stores it durably and serves it over
//! a REST API, in one binary.
//!
//! The promise everything serves: a `250` after DATA (or BDAT LAST) means the body is fsynced
//! in the blob store and its metadata committed.

pub mod accounts;
pub mod actors;
pub mod api;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod dkim;
pub mod events;
pub mod imap;
pub mod inbound;
pub mod message;
pub mod net;
pub mod pop3;
pub mod private;
pub mod server;
pub mod smtp;
pub mod store;
pub mod task;
pub mod telemetry;
pub mod web;
