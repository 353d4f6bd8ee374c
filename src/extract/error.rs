//! What extracting a stream into a directory can hit: the stream's own defects (through
//! [`StreamError`]) and every refusal or failure in the target directory, each naming the
//! path, the directory and the stream offset of the chunk that caused it.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::stream::error::StreamError;

pub type Result<T, E = ExtractError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum ExtractError {
    /// The stream itself is defective or could not be read.
    #[error(transparent)]
    Stream(#[from] StreamError),

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

    /// The stream held no file where at least one is required (a clone): its producer wrote
    /// nothing, which is never a real backup.
    #[error("{what} holds no files: its producer wrote nothing; {hint}")]
    NoFiles { what: String, hint: &'static str },

    /// The target directory itself is unusable.
    #[error("cannot use target directory {}: {source}", dir.display())]
    TargetDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}
