//! End-to-end backups of a real MariaDB server through the backup repository, as an operator
//! runs them (deploy/kubernetes/backup-cronjob.yaml, format-spec/repository.md):
//!
//! 1. a throw-away server (`scripts/mariadb-fixture start`) loaded with InnoDB (plain and
//!    page-compressed), MyISAM and Aria tables (`load`), and a backup user with the privileges
//!    deploy/README.md lists, whose password reaches mariabackup only through the environment;
//! 2. `xbagent upload --to REPO --exec 'mariabackup --backup --stream=xbstream --parallel=4
//!    ... --password="$MARIADB_BACKUP_PASSWORD" ...'`;
//! 3. `xbagent backups list` (table and `--json`) shows one complete backup, and the password
//!    is in neither the listing nor the manifest;
//! 4. `xbagent verify REPO@latest`;
//! 5. `xbagent restore --from REPO@latest -C DIR`, which must leave no in-progress marker, and
//!    must be byte-identical to what the reference tools make of the stored object
//!    (`zstd -d | mbstream -x`, format-spec/repository.md section 14), whose BLAKE3 must be the
//!    manifest's;
//! 6. `mariabackup --prepare`, a server started on DIR, and CHECKSUM TABLE of every user table
//!    equal to the source's.
//!
//! One test per backend: S3 (`s3://BUCKET/PREFIX`, `--compress zstd`, against the test server
//! that `scripts/test` starts, see tests/support/s3env.rs) and a local directory (a plain
//! path, no compression).
//!
//! A missing MariaDB tool is a failure naming the tool, never a skip. A missing S3 server is a
//! failure under XBAGENT_REQUIRE_TOOLS=1 and a loud skip otherwise. Set XBAGENT_TEST_KEEP=1 to
//! keep the temp dir (command logs, datadirs, restores) for a post-mortem.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use xbagent::store::s3::S3Repo;
use xbagent::store::Repository;

use crate::support::mariadb::{fixture, mbstream_extract, require_mariadb, Server};
use crate::support::trees::{assert_same_tree, tree, Entry};
use crate::support::{s as p, s3env, short_tempdir, xb};

/// How long one command (a backup, a restore, a prepare) may take before the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// What a finished command left behind.
struct Ran {
    what: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    secs: f64,
}

impl Ran {
    fn describe(&self) -> String {
        format!(
            "`{}` exited with {} after {:.1}s\n--- stdout ---\n{}\n--- stderr (last 8 KiB) ---\n{}",
            self.what,
            self.status,
            self.secs,
            self.stdout,
            tail(&self.stderr, 8192)
        )
    }

    fn ok(self) -> Ran {
        assert!(self.status.success(), "{}", self.describe());
        self
    }
}

fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut i = s.len() - n;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// Run `cmd` with its output in `logs/NAME.{out,err}`, killing it after [`COMMAND_TIMEOUT`].
fn run(mut cmd: Command, logs: &Path, name: &str) -> Ran {
    fs::create_dir_all(logs).unwrap();
    let out_path = logs.join(format!("{name}.out"));
    let err_path = logs.join(format!("{name}.err"));
    let what = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > COMMAND_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{what}` did not finish within {}s (output in {} and {})",
                COMMAND_TIMEOUT.as_secs(),
                out_path.display(),
                err_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let ran = Ran {
        what,
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&fs::read(&err_path).unwrap_or_default()).into_owned(),
        secs: start.elapsed().as_secs_f64(),
    };
    eprintln!("{name}: {:.1}s, {}", ran.secs, ran.status);
    ran
}

const BACKUP_USER: &str = "xbbackup";

/// The source: a loaded server with a backup user that logs in over TCP with a password.
/// Returns the server, its checksums, and the password.
fn source_server(dir: &Path) -> (Server, BTreeMap<String, String>, String) {
    let src = Server::start(dir);
    src.load("2");
    // The privileges deploy/README.md gives the backup user.
    let password = format!("pw-{}-{}", std::process::id(), src.port);
    src.sql(&format!(
        "CREATE USER '{BACKUP_USER}'@'%' IDENTIFIED BY '{password}'; \
         GRANT RELOAD, PROCESS, LOCK TABLES, BINLOG MONITOR ON *.* TO '{BACKUP_USER}'@'%'"
    ));
    // Incompressible rows (~24 MiB), so that even compressed the stream object spans
    // several multipart parts.
    src.sql(
        "CREATE TABLE fx.t_random (id INT PRIMARY KEY, b VARBINARY(1024)) ENGINE=InnoDB; \
         INSERT INTO fx.t_random SELECT seq, RANDOM_BYTES(1024) FROM fx.seq_1_to_24000",
    );
    let sums = src.checksums();
    for t in [
        "fx.t_random",
        "fx.t_innodb",
        "fx.t_pagecomp",
        "fx.t_myisam",
        "fx.t_aria",
        "ddl.big_myisam",
    ] {
        assert!(
            sums.contains_key(t),
            "the fixture did not create {t}: {sums:?}"
        );
    }
    (src, sums, password)
}

/// The backup command as a CronJob gives it to `upload --exec`: host, port and password come
/// from the environment (expanded by `sh -c`), so that they are not recorded in the bucket.
fn mariabackup_exec(src: &Server, target_dir: &Path) -> String {
    format!(
        "mariabackup --no-defaults --backup --stream=xbstream --parallel=4 \
         --host=\"$DB_HOST\" --port=\"$DB_PORT\" --user={BACKUP_USER} \
         --password=\"$MARIADB_BACKUP_PASSWORD\" --datadir={} --target-dir={}",
        p(&src.dir.join("data")),
        p(target_dir)
    )
}

fn with_backup_env(cmd: &mut Command, src: &Server, password: &str) {
    cmd.env("DB_HOST", "127.0.0.1")
        .env("DB_PORT", src.port.to_string())
        .env("MARIADB_BACKUP_PASSWORD", password);
}

/// `backup <ID> complete in ...` → ID.
fn uploaded_id(ran: &Ran) -> String {
    let line = ran
        .stdout
        .lines()
        .find(|l| l.starts_with("backup ") && l.contains(" complete in "))
        .unwrap_or_else(|| {
            panic!(
                "upload printed no `backup ID complete` line\n{}",
                ran.describe()
            )
        });
    let id = line.split_whitespace().nth(1).unwrap().to_string();
    assert!(
        id.len() == 20 && id.ends_with('Z') && id.as_bytes()[8] == b'T',
        "unexpected backup id {id:?} in {line:?}"
    );
    id
}

/// `backups list` (table and --json) shows exactly one backup, `id`, complete, described by
/// its manifest; the password appears nowhere.
fn check_listing(
    table: &Ran,
    json: &Ran,
    id: &str,
    compression: &str,
    manifest: &Value,
    password: &str,
) {
    let rows: Vec<&str> = table.stdout.lines().skip(1).collect();
    let row = rows
        .iter()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("backups list does not show {id}\n{}", table.describe()));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols.get(1), Some(&"complete"), "list row: {row:?}");
    assert!(
        table
            .stdout
            .contains("1 backup(s): 1 complete, 0 incomplete"),
        "backups list:\n{}",
        table.stdout
    );
    assert!(
        !table.stdout.contains(password),
        "the password is in backups list:\n{}",
        table.stdout
    );

    let all: Value = serde_json::from_str(&json.stdout)
        .unwrap_or_else(|e| panic!("backups list --json: {e}\n{}", json.describe()));
    let all = all.as_array().expect("backups list --json is an array");
    assert_eq!(all.len(), 1, "backups list --json: {all:?}");
    let b = &all[0];
    assert_eq!(b["id"], id, "{b}");
    assert_eq!(b["complete"], true, "{b}");
    assert!(b.get("problem").is_none(), "{b}");
    let m = &b["manifest"];
    assert_eq!(m["compression"], compression, "{b}");
    assert_eq!(m["files"], manifest["stream"]["files"], "{b}");
    assert_eq!(m["stream_bytes"], manifest["stream"]["bytes"], "{b}");
    assert_eq!(m["object_size"], manifest["object"]["size"], "{b}");
    assert_eq!(
        b["objects"], 2,
        "a complete backup is its stream and manifest: {b}"
    );
    assert!(!json.stdout.contains(password), "{}", json.stdout);
}

/// The manifest without its file list, for messages.
fn brief(m: &Value) -> String {
    let mut m = m.clone();
    if let Some(files) = m.get_mut("files") {
        let n = files.as_array().map_or(0, Vec::len);
        *files = Value::String(format!("[{n} entries]"));
    }
    m.to_string()
}

/// The manifest of a backup taken with [`mariabackup_exec`].
fn check_manifest(m: &Value, id: &str, compression: &str, object_key: &str, password: &str) {
    let b = brief(m);
    assert_eq!(m["format"], 1, "{b}");
    assert_eq!(m["id"], id, "{b}");
    assert_eq!(m["compression"], compression, "{b}");
    assert_eq!(m["object"]["key"], object_key, "{b}");
    assert_eq!(m["producer_exit_status"], 0, "{b}");
    assert_eq!(m["source"]["kind"], "exec", "{b}");
    // "auto" when the stream holds payload and end chunks only (no D, R or S chunk).
    assert!(
        m["stream"]["dialect"] == "mariadb" || m["stream"]["dialect"] == "auto",
        "{b}"
    );
    let detail = m["source"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("\"$MARIADB_BACKUP_PASSWORD\"") && !detail.contains(password),
        "the manifest must record the command as given, without the password: {detail:?}"
    );
    assert!(
        !m.to_string().contains(password),
        "the password is in the manifest"
    );
    let files = m["files"].as_array().expect("manifest files[]");
    let paths: BTreeSet<&str> = files.iter().filter_map(|f| f["path"].as_str()).collect();
    // mariabackup 10.11 sends an InnoDB table that was bulk-loaded (no redo) as TABLE.new,
    // which --prepare renames to TABLE.ibd.
    for want in [
        "ibdata1",
        "fx/t_innodb.ibd|fx/t_innodb.new",
        "fx/t_pagecomp.ibd|fx/t_pagecomp.new",
        "fx/t_myisam.MYD",
        "fx/t_aria.MAD",
        "ddl/big_myisam.MYD",
        "xtrabackup_checkpoints",
    ] {
        assert!(
            want.split('|').any(|w| paths.contains(w)),
            "the manifest lists no {want}: {paths:?}"
        );
    }
    assert_eq!(
        m["stream"]["files"].as_u64(),
        Some(files.iter().filter(|f| f["state"] == "complete").count() as u64),
        "stream.files is the number of complete files: {b}"
    );
}

/// `restore` left a good directory: exit 0 checked by the caller, no in-progress marker.
fn check_restored(dir: &Path, ran: &Ran, id: &str) {
    assert!(
        ran.stdout.contains(&format!("restored backup {id} into")),
        "restore restored another backup than {id}:\n{}",
        ran.describe()
    );
    assert!(
        !dir.join(".xbagent-restore-in-progress").exists(),
        "restore exited 0 but left its in-progress marker"
    );
    assert!(
        dir.join("xtrabackup_checkpoints").is_file() && dir.join("ibdata1").is_file(),
        "the restored directory is not a mariabackup backup"
    );
}

/// Prepare the restored backup, start a server on it and compare every table with the source.
fn prepare_start_compare(restored: &Path, source_sums: &BTreeMap<String, String>) {
    let t = Instant::now();
    fixture(&["prepare", p(restored)]);
    eprintln!("prepare: {:.1}s", t.elapsed().as_secs_f64());
    let server = Server::start_on(restored);
    let sums = server.checksums();
    let nulls: Vec<_> = sums.iter().filter(|(_, c)| *c == "NULL").collect();
    assert!(
        nulls.is_empty(),
        "unreadable tables after restore: {nulls:?}"
    );
    assert_eq!(
        &sums, source_sums,
        "CHECKSUM TABLE of the server on the restored backup differs from the source"
    );
    eprintln!("{} tables match the source", sums.len());
}

/// The stored object of backup `id` as bytes: read through the S3 API, or the file.
fn read_object(s3: Option<&S3Repo>, repo_dir: &Path, key: &str, size: u64) -> Vec<u8> {
    let Some(s3) = s3 else {
        return fs::read(repo_dir.join(key)).unwrap();
    };
    let mut stored = Vec::with_capacity(size as usize);
    while (stored.len() as u64) < size {
        let len = (size - stored.len() as u64).min(16 << 20);
        let piece = s3
            .get_range(key, stored.len() as u64, len)
            .unwrap_or_else(|e| panic!("cannot read {key}: {e}"));
        assert!(!piece.is_empty(), "empty range read of {key}");
        stored.extend_from_slice(&piece);
    }
    stored
}

/// Which repository a scenario backs up to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `s3://BUCKET/PREFIX`, `--compress zstd`, on the test server.
    S3,
    /// A plain path that does not exist yet (upload creates it), no compression.
    Local,
}

/// The whole run of the module comment, against one backend.
fn upload_restore_prepare_compare(kind: Kind) {
    require_mariadb();
    let env = match kind {
        Kind::S3 => match s3env::s3_env() {
            Some(env) => Some(env),
            None => return,
        },
        Kind::Local => None,
    };
    let started = Instant::now();
    let tmp = short_tempdir(if env.is_some() { "xbs-s3" } else { "xbs-local" });
    let logs = tmp.path().join("logs");
    let mb_target = tmp.path().join("mbtarget");
    fs::create_dir_all(&mb_target).unwrap();
    let restore_dir = tmp.path().join("restore");
    let reference = tmp.path().join("ref");
    let repo_dir = tmp.path().join("backups").join("mariadb");
    let prefix = "prod/mariadb";
    let (repo, s3) = match &env {
        Some(env) => {
            let bucket = env.new_bucket("mariadb");
            let s3 = S3Repo::open(&bucket, prefix, &env.settings(&env.endpoint))
                .unwrap_or_else(|e| panic!("cannot open s3://{bucket}/{prefix}: {e}"));
            (format!("s3://{bucket}/{prefix}"), Some(s3))
        }
        None => (p(&repo_dir).to_string(), None),
    };
    let latest = format!("{repo}@latest");
    let (compression, object) = match kind {
        Kind::S3 => ("zstd:3", "stream.xbstream.zst"),
        Kind::Local => ("none", "stream.xbstream"),
    };
    let xbc = |args: &[&str]| match &env {
        Some(env) => env.xbagent(args),
        None => xb(args),
    };
    // Every object of the repository (every file of a local one), keys relative to it.
    let keys = || -> Vec<String> {
        let Some(s3) = &s3 else {
            let files = tree(&repo_dir).into_iter();
            return files
                .filter(|(_, e)| matches!(e, Entry::File { .. }))
                .map(|(k, _)| k)
                .collect();
        };
        let objects = s3
            .list("")
            .unwrap_or_else(|e| panic!("cannot list {repo}: {e}"));
        objects.into_iter().map(|o| o.key).collect()
    };

    let (src, source_sums, password) = source_server(&tmp.path().join("src"));
    eprintln!(
        "source ready: {} tables ({:.1}s)",
        source_sums.len(),
        started.elapsed().as_secs_f64()
    );

    // As the CronJob runs it: the password from the env; on S3 --endpoint given and zstd.
    let exec = mariabackup_exec(&src, &mb_target);
    let mut args = vec!["upload", "--to", &repo];
    if let Some(env) = &env {
        args.extend(["--endpoint", &env.endpoint, "--compress", "zstd"]);
        args.extend(["--memory-limit", "256MiB"]);
    }
    args.extend(["--exec", &exec]);
    let mut up = xbc(&args);
    with_backup_env(&mut up, &src, &password);
    let up = run(up, &logs, "upload").ok();
    let id = uploaded_id(&up);
    assert!(
        !up.stdout.contains(&password) && !up.stderr.contains(&password),
        "upload printed the password"
    );

    // What the repository holds: the stream object and the manifest, nothing else (no
    // started.json, no .partial, no temporary file).
    let stored_keys = keys();
    assert_eq!(
        stored_keys,
        vec![format!("{id}/manifest.json"), format!("{id}/{object}")],
        "objects under {repo} after a successful upload"
    );
    let manifest: Value = serde_json::from_slice(&match &s3 {
        Some(s3) => s3
            .get(&format!("{id}/manifest.json"), 64 << 20)
            .unwrap()
            .to_vec(),
        None => fs::read(repo_dir.join(&id).join("manifest.json")).unwrap(),
    })
    .expect("the manifest is not JSON");
    check_manifest(&manifest, &id, compression, object, &password);
    if kind == Kind::S3 {
        assert!(
            manifest["object"]["parts"].as_u64() >= Some(3),
            "expected the compressed object in several parts: {}",
            brief(&manifest)
        );
    }

    let table = run(xbc(&["backups", "list", &repo]), &logs, "list").ok();
    let json = run(
        xbc(&["backups", "list", "--json", &repo]),
        &logs,
        "list-json",
    )
    .ok();
    check_listing(&table, &json, &id, compression, &manifest, &password);

    if kind == Kind::S3 {
        // A rotated secret: mariabackup cannot log in and exits 1. The upload fails with exit
        // 1 and leaves nothing in the bucket (the backup above stays the only one).
        let mut bad = xbc(&[
            "upload",
            "--to",
            &repo,
            "--compress",
            "zstd",
            "--exec",
            &exec,
        ]);
        with_backup_env(&mut bad, &src, "not-the-password");
        let bad = run(bad, &logs, "upload-bad-password");
        assert_eq!(
            bad.status.code(),
            Some(1),
            "an upload whose mariabackup fails must exit 1\n{}",
            bad.describe()
        );
        assert!(
            bad.stderr.contains("exited with status"),
            "the error names the producer's exit status\n{}",
            bad.describe()
        );
        assert_eq!(keys(), stored_keys, "a failed upload left objects behind");
    }

    let verify = run(xbc(&["verify", &latest]), &logs, "verify").ok();
    assert!(
        verify
            .stdout
            .contains(&format!("ok: backup {id} matches its manifest")),
        "{}",
        verify.describe()
    );
    // Restore @latest from S3; a local one by a file:// URL and an explicit id.
    let from = match kind {
        Kind::S3 => latest.clone(),
        Kind::Local => format!("file://{repo}@{id}"),
    };
    let restore = run(
        xbc(&["restore", "--from", &from, "-C", p(&restore_dir)]),
        &logs,
        "restore",
    )
    .ok();
    check_restored(&restore_dir, &restore, &id);

    // The stored object read without xbagent (repository.md section 14): its size and BLAKE3
    // are the manifest's, it is the plain stream or plain zstd of it, and mbstream -x of it
    // gives what restore wrote.
    let size = manifest["object"]["size"].as_u64().expect("object.size");
    let stored = read_object(s3.as_ref(), &repo_dir, &format!("{id}/{object}"), size);
    assert_eq!(
        stored.len() as u64,
        size,
        "object size differs from the manifest's"
    );
    assert_eq!(
        blake3::hash(&stored).to_hex().as_str(),
        manifest["object"]["blake3"].as_str().unwrap(),
        "BLAKE3 of the stored object differs from the manifest's"
    );
    let plain = match kind {
        Kind::S3 => zstd::decode_all(&stored[..]).expect("the stored object is not a zstd stream"),
        Kind::Local => stored,
    };
    assert_eq!(
        Some(plain.len() as u64),
        manifest["stream"]["bytes"].as_u64(),
        "the stream's size differs from the manifest's stream.bytes"
    );
    let plain_path = tmp.path().join("stream.xbstream");
    fs::write(&plain_path, &plain).unwrap();
    drop(plain);
    mbstream_extract(&plain_path, &reference);
    assert_same_tree(&reference, &restore_dir);
    fs::remove_dir_all(&reference).unwrap();
    fs::remove_file(&plain_path).unwrap();

    prepare_start_compare(&restore_dir, &source_sums);
    drop(src);
    eprintln!("test done in {:.1}s", started.elapsed().as_secs_f64());
}

#[test]
fn s3_upload_of_mariabackup_restores_prepares_and_matches_source_checksums() {
    upload_restore_prepare_compare(Kind::S3);
}

#[test]
fn local_upload_of_mariabackup_restores_prepares_and_matches_source_checksums() {
    upload_restore_prepare_compare(Kind::Local);
}
