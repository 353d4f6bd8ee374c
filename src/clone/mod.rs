//! Clone over TCP: `serve` on the donor, `receive` in the new pod.
//!
//! `serve` authenticates a peer before it starts any source, checks the stream as it passes
//! (the one decoder, through [`crate::stream::check::StreamChecker`]), sends heartbeats while the
//! source is silent and ends with a trailer carrying the producer's exit status, the stream's
//! totals and its digest. `receive` extracts with the one extractor and writes its completion
//! marker only after a good trailer and after every file and directory is fsynced.
//!
//! This module never depends on `store/`.

pub mod codec;
pub mod gate;
pub mod protocol;
pub mod receive;
pub mod serve;
pub mod tls;
pub mod transport;

use thiserror::Error;

pub use protocol::ProtocolError;

/// Written into the target directory once a clone is complete and synced.
pub const COMPLETE_MARKER: &str = ".xbagent-clone-complete";
/// Written into the target directory when a clone starts; removed once it is complete.
pub const PARTIAL_MARKER: &str = ".xbagent-clone-in-progress";

/// What went wrong between the two ends of a clone.
#[derive(Debug, Error)]
pub enum CloneError {
    #[error("cannot reach the donor at {addr} within {waited}: {last}")]
    Unreachable {
        addr: String,
        waited: String,
        last: String,
    },
    #[error("protocol error with {peer}: {source}")]
    Protocol {
        peer: String,
        #[source]
        source: ProtocolError,
    },
    #[error("connection to {peer} failed: {source}")]
    Io {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    /// The donor turned us away before authenticating (too many handshakes in flight).
    #[error("the donor at {peer} stayed too busy to authenticate us: {why}")]
    Busy { peer: String, why: String },
    #[error("the clone stalled: no data and no heartbeat from {peer} for {after}")]
    Stalled { peer: String, after: String },
    #[error("{peer} closed the connection before the end of the clone (no trailer)")]
    Cut { peer: String },
    #[error("the donor reported an error: {0}")]
    Donor(String),
    #[error("the donor's backup command failed with exit status {0}; the clone is not complete")]
    ProducerFailed(i32),
    #[error("the clone does not match the donor's trailer: {0}")]
    TrailerMismatch(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Setup(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// DIR holds something that is not a clone of ours: never deleted.
    #[error("{} is not empty and holds no xbagent clone (no {PARTIAL_MARKER}); refusing to delete its contents — empty it yourself if it is really disposable", dir.display())]
    NotOurs { dir: std::path::PathBuf },
    /// DIR holds a partial clone and the operator asked to keep it.
    #[error("{} holds a partial clone and --keep-partial was given; not starting over", dir.display())]
    KeepPartial { dir: std::path::PathBuf },
    /// The target directory or the extraction into it failed, or the stream was defective.
    #[error(transparent)]
    Extract(#[from] crate::extract::ExtractError),
}
