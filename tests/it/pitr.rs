//! Point-in-time recovery end to end (issue 12), on a local and an S3 repository: a real
//! binlogging `mariadbd` written to at a steady rate, `binlogs push --follow` through
//! rotations and a restart, two full backups taken with `mariabackup` while rows are written,
//! then restores to a GTID, to a time, to the latest transaction and to a time before the
//! newest backup, each compared row by row with the writer's record. Then the faults: a killed
//! push rerun, an entry lost between its two writes, a corrupted and a deleted archived
//! binlog, a target beyond the archive, an unreachable server; and prune.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tempfile::TempDir;
use xbagent::binlog::Gtid;
use xbagent::store::binlogs::layout::{self, Key};
use xbagent::store::Repository;

use crate::support::backends::{on_both_backends, Kind};
use crate::support::cli::{run, Out};
use crate::support::mariadb::{require_mariadb, Server, FIXTURE};
use crate::support::proc::Proc;
use crate::support::s3env::{s3_env, S3Env};
use crate::support::{require_tools, s, short_tempdir, XBAGENT as BIN};

/// One row the writer committed: its id, its transaction's GTID, and the wall-clock instants
/// before the client was started and after it returned.
#[derive(Debug, Clone, Copy)]
struct Row {
    id: u64,
    gtid: Gtid,
    before: f64,
    after: f64,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Inserts one row per client call, as fast as the client starts (about 50 a second),
/// recording each; pausable around a server restart.
struct Writer {
    rows: Arc<Mutex<Vec<Row>>>,
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    idle: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Writer {
    fn start(sock: PathBuf) -> Writer {
        let rows = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let idle = Arc::new(AtomicBool::new(false));
        let (r, st, p, i) = (rows.clone(), stop.clone(), pause.clone(), idle.clone());
        let handle = thread::spawn(move || {
            let mut n = 0u64;
            while !st.load(Ordering::SeqCst) {
                if p.load(Ordering::SeqCst) {
                    i.store(true, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(20));
                    continue;
                }
                i.store(false, Ordering::SeqCst);
                // No row in flight across an even second: the time targets need whole seconds
                // that no transaction straddles (the binlog stamps whole seconds).
                let t = now();
                let to_next = t.ceil() - t;
                if (t.ceil() as u64).is_multiple_of(2) && to_next < 0.15 {
                    thread::sleep(Duration::from_secs_f64(to_next + 0.01));
                    continue;
                }
                n += 1;
                let before = now();
                let out = Command::new("mariadb")
                    .args(["--no-defaults", "--user=root", "--batch", "--skip-column-names"])
                    .arg(format!("--socket={}", sock.display()))
                    .arg("-e")
                    .arg(format!(
                        "INSERT INTO p.t(v) VALUES('pitr-row-{n}'); SELECT LAST_INSERT_ID(), @@last_gtid;"
                    ))
                    .stdin(Stdio::null())
                    .output()
                    .expect("run mariadb");
                let after = now();
                assert!(
                    out.status.success(),
                    "the writer's insert failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let text = String::from_utf8_lossy(&out.stdout);
                let mut f = text.split_whitespace();
                let id: u64 = f.next().unwrap().parse().unwrap();
                let gtid: Gtid = f.next().unwrap().parse().unwrap();
                r.lock().unwrap().push(Row {
                    id,
                    gtid,
                    before,
                    after,
                });
                thread::sleep(Duration::from_millis(5));
            }
        });
        Writer {
            rows,
            stop,
            pause,
            idle,
            handle: Some(handle),
        }
    }

    fn pause(&self) {
        self.pause.store(true, Ordering::SeqCst);
        let t = Instant::now();
        while !self.idle.load(Ordering::SeqCst) {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the writer did not pause"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn resume(&self) {
        self.idle.store(false, Ordering::SeqCst);
        self.pause.store(false, Ordering::SeqCst);
    }

    fn finish(mut self) -> Vec<Row> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("the writer panicked");
        }
        let rows = self.rows.lock().unwrap().clone();
        rows
    }
}

/// The repository under test, through the CLI and through the library (to inspect and
/// damage objects).
struct Repo {
    tmp: TempDir,
    url: String,
    lib: Arc<dyn Repository>,
    env: Option<S3Env>,
}

impl Repo {
    fn open(kind: Kind, tag: &str) -> Option<Repo> {
        let tmp = short_tempdir(&format!("xbp-{tag}"));
        match kind {
            Kind::Local => {
                let dir = tmp.path().join("repo");
                let lib = xbagent::store::local::LocalRepo::open(&dir).unwrap();
                Some(Repo {
                    url: s(&dir).to_string(),
                    lib: Arc::new(lib),
                    env: None,
                    tmp,
                })
            }
            Kind::S3 => {
                let env = s3_env()?;
                let bucket = env.new_bucket(&format!("p-{tag}"));
                let lib =
                    xbagent::store::s3::S3Repo::open(&bucket, "db", &env.settings(&env.endpoint))
                        .unwrap();
                Some(Repo {
                    url: format!("s3://{bucket}/db"),
                    lib: Arc::new(lib),
                    env: Some(env),
                    tmp,
                })
            }
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        match &self.env {
            None => {
                let mut c = Command::new(BIN);
                c.args(args);
                c
            }
            Some(env) => env.xbagent(args),
        }
    }

    fn run(&self, args: &[&str]) -> Out {
        run(self.cmd(args))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A one-shot `binlogs push` of the server whose index is `index`, with `extra` flags.
    fn push_once(&self, index: &Path, extra: &[&str]) -> Out {
        let mut args = vec![
            "binlogs",
            "push",
            "--to",
            &self.url,
            "--binlog-index",
            s(index),
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// `restore --from REPO -C DIR TARGET...`.
    fn restore_into(&self, dir: &Path, target: &[&str]) -> Out {
        let mut args = vec!["restore", "--from", &self.url, "-C", s(dir)];
        args.extend_from_slice(target);
        self.run(&args)
    }

    fn binlog_keys(&self) -> Vec<(String, Key)> {
        self.lib
            .list(layout::ROOT)
            .unwrap()
            .into_iter()
            .filter_map(|o| layout::parse_key(&o.key).map(|k| (o.key, k)))
            .collect()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        out.code(0);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?} did not print JSON: {e}\n{}", out.describe()))
    }
}

struct Backup {
    id: String,
    end: f64,
    gtid_seq: u64,
    file: String,
}

fn upload(repo: &Repo, server: &Server) -> Backup {
    let exec = format!("bash {FIXTURE} backup {}", s(&server.dir));
    repo.run(&["upload", "--to", &repo.url, "--exec", &exec])
        .code(0);
    let list = repo.json(&["backups", "list", "--json", &repo.url]);
    let last = list.as_array().unwrap().last().unwrap().clone();
    let b = &last["manifest"]["binlog"];
    let end = humantime::parse_rfc3339(b["end_time"].as_str().unwrap())
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let gtid: Gtid = b["gtid"].as_str().unwrap().parse().unwrap();
    Backup {
        id: last["id"].as_str().unwrap().to_string(),
        end,
        gtid_seq: gtid.seq,
        file: b["file"].as_str().unwrap().to_string(),
    }
}

/// A whole second in `(lo, hi)` that no row straddles (started before it, returned after).
fn quiet_second(rows: &[Row], lo: f64, hi: f64) -> u64 {
    let mut t = lo.ceil() as u64;
    while (t as f64) < hi {
        let tf = t as f64;
        if !rows.iter().any(|r| r.before < tf && r.after >= tf) {
            return t;
        }
        t += 1;
    }
    panic!("no second between {lo} and {hi} without a row in flight");
}

fn rfc3339(t: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t)).to_string()
}

/// Restore with `target` into a fresh directory, start a server on it, and return its ids.
fn restore_ids(repo: &Repo, name: &str, target: &[&str]) -> (Out, Vec<u64>) {
    let dir = repo.path(name);
    let out = repo.restore_into(&dir, target);
    out.code(0);
    let server = Server::start_on(&dir);
    let ids = server
        .sql("SELECT id FROM p.t ORDER BY id")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().parse().unwrap())
        .collect();
    drop(server);
    (out, ids)
}

fn ids_where(rows: &[Row], keep: impl Fn(&Row) -> bool) -> Vec<u64> {
    let mut v: Vec<u64> = rows.iter().filter(|r| keep(r)).map(|r| r.id).collect();
    v.sort_unstable();
    v
}

fn wait_archived(repo: &Repo, gtid: Gtid) {
    let t = Instant::now();
    loop {
        let l = repo.json(&["binlogs", "list", "--json", &repo.url]);
        let last = l["servers"][0]["last_gtid"].as_str().unwrap_or("");
        if last == gtid.to_string() {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the archive did not reach {gtid} (at {last:?}) within 60 s"
        );
        thread::sleep(Duration::from_millis(500));
    }
}

fn push_follow(repo: &Repo, index: &Path, log: PathBuf) -> Proc {
    let mut c = repo.cmd(&[
        "binlogs",
        "push",
        "--to",
        &repo.url,
        "--binlog-index",
        s(index),
        "--follow",
        "--max-lag",
        "2s",
    ]);
    Proc::spawn("binlogs push", &mut c, log, true)
}

fn pitr_roundtrip(kind: Kind) {
    require_mariadb();
    require_tools(
        &["mariadb-binlog"],
        "mariadb-client (apt-get install mariadb-client)",
    );
    let Some(repo) = Repo::open(kind, "rt") else {
        return;
    };
    let mut server = Server::start_binlog(&repo.path("srv"), 96 << 10);
    server.sql("CREATE DATABASE p; CREATE TABLE p.t (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(64)) ENGINE=InnoDB");
    let index = server.datadir().join("mariadb-bin.index");
    let mut push = push_follow(&repo, &index, repo.path("push.log"));
    let writer = Writer::start(server.dir.join("sock"));
    thread::sleep(Duration::from_secs(2));
    let a = upload(&repo, &server);
    thread::sleep(Duration::from_secs(3));
    server.sql("FLUSH BINARY LOGS");
    writer.pause();
    server.restart();
    writer.resume();
    thread::sleep(Duration::from_secs(2));
    let b = upload(&repo, &server);
    // Files that begin after B's position and are finished (the gap test deletes one).
    for _ in 0..3 {
        thread::sleep(Duration::from_secs(1));
        server.sql("FLUSH BINARY LOGS");
    }
    thread::sleep(Duration::from_secs(1));
    let rows = writer.finish();
    let last = rows.last().unwrap().gtid;
    wait_archived(&repo, last);
    assert!(
        rows.len() > 100,
        "the writer wrote only {} rows",
        rows.len()
    );

    // To a GTID in the middle, after backup B.
    let after_b: Vec<&Row> = rows.iter().filter(|r| r.gtid.seq > b.gtid_seq).collect();
    let mid = after_b[after_b.len() / 2].gtid;
    let (out, ids) = restore_ids(&repo, "r-gtid", &["--until-gtid", &mid.to_string()]);
    out.prints(&format!("restored backup {}", b.id));
    assert_eq!(
        ids,
        ids_where(&rows, |r| r.gtid.seq <= mid.seq),
        "--until-gtid {mid}"
    );

    // To a time in the middle, after backup B.
    let t = quiet_second(&rows, b.end, rows.last().unwrap().before);
    let (out, ids) = restore_ids(&repo, "r-time", &["--until", &rfc3339(t)]);
    out.prints(&format!("restored backup {}", b.id));
    assert_eq!(
        ids,
        ids_where(&rows, |r| r.after < t as f64),
        "--until {}",
        rfc3339(t)
    );

    // To the latest archived transaction.
    let (_, ids) = restore_ids(&repo, "r-last", &["--until-gtid", &last.to_string()]);
    assert_eq!(
        ids,
        ids_where(&rows, |_| true),
        "--until-gtid {last} (the latest)"
    );

    // Before the newest backup's end: the older backup is used.
    let t = quiet_second(&rows, a.end, b.end);
    let (out, ids) = restore_ids(&repo, "r-old", &["--until", &rfc3339(t)]);
    out.prints(&format!("restored backup {}", a.id));
    assert_eq!(
        ids,
        ids_where(&rows, |r| r.after < t as f64),
        "--until {} (before backup B)",
        rfc3339(t)
    );

    faults(&repo, &index, &mut push, &rows, &b);
    drop(server);
}

fn faults(repo: &Repo, index: &Path, push: &mut Proc, rows: &[Row], b: &Backup) {
    let last = rows.last().unwrap().gtid;
    // A push killed with SIGKILL, then run again: nothing re-uploaded, nothing overwritten.
    push.signal(rustix::process::Signal::KILL);
    let before = repo.binlog_keys();
    let out = repo.push_once(index, &[]);
    out.code(0).prints("0 bytes stored");
    // A push killed between a segment and its entry: the entry is written, the data kept.
    let (entry_key, data_key) = before
        .iter()
        .filter_map(|(k, key)| match key {
            Key::Entry { file_id, start } => {
                Some((k.clone(), layout::segment_data(file_id, *start)))
            }
            _ => None,
        })
        .next_back()
        .unwrap();
    let data_before = repo.lib.get(&data_key, 1 << 30).unwrap();
    repo.lib.delete(&entry_key).unwrap();
    let out = repo.push_once(index, &[]);
    out.code(0).prints("0 bytes stored");
    assert_eq!(repo.lib.get(&data_key, 1 << 30).unwrap(), data_before);
    assert!(
        repo.lib.size(&entry_key).unwrap().is_some(),
        "{entry_key} was not written again"
    );
    let after: Vec<String> = repo.binlog_keys().into_iter().map(|(k, _)| k).collect();
    let before: Vec<String> = before.into_iter().map(|(k, _)| k).collect();
    assert!(
        before.iter().all(|k| after.contains(k)),
        "an archived object went missing"
    );
    repo.run(&["verify", &repo.url])
        .code(0)
        .prints("GTID continuity hold");

    // A target beyond the archive: refused, naming the latest recoverable time.
    let far = rfc3339(now() as u64 + 3600);
    let dir = repo.path("r-far");
    repo.restore_into(&dir, &["--until", &far])
        .code(1)
        .says("after the last archived transaction")
        .says("recoverable from");
    assert!(!dir.exists(), "a refused restore wrote {}", dir.display());
    // A target before every backup's end: refused the same way.
    let first = rows.first().unwrap().gtid;
    repo.restore_into(&dir, &["--until-gtid", &first.to_string()])
        .code(1)
        .says("before the end of every full backup")
        .says("recoverable from");
    assert!(!dir.exists(), "a refused restore wrote {}", dir.display());

    // A corrupted archived binlog: exit 1 naming the object, nothing restored.
    let data_keys: Vec<String> = repo
        .binlog_keys()
        .into_iter()
        .filter(|(_, k)| matches!(k, Key::Data { .. }))
        .map(|(k, _)| k)
        .collect();
    let victim = data_keys.last().unwrap().clone();
    let good = repo.lib.get(&victim, 1 << 30).unwrap();
    let mut bad = good.to_vec();
    let i = bad.len() / 2;
    bad[i] ^= 0x40;
    repo.lib.put(&victim, bad.into()).unwrap();
    let dir = repo.path("r-corrupt");
    repo.restore_into(&dir, &["--until-gtid", &last.to_string()])
        .code(1)
        .says(&victim);
    assert!(!dir.exists() || dir.read_dir().unwrap().next().is_none());
    repo.run(&["verify", &repo.url]).code(1).says(&victim);
    // The push finds the archive's last segment of the growing file differs from the
    // server's bytes: it stops, overwriting nothing.
    repo.push_once(index, &[])
        .code(3)
        .says("exists with other contents");
    assert_ne!(repo.lib.get(&victim, 1 << 30).unwrap(), good);
    repo.lib.put(&victim, good).unwrap();

    // A deleted archived binlog (a whole file after backup B's): a refusal naming the gap.
    let list = repo.json(&["binlogs", "list", "--json", "--files", &repo.url]);
    let files = list["archive"]["files"].as_array().unwrap();
    let gone = files
        .iter()
        .filter(|f| f["sealed"].as_bool() == Some(true))
        .find(|f| {
            f["segments"][0]["gtid_before"]
                .as_str()
                .and_then(|g| g.parse::<Gtid>().ok())
                .is_some_and(|g| g.seq > b.gtid_seq)
        })
        .expect("a finished file after backup B");
    let gone_id = gone["file_id"].as_str().unwrap();
    let saved: Vec<(String, bytes::Bytes)> = repo
        .lib
        .list(&layout::dir(gone_id))
        .unwrap()
        .into_iter()
        .map(|o| (o.key.clone(), repo.lib.get(&o.key, 1 << 30).unwrap()))
        .collect();
    for (k, _) in &saved {
        repo.lib.delete(k).unwrap();
    }
    let dir = repo.path("r-gap");
    repo.restore_into(&dir, &["--until-gtid", &last.to_string()])
        .code(1)
        .says("gap");
    assert!(!dir.exists());
    repo.run(&["binlogs", "list", &repo.url])
        .code(0)
        .prints("gap");
    for (k, v) in saved {
        repo.lib.put(&k, v).unwrap();
    }

    // The server unreachable (no binlog index): retried, then a clear error.
    let missing = repo.path("nowhere/mariadb-bin.index");
    let t = Instant::now();
    repo.push_once(&missing, &["--index-wait", "2s"])
        .code(4)
        .says("retrying")
        .says("cannot read the binlog index");
    assert!(t.elapsed() >= Duration::from_secs(2));

    prune(repo, b);
}

/// `backups prune --keep-last 1`: the older backup goes, with the binlogs only it needed; the
/// newest backup can still be rolled forward to the last archived transaction.
fn prune(repo: &Repo, b: &Backup) {
    let before = repo.json(&["binlogs", "list", "--json", "--files", &repo.url]);
    let out = repo.run(&["backups", "prune", &repo.url, "--keep-last", "1", "--apply"]);
    out.code(0);
    let after = repo.json(&["binlogs", "list", "--json", "--files", &repo.url]);
    let files = |v: &Value| -> Vec<(String, String, u64)> {
        v["archive"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let g: Gtid = f["segments"].as_array().unwrap().last().unwrap()["gtid_after"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                (
                    f["file_id"].as_str().unwrap().to_string(),
                    f["file"].as_str().unwrap().to_string(),
                    g.seq,
                )
            })
            .collect()
    };
    let (before, after) = (files(&before), files(&after));
    for (id, name, end) in &before {
        let kept = after.iter().any(|(a, _, _)| a == id);
        // Needed: the file backup B's position is in, and every file with a transaction
        // after B. Every other file holds only what B already has.
        let needed = *name == b.file || *end > b.gtid_seq;
        assert_eq!(
            kept,
            needed,
            "file {id} (GTID up to {end}): kept {kept}; backup B is at {} in {}\n{}",
            b.gtid_seq,
            b.file,
            out.describe()
        );
    }
    assert!(
        after.len() < before.len(),
        "prune deleted no binlog: {}",
        out.describe()
    );
    repo.run(&["binlogs", "list", &repo.url])
        .code(0)
        .prints(&format!("backup {}", b.id));
}

on_both_backends!(pitr_roundtrip);

/// The shipped CronJob backs up a replica: its `xtrabackup_binlog_info` names the replica's
/// own binlog file (here with the same name as one of the primary's) and position. Restore
/// rolls it forward with the primary's archive, placed by the backup's GTID state.
#[test]
fn pitr_from_a_replica_backup() {
    require_mariadb();
    require_tools(
        &["mariadb-binlog"],
        "mariadb-client (apt-get install mariadb-client)",
    );
    let Some(repo) = Repo::open(Kind::Local, "rep") else {
        return;
    };
    let primary = Server::start_binlog(&repo.path("pri"), 64 << 10);
    primary.sql(
        "CREATE USER repl@'127.0.0.1' IDENTIFIED BY 'replpw'; \
         GRANT REPLICATION SLAVE ON *.* TO repl@'127.0.0.1'; \
         CREATE DATABASE p; \
         CREATE TABLE p.t (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(64)) ENGINE=InnoDB",
    );
    let replica = Server::start_binlog_with(&repo.path("rep"), 64 << 10, "--server-id=2");
    replica.sql(&format!(
        "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='repl', \
         MASTER_PASSWORD='replpw', MASTER_USE_GTID=slave_pos; START SLAVE",
        primary.port
    ));
    let index = primary.datadir().join("mariadb-bin.index");
    let push = push_follow(&repo, &index, repo.path("push.log"));
    let writer = Writer::start(primary.dir.join("sock"));
    thread::sleep(Duration::from_secs(3));
    let b = upload(&repo, &replica);
    thread::sleep(Duration::from_secs(3));
    let rows = writer.finish();
    let last = rows.last().unwrap().gtid;
    wait_archived(&repo, last);
    push.signal(rustix::process::Signal::TERM);
    assert!(
        b.gtid_seq > 4,
        "the replica's backup recorded GTID seq {} (nothing replicated?)",
        b.gtid_seq
    );
    // The restored copies are replicas of a primary that must not feed them more rows.
    drop(replica);
    drop(primary);

    let after_b: Vec<&Row> = rows.iter().filter(|r| r.gtid.seq > b.gtid_seq).collect();
    assert!(
        !after_b.is_empty(),
        "no row was written after the replica's backup"
    );
    let mid = after_b[after_b.len() / 2].gtid;
    let (out, ids) = restore_ids(&repo, "r-mid", &["--until-gtid", &mid.to_string()]);
    out.prints(&format!("restored backup {}", b.id));
    assert_eq!(
        ids,
        ids_where(&rows, |r| r.gtid.seq <= mid.seq),
        "--until-gtid {mid}"
    );
    let (_, ids) = restore_ids(&repo, "r-last", &["--until-gtid", &last.to_string()]);
    assert_eq!(ids, ids_where(&rows, |_| true), "--until-gtid {last}");
}
