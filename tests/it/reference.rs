//! Interoperability with the reference tool: MariaDB 10.11's `mbstream`.
//!
//! Every test builds a source tree in a temporary directory, moves it through a stream made by
//! one tool and extracted by the other, and compares the result with the source, file by file
//! and byte by byte:
//! - `xbagent create` -> `mbstream -x`
//! - `mbstream -c` -> `xbagent extract` (from a pipe, and with `--parallel 4` from a file)
//! - `mbstream -c` -> `mbstream -x` (a sanity check of the trees themselves)
//! - the drop-in mode: `xbagent` called through symlinks named `mbstream` and `xbstream`.
//!
//! The trees: files of 0 and 1 bytes and around the reference's 10 MiB chunk size, a 30 MiB
//! file, 64 nested directory levels, 10,000 small files, and names with spaces, UTF-8 and
//! shell-special characters, up to the 511-byte path limit.
//!
//! `mbstream` is required: when it is missing these tests fail (they never skip). It comes with
//! Debian's `mariadb-backup` package, which `scripts/test` installs.
//!
//! Two quirks of `mbstream -x` shape the trees: it creates only one missing directory level
//! per file, and it refuses names beginning with `.`. So every directory holds a file (which
//! `xbagent create` and [`stream_order`] emit before descending into subdirectories), and no
//! name begins with a dot.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tempfile::TempDir;
use xbagent::format::{Chunk, ChunkBody, DecodeOptions, Decoder};

use crate::support::{noise, trees, XBAGENT};

const MIB: usize = 1024 * 1024;
/// The reference producers' largest payload chunk.
const REF_CHUNK: usize = 10 * MIB;
/// No single command in these tests should take anywhere near this long.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

/// The real `mbstream`, or a panic that says how to get it. Never a silent skip.
fn mbstream() -> &'static Path {
    static MBSTREAM: OnceLock<PathBuf> = OnceLock::new();
    MBSTREAM.get_or_init(|| {
        if let Some(p) = std::env::var_os("MBSTREAM") {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "MBSTREAM={} does not name a file (it should be MariaDB's mbstream)",
                p.display()
            );
            return p;
        }
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        dirs.extend(["/usr/bin", "/usr/local/bin", "/usr/sbin"].map(PathBuf::from));
        dirs.into_iter()
            .map(|d| d.join("mbstream"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "mbstream not found in PATH or /usr/bin: the reference tests need MariaDB's \
                     mbstream (10.11, Debian package 'mariadb-backup'). Run scripts/test as root, \
                     or `apt-get install mariadb-backup`, or set MBSTREAM=/path/to/mbstream."
                )
            })
    })
}

/// A running child whose stderr goes to an anonymous file, so it can never block on a pipe.
struct Proc {
    what: String,
    child: Child,
    stderr: File,
}

fn spawn(mut cmd: Command, what: &str, stdin: Stdio, stdout: Stdio) -> Proc {
    let stderr = tempfile::tempfile().expect("anonymous file for stderr");
    cmd.stdin(stdin)
        .stdout(stdout)
        .stderr(stderr.try_clone().expect("dup stderr file"));
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
    Proc {
        what: what.to_string(),
        child,
        stderr,
    }
}

impl Proc {
    /// Wait (with a timeout that kills the child) and return its status and stderr.
    fn wait(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "{} did not finish within {:?}; killed. stderr:\n{}",
                        self.what,
                        COMMAND_TIMEOUT,
                        read_all(&mut self.stderr)
                    );
                }
                Err(e) => panic!("waiting for {}: {e}", self.what),
            }
        };
        let err = read_all(&mut self.stderr);
        (status, err)
    }

    /// Wait and insist on exit status 0; return stderr.
    fn wait_ok(self) -> String {
        let what = self.what.clone();
        let (status, err) = self.wait();
        assert!(
            status.success(),
            "{what} failed with {status}; stderr:\n{err}"
        );
        err
    }
}

fn read_all(f: &mut File) -> String {
    let mut s = Vec::new();
    f.rewind().ok();
    f.read_to_end(&mut s).ok();
    String::from_utf8_lossy(&s).into_owned()
}

fn file_in(path: &Path) -> Stdio {
    Stdio::from(File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display())))
}

fn file_out(path: &Path) -> Stdio {
    Stdio::from(File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display())))
}

/// Feed `path` to the child's stdin from a thread, through a pipe, in odd-sized writes, so
/// the reader sees short reads that split chunks at arbitrary places.
fn feed_through_pipe(p: &mut Proc, path: &Path) -> std::thread::JoinHandle<()> {
    let mut stdin = p.child.stdin.take().expect("child stdin is piped");
    let mut src = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_521];
        loop {
            let n = src.read(&mut buf).expect("read stream file");
            if n == 0 {
                break;
            }
            if let Err(e) = stdin.write_all(&buf[..n]) {
                // The reader stopped early; its exit status and stderr tell why.
                assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "writing to child: {e}");
                break;
            }
        }
    })
}

/// `xbagent create -C src entries... > out`
fn xb_create(src: &Path, entries: &[PathBuf], out: &Path) {
    xb_create_with(&[], src, entries, out);
}

/// `xbagent create ARGS -C src entries... > out`
fn xb_create_with(args: &[&str], src: &Path, entries: &[PathBuf], out: &Path) {
    let mut cmd = Command::new(XBAGENT);
    cmd.arg("create")
        .args(args)
        .arg("-C")
        .arg(src)
        .args(entries);
    let what = format!("xbagent create {}", args.join(" "));
    spawn(cmd, &what, Stdio::null(), file_out(out)).wait_ok();
}

/// `xbagent extract -C dst [args] < stream`, the stream arriving through a pipe.
fn xb_extract_pipe(stream: &Path, dst: &Path, args: &[&str]) {
    let mut cmd = Command::new(XBAGENT);
    cmd.arg("extract").arg("-C").arg(dst).args(args);
    let mut p = spawn(
        cmd,
        "xbagent extract (stdin)",
        Stdio::piped(),
        Stdio::null(),
    );
    let feeder = feed_through_pipe(&mut p, stream);
    p.wait_ok();
    feeder.join().expect("feeder thread");
}

/// `xbagent extract -C dst [args] STREAM`
fn xb_extract_file(stream: &Path, dst: &Path, args: &[&str]) {
    let mut cmd = Command::new(XBAGENT);
    cmd.arg("extract").arg("-C").arg(dst).args(args).arg(stream);
    spawn(cmd, "xbagent extract FILE", Stdio::null(), Stdio::null()).wait_ok();
}

/// `mbstream -c FILES... > out`, run in `src`. Split into several concatenated streams only if
/// the argument list would be too long for one exec.
fn mb_create(src: &Path, files: &[PathBuf], out: &Path) {
    mb_create_with(mbstream(), "mbstream -c", src, files, out);
}

fn mb_create_with(tool: &Path, what: &str, src: &Path, files: &[PathBuf], out: &Path) {
    const ARG_BUDGET: usize = 512 * 1024; // ARG_MAX is 2 MiB on Linux; stay far below.
    File::create(out).unwrap_or_else(|e| panic!("create {}: {e}", out.display()));
    let mut start = 0;
    while start < files.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < files.len() && (end == start || bytes < ARG_BUDGET) {
            bytes += files[end].as_os_str().len() + 1 + std::mem::size_of::<usize>();
            end += 1;
        }
        let mut cmd = Command::new(tool);
        cmd.current_dir(src).arg("-c").args(&files[start..end]);
        let sink = fs::OpenOptions::new().append(true).open(out).unwrap();
        spawn(cmd, what, Stdio::null(), Stdio::from(sink)).wait_ok();
        start = end;
    }
}

/// `mbstream -x -C dst < stream`. mbstream exits 0 even when it fails to create a file, so the
/// caller must compare trees; its stderr is returned for the failure message.
fn mb_extract(stream: &Path, dst: &Path) -> String {
    fs::create_dir_all(dst).unwrap();
    let mut cmd = Command::new(mbstream());
    cmd.arg("-x").arg("-C").arg(dst);
    spawn(cmd, "mbstream -x", file_in(stream), Stdio::null()).wait_ok()
}

// ---------------------------------------------------------------------------------------------
// Content
// ---------------------------------------------------------------------------------------------

/// Deterministic, incompressible enough; the seed is spread so that small seeds differ at once.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), len)
}

/// The big files, generated once per test process: (relative path, content).
fn big_files() -> &'static [(&'static str, Vec<u8>)] {
    static BIG: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    BIG.get_or_init(|| {
        let mut thirty = random_bytes(6, 30 * MIB);
        // Zero runs (in the middle and at the very end) catch extractors that turn zeros into
        // holes and then forget the file's length.
        thirty[12 * MIB..13 * MIB].fill(0);
        let n = thirty.len();
        thirty[n - 4096..].fill(0);
        vec![
            ("bigdb/empty.ibd", Vec::new()),
            ("bigdb/one.ibd", random_bytes(1, 1)),
            ("bigdb/ten_mib_minus_1.ibd", random_bytes(2, REF_CHUNK - 1)),
            ("bigdb/ten_mib.ibd", random_bytes(3, REF_CHUNK)),
            ("bigdb/ten_mib_plus_1.ibd", random_bytes(4, REF_CHUNK + 1)),
            ("bigdb/thirty_mib.ibd", thirty),
            ("ibdata1", random_bytes(7, 3 * MIB + 5)),
        ]
    })
}

fn write_file(root: &Path, rel: &str, content: &[u8]) {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    }
    fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

/// A source tree in a temporary directory.
struct Tree {
    dir: TempDir,
}

impl Tree {
    fn new(build: impl FnOnce(&Path)) -> Tree {
        let dir = tempfile::Builder::new()
            .prefix("xbagent-ref-src-")
            .tempdir()
            .unwrap();
        build(dir.path());
        Tree { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Top-level names, the arguments for `xbagent create`.
    fn entries(&self) -> Vec<PathBuf> {
        let mut v: Vec<OsString> = fs::read_dir(self.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        v.into_iter().map(PathBuf::from).collect()
    }

    /// Every regular file, relative, in stream order (see [`stream_order`]).
    fn files(&self) -> Vec<PathBuf> {
        stream_order(self.root())
    }
}

/// Files of a tree in the order a producer must emit them for `mbstream -x`: each directory's
/// files (sorted by name bytes) before its subdirectories.
fn stream_order(root: &Path) -> Vec<PathBuf> {
    fn rec(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        let mut names: Vec<(OsString, bool)> = fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), e.file_type().unwrap().is_dir())
            })
            .collect();
        names.sort_by(|a, b| (a.1, a.0.as_bytes()).cmp(&(b.1, b.0.as_bytes())));
        for (name, is_dir) in names {
            let r = rel.join(&name);
            if is_dir {
                rec(root, &r, out);
            } else {
                out.push(r);
            }
        }
    }
    let mut out = Vec::new();
    rec(root, Path::new(""), &mut out);
    out
}

fn big_tree() -> Tree {
    Tree::new(|root| {
        for (rel, content) in big_files() {
            write_file(root, rel, content);
        }
    })
}

/// 64 nested directory levels, with a file at every level.
const DEPTH: usize = 64;

fn deep_tree() -> Tree {
    Tree::new(|root| {
        let mut dir = PathBuf::new();
        for level in 0..DEPTH {
            dir.push(format!("d{level:02}"));
            let rel = dir.join(format!("f{level:02}"));
            let content = random_bytes(100 + level as u64, level * 37 % 1000);
            write_file(root, rel.to_str().unwrap(), &content);
        }
    })
}

/// 10,000 small files in ten directories, sizes 0 to 600 bytes.
const MANY: usize = 10_000;

fn many_tree() -> Tree {
    Tree::new(|root| {
        for d in 0..10 {
            fs::create_dir(root.join(format!("db{d}"))).unwrap();
        }
        let content = random_bytes(42, 600);
        for i in 0..MANY {
            let rel = format!("db{}/t{i:05}.ibd", i % 10);
            let len = i * 7 % 601;
            // Start the content at a different place for each file so no two are equal.
            let off = i % 600;
            let body: Vec<u8> = content[off..]
                .iter()
                .chain(content.iter())
                .take(len)
                .copied()
                .collect();
            fs::write(root.join(rel), body).unwrap();
        }
    })
}

/// Names with spaces, UTF-8, shell-special and control characters, a 255-byte file name, and
/// a 511-byte path (the longest the reference accepts), plus one file just over 10 MiB.
///
/// `mbstream -x` strips trailing spaces from the names it creates (the stream from
/// `mbstream -c` carries `"trailing space "`, the disk gets `"trailing space"`), so a name
/// ending in a space is only in the tree when `xbagent` extracts: [`names_tree_for_xbagent`].
fn names_tree() -> Tree {
    names_tree_with(false)
}

/// [`names_tree`] plus names ending in spaces, which only `xbagent extract` gets right.
fn names_tree_for_xbagent() -> Tree {
    names_tree_with(true)
}

fn names_tree_with(trailing_spaces: bool) -> Tree {
    let long_name = format!("{}x", "é".repeat(127)); // 255 bytes: NAME_MAX
    let long_dir = "L".repeat(255);
    let long_path = format!("{long_dir}/{long_name}");
    assert_eq!(long_path.len(), 511);
    let mut names: Vec<String> = vec![
        "with space".into(),
        " leading space".into(),
        "two  spaces".into(),
        "naïve café".into(),
        "日本語のテーブル.ibd".into(),
        "emoji 🎉 file".into(),
        "q?*:\\back[slash]".into(),
        "quote'single\"double`back".into(),
        "dollar$HOME;semi&amp|pipe".into(),
        "tab\tin name".into(),
        "percent%s%n".into(),
        "a..b".into(),
        "x.".into(),
        "dir with space/-dash".into(),
        "dir with space/ünïcödé".into(),
        "dir with space/sub dir ñ/f".into(),
        "dir with space/sub dir ñ/deeper 🌲/leaf".into(),
        "Ωmega/αβγ.frm".into(),
        "Ωmega/Ωmega".into(),
        long_name,
        long_path,
    ];
    if trailing_spaces {
        names.push("trailing space ".into());
        names.push("dir with space/trailing spaces  ".into());
        names.push("dir with trailing space /f".into());
    }
    Tree::new(|root| {
        for (i, rel) in names.iter().enumerate() {
            write_file(root, rel, &random_bytes(1000 + i as u64, i * 13));
        }
        write_file(
            root,
            "big 🎉 dir/ten mib plus 1 é.ibd",
            &random_bytes(9, REF_CHUNK + 1),
        );
    })
}

// ---------------------------------------------------------------------------------------------
// Tree comparison
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn assert_same_tree(expected: &Path, actual: &Path, what: &str, tool_stderr: &str) {
    if let Err(diff) = trees::diff(
        &trees::tree(expected),
        &trees::tree(actual),
        expected,
        actual,
    ) {
        panic!(
            "{what}: the extracted tree differs from the source: {diff}\n  source:    {}\n  extracted: {}\n  \
             extractor stderr:\n{tool_stderr}",
            expected.display(),
            actual.display()
        );
    }
}

/// A scratch directory for streams and extracted trees.
fn scratch() -> TempDir {
    tempfile::Builder::new()
        .prefix("xbagent-ref-")
        .tempdir()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The directions
// ---------------------------------------------------------------------------------------------

/// (a) `xbagent create` -> `mbstream -x`.
fn check_create_then_mbstream(tree: &Tree) {
    let tmp = scratch();
    let stream = tmp.path().join("stream.xbs");
    let dst = tmp.path().join("dst");
    xb_create(tree.root(), &tree.entries(), &stream);
    let err = mb_extract(&stream, &dst);
    assert_same_tree(tree.root(), &dst, "xbagent create | mbstream -x", &err);
}

/// (b) `mbstream -c` -> `xbagent extract` from a pipe.
fn check_mbstream_then_extract(tree: &Tree) {
    let tmp = scratch();
    let stream = tmp.path().join("stream.xbs");
    let dst = tmp.path().join("dst");
    mb_create(tree.root(), &tree.files(), &stream);
    xb_extract_pipe(&stream, &dst, &[]);
    assert_same_tree(tree.root(), &dst, "mbstream -c | xbagent extract", "");
}

/// (c) `mbstream -c` -> `xbagent extract --parallel 4 FILE`.
fn check_mbstream_then_parallel_extract(tree: &Tree) {
    let tmp = scratch();
    let stream = tmp.path().join("stream.xbs");
    let dst = tmp.path().join("dst");
    mb_create(tree.root(), &tree.files(), &stream);
    xb_extract_file(&stream, &dst, &["--parallel", "4"]);
    assert_same_tree(
        tree.root(),
        &dst,
        "mbstream -c > f; xbagent extract --parallel 4 f",
        "",
    );
}

/// The trees are valid for the reference itself: `mbstream -c` -> `mbstream -x`.
fn check_reference_roundtrip(tree: &Tree) {
    let tmp = scratch();
    let stream = tmp.path().join("stream.xbs");
    let dst = tmp.path().join("dst");
    mb_create(tree.root(), &tree.files(), &stream);
    let err = mb_extract(&stream, &dst);
    assert_same_tree(
        tree.root(),
        &dst,
        "sanity check of the test tree: mbstream -c | mbstream -x",
        &err,
    );
}

#[test]
fn reference_roundtrip_sanity() {
    for tree in [big_tree(), deep_tree(), many_tree(), names_tree()] {
        check_reference_roundtrip(&tree);
    }
}

/// One test per direction and tree, named `DIRECTION::TREE`.
macro_rules! each_tree {
    ($($direction:ident: $check:ident, $names:ident;)*) => {$(
        mod $direction {
            use super::*;

            #[test]
            fn big_files() {
                $check(&big_tree());
            }

            #[test]
            fn deep_tree() {
                $check(&super::deep_tree());
            }

            #[test]
            fn many_files() {
                $check(&many_tree());
            }

            #[test]
            fn odd_names() {
                $check(&$names());
            }
        }
    )*};
}

each_tree! {
    create_then_mbstream_extract: check_create_then_mbstream, names_tree;
    mbstream_create_then_extract: check_mbstream_then_extract, names_tree_for_xbagent;
    mbstream_create_then_parallel_extract: check_mbstream_then_parallel_extract,
        names_tree_for_xbagent;
}

/// Several `mbstream -c` runs concatenated are one valid stream (that is how a file list too
/// long for one command line is streamed): `xbagent extract` reads it whole.
#[test]
fn concatenated_mbstream_streams_extract() {
    let tree = many_tree();
    let tmp = scratch();
    let stream = tmp.path().join("stream.xbs");
    {
        let mut out = File::create(&stream).unwrap();
        for part in tree.files().chunks(MANY / 7 + 1) {
            let piece = tmp.path().join("piece.xbs");
            mb_create(tree.root(), part, &piece);
            io::copy(&mut File::open(&piece).unwrap(), &mut out).unwrap();
        }
    }
    let dst = tmp.path().join("dst");
    xb_extract_file(&stream, &dst, &["--parallel", "4"]);
    assert_same_tree(tree.root(), &dst, "7 concatenated mbstream -c streams", "");
}

// ---------------------------------------------------------------------------------------------
// (d) Chunk layout
// ---------------------------------------------------------------------------------------------

fn decode_all(bytes: &[u8], what: &str) -> Vec<Chunk> {
    let mut dec = Decoder::new(DecodeOptions::default());
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(c)) => out.push(c),
            Ok(None) => break,
            Err(e) => panic!("{what}: decode error after {} chunks: {e}", out.len()),
        }
    }
    match dec.decode_eof(&mut buf) {
        Ok(None) => {}
        Ok(Some(c)) => panic!("{what}: decode_eof found a chunk decode missed: {c:?}"),
        Err(e) => panic!("{what}: at end of input: {e}"),
    }
    out
}

/// Per path: the chunks, in order, as ('P', offset, len) or ('E', 0, 0).
type Layout = BTreeMap<String, Vec<(char, u64, u64)>>;

/// Check that a stream is plain, reference-shaped xbstream for the files of `tree`: only P and
/// E chunks with no flags, payloads of 1 to 10 MiB, contiguous from offset 0, one E last, and
/// every file's data complete. Returns the layout.
fn check_layout(stream: &[u8], tree: &Tree, what: &str) -> Layout {
    let chunks = decode_all(stream, what);
    let mut layout = Layout::new();
    for c in &chunks {
        let path = String::from_utf8(c.path.to_vec()).unwrap();
        assert_eq!(c.flags, 0, "{what}: flags on a chunk of '{path}'");
        let entry = match &c.body {
            ChunkBody::Payload { offset, data } => ('P', *offset, data.len() as u64),
            ChunkBody::Eof => ('E', 0, 0),
            other => panic!("{what}: unexpected chunk for '{path}': {other:?}"),
        };
        layout.entry(path).or_default().push(entry);
    }
    let files = tree.files();
    assert_eq!(
        layout.len(),
        files.len(),
        "{what}: the stream names {} paths, the tree has {} files",
        layout.len(),
        files.len()
    );
    for rel in files {
        let path = rel.to_str().unwrap();
        let size = fs::metadata(tree.root().join(&rel)).unwrap().len();
        let list = layout
            .get(path)
            .unwrap_or_else(|| panic!("{what}: no chunk for '{path}'"));
        assert_eq!(
            list.last().map(|e| e.0),
            Some('E'),
            "{what}: '{path}' does not end with E: {list:?}"
        );
        assert_eq!(
            list.iter().filter(|e| e.0 == 'E').count(),
            1,
            "{what}: '{path}' has several E chunks: {list:?}"
        );
        if size == 0 {
            assert_eq!(
                list,
                &[('E', 0, 0)],
                "{what}: 0-byte '{path}' must be a lone E"
            );
        }
        let mut next = 0u64;
        for &(t, off, len) in &list[..list.len() - 1] {
            assert_eq!(t, 'P', "{what}: '{path}': {list:?}");
            assert!(
                len as usize <= REF_CHUNK,
                "{what}: '{path}' has a payload of {len} bytes at file offset {off}, above 10 MiB"
            );
            assert!(
                len > 0,
                "{what}: '{path}' has an empty payload chunk at {off}"
            );
            assert_eq!(
                off, next,
                "{what}: '{path}': payloads not contiguous: {list:?}"
            );
            next += len;
        }
        assert_eq!(
            next, size,
            "{what}: '{path}' carries {next} bytes of {size}"
        );
    }
    layout
}

#[test]
fn create_chunk_layout_matches_reference_limits() {
    let tree = big_tree();
    let tmp = scratch();
    let ours = tmp.path().join("ours.xbs");
    let theirs = tmp.path().join("theirs.xbs");
    xb_create(tree.root(), &tree.entries(), &ours);
    mb_create(tree.root(), &tree.files(), &theirs);
    // The default (2 MiB) stays within the limits; with --chunk-size 10MiB each file is cut
    // exactly as the reference cuts it.
    check_layout(&fs::read(&ours).unwrap(), &tree, "xbagent create");
    xb_create_with(
        &["--chunk-size", "10MiB"],
        tree.root(),
        &tree.entries(),
        &ours,
    );

    let our_layout = check_layout(&fs::read(&ours).unwrap(), &tree, "xbagent create");
    // The same checks hold for the reference's own output (a check of the checks).
    let their_layout = check_layout(&fs::read(&theirs).unwrap(), &tree, "mbstream -c");

    // With 10 MiB chunks each file is cut like the reference cuts it.
    for (path, theirs) in &their_layout {
        let ours = &our_layout[path];
        let n_ours = ours.iter().filter(|e| e.0 == 'P').count();
        let n_theirs = theirs.iter().filter(|e| e.0 == 'P').count();
        assert_eq!(
            n_ours, n_theirs,
            "'{path}': xbagent create wrote {n_ours} payload chunks, mbstream -c {n_theirs}: \
             ours {ours:?}, theirs {theirs:?}"
        );
    }
}

/// Our `create` on the odd names: paths in the stream are exactly the relative paths,
/// with no leading `./`, up to the 511-byte limit.
#[test]
fn create_stream_paths_are_plain_relative() {
    let tree = names_tree();
    let tmp = scratch();
    let ours = tmp.path().join("ours.xbs");
    xb_create(tree.root(), &tree.entries(), &ours);
    let layout = check_layout(&fs::read(&ours).unwrap(), &tree, "xbagent create (names)");
    assert!(
        layout.keys().any(|p| p.len() == 511),
        "the 511-byte path is missing"
    );
    for p in layout.keys() {
        assert!(!p.starts_with("./") && !p.starts_with('/'), "path {p:?}");
    }
}

/// `xbagent list --json` and `xbagent verify` on a real `mbstream -c` stream.
#[test]
fn list_and_verify_read_mbstream_output() {
    let tree = big_tree();
    let tmp = scratch();
    let theirs = tmp.path().join("theirs.xbs");
    mb_create(tree.root(), &tree.files(), &theirs);
    let bytes = fs::read(&theirs).unwrap();
    let chunks = decode_all(&bytes, "mbstream -c");

    let out = tmp.path().join("list.json");
    let mut cmd = Command::new(XBAGENT);
    cmd.arg("list").arg("--json").arg(&theirs);
    spawn(cmd, "xbagent list --json", Stdio::null(), file_out(&out)).wait_ok();
    let text = fs::read_to_string(&out).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("xbagent list --json printed invalid JSON ({e}):\n{text}"));
    assert_eq!(
        v["chunks"].as_u64(),
        Some(chunks.len() as u64),
        "total chunks in {v}"
    );
    let files = v["files"].as_array().expect("\"files\" array");
    assert_eq!(files.len(), tree.files().len(), "files in {text}");
    for rel in tree.files() {
        let path = rel.to_str().unwrap();
        let size = fs::metadata(tree.root().join(&rel)).unwrap().len();
        let f = files
            .iter()
            .find(|f| f["path"] == path)
            .unwrap_or_else(|| panic!("list --json lacks '{path}': {text}"));
        assert_eq!(f["size"].as_u64(), Some(size), "size of '{path}': {f}");
        assert_eq!(
            f["data_bytes"].as_u64(),
            Some(size),
            "data_bytes of '{path}': {f}"
        );
        assert_eq!(f["state"], "complete", "state of '{path}': {f}");
        let all = chunks
            .iter()
            .filter(|c| &c.path[..] == path.as_bytes())
            .count() as u64;
        // Counting E or not is the lister's choice; either is consistent with the stream.
        let n = f["chunks"].as_u64().unwrap_or(u64::MAX);
        assert!(
            n == all || n + 1 == all,
            "chunks of '{path}': list says {n}, the stream has {all} including E: {f}"
        );
    }

    let mut cmd = Command::new(XBAGENT);
    cmd.arg("verify").arg(&theirs);
    spawn(cmd, "xbagent verify", Stdio::null(), Stdio::null()).wait_ok();
}

// ---------------------------------------------------------------------------------------------
// (e) Drop-in mode
// ---------------------------------------------------------------------------------------------

fn drop_in(name: &str) {
    let tree = names_tree();
    let tmp = scratch();
    let link = tmp.path().join(name);
    std::os::unix::fs::symlink(XBAGENT, &link).unwrap();
    let files = tree.files();

    // `<link> -c FILES > s` (in the source directory), then the reference extracts it.
    let s1 = tmp.path().join("s1.xbs");
    mb_create_with(
        &link,
        &format!("{name} -c (xbagent)"),
        tree.root(),
        &files,
        &s1,
    );
    let d1 = tmp.path().join("d1");
    let err = mb_extract(&s1, &d1);
    assert_same_tree(tree.root(), &d1, &format!("{name} -c | mbstream -x"), &err);

    // The reference creates, `<link> -x -C DIR < s` extracts.
    let s2 = tmp.path().join("s2.xbs");
    mb_create(tree.root(), &files, &s2);
    let d2 = tmp.path().join("d2");
    fs::create_dir(&d2).unwrap();
    let mut cmd = Command::new(&link);
    cmd.arg("-x").arg("-C").arg(&d2);
    let err = spawn(cmd, &format!("{name} -x -C"), file_in(&s2), Stdio::null()).wait_ok();
    assert_same_tree(
        tree.root(),
        &d2,
        &format!("mbstream -c | {name} -x -C DIR"),
        &err,
    );

    // `<link> -x` with no -C extracts into the current directory; `-p 4` is accepted.
    let d3 = tmp.path().join("d3");
    fs::create_dir(&d3).unwrap();
    let mut cmd = Command::new(&link);
    cmd.current_dir(&d3).arg("-x").arg("-p").arg("4");
    let err = spawn(cmd, &format!("{name} -x -p 4"), file_in(&s2), Stdio::null()).wait_ok();
    assert_same_tree(
        tree.root(),
        &d3,
        &format!("mbstream -c | {name} -x -p 4 (cwd)"),
        &err,
    );

    // `<link> -C SRC -c FILES` streams relative to SRC, like the reference's -C.
    let s4 = tmp.path().join("s4.xbs");
    let mut cmd = Command::new(&link);
    cmd.current_dir(tmp.path())
        .arg("-C")
        .arg(tree.root())
        .arg("-c")
        .args(&files);
    spawn(
        cmd,
        &format!("{name} -C SRC -c"),
        Stdio::null(),
        file_out(&s4),
    )
    .wait_ok();
    let d4 = tmp.path().join("d4");
    let err = mb_extract(&s4, &d4);
    assert_same_tree(
        tree.root(),
        &d4,
        &format!("{name} -C SRC -c | mbstream -x"),
        &err,
    );
}

#[test]
fn drop_in_as_mbstream() {
    drop_in("mbstream");
}

#[test]
fn drop_in_as_xbstream() {
    drop_in("xbstream");
}
