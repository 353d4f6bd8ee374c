//! What `create` can hit: a source file it cannot read, or a stream it cannot write.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

pub type Result<T, E = CreateError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum CreateError {
    /// A source file or directory given to `create` is unusable.
    #[error("cannot read '{}': {reason}", path.display())]
    Source { path: PathBuf, reason: String },

    /// The stream could not be written.
    #[error("cannot write the stream: {0}")]
    WriteStream(#[source] io::Error),
}
