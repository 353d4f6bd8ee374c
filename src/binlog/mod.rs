//! Sans-I/O reader of MariaDB binary logs, for point-in-time recovery (issue 12).
//!
//! [`EventReader`] is fed a binlog file's bytes in pieces of any size and hands back whole,
//! CRC-checked [`Event`]s, decoding only what following transactions needs (FORMAT_DESCRIPTION,
//! GTID_LIST, BINLOG_CHECKPOINT, GTID, XID, the first words of QUERY, ROTATE, STOP).
//! [`FileTracker`] follows event groups through those events and keeps a [`FileSummary`]:
//! GTID state before and after, first and last transaction and their commit times, the end of
//! the longest prefix without a partial transaction, and how the file was closed. [`scan`]
//! and [`scan_prefix`] do both for a file held in memory. The byte layout we rely on is in
//! `format-spec/binlog.md`.
//!
//! This module must never do I/O, never depend on other modules of ours, never keep a body
//! larger than 64 KiB nor any statement text beyond its first bytes, and never trust a
//! length read from input before the bytes it announces have arrived.

pub mod error;
pub mod event;
pub mod gtid;
pub mod reader;
mod tracker;

pub use error::BinlogError;
pub use event::{Event, EventHeader, EventKind, QueryKind, HEADER_LEN, MAGIC};
pub use gtid::{Gtid, GtidParseError, GtidState};
pub use reader::{
    scan, scan_prefix, Closed, EventReader, FileSummary, FileTracker, Transaction, MAX_KEPT_BODY,
};

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
