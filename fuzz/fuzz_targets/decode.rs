//! Fuzz the sans-I/O decoder and the ledger with arbitrary bytes.
//!
//! The input is a raw stream (so real archives work as seeds). It is decoded under every
//! dialect, once fed in pieces of pseudo-random sizes (seeded from the input's CRC) and once
//! whole, and must never panic. Checked on the way:
//! - `decode` never consumes bytes without returning a chunk, and always asks for more than
//!   it holds when it returns none;
//! - chunks tile the stream: each starts where the previous ended, and re-encoding a decoded
//!   chunk gives back exactly its bytes;
//! - with path checks on, every path (and rename target) passes the path rules;
//! - no stream mixes Percona-only and MariaDB-only chunk kinds;
//! - piecewise and whole decoding agree on the chunks and on the error (kind and offset);
//! - the ledger never panics and its open-file count matches its records.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use xbagent::format::{
    encode_chunk, path, sparse_crc, Chunk, ChunkBody, DecodeOptions, Decoder, Dialect, FileState,
    FormatError, Ledger, FLAG_REWRITE,
};

fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn check_chunk(c: &Chunk, data: &[u8], at: u64, opts: &DecodeOptions) {
    assert_eq!(c.stream_offset, at, "chunks must tile the stream");
    assert!(c.encoded_len >= 14);
    let end = (at + c.encoded_len) as usize;
    assert!(end <= data.len());
    let mut again = Vec::new();
    encode_chunk(c, &mut again);
    assert_eq!(
        &again[..],
        &data[at as usize..end],
        "re-encoding changed the chunk"
    );
    if opts.check_paths {
        assert_eq!(path::check(&c.path), Ok(()));
        if let ChunkBody::Rename { to } = &c.body {
            assert_eq!(path::check(to), Ok(()));
        }
    }
    assert!(c.path.len() <= 511);
    match (&c.body, opts.dialect) {
        (ChunkBody::Sparse { .. }, Dialect::Mariadb) => panic!("sparse chunk in a MariaDB stream"),
        (
            ChunkBody::Seek { .. } | ChunkBody::Remove | ChunkBody::Rename { .. },
            Dialect::Percona,
        ) => {
            panic!("MariaDB chunk in a Percona stream")
        }
        _ => {}
    }
    if let ChunkBody::Sparse { map, data, offset } = &c.body {
        let sum: u64 = map.iter().map(|e| e.len as u64).sum();
        assert_eq!(sum, data.len() as u64);
        let extent: u64 = map.iter().map(|e| e.skip as u64 + e.len as u64).sum();
        assert!(offset.checked_add(extent).is_some());
    }
    if let ChunkBody::Payload { offset, data } | ChunkBody::Ignored { offset, data, .. } = &c.body {
        assert!(offset.checked_add(data.len() as u64).is_some());
        assert!(data.len() as u64 <= opts.max_chunk_size);
    }
}

/// Decode `data` in pieces (`seed` = None: all at once). Returns the chunks and the error.
fn decode(
    data: &[u8],
    opts: DecodeOptions,
    seed: Option<u64>,
) -> (Vec<Chunk>, Option<FormatError>) {
    let mut dec = Decoder::new(opts);
    let mut buf = BytesMut::new();
    let mut out: Vec<Chunk> = Vec::new();
    let mut at = 0u64;
    let mut pos = 0usize;
    let mut seed = seed.map(|s| s | 1);
    while pos < data.len() {
        let n = match &mut seed {
            None => data.len(),
            Some(s) => {
                let r = next(s);
                match r % 4 {
                    0 => 1,
                    1 => (r >> 8) as usize % 16 + 1,
                    2 => (r >> 8) as usize % 512 + 1,
                    _ => (r >> 8) as usize % 8192 + 1,
                }
            }
        }
        .min(data.len() - pos);
        buf.extend_from_slice(&data[pos..pos + n]);
        pos += n;
        loop {
            let before = buf.len();
            match dec.decode(&mut buf) {
                Ok(Some(c)) => {
                    check_chunk(&c, data, at, &opts);
                    at += c.encoded_len;
                    assert_eq!(dec.stream_offset(), at);
                    out.push(c);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "decode consumed bytes without a chunk");
                    assert!(dec.bytes_needed() > buf.len(), "asked for no more bytes");
                    break;
                }
                Err(e) => {
                    assert_eq!(e.offset(), at, "error names another chunk");
                    return (out, Some(e));
                }
            }
        }
    }
    loop {
        match dec.decode_eof(&mut buf) {
            Ok(Some(c)) => {
                check_chunk(&c, data, at, &opts);
                at += c.encoded_len;
                out.push(c);
            }
            Ok(None) => {
                assert!(buf.is_empty());
                assert_eq!(at as usize, data.len());
                return (out, None);
            }
            Err(e) => {
                assert_eq!(e.offset(), at, "error names another chunk");
                return (out, Some(e));
            }
        }
    }
}

fn mixes_dialects(chunks: &[Chunk]) -> bool {
    let percona = chunks
        .iter()
        .any(|c| matches!(c.body, ChunkBody::Sparse { .. }));
    let mariadb = chunks.iter().any(|c| {
        c.flags & FLAG_REWRITE != 0
            || matches!(
                c.body,
                ChunkBody::Seek { .. } | ChunkBody::Remove | ChunkBody::Rename { .. }
            )
    });
    percona && mariadb
}

fn ledger(chunks: &[Chunk], complete: bool) {
    let mut l = Ledger::new();
    for c in chunks {
        let r = l.apply(c);
        let open = l
            .records()
            .iter()
            .filter(|r| r.state == FileState::Open)
            .count();
        assert_eq!(l.open_files(), open, "open-file count drifted");
        if r.is_err() {
            return;
        }
    }
    if complete {
        let _ = l.finish().map_err(|e| e.to_string());
    }
}

fuzz_target!(|data: &[u8]| {
    let seed = sparse_crc(&[], data) as u64 ^ ((data.len() as u64) << 32);
    for dialect in [Dialect::Auto, Dialect::Percona, Dialect::Mariadb] {
        for check_paths in [true, false] {
            for max_chunk_size in [xbagent::format::DEFAULT_MAX_CHUNK_SIZE, 64] {
                let opts = DecodeOptions {
                    dialect,
                    max_chunk_size,
                    check_paths,
                };
                let (whole, werr) = decode(data, opts, None);
                let (split, serr) = decode(data, opts, Some(seed));
                assert_eq!(whole, split, "pieces and whole disagree on the chunks");
                match (&werr, &serr) {
                    (None, None) => {}
                    (Some(a), Some(b)) => {
                        assert_eq!(
                            std::mem::discriminant(a),
                            std::mem::discriminant(b),
                            "pieces and whole disagree: {a} / {b}"
                        );
                        assert_eq!(a.offset(), b.offset());
                    }
                    _ => panic!("pieces and whole disagree: {werr:?} / {serr:?}"),
                }
                // Messages must render (and never carry a raw NUL or escape character).
                if let Some(e) = &werr {
                    let m = e.to_string();
                    assert!(!m.contains('\0') && !m.contains('\x1b'), "{m:?}");
                }
                assert!(!mixes_dialects(&whole), "one stream, two dialects");
                ledger(&whole, werr.is_none());
            }
        }
    }
});
