//! What reading, decoding and checking a stream can hit, for every path through the stream
//! layer. Higher layers (extract, create, clone, store) wrap it; it wraps nothing of theirs.

use std::io;

use thiserror::Error;

use crate::format::{FormatError, LedgerError};

#[derive(Debug, Error)]
pub enum StreamError {
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

    /// The stream could not be written (create, list's output).
    #[error("cannot write the stream: {0}")]
    WriteStream(#[source] io::Error),
}
