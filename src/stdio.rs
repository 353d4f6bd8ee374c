//! Standard input and output as plain files: no line buffering or 8 KiB buffers between a
//! multi-megabyte chunk and the descriptor.

use std::fs::File;
use std::os::fd::AsFd;

use crate::error::{Error, Result};

pub fn stdin() -> Result<File> {
    std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(File::from)
        .map_err(|e| Error::Read {
            what: "standard input".into(),
            source: e,
        })
}

pub fn stdout() -> Result<File> {
    std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(File::from)
        .map_err(Error::WriteStream)
}
