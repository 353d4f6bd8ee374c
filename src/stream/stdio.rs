//! Standard input and output as plain files: no line buffering or 8 KiB buffers between a
//! multi-megabyte chunk and the descriptor.

use std::fs::File;
use std::os::fd::AsFd;

use crate::stream::error::StreamError;

type Result<T> = std::result::Result<T, StreamError>;

pub fn stdin() -> Result<File> {
    std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(File::from)
        .map_err(|e| StreamError::Read {
            what: "standard input".into(),
            source: e,
        })
}

pub fn stdout() -> Result<File> {
    std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(File::from)
        .map_err(StreamError::WriteStream)
}

/// The input a command reads: a named file, or standard input for `None` / `-`; with the
/// name to use in messages.
pub fn open_input(path: Option<&std::path::Path>) -> Result<(File, String)> {
    match path {
        Some(p) if p != std::path::Path::new("-") => {
            let f = File::open(p).map_err(|e| StreamError::Read {
                what: p.display().to_string(),
                source: e,
            })?;
            Ok((f, p.display().to_string()))
        }
        _ => Ok((stdin()?, "standard input".to_string())),
    }
}
