//! The decoded form of one xbstream chunk.

use bytes::Bytes;
use std::fmt;

/// Which producer family's meaning of the `S` chunk type applies.
///
/// Percona's `S` is a sparse data chunk; MariaDB's `S` is a seek. Their layouts differ, so a
/// reader must know or detect which one it is reading (see `format-spec/xbstream.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// Decide from the bytes: MariaDB-only chunk kinds (`D`, `R`, the REWRITE flag) or the
    /// position of the next magic after the first `S` chunk settle it.
    #[default]
    Auto,
    Percona,
    Mariadb,
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dialect::Auto => "auto",
            Dialect::Percona => "percona",
            Dialect::Mariadb => "mariadb",
        })
    }
}

/// One entry of a Percona sparse map: leave `skip` bytes as a hole, then write `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseEntry {
    pub skip: u32,
    pub len: u32,
}

/// What a chunk carries, after its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkBody {
    /// `P`: `data` belongs at `offset` in the file. CRC already verified.
    Payload { offset: u64, data: Bytes },
    /// Percona `S`: starting at `offset`, apply `map` (holes and data runs) with `data` holding
    /// the data runs back to back. CRC already verified; `Σ len == data.len()` checked.
    Sparse {
        offset: u64,
        map: Vec<SparseEntry>,
        data: Bytes,
    },
    /// MariaDB `S`: the next payload of this path is written at `offset`.
    Seek { offset: u64 },
    /// `E`: all data of this path has been sent.
    Eof,
    /// MariaDB `D`: remove the path (recursively).
    Remove,
    /// MariaDB `R`: rename the path to `to`.
    Rename { to: Bytes },
    /// An unknown chunk type with the IGNORABLE flag: structurally valid (CRC checked), skipped.
    Ignored {
        type_byte: u8,
        offset: u64,
        data: Bytes,
    },
}

/// One decoded chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of the chunk's first magic byte in the stream.
    pub stream_offset: u64,
    /// Total encoded length of the chunk (header, map and payload).
    pub encoded_len: u64,
    pub flags: u8,
    /// Raw path bytes exactly as in the stream (not yet validated as a safe relative path).
    pub path: Bytes,
    pub body: ChunkBody,
}

impl Chunk {
    /// The path for messages: lossy UTF-8, control characters escaped.
    pub fn display_path(&self) -> String {
        display_path(&self.path)
    }

    /// Number of file bytes this chunk carries (payload only, not holes).
    pub fn data_len(&self) -> u64 {
        match &self.body {
            ChunkBody::Payload { data, .. } | ChunkBody::Sparse { data, .. } => data.len() as u64,
            _ => 0,
        }
    }

    pub fn is_rewrite(&self) -> bool {
        self.flags & super::FLAG_REWRITE != 0
    }
}

/// Render raw path bytes for an operator: lossy UTF-8 with control characters escaped, so a
/// hostile path cannot rewrite the terminal.
pub fn display_path(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
