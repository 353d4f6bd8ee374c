//! age sealing and opening throughput on one core (issue 13): what encryption costs the upload
//! thread and decryption each restore fetcher, per byte.
//!
//! `cargo bench --bench seal`
//!
//! - `seal 64 MiB`: the upload's path, [`Recipients::seal`] (age STREAM: ChaCha20-Poly1305 per
//!   64 KiB chunk) written in 1 MiB pieces into a sink, plus the plaintext BLAKE3 the upload
//!   keeps for the manifest.
//! - `open 64 MiB`: the restore's path, [`RangeOpener`] reading 8 MiB plaintext ranges at
//!   computed chunk offsets from a local repository (page cache), as one fetcher does.

use std::hint::black_box;
use std::io::Write;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use xbagent::store::local::LocalRepo;
use xbagent::store::seal::{self, Identities, RangeOpener, Recipients};
use xbagent::store::Repository;

const LEN: usize = 64 << 20;

fn keys(dir: &std::path::Path) -> (Recipients, Identities) {
    let out = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(dir.join("k.txt"))
        .output()
        .expect("age-keygen (Debian package age) is needed");
    assert!(out.status.success());
    let public = std::process::Command::new("age-keygen")
        .arg("-y")
        .arg(dir.join("k.txt"))
        .output()
        .expect("age-keygen -y");
    let mut r = Recipients::default();
    r.add_flag(String::from_utf8_lossy(&public.stdout).trim())
        .expect("a recipient");
    let mut ids = Identities::default();
    ids.add_file(&dir.join("k.txt"), false)
        .expect("an identity");
    (r, ids)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (recipients, ids) = keys(dir.path());
    let data: Vec<u8> = (0..LEN)
        .map(|i| (i as u32).wrapping_mul(2654435761) as u8)
        .collect();
    let mut g = c.benchmark_group("age");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(10);
    g.bench_function("seal 64 MiB (+ plaintext BLAKE3)", |b| {
        b.iter(|| {
            let mut w = recipients.seal(std::io::sink()).expect("sealer");
            let mut h = blake3::Hasher::new();
            for piece in data.chunks(1 << 20) {
                h.update(piece);
                w.write_all(piece).expect("write");
            }
            w.finish().expect("finish");
            black_box(h.finalize())
        })
    });
    g.bench_function("seal 64 MiB (age only)", |b| {
        b.iter(|| {
            let mut w = recipients.seal(std::io::sink()).expect("sealer");
            for piece in data.chunks(1 << 20) {
                w.write_all(piece).expect("write");
            }
            w.finish().expect("finish")
        })
    });
    let sealed = recipients.seal_bytes(&data).expect("seal");
    let repo = LocalRepo::open(&dir.path().join("repo")).expect("repo");
    repo.put("obj.age", bytes::Bytes::from(sealed.clone()))
        .expect("put");
    let header = seal::header_len(&sealed).expect("header");
    let prefix = sealed[..(header + 16) as usize].to_vec();
    let range = 8 << 20;
    g.bench_function("open 64 MiB by 8 MiB ranges", |b| {
        let mut buf = vec![0u8; range];
        b.iter(|| {
            let mut r = RangeOpener::new(
                &ids,
                &repo,
                "obj.age",
                sealed.len() as u64,
                prefix.clone(),
                range as u64 / seal::CHUNK * seal::SEALED_CHUNK,
            )
            .expect("open");
            for i in 0..(LEN / range) {
                r.read_at((i * range) as u64, &mut buf).expect("range");
            }
            black_box(buf[0])
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
