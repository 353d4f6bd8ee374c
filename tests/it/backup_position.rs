//! Full backups record where they end (issue 12 §2): `upload` catches
//! `xtrabackup_binlog_info` and `xtrabackup_checkpoints` as the stream passes and writes them
//! into the manifest; `backups list` shows them.
//!
//! 1. A binlogging server (`Server::start_binlog`), some writes and a rotation, then
//!    `SELECT @@gtid_binlog_pos` with nothing written after it, then
//!    `xbagent upload --exec '<fixture> backup DIR'` (real mariabackup) to a local repository
//!    and to S3. The manifest's position must equal both what `xtrabackup_binlog_info` says in
//!    a copy of the stored stream extracted by the reference `mbstream -x`, and the server's
//!    GTID position; its checkpoints equal `xtrabackup_checkpoints`; `backups list` (table and
//!    `--json`) shows them.
//! 2. The same backup with its manifest rewritten as an older xbagent wrote it (no position)
//!    still lists (`binlog -`) and restores.
//! 3. A stream built by hand (`xbagent create`) whose `xtrabackup_binlog_info` is hostile (a
//!    `../x` file name, 10 KiB long) uploads fine, warns naming the file, and records no
//!    position.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde_json::Value;
use xbagent::store::s3::S3Repo;
use xbagent::store::Repository;

use crate::support::backends::{on_both_backends, Kind};
use crate::support::cli::{run_timed, Out};
use crate::support::mariadb::{mbstream_extract, require_mariadb, Server, FIXTURE};
use crate::support::s3env::{s3_env, S3Env};
use crate::support::{child_path, s, short_tempdir, xb};

const LIMIT: Duration = Duration::from_secs(300);

/// A repository of either kind, driven through the binary; its objects read back directly.
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
                let repo = S3Repo::open(&bucket, "p", &env.settings(&env.endpoint))
                    .unwrap_or_else(|e| panic!("cannot open s3://{bucket}/p: {e}"));
                Some(Repo {
                    url: format!("s3://{bucket}/p"),
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

    /// `upload --to REPO ARGS`; returns the new backup's id.
    fn upload(&self, args: &[&str]) -> (String, Out) {
        let mut all = vec!["upload", "--to", &self.url];
        all.extend(args);
        let out = self.run(&all);
        out.code(0);
        let id = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("backup ")?.split_whitespace().next())
            .unwrap_or_else(|| panic!("no `backup ID complete` line: {}", out.describe()))
            .to_string();
        (id, out)
    }

    fn list_json(&self) -> Vec<Value> {
        let out = self.run(&["backups", "list", "--json", &self.url]);
        out.code(0);
        match serde_json::from_str(&out.stdout) {
            Ok(Value::Array(v)) => v,
            other => panic!(
                "backups list --json: not an array: {other:?}\n{}",
                out.stdout
            ),
        }
    }

    fn list_table(&self) -> String {
        let out = self.run(&["backups", "list", &self.url]);
        out.code(0);
        out.stdout
    }
}

fn time(s: &Value) -> SystemTime {
    let s = s.as_str().unwrap_or_else(|| panic!("not a string: {s}"));
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{s} is not RFC 3339: {e}"))
}

/// `key = value` lines of xtrabackup_checkpoints → the value of `key`.
fn checkpoint(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {text:?}"))
}

fn full_backup_records_its_binlog_position(kind: Kind) {
    require_mariadb();
    let tmp = short_tempdir("bpos");
    let Some(repo) = Repo::open(kind, tmp.path(), "bpos") else {
        return;
    };
    let src = Server::start_binlog(&tmp.path().join("src"), 1 << 20);
    src.sql(
        "CREATE DATABASE pitr; CREATE TABLE pitr.t (id INT PRIMARY KEY, v VARCHAR(64)) ENGINE=InnoDB; \
         INSERT INTO pitr.t VALUES (1, 'a'), (2, 'b'); FLUSH BINARY LOGS; \
         INSERT INTO pitr.t VALUES (3, 'c'); UPDATE pitr.t SET v = 'z' WHERE id = 1",
    );
    // Nothing writes from here until the backup is done: its position is this one.
    let gtid = src.sql("SELECT @@gtid_binlog_pos").trim().to_string();
    assert!(gtid.starts_with("0-1-"), "gtid_binlog_pos {gtid:?}");

    let before = SystemTime::now();
    let exec = format!("bash {FIXTURE} backup {}", s(&src.dir));
    let mut args = vec!["--exec", &exec];
    if let Some((env, _)) = &repo.s3 {
        args.extend(["--endpoint", &env.endpoint]);
    }
    let (id, up) = repo.upload(&args);
    let after = SystemTime::now();
    assert!(
        !up.stderr.contains("binlog_info") && !up.stderr.contains("checkpoints"),
        "a real backup's info files were not taken: {}",
        up.describe()
    );

    // What the stored stream itself says, through the reference extractor.
    let stream = tmp.path().join("stream.xbstream");
    fs::write(&stream, repo.get(&format!("{id}/stream.xbstream"))).unwrap();
    let x = tmp.path().join("x");
    mbstream_extract(&stream, &x);
    let info = fs::read_to_string(x.join("xtrabackup_binlog_info")).unwrap();
    let fields: Vec<&str> = info.trim_end_matches('\n').split('\t').collect();
    assert_eq!(fields.len(), 3, "xtrabackup_binlog_info: {info:?}");
    let checkpoints = fs::read_to_string(x.join("xtrabackup_checkpoints")).unwrap();

    let m = repo.manifest(&id);
    let b = &m["binlog"];
    assert_eq!(b["info_file"], "xtrabackup_binlog_info", "{m}");
    assert_eq!(b["file"], fields[0], "{m}");
    assert_eq!(
        b["position"].as_u64().map(|p| p.to_string()).as_deref(),
        Some(fields[1]),
        "{m}"
    );
    assert_eq!(b["gtid"], fields[2], "{m}");
    assert_eq!(
        b["gtid"],
        gtid.as_str(),
        "the server's gtid_binlog_pos before the backup"
    );
    assert_eq!(
        b["file"], "mariadb-bin.000002",
        "one FLUSH BINARY LOGS: the second file"
    );
    // The end time lies within the upload (to the millisecond it is written with).
    let end = time(&b["end_time"]);
    assert!(
        end + Duration::from_millis(1) >= before && end <= after,
        "{m}"
    );
    let c = &m["checkpoints"];
    assert_eq!(c["backup_type"], "full-backuped", "{m}");
    assert!(c["to_lsn"].as_u64() > Some(0), "{m}");
    for k in ["from_lsn", "to_lsn", "last_lsn"] {
        assert_eq!(c[k].as_u64(), Some(checkpoint(&checkpoints, k)), "{k}: {m}");
    }

    // backups list --json shows them as the manifest has them; the table shows the position.
    let all = repo.list_json();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["manifest"]["binlog"], *b);
    assert_eq!(all[0]["manifest"]["checkpoints"], *c);
    let table = repo.list_table();
    let shown = format!("binlog {}:{} {gtid}", fields[0], fields[1]);
    assert!(table.contains(&shown), "expected {shown:?} in:\n{table}");

    // The same backup as an older xbagent wrote it: no position. It still lists and restores.
    let mut old = m.clone();
    let o = old.as_object_mut().unwrap();
    o.remove("binlog");
    o.remove("checkpoints");
    repo.put(
        &format!("{id}/manifest.json"),
        serde_json::to_vec_pretty(&old).unwrap(),
    );
    let all = repo.list_json();
    assert_eq!(all[0]["complete"], true, "{all:?}");
    assert!(all[0]["manifest"].get("binlog").is_none(), "{all:?}");
    let table = repo.list_table();
    assert!(table.contains(" binlog -\n"), "{table}");
    let restored = tmp.path().join("restored");
    repo.run(&[
        "restore",
        "--from",
        &format!("{}@{id}", repo.url),
        "-C",
        s(&restored),
    ])
    .code(0);
    assert_eq!(
        fs::read_to_string(restored.join("xtrabackup_binlog_info")).unwrap(),
        info
    );
}

/// A directory that looks like a backup, with a hostile `xtrabackup_binlog_info`.
fn hostile_dir(root: &Path, info: &[u8]) -> PathBuf {
    let dir = root.join("tree");
    fs::create_dir_all(dir.join("db")).unwrap();
    fs::write(dir.join("ibdata1"), vec![7u8; 50_000]).unwrap();
    fs::write(dir.join("db/t.ibd"), vec![1u8; 20_000]).unwrap();
    fs::write(dir.join("xtrabackup_binlog_info"), info).unwrap();
    fs::write(
        dir.join("xtrabackup_checkpoints"),
        "backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 4711\nlast_lsn = 4712\n",
    )
    .unwrap();
    dir
}

fn a_hostile_binlog_info_warns_and_records_nothing(kind: Kind) {
    let tmp = short_tempdir("bposbad");
    let Some(repo) = Repo::open(kind, tmp.path(), "bposbad") else {
        return;
    };
    let long = [b"mariadb-bin.000001\t4\t".as_slice(), &[b'1'; 10 << 10]].concat();
    let cases: [(&str, &[u8], &str); 2] = [
        ("dotdot", b"../x\t4\t0-1-2\n", "'../x' is not a plain name"),
        ("long", &long, "larger than 4096 bytes"),
    ];
    for (name, info, why) in cases {
        let root = tmp.path().join(name);
        let dir = hostile_dir(&root, info);
        let stream = root.join("s.xbstream");
        let made = xb(&["-q", "create", "-C", s(&dir), "."])
            .stdout(fs::File::create(&stream).unwrap())
            .status()
            .unwrap();
        assert!(made.success(), "xbagent create: {made}");
        let mut args = vec![s(&stream)];
        if let Some((env, _)) = &repo.s3 {
            args.extend(["--endpoint", &env.endpoint]);
        }
        let (id, up) = repo.upload(&args);
        up.says("xtrabackup_binlog_info").says(why);
        let m = repo.manifest(&id);
        assert!(m.get("binlog").is_none(), "{name}: {m}");
        // The checkpoints beside it are good and recorded.
        assert_eq!(m["checkpoints"]["to_lsn"], 4711, "{name}: {m}");
        repo.run(&["verify", &format!("{}@{id}", repo.url)]).code(0);
    }
}

on_both_backends!(
    full_backup_records_its_binlog_position,
    a_hostile_binlog_info_warns_and_records_nothing
);
