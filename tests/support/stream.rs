//! A builder of xbstream bytes for tests: valid chunks through the library's encoder
//! (`xbagent::format`), and deliberately broken ones (bad CRC, absurd lengths, unknown flags
//! or types, unsafe paths, truncation) as raw bytes where the encoder refuses to write them.
//! It only builds bytes; it checks nothing.

// Each test binary that includes this uses only some of it.
#![allow(dead_code)]

use std::ops::{Deref, DerefMut};

use xbagent::format::{
    encode_eof, encode_header_into, encode_payload, encode_sparse, ChunkHeader, SparseEntry, MAGIC,
};

/// A stream under construction; derefs to its bytes (index, flip, truncate them freely).
#[derive(Clone, Debug, Default)]
pub struct Stream(pub Vec<u8>);

impl Deref for Stream {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Stream {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl AsRef<[u8]> for Stream {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// CRC-32 (zlib) through the library's sparse CRC with an empty map.
pub fn crc(d: &[u8]) -> u32 {
    xbagent::format::sparse_crc(&[], d)
}

impl Stream {
    pub fn new() -> Stream {
        Stream(Vec::new())
    }

    /// The bytes built so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.clone()
    }

    /// A `P` chunk of `data` at `offset`.
    pub fn payload(&mut self, path: &[u8], offset: u64, data: &[u8]) -> &mut Stream {
        encode_payload(&mut self.0, path, offset, data);
        self
    }

    /// A `P` chunk at offset 0 with `flags` (FLAG_REWRITE, ...), CRC computed.
    pub fn payload_flags(&mut self, path: &[u8], flags: u8, data: &[u8]) -> &mut Stream {
        self.header(&ChunkHeader::Payload {
            path,
            flags,
            offset: 0,
            len: data.len() as u64,
            crc: crc(data),
        })
        .raw(data)
    }

    /// A `P` header at offset 0 declaring `len` bytes, CRC 0, and no payload (the caller adds
    /// what it wants, or nothing).
    pub fn payload_header(&mut self, path: &[u8], len: u64) -> &mut Stream {
        self.header(&ChunkHeader::Payload {
            path,
            flags: 0,
            offset: 0,
            len,
            crc: 0,
        })
    }

    /// An `E` chunk.
    pub fn eof(&mut self, path: &[u8]) -> &mut Stream {
        encode_eof(&mut self.0, path);
        self
    }

    /// `P` of `data` then `E`: a whole small file.
    pub fn file(&mut self, path: &[u8], data: &[u8]) -> &mut Stream {
        self.payload(path, 0, data).eof(path)
    }

    /// A Percona sparse `S` chunk.
    pub fn sparse(
        &mut self,
        path: &[u8],
        offset: u64,
        map: &[SparseEntry],
        data: &[u8],
    ) -> &mut Stream {
        encode_sparse(&mut self.0, path, offset, map, data);
        self
    }

    /// A MariaDB seek (`S` without a map).
    pub fn seek(&mut self, path: &[u8], offset: u64) -> &mut Stream {
        self.header(&ChunkHeader::Seek {
            path,
            flags: 0,
            offset,
        })
    }

    /// A MariaDB remove (`D`).
    pub fn remove(&mut self, path: &[u8]) -> &mut Stream {
        self.header(&ChunkHeader::Remove { path, flags: 0 })
    }

    /// A MariaDB rename (`R`).
    pub fn rename(&mut self, path: &[u8], to: &[u8]) -> &mut Stream {
        self.header(&ChunkHeader::Rename { path, flags: 0, to })
    }

    /// A chunk of an unknown type with `flags` and a payload of `data`, CRC computed.
    pub fn other(&mut self, type_byte: u8, path: &[u8], flags: u8, data: &[u8]) -> &mut Stream {
        self.header(&ChunkHeader::Other {
            type_byte,
            path,
            flags,
            offset: 0,
            len: data.len() as u64,
            crc: crc(data),
        })
        .raw(data)
    }

    /// Any header the encoder writes, as given (lengths and CRC are not checked).
    pub fn header(&mut self, h: &ChunkHeader) -> &mut Stream {
        encode_header_into(h, &mut self.0);
        self
    }

    /// A chunk prefix with any path length, even one the encoder refuses.
    pub fn prefix(&mut self, flags: u8, ty: u8, path_len: u32, path: &[u8]) -> &mut Stream {
        self.raw(MAGIC)
            .raw(&[flags, ty])
            .raw(&path_len.to_le_bytes())
            .raw(path)
    }

    /// Raw bytes.
    pub fn raw(&mut self, b: &[u8]) -> &mut Stream {
        self.0.extend_from_slice(b);
        self
    }

    /// XOR the byte at `i` with `mask` (a CRC, magic or flag byte made wrong).
    pub fn flip(&mut self, i: usize, mask: u8) -> &mut Stream {
        self.0[i] ^= mask;
        self
    }
}
