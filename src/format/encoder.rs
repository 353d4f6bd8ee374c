//! The xbstream encoder: appends chunk bytes to a buffer. Writes flags 0 and only the chunk
//! kinds the reference readers know, unless a caller builds other chunks on purpose (tests).

use super::chunk::{Chunk, ChunkBody, SparseEntry};
use super::{MAGIC, TYPE_EOF, TYPE_PAYLOAD, TYPE_REMOVE, TYPE_RENAME, TYPE_SPARSE_OR_SEEK};

/// The fixed fields of a chunk header, for writers that send the payload bytes separately
/// (so a 10 MiB payload is never copied into a header buffer).
#[derive(Debug, Clone, Copy)]
pub enum ChunkHeader<'a> {
    Payload {
        path: &'a [u8],
        flags: u8,
        offset: u64,
        len: u64,
        crc: u32,
    },
    Sparse {
        path: &'a [u8],
        flags: u8,
        offset: u64,
        map: &'a [SparseEntry],
        len: u64,
        crc: u32,
    },
    Seek {
        path: &'a [u8],
        flags: u8,
        offset: u64,
    },
    Eof {
        path: &'a [u8],
        flags: u8,
    },
    Remove {
        path: &'a [u8],
        flags: u8,
    },
    Rename {
        path: &'a [u8],
        flags: u8,
        to: &'a [u8],
    },
    /// An arbitrary type byte laid out like a payload chunk (what readers assume for
    /// IGNORABLE chunks of unknown type).
    Other {
        type_byte: u8,
        path: &'a [u8],
        flags: u8,
        offset: u64,
        len: u64,
        crc: u32,
    },
}

fn prefix(out: &mut Vec<u8>, flags: u8, ty: u8, path: &[u8]) {
    out.extend_from_slice(MAGIC);
    out.push(flags);
    out.push(ty);
    out.extend_from_slice(&(path.len() as u32).to_le_bytes());
    out.extend_from_slice(path);
}

/// Append the header (for sparse chunks: header and map) of a chunk; the payload follows.
pub fn encode_header_into(h: &ChunkHeader<'_>, out: &mut Vec<u8>) {
    match *h {
        ChunkHeader::Payload {
            path,
            flags,
            offset,
            len,
            crc,
        } => payload_like(out, TYPE_PAYLOAD, path, flags, offset, len, crc),
        ChunkHeader::Other {
            type_byte,
            path,
            flags,
            offset,
            len,
            crc,
        } => payload_like(out, type_byte, path, flags, offset, len, crc),
        ChunkHeader::Sparse {
            path,
            flags,
            offset,
            map,
            len,
            crc,
        } => {
            prefix(out, flags, TYPE_SPARSE_OR_SEEK, path);
            out.extend_from_slice(&(map.len() as u32).to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&crc.to_le_bytes());
            for e in map {
                out.extend_from_slice(&e.skip.to_le_bytes());
                out.extend_from_slice(&e.len.to_le_bytes());
            }
        }
        ChunkHeader::Seek {
            path,
            flags,
            offset,
        } => {
            prefix(out, flags, TYPE_SPARSE_OR_SEEK, path);
            out.extend_from_slice(&offset.to_le_bytes());
        }
        ChunkHeader::Eof { path, flags } => prefix(out, flags, TYPE_EOF, path),
        ChunkHeader::Remove { path, flags } => prefix(out, flags, TYPE_REMOVE, path),
        ChunkHeader::Rename { path, flags, to } => {
            prefix(out, flags, TYPE_RENAME, path);
            out.extend_from_slice(&(to.len() as u32).to_le_bytes());
            out.extend_from_slice(to);
        }
    }
}

fn payload_like(
    out: &mut Vec<u8>,
    ty: u8,
    path: &[u8],
    flags: u8,
    offset: u64,
    len: u64,
    crc: u32,
) {
    prefix(out, flags, ty, path);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
}

/// CRC-32 of a sparse chunk: over the serialized map, then the payload.
pub fn sparse_crc(map: &[SparseEntry], data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for e in map {
        h.update(&e.skip.to_le_bytes());
        h.update(&e.len.to_le_bytes());
    }
    h.update(data);
    h.finalize()
}

/// Append a whole `P` chunk.
pub fn encode_payload(out: &mut Vec<u8>, path: &[u8], offset: u64, data: &[u8]) {
    let h = ChunkHeader::Payload {
        path,
        flags: 0,
        offset,
        len: data.len() as u64,
        crc: crc32fast::hash(data),
    };
    encode_header_into(&h, out);
    out.extend_from_slice(data);
}

/// Append a whole Percona sparse `S` chunk.
pub fn encode_sparse(
    out: &mut Vec<u8>,
    path: &[u8],
    offset: u64,
    map: &[SparseEntry],
    data: &[u8],
) {
    let h = ChunkHeader::Sparse {
        path,
        flags: 0,
        offset,
        map,
        len: data.len() as u64,
        crc: sparse_crc(map, data),
    };
    encode_header_into(&h, out);
    out.extend_from_slice(data);
}

/// Append an `E` chunk.
pub fn encode_eof(out: &mut Vec<u8>, path: &[u8]) {
    encode_header_into(&ChunkHeader::Eof { path, flags: 0 }, out);
}

/// Append any decoded chunk, as it was (round trips and tests).
pub fn encode_chunk(c: &Chunk, out: &mut Vec<u8>) {
    let path = &c.path[..];
    let flags = c.flags;
    match &c.body {
        ChunkBody::Payload { offset, data } => {
            encode_header_into(
                &ChunkHeader::Payload {
                    path,
                    flags,
                    offset: *offset,
                    len: data.len() as u64,
                    crc: crc32fast::hash(data),
                },
                out,
            );
            out.extend_from_slice(data);
        }
        ChunkBody::Sparse { offset, map, data } => {
            encode_header_into(
                &ChunkHeader::Sparse {
                    path,
                    flags,
                    offset: *offset,
                    map,
                    len: data.len() as u64,
                    crc: sparse_crc(map, data),
                },
                out,
            );
            out.extend_from_slice(data);
        }
        ChunkBody::Seek { offset } => encode_header_into(
            &ChunkHeader::Seek {
                path,
                flags,
                offset: *offset,
            },
            out,
        ),
        ChunkBody::Eof => encode_header_into(&ChunkHeader::Eof { path, flags }, out),
        ChunkBody::Remove => encode_header_into(&ChunkHeader::Remove { path, flags }, out),
        ChunkBody::Rename { to } => {
            encode_header_into(&ChunkHeader::Rename { path, flags, to }, out)
        }
        ChunkBody::Ignored {
            type_byte,
            offset,
            data,
        } => {
            encode_header_into(
                &ChunkHeader::Other {
                    type_byte: *type_byte,
                    path,
                    flags,
                    offset: *offset,
                    len: data.len() as u64,
                    crc: crc32fast::hash(data),
                },
                out,
            );
            out.extend_from_slice(data);
        }
    }
}
