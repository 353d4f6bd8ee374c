//! Property tests of the sans-I/O xbstream layer (`xbagent::format`), through its public API only.
//!
//! - Round trips: any sequence of chunks of either dialect, encoded and fed back to the decoder
//!   in arbitrary pieces, decodes to the same chunks (same stream offsets and lengths), with the
//!   dialect given explicitly or detected (`Dialect::Auto`).
//! - Every malformed header field is reported by its own `FormatError` variant, naming the
//!   stream offset of the chunk at fault; a chunk cut at any byte is `Truncated` at end of input.
//! - The ledger accepts every well-formed stream and names gaps, overlaps, duplicates, data
//!   after `E` and files left without `E`.
// A scenario reads top to bottom as one story; the 80-line limit is for src/.
#![allow(clippy::too_many_lines)]

#[path = "support/stream.rs"]
mod stream;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use stream::Stream;
use xbagent::format::{
    encode_chunk, encode_eof, encode_header_into, encode_payload, encode_sparse, sparse_crc, Chunk,
    ChunkBody, ChunkHeader, DecodeOptions, Decoder, Dialect, FileState, FormatError, Ledger,
    LedgerError, LedgerEvent, SparseEntry, FLAG_IGNORABLE, FLAG_REWRITE, MAGIC, MAX_PATH_LEN,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn opts(dialect: Dialect) -> DecodeOptions {
    DecodeOptions {
        dialect,
        ..DecodeOptions::default()
    }
}

/// Encode chunk specs (flags, path, body) into a stream; return the bytes and the chunks as the
/// decoder must return them (stream offsets and encoded lengths filled in).
fn build(specs: &[(u8, Vec<u8>, ChunkBody)]) -> (Vec<u8>, Vec<Chunk>) {
    let mut out = Vec::new();
    let mut chunks = Vec::new();
    for (flags, path, body) in specs {
        let mut c = Chunk {
            stream_offset: out.len() as u64,
            encoded_len: 0,
            flags: *flags,
            path: Bytes::copy_from_slice(path),
            body: body.clone(),
        };
        encode_chunk(&c, &mut out);
        c.encoded_len = out.len() as u64 - c.stream_offset;
        chunks.push(c);
    }
    (out, chunks)
}

/// Feed `bytes` to a decoder in pieces of the given sizes (cycled), decoding whatever is whole
/// after each piece, then finish with `decode_eof`. Checks the decoder's "need more" contract
/// on the way: it never consumes a partial chunk and always asks for more than it holds.
fn decode_split(
    bytes: &[u8],
    pieces: &[usize],
    o: DecodeOptions,
) -> (Vec<Chunk>, Result<(), FormatError>, Dialect) {
    let mut dec = Decoder::new(o);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < bytes.len() {
        let n = pieces[i % pieces.len()].max(1).min(bytes.len() - pos);
        i += 1;
        buf.extend_from_slice(&bytes[pos..pos + n]);
        pos += n;
        loop {
            let before = buf.len();
            match dec.decode(&mut buf) {
                Ok(Some(c)) => out.push(c),
                Ok(None) => {
                    assert_eq!(buf.len(), before, "decode consumed bytes without a chunk");
                    assert!(
                        dec.bytes_needed() > buf.len(),
                        "decoder needs {} bytes but holds {} and returned no chunk",
                        dec.bytes_needed(),
                        buf.len()
                    );
                    break;
                }
                Err(e) => return (out, Err(e), dec.dialect()),
            }
        }
    }
    loop {
        match dec.decode_eof(&mut buf) {
            Ok(Some(c)) => out.push(c),
            Ok(None) => {
                assert!(buf.is_empty(), "decode_eof returned None with bytes left");
                return (out, Ok(()), dec.dialect());
            }
            Err(e) => return (out, Err(e), dec.dialect()),
        }
    }
}

/// Decode `bytes` without declaring the end of input, until an error or a need for more:
/// what a reader sees of a stream that is still arriving.
fn decode_without_eof(bytes: &[u8], o: DecodeOptions) -> Result<Option<Chunk>, FormatError> {
    let mut dec = Decoder::new(o);
    let mut buf = BytesMut::from(bytes);
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(_)) => continue,
            other => return other,
        }
    }
}

/// Decode a whole buffer at end of input.
fn decode_all(bytes: &[u8], o: DecodeOptions) -> (Vec<Chunk>, Result<(), FormatError>) {
    let (c, r, _) = decode_split(bytes, &[bytes.len().max(1)], o);
    (c, r)
}

/// Decode and expect an error; return it and the number of good chunks before it.
fn decode_err(bytes: &[u8], o: DecodeOptions) -> (usize, FormatError) {
    match decode_all(bytes, o) {
        (c, Err(e)) => (c.len(), e),
        (c, Ok(())) => panic!("expected an error, decoded {} chunks: {c:?}", c.len()),
    }
}

fn prefix_bytes(flags: u8, ty: u8, path_len: u32, path: &[u8]) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.push(flags);
    v.push(ty);
    v.extend_from_slice(&path_len.to_le_bytes());
    v.extend_from_slice(path);
    v
}

// Chunk bodies in one expression each.
fn pay(offset: u64, data: Bytes) -> ChunkBody {
    ChunkBody::Payload { offset, data }
}

fn sp(offset: u64, map: Vec<SparseEntry>, data: Bytes) -> ChunkBody {
    ChunkBody::Sparse { offset, map, data }
}

fn ren(to: Bytes) -> ChunkBody {
    ChunkBody::Rename { to }
}

fn ign(type_byte: u8, offset: u64, data: Bytes) -> ChunkBody {
    ChunkBody::Ignored {
        type_byte,
        offset,
        data,
    }
}

const PREFIX: usize = 14;

/// Header length of a chunk up to its payload (or its end), used to find fields by hand.
fn pend(path: &[u8]) -> usize {
    PREFIX + path.len()
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// A path the path rules accept: 1 to 4 components, sometimes long (up to the 511-byte limit).
fn safe_path() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop::collection::vec("[a-zA-Z0-9_#@-][a-zA-Z0-9_.#@-]{0,11}", 1..4)
            .prop_map(|v| v.join("/").into_bytes()),
        1 => (1usize..=MAX_PATH_LEN).prop_map(|n| {
            let mut p = vec![b'x'; n];
            for i in (9..n.saturating_sub(1)).step_by(10) {
                p[i] = b'/';
            }
            p
        }),
        1 => prop::collection::vec(1u8..=255, 1..20).prop_map(|mut v| {
            // arbitrary non-NUL bytes, made safe: no '/' at all and not "." or "..".
            for b in v.iter_mut() {
                if *b == b'/' {
                    *b = b'_';
                }
            }
            if v == b"." || v == b".." {
                v.push(b'x');
            }
            v
        }),
    ]
}

fn data(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn payload_body() -> impl Strategy<Value = ChunkBody> {
    (data(300), any::<u64>())
        .prop_map(|(d, off)| pay(off.min(u64::MAX - d.len() as u64), Bytes::from(d)))
}

fn sparse_body() -> impl Strategy<Value = ChunkBody> {
    (
        prop::collection::vec((any::<u32>(), 0u32..64), 0..6),
        any::<u64>(),
        any::<u8>(),
    )
        .prop_map(|(entries, off, seed)| {
            let map: Vec<SparseEntry> = entries
                .iter()
                .map(|&(skip, len)| SparseEntry { skip, len })
                .collect();
            let total: u64 = map.iter().map(|e| e.len as u64).sum();
            let extent: u64 = map.iter().map(|e| e.skip as u64 + e.len as u64).sum();
            let data: Vec<u8> = (0..total)
                .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                .collect();
            ChunkBody::Sparse {
                offset: off.min(u64::MAX - extent),
                map,
                data: Bytes::from(data),
            }
        })
}

fn unknown_type() -> impl Strategy<Value = u8> {
    any::<u8>().prop_filter("a known chunk type", |t| !b"PESDR".contains(t))
}

fn ignored_body() -> impl Strategy<Value = ChunkBody> {
    (unknown_type(), data(100), any::<u64>())
        .prop_map(|(t, d, off)| ign(t, off.min(u64::MAX - d.len() as u64), Bytes::from(d)))
}

/// One Percona chunk: P, sparse S, E, or an ignorable unknown chunk.
fn percona_chunk() -> impl Strategy<Value = (u8, Vec<u8>, ChunkBody)> {
    let flags = prop_oneof![4 => Just(0u8), 1 => Just(FLAG_IGNORABLE)];
    prop_oneof![
        4 => (flags.clone(), safe_path(), payload_body()),
        3 => (flags.clone(), safe_path(), sparse_body()),
        2 => (flags, safe_path(), Just(ChunkBody::Eof)),
        1 => (Just(FLAG_IGNORABLE), safe_path(), ignored_body()),
    ]
}

/// One MariaDB chunk: P, seek S, E, D, R, ignorable unknown; any of them may carry REWRITE.
fn mariadb_chunk() -> impl Strategy<Value = (u8, Vec<u8>, ChunkBody)> {
    let flags = prop_oneof![
        4 => Just(0u8),
        1 => Just(FLAG_REWRITE),
        1 => Just(FLAG_IGNORABLE),
        1 => Just(FLAG_IGNORABLE | FLAG_REWRITE),
    ];
    prop_oneof![
        4 => (flags.clone(), safe_path(), payload_body()),
        3 => (flags.clone(), safe_path(), any::<u64>().prop_map(|offset| ChunkBody::Seek { offset })),
        2 => (flags.clone(), safe_path(), Just(ChunkBody::Eof)),
        1 => (flags.clone(), safe_path(), Just(ChunkBody::Remove)),
        1 => (flags.clone(), safe_path(), safe_path().prop_map(|t| ren(Bytes::from(t)))),
        1 => (flags.prop_map(|f| f | FLAG_IGNORABLE), safe_path(), ignored_body()),
    ]
}

fn pieces() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        1 => Just(vec![1usize]),
        3 => prop::collection::vec(1usize..40, 1..20),
        2 => prop::collection::vec(1usize..5000, 1..10),
    ]
}

/// Does the stream hold a chunk that settles the dialect as MariaDB?
fn settles_mariadb(specs: &[(u8, Vec<u8>, ChunkBody)]) -> bool {
    specs.iter().any(|(f, _, b)| {
        f & FLAG_REWRITE != 0
            || matches!(
                b,
                ChunkBody::Seek { .. } | ChunkBody::Remove | ChunkBody::Rename { .. }
            )
    })
}

fn settles_percona(specs: &[(u8, Vec<u8>, ChunkBody)]) -> bool {
    specs
        .iter()
        .any(|(_, _, b)| matches!(b, ChunkBody::Sparse { .. }))
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn percona_stream_round_trips_in_any_pieces(
        specs in prop::collection::vec(percona_chunk(), 0..12),
        pieces in pieces(),
        auto in any::<bool>(),
    ) {
        let (bytes, want) = build(&specs);
        let d = if auto { Dialect::Auto } else { Dialect::Percona };
        let (got, res, dialect) = decode_split(&bytes, &pieces, opts(d));
        prop_assert_eq!(res, Ok(()));
        prop_assert_eq!(&got, &want);
        let expect = if auto && !settles_percona(&specs) { Dialect::Auto } else { Dialect::Percona };
        prop_assert_eq!(dialect, expect);
        // Re-encoding the decoded chunks gives back the same bytes.
        let mut again = Vec::new();
        for c in &got {
            encode_chunk(c, &mut again);
        }
        prop_assert_eq!(again, bytes);
    }

    #[test]
    fn mariadb_stream_round_trips_in_any_pieces(
        specs in prop::collection::vec(mariadb_chunk(), 0..12),
        pieces in pieces(),
        auto in any::<bool>(),
    ) {
        let (bytes, want) = build(&specs);
        let d = if auto { Dialect::Auto } else { Dialect::Mariadb };
        let (got, res, dialect) = decode_split(&bytes, &pieces, opts(d));
        prop_assert_eq!(res, Ok(()));
        prop_assert_eq!(&got, &want);
        let expect = if auto && !settles_mariadb(&specs) { Dialect::Auto } else { Dialect::Mariadb };
        prop_assert_eq!(dialect, expect);
    }

    /// The dialect-neutral subset (P, E, ignorable unknown) decodes the same under any dialect.
    #[test]
    fn neutral_chunks_decode_under_every_dialect(
        specs in prop::collection::vec(
            (prop_oneof![Just(0u8), Just(FLAG_IGNORABLE)], safe_path(),
             prop_oneof![payload_body(), Just(ChunkBody::Eof)]), 0..8),
        pieces in pieces(),
    ) {
        let (bytes, want) = build(&specs);
        for d in [Dialect::Auto, Dialect::Percona, Dialect::Mariadb] {
            let (got, res, dialect) = decode_split(&bytes, &pieces, opts(d));
            prop_assert_eq!(res, Ok(()));
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(dialect, d);
        }
    }

    /// The convenience encoders write what `encode_chunk` writes.
    #[test]
    fn convenience_encoders_match_encode_chunk(
        path in safe_path(), off in 0u64..1 << 40, d in data(200), sp in sparse_body(),
    ) {
        let mut a = Vec::new();
        encode_payload(&mut a, &path, off, &d);
        encode_eof(&mut a, &path);
        if let ChunkBody::Sparse { offset, map, data } = &sp {
            encode_sparse(&mut a, &path, *offset, map, data);
        }
        let (b, _) = build(&[
            (0, path.clone(), pay(off, Bytes::from(d.clone()))),
            (0, path.clone(), ChunkBody::Eof),
            (0, path.clone(), sp),
        ]);
        prop_assert_eq!(a, b);
    }
}

/// A MariaDB seek as the very last chunk of a stream is still told apart from a sparse chunk
/// under `Auto` (there is no next magic to look at).
#[test]
fn auto_detects_a_trailing_seek() {
    let (bytes, want) = build(&[
        (0, b"a".to_vec(), pay(0, Bytes::from_static(b"xyz"))),
        (0, b"a".to_vec(), ChunkBody::Seek { offset: 100 }),
    ]);
    let (got, res, d) = decode_split(&bytes, &[1], opts(Dialect::Auto));
    assert_eq!(res, Ok(()));
    assert_eq!(got, want);
    assert_eq!(d, Dialect::Mariadb);
}

// ---------------------------------------------------------------------------------------------
// One defect, one error variant
// ---------------------------------------------------------------------------------------------

/// A few good chunks in front, so the offset in the error is not trivially 0.
fn good_prefix() -> impl Strategy<Value = Vec<(u8, Vec<u8>, ChunkBody)>> {
    prop::collection::vec(
        (
            Just(0u8),
            safe_path(),
            prop_oneof![payload_body(), Just(ChunkBody::Eof)],
        ),
        0..3,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn bad_magic_is_bad_magic(
        pre in good_prefix(), (flags, path, body) in percona_chunk(),
        pos in 0usize..8, x in 1u8..=255,
    ) {
        let (mut bytes, _) = build(&pre);
        let at = bytes.len() as u64;
        let (c, _) = build(&[(flags, path, body)]);
        bytes.extend_from_slice(&c);
        bytes[at as usize + pos] ^= x;
        let (n, e) = decode_err(&bytes, opts(Dialect::Percona));
        prop_assert_eq!(n, pre.len());
        prop_assert!(matches!(e, FormatError::BadMagic { offset, .. } if offset == at), "{e:?}");
        let want = format!("stream offset {at}");
        prop_assert!(e.to_string().contains(&want), "{}", e);
        // Garbage fails as soon as the first wrong byte arrives, not at end of input.
        let r = decode_without_eof(&bytes[..at as usize + pos + 1], opts(Dialect::Auto));
        prop_assert!(matches!(r, Err(FormatError::BadMagic { .. })), "{r:?}");
    }

    #[test]
    fn unknown_flag_bits_are_unknown_flags(
        pre in good_prefix(), (flags, path, body) in mariadb_chunk(), extra in 1u8..=63,
    ) {
        let (mut bytes, _) = build(&pre);
        let at = bytes.len();
        let (c, _) = build(&[(flags, path, body)]);
        bytes.extend_from_slice(&c);
        let bad = flags | (extra << 2);
        bytes[at + 8] = bad;
        let (n, e) = decode_err(&bytes, opts(Dialect::Mariadb));
        prop_assert_eq!(n, pre.len());
        prop_assert_eq!(e, FormatError::UnknownFlags { offset: at as u64, flags: bad });
    }

    #[test]
    fn path_over_511_is_path_too_long(
        pre in good_prefix(), len in prop_oneof![Just(512u32), 512u32..=u32::MAX],
        ty in prop::sample::select(b"PESDRX".to_vec()),
    ) {
        let (mut bytes, _) = build(&pre);
        let at = bytes.len() as u64;
        // Only the 14-byte prefix: the decoder must not wait for (or allocate) the path.
        bytes.extend_from_slice(&prefix_bytes(0, ty, len, b""));
        let r = decode_without_eof(&bytes[..], opts(Dialect::Auto));
        prop_assert_eq!(r, Err(FormatError::PathTooLong { offset: at, len: len as u64, max: 511 }));
    }

    #[test]
    fn unknown_type_without_ignorable_is_unknown_type(
        pre in good_prefix(), path in safe_path(), ty in unknown_type(), d in data(50),
    ) {
        let (mut bytes, _) = build(&pre);
        let at = bytes.len() as u64;
        encode_header_into(&ChunkHeader::Other {
            type_byte: ty, path: &path, flags: 0, offset: 0, len: d.len() as u64,
            crc: crc32fast_hash(&d),
        }, &mut bytes);
        bytes.extend_from_slice(&d);
        for dl in [Dialect::Auto, Dialect::Percona, Dialect::Mariadb] {
            let (n, e) = decode_err(&bytes, opts(dl));
            prop_assert_eq!(n, pre.len());
            match &e {
                FormatError::UnknownType { offset, type_byte, .. } => {
                    prop_assert_eq!(*offset, at);
                    prop_assert_eq!(*type_byte, ty);
                }
                other => prop_assert!(false, "{other:?}"),
            }
            let want = format!("0x{ty:02x}");
            prop_assert!(e.to_string().contains(&want), "{}", e);
        }
    }

    /// A declared length above the cap fails from the header alone, before the payload arrives.
    #[test]
    fn oversized_length_is_chunk_too_large(
        // max from 300: the good prefix's payloads (up to 300 bytes) must fit under the cap,
        // or the error comes at the prefix instead of at the chunk under test.
        pre in good_prefix(), path in safe_path(), max in 300u64..100_000,
        excess in prop_oneof![1u64..10, 1u64..=u64::MAX], kind in 0u8..4,
    ) {
        let (mut bytes, _) = build(&pre);
        let at = bytes.len() as u64;
        let len = max.saturating_add(excess);
        let (dialect, want_len) = match kind {
            0 => {
                encode_header_into(&ChunkHeader::Payload { path: &path, flags: 0, offset: 0, len, crc: 0 }, &mut bytes);
                (Dialect::Percona, len)
            }
            1 => {
                encode_header_into(&ChunkHeader::Other { type_byte: b'X', path: &path, flags: FLAG_IGNORABLE, offset: 0, len, crc: 0 }, &mut bytes);
                (Dialect::Mariadb, len)
            }
            2 => {
                // Sparse: the payload length alone is too big.
                encode_header_into(&ChunkHeader::Sparse { path: &path, flags: 0, offset: 0, map: &[], len, crc: 0 }, &mut bytes);
                (Dialect::Percona, len)
            }
            _ => {
                // Sparse: the map (count × 8 bytes) makes the body too big; the map is not sent.
                let count = (max / 8 + 1 + excess % 1000).min(u32::MAX as u64) as u32;
                let mut h = prefix_bytes(0, b'S', path.len() as u32, &path);
                h.extend_from_slice(&count.to_le_bytes());
                h.extend_from_slice(&0u64.to_le_bytes());
                h.extend_from_slice(&0u64.to_le_bytes());
                h.extend_from_slice(&0u32.to_le_bytes());
                bytes.extend_from_slice(&h);
                (Dialect::Percona, count as u64 * 8)
            }
        };
        let o = DecodeOptions { dialect, max_chunk_size: max, check_paths: true };
        let r = decode_without_eof(&bytes[..], o);
        match r {
            Err(FormatError::ChunkTooLarge { offset, len, max: m, .. }) => {
                prop_assert_eq!(offset, at);
                prop_assert_eq!(len, want_len);
                prop_assert_eq!(m, max);
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn corrupt_payload_chunk_is_bad_checksum(
        pre in good_prefix(), path in safe_path(), d in data(200), which in any::<prop::sample::Index>(),
        x in 1u8..=255, ignorable in any::<bool>(),
    ) {
        let (mut bytes, _) = build(&pre);
        let at = bytes.len();
        let body = if ignorable {
            ign(b'Z', 0, Bytes::from(d.clone()))
        } else {
            pay(0, Bytes::from(d.clone()))
        };
        let flags = if ignorable { FLAG_IGNORABLE } else { 0 };
        let (c, _) = build(&[(flags, path.clone(), body)]);
        bytes.extend_from_slice(&c);
        let p = pend(&path);
        // Flip a byte of the stored CRC or of the payload.
        let span: Vec<usize> = (p + 16..p + 20).chain(p + 20..p + 20 + d.len()).collect();
        let i = at + span[which.index(span.len())];
        bytes[i] ^= x;
        let (n, e) = decode_err(&bytes, opts(Dialect::Auto));
        prop_assert_eq!(n, pre.len());
        match e {
            FormatError::BadChecksum { offset, stored, computed, .. } => {
                prop_assert_eq!(offset, at as u64);
                prop_assert_ne!(stored, computed);
                prop_assert_eq!(computed, crc32fast_hash(&bytes[at + p + 20..at + p + 20 + d.len()]));
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn corrupt_sparse_chunk_is_bad_checksum(
        pre in good_prefix(), path in safe_path(), sp in sparse_body(),
        which in any::<prop::sample::Index>(), x in 1u8..=255,
    ) {
        let (mut bytes, _) = build(&pre);
        let at = bytes.len();
        let (c, _) = build(&[(0, path.clone(), sp.clone())]);
        let p = pend(&path);
        // The CRC field, the map and the payload: any flipped byte there is a checksum error.
        let span: Vec<usize> = (p + 20..c.len()).collect();
        bytes.extend_from_slice(&c);
        let i = at + span[which.index(span.len())];
        bytes[i] ^= x;
        let (n, e) = decode_err(&bytes, opts(Dialect::Percona));
        prop_assert_eq!(n, pre.len());
        prop_assert!(matches!(e, FormatError::BadChecksum { offset, .. } if offset == at as u64), "{e:?}");
    }

    #[test]
    fn sparse_map_not_matching_length_is_a_mismatch(
        pre in good_prefix(), path in safe_path(),
        entries in prop::collection::vec((any::<u32>(), 0u32..64), 0..6),
        len in 0u64..400,
    ) {
        let map: Vec<SparseEntry> = entries.iter().map(|&(skip, len)| SparseEntry { skip, len }).collect();
        let described: u64 = map.iter().map(|e| e.len as u64).sum();
        prop_assume!(described != len);
        let d = vec![7u8; len as usize];
        let (mut bytes, _) = build(&pre);
        let at = bytes.len() as u64;
        // A correct CRC over the map and payload, but Σ len ≠ payload_len.
        encode_sparse(&mut bytes, &path, 0, &map, &d);
        let (n, e) = decode_err(&bytes, opts(Dialect::Percona));
        prop_assert_eq!(n, pre.len());
        match e {
            FormatError::SparseLengthMismatch { offset, described: got_d, len: got_l, .. } => {
                prop_assert_eq!(offset, at);
                prop_assert_eq!(got_d, described);
                prop_assert_eq!(got_l, len);
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn payload_past_u64_max_is_offset_overflow(
        pre in good_prefix(), path in safe_path(), d in prop::collection::vec(any::<u8>(), 1..100),
        back in 0u64..100,
    ) {
        // offset + len > u64::MAX by 1..=len.
        let back = back % d.len() as u64;
        let offset = u64::MAX - back;
        let (mut bytes, _) = build(&pre);
        let at = bytes.len() as u64;
        encode_payload(&mut bytes, &path, offset, &d);
        let (n, e) = decode_err(&bytes, opts(Dialect::Auto));
        prop_assert_eq!(n, pre.len());
        prop_assert!(matches!(e, FormatError::OffsetOverflow { offset, .. } if offset == at), "{e:?}");
    }

    #[test]
    fn sparse_extent_past_u64_max_is_offset_overflow(
        pre in good_prefix(), path in safe_path(),
        entries in prop::collection::vec((any::<u32>(), 0u32..64), 1..6),
        back in any::<u64>(),
    ) {
        let map: Vec<SparseEntry> = entries.iter().map(|&(skip, len)| SparseEntry { skip, len }).collect();
        let extent: u64 = map.iter().map(|e| e.skip as u64 + e.len as u64).sum();
        prop_assume!(extent > 0);
        let offset = u64::MAX - back % extent;
        let total: u64 = map.iter().map(|e| e.len as u64).sum();
        let d = vec![1u8; total as usize];
        let (mut bytes, _) = build(&pre);
        let at = bytes.len() as u64;
        encode_sparse(&mut bytes, &path, offset, &map, &d);
        let (n, e) = decode_err(&bytes, opts(Dialect::Percona));
        prop_assert_eq!(n, pre.len());
        prop_assert!(matches!(e, FormatError::OffsetOverflow { offset, .. } if offset == at), "{e:?}");
    }

    #[test]
    fn long_rename_target_is_rename_target_too_long(
        pre in good_prefix(), path in safe_path(), len in prop_oneof![Just(512u32), 512u32..=u32::MAX],
    ) {
        let (mut bytes, _) = build(&pre);
        let at = bytes.len() as u64;
        bytes.extend_from_slice(&prefix_bytes(0, b'R', path.len() as u32, &path));
        bytes.extend_from_slice(&len.to_le_bytes());
        // The target itself never arrives: the length alone must be refused.
        let r = decode_without_eof(&bytes[..], opts(Dialect::Auto));
        match r {
            Err(FormatError::RenameTargetTooLong { offset, len: l, max, .. }) => {
                prop_assert_eq!(offset, at);
                prop_assert_eq!(l, len as u64);
                prop_assert_eq!(max, 511);
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }
}

/// CRC-32 (zlib), computed here independently of the crate through its sparse helper with an
/// empty map (which is exactly the CRC of the data).
fn crc32fast_hash(d: &[u8]) -> u32 {
    sparse_crc(&[], d)
}

#[test]
fn crc_is_zlib_crc32() {
    // The classic check value of CRC-32/ISO-HDLC.
    assert_eq!(crc32fast_hash(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32fast_hash(b""), 0);
}

#[test]
fn path_of_exactly_511_bytes_is_accepted_and_512_refused() {
    let ok = vec![b'a'; 511];
    let (bytes, want) = build(&[(0, ok.clone(), ChunkBody::Eof)]);
    assert_eq!(decode_all(&bytes, opts(Dialect::Auto)), (want, Ok(())));
    let bad = vec![b'a'; 512];
    let mut bytes = Vec::new();
    encode_eof(&mut bytes, &bad);
    let (_, e) = decode_err(&bytes, opts(Dialect::Auto));
    assert_eq!(
        e,
        FormatError::PathTooLong {
            offset: 0,
            len: 512,
            max: 511
        }
    );
}

#[test]
fn max_chunk_size_is_inclusive() {
    let d = vec![3u8; 100];
    let mut bytes = Vec::new();
    encode_payload(&mut bytes, b"a", 0, &d);
    let o = DecodeOptions {
        max_chunk_size: 100,
        ..DecodeOptions::default()
    };
    assert!(decode_all(&bytes, o).1.is_ok());
    let o = DecodeOptions {
        max_chunk_size: 99,
        ..DecodeOptions::default()
    };
    assert!(matches!(
        decode_err(&bytes, o).1,
        FormatError::ChunkTooLarge {
            len: 100,
            max: 99,
            ..
        }
    ));
}

#[test]
fn mariadb_chunks_in_a_percona_stream_are_wrong_dialect() {
    let cases: Vec<(u8, ChunkBody, &str)> = vec![
        (0, ChunkBody::Remove, "D (remove)"),
        (0, ren(Bytes::from_static(b"b")), "R (rename)"),
        (FLAG_REWRITE, ChunkBody::Eof, "REWRITE flag"),
    ];
    for (flags, body, kind) in cases {
        let (bytes, _) = build(&[(flags, b"a".to_vec(), body.clone())]);
        let (_, e) = decode_err(&bytes, opts(Dialect::Percona));
        assert_eq!(
            e,
            FormatError::WrongDialect {
                offset: 0,
                path: "a".into(),
                kind,
                dialect: Dialect::Percona
            },
        );
        // Auto settles on Percona from a sparse chunk, then refuses the MariaDB chunk.
        let (bytes, _) = build(&[
            (
                0,
                b"s".to_vec(),
                sp(
                    0,
                    vec![SparseEntry { skip: 4, len: 1 }],
                    Bytes::from_static(b"x"),
                ),
            ),
            (flags, b"a".to_vec(), body),
        ]);
        let (n, e) = decode_err(&bytes, opts(Dialect::Auto));
        assert_eq!(n, 1);
        assert!(
            matches!(
                e,
                FormatError::WrongDialect {
                    dialect: Dialect::Percona,
                    ..
                }
            ),
            "{e:?}"
        );
    }
}

#[test]
fn sparse_after_mariadb_evidence_is_read_as_a_seek_and_fails() {
    // Once a D chunk settled MariaDB, a Percona sparse chunk is misread as a seek, and the
    // bytes after its 8-byte "offset" are not a chunk: the stream is refused, not misapplied.
    let mut bytes = Stream::new();
    bytes
        .remove(b"old")
        .sparse(b"s", 0, &[SparseEntry { skip: 4, len: 3 }], b"abc");
    let (n, e) = decode_err(&bytes, opts(Dialect::Auto));
    assert_eq!(n, 2, "the D and the misread seek");
    assert!(matches!(e, FormatError::BadMagic { .. }), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// Truncation at every byte
// ---------------------------------------------------------------------------------------------

fn check_truncations(
    pre: &[(u8, Vec<u8>, ChunkBody)],
    chunk: (u8, Vec<u8>, ChunkBody),
    d: Dialect,
) -> Result<(), TestCaseError> {
    let (mut bytes, pre_chunks) = build(pre);
    let at = bytes.len();
    let (c, want) = build(std::slice::from_ref(&chunk));
    bytes.extend_from_slice(&c);
    let is_sparse = matches!(chunk.2, ChunkBody::Sparse { .. });
    let undecided = d == Dialect::Auto && !settles_mariadb(pre) && !settles_percona(pre);
    for cut in at + 1..bytes.len() {
        // A Percona sparse chunk cut right after where a seek's offset would end is,
        // byte for byte, a whole MariaDB seek at the end of the stream: `Auto` cannot tell.
        if is_sparse && undecided && cut == at + pend(&chunk.1) + 8 {
            let (got, res) = decode_all(&bytes[..cut], opts(d));
            prop_assert_eq!(res, Ok(()));
            let is_seek = matches!(got.last().unwrap().body, ChunkBody::Seek { .. });
            prop_assert!(is_seek, "{:?}", got.last());
            continue;
        }
        let (got, res) = decode_all(&bytes[..cut], opts(d));
        prop_assert_eq!(&got, &pre_chunks, "cut at {}", cut);
        match &res {
            Err(FormatError::Truncated { offset, end, .. }) => {
                prop_assert_eq!(*offset, at as u64);
                prop_assert_eq!(*end, cut as u64);
            }
            other => prop_assert!(false, "cut at {cut} of {}: {other:?}", bytes.len()),
        }
        let msg = res.unwrap_err().to_string();
        prop_assert!(msg.starts_with("stream truncated"), "{}", msg);
        prop_assert!(msg.contains(&format!("stream offset {at}")), "{}", msg);
        // Without the end of input the same bytes only ask for more; then the rest completes it.
        let mut dec = Decoder::new(opts(d));
        let mut buf = BytesMut::from(&bytes[..cut]);
        let mut n = 0;
        while dec
            .decode(&mut buf)
            .map_err(|e| TestCaseError::fail(format!("{e}")))?
            .is_some()
        {
            n += 1;
        }
        prop_assert_eq!(n, pre_chunks.len());
        prop_assert_eq!(buf.len(), cut - at);
        buf.extend_from_slice(&bytes[cut..]);
        let last = dec
            .decode_eof(&mut buf)
            .map_err(|e| TestCaseError::fail(format!("{e}")))?;
        let mut want_last = want[0].clone();
        want_last.stream_offset = at as u64;
        prop_assert_eq!(last, Some(want_last));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn percona_chunk_cut_anywhere_is_truncated(
        pre in good_prefix(), chunk in percona_chunk(), auto in any::<bool>(),
    ) {
        check_truncations(&pre, chunk, if auto { Dialect::Auto } else { Dialect::Percona })?;
    }

    #[test]
    fn mariadb_chunk_cut_anywhere_is_truncated(
        pre in good_prefix(), chunk in mariadb_chunk(), auto in any::<bool>(),
    ) {
        check_truncations(&pre, chunk, if auto { Dialect::Auto } else { Dialect::Mariadb })?;
    }
}

// ---------------------------------------------------------------------------------------------
// Unsafe paths, in every place a path appears
// ---------------------------------------------------------------------------------------------

fn unsafe_paths() -> Vec<(Vec<u8>, &'static str)> {
    vec![
        (b"../x".to_vec(), "'..' path component"),
        (b"../outside/f".to_vec(), "'..' path component"),
        (b"a/../../x".to_vec(), "'..' path component"),
        (b"a/..".to_vec(), "'..' path component"),
        (b"..".to_vec(), "'..' path component"),
        (b"./../x".to_vec(), "'.' path component"),
        (b"./x".to_vec(), "'.' path component"),
        (b".".to_vec(), "'.' path component"),
        (b"/tmp/outside/f".to_vec(), "absolute path"),
        (b"/".to_vec(), "absolute path"),
        (b"a\0b".to_vec(), "NUL byte in path"),
        (b"\0".to_vec(), "NUL byte in path"),
        (b"".to_vec(), "empty path"),
        (b"a//b".to_vec(), "empty path component (// or trailing /)"),
        (b"a/".to_vec(), "empty path component (// or trailing /)"),
    ]
}

#[test]
fn unsafe_path_in_every_chunk_kind_is_refused() {
    for (bad, reason) in unsafe_paths() {
        let kinds: Vec<(Dialect, u8, Vec<u8>, ChunkBody)> = vec![
            (
                Dialect::Percona,
                0,
                bad.clone(),
                pay(0, Bytes::from_static(b"evil")),
            ),
            (Dialect::Percona, 0, bad.clone(), ChunkBody::Eof),
            (
                Dialect::Percona,
                0,
                bad.clone(),
                sp(
                    0,
                    vec![SparseEntry { skip: 1, len: 4 }],
                    Bytes::from_static(b"evil"),
                ),
            ),
            (
                Dialect::Mariadb,
                0,
                bad.clone(),
                ChunkBody::Seek { offset: 5 },
            ),
            (Dialect::Mariadb, 0, bad.clone(), ChunkBody::Remove),
            (
                Dialect::Mariadb,
                0,
                bad.clone(),
                ren(Bytes::from_static(b"ok")),
            ),
            (
                Dialect::Mariadb,
                0,
                b"ok".to_vec(),
                ren(Bytes::from(bad.clone())),
            ),
            (
                Dialect::Mariadb,
                FLAG_REWRITE,
                bad.clone(),
                pay(0, Bytes::from_static(b"evil")),
            ),
            (
                Dialect::Auto,
                FLAG_IGNORABLE,
                bad.clone(),
                ign(b'Z', 0, Bytes::from_static(b"evil")),
            ),
        ];
        for (d, flags, path, body) in kinds {
            let pre = vec![(0u8, b"good".to_vec(), ChunkBody::Eof)];
            let (bytes, _) = build(&[pre[0].clone(), (flags, path.clone(), body.clone())]);
            let at = build(&pre).0.len() as u64;
            for dl in [d, Dialect::Auto] {
                let (n, e) = decode_err(&bytes, opts(dl));
                assert_eq!(n, 1, "{bad:?} {body:?}");
                match &e {
                    FormatError::UnsafePath {
                        offset, reason: r, ..
                    } => {
                        assert_eq!(*offset, at, "{bad:?} {body:?}");
                        assert_eq!(*r, reason, "{bad:?} {body:?}");
                    }
                    other => panic!("{bad:?} in {body:?}: {other:?}"),
                }
                let msg = e.to_string();
                assert!(msg.starts_with("unsafe path '"), "{msg}");
                assert!(msg.contains(&format!("stream offset {at}")), "{msg}");
                assert!(
                    !msg.contains('\0'),
                    "NUL must be escaped in messages: {msg:?}"
                );
            }
            // The path check can be turned off (for `list`-like tools): then it decodes.
            let o = DecodeOptions {
                dialect: d,
                check_paths: false,
                ..DecodeOptions::default()
            };
            let (got, res) = decode_all(&bytes, o);
            assert_eq!(res, Ok(()), "{bad:?} {body:?}");
            assert_eq!(got.len(), 2);
        }
    }
}

#[test]
fn unsafe_path_is_refused_before_the_payload_arrives() {
    let mut bytes = Stream::new();
    bytes.payload_header(b"../x", 1 << 20);
    let mut dec = Decoder::new(DecodeOptions::default());
    let mut buf = BytesMut::from(&bytes[..18]); // prefix and path only
    assert!(matches!(
        dec.decode(&mut buf),
        Err(FormatError::UnsafePath { .. })
    ));
}

#[test]
fn control_characters_in_paths_are_escaped_in_messages() {
    let mut bytes = Vec::new();
    encode_payload(&mut bytes, b"a\x1b[2Jb", 0, b"x");
    let last = bytes.len() - 1;
    bytes[last] ^= 1; // bad CRC
    let (_, e) = decode_err(&bytes, DecodeOptions::default());
    let msg = e.to_string();
    assert!(!msg.contains('\x1b'), "{msg:?}");
}

// ---------------------------------------------------------------------------------------------
// Ledger
// ---------------------------------------------------------------------------------------------

/// Data chunks of one file, contiguous from offset 0: (sparse?, map, payload length).
#[derive(Debug, Clone)]
enum Piece {
    P(usize),
    S(Vec<(u32, u32)>),
}

fn file_pieces(percona: bool) -> impl Strategy<Value = Vec<Piece>> {
    let p = (0usize..50).prop_map(Piece::P);
    if percona {
        let s = prop::collection::vec((0u32..5000, 0u32..40), 0..4).prop_map(Piece::S);
        prop::collection::vec(prop_oneof![p, s], 0..5).boxed()
    } else {
        prop::collection::vec(p, 0..5).boxed()
    }
}

/// A well-formed stream: `files` files, each its pieces then E, interleaved by `order`.
/// Returns the chunk specs and, per file, (size, data bytes, chunk count).
#[allow(clippy::type_complexity)]
fn well_formed(
    files: &[Vec<Piece>],
    order: &[usize],
) -> (Vec<(u8, Vec<u8>, ChunkBody)>, Vec<(Vec<u8>, u64, u64, u64)>) {
    let mut next = vec![0usize; files.len()];
    let mut off = vec![0u64; files.len()];
    let mut data_bytes = vec![0u64; files.len()];
    let mut specs = Vec::new();
    for &f in order {
        let path = format!("db{}/f{f}.ibd", f % 2).into_bytes();
        let i = next[f];
        next[f] += 1;
        if i == files[f].len() {
            specs.push((0, path, ChunkBody::Eof));
            continue;
        }
        match &files[f][i] {
            Piece::P(n) => {
                let d: Vec<u8> = (0..*n).map(|k| (k + f) as u8).collect();
                specs.push((0, path, pay(off[f], Bytes::from(d))));
                off[f] += *n as u64;
                data_bytes[f] += *n as u64;
            }
            Piece::S(m) => {
                let map: Vec<SparseEntry> = m
                    .iter()
                    .map(|&(skip, len)| SparseEntry { skip, len })
                    .collect();
                let total: u64 = m.iter().map(|e| e.1 as u64).sum();
                let extent: u64 = m.iter().map(|e| e.0 as u64 + e.1 as u64).sum();
                specs.push((
                    0,
                    path,
                    ChunkBody::Sparse {
                        offset: off[f],
                        map,
                        data: Bytes::from(vec![9u8; total as usize]),
                    },
                ));
                off[f] += extent;
                data_bytes[f] += total;
            }
        }
    }
    let summary = (0..files.len())
        .map(|f| {
            (
                format!("db{}/f{f}.ibd", f % 2).into_bytes(),
                off[f],
                data_bytes[f],
                files[f].len() as u64 + 1,
            )
        })
        .collect();
    (specs, summary)
}

/// Files and an interleaving of their chunks (each file index appears pieces+1 times).
fn files_and_order(percona: bool) -> impl Strategy<Value = (Vec<Vec<Piece>>, Vec<usize>)> {
    prop::collection::vec(file_pieces(percona), 1..6).prop_flat_map(|files| {
        let order: Vec<usize> = files
            .iter()
            .enumerate()
            .flat_map(|(f, p)| std::iter::repeat_n(f, p.len() + 1))
            .collect();
        (Just(files), Just(order).prop_shuffle())
    })
}

fn run_ledger(chunks: &[Chunk]) -> (Ledger, Result<(), (usize, LedgerError)>) {
    let mut l = Ledger::new();
    for (i, c) in chunks.iter().enumerate() {
        if let Err(e) = l.apply(c) {
            return (l, Err((i, e)));
        }
    }
    (l, Ok(()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn ledger_accepts_every_well_formed_stream(
        (files, order) in files_and_order(true), pieces in pieces(),
    ) {
        let (specs, summary) = well_formed(&files, &order);
        let (bytes, _) = build(&specs);
        // Through the decoder, as a consumer would see it.
        let (chunks, res, _) = decode_split(&bytes, &pieces, opts(Dialect::Auto));
        prop_assert_eq!(res, Ok(()));
        let mut l = Ledger::new();
        let mut seen = std::collections::HashSet::new();
        for c in &chunks {
            let ev = l.apply(c);
            let first = seen.insert(c.path.clone());
            prop_assert_eq!(ev, Ok(LedgerEvent::File {
                created: first,
                truncate: false,
                closed: matches!(c.body, ChunkBody::Eof),
            }));
        }
        prop_assert_eq!(l.finish(), Ok(()));
        prop_assert_eq!(l.open_files(), 0);
        prop_assert_eq!(l.records().len(), files.len());
        for (path, size, data_bytes, n) in summary {
            let r = l.get(&path).expect("record");
            prop_assert_eq!(r.state, FileState::Complete);
            prop_assert_eq!(r.size, size);
            prop_assert_eq!(r.next_offset, size);
            prop_assert_eq!(r.data_bytes, data_bytes);
            prop_assert_eq!(r.chunks, n);
        }
    }

    #[test]
    fn ledger_names_a_gap_or_an_overlap(
        (files, order) in files_and_order(true), which in any::<prop::sample::Index>(),
        delta in 1u64..1000, overlap in any::<bool>(),
    ) {
        let (mut specs, _) = well_formed(&files, &order);
        let data_idx: Vec<usize> = (0..specs.len()).filter(|&i| matches!(specs[i].2, ChunkBody::Payload { .. } | ChunkBody::Sparse { .. })).collect();
        prop_assume!(!data_idx.is_empty());
        let i = data_idx[which.index(data_idx.len())];
        let (ChunkBody::Payload { offset, .. } | ChunkBody::Sparse { offset, .. }) = &mut specs[i].2 else { unreachable!() };
        let expected = *offset;
        prop_assume!(!overlap || expected > 0);
        let got = if overlap { expected - delta.min(expected) } else { expected + delta };
        *offset = got;
        let (_, chunks) = build(&specs);
        let (_, r) = run_ledger(&chunks);
        let (at, e) = r.unwrap_err();
        prop_assert_eq!(at, i);
        prop_assert_eq!(&e, &LedgerError::OutOfOrder {
            offset: chunks[i].stream_offset,
            path: String::from_utf8(specs[i].1.clone()).unwrap(),
            got,
            expected,
        });
        let msg = e.to_string();
        prop_assert!(msg.contains(if overlap { "(an overlap)" } else { "(a gap)" }), "{}", msg);
    }

    #[test]
    fn ledger_refuses_a_repeated_data_chunk(
        (files, order) in files_and_order(true), which in any::<prop::sample::Index>(),
    ) {
        let (mut specs, _) = well_formed(&files, &order);
        let data_idx: Vec<usize> = (0..specs.len()).filter(|&i| match &specs[i].2 {
            ChunkBody::Payload { data, .. } => !data.is_empty(),
            ChunkBody::Sparse { map, .. } => map.iter().any(|e| e.skip > 0 || e.len > 0),
            _ => false,
        }).collect();
        prop_assume!(!data_idx.is_empty());
        let i = data_idx[which.index(data_idx.len())];
        let dup = specs[i].clone();
        specs.insert(i + 1, dup);
        let (_, chunks) = build(&specs);
        let (_, r) = run_ledger(&chunks);
        let (at, e) = r.unwrap_err();
        prop_assert_eq!(at, i + 1);
        prop_assert!(matches!(e, LedgerError::OutOfOrder { got, expected, .. } if got < expected), "{e:?}");
    }

    #[test]
    fn ledger_refuses_chunks_after_e_unless_rewrite(
        (files, order) in files_and_order(true), which in any::<prop::sample::Index>(),
        kind in 0u8..3,
    ) {
        let (mut specs, _) = well_formed(&files, &order);
        let f = which.index(files.len());
        let path = format!("db{}/f{f}.ibd", f % 2).into_bytes();
        let extra = match kind {
            0 => pay(0, Bytes::from_static(b"late")),
            1 => ChunkBody::Eof,
            _ => sp(0, vec![SparseEntry { skip: 2, len: 1 }], Bytes::from_static(b"x")),
        };
        specs.push((0, path.clone(), extra.clone()));
        let (_, chunks) = build(&specs);
        let (_, r) = run_ledger(&chunks);
        let (at, e) = r.unwrap_err();
        prop_assert_eq!(at, specs.len() - 1);
        prop_assert_eq!(&e, &LedgerError::AfterEnd {
            offset: chunks[at].stream_offset,
            path: String::from_utf8(path.clone()).unwrap(),
        });
        prop_assert!(e.to_string().contains("data after E"));

        // The same chunk with REWRITE starts a new version of the file.
        let last = specs.len() - 1;
        specs[last].0 = FLAG_REWRITE;
        let (_, chunks) = build(&specs);
        let mut l = Ledger::new();
        for c in &chunks[..last] {
            l.apply(c).unwrap();
        }
        let ev = l.apply(&chunks[last]);
        prop_assert_eq!(ev, Ok(LedgerEvent::File { created: true, truncate: true, closed: kind == 1 }));
        prop_assert_eq!(l.get(&path).unwrap().state, if kind == 1 { FileState::Complete } else { FileState::Open });
    }

    #[test]
    fn ledger_lists_files_lacking_e(
        (files, order) in files_and_order(true), drop in prop::collection::vec(any::<bool>(), 6),
    ) {
        let (specs, _) = well_formed(&files, &order);
        let mut kept = Vec::new();
        let mut first_seen: Vec<Vec<u8>> = Vec::new();
        for s in &specs {
            let f: usize = std::str::from_utf8(&s.1).unwrap().split("/f").nth(1).unwrap()
                .trim_end_matches(".ibd").parse().unwrap();
            if drop[f] && matches!(s.2, ChunkBody::Eof) {
                continue;
            }
            if !first_seen.contains(&s.1) {
                first_seen.push(s.1.clone());
            }
            kept.push(s.clone());
        }
        let want: Vec<String> = first_seen
            .iter()
            .filter(|p| !kept.iter().any(|s| &s.1 == *p && matches!(s.2, ChunkBody::Eof)))
            .map(|p| String::from_utf8(p.clone()).unwrap())
            .collect();
        let (_, chunks) = build(&kept);
        let (l, r) = run_ledger(&chunks);
        prop_assert_eq!(r, Ok(()));
        prop_assert_eq!(l.open_files(), want.len());
        if want.is_empty() {
            prop_assert_eq!(l.finish(), Ok(()));
        } else {
            let e = l.finish().unwrap_err();
            prop_assert_eq!(&e, &LedgerError::Incomplete { paths: want.clone() });
            let msg = e.to_string();
            prop_assert!(msg.contains(&format!("{} file(s) lacking their end chunk", want.len())), "{}", msg);
            for p in &want {
                prop_assert!(msg.contains(&format!("'{p}'")), "{}", msg);
            }
        }
    }

    /// MariaDB: a seek moves the expected offset; the next payload must start there.
    #[test]
    fn ledger_follows_seeks(
        first in 0usize..50, seek in 0u64..1 << 40, second in 1usize..50, wrong in 1u64..100,
    ) {
        let a = b"t.ibd".to_vec();
        let specs = vec![
            (0u8, a.clone(), pay(0, Bytes::from(vec![1; first]))),
            (0, a.clone(), ChunkBody::Seek { offset: seek }),
            (0, a.clone(), pay(seek, Bytes::from(vec![2; second]))),
            (0, a.clone(), ChunkBody::Eof),
        ];
        let (_, chunks) = build(&specs);
        let (l, r) = run_ledger(&chunks);
        prop_assert_eq!(r, Ok(()));
        prop_assert_eq!(l.finish(), Ok(()));
        let rec = l.get(&a).unwrap();
        prop_assert_eq!(rec.data_bytes, (first + second) as u64);
        prop_assert_eq!(rec.next_offset, seek + second as u64);
        prop_assert_eq!(rec.size, (first as u64).max(seek + second as u64));
        let mut bad = specs.clone();
        bad[2].2 = pay(seek + wrong, Bytes::from(vec![2; second]));
        let (_, chunks) = build(&bad);
        let (_, r) = run_ledger(&chunks);
        prop_assert!(matches!(r, Err((2, LedgerError::OutOfOrder { .. }))), "{r:?}");
    }
}

#[test]
fn ledger_ignores_ignorable_chunks() {
    let (_, chunks) = build(&[(
        FLAG_IGNORABLE,
        b"x".to_vec(),
        ign(b'Z', 77, Bytes::from_static(b"q")),
    )]);
    let mut l = Ledger::new();
    assert_eq!(l.apply(&chunks[0]), Ok(LedgerEvent::Ignored));
    assert!(l.records().is_empty());
    assert_eq!(l.finish(), Ok(()));
}

#[test]
fn ledger_applies_remove_to_a_whole_tree() {
    let (_, chunks) = build(&[
        (0, b"db/a".to_vec(), pay(0, Bytes::from_static(b"1"))),
        (0, b"db/a".to_vec(), ChunkBody::Eof),
        (0, b"db/b".to_vec(), ChunkBody::Eof),
        (0, b"dbx".to_vec(), ChunkBody::Eof),
        (0, b"db".to_vec(), ChunkBody::Remove),
        // After removal the path starts afresh.
        (0, b"db/b".to_vec(), ChunkBody::Eof),
    ]);
    let mut l = Ledger::new();
    for c in &chunks[..4] {
        l.apply(c).unwrap();
    }
    assert_eq!(l.apply(&chunks[4]), Ok(LedgerEvent::Removed));
    assert!(l.get(b"db/a").is_none());
    assert!(l.get(b"db/b").is_none());
    assert_eq!(
        l.get(b"dbx").unwrap().state,
        FileState::Complete,
        "a sibling sharing the prefix survives"
    );
    assert_eq!(l.open_files(), 0);
    assert_eq!(
        l.apply(&chunks[5]),
        Ok(LedgerEvent::File {
            created: true,
            truncate: false,
            closed: true
        })
    );
    assert_eq!(l.finish(), Ok(()));
    let removed = l
        .records()
        .iter()
        .filter(|r| r.state == FileState::Removed)
        .count();
    assert_eq!(removed, 2);
}

#[test]
fn ledger_refuses_remove_or_rename_of_an_open_file() {
    let open = (0u8, b"db/a".to_vec(), pay(0, Bytes::from_static(b"1")));
    for (i, c) in [
        (b"db".to_vec(), ChunkBody::Remove),
        (b"db/a".to_vec(), ChunkBody::Remove),
        (b"db/a".to_vec(), ren(Bytes::from_static(b"x"))),
        (b"db".to_vec(), ren(Bytes::from_static(b"x"))),
        (b"x".to_vec(), ren(Bytes::from_static(b"db/a"))),
    ]
    .into_iter()
    .enumerate()
    {
        let (_, chunks) = build(&[open.clone(), (0, c.0.clone(), c.1.clone())]);
        let mut l = Ledger::new();
        l.apply(&chunks[0]).unwrap();
        let e = l.apply(&chunks[1]).unwrap_err();
        assert!(
            matches!(&e, LedgerError::TouchesOpenFile { offset, open, .. } if *offset == chunks[1].stream_offset && open == "db/a"),
            "case {i}: {e:?}"
        );
    }
}

#[test]
fn ledger_applies_rename_and_refuses_rename_into_itself() {
    let (_, chunks) = build(&[
        (0, b"db/t.frm".to_vec(), pay(0, Bytes::from_static(b"abc"))),
        (0, b"db/t.frm".to_vec(), ChunkBody::Eof),
        (
            0,
            b"db/t.frm".to_vec(),
            ren(Bytes::from_static(b"db/u.frm")),
        ),
        // The renamed file is complete under its new name: more data is data after E.
        (0, b"db/u.frm".to_vec(), pay(3, Bytes::from_static(b"d"))),
    ]);
    let (l, r) = run_ledger(&chunks);
    assert!(matches!(r, Err((3, LedgerError::AfterEnd { .. }))), "{r:?}");
    assert!(l.get(b"db/t.frm").is_none());
    assert_eq!(l.get(b"db/u.frm").unwrap().size, 3);
    assert_eq!(l.get(b"db/u.frm").unwrap().state, FileState::Complete);

    for to in [&b"db"[..], b"db/x/y"] {
        let (_, chunks) = build(&[(0, b"db".to_vec(), ren(Bytes::copy_from_slice(to)))]);
        let mut l = Ledger::new();
        let e = l.apply(&chunks[0]).unwrap_err();
        assert!(matches!(e, LedgerError::BadRename { .. }), "{e:?}");
        assert!(e.to_string().contains("stream offset 0"));
    }
}
