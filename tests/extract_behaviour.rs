//! Behaviour of `xbagent extract` and `create` on streams built by the tests: holes, MariaDB
//! seek/remove/rename/rewrite, the bounded open-file table, parallel writers, verbose output.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

use xbagent::format::{
    encode_chunk, encode_eof, encode_payload, encode_sparse, Chunk, ChunkBody, SparseEntry,
    FLAG_REWRITE,
};

fn xbagent(args: &[&str], stdin_file: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xbagent"));
    cmd.args(args);
    if let Some(f) = stdin_file {
        cmd.stdin(fs::File::open(f).expect("open stream"));
    }
    cmd.output().expect("run xbagent")
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "xbagent failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chunk(path: &str, flags: u8, body: ChunkBody) -> Vec<u8> {
    let mut v = Vec::new();
    encode_chunk(
        &Chunk {
            stream_offset: 0,
            encoded_len: 0,
            flags,
            path: bytes::Bytes::copy_from_slice(path.as_bytes()),
            body,
        },
        &mut v,
    );
    v
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
    let mut s = Vec::new();
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
    encode_sparse(&mut s, b"db/t.ibd", 0, &map, &data);
    encode_eof(&mut s, b"db/t.ibd");
    fs::write(&stream, &s).unwrap();
    let out = t.path().join("out");
    ok(&xbagent(
        &[
            "extract",
            "-C",
            out.to_str().unwrap(),
            stream.to_str().unwrap(),
        ],
        None,
    ));
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
    let out = Command::new(env!("CARGO_BIN_EXE_xbagent"))
        .args([
            "create",
            "--sparse",
            "-C",
            src.to_str().unwrap(),
            "sparse.ibd",
        ])
        .stdout(fs::File::create(&stream).unwrap())
        .output()
        .unwrap();
    ok(&out);
    assert!(
        fs::metadata(&stream).unwrap().len() < 1 << 20,
        "holes are not streamed"
    );
    let dst = t.path().join("dst");
    ok(&xbagent(
        &[
            "extract",
            "-C",
            dst.to_str().unwrap(),
            stream.to_str().unwrap(),
        ],
        None,
    ));
    assert_eq!(
        fs::read(src.join("sparse.ibd")).unwrap(),
        fs::read(dst.join("sparse.ibd")).unwrap()
    );
    assert!(fs::metadata(dst.join("sparse.ibd")).unwrap().blocks() * 512 < 4 << 20);
}

#[test]
fn mariadb_seek_rename_remove_and_rewrite_are_applied_as_mbstream_applies_them() {
    let t = tempfile::tempdir().unwrap();
    let mut s = Vec::new();
    // Seek forward leaves a hole; the payload after it carries the seek's offset.
    encode_payload(&mut s, b"a", 0, b"0123456789");
    s.extend(chunk("a", 0, ChunkBody::Seek { offset: 100 }));
    encode_payload(&mut s, b"a", 100, b"XY");
    // Seek back overwrites.
    s.extend(chunk("a", 0, ChunkBody::Seek { offset: 2 }));
    encode_payload(&mut s, b"a", 2, b"ab");
    encode_eof(&mut s, b"a");
    // Rename a finished file and a directory; remove a directory tree.
    encode_payload(&mut s, b"d/x", 0, b"x");
    encode_eof(&mut s, b"d/x");
    s.extend(chunk("d", 0, ChunkBody::Rename { to: "e".into() }));
    encode_payload(&mut s, b"gone/y", 0, b"y");
    encode_eof(&mut s, b"gone/y");
    s.extend(chunk("gone", 0, ChunkBody::Remove));
    // REWRITE after E replaces the file.
    encode_payload(&mut s, b"t.frm", 0, b"old contents");
    encode_eof(&mut s, b"t.frm");
    s.extend(chunk(
        "t.frm",
        FLAG_REWRITE,
        ChunkBody::Payload {
            offset: 0,
            data: "new".into(),
        },
    ));
    s.extend(chunk("t.frm", FLAG_REWRITE, ChunkBody::Eof));
    let stream = t.path().join("s.xb");
    fs::write(&stream, &s).unwrap();

    let ours = t.path().join("ours");
    ok(&xbagent(
        &[
            "extract",
            "-C",
            ours.to_str().unwrap(),
            stream.to_str().unwrap(),
        ],
        None,
    ));
    let theirs = t.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    let mb = Command::new("mbstream")
        .arg("-x")
        .current_dir(&theirs)
        .stdin(fs::File::open(&stream).unwrap())
        .output()
        .expect("mbstream (Debian package mariadb-backup) must be installed");
    assert!(mb.status.success());
    for name in ["a", "e/x", "t.frm"] {
        assert_eq!(
            fs::read(ours.join(name)).unwrap(),
            fs::read(theirs.join(name)).unwrap(),
            "{name} differs from mbstream's result"
        );
    }
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
    let mut s = Vec::new();
    let files = 60;
    let rounds = 5;
    for r in 0..rounds {
        for f in 0..files {
            let data = pattern(1000 + f, (r * 7 + f) as u8);
            let off = (0..r).map(|_| (1000 + f) as u64).sum();
            encode_payload(&mut s, format!("dir{}/f{f}", f % 7).as_bytes(), off, &data);
        }
    }
    for f in 0..files {
        encode_eof(&mut s, format!("dir{}/f{f}", f % 7).as_bytes());
    }
    let stream = t.path().join("s.xb");
    fs::write(&stream, &s).unwrap();
    let out = t.path().join("out");
    let o = xbagent(
        &[
            "extract",
            "--parallel",
            "3",
            "--max-open-files",
            "4",
            "-C",
            out.to_str().unwrap(),
            stream.to_str().unwrap(),
        ],
        None,
    );
    ok(&o);
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
    let mut s = Vec::new();
    encode_payload(&mut s, b"one", 0, b"1");
    encode_eof(&mut s, b"one");
    encode_eof(&mut s, b"two");
    let stream = t.path().join("s.xb");
    fs::write(&stream, &s).unwrap();
    let out = t.path().join("out");
    let o = xbagent(
        &["extract", "-v", "-C", out.to_str().unwrap()],
        Some(&stream),
    );
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("one") && err.contains("two"), "{err}");
    assert_eq!(fs::read(out.join("two")).unwrap().len(), 0);
}

#[test]
fn a_stream_cut_at_a_chunk_boundary_fails_and_names_the_unfinished_files() {
    let t = tempfile::tempdir().unwrap();
    let mut s = Vec::new();
    encode_payload(&mut s, b"done", 0, b"1");
    encode_eof(&mut s, b"done");
    encode_payload(&mut s, b"cut/ibdata1", 0, b"partial");
    let stream = t.path().join("s.xb");
    fs::write(&stream, &s).unwrap();
    let o = xbagent(
        &[
            "extract",
            "-C",
            t.path().join("o").to_str().unwrap(),
            stream.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("lacking their end chunk") && err.contains("cut/ibdata1"),
        "{err}"
    );
    let v = xbagent(&["verify", stream.to_str().unwrap()], None);
    assert_eq!(v.status.code(), Some(1));
    let l = xbagent(&["list", "--json", stream.to_str().unwrap()], None);
    assert_eq!(l.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&l.stdout).unwrap();
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
        let mut child = Command::new(env!("CARGO_BIN_EXE_xbagent"))
            .args([
                "create",
                "--parallel",
                parallel,
                "-C",
                src.to_str().unwrap(),
                ".",
            ])
            .stdout(
                fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
            )
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > std::time::Duration::from_secs(30) {
                let _ = child.kill();
                panic!("create --parallel {parallel} hung on a full disk");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut err = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(3), "{err}");
        assert!(err.contains("cannot write the stream"), "{err}");
    }
}
