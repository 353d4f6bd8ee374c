//! xbagent: back up, clone and restore MySQL/MariaDB data directories as xbstream streams.
//!
//! One decoder ([`format::Decoder`]) feeds many consumers through one trait
//! ([`sink::ChunkSink`]): the directory writer ([`extract::DirWriter`]), the inspector behind
//! `list` and `verify` ([`inspect`]), and later transports. Each command is a library
//! function with typed options; `main.rs` only parses the command line and maps errors to
//! exit codes.

pub mod cli;
pub mod clone;
pub mod codec;
pub mod create;
pub mod error;
pub mod extract;
pub mod format;
pub mod inspect;
pub mod progress;
pub mod retry;
pub mod sink;
pub mod stdio;
pub mod stream;

pub use error::{Error, Result};
pub mod source;
pub mod store;
pub mod workers;
