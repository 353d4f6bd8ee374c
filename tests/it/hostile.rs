//! Hostile archives against the real binary: `xbagent extract -C <tmp>/target/inner <file>`.
//!
//! Every case builds its archive in the test (with the library's encoder, or by hand where the
//! encoder would refuse), next to a sibling directory `<tmp>/outside` full of files, and checks:
//! - the exit status (1 for a bad stream, 3 for a refusal at the target, per the contract);
//! - one clear `xbagent: error:` line naming what is wrong (path, stream offset);
//! - nothing outside `<tmp>/target/inner` changed: every file, directory and symlink of the
//!   temporary tree is snapshotted (type, mode, bytes, link target, mtime) before and after,
//!   so anything created, deleted, written or chmod-ed outside shows up;
//! - for archives that are bad as streams, `xbagent verify` also fails and writes nothing.
//!
//! Layout of each sandbox:
//! ```text
//! <tmp>/archive.xbs            the archive under test
//! <tmp>/outside/{f,victim,x}   files that must never change
//! <tmp>/outside/sub/g
//! <tmp>/target/keep            a file next to the target directory
//! <tmp>/target/inner/          the target directory (-C)
//! ```

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xbagent::format::{ChunkHeader, SparseEntry, FLAG_IGNORABLE, FLAG_REWRITE};

use crate::support::cli::{run_timed, wait_with_timeout, Out};
use crate::support::stream::Stream;
use crate::support::XBAGENT as BIN;
const TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Sandbox and snapshots
// ---------------------------------------------------------------------------------------------

struct Sandbox {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    inner: PathBuf,
    outside: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    File {
        mode: u32,
        ino: u64,
        nlink: u64,
        mtime: (i64, i64),
        bytes: Vec<u8>,
    },
    Dir {
        mode: u32,
        mtime: (i64, i64),
    },
    Symlink {
        target: PathBuf,
    },
    Other {
        mode: u32,
    },
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().canonicalize().unwrap();
        let outside = root.join("outside");
        let inner = root.join("target/inner");
        fs::create_dir_all(outside.join("sub")).unwrap();
        fs::create_dir_all(&inner).unwrap();
        for (name, body, mode) in [
            ("outside/f", &b"outside f: must not change\n"[..], 0o644),
            ("outside/victim", b"victim: must not change\n", 0o600),
            ("outside/x", b"x\n", 0o640),
            ("outside/sub/g", b"g\n", 0o644),
            ("target/keep", b"keep\n", 0o644),
        ] {
            let p = root.join(name);
            fs::write(&p, body).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        }
        Sandbox {
            _tmp: tmp,
            root,
            inner,
            outside,
        }
    }

    /// Every entry of the temporary tree, except below the target directory unless `all`.
    fn snapshot(&self, all: bool) -> BTreeMap<PathBuf, Entry> {
        let mut out = BTreeMap::new();
        walk(&self.root, &self.root, &self.inner, all, &mut out);
        out
    }

    fn archive(&self, bytes: &[u8]) -> PathBuf {
        let p = self.root.join("archive.xbs");
        fs::write(&p, bytes).unwrap();
        p
    }

    /// The absolute path of something in `outside`, as raw stream path bytes.
    fn abs_outside(&self, name: &str) -> Vec<u8> {
        self.outside.join(name).as_os_str().as_bytes().to_vec()
    }

    fn symlink(&self, link: &str, target: &str) {
        let p = self.inner.join(link);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        std::os::unix::fs::symlink(target, p).unwrap();
    }
}

fn walk(root: &Path, dir: &Path, skip: &Path, all: bool, out: &mut BTreeMap<PathBuf, Entry>) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        if !all && p == skip {
            continue;
        }
        let md = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let ft = md.file_type();
        let mtime = (md.mtime(), md.mtime_nsec());
        let mode = md.mode() & 0o7777;
        let e = if ft.is_symlink() {
            Entry::Symlink {
                target: fs::read_link(&p).unwrap(),
            }
        } else if ft.is_dir() {
            walk(root, &p, skip, all, out);
            Entry::Dir { mode, mtime }
        } else if ft.is_file() {
            Entry::File {
                mode,
                ino: md.ino(),
                nlink: md.nlink(),
                mtime,
                bytes: fs::read(&p).unwrap(),
            }
        } else {
            Entry::Other { mode }
        };
        out.insert(rel, e);
    }
}

fn describe(e: &Entry) -> String {
    match e {
        Entry::File {
            mode, ino, bytes, ..
        } => format!(
            "file mode {mode:o} inode {ino} bytes {:?}",
            String::from_utf8_lossy(bytes)
        ),
        other => format!("{other:?}"),
    }
}

/// What changed between two snapshots, one line per entry; empty if nothing.
fn tree_diff(before: &BTreeMap<PathBuf, Entry>, after: &BTreeMap<PathBuf, Entry>) -> String {
    let mut diff = String::new();
    for (p, e) in before {
        match after.get(p) {
            None => diff.push_str(&format!("  deleted: {}\n", p.display())),
            Some(a) if a != e => diff.push_str(&format!(
                "  changed: {}: {} -> {}\n",
                p.display(),
                describe(e),
                describe(a)
            )),
            _ => {}
        }
    }
    for p in after.keys() {
        if !before.contains_key(p) {
            diff.push_str(&format!("  created: {}\n", p.display()));
        }
    }
    diff
}

fn assert_same(before: &BTreeMap<PathBuf, Entry>, after: &BTreeMap<PathBuf, Entry>, what: &str) {
    let diff = tree_diff(before, after);
    assert!(
        diff.is_empty(),
        "{what}: the tree outside the target directory changed:\n{diff}"
    );
}

// ---------------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------------

fn run_bin(args: &[&OsStr], cwd: &Path, stdin: Option<&[u8]>) -> Out {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(cwd).env_remove("XBAGENT_LOG");
    run_timed(cmd, stdin, TIMEOUT)
}

fn extract(sb: &Sandbox, archive: &Path, extra: &[&str]) -> Out {
    let mut args: Vec<&OsStr> = vec![OsStr::new("extract")];
    args.extend(extra.iter().map(OsStr::new));
    args.push(OsStr::new("-C"));
    args.push(sb.inner.as_os_str());
    args.push(archive.as_os_str());
    run_bin(&args, &sb.root, None)
}

/// The one error line: `xbagent: error: ...`.
fn error_line(out: &Out) -> &str {
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("xbagent: error: "))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one error line, stderr was:\n{}",
        out.stderr
    );
    lines[0]
}

/// Extract `bytes` into a fresh sandbox prepared by `setup`; check the exit status, the message
/// (each of `words` in the error line) and that nothing outside the target changed. For stream defects (code 1) also check that
/// `verify` fails and writes nothing. Returns the sandbox for further checks.
fn check_case(
    name: &str,
    setup: &dyn Fn(&Sandbox),
    make: &dyn Fn(&Sandbox) -> Vec<u8>,
    extra: &[&str],
    code: i32,
    words: &[&str],
) -> Sandbox {
    let sb = Sandbox::new();
    setup(&sb);
    let bytes = make(&sb);
    let archive = sb.archive(&bytes);
    let before = sb.snapshot(false);
    let out = extract(&sb, &archive, extra);
    let after = sb.snapshot(false);
    assert_same(&before, &after, name);
    assert_eq!(
        out.exit(),
        code,
        "{name}: exit status; stderr:\n{}",
        out.stderr
    );
    if code != 0 {
        let line = error_line(&out);
        for w in words {
            assert!(line.contains(w), "{name}: {w:?} missing from: {line}");
        }
        assert!(!line.contains('\0'), "{name}: raw NUL in message");
    }
    if code == 1 {
        verify_fails(name, &sb, &archive, words);
    }
    sb
}

/// `verify` of a bad stream: exit 1, the same key words, nothing written anywhere (cwd is the
/// target directory, to catch stray writes there too).
fn verify_fails(name: &str, sb: &Sandbox, archive: &Path, words: &[&str]) {
    let before = sb.snapshot(true);
    let out = run_bin(
        &[OsStr::new("verify"), archive.as_os_str()],
        &sb.inner,
        None,
    );
    let after = sb.snapshot(true);
    assert_same(&before, &after, &format!("verify {name}"));
    assert_eq!(out.exit(), 1, "verify {name}: stderr:\n{}", out.stderr);
    let line = error_line(&out);
    for w in words {
        assert!(
            line.contains(w),
            "verify {name}: {w:?} missing from: {line}"
        );
    }
    assert!(
        !out.stdout.starts_with("ok"),
        "verify {name} printed ok: {}",
        out.stdout
    );
}

fn no_setup(_: &Sandbox) {}

// ---------------------------------------------------------------------------------------------
// Stream builders
// ---------------------------------------------------------------------------------------------

/// A good file `ok` (P + E) to start the stream with.
fn good_start() -> Stream {
    let mut v = Stream::new();
    v.file(b"ok", b"hello\n");
    v
}

/// The chunk kinds a path can travel in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    P,
    E,
    PerconaS,
    Seek,
    D,
    RSource,
    RTarget,
    Ignorable,
    RewriteP,
}

const KINDS: [Kind; 9] = [
    Kind::P,
    Kind::E,
    Kind::PerconaS,
    Kind::Seek,
    Kind::D,
    Kind::RSource,
    Kind::RTarget,
    Kind::Ignorable,
    Kind::RewriteP,
];

/// Append one chunk of `kind` carrying `path` (the R kinds pair it with the good file `ok`).
fn hostile_chunk(v: &mut Stream, kind: Kind, path: &[u8]) {
    let d = b"pwned\n";
    match kind {
        Kind::P => v.payload(path, 0, d),
        Kind::E => v.eof(path),
        Kind::PerconaS => v.sparse(path, 0, &[SparseEntry { skip: 2, len: 6 }], d),
        Kind::Seek => v.seek(path, 3),
        Kind::D => v.remove(path),
        Kind::RSource => v.rename(path, b"stolen"),
        Kind::RTarget => v.rename(b"ok", path),
        Kind::Ignorable => v.other(b'X', path, FLAG_IGNORABLE, d),
        Kind::RewriteP => v.payload_flags(path, FLAG_REWRITE, d),
    };
}

// ---------------------------------------------------------------------------------------------
// Path traversal in every chunk kind
// ---------------------------------------------------------------------------------------------

fn hostile_paths(sb: &Sandbox) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = [
        "../x",
        "../outside/f",
        "../../outside/f",
        "../../outside/victim",
        "../../outside",
        "a/../../x",
        "a/../../../outside/f",
        "./../x",
        "./x",
        ".",
        "..",
        "",
        "a//b",
        "a/",
    ]
    .iter()
    .map(|p| (p.to_string(), p.as_bytes().to_vec()))
    .collect();
    v.push(("absolute outside/f".into(), sb.abs_outside("f")));
    v.push((
        "absolute outside".into(),
        sb.outside.as_os_str().as_bytes().to_vec(),
    ));
    v.push(("/tmp".into(), b"/tmp".to_vec()));
    v.push(("NUL".into(), b"ok\0../../outside/f".to_vec()));
    v.push(("NUL only".into(), b"\0".to_vec()));
    v
}

fn traversal_cases(extra: &[&str]) {
    // Paths depend on the sandbox (absolute ones), so enumerate them from a throwaway one.
    let names: Vec<String> = hostile_paths(&Sandbox::new())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for kind in KINDS {
        for (i, pname) in names.iter().enumerate() {
            let at = good_start().len();
            let offset_words = format!("stream offset {at}");
            let make = |sb: &Sandbox| {
                let (_, path) = hostile_paths(sb).swap_remove(i);
                let mut v = good_start();
                hostile_chunk(&mut v, kind, &path);
                if matches!(kind, Kind::P | Kind::PerconaS | Kind::Seek | Kind::RewriteP) {
                    v.eof(&path);
                }
                v.bytes()
            };
            let sb = check_case(
                &format!("{kind:?} with path {pname:?} {extra:?}"),
                &no_setup,
                &make,
                extra,
                1,
                &["unsafe path", &offset_words],
            );
            // The good file before it was extracted; nothing else was.
            let names: Vec<_> = fs::read_dir(&sb.inner)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(
                names.iter().all(|n| n == "ok"),
                "{kind:?} {pname:?}: unexpected entries in target: {names:?}"
            );
        }
    }
}

#[test]
fn traversal_in_every_chunk_kind_is_refused() {
    traversal_cases(&[]);
}

/// One writer: chunks are written on the decoding thread (the path restore and receive use).
#[test]
fn traversal_in_every_chunk_kind_is_refused_with_one_writer() {
    traversal_cases(&["--parallel", "1"]);
}

#[test]
fn traversal_in_every_chunk_kind_is_refused_with_force_and_threads() {
    traversal_cases(&["--force", "--parallel", "4"]);
}

#[test]
fn unsafe_path_message_names_the_path() {
    check_case(
        "../x",
        &no_setup,
        &|_| Stream::new().payload(b"../x", 0, b"x").bytes(),
        &[],
        1,
        &["unsafe path '../x'", "stream offset 0", "'..'"],
    );
}

// ---------------------------------------------------------------------------------------------
// Symlinks already in the target directory
// ---------------------------------------------------------------------------------------------

fn file_stream(path: &[u8], flags: u8) -> Vec<u8> {
    let mut v = good_start();
    v.payload_flags(path, flags, b"pwned\n").eof(path);
    v.bytes()
}

const SYMLINK_WORDS: &[&str] = &["refusing to follow symlink", "stream offset"];

#[test]
fn directory_symlink_in_target_is_not_followed() {
    for force in [false, true] {
        let extra: &[&str] = if force { &["--force"] } else { &[] };
        for path in [
            &b"d/f"[..],
            b"d/victim",
            b"d/sub/g",
            b"d/newdir/new",
            b"d/sub/new",
        ] {
            let name = format!("{} force={force}", String::from_utf8_lossy(path));
            check_case(
                &name,
                &|sb| sb.symlink("d", "../../outside"),
                &|_| file_stream(path, 0),
                extra,
                3,
                &[SYMLINK_WORDS[0], "'d'", SYMLINK_WORDS[1]],
            );
        }
    }
}

#[test]
fn nested_directory_symlink_in_target_is_not_followed() {
    // inner/db is a real directory; inner/db/link points outside.
    check_case(
        "db/link/f",
        &|sb| sb.symlink("db/link", "../../../outside"),
        &|_| file_stream(b"db/link/f", 0),
        &["--parallel", "3"],
        3,
        &[SYMLINK_WORDS[0], "'db/link'"],
    );
}

#[test]
fn symlink_pointing_inside_target_is_not_followed_either() {
    let sb = check_case(
        "d -> real",
        &|sb| {
            fs::create_dir(sb.inner.join("real")).unwrap();
            sb.symlink("d", "real");
        },
        &|_| file_stream(b"d/f", 0),
        &[],
        3,
        SYMLINK_WORDS,
    );
    assert!(!sb.inner.join("real/f").exists());
}

#[test]
fn final_component_symlink_is_not_followed() {
    for (force, rewrite) in [(false, false), (true, false), (false, true), (true, true)] {
        let extra: &[&str] = if force { &["--force"] } else { &[] };
        let flags = if rewrite { FLAG_REWRITE } else { 0 };
        for target in ["../../outside/victim", "../../outside/nonexistent"] {
            let name = format!("f -> {target} force={force} rewrite={rewrite}");
            let sb = check_case(
                &name,
                &|sb| sb.symlink("f", target),
                &|_| file_stream(b"f", flags),
                extra,
                3,
                &[SYMLINK_WORDS[0], "'f'", SYMLINK_WORDS[1]],
            );
            assert!(
                !sb.outside.join("nonexistent").exists(),
                "{name}: created through a dangling symlink"
            );
        }
    }
}

#[test]
fn final_component_symlink_is_not_followed_for_an_empty_file() {
    // A lone E chunk creates an empty file: that too must not go through the link.
    for extra in [&[][..], &["--force"][..]] {
        check_case(
            "E only",
            &|sb| sb.symlink("f", "../../outside/victim"),
            &|_| Stream::new().eof(b"f").bytes(),
            extra,
            3,
            &[SYMLINK_WORDS[0], "'f'"],
        );
    }
}

#[test]
fn seek_on_a_symlink_is_not_followed() {
    check_case(
        "seek f",
        &|sb| sb.symlink("f", "../../outside/victim"),
        &|_| {
            let mut v = Stream::new();
            v.seek(b"f", 4).payload(b"f", 4, b"pwned").eof(b"f");
            v.bytes()
        },
        &["--force"],
        3,
        &[SYMLINK_WORDS[0], "'f'"],
    );
}

#[test]
fn remove_through_a_directory_symlink_is_refused() {
    for path in [&b"d/victim"[..], b"d/sub", b"d/sub/g"] {
        check_case(
            &format!("D {}", String::from_utf8_lossy(path)),
            &|sb| sb.symlink("d", "../../outside"),
            &|_| good_start().remove(path).bytes(),
            &[],
            3,
            &[SYMLINK_WORDS[0], "'d'"],
        );
    }
}

#[test]
fn remove_of_a_symlink_removes_only_the_link() {
    for (link, target) in [("d", "../../outside"), ("f", "../../outside/victim")] {
        let sb = Sandbox::new();
        sb.symlink(link, target);
        let archive = sb.archive(good_start().remove(link.as_bytes()));
        let before = sb.snapshot(false);
        let out = extract(&sb, &archive, &[]);
        assert_same(&before, &sb.snapshot(false), &format!("D {link}"));
        // Removing the link itself is inside the target: allowed, or refused; never followed.
        assert!(
            out.exit() == 0 || out.exit() == 3,
            "D {link}: exit {}: {}",
            out.exit(),
            out.stderr
        );
    }
}

#[test]
fn remove_of_a_directory_holding_symlinks_does_not_follow_them() {
    let sb = Sandbox::new();
    fs::create_dir_all(sb.inner.join("db/deeper")).unwrap();
    fs::write(sb.inner.join("db/t.ibd"), b"t").unwrap();
    sb.symlink("db/out", "../../../outside");
    sb.symlink("db/deeper/victim", "../../../../outside/victim");
    let archive = sb.archive(good_start().remove(b"db"));
    let before = sb.snapshot(false);
    // db was there before the run: only --force lets a D chunk remove it.
    let refused = extract(&sb, &archive, &[]);
    assert_eq!(refused.exit(), 3, "{}", refused.stderr);
    assert!(sb.inner.join("db/t.ibd").exists());
    let out = extract(&sb, &archive, &["--force"]);
    assert_same(&before, &sb.snapshot(false), "D db");
    assert_eq!(out.exit(), 0, "{}", out.stderr);
    assert!(!sb.inner.join("db").exists(), "db was not removed");
}

#[test]
fn rename_through_or_onto_symlinks_never_reaches_outside() {
    const D: (&str, &str) = ("d", "../../outside");
    const F: (&str, &str) = ("f", "../../outside/victim");
    // symlink, R from, R to, exit status (None: 0 or 3, the rename stays inside).
    type Case = (
        (&'static str, &'static str),
        &'static str,
        &'static str,
        Option<i32>,
    );
    let cases: [Case; 8] = [
        (D, "ok", "d/stolen", Some(3)),
        (D, "ok", "d/victim", Some(3)),
        (D, "ok", "d/new/deeper", Some(3)),
        (D, "d/victim", "got", Some(3)),
        (D, "d/sub", "got", Some(3)),
        (F, "ok", "f", None),
        (F, "f", "g", None),
        (D, "ok", "d", None),
    ];
    for (link, from, to, code) in cases {
        let name = &format!("R {from} -> {to} ({} -> {})", link.0, link.1);
        for extra in [&[][..], &["--force"][..]] {
            let sb = Sandbox::new();
            sb.symlink(link.0, link.1);
            let archive = sb.archive(good_start().rename(from.as_bytes(), to.as_bytes()));
            let before = sb.snapshot(false);
            let out = extract(&sb, &archive, extra);
            assert_same(&before, &sb.snapshot(false), name);
            match code {
                Some(code) => {
                    assert_eq!(out.exit(), code, "{}: {}", name, out.stderr);
                    let line = error_line(&out);
                    assert!(line.contains(SYMLINK_WORDS[0]), "{}: {line}", name);
                }
                None => assert!(
                    out.exit() == 0 || out.exit() == 3,
                    "{}: exit {}: {}",
                    name,
                    out.exit(),
                    out.stderr
                ),
            }
        }
    }
}

/// After a rename replaced a symlink, a later chunk for the same name writes the new file,
/// never through a link.
#[test]
fn data_after_rename_over_a_symlink_stays_inside() {
    let sb = Sandbox::new();
    sb.symlink("f", "../../outside/victim");
    let mut v = Stream::new();
    v.file(b"a", b"A")
        .rename(b"a", b"f")
        .payload_flags(b"f", FLAG_REWRITE, b"pwned\n")
        .eof(b"f");
    let archive = sb.archive(&v);
    let before = sb.snapshot(false);
    let out = extract(&sb, &archive, &["--force"]);
    assert_same(
        &before,
        &sb.snapshot(false),
        "rename over symlink then rewrite",
    );
    assert!(out.exit() == 0 || out.exit() == 3, "{}", out.stderr);
}

// ---------------------------------------------------------------------------------------------
// Hard links already in the target directory
// ---------------------------------------------------------------------------------------------

/// `inner/h` is a hard link to `outside/victim` (same inode). Writing `h` must replace the
/// name, never truncate and write the shared inode: that would change a file outside.
#[test]
fn hard_link_in_target_is_not_written_through() {
    let mut failures = Vec::new();
    for (force, rewrite) in [(false, false), (true, false), (false, true)] {
        let extra: &[&str] = if force { &["--force"] } else { &[] };
        let flags = if rewrite { FLAG_REWRITE } else { 0 };
        let sb = Sandbox::new();
        fs::hard_link(sb.outside.join("victim"), sb.inner.join("h")).unwrap();
        let archive = sb.archive(&file_stream(b"h", flags));
        let before = sb.snapshot(false);
        let out = extract(&sb, &archive, extra);
        let after = sb.snapshot(false);
        let name = format!("hard link force={force} rewrite={rewrite}");
        // nlink of outside/victim may drop from 2 to 1 if the name in the target is replaced:
        // compare the bytes and mode only.
        let strip = |m: &BTreeMap<PathBuf, Entry>| {
            let mut m = m.clone();
            for e in m.values_mut() {
                if let Entry::File { nlink, mtime, .. } = e {
                    (*nlink, *mtime) = (0, (0, 0));
                }
            }
            m
        };
        let diff = tree_diff(&strip(&before), &strip(&after));
        if !diff.is_empty() {
            failures.push(format!("{name} (exit {}):\n{diff}", out.exit()));
        }
        if !force && !rewrite {
            assert_eq!(out.exit(), 3, "{name}: {}", out.stderr);
            let line = error_line(&out);
            assert!(line.contains("file exists"), "{name}: {line}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Existing files
// ---------------------------------------------------------------------------------------------

#[test]
fn existing_file_without_force_is_left_alone() {
    for nested in [false, true] {
        let path: &[u8] = if nested { b"db/t1.ibd" } else { b"existing" };
        let sb = Sandbox::new();
        let p = sb.inner.join(OsStr::from_bytes(path));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, b"original contents\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        let md0 = fs::metadata(&p).unwrap();
        let archive = sb.archive(&file_stream(path, 0));
        let before = sb.snapshot(false);
        let out = extract(&sb, &archive, &[]);
        assert_same(&before, &sb.snapshot(false), "existing");
        assert_eq!(out.exit(), 3, "{}", out.stderr);
        let line = error_line(&out);
        let shown = String::from_utf8_lossy(path);
        for w in [&format!("'{shown}'")[..], "file exists", "--force"] {
            assert!(line.contains(w), "{w:?} missing from {line}");
        }
        assert_eq!(fs::read(&p).unwrap(), b"original contents\n");
        let md1 = fs::metadata(&p).unwrap();
        assert_eq!(md1.mode() & 0o7777, 0o600);
        assert_eq!(md1.ino(), md0.ino());
        assert_eq!(
            (md1.mtime(), md1.mtime_nsec()),
            (md0.mtime(), md0.mtime_nsec())
        );

        // With --force the same stream replaces it (the control case).
        let out = extract(&sb, &archive, &["--force"]);
        assert_eq!(out.exit(), 0, "{}", out.stderr);
        assert_eq!(fs::read(&p).unwrap(), b"pwned\n");
        assert_same(&before, &sb.snapshot(false), "existing --force");
    }
}

#[test]
fn existing_directory_in_the_way_of_a_file_is_refused() {
    let sb = check_case(
        "dir in the way",
        &|sb| fs::create_dir_all(sb.inner.join("f/inside")).unwrap(),
        &|_| file_stream(b"f", 0),
        &["--force"],
        3,
        &["'f'"],
    );
    assert!(sb.inner.join("f/inside").is_dir());
}

#[test]
fn existing_file_in_the_way_of_a_directory_is_refused() {
    check_case(
        "file in the way",
        &|sb| fs::write(sb.inner.join("db"), b"not a dir").unwrap(),
        &|_| file_stream(b"db/t1.ibd", 0),
        &["--force"],
        3,
        &["'db'"],
    );
}

// ---------------------------------------------------------------------------------------------
// Corrupt, truncated, absurd
// ---------------------------------------------------------------------------------------------

fn stream_defect(name: &str, bytes: &[u8], words: &[&str]) {
    check_case(name, &no_setup, &|_| bytes.to_vec(), &[], 1, words);
}

#[test]
fn bad_crc_is_refused() {
    let at = good_start().len();
    let off = format!("stream offset {at}");
    // P: flip a payload byte.
    let mut v = good_start();
    v.payload(b"t.ibd", 0, b"some data");
    v.flip(v.len() - 1, 0x20).eof(b"t.ibd");
    stream_defect("bad CRC P", &v, &["checksum mismatch", "'t.ibd'", &off]);
    // Percona S: flip a map byte, then a payload byte.
    let map = [
        SparseEntry { skip: 0, len: 3 },
        SparseEntry { skip: 5, len: 2 },
    ];
    for flip_map in [true, false] {
        let mut v = good_start();
        v.sparse(b"s.ibd", 0, &map, b"abcde");
        let i = if flip_map {
            at + 14 + 5 + 24 + 4
        } else {
            v.len() - 1
        };
        v.flip(i, 1).eof(b"s.ibd");
        stream_defect("bad CRC S", &v, &["checksum mismatch", "'s.ibd'", &off]);
    }
    // The ignorable unknown chunk is checked too.
    let mut v = good_start();
    hostile_chunk(&mut v, Kind::Ignorable, b"ghost");
    v.flip(v.len() - 1, 1);
    let words = ["checksum mismatch", "'ghost'", &off];
    stream_defect("bad CRC ignorable", &v, &words);
}

#[test]
fn bad_magic_is_refused() {
    let garbage = b"this is not an xbstream archive at all";
    stream_defect("garbage", garbage, &["bad chunk magic", "stream offset 0"]);
    let at = good_start().len();
    let mut v = good_start();
    v.file(b"t", b"x").flip(at + 3, b'T' ^ b'Z');
    let words = ["bad chunk magic", &format!("stream offset {at}")];
    stream_defect("mid-stream magic", &v, &words);
    // Text written to stdout by a tool before the stream.
    let mut v = Stream::new();
    v.raw(b"xtrabackup: starting\n").raw(&good_start());
    stream_defect("log line", &v, &["bad chunk magic", "stream offset 0"]);
}

#[test]
fn unknown_flags_are_refused() {
    let mut v = good_start();
    let at = v.len();
    v.payload(b"t", 0, b"x").flip(at + 8, 0x80);
    let words = ["unknown flag bits 0x80", &format!("stream offset {at}")];
    stream_defect("flag 0x80", &v, &words);
}

/// Chunks to cut, each after the good start.
fn truncation_subjects() -> Vec<(&'static str, Stream)> {
    let chunk = |f: &dyn Fn(&mut Stream)| {
        let mut v = Stream::new();
        f(&mut v);
        v
    };
    let map = [
        SparseEntry { skip: 4, len: 3 },
        SparseEntry { skip: 4, len: 0 },
    ];
    vec![
        (
            "P",
            chunk(&|v| _ = v.payload(b"db/t.ibd", 0, b"0123456789")),
        ),
        (
            "Percona S",
            chunk(&|v| _ = v.sparse(b"s.ibd", 0, &map, b"abc")),
        ),
        ("E", chunk(&|v| _ = v.eof(b"db/t.ibd"))),
        ("seek S", chunk(&|v| _ = v.seek(b"m.ibd", 77))),
        ("R", chunk(&|v| _ = v.rename(b"ok", b"renamed"))),
        ("D", chunk(&|v| _ = v.remove(b"ok"))),
        (
            "ignorable",
            chunk(&|v| hostile_chunk(v, Kind::Ignorable, b"ghost")),
        ),
    ]
}

#[test]
fn truncation_at_every_byte_is_refused() {
    let start = good_start();
    let at = start.len();
    let off = format!("stream offset {at}");
    for (name, chunk) in truncation_subjects() {
        for cut in 1..chunk.len() {
            let mut v = start.clone();
            v.raw(&chunk[..cut]);
            let end = v.len();
            let case = format!("{name} cut at {cut}/{}", chunk.len());
            // A Percona sparse chunk cut right after the first 8 bytes following its path is,
            // byte for byte, a whole MariaDB seek at the end of the stream (dialect detection
            // cannot tell); that stream is still refused, for the file left without E.
            let path_len = u32::from_le_bytes(chunk[10..14].try_into().unwrap()) as usize;
            if name == "Percona S" && cut == 14 + path_len + 8 {
                stream_defect(&case, &v, &["lacking their end chunk", "'s.ibd'"]);
                continue;
            }
            let endw = format!("input ends at offset {end}");
            stream_defect(&case, &v, &["stream truncated", &endw, &off]);
        }
    }
}

#[test]
fn truncation_on_standard_input_is_refused() {
    let sb = Sandbox::new();
    let mut v = good_start();
    v.payload(b"t", 0, b"0123456789");
    let cut = v.len() - 3;
    v.truncate(cut);
    let before = sb.snapshot(false);
    let out = run_bin(
        &[
            OsStr::new("extract"),
            OsStr::new("-C"),
            sb.inner.as_os_str(),
            OsStr::new("-"),
        ],
        &sb.root,
        Some(&v),
    );
    assert_same(&before, &sb.snapshot(false), "stdin truncation");
    assert_eq!(out.exit(), 1, "{}", out.stderr);
    assert!(error_line(&out).contains("stream truncated"));
}

#[test]
fn absurd_lengths_fail_from_the_header() {
    let at = good_start().len();
    let off = format!("stream offset {at}");
    let map = [SparseEntry { skip: 0, len: 1 }];
    type Case<'a> = (&'a str, &'a dyn Fn(&mut Stream), &'a [&'a str]);
    let cases: [Case; 9] = [
        (
            "path length u32::MAX",
            &|v| _ = v.prefix(0, b'P', u32::MAX, b"abc"),
            &["path length 4294967295", "limit of 511"],
        ),
        (
            "path length 512",
            &|v| _ = v.prefix(0, b'E', 512, &[b'a'; 512]),
            &["path length 512"],
        ),
        (
            "payload 2^63",
            &|v| _ = v.payload_header(b"big", 1 << 63).raw(b"a few bytes"),
            &[
                "'big'",
                "declares 9223372036854775808 bytes",
                "--max-chunk-size",
            ],
        ),
        (
            "payload u64::MAX",
            &|v| _ = v.payload_header(b"big", u64::MAX),
            &["declares 18446744073709551615 bytes"],
        ),
        (
            "sparse map u32::MAX entries",
            // A map of u32::MAX entries, then zeros where the rest of the header goes.
            &|v| {
                _ = v
                    .prefix(0, b'S', 3, b"big")
                    .raw(&u32::MAX.to_le_bytes())
                    .raw(&[0; 8])
                    .raw(&[0; 8])
                    .raw(&[0; 4])
                    .raw(&[0; 64])
            },
            &["'big'", "declares"],
        ),
        (
            "sparse payload 2^63",
            &|v| {
                _ = v.header(&ChunkHeader::Sparse {
                    path: b"big",
                    flags: 0,
                    offset: 0,
                    map: &map,
                    len: 1 << 63,
                    crc: 0,
                })
            },
            &["'big'", "declares"],
        ),
        (
            "rename target u32::MAX",
            &|v| {
                _ = v
                    .prefix(0, b'R', 2, b"ok")
                    .raw(&u32::MAX.to_le_bytes())
                    .raw(b"abc")
            },
            &["rename target", "4294967295"],
        ),
        (
            "ignorable 2^63",
            &|v| {
                _ = v.header(&ChunkHeader::Other {
                    type_byte: b'Q',
                    path: b"big",
                    flags: FLAG_IGNORABLE,
                    offset: 0,
                    len: 1 << 63,
                    crc: 0,
                })
            },
            &["declares 9223372036854775808 bytes"],
        ),
        (
            "offset overflow",
            &|v| _ = v.payload(b"big", u64::MAX - 2, b"0123"),
            &["'big'", "past the largest file offset"],
        ),
    ];
    for (name, build, words) in cases {
        let mut v = good_start();
        build(&mut v);
        let mut w = words.to_vec();
        w.push(&off);
        stream_defect(name, &v, &w);
    }
}

/// A header declaring a huge chunk, sent on a pipe that stays open: the refusal must come from
/// the header alone, without waiting for (or reserving) the declared bytes.
#[test]
fn absurd_length_fails_fast_on_an_open_pipe() {
    let sb = Sandbox::new();
    let mut head = good_start();
    head.payload_header(b"big", 1 << 63);
    let start = Instant::now();
    let mut child = Command::new(BIN)
        .args([
            OsStr::new("extract"),
            OsStr::new("-C"),
            sb.inner.as_os_str(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut si = child.stdin.take().unwrap();
    si.write_all(&head).unwrap();
    si.flush().unwrap();
    // Keep `si` open while waiting.
    let out = wait_with_timeout(child, Duration::from_secs(20));
    drop(si);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("declares 9223372036854775808 bytes"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// With the chunk cap raised to 16 GiB, an 8 GiB chunk whose bytes never come must fail as a
/// truncation without the process ever reserving the declared size: run under a 1 GiB address
/// space limit.
#[test]
fn declared_length_is_never_allocated() {
    let sb = Sandbox::new();
    let mut v = good_start();
    v.payload_header(b"big", 8 << 30).raw(&[7u8; 100_000]);
    let archive = sb.archive(&v);
    let limited = |args: &[&OsStr]| {
        let mut cmd = Command::new("prlimit");
        cmd.arg("--as=1073741824").arg("--").arg(BIN).args(args);
        let start = Instant::now();
        let out = wait_with_timeout(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("prlimit (util-linux) is needed"),
            Duration::from_secs(60),
        );
        (out, start.elapsed())
    };
    // Control: a good stream extracts under the same limit.
    let good = sb.root.join("good.xbs");
    fs::write(&good, good_start()).unwrap();
    let ctl = sb.root.join("ctl");
    let (out, _) = limited(&[
        OsStr::new("extract"),
        OsStr::new("-C"),
        ctl.as_os_str(),
        good.as_os_str(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "control run under the limit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = sb.snapshot(false);
    for cmd in ["extract", "verify"] {
        let mut args: Vec<&OsStr> = vec![
            OsStr::new(cmd),
            OsStr::new("--max-chunk-size"),
            OsStr::new("16GiB"),
        ];
        if cmd == "extract" {
            args.push(OsStr::new("-C"));
            args.push(sb.inner.as_os_str());
        }
        args.push(archive.as_os_str());
        let (out, took) = limited(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        assert!(err.contains("stream truncated"), "{cmd}: {err}");
        assert!(took < Duration::from_secs(20), "{cmd} took {took:?}");
    }
    assert_same(&before, &sb.snapshot(false), "declared length");
}

// ---------------------------------------------------------------------------------------------
// Offsets and completeness
// ---------------------------------------------------------------------------------------------

/// `stream offset N` for the next chunk appended to `v`.
fn next_at(v: &Stream) -> String {
    format!("stream offset {}", v.len())
}

#[test]
fn ledger_defects_are_refused() {
    // Each case appends to the good start and returns the words its message must hold.
    type Build = fn(&mut Stream) -> Vec<String>;
    let cases: [(&str, Build); 11] = [
        ("gap", |v| {
            let at = next_at(v.payload(b"a", 0, b"hello"));
            v.payload(b"a", 10, b"x").eof(b"a");
            let gap = "starts at file offset 10, expected 5 (a gap)";
            vec!["out-of-order chunk for 'a'".into(), at, gap.into()]
        }),
        ("overlap", |v| {
            let at = next_at(v.payload(b"a", 0, b"hello"));
            v.payload(b"a", 3, b"xx").eof(b"a");
            vec![at, "expected 5 (an overlap)".into()]
        }),
        ("duplicate", |v| {
            let at = next_at(v.payload(b"a", 0, b"hello"));
            v.payload(b"a", 0, b"hello").eof(b"a");
            vec![at, "starts at file offset 0, expected 5".into()]
        }),
        ("first chunk not at 0", |v| {
            let at = next_at(v);
            v.payload(b"a", 4096, b"hello").eof(b"a");
            vec![at, "(a gap)".into()]
        }),
        ("sparse gap", |v| {
            let at = next_at(v.payload(b"a", 0, b"hello"));
            v.sparse(b"a", 6, &[SparseEntry { skip: 1, len: 1 }], b"s")
                .eof(b"a");
            vec![at, "(a gap)".into()]
        }),
        ("data after E", |v| {
            let at = next_at(v.file(b"a", b"hello"));
            v.payload(b"a", 5, b"more").eof(b"a");
            vec![format!("chunk for 'a' at {at}"), "data after E".into()]
        }),
        ("E after E", |v| {
            let at = next_at(v.eof(b"a"));
            v.eof(b"a");
            vec![at, "data after E".into()]
        }),
        ("data after E of the first file", |v| {
            let at = next_at(v);
            v.payload(b"ok", 6, b"more");
            vec![format!("'ok' at {at}"), "data after E".into()]
        }),
        ("one file without E", |v| {
            v.payload(b"a", 0, b"hello").file(b"b", b"x");
            vec!["stream ended with 1 file(s) lacking their end chunk: 'a'".into()]
        }),
        ("two files without E", |v| {
            v.payload(b"a", 0, b"hello").payload(b"db/b", 0, b"x");
            vec!["2 file(s) lacking their end chunk: 'a', 'db/b'".into()]
        }),
        ("a seek without E", |v| {
            // This one alone starts from nothing: a MariaDB stream of a D and a seek.
            v.clear();
            v.remove(b"zzz").seek(b"m", 10);
            vec!["lacking their end chunk: 'm'".into()]
        }),
    ];
    for (name, build) in cases {
        let mut v = good_start();
        let words = build(&mut v);
        let w: Vec<&str> = words.iter().map(|s| s.as_str()).collect();
        for extra in [&[][..], &["--parallel", "4"][..]] {
            check_case(name, &no_setup, &|_| v.bytes(), extra, 1, &w);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Unknown chunk types
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_type_without_ignorable_is_refused() {
    let at = good_start().len();
    let mut v = good_start();
    v.other(b'X', b"a", 0, b"data");
    stream_defect(
        "unknown X",
        &v,
        &[
            "unknown chunk type 0x58 (not ignorable) for 'a'",
            &format!("stream offset {at}"),
        ],
    );
}

#[test]
fn ignorable_unknown_with_unsafe_path_or_bad_crc_is_refused() {
    let at = good_start().len();
    let off = format!("stream offset {at}");
    let mut v = good_start();
    hostile_chunk(&mut v, Kind::Ignorable, b"../../outside/victim");
    stream_defect("ignorable unsafe", &v, &["unsafe path", &off]);
    let mut v = good_start();
    hostile_chunk(&mut v, Kind::Ignorable, b"ghost");
    // The CRC field: after the prefix, the path, the length and the offset.
    v.flip(at + 14 + 5 + 16, 0xff);
    let words = ["checksum mismatch", "'ghost'", &off];
    stream_defect("ignorable bad crc", &v, &words);
}

#[test]
fn benign_ignorable_chunk_is_skipped() {
    for extra in [&[][..], &["--parallel", "1"][..], &["--parallel", "3"][..]] {
        let sb = Sandbox::new();
        let mut v = good_start();
        hostile_chunk(&mut v, Kind::Ignorable, b"ghost");
        // An ignorable chunk for a real file, between its chunks, changes nothing either.
        v.payload(b"db/two", 0, b"two ");
        hostile_chunk(&mut v, Kind::Ignorable, b"db/two");
        v.payload(b"db/two", 4, b"parts\n").eof(b"db/two");
        let archive = sb.archive(&v);
        let before = sb.snapshot(false);
        let out = extract(&sb, &archive, extra);
        assert_same(&before, &sb.snapshot(false), "benign ignorable");
        assert_eq!(out.exit(), 0, "{}", out.stderr);
        assert_eq!(fs::read(sb.inner.join("ok")).unwrap(), b"hello\n");
        assert_eq!(fs::read(sb.inner.join("db/two")).unwrap(), b"two parts\n");
        assert!(
            !sb.inner.join("ghost").exists(),
            "ignorable chunk created a file"
        );
        let out = run_bin(&[OsStr::new("verify"), archive.as_os_str()], &sb.root, None);
        assert_eq!(out.exit(), 0, "verify: {}", out.stderr);
    }
}

// ---------------------------------------------------------------------------------------------
// Controls: the harness sees a good extraction as good
// ---------------------------------------------------------------------------------------------

#[test]
fn good_streams_extract_and_leave_outside_alone() {
    let sb = Sandbox::new();
    let map = [
        SparseEntry { skip: 3, len: 4 },
        SparseEntry { skip: 2, len: 0 },
    ];
    let mut v = good_start();
    v.payload(b"db/t1.ibd", 0, b"page one ")
        .sparse(b"db/t1.ibd", 9, &map, b"more")
        .eof(b"db/t1.ibd")
        .eof(b"empty");
    let archive = sb.archive(&v);
    let before = sb.snapshot(false);
    let out = extract(&sb, &archive, &[]);
    assert_same(&before, &sb.snapshot(false), "good");
    assert_eq!(out.exit(), 0, "{}", out.stderr);
    assert_eq!(
        fs::read(sb.inner.join("db/t1.ibd")).unwrap(),
        b"page one \0\0\0more\0\0"
    );
    assert_eq!(fs::read(sb.inner.join("empty")).unwrap(), b"");
    let out = run_bin(&[OsStr::new("verify"), archive.as_os_str()], &sb.root, None);
    assert_eq!(out.exit(), 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("ok"), "{}", out.stdout);
}

/// A MariaDB stream renaming and removing inside the target works (the control for the D/R
/// refusals above).
#[test]
fn mariadb_remove_and_rename_inside_target_work() {
    let sb = Sandbox::new();
    let mut v = good_start();
    v.file(b"db/t.frm", b"frm")
        .file(b"db/gone", b"x")
        .rename(b"db/t.frm", b"db2/u.frm")
        .remove(b"db/gone");
    let archive = sb.archive(&v);
    let before = sb.snapshot(false);
    let out = extract(&sb, &archive, &[]);
    assert_same(&before, &sb.snapshot(false), "mariadb good");
    assert_eq!(out.exit(), 0, "{}", out.stderr);
    assert_eq!(fs::read(sb.inner.join("db2/u.frm")).unwrap(), b"frm");
    assert!(!sb.inner.join("db/t.frm").exists());
    assert!(!sb.inner.join("db/gone").exists());
}

/// A FIFO already in the target must not hang the extractor: opening it for writing would
/// block forever with no reader. Refused (or replaced) promptly, with or without --force.
#[test]
fn fifo_in_target_does_not_hang() {
    let mut failures = Vec::new();
    for (force, rewrite) in [(false, false), (true, false), (false, true)] {
        let sb = Sandbox::new();
        let st = Command::new("mkfifo")
            .arg(sb.inner.join("fifo"))
            .status()
            .expect("mkfifo");
        assert!(st.success());
        let archive = sb.archive(&file_stream(
            b"fifo",
            if rewrite { FLAG_REWRITE } else { 0 },
        ));
        let before = sb.snapshot(false);
        let mut cmd = Command::new(BIN);
        cmd.arg("extract");
        if force {
            cmd.arg("--force");
        }
        let child = cmd
            .arg("-C")
            .arg(&sb.inner)
            .arg(&archive)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let r = std::thread::spawn(move || child.wait_with_output());
        let start = Instant::now();
        while !r.is_finished() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let name = format!("fifo force={force} rewrite={rewrite}");
        if !r.is_finished() {
            // Stop it (the process this test started, by its pid).
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let _ = r.join();
            failures.push(format!(
                "{name}: still running after 10 s (blocked opening the FIFO)"
            ));
            continue;
        }
        let out = r.join().unwrap().unwrap();
        assert_same(&before, &sb.snapshot(false), &name);
        if out.status.code() != Some(3) && out.status.code() != Some(0) {
            failures.push(format!(
                "{name}: exit {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Files that were in the target before the run, and that this stream never created: without
/// --force, a stream should not be able to replace, move or delete them by a REWRITE, an `R` or
/// a `D` chunk any more than by a plain `P` chunk (which is refused with exit 3).
///
/// REWRITE is the one exception the issue makes (mariabackup re-sends `.frm` files that way):
/// it replaces the name (never writing into the old inode), so it is not checked here.
#[test]
fn pre_existing_files_survive_rewrite_rename_and_remove_without_force() {
    let mut failures = Vec::new();
    type Build = fn() -> Stream;
    let cases: [(&str, Build); 4] = [
        ("R onto an existing file", || {
            let mut v = good_start();
            v.rename(b"ok", b"existing");
            v
        }),
        ("R of an existing file", || {
            let mut v = Stream::new();
            v.rename(b"existing", b"moved");
            v
        }),
        ("D of an existing file", || {
            let mut v = Stream::new();
            v.remove(b"existing");
            v
        }),
        ("D of an existing directory", || {
            let mut v = Stream::new();
            v.remove(b"db");
            v
        }),
    ];
    for (name, build) in cases {
        let sb = Sandbox::new();
        fs::write(sb.inner.join("existing"), b"original\n").unwrap();
        fs::create_dir(sb.inner.join("db")).unwrap();
        fs::write(sb.inner.join("db/t1.ibd"), b"table\n").unwrap();
        let archive = sb.archive(&build());
        let out = extract(&sb, &archive, &[]);
        let existing = fs::read(sb.inner.join("existing")).ok();
        let table = fs::read(sb.inner.join("db/t1.ibd")).ok();
        if existing.as_deref() != Some(&b"original\n"[..])
            || table.as_deref() != Some(&b"table\n"[..])
        {
            failures.push(format!(
                "{name}: exit {}, existing={:?}, db/t1.ibd={:?}",
                out.exit(),
                existing.map(|b| String::from_utf8_lossy(&b).into_owned()),
                table.map(|b| String::from_utf8_lossy(&b).into_owned()),
            ));
        } else {
            assert_eq!(out.exit(), 3, "{name}: {}", out.stderr);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// name, stream builder, sandbox setup, exit status, a word of the message.
type DropInCase<'a> = (
    &'a str,
    Box<dyn Fn(&Sandbox) -> Vec<u8>>,
    &'a dyn Fn(&Sandbox),
    i32,
    &'a str,
);

/// The drop-in mode (`xbstream -x` / `mbstream -x` through a symlink named like the
/// reference tool) reads standard input with its own options: the same refusals apply.
#[test]
fn drop_in_mode_refuses_the_same_hostile_streams() {
    for tool in ["xbstream", "mbstream"] {
        let cases: Vec<DropInCase> = vec![
            (
                "traversal",
                Box::new(|_| {
                    let mut v = good_start();
                    v.payload(b"../../outside/victim", 0, b"pwned");
                    v.bytes()
                }),
                &no_setup,
                1,
                "unsafe path",
            ),
            (
                "absolute D",
                Box::new(|sb| good_start().remove(&sb.abs_outside("victim")).bytes()),
                &no_setup,
                1,
                "unsafe path",
            ),
            (
                "dir symlink",
                Box::new(|_| file_stream(b"d/victim", 0)),
                &|sb: &Sandbox| sb.symlink("d", "../../outside"),
                3,
                "refusing to follow symlink",
            ),
            (
                "file symlink",
                Box::new(|_| file_stream(b"f", 0)),
                &|sb: &Sandbox| sb.symlink("f", "../../outside/victim"),
                3,
                "refusing to follow symlink",
            ),
        ];
        for (name, make, setup, code, word) in cases {
            let sb = Sandbox::new();
            setup(&sb);
            let bin_dir = sb.root.join("bin");
            fs::create_dir(&bin_dir).unwrap();
            let link = bin_dir.join(tool);
            std::os::unix::fs::symlink(BIN, &link).unwrap();
            let bytes = make(&sb);
            let before = sb.snapshot(false);
            let mut cmd = Command::new(&link);
            cmd.arg("-x").arg("-C").arg(&sb.inner).current_dir(&sb.root);
            let out = run_timed(cmd, Some(&bytes), TIMEOUT);
            assert_same(&before, &sb.snapshot(false), &format!("{tool} -x {name}"));
            let err = &out.stderr;
            assert_eq!(out.exit(), code, "{tool} -x {name}: {err}");
            assert!(err.contains(word), "{tool} -x {name}: {err}");
        }
    }
}
