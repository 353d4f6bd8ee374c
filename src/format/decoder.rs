//! The xbstream decoder: a state machine over a byte buffer, in the manner of
//! `tokio_util::codec::Decoder`.
//!
//! ```text
//!  decode(buf) ──► buf empty ───────────────► Ok(None)        (need bytes, or clean end)
//!             ├─► prefix/path/fields short ─► Ok(None)        (need bytes; Truncated at EOF)
//!             ├─► a field is malformed ──────► Err(..)         (offset and path named)
//!             └─► whole chunk present ───────► CRC check ─► Ok(Some(chunk)), bytes consumed
//! ```
//!
//! The decoder never allocates by a length read from the input: it only inspects bytes that
//! are already in the buffer, and reports through [`Decoder::bytes_needed`] how many bytes
//! the current chunk needs, so the caller can read (and grow its buffer) as bytes arrive.
//! Every declared length is checked against a cap before it is trusted.

use bytes::{Buf, Bytes, BytesMut};

use super::chunk::{display_path, Chunk, ChunkBody, Dialect, SparseEntry};
use super::error::FormatError;
use super::{
    path, DEFAULT_MAX_CHUNK_SIZE, FLAG_IGNORABLE, FLAG_REWRITE, KNOWN_FLAGS, MAGIC, MAX_PATH_LEN,
    PREFIX_LEN, TYPE_EOF, TYPE_PAYLOAD, TYPE_REMOVE, TYPE_RENAME, TYPE_SPARSE_OR_SEEK,
};

/// Decoder settings.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    pub dialect: Dialect,
    /// Cap on a chunk's declared body (payload plus sparse map), in bytes.
    pub max_chunk_size: u64,
    /// Refuse paths that would escape a target directory (see [`super::path`]). On by default;
    /// every consumer that touches a disk relies on it.
    pub check_paths: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            dialect: Dialect::Auto,
            max_chunk_size: DEFAULT_MAX_CHUNK_SIZE,
            check_paths: true,
        }
    }
}

/// Sans-I/O xbstream decoder. Feed it a buffer, get whole chunks back.
#[derive(Debug)]
pub struct Decoder {
    opts: DecodeOptions,
    dialect: Dialect,
    /// Stream offset of the first byte of the caller's buffer.
    offset: u64,
    /// Bytes the current chunk needs in total, as far as known from what has arrived.
    need: usize,
}

enum Step {
    Need(usize),
    Chunk(Chunk),
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}
fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

impl Decoder {
    pub fn new(opts: DecodeOptions) -> Self {
        Decoder {
            dialect: opts.dialect,
            opts,
            offset: 0,
            need: PREFIX_LEN,
        }
    }

    /// The dialect in force: the configured one, or what `Auto` has settled on so far.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Stream offset of the next undecoded byte.
    pub fn stream_offset(&self) -> u64 {
        self.offset
    }

    /// How many bytes the chunk at the head of the buffer needs in total, as far as the bytes
    /// seen so far tell. Callers read until the buffer holds this many, then decode again.
    pub fn bytes_needed(&self) -> usize {
        self.need
    }

    /// Decode one chunk if the buffer holds a whole one. `Ok(None)`: more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, FormatError> {
        match self.step(buf, false)? {
            Step::Need(n) => {
                self.need = n;
                Ok(None)
            }
            Step::Chunk(c) => {
                self.need = PREFIX_LEN;
                Ok(Some(c))
            }
        }
    }

    /// Decode at end of input: `Ok(None)` only if the buffer is empty (a clean end at a chunk
    /// boundary); a partial chunk is [`FormatError::Truncated`].
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, FormatError> {
        match self.step(buf, true)? {
            Step::Need(_) => Ok(None),
            Step::Chunk(c) => {
                self.need = PREFIX_LEN;
                Ok(Some(c))
            }
        }
    }

    fn step(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Step, FormatError> {
        let at = self.offset;
        let have = buf.len();
        if have == 0 {
            return Ok(Step::Need(PREFIX_LEN));
        }
        // Check the magic on whatever part of it has arrived, so garbage fails at once.
        let m = have.min(MAGIC.len());
        if buf[..m] != MAGIC[..m] {
            return Err(FormatError::BadMagic {
                offset: at,
                found: String::from_utf8_lossy(&buf[..m])
                    .escape_default()
                    .to_string(),
            });
        }
        let truncated = |field: &'static str, path: Option<&[u8]>| FormatError::Truncated {
            offset: at,
            end: at + have as u64,
            field,
            path: path.map(display_path),
        };
        if have < PREFIX_LEN {
            return if eof {
                Err(truncated("chunk prefix", None))
            } else {
                Ok(Step::Need(PREFIX_LEN))
            };
        }
        let flags = buf[8];
        let ty = buf[9];
        let path_len = le_u32(&buf[10..14]) as u64;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FormatError::UnknownFlags { offset: at, flags });
        }
        if path_len > MAX_PATH_LEN as u64 {
            return Err(FormatError::PathTooLong {
                offset: at,
                len: path_len,
                max: MAX_PATH_LEN,
            });
        }
        let pend = PREFIX_LEN + path_len as usize;
        if have < pend {
            return if eof {
                Err(truncated("path", None))
            } else {
                Ok(Step::Need(pend))
            };
        }
        let raw_path = &buf[PREFIX_LEN..pend];
        let spath = || display_path(raw_path);
        if self.opts.check_paths {
            if let Err(reason) = path::check(raw_path) {
                return Err(FormatError::UnsafePath {
                    offset: at,
                    path: spath(),
                    reason,
                });
            }
        }
        if flags & FLAG_REWRITE != 0 {
            self.settle(Dialect::Mariadb, at, raw_path, "REWRITE flag")?;
        }

        // Each arm returns the total length of the chunk and a builder for its body, or asks
        // for more bytes. Nothing is consumed until the whole chunk is present and checked.
        let need_or_trunc = |n: usize, field: &'static str| -> Result<Step, FormatError> {
            if eof {
                Err(truncated(field, Some(raw_path)))
            } else {
                Ok(Step::Need(n))
            }
        };

        let kind = match ty {
            TYPE_PAYLOAD => Kind::Payload,
            TYPE_EOF => Kind::Eof,
            TYPE_REMOVE => {
                self.settle(Dialect::Mariadb, at, raw_path, "D (remove)")?;
                Kind::Remove
            }
            TYPE_RENAME => {
                self.settle(Dialect::Mariadb, at, raw_path, "R (rename)")?;
                Kind::Rename
            }
            TYPE_SPARSE_OR_SEEK => match self.dialect {
                Dialect::Percona => Kind::Sparse,
                Dialect::Mariadb => Kind::Seek,
                Dialect::Auto => {
                    // A MariaDB seek is followed by the next chunk's magic (or the end of input)
                    // right after its 8-byte offset; at that place a Percona sparse chunk holds
                    // the high half of its payload length, which is never "XBST" under any cap.
                    let seek_end = pend + 8;
                    let after = &buf[seek_end.min(have)..have.min(seek_end + MAGIC.len())];
                    let magic_so_far = after == &MAGIC[..after.len()];
                    let d = if after.len() == MAGIC.len() || (eof && !after.is_empty()) {
                        // Whole magic seen, or the input ends inside what can only be the
                        // start of the next chunk's magic (the next chunk is then truncated).
                        if magic_so_far {
                            Dialect::Mariadb
                        } else {
                            Dialect::Percona
                        }
                    } else if !after.is_empty() && !magic_so_far {
                        Dialect::Percona
                    } else if eof && have == seek_end {
                        Dialect::Mariadb
                    } else {
                        return need_or_trunc(seek_end + MAGIC.len(), "S chunk header");
                    };
                    self.settle(d, at, raw_path, "S")?;
                    if d == Dialect::Mariadb {
                        Kind::Seek
                    } else {
                        Kind::Sparse
                    }
                }
            },
            _ if flags & FLAG_IGNORABLE != 0 => Kind::Ignored(ty),
            _ => {
                return Err(FormatError::UnknownType {
                    offset: at,
                    type_byte: ty,
                    path: spath(),
                })
            }
        };

        let total: usize;
        match kind {
            Kind::Eof | Kind::Remove => total = pend,
            Kind::Seek => {
                total = pend + 8;
                if have < total {
                    return need_or_trunc(total, "seek offset");
                }
            }
            Kind::Rename => {
                if have < pend + 4 {
                    return need_or_trunc(pend + 4, "rename target length");
                }
                let to_len = le_u32(&buf[pend..pend + 4]) as u64;
                if to_len > MAX_PATH_LEN as u64 {
                    return Err(FormatError::RenameTargetTooLong {
                        offset: at,
                        path: spath(),
                        len: to_len,
                        max: MAX_PATH_LEN,
                    });
                }
                total = pend + 4 + to_len as usize;
                if have < total {
                    return need_or_trunc(total, "rename target");
                }
                if self.opts.check_paths {
                    if let Err(reason) = path::check(&buf[pend + 4..total]) {
                        return Err(FormatError::UnsafePath {
                            offset: at,
                            path: display_path(&buf[pend + 4..total]),
                            reason,
                        });
                    }
                }
            }
            Kind::Payload | Kind::Ignored(_) => {
                let hdr = pend + 20;
                if have < hdr {
                    return need_or_trunc(hdr, "payload header");
                }
                let len = le_u64(&buf[pend..]);
                let off = le_u64(&buf[pend + 8..]);
                self.check_len(at, raw_path, len)?;
                if off.checked_add(len).is_none() {
                    return Err(FormatError::OffsetOverflow {
                        offset: at,
                        path: spath(),
                    });
                }
                total = hdr + len as usize;
                if have < total {
                    return need_or_trunc(total, "payload");
                }
                check_crc(at, raw_path, le_u32(&buf[pend + 16..]), &buf[hdr..total])?;
            }
            Kind::Sparse => {
                let hdr = pend + 24;
                if have < hdr {
                    return need_or_trunc(hdr, "sparse header");
                }
                let count = le_u32(&buf[pend..]) as u64;
                let len = le_u64(&buf[pend + 4..]);
                let off = le_u64(&buf[pend + 12..]);
                let map_bytes = count * 8;
                let body = len.checked_add(map_bytes);
                match body {
                    Some(b) => self.check_len(at, raw_path, b)?,
                    None => self.check_len(at, raw_path, u64::MAX)?,
                }
                total = hdr + (map_bytes + len) as usize;
                if have < total {
                    return need_or_trunc(total, "sparse map and payload");
                }
                check_crc(at, raw_path, le_u32(&buf[pend + 20..]), &buf[hdr..total])?;
                let map_end = hdr + map_bytes as usize;
                let mut described: u64 = 0;
                let mut extent: u64 = 0;
                for e in buf[hdr..map_end].chunks_exact(8) {
                    described += le_u32(&e[4..]) as u64;
                    extent += le_u32(&e[..4]) as u64 + le_u32(&e[4..]) as u64;
                }
                if described != len {
                    return Err(FormatError::SparseLengthMismatch {
                        offset: at,
                        path: spath(),
                        described,
                        len,
                    });
                }
                if off.checked_add(extent).is_none() {
                    return Err(FormatError::OffsetOverflow {
                        offset: at,
                        path: spath(),
                    });
                }
            }
        }
        if have < total {
            return need_or_trunc(total, "chunk");
        }

        // The whole chunk is present and checked: take it out of the buffer without copying.
        let mut raw = buf.split_to(total).freeze();
        self.offset += total as u64;
        // The path is copied out: a slice would keep the whole read buffer (up to a chunk)
        // alive for as long as anyone holds the path, e.g. a ledger of every file.
        let path = Bytes::copy_from_slice(&raw[PREFIX_LEN..pend]);
        raw.advance(pend);
        let body = match kind {
            Kind::Eof => ChunkBody::Eof,
            Kind::Remove => ChunkBody::Remove,
            Kind::Seek => ChunkBody::Seek {
                offset: raw.get_u64_le(),
            },
            Kind::Rename => {
                raw.advance(4);
                ChunkBody::Rename {
                    to: Bytes::copy_from_slice(&raw),
                }
            }
            Kind::Payload | Kind::Ignored(_) => {
                let _len = raw.get_u64_le();
                let offset = raw.get_u64_le();
                raw.advance(4);
                if let Kind::Ignored(type_byte) = kind {
                    ChunkBody::Ignored {
                        type_byte,
                        offset,
                        data: raw,
                    }
                } else {
                    ChunkBody::Payload { offset, data: raw }
                }
            }
            Kind::Sparse => {
                let count = raw.get_u32_le() as usize;
                let _len = raw.get_u64_le();
                let offset = raw.get_u64_le();
                raw.advance(4);
                let map = (0..count)
                    .map(|_| SparseEntry {
                        skip: raw.get_u32_le(),
                        len: raw.get_u32_le(),
                    })
                    .collect();
                ChunkBody::Sparse {
                    offset,
                    map,
                    data: raw,
                }
            }
        };
        Ok(Step::Chunk(Chunk {
            stream_offset: at,
            encoded_len: total as u64,
            flags,
            path,
            body,
        }))
    }

    fn check_len(&self, at: u64, raw_path: &[u8], len: u64) -> Result<(), FormatError> {
        if len > self.opts.max_chunk_size {
            return Err(FormatError::ChunkTooLarge {
                offset: at,
                path: display_path(raw_path),
                len,
                max: self.opts.max_chunk_size,
            });
        }
        Ok(())
    }

    /// Record what the bytes say about the dialect; a contradiction is an error.
    fn settle(
        &mut self,
        d: Dialect,
        at: u64,
        raw_path: &[u8],
        kind: &'static str,
    ) -> Result<(), FormatError> {
        match self.dialect {
            Dialect::Auto => {
                self.dialect = d;
                Ok(())
            }
            cur if cur == d => Ok(()),
            cur => Err(FormatError::WrongDialect {
                offset: at,
                path: display_path(raw_path),
                kind,
                dialect: cur,
            }),
        }
    }
}

/// The stored CRC-32 must match the bytes it covers before any of them is used.
fn check_crc(at: u64, raw_path: &[u8], stored: u32, covered: &[u8]) -> Result<(), FormatError> {
    let computed = crc32fast::hash(covered);
    if stored != computed {
        return Err(FormatError::BadChecksum {
            offset: at,
            path: display_path(raw_path),
            stored,
            computed,
        });
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    Payload,
    Eof,
    Sparse,
    Seek,
    Remove,
    Rename,
    Ignored(u8),
}
