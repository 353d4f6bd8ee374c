//! Exit codes, decided here and nowhere else. The table users read is README.md, section
//! "Exit codes": keep the two in step.
//!
//! Every match below names every variant of every library error it reaches, with no `_` arm:
//! a variant added to a library error without a code here fails to compile.

use std::io;
use std::path::PathBuf;

use xbagent::clone::CloneError;
use xbagent::create::error::CreateError;
use xbagent::extract::ExtractError;
use xbagent::store::binlogs::pitr::PitrError;
use xbagent::store::binlogs::push::PushError;
use xbagent::store::binlogs::replay::ReplayError;
use xbagent::store::{BackupError, StoreError};
use xbagent::stream::error::StreamError;

pub const OK: i32 = 0;
/// The input stream or backup is bad: corrupt, hostile, truncated, incomplete, or its producer
/// failed.
pub const BAD_STREAM: i32 = 1;
/// Usage error (clap's own code).
pub const USAGE: i32 = 2;
/// A local problem: target or source files, permissions, disk space, refused symlinks, options.
pub const LOCAL: i32 = 3;
/// The peer, the network or the object store.
pub const PEER: i32 = 4;
pub const INTERRUPTED: i32 = 130;

/// Everything a command can fail with: the library's errors, and the binary's own.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Extract(#[from] ExtractError),
    #[error(transparent)]
    Create(#[from] CreateError),
    #[error(transparent)]
    Clone(#[from] CloneError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Push(#[from] PushError),
    #[error(transparent)]
    Pitr(#[from] PitrError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Key(#[from] xbagent::store::seal::KeyError),
    #[error("cannot install a signal handler: {0}")]
    Signals(#[source] io::Error),
    #[error("cannot serve metrics on {addr} (--metrics-listen): {source}")]
    MetricsListen {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// Stopped by SIGINT or SIGTERM: the signal and what the stop leaves behind.
    #[error("{0}")]
    Interrupted(String),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Backup(e.into())
    }
}

/// Why the clone commands will not run with the token they were given.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read token file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("token file {} is empty", path.display())]
    Empty { path: PathBuf },
    /// Larger than any token: a device, a wrong path, a whole file by mistake.
    #[error("token file {} is larger than {cap} bytes: that is not a token (a device or a wrong path?); make one with `xbagent token new > FILE`", path.display())]
    TooLarge { path: PathBuf, cap: u64 },
    /// Group or others may read it: the token is as good as shared with them.
    #[error("token file {} is readable by group or others (mode {mode:04o}); run `chmod 600 {}` (in Kubernetes, give the Secret volume `defaultMode: 0400`), or pass --allow-weak-token to accept the risk", path.display(), path.display())]
    Exposed { path: PathBuf, mode: u32 },
    /// Too short to resist guessing.
    #[error("token file {} holds only {len} bytes (after trimming whitespace); at least {min} are needed so that the token cannot be guessed: make a new one with `xbagent token new > FILE`, or pass --allow-weak-token to accept the risk", path.display())]
    Short {
        path: PathBuf,
        len: usize,
        min: usize,
    },
    #[error("no --token-file given: refusing to run unauthenticated (add --insecure to accept that risk)")]
    Missing,
    /// `token new` could not make or write the token.
    #[error("cannot write the new token: {0}")]
    Write(#[source] io::Error),
}

/// The exit code of a failure (README.md, "Exit codes").
pub fn code(f: &Failure) -> i32 {
    match f {
        Failure::Stream(e) => stream(e),
        Failure::Extract(e) => extract(e),
        Failure::Create(e) => match e {
            CreateError::Source { .. } | CreateError::WriteStream(_) => LOCAL,
        },
        Failure::Clone(e) => clone(e),
        Failure::Backup(e) => backup(e),
        Failure::Push(e) => push(e),
        Failure::Pitr(e) => pitr(e),
        Failure::Key(e) => {
            if e.is_usage() {
                USAGE
            } else {
                LOCAL
            }
        }
        Failure::Token(e) => match e {
            TokenError::Read { .. }
            | TokenError::Empty { .. }
            | TokenError::TooLarge { .. }
            | TokenError::Exposed { .. }
            | TokenError::Short { .. }
            | TokenError::Missing
            | TokenError::Write(_) => LOCAL,
        },
        Failure::Signals(_) | Failure::MetricsListen { .. } => LOCAL,
        Failure::Interrupted(_) => INTERRUPTED,
    }
}

fn stream(e: &StreamError) -> i32 {
    match e {
        StreamError::Format(_) | StreamError::Ledger(_) => BAD_STREAM,
        // The input or output itself: a missing file, a closed pipe.
        StreamError::Read { .. } | StreamError::WriteStream(_) => LOCAL,
    }
}

fn extract(e: &ExtractError) -> i32 {
    match e {
        ExtractError::Stream(s) => stream(s),
        ExtractError::Target { .. }
        | ExtractError::Exists { .. }
        | ExtractError::NotRegular { .. }
        | ExtractError::NotOurs { .. }
        | ExtractError::Symlink { .. }
        | ExtractError::NotADirectory { .. }
        | ExtractError::TargetDir { .. } => LOCAL,
        ExtractError::NoFiles { .. } => BAD_STREAM,
    }
}

fn clone(e: &CloneError) -> i32 {
    match e {
        CloneError::ProducerFailed(_) | CloneError::TrailerMismatch(_) => BAD_STREAM,
        CloneError::Tls(_)
        | CloneError::Setup(_)
        | CloneError::Listen { .. }
        | CloneError::NotOurs { .. }
        | CloneError::KeepPartial { .. } => LOCAL,
        CloneError::Unreachable { .. }
        | CloneError::Protocol { .. }
        | CloneError::Io { .. }
        | CloneError::Stalled { .. }
        | CloneError::Cut { .. }
        | CloneError::Busy { .. }
        | CloneError::Donor(_) => PEER,
        CloneError::Extract(e) => extract(e),
    }
}

fn backup(e: &BackupError) -> i32 {
    match e {
        BackupError::Store(s) => store(s),
        BackupError::BadSource(_)
        | BackupError::ProducerFailed(_)
        | BackupError::Incomplete { .. }
        | BackupError::BadManifest { .. }
        | BackupError::Mismatch { .. }
        | BackupError::BadStream { .. } => BAD_STREAM,
        BackupError::SourceFailed(_)
        | BackupError::NoSuchBackup { .. }
        | BackupError::Exists { .. }
        | BackupError::Refused(_)
        | BackupError::Options(_) => LOCAL,
        BackupError::Restore { source, .. } => extract(source),
        BackupError::Interrupted(_) => INTERRUPTED,
        BackupError::NeedsIdentity { .. } => USAGE,
        BackupError::NoIdentity { .. } => LOCAL,
    }
}

fn push(e: &PushError) -> i32 {
    match e {
        PushError::Store(s) => store(s),
        // The server's binlog index stayed unreadable: the server (or the shared volume) is
        // not there.
        PushError::Index { .. } => PEER,
        PushError::Binlog(_) => BAD_STREAM,
        PushError::Read { .. } | PushError::Conflict { .. } | PushError::BadName { .. } => LOCAL,
        PushError::Interrupted => INTERRUPTED,
    }
}

fn pitr(e: &PitrError) -> i32 {
    match e {
        PitrError::Refused { .. } | PitrError::BadBinlog { .. } => BAD_STREAM,
        PitrError::Backup(b) => backup(b),
        PitrError::Store(s) => store(s),
        PitrError::Replay(ReplayError::MissingTool { .. }) | PitrError::Local { .. } => LOCAL,
        PitrError::Replay(ReplayError::Interrupted) | PitrError::Interrupted => INTERRUPTED,
        PitrError::Replay(_) => BAD_STREAM,
        PitrError::NeedsIdentity(_) => USAGE,
        PitrError::NoIdentity(_) => LOCAL,
    }
}

fn store(e: &StoreError) -> i32 {
    match e {
        StoreError::Local { .. } | StoreError::Address { .. } | StoreError::Setup(_) => LOCAL,
        StoreError::Remote { .. } | StoreError::NotFound { .. } => PEER,
        StoreError::Damaged { .. } => BAD_STREAM,
    }
}
