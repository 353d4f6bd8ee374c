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
//! Each call walks the chunk at the head of the buffer through its states, one function
//! each, until one halts for more bytes or a malformed field:
//!
//! ```text
//!  prefix ──► path ──► kind ──┬─► (E, D: nothing more)       ──► take
//!  magic,     present, type,  ├─► seek offset (MariaDB S)    ──►
//!  flags,     safe     dialect├─► rename: target length, target
//!  path len                   ├─► payload: header, data, CRC
//!                             └─► sparse: header, map, data, CRC
//! ```
//!
//! The decoder never allocates by a length read from the input: it only inspects bytes that
//! are already in the buffer, and reports through [`Decoder::bytes_needed`] how many bytes
//! the current chunk needs, so the caller can read (and grow its buffer) as bytes arrive.
//! Every declared length is checked against a cap before it is trusted. Nothing is consumed
//! until the whole chunk is present and checked.

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

    /// One pass of the state machine over the buffer: check the chunk at its head as far as
    /// its bytes have arrived, then take it out if it is whole.
    fn step(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Step, FormatError> {
        if buf.is_empty() {
            return Ok(Step::Need(PREFIX_LEN));
        }
        match self.check(buf, eof) {
            Ok(checked) => Ok(Step::Chunk(self.take(buf, checked))),
            Err(Halt::Need(n)) => Ok(Step::Need(n)),
            Err(Halt::Bad(e)) => Err(e),
        }
    }

    /// The states before a byte is consumed, in order: prefix, path, type, then the fields
    /// of that type. Each returns what it learnt or halts: more bytes needed, or malformed.
    fn check(&mut self, buf: &[u8], eof: bool) -> Result<Checked, Halt> {
        let head = self.prefix(buf, eof)?;
        self.path(&head)?;
        let kind = self.kind(&head)?;
        let total = match kind {
            Kind::Eof | Kind::Remove => head.pend,
            Kind::Seek => head.fixed(8, "seek offset")?,
            Kind::Rename => self.rename(&head)?,
            Kind::Payload | Kind::Ignored(_) => self.payload(&head)?,
            Kind::Sparse => self.sparse(&head)?,
        };
        // Every kind has checked its bytes are present; `take` relies on it.
        head.fixed(total - head.pend, "chunk")?;
        Ok(Checked {
            at: head.at,
            flags: head.flags,
            kind,
            pend: head.pend,
            total,
        })
    }

    /// State 1, the prefix: magic, flags, type, path length.
    fn prefix<'a>(&self, buf: &'a [u8], eof: bool) -> Result<Head<'a>, Halt> {
        let at = self.offset;
        // Check the magic on whatever part of it has arrived, so garbage fails at once.
        let m = buf.len().min(MAGIC.len());
        if buf[..m] != MAGIC[..m] {
            return Err(Halt::Bad(FormatError::BadMagic {
                offset: at,
                found: String::from_utf8_lossy(&buf[..m])
                    .escape_default()
                    .to_string(),
            }));
        }
        let mut head = Head {
            buf,
            at,
            eof,
            flags: 0,
            ty: 0,
            pend: PREFIX_LEN,
        };
        if buf.len() < PREFIX_LEN {
            return Err(head.short(PREFIX_LEN, "chunk prefix", false));
        }
        head.flags = buf[8];
        head.ty = buf[9];
        let path_len = le_u32(&buf[10..14]) as u64;
        if head.flags & !KNOWN_FLAGS != 0 {
            return Err(Halt::Bad(FormatError::UnknownFlags {
                offset: at,
                flags: head.flags,
            }));
        }
        if path_len > MAX_PATH_LEN as u64 {
            return Err(Halt::Bad(FormatError::PathTooLong {
                offset: at,
                len: path_len,
                max: MAX_PATH_LEN,
            }));
        }
        head.pend = PREFIX_LEN + path_len as usize;
        Ok(head)
    }

    /// State 2, the path: present, safe, and what its flags say about the dialect.
    fn path(&mut self, head: &Head<'_>) -> Result<(), Halt> {
        if head.buf.len() < head.pend {
            return Err(head.short(head.pend, "path", false));
        }
        if self.opts.check_paths {
            check_path(head.at, head.path())?;
        }
        if head.flags & FLAG_REWRITE != 0 {
            self.settle(Dialect::Mariadb, head.at, head.path(), "REWRITE flag")?;
        }
        Ok(())
    }

    /// State 3, the type byte: which kind of chunk this is, in the dialect of the stream.
    fn kind(&mut self, head: &Head<'_>) -> Result<Kind, Halt> {
        let (at, path) = (head.at, head.path());
        Ok(match head.ty {
            TYPE_PAYLOAD => Kind::Payload,
            TYPE_EOF => Kind::Eof,
            TYPE_REMOVE => {
                self.settle(Dialect::Mariadb, at, path, "D (remove)")?;
                Kind::Remove
            }
            TYPE_RENAME => {
                self.settle(Dialect::Mariadb, at, path, "R (rename)")?;
                Kind::Rename
            }
            TYPE_SPARSE_OR_SEEK => {
                let d = match self.dialect {
                    Dialect::Auto => Self::s_dialect(head)?,
                    known => known,
                };
                self.settle(d, at, path, "S")?;
                match d {
                    Dialect::Mariadb => Kind::Seek,
                    _ => Kind::Sparse,
                }
            }
            ty if head.flags & FLAG_IGNORABLE != 0 => Kind::Ignored(ty),
            ty => {
                return Err(Halt::Bad(FormatError::UnknownType {
                    offset: at,
                    type_byte: ty,
                    path: display_path(path),
                }))
            }
        })
    }

    /// The first `S` chunk of an `Auto` stream: MariaDB's seek or Percona's sparse chunk.
    ///
    /// A MariaDB seek is followed by the next chunk's magic (or the end of input) right after
    /// its 8-byte offset; at that place a Percona sparse chunk holds the high half of its
    /// payload length, which is never "XBST" under any cap.
    fn s_dialect(head: &Head<'_>) -> Result<Dialect, Halt> {
        let have = head.buf.len();
        let seek_end = head.pend + 8;
        let after = &head.buf[seek_end.min(have)..have.min(seek_end + MAGIC.len())];
        let magic_so_far = after == &MAGIC[..after.len()];
        if after.len() == MAGIC.len() || (head.eof && !after.is_empty()) {
            // Whole magic seen, or the input ends inside what can only be the start of the
            // next chunk's magic (the next chunk is then truncated).
            Ok(if magic_so_far {
                Dialect::Mariadb
            } else {
                Dialect::Percona
            })
        } else if !after.is_empty() && !magic_so_far {
            Ok(Dialect::Percona)
        } else if head.eof && have == seek_end {
            Ok(Dialect::Mariadb)
        } else {
            Err(head.short(seek_end + MAGIC.len(), "S chunk header", true))
        }
    }

    /// State 4 of an `R` chunk: the target's length, then the target, checked like a path.
    fn rename(&self, head: &Head<'_>) -> Result<usize, Halt> {
        let pend = head.pend;
        head.fixed(4, "rename target length")?;
        let to_len = le_u32(&head.buf[pend..pend + 4]) as u64;
        if to_len > MAX_PATH_LEN as u64 {
            return Err(Halt::Bad(FormatError::RenameTargetTooLong {
                offset: head.at,
                path: display_path(head.path()),
                len: to_len,
                max: MAX_PATH_LEN,
            }));
        }
        let total = head.fixed(4 + to_len as usize, "rename target")?;
        if self.opts.check_paths {
            check_path(head.at, &head.buf[pend + 4..total])?;
        }
        Ok(total)
    }

    /// State 4 of a `P` (or ignorable) chunk: length, offset and CRC, then the payload.
    fn payload(&self, head: &Head<'_>) -> Result<usize, Halt> {
        let (pend, buf) = (head.pend, head.buf);
        let hdr = head.fixed(20, "payload header")?;
        let len = le_u64(&buf[pend..]);
        let off = le_u64(&buf[pend + 8..]);
        self.check_len(head.at, head.path(), len)?;
        if off.checked_add(len).is_none() {
            return Err(head.overflow());
        }
        let total = head.fixed(20 + len as usize, "payload")?;
        check_crc(
            head.at,
            head.path(),
            le_u32(&buf[pend + 16..]),
            &buf[hdr..total],
        )?;
        Ok(total)
    }

    /// State 4 of a Percona `S` chunk: map size, length, offset and CRC, then the map and
    /// the payload, which must agree.
    fn sparse(&self, head: &Head<'_>) -> Result<usize, Halt> {
        let (pend, buf) = (head.pend, head.buf);
        let hdr = head.fixed(24, "sparse header")?;
        let count = le_u32(&buf[pend..]) as u64;
        let len = le_u64(&buf[pend + 4..]);
        let off = le_u64(&buf[pend + 12..]);
        let map_bytes = count * 8;
        let body = len.saturating_add(map_bytes);
        self.check_len(head.at, head.path(), body)?;
        let total = head.fixed(24 + (map_bytes + len) as usize, "sparse map and payload")?;
        check_crc(
            head.at,
            head.path(),
            le_u32(&buf[pend + 20..]),
            &buf[hdr..total],
        )?;
        let map_end = hdr + map_bytes as usize;
        let mut described: u64 = 0;
        let mut extent: u64 = 0;
        for e in buf[hdr..map_end].chunks_exact(8) {
            described += le_u32(&e[4..]) as u64;
            extent += le_u32(&e[..4]) as u64 + le_u32(&e[4..]) as u64;
        }
        if described != len {
            return Err(Halt::Bad(FormatError::SparseLengthMismatch {
                offset: head.at,
                path: display_path(head.path()),
                described,
                len,
            }));
        }
        if off.checked_add(extent).is_none() {
            return Err(head.overflow());
        }
        Ok(total)
    }

    /// The last state: the whole chunk is present and checked; take it out of the buffer
    /// without copying its data.
    fn take(&mut self, buf: &mut BytesMut, c: Checked) -> Chunk {
        let mut raw = buf.split_to(c.total).freeze();
        self.offset += c.total as u64;
        // The path is copied out: a slice would keep the whole read buffer (up to a chunk)
        // alive for as long as anyone holds the path, e.g. a ledger of every file.
        let path = Bytes::copy_from_slice(&raw[PREFIX_LEN..c.pend]);
        raw.advance(c.pend);
        Chunk {
            stream_offset: c.at,
            encoded_len: c.total as u64,
            flags: c.flags,
            path,
            body: body(c.kind, raw),
        }
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

/// A path in the stream (a chunk's, or a rename's target) must stay inside the target.
fn check_path(at: u64, raw: &[u8]) -> Result<(), FormatError> {
    path::check(raw).map_err(|reason| FormatError::UnsafePath {
        offset: at,
        path: display_path(raw),
        reason,
    })
}

/// The body of a whole, checked chunk, from the bytes after its path.
fn body(kind: Kind, mut raw: Bytes) -> ChunkBody {
    match kind {
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
    }
}

/// Why a state stops: the chunk needs more bytes than the buffer holds, or it is malformed.
enum Halt {
    Need(usize),
    Bad(FormatError),
}

impl From<FormatError> for Halt {
    fn from(e: FormatError) -> Self {
        Halt::Bad(e)
    }
}

/// The chunk at the head of the buffer, as far as its prefix has been read.
struct Head<'a> {
    /// The whole buffer, the chunk at its start.
    buf: &'a [u8],
    /// Stream offset of the chunk.
    at: u64,
    /// No more bytes will come: a short chunk is truncated.
    eof: bool,
    flags: u8,
    ty: u8,
    /// End of the path: where the type's own fields start.
    pend: usize,
}

impl Head<'_> {
    fn path(&self) -> &[u8] {
        &self.buf[PREFIX_LEN..self.pend]
    }

    /// `len` bytes after the path are present: their end; or halt for them.
    fn fixed(&self, len: usize, field: &'static str) -> Result<usize, Halt> {
        let end = self.pend + len;
        if self.buf.len() < end {
            return Err(self.short(end, field, true));
        }
        Ok(end)
    }

    /// The chunk needs `n` bytes and the buffer holds fewer: wait for them, or, at the end of
    /// input, `field` is truncated (named with the path once the path has been read).
    fn short(&self, n: usize, field: &'static str, with_path: bool) -> Halt {
        if !self.eof {
            return Halt::Need(n);
        }
        Halt::Bad(FormatError::Truncated {
            offset: self.at,
            end: self.at + self.buf.len() as u64,
            field,
            path: with_path.then(|| display_path(self.path())),
        })
    }

    fn overflow(&self) -> Halt {
        Halt::Bad(FormatError::OffsetOverflow {
            offset: self.at,
            path: display_path(self.path()),
        })
    }
}

/// A whole chunk at the head of the buffer, checked: what [`Decoder::take`] needs.
#[derive(Clone, Copy)]
struct Checked {
    at: u64,
    flags: u8,
    kind: Kind,
    pend: usize,
    total: usize,
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
