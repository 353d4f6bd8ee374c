//! Backup repositories: one [`Repository`] trait, two backends (a local directory, the
//! embedded default, and S3 through aws-sdk-s3), and the commands built on them: upload,
//! restore, verify, list and prune.
//!
//! Layout (see `format-spec/repository.md`): a backup is `<prefix>/<id>/` holding
//! `started.json` (written first), the stream object, and `manifest.json`, written last, whose
//! presence alone makes the backup complete.
//!
//! Everything here is blocking: the S3 backend drives its own tokio runtime, so the rest of the
//! program (the decoder, the extractor) stays plain threads.

pub mod address;
pub mod binlogs;
pub mod local;
pub mod manifest;
pub mod parts;
pub mod position;
pub mod restore;
pub mod retention;
pub mod s3;
pub mod seal;
pub mod upload;

/// Retries live in [`crate::retry`], shared with `receive`; the old path stays for callers here.
pub use crate::retry;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use thiserror::Error;

pub use address::{BackupRef, RepoAddress};

/// Keys inside a backup's directory.
pub const STARTED: &str = "started.json";
pub const MANIFEST: &str = "manifest.json";
pub const STREAM: &str = "stream.xbstream";
pub const STREAM_ZSTD: &str = "stream.xbstream.zst";

/// What a repository reports of one object. Keys are relative to the repository's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// When it was last written (local: mtime; S3: LastModified), if the store says. `prune`
    /// counts an incomplete backup's age from this, never from its id.
    pub modified: Option<SystemTime>,
}

/// The body of one part of a multipart upload: in memory, or spooled to a temporary file when
/// parts have grown beyond what the memory limit allows.
pub enum PartBody {
    Memory(Bytes),
    Spooled {
        file: tempfile::NamedTempFile,
        len: u64,
    },
}

impl PartBody {
    pub fn len(&self) -> u64 {
        match self {
            PartBody::Memory(b) => b.len() as u64,
            PartBody::Spooled { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A repository: a flat key space of objects under one prefix.
pub trait Repository: Send + Sync {
    /// `s3://bucket/prefix` or the directory, for messages.
    fn describe(&self) -> String;
    /// Store a small object whole and atomically (a manifest, a marker).
    fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError>;
    /// Store a small object whole and atomically, only if `key` does not exist yet (local: a
    /// hard link, which fails if the name is taken; S3: `If-None-Match: *`). `Ok(false)`: it
    /// exists, and nothing was written.
    fn put_new(&self, key: &str, data: Bytes) -> Result<bool, StoreError>;
    /// Read a small object whole; larger than `max` bytes is an error.
    fn get(&self, key: &str, max: u64) -> Result<Bytes, StoreError>;
    /// Fill `buf` with the object's bytes at `start` (the range must lie within the object).
    /// The caller owns the buffer, so readers can reuse a fixed set of them.
    fn read_range(&self, key: &str, start: u64, buf: &mut [u8]) -> Result<(), StoreError>;
    /// Read `len` bytes at `start` into a new buffer.
    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        let mut v = vec![0u8; len as usize];
        self.read_range(key, start, &mut v)?;
        Ok(v.into())
    }
    /// Size of an object, `None` if there is none.
    fn size(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// Every object whose key starts with `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;
    /// Entries under `prefix` that the repository neither reads, lists nor deletes: in a local
    /// repository, symbolic links and other files that are not regular files or directories.
    /// A store of plain objects has none.
    fn refused(&self, _prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    /// Delete an object; deleting a missing one is not an error.
    fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Begin a multipart write of `key`. Nothing is visible under `key` until `complete`.
    fn start_upload(&self, key: &str) -> Result<Box<dyn Upload>, StoreError>;
    /// Abandon unfinished uploads under `prefix` (left by a killed upload). Returns how many.
    fn abort_unfinished(&self, prefix: &str) -> Result<usize, StoreError>;
}

/// An unfinished multipart write.
pub trait Upload: Send + Sync {
    /// Store part `number` (1-based), which starts at `offset` in the object. Parts may arrive
    /// in any order and from several threads.
    fn put_part(&self, number: u32, offset: u64, body: &PartBody) -> Result<(), StoreError>;
    /// Make the object visible; `size` is its total length (checked where the backend can).
    fn complete(&self, parts: u32, size: u64) -> Result<(), StoreError>;
    /// Throw the upload away.
    fn abort(&self) -> Result<(), StoreError>;
}

/// How the S3 backend connects. Unset fields come from the standard AWS configuration chain.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Total time one request may spend retrying.
    pub retry_for: Option<Duration>,
    /// Connections the client may use at once.
    pub concurrency: usize,
    /// Set by SIGINT/SIGTERM: requests stop retrying.
    pub cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// Open the repository an address names. Only `upload` creates a missing local repository
/// (`create`); reading commands report it missing instead of making an empty one.
pub fn open(
    addr: &RepoAddress,
    s3: &S3Settings,
    create: bool,
) -> Result<Arc<dyn Repository>, StoreError> {
    Ok(match addr {
        RepoAddress::Local(dir) if create => Arc::new(local::LocalRepo::open(dir)?),
        RepoAddress::Local(dir) => Arc::new(local::LocalRepo::open_existing(dir)?),
        RepoAddress::S3 { bucket, prefix } => Arc::new(s3::S3Repo::open(bucket, prefix, s3)?),
    })
}

/// Errors of the storage layer.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The store answered with an error, or could not be reached, after any retries.
    #[error("{op} '{key}' on {repo}: {message}")]
    Remote {
        op: &'static str,
        key: String,
        repo: String,
        message: String,
    },
    #[error("'{key}' not found in {repo}")]
    NotFound { key: String, repo: String },
    /// A local file of the repository (or a spool file) could not be used.
    #[error("cannot {op} {}: {source}", path.display())]
    Local {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid repository address '{address}': {reason}")]
    Address { address: String, reason: String },
    #[error("{0}")]
    Setup(String),
    /// A sealed object failed to open: altered, cut, or sealed for someone else.
    #[error("'{key}' in {repo} cannot be opened: {reason}")]
    Damaged {
        key: String,
        repo: String,
        reason: String,
    },
}

/// Errors of the backup commands.
#[derive(Debug, Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stream being uploaded is defective: it is not stored as a backup.
    #[error("the source's stream is defective, upload abandoned: {0}")]
    BadSource(String),
    #[error("the source failed: {0}; upload abandoned, no backup recorded")]
    SourceFailed(String),
    #[error("the source command exited with status {0}; upload abandoned, no backup recorded")]
    ProducerFailed(i32),
    #[error(
        "backup {id} in {repo} is incomplete (no manifest): it cannot be restored or verified"
    )]
    Incomplete { id: String, repo: String },
    #[error("no backup {what} in {repo}")]
    NoSuchBackup { what: String, repo: String },
    #[error("backup {id} already exists in {repo}")]
    Exists { id: String, repo: String },
    #[error("manifest of {id} is unusable: {reason}")]
    BadManifest { id: String, reason: String },
    /// What was read does not match what the manifest promises.
    #[error("backup {id} does not match its manifest: {reason}")]
    Mismatch { id: String, reason: String },
    /// The stored stream itself is defective (bad CRC, truncated, ...).
    #[error("backup {id}: {source}")]
    BadStream {
        id: String,
        #[source]
        source: Box<crate::stream::error::StreamError>,
    },
    /// Writing the restored files failed.
    #[error("restoring backup {id} into {}: {source}", dir.display())]
    Restore {
        id: String,
        dir: PathBuf,
        #[source]
        source: Box<crate::extract::ExtractError>,
    },
    #[error("{0}")]
    Refused(String),
    /// Upload settings that cannot work together.
    #[error(transparent)]
    Options(#[from] upload::OptionsError),
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// An encrypted backup, and no identity to open it with.
    #[error("backup {id} is encrypted (for {recipients}): give --identity-file with the identity of one of these recipients")]
    NeedsIdentity { id: String, recipients: String },
    /// Identities were given, and none is one the backup was sealed for.
    #[error("no identity given opens backup {id}: it was made for {recipients}; the identities given are for {tried}")]
    NoIdentity {
        id: String,
        recipients: String,
        tried: String,
    },
}
