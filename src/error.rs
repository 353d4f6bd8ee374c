//! The library's error type. Each variant carries what an operator needs to act: the path,
//! the stream offset, the directory. `main.rs` maps them to exit codes with [`Error::exit_code`].

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::format::{FormatError, LedgerError};

#[derive(Debug, Error)]
pub enum Error {
    /// The stream's bytes are malformed or hostile.
    #[error(transparent)]
    Format(#[from] FormatError),

    /// The stream is well formed chunk by chunk but breaks cross-chunk rules.
    #[error(transparent)]
    Ledger(#[from] LedgerError),

    /// The input could not be read.
    #[error("cannot read {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: io::Error,
    },

    /// The stream could not be written (create).
    #[error("cannot write the stream: {0}")]
    WriteStream(#[source] io::Error),

    /// A file of the target directory could not be created, written, renamed or removed.
    #[error("cannot {op} '{path}' in {} (chunk at stream offset {offset}): {source}", dir.display())]
    Target {
        op: &'static str,
        path: String,
        dir: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },

    /// The target already holds a file of that name.
    #[error("cannot create '{path}' in {} (chunk at stream offset {offset}): file exists (use --force to overwrite)", dir.display())]
    Exists {
        path: String,
        dir: PathBuf,
        offset: u64,
    },

    /// Something other than a regular file (a FIFO, a device, a directory) has that name.
    #[error("cannot create '{path}' in {} (chunk at stream offset {offset}): a non-regular file (directory, FIFO, device) has that name", dir.display())]
    NotRegular {
        path: String,
        dir: PathBuf,
        offset: u64,
    },

    /// A remove or rename would touch something this run did not create.
    #[error("refusing to {op} '{path}' in {} (chunk at stream offset {offset}): it was there before this extraction (use --force to allow)", dir.display())]
    NotOurs {
        op: &'static str,
        path: String,
        dir: PathBuf,
        offset: u64,
    },

    /// A symlink stands where the stream names a directory or file: never followed.
    #[error("refusing to follow symlink at '{at}' in {} for '{path}' (chunk at stream offset {offset})", dir.display())]
    Symlink {
        at: String,
        path: String,
        dir: PathBuf,
        offset: u64,
    },

    /// Something other than a directory stands where the stream needs one.
    #[error("'{at}' in {} is not a directory, needed for '{path}' (chunk at stream offset {offset})", dir.display())]
    NotADirectory {
        at: String,
        path: String,
        dir: PathBuf,
        offset: u64,
    },

    /// The target directory itself is unusable.
    #[error("cannot use target directory {}: {source}", dir.display())]
    TargetDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A source file or directory given to `create` is unusable.
    #[error("cannot read '{}': {reason}", path.display())]
    Source { path: PathBuf, reason: String },

    /// A clone failed between donor and receiver.
    #[error(transparent)]
    Clone(#[from] crate::clone::CloneError),

    /// A backup command (upload, restore, verify, prune) failed.
    #[error(transparent)]
    Backup(#[from] crate::store::BackupError),

    /// The target directory is not in a state this command may touch.
    #[error("{0}")]
    Refused(String),

    #[error("interrupted")]
    Interrupted,
}

/// Exit codes, documented in the README.
pub mod exit {
    pub const OK: i32 = 0;
    /// The input stream is bad: corrupt, hostile, truncated or incomplete.
    pub const BAD_STREAM: i32 = 1;
    /// Usage error (clap's own code).
    pub const USAGE: i32 = 2;
    /// A local problem: target or source files, permissions, disk space, refused symlinks.
    pub const LOCAL: i32 = 3;
    /// The peer or the network: unreachable, authentication failed, stalled, cut, or the
    /// donor reported an error.
    pub const PEER: i32 = 4;
    pub const INTERRUPTED: i32 = 130;
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Format(_) | Error::Ledger(_) => exit::BAD_STREAM,
            Error::Clone(c) => match c {
                crate::clone::CloneError::ProducerFailed(_)
                | crate::clone::CloneError::TrailerMismatch(_) => exit::BAD_STREAM,
                crate::clone::CloneError::Tls(_)
                | crate::clone::CloneError::Setup(_)
                | crate::clone::CloneError::Listen { .. } => exit::LOCAL,
                _ => exit::PEER,
            },
            Error::Backup(b) => b.exit_code(),
            Error::Interrupted => exit::INTERRUPTED,
            _ => exit::LOCAL,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
