//! Fuzz the whole extraction path (decoder, ledger, directory writer) with arbitrary bytes.
//!
//! Each input is extracted with the library API into `<tmp>/target/inner`, a fresh directory
//! that already holds traps: `d -> ../../outside` (a directory symlink), `f ->
//! ../../outside/victim` (a file symlink), a regular file `existing` and a directory `db`.
//! Whatever the bytes, nothing outside `inner` may be created, changed or removed (the whole
//! temporary tree is snapshotted before and after), and extraction must agree with `verify`
//! (the same bytes through the inspector): a stream that `verify` refuses must not extract
//! successfully, and a stream that `verify` accepts may only fail to extract for a local
//! reason (a target error, not a format or ledger defect), never for a stream defect.
//!
//! `XBAGENT_FUZZ_ALL_TRAPS=1` adds two more traps, off by default because they hit known
//! defects at once: a hard link `h` to `outside/victim` (written through with --force or a
//! REWRITE chunk) and a FIFO `p` (opening it for writing blocks; run with `-timeout=10`).

#![no_main]

use std::collections::BTreeMap;
use std::fs;
use std::io::Cursor;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use xbagent::extract::{extract_reader, ExtractError, ExtractOptions};
use xbagent::format::{sparse_crc, DecodeOptions};
use xbagent::inspect::scan;
use xbagent::progress::Progress;
use xbagent::stream::error::StreamError;

#[derive(Debug, PartialEq, Eq)]
enum Entry {
    File(u32, Vec<u8>),
    Dir(u32),
    Link(PathBuf),
    Other(u32),
}

fn snapshot(root: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
    for e in fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        if p == skip {
            continue;
        }
        let md = fs::symlink_metadata(&p).unwrap();
        let mode = md.mode() & 0o7777;
        let ft = md.file_type();
        let entry = if ft.is_symlink() {
            Entry::Link(fs::read_link(&p).unwrap())
        } else if ft.is_dir() {
            snapshot(&p, skip, out);
            Entry::Dir(mode)
        } else if ft.is_file() {
            Entry::File(mode, fs::read(&p).unwrap())
        } else {
            Entry::Other(mode)
        };
        out.insert(p, entry);
    }
}

fn all_traps() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("XBAGENT_FUZZ_ALL_TRAPS").is_some_and(|v| v == "1"))
}

fn tmp_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fuzz_target!(|data: &[u8]| {
    let h = sparse_crc(&[], data);
    let tmp = tempfile::Builder::new()
        .prefix("xbagent-fuzz-")
        .tempdir_in(tmp_base())
        .unwrap();
    let root = tmp.path();
    let outside = root.join("outside");
    let inner = root.join("target/inner");
    fs::create_dir_all(outside.join("sub")).unwrap();
    fs::create_dir_all(inner.join("db")).unwrap();
    fs::write(outside.join("victim"), b"victim\n").unwrap();
    fs::set_permissions(outside.join("victim"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(outside.join("sub/g"), b"g\n").unwrap();
    fs::write(root.join("target/keep"), b"keep\n").unwrap();
    fs::write(inner.join("existing"), b"existing\n").unwrap();
    std::os::unix::fs::symlink("../../outside", inner.join("d")).unwrap();
    std::os::unix::fs::symlink("../../outside/victim", inner.join("f")).unwrap();
    if all_traps() {
        fs::hard_link(outside.join("victim"), inner.join("h")).unwrap();
        let st = std::process::Command::new("mkfifo")
            .arg(inner.join("p"))
            .status()
            .unwrap();
        assert!(st.success());
    }

    let mut before = BTreeMap::new();
    snapshot(root, &inner, &mut before);

    let mut opts = ExtractOptions::new(&inner);
    opts.writer.force = h & 1 != 0;
    opts.writer.threads = if h & 2 != 0 { 2 } else { 1 };
    opts.writer.max_open_files = if h & 4 != 0 { 1 } else { 512 };
    let progress = Progress::hidden();
    let res = extract_reader(Cursor::new(data), "fuzz input", &opts, &progress);

    let mut after = BTreeMap::new();
    snapshot(root, &inner, &mut after);
    assert_eq!(before, after, "the tree outside the target changed");

    let verdict = scan(
        Cursor::new(data),
        "fuzz input",
        DecodeOptions::default(),
        &progress,
    );
    match (&verdict.defect, &res) {
        (Some(d), Ok(_)) => panic!("verify refuses ({d}) but extract succeeded"),
        (None, Err(e)) => assert!(
            !matches!(
                e,
                ExtractError::Stream(StreamError::Format(_) | StreamError::Ledger(_))
            ),
            "verify accepts but extract failed on the stream: {e}"
        ),
        _ => {}
    }
});
