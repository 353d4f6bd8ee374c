//! Behaviour of `xbagent extract` and `create` on streams built by the tests: holes, MariaDB
//! seek/remove/rename/rewrite, the bounded open-file table, parallel writers, verbose output.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use xbagent::format::{SparseEntry, FLAG_REWRITE};

use crate::support::cli::{run, wait_with_timeout, Out};
use crate::support::stream::Stream;
use crate::support::{s as p, xb};

/// `xbagent ARGS`, with `stdin_file` as standard input (none if `None`).
fn xbagent(args: &[&str], stdin_file: Option<&Path>) -> Out {
    let mut cmd = xb(args);
    match stdin_file {
        Some(f) => {
            cmd.stdin(fs::File::open(f).expect("open stream"));
            Out::from_output(format!("{cmd:?}"), cmd.output().expect("run xbagent"))
        }
        None => run(cmd),
    }
}

/// `xbagent extract EXTRA -C dst stream`, which must succeed.
fn extract_ok(dst: &Path, stream: &Path, extra: &[&str]) {
    let mut args = vec!["extract"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-C", p(dst), p(stream)]);
    xbagent(&args, None).code(0);
}

/// Write `s` to `DIR/s.xb`; return its path.
fn stream_file(dir: &Path, s: &[u8]) -> PathBuf {
    let stream = dir.join("s.xb");
    fs::write(&stream, s).unwrap();
    stream
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn percona_sparse_chunks_leave_real_holes() {
    let t = tempfile::tempdir().unwrap();
    let stream = t.path().join("s.xb");
    let mut s = Stream::new();
    let a = pattern(4096, 1);
    let b = pattern(4096, 2);
    // 4 KiB data, 1 MiB hole, 4 KiB data, then a trailing 1 MiB hole.
    let map = [
        SparseEntry { skip: 0, len: 4096 },
        SparseEntry {
            skip: 1 << 20,
            len: 4096,
        },
        SparseEntry {
            skip: 1 << 20,
            len: 0,
        },
    ];
    let data = [a.clone(), b.clone()].concat();
    s.sparse(b"db/t.ibd", 0, &map, &data).eof(b"db/t.ibd");
    fs::write(&stream, &*s).unwrap();
    let out = t.path().join("out");
    extract_ok(&out, &stream, &[]);
    let f = out.join("db/t.ibd");
    let bytes = fs::read(&f).unwrap();
    let size = 4096 + (1 << 20) + 4096 + (1 << 20);
    assert_eq!(bytes.len(), size, "trailing hole sets the size");
    assert_eq!(&bytes[..4096], &a[..]);
    assert!(bytes[4096..4096 + (1 << 20)].iter().all(|&x| x == 0));
    assert_eq!(&bytes[4096 + (1 << 20)..8192 + (1 << 20)], &b[..]);
    let md = fs::metadata(&f).unwrap();
    assert!(
        md.blocks() * 512 < (size as u64) / 2,
        "holes are real: {} bytes allocated for a {} byte file",
        md.blocks() * 512,
        size
    );
}

#[test]
fn create_sparse_round_trips_a_sparse_file_with_holes() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    let f = fs::File::create(src.join("sparse.ibd")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&pattern(8192, 3), 0).unwrap();
    f.write_all_at(&pattern(8192, 4), 16 << 20).unwrap();
    f.set_len(24 << 20).unwrap();
    drop(f);
    let stream = t.path().join("s.xb");
    let mut create = xb(&["create", "--sparse", "-C", p(&src), "sparse.ibd"]);
    create.stdout(fs::File::create(&stream).unwrap());
    run(create).code(0);
    assert!(
        fs::metadata(&stream).unwrap().len() < 1 << 20,
        "holes are not streamed"
    );
    let dst = t.path().join("dst");
    extract_ok(&dst, &stream, &[]);
    assert_eq!(
        fs::read(src.join("sparse.ibd")).unwrap(),
        fs::read(dst.join("sparse.ibd")).unwrap()
    );
    assert!(fs::metadata(dst.join("sparse.ibd")).unwrap().blocks() * 512 < 4 << 20);
}

#[test]
fn mariadb_seek_rename_remove_and_rewrite_are_applied_as_mbstream_applies_them() {
    let t = tempfile::tempdir().unwrap();
    let mut s = Stream::new();
    // Seek forward leaves a hole; the payload after it carries the seek's offset.
    s.payload(b"a", 0, b"0123456789")
        .seek(b"a", 100)
        .payload(b"a", 100, b"XY");
    // Seek back overwrites.
    s.seek(b"a", 2).payload(b"a", 2, b"ab").eof(b"a");
    // Rename a finished file and a directory; remove a directory tree.
    s.file(b"d/x", b"x").rename(b"d", b"e");
    s.file(b"gone/y", b"y").remove(b"gone");
    // REWRITE after E replaces the file.
    s.file(b"t.frm", b"old contents")
        .payload_flags(b"t.frm", FLAG_REWRITE, b"new")
        .header(&xbagent::format::ChunkHeader::Eof {
            path: b"t.frm",
            flags: FLAG_REWRITE,
        });
    let stream = stream_file(t.path(), &s);
    let (ours, theirs) = extract_both(t.path(), &stream, &["a", "e/x", "t.frm"]);
    let a = fs::read(ours.join("a")).unwrap();
    assert_eq!(a.len(), 102);
    assert_eq!(&a[..10], b"01ab456789");
    assert_eq!(fs::read(ours.join("t.frm")).unwrap(), b"new");
    assert!(!ours.join("d").exists());
    assert!(!ours.join("gone").exists());
    assert!(!theirs.join("gone").exists());
}

#[test]
fn many_interleaved_files_extract_through_a_small_open_file_table_on_parallel_writers() {
    let t = tempfile::tempdir().unwrap();
    let mut s = Stream::new();
    let files = 60;
    let rounds = 5;
    for r in 0..rounds {
        for f in 0..files {
            let data = pattern(1000 + f, (r * 7 + f) as u8);
            let off = (0..r).map(|_| (1000 + f) as u64).sum();
            s.payload(format!("dir{}/f{f}", f % 7).as_bytes(), off, &data);
        }
    }
    for f in 0..files {
        s.eof(format!("dir{}/f{f}", f % 7).as_bytes());
    }
    let stream = stream_file(t.path(), &s);
    let out = t.path().join("out");
    extract_ok(&out, &stream, &["--parallel", "3", "--max-open-files", "4"]);
    for f in 0..files {
        let got = fs::read(out.join(format!("dir{}/f{f}", f % 7))).unwrap();
        let want: Vec<u8> = (0..rounds)
            .flat_map(|r| pattern(1000 + f, (r * 7 + f) as u8))
            .collect();
        assert_eq!(got, want, "file {f}");
    }
}

#[test]
fn verbose_lists_each_file_as_it_completes_and_stdin_is_read_by_default() {
    let t = tempfile::tempdir().unwrap();
    let stream = stream_file(t.path(), Stream::new().file(b"one", b"1").eof(b"two"));
    let out = t.path().join("out");
    let o = xbagent(&["extract", "-v", "-C", p(&out)], Some(&stream));
    o.code(0);
    let err = &o.stderr;
    assert!(err.contains("one") && err.contains("two"), "{err}");
    assert_eq!(fs::read(out.join("two")).unwrap().len(), 0);
}

#[test]
fn a_stream_cut_at_a_chunk_boundary_fails_and_names_the_unfinished_files() {
    let t = tempfile::tempdir().unwrap();
    let mut s = Stream::new();
    s.file(b"done", b"1").payload(b"cut/ibdata1", 0, b"partial");
    let stream = stream_file(t.path(), &s);
    let o = xbagent(&["extract", "-C", p(&t.path().join("o")), p(&stream)], None);
    o.code(1)
        .says("lacking their end chunk")
        .says("cut/ibdata1");
    xbagent(&["verify", p(&stream)], None).code(1);
    let l = xbagent(&["list", "--json", p(&stream)], None);
    l.code(1);
    let json: serde_json::Value = serde_json::from_str(&l.stdout).unwrap();
    assert_eq!(json["files"][0]["state"], "complete");
    assert_eq!(json["files"][1]["state"], "open");
}

#[test]
fn create_fails_promptly_when_the_stream_cannot_be_written() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for i in 0..300 {
        let d = src.join(format!("d{}", i % 7));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("f{i}")), pattern(3000 + i, i as u8)).unwrap();
    }
    for parallel in ["1", "4"] {
        let full = fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let mut create = xb(&["create", "--parallel", parallel, "-C", p(&src), "."]);
        create.stdout(full).stderr(std::process::Stdio::piped());
        // A create that hangs on the full disk fails the test after 30 s.
        let out = wait_with_timeout(create.spawn().unwrap(), Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains("cannot write the stream"), "{err}");
    }
}

/// Extract `stream` with ours and with mbstream; both trees' files in `names` must be equal.
/// Returns (ours, theirs) directories.
fn extract_both(t: &Path, stream: &Path, names: &[&str]) -> (PathBuf, PathBuf) {
    let ours = t.join("ours");
    extract_ok(&ours, stream, &[]);
    let theirs = t.join("theirs");
    fs::create_dir(&theirs).unwrap();
    let mb = Command::new("mbstream")
        .arg("-x")
        .current_dir(&theirs)
        .stdin(fs::File::open(stream).unwrap())
        .output()
        .expect("mbstream (Debian package mariadb-backup) must be installed");
    assert!(
        mb.status.success(),
        "{}",
        String::from_utf8_lossy(&mb.stderr)
    );
    for name in names {
        let (a, b) = (
            fs::read(ours.join(name)).unwrap(),
            fs::read(theirs.join(name)).unwrap(),
        );
        assert!(
            a == b,
            "{name} differs from mbstream's result ({} / {} bytes)",
            a.len(),
            b.len()
        );
    }
    (ours, theirs)
}

/// A page of a fake tablespace: `data` bytes of pattern, then zeros (a compressed page).
fn page(data: usize, seed: u8) -> Vec<u8> {
    let mut p = pattern(data, seed);
    p.iter_mut().for_each(|b| *b |= 1); // no zero byte inside the data
    p.resize(16384, 0);
    p
}

#[test]
fn page_compressed_tablespaces_keep_their_holes_like_mbstream() {
    let t = tempfile::tempdir().unwrap();
    let mut pages: Vec<Vec<u8>> = (0..16).map(|i| page(300 + i * 700, i as u8)).collect();
    pages[5] = page(16384, 5); // a page that did not compress
    pages[7] = vec![0; 16384]; // an all-zero page
    let mut comp = pages.concat();
    let mut plain = comp.clone();
    // FSP_SPACE_FLAGS in page 0: full_crc32, 16 KiB pages, zlib (what MariaDB 10.11 writes)...
    comp[54..58].copy_from_slice(&0x35u32.to_be_bytes());
    // ...and the same without page compression.
    plain[54..58].copy_from_slice(&0x15u32.to_be_bytes());
    let mut s = Stream::new();
    s.payload(b"db/c.ibd", 0, &comp[..5 * 16384])
        .payload(b"db/c.ibd", 5 * 16384, &comp[5 * 16384..])
        .eof(b"db/c.ibd");
    s.file(b"db/p.ibd", &plain);
    // A page written in full, then rewritten as a compressed page after a seek back: the
    // first version's bytes past the new data must read as zeros.
    s.payload(b"db/r.ibd", 0, &comp[..16384])
        .payload(b"db/r.ibd", 16384, &page(16384, 9))
        .seek(b"db/r.ibd", 16384)
        .payload(b"db/r.ibd", 16384, &page(100, 10))
        .eof(b"db/r.ibd");
    let stream = stream_file(t.path(), &s);

    let (ours, theirs) = extract_both(t.path(), &stream, &["db/c.ibd", "db/p.ibd", "db/r.ibd"]);
    assert_eq!(fs::read(ours.join("db/c.ibd")).unwrap(), comp);
    let r = fs::read(ours.join("db/r.ibd")).unwrap();
    assert_eq!(r.len(), 32768);
    assert!(
        r[16384 + 100..].iter().all(|&b| b == 0),
        "rewritten page not zeroed"
    );
    let alloc = |d: &Path, n: &str| fs::metadata(d.join(n)).unwrap().blocks() * 512;
    let (ours_c, theirs_c) = (alloc(&ours, "db/c.ibd"), alloc(&theirs, "db/c.ibd"));
    // 16 pages: 1 data block each (4 KiB, up to 3 for the largest), 4 for the full page, 0
    // for the zero page; far below 256 KiB.
    assert!(
        ours_c <= 128 << 10,
        "page-compressed file not sparse: {ours_c} bytes allocated"
    );
    assert!(
        ours_c <= theirs_c,
        "ours allocates {ours_c} bytes, mbstream {theirs_c}"
    );
    assert!(
        alloc(&ours, "db/p.ibd") >= plain.len() as u64 - 16384,
        "a tablespace without page compression must be written in full (only the zero page may be skipped by the file system)"
    );
}

#[test]
fn large_writes_at_unaligned_offsets_land_exactly() {
    // Chunks of more than 1 MiB go through O_DIRECT in their aligned middle; heads and tails
    // at odd offsets go through the page cache. Both must end up where the stream says.
    let t = tempfile::tempdir().unwrap();
    let data = pattern(5 * (1 << 20) + 4321, 3);
    let cuts = [0, (1 << 20) + 123, 3 * (1 << 20) + 128 + 5, data.len()];
    let mut s = Stream::new();
    for w in cuts.windows(2) {
        s.payload(b"big", w[0] as u64, &data[w[0]..w[1]]);
    }
    s.eof(b"big");
    // Interleaved with a second file written in one aligned 2 MiB chunk.
    let other = pattern(2 << 20, 4);
    s.file(b"other", &other);
    let stream = stream_file(t.path(), &s);
    let (ours, _) = extract_both(t.path(), &stream, &["big", "other"]);
    assert!(fs::read(ours.join("big")).unwrap() == data);
    assert!(fs::read(ours.join("other")).unwrap() == other);
}
