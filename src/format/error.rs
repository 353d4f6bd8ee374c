//! Errors of the sans-I/O layer. Each names the stream offset of the chunk at fault and,
//! where it was already read, the chunk's path.

use thiserror::Error;

/// A defect in the bytes of a stream.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    #[error("bad chunk magic at stream offset {offset}: expected \"XBSTCK01\", found {found:?}")]
    BadMagic { offset: u64, found: String },

    #[error("unknown flag bits 0x{flags:02x} in chunk at stream offset {offset}")]
    UnknownFlags { offset: u64, flags: u8 },

    #[error(
        "path length {len} of chunk at stream offset {offset} is above the limit of {max} bytes"
    )]
    PathTooLong { offset: u64, len: u64, max: usize },

    #[error(
        "unknown chunk type 0x{type_byte:02x} (not ignorable) for '{path}' at stream offset {offset}"
    )]
    UnknownType {
        offset: u64,
        type_byte: u8,
        path: String,
    },

    #[error(
        "chunk for '{path}' at stream offset {offset} declares {len} bytes, above the limit of {max} (--max-chunk-size)"
    )]
    ChunkTooLarge {
        offset: u64,
        path: String,
        len: u64,
        max: u64,
    },

    #[error(
        "checksum mismatch for '{path}' in chunk at stream offset {offset}: header says 0x{stored:08x}, data gives 0x{computed:08x}"
    )]
    BadChecksum {
        offset: u64,
        path: String,
        stored: u32,
        computed: u32,
    },

    #[error(
        "stream truncated: input ends at offset {end} inside the {field} of the chunk at stream offset {offset}{}",
        path.as_ref().map(|p| format!(" ('{p}')")).unwrap_or_default()
    )]
    Truncated {
        offset: u64,
        end: u64,
        field: &'static str,
        path: Option<String>,
    },

    #[error(
        "sparse map of '{path}' at stream offset {offset} describes {described} data bytes but the chunk holds {len}"
    )]
    SparseLengthMismatch {
        offset: u64,
        path: String,
        described: u64,
        len: u64,
    },

    #[error("chunk for '{path}' at stream offset {offset} reaches past the largest file offset")]
    OffsetOverflow { offset: u64, path: String },

    #[error(
        "chunk of kind '{kind}' for '{path}' at stream offset {offset} cannot appear in a {dialect} stream"
    )]
    WrongDialect {
        offset: u64,
        path: String,
        kind: &'static str,
        dialect: super::Dialect,
    },

    #[error("rename target of '{path}' at stream offset {offset}: length {len} is above the limit of {max} bytes")]
    RenameTargetTooLong {
        offset: u64,
        path: String,
        len: u64,
        max: usize,
    },

    #[error("unsafe path '{path}' in chunk at stream offset {offset}: {reason}")]
    UnsafePath {
        offset: u64,
        path: String,
        reason: &'static str,
    },
}

impl FormatError {
    /// Stream offset of the chunk at fault.
    pub fn offset(&self) -> u64 {
        match self {
            FormatError::BadMagic { offset, .. }
            | FormatError::UnknownFlags { offset, .. }
            | FormatError::PathTooLong { offset, .. }
            | FormatError::UnknownType { offset, .. }
            | FormatError::ChunkTooLarge { offset, .. }
            | FormatError::BadChecksum { offset, .. }
            | FormatError::Truncated { offset, .. }
            | FormatError::SparseLengthMismatch { offset, .. }
            | FormatError::OffsetOverflow { offset, .. }
            | FormatError::WrongDialect { offset, .. }
            | FormatError::RenameTargetTooLong { offset, .. }
            | FormatError::UnsafePath { offset, .. } => *offset,
        }
    }
}

/// A chunk that is well formed on its own but breaks the rules of the stream as a whole
/// (offsets, order, completeness), found by the [`super::Ledger`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LedgerError {
    #[error(
        "out-of-order chunk for '{path}' at stream offset {offset}: it starts at file offset {got}, expected {expected}{}",
        if got > expected { " (a gap)" } else { " (an overlap)" }
    )]
    OutOfOrder {
        offset: u64,
        path: String,
        got: u64,
        expected: u64,
    },

    #[error(
        "chunk for '{path}' at stream offset {offset} comes after that file's end chunk (data after E)"
    )]
    AfterEnd { offset: u64, path: String },

    #[error("rename of '{path}' at stream offset {offset} to '{to}': {reason}")]
    BadRename {
        offset: u64,
        path: String,
        to: String,
        reason: &'static str,
    },

    #[error(
        "{op} of '{path}' at stream offset {offset} touches a file that is still open (no end chunk yet): '{open}'"
    )]
    TouchesOpenFile {
        offset: u64,
        op: &'static str,
        path: String,
        open: String,
    },

    #[error("stream ended with {} file(s) lacking their end chunk: {}", paths.len(), list_some(paths))]
    Incomplete { paths: Vec<String> },
}

fn list_some(paths: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut s = paths
        .iter()
        .take(SHOWN)
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(", ");
    if paths.len() > SHOWN {
        s.push_str(&format!(" and {} more", paths.len() - SHOWN));
    }
    s
}
