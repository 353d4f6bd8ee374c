//! Extraction: the decoded stream written into a directory by [`DirWriter`].
//!
//! Guarantees (each enforced where noted):
//! - nothing is created, changed or removed outside the target directory
//!   ([`crate::format::path`] for the bytes, [`dir`] for symlinks on disk);
//! - an existing file is never overwritten without `--force` (REWRITE chunks excepted);
//! - a stream that ends with files lacking their end chunk is an error that lists them
//!   ([`crate::format::Ledger`]);
//! - any error stops the run and is returned with the path and stream offset.

pub mod dir;
mod direct;
pub mod error;
mod innodb;
pub mod target;
mod writer;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use dir::TargetDir;
pub use error::ExtractError;
pub use writer::{DirWriter, WriterOptions};

use crate::format::{DecodeOptions, Ledger};
use crate::progress::Progress;
use crate::stream::sink::{self, StreamTotals};
use error::Result;

/// Settings of an extraction.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    pub dir: PathBuf,
    pub decode: DecodeOptions,
    pub writer: WriterOptions,
}

impl ExtractOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ExtractOptions {
            dir: dir.into(),
            decode: DecodeOptions::default(),
            writer: WriterOptions::default(),
        }
    }
}

/// Extract a stream read from `input` (named `what` in messages).
pub fn extract_reader<R: Read>(
    input: R,
    what: &str,
    opts: &ExtractOptions,
    progress: &Progress,
) -> Result<(Ledger, StreamTotals)> {
    let target = TargetDir::open(&opts.dir)?;
    let mut writer = DirWriter::new(&target, &opts.writer)?;
    sink::run(input, what, opts.decode, &mut writer, progress)
}

/// Extract the stream in a file, or standard input for `None` / `-`.
pub fn extract_path(
    input: Option<&Path>,
    opts: &ExtractOptions,
    progress: &Progress,
) -> Result<(Ledger, StreamTotals)> {
    let (f, what) = crate::stream::stdio::open_input(input)?;
    extract_reader(f, &what, opts, progress)
}
