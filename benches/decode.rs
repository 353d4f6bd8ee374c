//! In-memory throughput of the xbstream decoder (with CRC-32 verification) and the encoder.
//!
//! `cargo bench --bench decode`
//!
//! The stream is built once: `XBAGENT_BENCH_CHUNKS` (default 32) payload chunks of 10 MiB
//! each (the reference producers' chunk size) of pseudo-random data, spread over 4 files, each
//! file closed by an `E` chunk. Every iteration decodes the whole stream from a fresh
//! `BytesMut`; the copy that produces that buffer happens in criterion's untimed setup, so only
//! the decoder (header parsing, path checks, CRC, `split_to`) is measured. Single thread.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use xbagent::format::{
    encode_eof, encode_header_into, encode_payload, Chunk, ChunkBody, ChunkHeader, DecodeOptions,
    Decoder,
};

const CHUNK: usize = 10 * 1024 * 1024;
const FILES: usize = 4;

fn chunks() -> usize {
    std::env::var("XBAGENT_BENCH_CHUNKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(32)
}

/// Deterministic incompressible bytes (xorshift64*), fast enough not to dominate start-up.
fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        v.extend_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

fn path_of(i: usize) -> Vec<u8> {
    format!("db{}/table_{}.ibd", i % 2, i).into_bytes()
}

/// The payloads, one per chunk (distinct data so the CRC cannot be cached anywhere).
fn payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| pseudo_random(CHUNK, 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1)))
        .collect()
}

/// Chunk `i` goes to file `i % FILES` at that file's next offset.
fn build_stream(payloads: &[Vec<u8>]) -> Bytes {
    let total: usize = payloads.iter().map(|p| p.len() + 64).sum::<usize>() + FILES * 64;
    let mut out = Vec::with_capacity(total);
    let mut next_off = [0u64; FILES];
    for (i, p) in payloads.iter().enumerate() {
        let f = i % FILES;
        encode_payload(&mut out, &path_of(f), next_off[f], p);
        next_off[f] += p.len() as u64;
    }
    for f in 0..FILES {
        encode_eof(&mut out, &path_of(f));
    }
    Bytes::from(out)
}

/// Decode a whole stream. Returns the payload bytes seen and the decoded chunks: the chunks
/// (and the emptied buffer) still own the stream's allocation, so handing them back lets
/// criterion free the 320 MiB outside the timed region. A real reader reuses its buffer; the
/// `munmap` of a fresh allocation per iteration is not decoder cost (it halves the figure).
fn decode_all(mut buf: BytesMut) -> (u64, Vec<Chunk>, BytesMut) {
    let mut dec = Decoder::new(DecodeOptions::default());
    let mut data = 0u64;
    let mut out = Vec::with_capacity(64);
    loop {
        match dec.decode_eof(&mut buf) {
            Ok(Some(c)) => {
                if let ChunkBody::Payload { data: d, .. } = &c.body {
                    data += d.len() as u64;
                }
                out.push(c);
            }
            Ok(None) => break,
            Err(e) => panic!("bench stream failed to decode: {e}"),
        }
    }
    (data, out, buf)
}

fn bench_decode(c: &mut Criterion) {
    let n = chunks();
    let stream = build_stream(&payloads(n));
    let expected = (n * CHUNK) as u64;
    assert_eq!(decode_all(BytesMut::from(&stream[..])).0, expected);

    let mut g = c.benchmark_group("decode");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(15));
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function(format!("decode+crc {n}x10MiB"), |b| {
        b.iter_batched(
            || BytesMut::from(&stream[..]),
            |buf| {
                let got = decode_all(buf);
                debug_assert_eq!(got.0, expected);
                got
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    // The CRC alone over the same bytes: the ceiling for decode+crc on this machine.
    let mut g = c.benchmark_group("crc32");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function(format!("crc32fast {n}x10MiB"), |b| {
        b.iter(|| {
            let mut x = 0u32;
            for part in stream.chunks(CHUNK) {
                x ^= crc32fast::hash(black_box(part));
            }
            x
        })
    });
    g.finish();
}

fn bench_encode(c: &mut Criterion) {
    let n = chunks();
    let payloads = payloads(n);
    let bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();

    let mut g = c.benchmark_group("encode");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Bytes(bytes));

    // What `create` does per chunk: CRC the payload, write the header into a small buffer; the
    // payload itself goes to the output separately (writev), never copied.
    g.bench_function(format!("header+crc {n}x10MiB"), |b| {
        let mut hdr = Vec::with_capacity(4096);
        b.iter(|| {
            hdr.clear();
            let mut next_off = [0u64; FILES];
            for (i, p) in payloads.iter().enumerate() {
                let f = i % FILES;
                let path = path_of(f);
                let h = ChunkHeader::Payload {
                    path: &path,
                    flags: 0,
                    offset: next_off[f],
                    len: p.len() as u64,
                    crc: crc32fast::hash(black_box(p)),
                };
                encode_header_into(&h, &mut hdr);
                next_off[f] += p.len() as u64;
            }
            for f in 0..FILES {
                encode_eof(&mut hdr, &path_of(f));
            }
            black_box(&hdr);
        })
    });

    // Whole chunks into one buffer (header + CRC + payload copy): the cost of a copying writer.
    g.bench_function(format!("encode_payload (copying) {n}x10MiB"), |b| {
        let mut out: Vec<u8> = Vec::with_capacity(n * (CHUNK + 64) + FILES * 64);
        b.iter(|| {
            out.clear();
            let mut next_off = [0u64; FILES];
            for (i, p) in payloads.iter().enumerate() {
                let f = i % FILES;
                encode_payload(&mut out, &path_of(f), next_off[f], black_box(p));
                next_off[f] += p.len() as u64;
            }
            black_box(&out);
        })
    });
    g.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
