//! Client-side encryption (issue 13), against /work/notes/spec13.md's CLI, messages, exit codes
//! and layout, on a local and an S3 repository:
//!
//! - interop out: what `upload --recipient` stores is read back WITHOUT xbagent, by the Go
//!   `age -d` (Debian's package), `zstd -d` and `mbstream -x`, byte for byte; the clear
//!   manifest and the sealed file list say what the spec says;
//! - round trips through `restore` and `verify --identity-file` (plain and zstd), and on S3
//!   the restore reads the encrypted object with parallel ranged GETs only;
//! - absent plaintext: no object (nor key) in the repository holds a marker string (file,
//!   database and table names, row contents, the source command), also for a real
//!   `mariabackup` stream, which is then restored, prepared and checksummed;
//! - every error of the spec's table, with its exit code and message, and no secret key ever
//!   printed;
//! - key rotation, `backups list` and `prune` with no identity, encrypted binlogs and
//!   a point-in-time restore through them.
//!
//! The markers are long random-looking strings: one appearing by chance in ciphertext is out
//! of the question, and each positive control shows the scanner would find it in plaintext.
//! A missing tool (age, zstd, MariaDB) fails the test; a missing S3 server is a loud skip
//! outside CI (tests/support/s3env.rs).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use xbagent::store::binlogs::layout::{self, Key as BinlogKey};
use xbagent::store::s3::S3Repo;
use xbagent::store::Repository;

use crate::support::backends::{on_both_backends, Kind};
use crate::support::cli::{run_timed, Out};
use crate::support::mariadb::{fixture, require_mariadb, Server, FIXTURE};
use crate::support::s3_fault_proxy::FaultProxy;
use crate::support::s3env::{s3_env, S3Env};
use crate::support::trees::{assert_same_tree, tree, Entry};
use crate::support::{child_path, noise, require_tools, s, short_tempdir, xb};

/// How long one command may run before the test fails.
const LIMIT: Duration = Duration::from_secs(300);
/// What `restore` leaves in DIR until everything matched.
const IN_PROGRESS: &str = ".xbagent-restore-in-progress";

/// A database (directory) name, a table (file) name, a row's content, the source directory's
/// name (in `--dir`'s path, hence in the source detail), a word of the `--exec` command.
const M_DB: &str = "zqdbmark7c1e4d";
const M_TBL: &str = "zqtblmark93b0f2";
const M_ROW: &str = "zqrowmark51a8e6";
const M_SRC: &str = "zqsrcmark0d77c3";
const M_CMD: &str = "zqcmdmark6fe019";
const MARKERS: [&str; 5] = [M_DB, M_TBL, M_ROW, M_SRC, M_CMD];

fn require_age() {
    require_tools(
        &["age", "age-keygen", "zstd", "mbstream", "bash"],
        "age, zstd and mariadb-backup (apt-get install age zstd mariadb-backup)",
    );
}

/// A request the recording proxy saw: method, path, Range header.
type Request = (String, String, Option<String>);

/// An X25519 key pair made by the Go `age-keygen`: the identity file (mode 0600, as
/// age-keygen writes it), its recipient and its secret line.
struct AgeKey {
    path: PathBuf,
    recipient: String,
    secret: String,
}

fn keygen(dir: &Path, name: &str) -> AgeKey {
    let path = dir.join(name);
    let out = Command::new("age-keygen")
        .args(["-o", s(&path)])
        .output()
        .expect("cannot run age-keygen");
    assert!(
        out.status.success(),
        "age-keygen -o {}: {out:?}",
        path.display()
    );
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode,
        0o600,
        "age-keygen wrote {} with mode {mode:o}",
        path.display()
    );
    let out = Command::new("age-keygen")
        .args(["-y", s(&path)])
        .output()
        .expect("cannot run age-keygen -y");
    assert!(out.status.success(), "age-keygen -y: {out:?}");
    let recipient = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        recipient.starts_with("age1"),
        "age-keygen -y printed {recipient:?}"
    );
    let secret = fs::read_to_string(&path)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .unwrap_or_else(|| panic!("no secret key line in {}", path.display()))
        .to_string();
    AgeKey {
        path,
        recipient,
        secret,
    }
}

/// A file with `text`, created with `mode`.
fn write_mode(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// No secret key, nor a recognisable piece of one, in what a command printed.
#[track_caller]
fn no_secret(out: &Out, keys: &[&AgeKey]) {
    for k in keys {
        // The key's data part (after the `AGE-SECRET-KEY-1` prefix), any 16 characters of it.
        let data = &k.secret["AGE-SECRET-KEY-1".len()..];
        for piece in [&k.secret[..], &data[..16], &data[data.len() - 16..]] {
            assert!(
                !out.stdout.contains(piece) && !out.stderr.contains(piece),
                "a secret key (or part of one) was printed: {}",
                out.describe()
            );
        }
    }
}

/// A repository of either kind, driven through the binary; its objects read, written and
/// listed directly (a local one by walking its directory, S3 through the library).
struct Repo {
    url: String,
    local: Option<PathBuf>,
    s3: Option<(S3Env, S3Repo)>,
}

impl Repo {
    /// A fresh repository, or `None` (skipped, loudly) for S3 without a test server.
    fn open(kind: Kind, dir: &Path, tag: &str) -> Option<Repo> {
        match kind {
            Kind::Local => Some(Repo {
                url: s(&dir.join("repo")).to_string(),
                local: Some(dir.join("repo")),
                s3: None,
            }),
            Kind::S3 => {
                let env = s3_env()?;
                let bucket = env.new_bucket(tag);
                let repo = S3Repo::open(&bucket, "enc", &env.settings(&env.endpoint))
                    .unwrap_or_else(|e| panic!("cannot open s3://{bucket}/enc: {e}"));
                Some(Repo {
                    url: format!("s3://{bucket}/enc"),
                    local: None,
                    s3: Some((env, repo)),
                })
            }
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = match &self.s3 {
            Some((env, _)) => env.xbagent(args),
            None => xb(args),
        };
        c.env("PATH", child_path());
        c
    }

    fn run(&self, args: &[&str]) -> Out {
        run_timed(self.cmd(args), None, LIMIT)
    }

    /// `REPO@ID`.
    fn at(&self, id: &str) -> String {
        format!("{}@{id}", self.url)
    }

    /// `upload --to REPO ARGS`, which must succeed; returns the new backup's id.
    fn upload(&self, args: &[&str]) -> String {
        let mut all = vec!["upload", "--to", &self.url];
        all.extend(args);
        let out = self.run(&all);
        out.code(0);
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix("backup ")?.split_whitespace().next())
            .unwrap_or_else(|| panic!("no `backup ID complete` line: {}", out.describe()))
            .to_string()
    }

    /// `restore --from REPO@ID -C DIR ARGS`.
    fn restore(&self, id: &str, dir: &Path, args: &[&str]) -> Out {
        let from = self.at(id);
        let mut all = vec!["restore", "--from", &from, "-C", s(dir)];
        all.extend(args);
        self.run(&all)
    }

    /// `verify REPO@ID ARGS`.
    fn verify(&self, id: &str, args: &[&str]) -> Out {
        let at = self.at(id);
        let mut all = vec!["verify", &at];
        all.extend(args);
        self.run(&all)
    }

    /// Every object's key (every file of a local repository, temporary ones included).
    fn keys(&self) -> Vec<String> {
        match (&self.local, &self.s3) {
            (Some(dir), _) => {
                if !dir.exists() {
                    return Vec::new();
                }
                tree(dir)
                    .into_iter()
                    .filter(|(_, e)| !matches!(e, Entry::Dir))
                    .map(|(k, _)| k)
                    .collect()
            }
            (None, Some((_, r))) => r
                .list("")
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", self.url))
                .into_iter()
                .map(|o| o.key)
                .collect(),
            (None, None) => unreachable!("a repository is local or S3"),
        }
    }

    fn get(&self, key: &str) -> Vec<u8> {
        match (&self.local, &self.s3) {
            (Some(dir), _) => fs::read(dir.join(key)).unwrap_or_else(|e| panic!("{key}: {e}")),
            (None, Some((_, r))) => r
                .get(key, 1 << 30)
                .unwrap_or_else(|e| panic!("{key}: {e}"))
                .to_vec(),
            (None, None) => unreachable!("a repository is local or S3"),
        }
    }

    fn put(&self, key: &str, data: Vec<u8>) {
        match (&self.local, &self.s3) {
            (Some(dir), _) => fs::write(dir.join(key), data).unwrap(),
            (None, Some((_, r))) => r.put(key, Bytes::from(data)).unwrap(),
            (None, None) => unreachable!("a repository is local or S3"),
        }
    }

    fn manifest(&self, id: &str) -> Value {
        serde_json::from_slice(&self.get(&format!("{id}/manifest.json")))
            .expect("the manifest is JSON")
    }

    fn list_json(&self) -> Vec<Value> {
        let out = self.run(&["backups", "list", "--json", &self.url]);
        out.code(0);
        match serde_json::from_str(&out.stdout) {
            Ok(Value::Array(v)) => v,
            other => panic!(
                "backups list --json: not an array: {other:?}\n{}",
                out.describe()
            ),
        }
    }

    /// Every GET the restore sent for objects whose key ends with `suffix`, with its Range
    /// header, while `f` ran with this repository's commands pointed at a recording proxy;
    /// also every request's path. `None` for a local repository.
    fn recording<T>(
        &self,
        f: impl FnOnce(&dyn Fn(&[&str]) -> Out) -> T,
    ) -> Option<(T, Vec<Request>)> {
        let (env, _) = self.s3.as_ref()?;
        let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
        let rec = Arc::clone(&seen);
        let proxy = FaultProxy::start(&env.endpoint, move |_, head| {
            rec.lock().unwrap().push((
                head.method.clone(),
                head.path().to_string(),
                head.header("range").map(str::to_string),
            ));
            None
        });
        let run = |args: &[&str]| {
            let mut c = self.cmd(args);
            c.env("AWS_ENDPOINT_URL", &proxy.endpoint);
            run_timed(c, None, LIMIT)
        };
        let t = f(&run);
        drop(proxy);
        let seen = seen.lock().unwrap().clone();
        Some((t, seen))
    }
}

/// A tree that looks like a backup, with the markers in directory and file names, in file
/// contents (literally, between incompressible bytes), and in the source directory's name.
/// `big_mib` adds an incompressible file of that many MiB.
fn marker_tree(root: &Path, big_mib: usize) -> PathBuf {
    let src = root.join(format!("src-{M_SRC}"));
    let db = src.join(M_DB);
    fs::create_dir_all(&db).unwrap();
    let mut ibd = Vec::new();
    for i in 0..64u64 {
        ibd.extend_from_slice(&noise(i + 1, 8 << 10));
        ibd.extend_from_slice(format!("row {i} {M_ROW} in {M_DB}.{M_TBL}\n").as_bytes());
    }
    fs::write(db.join(format!("{M_TBL}.ibd")), &ibd).unwrap();
    fs::write(
        db.join(format!("{M_TBL}.frm")),
        format!("{M_TBL} {M_ROW}\n").repeat(200),
    )
    .unwrap();
    fs::write(db.join("db.opt"), b"default-character-set=utf8mb4\n").unwrap();
    fs::write(src.join("ibdata1"), noise(99, 300 << 10)).unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    fs::write(
        src.join("xtrabackup_checkpoints"),
        "backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 4711\nlast_lsn = 4712\n",
    )
    .unwrap();
    if big_mib > 0 {
        fs::write(src.join("big.ibd"), noise(7, big_mib << 20)).unwrap();
    }
    src
}

/// The first marker found in `data`, if any.
fn marker_in(data: &[u8], markers: &[&str]) -> Option<String> {
    markers
        .iter()
        .find(|m| data.windows(m.len()).any(|w| w == m.as_bytes()))
        .map(|m| (*m).to_string())
}

/// No key of the repository, and no byte of any object, holds one of `markers`.
#[track_caller]
fn assert_no_plaintext(repo: &Repo, markers: &[&str]) -> usize {
    let keys = repo.keys();
    assert!(!keys.is_empty(), "the repository {} is empty", repo.url);
    for key in &keys {
        if let Some(m) = marker_in(key.as_bytes(), markers) {
            panic!("the key {key} of {} holds the marker {m}", repo.url);
        }
        if let Some(m) = marker_in(&repo.get(key), markers) {
            panic!(
                "the object {key} of {} holds the marker {m} in the clear",
                repo.url
            );
        }
    }
    keys.len()
}

/// A restore that failed left no directory that looks good: DIR was never made, or it keeps
/// the in-progress marker. Returns which.
#[track_caller]
fn left_unfinished(dir: &Path, out: &Out) -> &'static str {
    if !dir.exists() {
        return "no DIR";
    }
    assert!(
        dir.join(IN_PROGRESS).is_file(),
        "a failed restore left {} without its {IN_PROGRESS} marker: {}",
        dir.display(),
        out.describe()
    );
    "marker kept"
}

/// A restore that succeeded: exit 0, the backup named, the tree equal to `src`, no marker.
#[track_caller]
fn restored_ok(out: &Out, id: &str, src: &Path, dir: &Path) {
    out.code(0).prints(&format!("restored backup {id}"));
    assert!(
        !dir.join(IN_PROGRESS).exists(),
        "restore exited 0 and left {IN_PROGRESS}: {}",
        out.describe()
    );
    assert_same_tree(src, dir);
}

/// `bash -c SCRIPT`, which must succeed; its stdout.
fn sh(script: &str) -> Vec<u8> {
    let out = Command::new("bash")
        .args(["-c", &format!("set -euo pipefail; {script}")])
        .env("PATH", child_path())
        .output()
        .expect("cannot run bash");
    assert!(
        out.status.success(),
        "`{script}` failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn b3(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

fn strings(v: &Value) -> Vec<String> {
    let mut v: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|r| {
            r.as_str()
                .unwrap_or_else(|| panic!("not a string: {r}"))
                .to_string()
        })
        .collect();
    v.sort();
    v
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| (*s).to_string()).collect();
    v.sort();
    v
}

/// (1) What `upload --recipient` stored, read without xbagent: `age -d` (the Go
/// implementation) with either recipient's identity, `zstd -d` when compressed, `mbstream -x`:
/// the source tree byte for byte. The sealed file list decrypts to the spec's JSON; the clear
/// manifest holds what the spec lists and no more. A local repository: the object is a file.
#[test]
fn go_age_reads_what_upload_stored() {
    require_age();
    let t = Instant::now();
    let tmp = short_tempdir("encout");
    let (a, b) = (keygen(tmp.path(), "a.key"), keygen(tmp.path(), "b.key"));
    let src = marker_tree(tmp.path(), 1);
    let repo = Repo::open(Kind::Local, tmp.path(), "encout").unwrap();
    let dir = repo.local.clone().unwrap();
    for (compress, object) in [
        (&[][..], "stream.xbstream.age"),
        (&["--compress", "zstd"][..], "stream.xbstream.zst.age"),
    ] {
        let mut args = vec!["--recipient", &a.recipient, "--recipient", &b.recipient];
        args.extend(compress);
        args.extend(["--dir", s(&src)]);
        let id = repo.upload(&args);
        let obj = dir.join(&id).join(object);
        let stored = fs::read(&obj).unwrap_or_else(|e| panic!("{}: {e}", obj.display()));

        // An age v1 file with one X25519 stanza per recipient (and the age crate's random
        // "grease" stanzas, which every age implementation skips).
        assert!(
            stored.starts_with(b"age-encryption.org/v1\n"),
            "{object} is not an age file"
        );
        let head_end = stored
            .windows(5)
            .position(|w| w == b"\n--- ")
            .expect("no header MAC");
        let header = String::from_utf8_lossy(&stored[..head_end]);
        let stanzas: Vec<&str> = header.lines().filter(|l| l.starts_with("-> ")).collect();
        let x25519 = stanzas
            .iter()
            .filter(|l| l.starts_with("-> X25519 "))
            .count();
        assert_eq!(x25519, 2, "stanzas: {stanzas:?}");
        assert!(
            stanzas.iter().all(|l| l.starts_with("-> X25519 ")
                || l.split(' ').nth(1).is_some_and(|t| t.ends_with("-grease"))),
            "a stanza neither X25519 nor grease: {stanzas:?}"
        );

        // Either identity decrypts it to the same plaintext.
        let plain = sh(&format!("age -d -i {} {}", s(&a.path), s(&obj)));
        assert_eq!(plain, sh(&format!("age -d -i {} {}", s(&b.path), s(&obj))));
        let unzstd = if compress.is_empty() {
            ""
        } else {
            "| zstd -d "
        };
        let x = tmp.path().join(format!("x-{id}"));
        fs::create_dir_all(&x).unwrap();
        sh(&format!(
            "age -d -i {} {} {unzstd}| mbstream -x -C {}",
            s(&a.path),
            s(&obj),
            s(&x)
        ));
        assert_same_tree(&src, &x);

        // The clear manifest: no file list, no source detail; the encryption record.
        let m = repo.manifest(&id);
        assert_eq!(m["object"]["key"], object, "{m}");
        assert_eq!(
            m["object"]["size"].as_u64(),
            Some(stored.len() as u64),
            "{m}"
        );
        assert_eq!(m["object"]["blake3"], b3(&stored), "{m}");
        assert_eq!(m["files"], serde_json::json!([]), "{m}");
        assert_eq!(m["source"]["detail"], "", "{m}");
        let e = &m["encryption"];
        assert_eq!(e["scheme"], "age-x25519", "{m}");
        assert_eq!(
            strings(&e["recipients"]),
            sorted(&[&a.recipient, &b.recipient]),
            "{m}"
        );
        assert_eq!(e["plain_size"].as_u64(), Some(plain.len() as u64), "{m}");
        assert_eq!(e["plain_blake3"], b3(&plain), "{m}");
        let stream = if compress.is_empty() {
            plain.clone()
        } else {
            zstd::decode_all(&plain[..]).expect("the plaintext is not zstd")
        };
        assert_eq!(
            m["stream"]["bytes"].as_u64(),
            Some(stream.len() as u64),
            "{m}"
        );
        assert!(m["stream"]["files"].as_u64() >= Some(6), "{m}");

        // The sealed file list and source, for the identity only.
        let sealed_path = dir.join(&id).join("sealed.json.age");
        let sealed_stored = fs::read(&sealed_path).unwrap();
        assert_eq!(m["encryption"]["sealed"]["key"], "sealed.json.age", "{m}");
        assert_eq!(
            m["encryption"]["sealed"]["size"].as_u64(),
            Some(sealed_stored.len() as u64),
            "{m}"
        );
        assert_eq!(
            m["encryption"]["sealed"]["blake3"],
            b3(&sealed_stored),
            "{m}"
        );
        let sealed: Value = serde_json::from_slice(&sh(&format!(
            "age -d -i {} {}",
            s(&b.path),
            s(&sealed_path)
        )))
        .expect("sealed.json.age does not decrypt to JSON");
        assert_eq!(sealed["format"], 1, "{sealed}");
        let paths: Vec<&str> = sealed["files"]
            .as_array()
            .expect("sealed files[]")
            .iter()
            .filter_map(|f| f["path"].as_str())
            .collect();
        let want = format!("{M_DB}/{M_TBL}.ibd");
        assert!(
            paths.contains(&want.as_str()),
            "{want} not in the sealed list: {paths:?}"
        );
        assert!(paths.contains(&"ibdata1"), "{paths:?}");
        assert!(sealed["source"]["kind"].is_string(), "{sealed}");
        let detail = sealed["source"]["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(M_SRC),
            "the sealed source detail: {detail:?}"
        );
        // Exactly the stream object, the sealed list and the manifest.
        let mut names: Vec<String> = fs::read_dir(dir.join(&id))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, sorted(&["manifest.json", "sealed.json.age", object]));
    }
    eprintln!(
        "go_age_reads_what_upload_stored: {:.1}s",
        t.elapsed().as_secs_f64()
    );
}

/// (2) Upload, restore and verify with `--identity-file`, plain and zstd: the tree byte for
/// byte, no marker left. On S3, restore reads the encrypted object only with ranged GETs, at
/// least one per 8 MiB (no whole-object download first).
fn round_trips(kind: Kind) {
    require_age();
    let t = Instant::now();
    let tmp = short_tempdir("encrt");
    let Some(repo) = Repo::open(kind, tmp.path(), "encrt") else {
        return;
    };
    let a = keygen(tmp.path(), "a.key");
    let src = marker_tree(tmp.path(), 20);
    for (i, (compress, object)) in [
        (&[][..], "stream.xbstream.age"),
        (&["--compress", "zstd"][..], "stream.xbstream.zst.age"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut args = vec!["--recipient", &a.recipient];
        args.extend(compress);
        args.extend(["--dir", s(&src)]);
        let id = repo.upload(&args);
        assert_eq!(repo.manifest(&id)["object"]["key"], object);
        let dst = tmp.path().join(format!("dst{i}"));
        let ident = ["--identity-file", s(&a.path)];
        let recorded = repo.recording(|run| {
            let from = repo.at(&id);
            run(&[&["restore", "--from", &from, "-C", s(&dst)][..], &ident[..]].concat())
        });
        let out = match recorded {
            Some((out, seen)) => {
                let gets: Vec<&Request> = seen
                    .iter()
                    .filter(|(m, p, _)| m == "GET" && p.ends_with(&format!("{id}/{object}")))
                    .collect();
                assert!(
                    gets.iter().all(|(_, _, r)| r.is_some()),
                    "a GET of {object} without a Range header: {seen:?}"
                );
                assert!(
                    gets.len() >= 3,
                    "fewer than 3 ranged GETs of a 20 MiB object: {seen:?}"
                );
                out
            }
            None => repo.restore(&id, &dst, &ident),
        };
        restored_ok(&out, &id, &src, &dst);
        no_secret(&out, &[&a]);
        let v = repo.verify(&id, &ident);
        v.code(0)
            .prints(&format!("ok: backup {id} matches its manifest"));
        no_secret(&v, &[&a]);
    }
    eprintln!("round_trips({kind:?}): {:.1}s", t.elapsed().as_secs_f64());
}

/// (3a) After encrypted uploads (plain and zstd) of a tree whose names and contents carry
/// markers, no object of the repository (nor its key, nor `backups list`) holds one. The
/// control: the same tree uploaded without a recipient does show them.
fn no_plaintext_in_the_repository(kind: Kind) {
    require_age();
    let t = Instant::now();
    let tmp = short_tempdir("encpt");
    let Some(repo) = Repo::open(kind, tmp.path(), "encpt") else {
        return;
    };
    let a = keygen(tmp.path(), "a.key");
    let src = marker_tree(tmp.path(), 0);
    repo.upload(&["--recipient", &a.recipient, "--dir", s(&src)]);
    repo.upload(&[
        "--recipient",
        &a.recipient,
        "--compress",
        "zstd",
        "--dir",
        s(&src),
    ]);
    let n = assert_no_plaintext(&repo, &MARKERS);
    assert!(
        n >= 6,
        "expected two backups of three objects: {:?}",
        repo.keys()
    );
    for args in [&["backups", "list"][..], &["backups", "list", "--json"][..]] {
        let out = repo.run(&[args, &[&repo.url]].concat());
        out.code(0);
        let said = format!("{}{}", out.stdout, out.stderr);
        assert!(
            marker_in(said.as_bytes(), &MARKERS).is_none(),
            "{}",
            out.describe()
        );
    }

    // The control: without a recipient, the scanner finds the markers.
    let clear = Repo::open(kind, &tmp.path().join("clear"), "encptc").unwrap();
    let id = clear.upload(&["--dir", s(&src)]);
    let object = clear.get(&format!("{id}/stream.xbstream"));
    assert_eq!(marker_in(&object, &[M_ROW]).as_deref(), Some(M_ROW));
    assert_eq!(marker_in(&object, &[M_TBL]).as_deref(), Some(M_TBL));
    let manifest = clear.get(&format!("{id}/manifest.json"));
    assert_eq!(marker_in(&manifest, &[M_SRC]).as_deref(), Some(M_SRC));
    eprintln!(
        "no_plaintext_in_the_repository({kind:?}): {:.1}s",
        t.elapsed().as_secs_f64()
    );
}

/// (3b) A real `mariabackup` stream (`upload --exec`, the command carrying a marker) of a server
/// whose database, tables (InnoDB and MyISAM) and rows carry markers: no object holds one;
/// restored with the identity, prepared, started: CHECKSUM TABLE equal to the source's.
/// Local without compression, S3 with zstd.
fn mariabackup_encrypted(kind: Kind) {
    require_mariadb();
    require_age();
    let t = Instant::now();
    let tmp = short_tempdir("encmb");
    let Some(repo) = Repo::open(kind, tmp.path(), "encmb") else {
        return;
    };
    let a = keygen(tmp.path(), "a.key");
    let src = Server::start(&tmp.path().join("src"));
    src.sql(&format!(
        "CREATE DATABASE {M_DB}; \
         CREATE TABLE {M_DB}.{M_TBL} (id INT PRIMARY KEY, v VARCHAR(64)) ENGINE=InnoDB; \
         INSERT INTO {M_DB}.{M_TBL} SELECT seq, CONCAT('{M_ROW}-', seq) FROM {M_DB}.seq_1_to_3000; \
         CREATE TABLE {M_DB}.{M_TBL}_m (id INT PRIMARY KEY, v VARCHAR(64)) ENGINE=MyISAM; \
         INSERT INTO {M_DB}.{M_TBL}_m SELECT seq, CONCAT('{M_ROW}-m-', seq) FROM {M_DB}.seq_1_to_500"
    ));
    let sums = src.checksums();
    for tbl in [format!("{M_DB}.{M_TBL}"), format!("{M_DB}.{M_TBL}_m")] {
        assert!(sums.contains_key(&tbl), "no checksum of {tbl}: {sums:?}");
    }
    // A shell comment: the command as recorded carries the marker, the backup does not.
    let exec = format!("bash {FIXTURE} backup {} # {M_CMD}", s(&src.dir));
    let mut args = vec!["--recipient", &a.recipient];
    if kind == Kind::S3 {
        args.extend(["--compress", "zstd"]);
    }
    args.extend(["--exec", &exec]);
    let id = repo.upload(&args);
    assert_no_plaintext(&repo, &MARKERS);
    assert_eq!(repo.manifest(&id)["source"]["detail"], "");

    let restored = tmp.path().join("restored");
    let out = repo.restore(&id, &restored, &["--identity-file", s(&a.path)]);
    out.code(0).prints(&format!("restored backup {id}"));
    assert!(!restored.join(IN_PROGRESS).exists(), "{}", out.describe());
    // The control: the plaintext does hold the markers (the MyISAM rows, the names).
    let myd = restored.join(M_DB).join(format!("{M_TBL}_m.MYD"));
    let data = fs::read(&myd).unwrap_or_else(|e| panic!("{}: {e}", myd.display()));
    assert_eq!(marker_in(&data, &[M_ROW]).as_deref(), Some(M_ROW));
    drop(src);
    fixture(&["prepare", s(&restored)]);
    let server = Server::start_on(&restored);
    assert_eq!(
        server.checksums(),
        sums,
        "CHECKSUM TABLE on the restored backup differs from the source"
    );
    drop(server);
    eprintln!(
        "mariabackup_encrypted({kind:?}): {:.1}s",
        t.elapsed().as_secs_f64()
    );
}

/// The offset of the first STREAM chunk in an age file: after the header's MAC line and the
/// 16-byte payload nonce.
fn payload_start(age: &[u8]) -> usize {
    let mac = age
        .windows(5)
        .position(|w| w == b"\n--- ")
        .expect("no header MAC line")
        + 1;
    let eol = age[mac..]
        .iter()
        .position(|&b| b == b'\n')
        .expect("no end of the MAC line");
    mac + eol + 1 + 16
}

/// (4a) The reading errors: no identity (exit 2, nothing read but the manifest), a wrong
/// identity (exit 3, naming the backup and its recipients), an altered byte in the stream
/// object or in sealed.json.age, a truncated object (exit 1 naming the object, no good-looking
/// DIR). A restore of the repaired backup then succeeds.
fn reading_errors(kind: Kind) {
    require_age();
    let t = Instant::now();
    let tmp = short_tempdir("encerr");
    let Some(repo) = Repo::open(kind, tmp.path(), "encerr") else {
        return;
    };
    let keys = [
        keygen(tmp.path(), "a.key"),
        keygen(tmp.path(), "b.key"),
        keygen(tmp.path(), "c.key"),
    ];
    let [a, b, c] = &keys;
    let all: Vec<&AgeKey> = keys.iter().collect();
    let src = marker_tree(tmp.path(), 1);
    let id = repo.upload(&[
        "--recipient",
        &a.recipient,
        "--recipient",
        &b.recipient,
        "--dir",
        s(&src),
    ]);
    let obj = format!("{id}/stream.xbstream.age");
    let sealed = format!("{id}/sealed.json.age");
    let mut n = 0;
    let mut dir = || {
        n += 1;
        tmp.path().join(format!("dst{n}"))
    };

    // No identity: exit 2 before reading anything but the manifest.
    match &repo.local {
        Some(root) => {
            // Root reads any file whatever its mode, so the objects are moved away instead:
            // the error must still be the identity one, not a missing object.
            let aside = tmp.path().join("aside");
            fs::create_dir_all(&aside).unwrap();
            fs::rename(root.join(&obj), aside.join("o")).unwrap();
            fs::rename(root.join(&sealed), aside.join("s")).unwrap();
            let out = repo.restore(&id, &dir(), &[]);
            out.code(2).says("is encrypted").says("--identity-file");
            repo.verify(&id, &[])
                .code(2)
                .says("is encrypted")
                .says("--identity-file");
            fs::rename(aside.join("o"), root.join(&obj)).unwrap();
            fs::rename(aside.join("s"), root.join(&sealed)).unwrap();
        }
        None => {
            let d = dir();
            let (_, seen) = repo
                .recording(|run| {
                    let from = repo.at(&id);
                    run(&["restore", "--from", &from, "-C", s(&d)])
                        .code(2)
                        .says("is encrypted")
                        .says("--identity-file");
                    run(&["verify", &from])
                        .code(2)
                        .says("is encrypted")
                        .says("--identity-file");
                })
                .unwrap();
            let read: Vec<_> = seen
                .iter()
                .filter(|(m, p, _)| m == "GET" && p.contains(&id) && !p.ends_with("/manifest.json"))
                .collect();
            assert!(
                read.is_empty(),
                "objects read without an identity: {read:?}"
            );
            assert!(
                seen.iter()
                    .any(|(_, p, _)| p.ends_with(&format!("{id}/manifest.json"))),
                "the manifest was not read: {seen:?}"
            );
        }
    }

    // A wrong identity: exit 3, naming the backup and every recipient it was made for.
    let out = repo.restore(&id, &dir(), &["--identity-file", s(&c.path)]);
    out.code(3)
        .says("no identity")
        .says(&id)
        .says(&a.recipient)
        .says(&b.recipient);
    no_secret(&out, &all);
    let out = repo.verify(&id, &["--identity-file", s(&c.path)]);
    out.code(3)
        .says("no identity")
        .says(&a.recipient)
        .says(&b.recipient);
    no_secret(&out, &all);

    let ident = ["--identity-file", s(&a.path)];
    let good = repo.get(&obj);
    let start = payload_start(&good);
    assert!(
        good.len() > start + 2 * 65_552,
        "the object holds fewer than 3 chunks"
    );
    let flip = |at: usize| {
        let mut bad = good.clone();
        bad[at] ^= 0x20;
        bad
    };
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("a byte in the first chunk", obj.as_str(), flip(start + 100)),
        ("a byte in the middle", obj.as_str(), flip(good.len() / 2)),
        (
            "the last tag's last byte",
            obj.as_str(),
            flip(good.len() - 1),
        ),
        ("a byte of the header's MAC", obj.as_str(), flip(start - 20)),
        (
            "the last 10 bytes cut",
            obj.as_str(),
            good[..good.len() - 10].to_vec(),
        ),
        // Whole chunks, the last one not marked last: STREAM's truncation case.
        (
            "cut after two whole chunks",
            obj.as_str(),
            good[..start + 2 * 65_552].to_vec(),
        ),
        ("only the header left", obj.as_str(), good[..start].to_vec()),
    ];
    let sealed_good = repo.get(&sealed);
    let mut sealed_bad = sealed_good.clone();
    let mid = sealed_bad.len() - 20;
    sealed_bad[mid] ^= 0x01;
    let sealed_cut = sealed_good[..sealed_good.len() - 5].to_vec();
    let name_of = |key: &str| key.rsplit('/').next().unwrap().to_string();
    let mut outcomes = Vec::new();
    for (what, key, bytes) in cases.into_iter().chain([
        (
            "sealed.json.age: a byte altered",
            sealed.as_str(),
            sealed_bad,
        ),
        ("sealed.json.age: cut", sealed.as_str(), sealed_cut),
    ]) {
        let keep = repo.get(key);
        repo.put(key, bytes);
        let d = dir();
        let out = repo.restore(&id, &d, &ident);
        assert_eq!(out.exit(), 1, "{what}: expected exit 1: {}", out.describe());
        out.says(&name_of(key));
        no_secret(&out, &all);
        outcomes.push(format!("{what}: {}", left_unfinished(&d, &out)));
        let v = repo.verify(&id, &ident);
        assert_eq!(
            v.exit(),
            1,
            "{what}: verify expected exit 1: {}",
            v.describe()
        );
        v.says(&name_of(key));
        repo.put(key, keep);
    }
    eprintln!("reading_errors({kind:?}) DIR after each failure: {outcomes:#?}");
    let d = dir();
    restored_ok(&repo.restore(&id, &d, &ident), &id, &src, &d);
    eprintln!(
        "reading_errors({kind:?}): {:.1}s",
        t.elapsed().as_secs_f64()
    );
}

/// (4b) Keys that do not parse or are of the wrong kind: a bad `--recipient` (exit 2, naming
/// it), a bad recipients-file line (exit 3, FILE:LINE), a bad identity-file line (exit 3,
/// FILE:LINE, never the line), a secret key given as a recipient (refused, never printed), an
/// identity file readable by group or others (exit 3) unless `--allow-readable-identity`.
fn key_errors(kind: Kind) {
    require_age();
    let t = Instant::now();
    let tmp = short_tempdir("enckey");
    let Some(repo) = Repo::open(kind, tmp.path(), "enckey") else {
        return;
    };
    let a = keygen(tmp.path(), "a.key");
    let src = marker_tree(tmp.path(), 0);
    let up = |extra: &[&str]| {
        let url = repo.url.clone();
        repo.run(&[&["upload", "--to", &url][..], extra, &["--dir", s(&src)]].concat())
    };

    // Recipients.
    let bad = "age1zqnotarecipientatall";
    let out = up(&["--recipient", bad]);
    out.code(2).says("--recipient").says(bad);
    let out = up(&["--recipient", &a.recipient, "--recipient", "not-even-age1"]);
    out.code(2).says("--recipient").says("not-even-age1");
    let rfile = tmp.path().join("recipients.txt");
    write_mode(
        &rfile,
        &format!("# the team's keys\n\n{}\nage1zqbogusline4\n", a.recipient),
        0o644,
    );
    let out = up(&["--recipients-file", s(&rfile)]);
    out.code(3).says(&format!("{}:4", s(&rfile)));
    let out = up(&["--recipient", &a.secret]);
    out.code(2).says("private key");
    no_secret(&out, &[&a]);
    let sfile = tmp.path().join("recipients-with-secret.txt");
    write_mode(&sfile, &format!("{}\n{}\n", a.recipient, a.secret), 0o644);
    let out = up(&["--recipients-file", s(&sfile)]);
    out.code(3).says("private key");
    no_secret(&out, &[&a]);
    let left: Vec<String> = repo.keys();
    assert!(
        !left.iter().any(|k| k.ends_with("manifest.json")),
        "a refused upload left a backup: {left:?}"
    );

    // Identities, against a good encrypted backup.
    let id = repo.upload(&["--recipient", &a.recipient, "--dir", s(&src)]);
    let header = fs::read_to_string(&a.path).unwrap();
    let garbage = "AGE-SECRET-KEY-1ZQBOGUSKEYLINECONTENT";
    let cases = [
        (
            "bad-key.txt",
            format!("{header}{garbage}\n"),
            header.lines().count() + 1,
            garbage,
        ),
        (
            "bad-line.txt",
            format!("# created: now\nzq-not-a-key-line-content\n{}\n", a.secret),
            2,
            "zq-not-a-key-line-content",
        ),
    ];
    for (i, (name, text, line, secret_text)) in cases.iter().enumerate() {
        let f = tmp.path().join(name);
        write_mode(&f, text, 0o600);
        let out = repo.restore(
            &id,
            &tmp.path().join(format!("bad{i}")),
            &["--identity-file", s(&f)],
        );
        out.code(3).says(&format!("{}:{line}", s(&f)));
        let said = format!("{}{}", out.stdout, out.stderr);
        assert!(
            !said.contains(secret_text),
            "the line's content was printed: {}",
            out.describe()
        );
        no_secret(&out, &[&a]);
        let out = repo.verify(&id, &["--identity-file", s(&f)]);
        out.code(3).says(&format!("{}:{line}", s(&f)));
        no_secret(&out, &[&a]);
    }

    // Modes: 0644 and 0640 refused, unless --allow-readable-identity.
    let loose = tmp.path().join("loose.key");
    for mode in [0o644, 0o640, 0o604] {
        write_mode(&loose, &header, mode);
        let d = tmp.path().join(format!("m{mode:o}"));
        let out = repo.restore(&id, &d, &["--identity-file", s(&loose)]);
        out.code(3)
            .says("readable by")
            .says("--allow-readable-identity");
        no_secret(&out, &[&a]);
        repo.verify(&id, &["--identity-file", s(&loose)])
            .code(3)
            .says("readable by");
    }
    let d = tmp.path().join("allowed");
    let out = repo.restore(
        &id,
        &d,
        &["--identity-file", s(&loose), "--allow-readable-identity"],
    );
    restored_ok(&out, &id, &src, &d);
    no_secret(&out, &[&a]);
    eprintln!("key_errors({kind:?}): {:.1}s", t.elapsed().as_secs_f64());
}

/// (5) Key rotation: backups for A, for B (through a recipients file) and for both; restore
/// with both identities restores each; A alone fails on B's backup (exit 3, naming B's
/// recipient); one identity file holding both keys works too; `backups list` (both forms)
/// says who each backup was made for.
fn key_rotation(kind: Kind) {
    require_age();
    let t = Instant::now();
    let tmp = short_tempdir("encrot");
    let Some(repo) = Repo::open(kind, tmp.path(), "encrot") else {
        return;
    };
    let (a, b) = (keygen(tmp.path(), "a.key"), keygen(tmp.path(), "b.key"));
    let bfile = tmp.path().join("b.recipients");
    write_mode(&bfile, &format!("# B, from 2027\n{}\n", b.recipient), 0o644);
    let src = marker_tree(tmp.path(), 0);
    let id_a = repo.upload(&["--recipient", &a.recipient, "--dir", s(&src)]);
    let id_b = repo.upload(&["--recipients-file", s(&bfile), "--dir", s(&src)]);
    let id_ab = repo.upload(&[
        "--recipient",
        &a.recipient,
        "--recipients-file",
        s(&bfile),
        "--dir",
        s(&src),
    ]);
    let both = ["--identity-file", s(&a.path), "--identity-file", s(&b.path)];
    for (i, id) in [&id_a, &id_b, &id_ab].into_iter().enumerate() {
        let d = tmp.path().join(format!("both{i}"));
        let out = repo.restore(id, &d, &both);
        restored_ok(&out, id, &src, &d);
        no_secret(&out, &[&a, &b]);
    }
    let only_a = ["--identity-file", s(&a.path)];
    let only_b = ["--identity-file", s(&b.path)];
    for (id, ident, name) in [
        (&id_a, &only_a, "a"),
        (&id_ab, &only_a, "aa"),
        (&id_ab, &only_b, "ab"),
    ] {
        let d = tmp.path().join(format!("one-{name}"));
        restored_ok(&repo.restore(id, &d, ident), id, &src, &d);
    }
    let d = tmp.path().join("a-on-b");
    let out = repo.restore(&id_b, &d, &only_a);
    out.code(3)
        .says("no identity")
        .says(&id_b)
        .says(&b.recipient);
    no_secret(&out, &[&a, &b]);
    // One identity file with both keys (age-keygen output, concatenated).
    let ab = tmp.path().join("ab.key");
    let text = fs::read_to_string(&a.path).unwrap() + &fs::read_to_string(&b.path).unwrap();
    write_mode(&ab, &text, 0o600);
    let d = tmp.path().join("ab-file");
    restored_ok(
        &repo.restore(&id_b, &d, &["--identity-file", s(&ab)]),
        &id_b,
        &src,
        &d,
    );

    let list = repo.list_json();
    assert_eq!(list.len(), 3, "{list:?}");
    for (id, want) in [
        (&id_a, sorted(&[&a.recipient])),
        (&id_b, sorted(&[&b.recipient])),
        (&id_ab, sorted(&[&a.recipient, &b.recipient])),
    ] {
        let bk = list
            .iter()
            .find(|v| v["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} not listed: {list:?}"));
        assert_eq!(bk["manifest"]["encryption"]["scheme"], "age-x25519", "{bk}");
        assert_eq!(
            strings(&bk["manifest"]["encryption"]["recipients"]),
            want,
            "{bk}"
        );
    }
    let out = repo.run(&["backups", "list", &repo.url]);
    out.code(0);
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("encrypted for "))
        .collect();
    assert_eq!(lines.len(), 3, "{}", out.describe());
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&a.recipient) && l.contains(&b.recipient)),
        "{lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains(&b.recipient)).count(),
        2,
        "{lines:?}"
    );
    eprintln!("key_rotation({kind:?}): {:.1}s", t.elapsed().as_secs_f64());
}

/// (6) A repository of encrypted backups is listed and pruned with no identity anywhere: the
/// dry run deletes nothing, `--apply` deletes the older backups' objects (all three of each),
/// and the kept one still restores with the identity.
fn list_and_prune_without_identity(kind: Kind) {
    require_age();
    let t = Instant::now();
    let tmp = short_tempdir("encprn");
    let Some(repo) = Repo::open(kind, tmp.path(), "encprn") else {
        return;
    };
    let a = keygen(tmp.path(), "a.key");
    let src = marker_tree(tmp.path(), 0);
    let ids: Vec<String> = (0..3)
        .map(|i| {
            let mut args = vec!["--recipient", &a.recipient];
            if i == 1 {
                args.extend(["--compress", "zstd"]);
            }
            args.extend(["--dir", s(&src)]);
            repo.upload(&args)
        })
        .collect();
    let out = repo.run(&["backups", "list", &repo.url]);
    out.code(0).prints("3 backup(s): 3 complete, 0 incomplete");
    for id in &ids {
        let row = out.stdout.lines().find(|l| l.starts_with(id.as_str()));
        let row = row.unwrap_or_else(|| panic!("{id} not listed: {}", out.describe()));
        assert!(row.contains("complete"), "{row}");
    }
    let list = repo.list_json();
    assert_eq!(list.len(), 3, "{list:?}");
    for bk in &list {
        assert_eq!(bk["complete"], true, "{bk}");
        let e = &bk["manifest"]["encryption"];
        assert_eq!(e["scheme"], "age-x25519", "{bk}");
        assert_eq!(strings(&e["recipients"]), vec![a.recipient.clone()], "{bk}");
    }

    let before = repo.keys();
    let out = repo.run(&["backups", "prune", &repo.url, "--keep-last", "1"]);
    out.code(0);
    for id in &ids[..2] {
        out.prints(id);
    }
    assert_eq!(repo.keys(), before, "a dry run deleted: {}", out.describe());
    let out = repo.run(&["backups", "prune", &repo.url, "--keep-last", "1", "--apply"]);
    out.code(0);
    let after = repo.keys();
    for id in &ids[..2] {
        assert!(
            !after.iter().any(|k| k.starts_with(id.as_str())),
            "{id} was not deleted: {after:?}\n{}",
            out.describe()
        );
    }
    let kept: Vec<&String> = after
        .iter()
        .filter(|k| k.starts_with(ids[2].as_str()))
        .collect();
    assert_eq!(kept.len(), 3, "the newest backup's objects: {after:?}");
    let list = repo.list_json();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], ids[2].as_str());
    let d = tmp.path().join("dst");
    restored_ok(
        &repo.restore(&ids[2], &d, &["--identity-file", s(&a.path)]),
        &ids[2],
        &src,
        &d,
    );
    eprintln!(
        "list_and_prune_without_identity({kind:?}): {:.1}s",
        t.elapsed().as_secs_f64()
    );
}

/// (8) Encrypted binlogs: a one-shot `binlogs push --recipient` of a binlogging server, an
/// encrypted backup, more rows (one rotation), another push. No archived object holds a row's
/// marker (the server's own binlog does: the control); each entry stays clear and records the
/// recipients; `binlogs list` needs no identity; `restore --until-gtid` with the identity
/// restores exactly the rows up to the target; without it, exit 2; with an archived segment
/// altered, exit 1 naming it.
fn binlogs_encrypted(kind: Kind) {
    require_mariadb();
    require_age();
    require_tools(
        &["mariadb-binlog"],
        "mariadb-client (apt-get install mariadb-client)",
    );
    let t = Instant::now();
    let tmp = short_tempdir("encbl");
    let Some(repo) = Repo::open(kind, tmp.path(), "encbl") else {
        return;
    };
    let a = keygen(tmp.path(), "a.key");
    let server = Server::start_binlog(&tmp.path().join("srv"), 1 << 20);
    let insert = |from: u32, to: u32| {
        let rows: Vec<String> = (from..=to)
            .map(|i| format!("({i}, '{M_ROW}-{i}')"))
            .collect();
        server.sql(&format!(
            "INSERT INTO {M_DB}.{M_TBL} VALUES {}",
            rows.join(", ")
        ));
    };
    server.sql(&format!(
        "CREATE DATABASE {M_DB}; \
         CREATE TABLE {M_DB}.{M_TBL} (id INT PRIMARY KEY, v VARCHAR(64)) ENGINE=InnoDB"
    ));
    insert(1, 5);
    let index = server.datadir().join("mariadb-bin.index");
    let push = |what: &str| {
        let out = repo.run(&[
            "binlogs",
            "push",
            "--to",
            &repo.url,
            "--binlog-index",
            s(&index),
            "--recipient",
            &a.recipient,
        ]);
        assert_eq!(out.exit(), 0, "{what}: {}", out.describe());
    };
    push("the first push");
    let exec = format!("bash {FIXTURE} backup {}", s(&server.dir));
    let id = repo.upload(&["--recipient", &a.recipient, "--exec", &exec]);
    insert(6, 8);
    server.sql("FLUSH BINARY LOGS");
    insert(9, 10);
    let mid = server.sql("SELECT @@gtid_binlog_pos").trim().to_string();
    insert(11, 12);
    push("the second push");

    // The control: the server's own binlogs hold the rows in the clear.
    let clear = fs::read_dir(server.datadir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("mariadb-bin.0"))
        })
        .any(|p| marker_in(&fs::read(&p).unwrap(), &[&format!("{M_ROW}-11")]).is_some());
    assert!(
        clear,
        "the control failed: no server binlog holds row 11's marker"
    );
    assert_no_plaintext(&repo, &[M_ROW, M_DB, M_TBL]);
    let mut data_keys = Vec::new();
    let mut entries = 0;
    for key in repo.keys() {
        match layout::parse_key(&key) {
            Some(BinlogKey::Data { .. }) => data_keys.push(key),
            Some(BinlogKey::Entry { .. }) => {
                entries += 1;
                let e: Value = serde_json::from_slice(&repo.get(&key)).expect("entry is JSON");
                assert_eq!(
                    strings(&e["sealed"]["recipients"]),
                    vec![a.recipient.clone()],
                    "{key}: {e}"
                );
                assert!(e["sealed"]["size"].as_u64() > Some(0), "{key}: {e}");
            }
            _ => {}
        }
    }
    assert!(
        data_keys.len() >= 2 && entries >= 2,
        "archived: {:?}",
        repo.keys()
    );
    for args in [
        &["binlogs", "list"][..],
        &["binlogs", "list", "--json", "--files"][..],
    ] {
        let out = repo.run(&[args, &[&repo.url]].concat());
        out.code(0);
        assert!(!out.stdout.contains(M_ROW), "{}", out.describe());
    }
    drop(server);

    let ident = ["--identity-file", s(&a.path)];
    let d = tmp.path().join("no-ident");
    repo.run(&[
        "restore",
        "--from",
        &repo.url,
        "-C",
        s(&d),
        "--until-gtid",
        &mid,
    ])
    .code(2)
    .says("is encrypted")
    .says("--identity-file");
    // The newest segment is needed to reach the target; altered or cut, the restore stops on
    // it (exit 1 naming it) and leaves no good-looking DIR; verify says the same.
    // restore --until-gtid MID with both identities, into a directory of its own.
    let restore_until = |d: &Path| {
        repo.run(&[
            "restore",
            "--from",
            &repo.url,
            "-C",
            s(d),
            "--until-gtid",
            &mid,
            ident[0],
            ident[1],
        ])
    };
    let victim = data_keys.last().unwrap().clone();
    let good = repo.get(&victim);
    let mut flipped = good.clone();
    let i = flipped.len() / 2;
    flipped[i] ^= 0x40;
    let cut = good[..good.len() - 10].to_vec();
    for (what, bad) in [("altered", flipped), ("cut", cut)] {
        repo.put(&victim, bad);
        let d = tmp.path().join(format!("bad-segment-{what}"));
        let out = restore_until(&d);
        assert_eq!(out.exit(), 1, "{what}: {}", out.describe());
        out.says(&victim);
        no_secret(&out, &[&a]);
        eprintln!("binlog segment {what}: {}", left_unfinished(&d, &out));
        let v = repo.run(&["verify", &repo.url, ident[0], ident[1]]);
        assert_eq!(v.exit(), 1, "verify, segment {what}: {}", v.describe());
        v.says(&victim);
    }
    repo.put(&victim, good);
    repo.run(&["verify", &repo.url, ident[0], ident[1]])
        .code(0)
        .prints("GTID continuity hold");

    let d = tmp.path().join("restored");
    let out = restore_until(&d);
    out.code(0).prints(&format!("restored backup {id}"));
    no_secret(&out, &[&a]);
    let on = Server::start_on(&d);
    let ids: Vec<u32> = on
        .sql(&format!("SELECT id FROM {M_DB}.{M_TBL} ORDER BY id"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(ids, (1..=10).collect::<Vec<u32>>(), "--until-gtid {mid}");
    drop(on);
    eprintln!(
        "binlogs_encrypted({kind:?}): {:.1}s",
        t.elapsed().as_secs_f64()
    );
}

on_both_backends!(
    round_trips,
    no_plaintext_in_the_repository,
    mariabackup_encrypted,
    reading_errors,
    key_errors,
    key_rotation,
    list_and_prune_without_identity,
    binlogs_encrypted
);
