//! xbagent: back up, clone and restore MySQL/MariaDB data directories as xbstream streams.
//!
//! One decoder ([`format::Decoder`]) feeds many consumers through one trait
//! ([`stream::sink::ChunkSink`]): the directory writer ([`extract::DirWriter`]), the inspector
//! behind `list` and `verify` ([`inspect`]), and later transports. [`stream`] shows the whole
//! pipeline, source to sink. Each command is a library
//! function with typed options; `main.rs` only parses the command line and maps errors to
//! exit codes.

pub mod binlog;
pub mod clone;
pub mod create;
pub mod extract;
pub mod format;
pub mod inspect;
pub mod metrics;
pub mod progress;
pub mod retry;
pub mod store;
pub mod stream;
pub mod throttle;
pub mod workers;
