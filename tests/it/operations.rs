//! What a cluster expects of the short jobs and the donor (issue 14, part 3): the summary line
//! that ends `upload` and `restore`, its push to a real Prometheus Pushgateway, and
//! `--rate-limit` on `serve` and `upload`.
//!
//! Real peers only: the built binary, real TCP on loopback, a local directory repository, and
//! the Debian `prometheus-pushgateway` (a missing one fails the test, never skips it). The rate
//! tests are short (about 3 s of data each); the measured figures at 10, 50 and 200 MiB/s over
//! 10 s each come from `benches/rate-limit`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde_json::Value;

use crate::support::cli::{run_timed, Out};
use crate::support::proc::Proc;
use crate::support::{free_port, noise, require_tools, s, short_tempdir, write_token, xb};

const MIB: u64 = 1 << 20;
const LIMIT: Duration = Duration::from_secs(120);

/// A tree of `files` files of `each` bytes (noise, so that zstd cannot shrink it to nothing).
fn make_tree(root: &Path, files: usize, each: usize) -> PathBuf {
    let src = root.join("src");
    fs::create_dir_all(src.join("db")).expect("mkdir");
    for i in 0..files {
        fs::write(src.join(format!("db/t{i}.ibd")), noise(i as u64 + 11, each)).expect("write");
    }
    fs::write(src.join("ibdata1"), b"system tablespace\n".repeat(5000)).expect("write");
    src
}

fn run(args: &[&str]) -> Out {
    run_timed(xb(args), None, LIMIT)
}

/// The summary lines on stderr, and the one there must be, parsed: `key=value` pairs after
/// `xbagent: summary: JOB`. It must be the last line.
#[track_caller]
fn summary(out: &Out, job: &str) -> BTreeMap<String, String> {
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("xbagent: summary:"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one summary line: {}",
        out.describe()
    );
    assert_eq!(
        out.stderr.lines().last(),
        Some(lines[0]),
        "the summary line must come last: {}",
        out.describe()
    );
    let mut words = lines[0]["xbagent: summary:".len()..].split_whitespace();
    assert_eq!(words.next(), Some(job), "{}", lines[0]);
    words
        .map(|w| {
            let (k, v) = w
                .split_once('=')
                .unwrap_or_else(|| panic!("not key=value: {w:?} in {}", lines[0]));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn num(m: &BTreeMap<String, String>, key: &str) -> u64 {
    m.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {key} in {m:?}"))
}

/// `12.34MiB/s` or `1.500s`: the number.
fn float(m: &BTreeMap<String, String>, key: &str) -> f64 {
    let v = m.get(key).unwrap_or_else(|| panic!("no {key} in {m:?}"));
    v.trim_end_matches("MiB/s")
        .trim_end_matches('s')
        .parse()
        .unwrap_or_else(|_| panic!("{key}={v} is not a number"))
}

fn manifest(repo: &Path, id: &str) -> Value {
    let raw = fs::read(repo.join(id).join("manifest.json")).expect("manifest");
    serde_json::from_slice(&raw).expect("manifest json")
}

#[test]
fn upload_and_restore_end_with_one_summary_line_that_matches_the_manifest() {
    let dir = short_tempdir("ops-sum");
    let src = make_tree(dir.path(), 3, 700_000);
    let repo = dir.path().join("repo");
    let id = "20261207T010203.456Z";
    let args = [
        "upload",
        "--to",
        s(&repo),
        "--id",
        id,
        "--compress",
        "zstd",
        "--dir",
        s(&src),
    ];
    let up = run(&args);
    up.code(0);
    let m = summary(&up, "upload");
    let man = manifest(&repo, id);
    assert_eq!(m["id"], id);
    assert_eq!(m["result"], "ok");
    assert!(
        !m.contains_key("exit") && !m.contains_key("rate_limit"),
        "{m:?}"
    );
    assert_eq!(
        Some(num(&m, "bytes")),
        man["stream"]["bytes"].as_u64(),
        "{man}"
    );
    assert_eq!(
        Some(num(&m, "stored")),
        man["object"]["size"].as_u64(),
        "{man}"
    );
    assert!(
        num(&m, "stored") < num(&m, "bytes"),
        "the tree compresses a little"
    );
    assert!(
        float(&m, "duration") > 0.0 && float(&m, "rate") > 0.0,
        "{m:?}"
    );

    let into = dir.path().join("restored");
    let from = format!("{}@{id}", s(&repo));
    let rs = run(&["restore", "--from", &from, "-C", s(&into)]);
    rs.code(0);
    let r = summary(&rs, "restore");
    assert_eq!(r["id"], id);
    assert_eq!(r["result"], "ok");
    assert_eq!(Some(num(&r, "bytes")), man["stream"]["bytes"].as_u64());
    assert!(!r.contains_key("stored"), "{r:?}");
    // -q silences progress and logs, not the job's one line of outcome.
    let again = run(&["-q", "restore", "--from", &from, "-C", s(&into), "--force"]);
    again.code(0);
    assert_eq!(summary(&again, "restore")["result"], "ok");
}

#[test]
fn failed_jobs_summarize_their_exit_code_and_id() {
    let dir = short_tempdir("ops-fail");
    let repo = dir.path().join("repo");
    let id = "20261207T020304.567Z";
    // A producer that writes nothing and fails: exit 1 (bad stream), the id was assigned.
    let up = run(&["upload", "--to", s(&repo), "--id", id, "--exec", "exit 7"]);
    let m = summary(&up, "upload");
    assert_eq!(m["result"], "failed", "{m:?}");
    assert_eq!(num(&m, "exit"), up.exit() as u64);
    assert_ne!(up.exit(), 0);
    assert_eq!(m["id"], id);
    assert!(up.stderr.contains("xbagent: error:"), "{}", up.describe());
    // A backup that is not there: exit 3, the id asked for.
    let missing = "20200101T000000.000Z";
    let from = format!("{}@{missing}", s(&repo));
    let into = dir.path().join("into");
    let rs = run(&["restore", "--from", &from, "-C", s(&into)]);
    let r = summary(&rs, "restore");
    assert_eq!(rs.exit(), 3, "{}", rs.describe());
    assert_eq!((r["result"].as_str(), num(&r, "exit")), ("failed", 3));
    assert_eq!(r["id"], missing);
    assert_eq!(num(&r, "bytes"), 0);
}

// ---------------------------------------------------------------------------------------------
// Pushgateway
// ---------------------------------------------------------------------------------------------

/// A real Pushgateway on a free loopback port, in memory only; killed on drop.
struct Gateway {
    _proc: Proc,
    port: u16,
}

impl Gateway {
    fn start(dir: &Path) -> Gateway {
        require_tools(
            &["prometheus-pushgateway"],
            "the Debian package prometheus-pushgateway",
        );
        let port = free_port();
        let mut c = Command::new("prometheus-pushgateway");
        c.arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let proc = Proc::spawn("pushgateway", &mut c, dir.join("pushgateway.log"), false);
        let gw = Gateway { _proc: proc, port };
        let start = Instant::now();
        while gw.get("/-/ready").is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the Pushgateway did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        gw
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// GET `path`: the body of a 200 answer.
    fn get(&self, path: &str) -> Option<String> {
        let mut sock = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        sock.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(sock, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut raw = String::new();
        sock.read_to_string(&mut raw).ok()?;
        let (head, body) = raw.split_once("\r\n\r\n")?;
        (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
    }

    /// Every sample of `name` with its labels, from /metrics.
    fn samples(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let body = self.get("/metrics").expect("GET /metrics");
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("sample line");
                let labels = series[name.len()..]
                    .trim_matches(['{', '}'])
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .filter_map(|p| p.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                    .collect();
                (labels, value.parse().expect("sample value"))
            })
            .collect()
    }

    /// The value of `name` for the group job=`job`, instance=`instance`, with labels `extra`.
    fn value(&self, name: &str, job: &str, instance: &str, extra: &[(&str, &str)]) -> Option<f64> {
        self.samples(name).into_iter().find_map(|(l, v)| {
            let want = [("job", job), ("instance", instance)];
            let mut all = want.iter().chain(extra);
            all.all(|(k, x)| l.get(*k).map(String::as_str) == Some(*x))
                .then_some(v)
        })
    }
}

#[test]
fn upload_and_restore_push_their_summary_to_a_real_pushgateway() {
    let dir = short_tempdir("ops-push");
    let gw = Gateway::start(dir.path());
    let src = make_tree(dir.path(), 2, 600_000);
    let repo = dir.path().join("repo");
    let id = "20261207T030405.678Z";
    let up = run(&[
        "upload",
        "--to",
        s(&repo),
        "--id",
        id,
        "--compress",
        "zstd",
        "--dir",
        s(&src),
        "--pushgateway",
        &gw.url(),
        "--pushgateway-instance",
        "db1",
    ]);
    up.code(0);
    let m = summary(&up, "upload");
    let job = "xbagent_upload";
    let v = |name: &str, extra: &[(&str, &str)]| gw.value(name, job, "db1", extra);
    assert_eq!(v("xbagent_backup_info", &[("id", id)]), Some(1.0));
    assert_eq!(v("xbagent_backup_result", &[]), Some(1.0));
    assert_eq!(v("xbagent_backup_exit_code", &[]), Some(0.0));
    let stream = v("xbagent_backup_bytes", &[("kind", "stream")]);
    assert_eq!(stream, Some(num(&m, "bytes") as f64));
    let stored = v("xbagent_backup_bytes", &[("kind", "stored")]);
    assert_eq!(stored, Some(num(&m, "stored") as f64));
    let took = v("xbagent_backup_duration_seconds", &[]).expect("duration");
    assert!(
        (took - float(&m, "duration")).abs() < 0.002,
        "{took} vs {m:?}"
    );
    let success = v("xbagent_backup_last_success_timestamp_seconds", &[]).expect("success time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        (now - success).abs() < 120.0,
        "last success {success}, now {now}"
    );

    let into = dir.path().join("restored");
    let from = format!("{}@{id}", s(&repo));
    let rs = run(&[
        "restore",
        "--from",
        &from,
        "-C",
        s(&into),
        "--pushgateway",
        &gw.url(),
        "--pushgateway-instance",
        "db1",
    ]);
    rs.code(0);
    let r = summary(&rs, "restore");
    let restored = gw.value(
        "xbagent_backup_bytes",
        "xbagent_restore",
        "db1",
        &[("kind", "stream")],
    );
    assert_eq!(restored, Some(num(&r, "bytes") as f64));

    // A failed upload: result 0 and its exit code, the last success kept.
    let bad = run(&[
        "upload",
        "--to",
        s(&repo),
        "--exec",
        "exit 7",
        "--pushgateway",
        &gw.url(),
        "--pushgateway-instance",
        "db1",
    ]);
    let b = summary(&bad, "upload");
    assert_eq!(b["result"], "failed");
    assert_eq!(v("xbagent_backup_result", &[]), Some(0.0));
    assert_eq!(v("xbagent_backup_exit_code", &[]), Some(bad.exit() as f64));
    assert_eq!(
        v("xbagent_backup_info", &[("id", b["id"].as_str())]),
        Some(1.0)
    );
    assert_eq!(
        v("xbagent_backup_last_success_timestamp_seconds", &[]),
        Some(success),
        "a failure must not erase the last success"
    );
}

#[test]
fn a_push_that_fails_is_a_warning_and_leaves_the_exit_code_alone() {
    let dir = short_tempdir("ops-nopush");
    let src = make_tree(dir.path(), 1, 100_000);
    let repo = dir.path().join("repo");
    // Nothing listens on this port.
    let url = format!("http://127.0.0.1:{}", free_port());
    let up = run(&[
        "upload",
        "--to",
        s(&repo),
        "--dir",
        s(&src),
        "--pushgateway",
        &url,
    ]);
    up.code(0).says("could not push to the Pushgateway");
    assert_eq!(summary(&up, "upload")["result"], "ok");
    // A wrong URL is a usage error before anything runs.
    run(&[
        "upload",
        "--to",
        s(&repo),
        "--dir",
        s(&src),
        "--pushgateway",
        "https://x:1",
    ])
    .code(2)
    .says("only http://");
}

// ---------------------------------------------------------------------------------------------
// Rate limit
// ---------------------------------------------------------------------------------------------

/// `took` for `bytes` at `rate` is within the limit: never faster than asked (the first
/// tenth of a second's burst aside, 5% tolerance), and not much slower (a generous bound: this
/// machine is shared; benches/rate-limit measures the real error).
#[track_caller]
fn assert_paced(what: &str, bytes: u64, rate: u64, took: f64) {
    let ideal = (bytes.saturating_sub(rate / 10)) as f64 / rate as f64;
    assert!(
        took >= ideal * 0.95,
        "{what}: {bytes} bytes at {rate} B/s took {took:.3}s: faster than the limit (ideal {ideal:.3}s)"
    );
    assert!(
        took <= ideal * 1.5 + 2.0,
        "{what}: {bytes} bytes at {rate} B/s took {took:.3}s: far slower than the limit (ideal {ideal:.3}s)"
    );
}

/// `serve --listen LISTEN --token-file TOKEN --rate-limit RATE MORE...`, once it listens.
fn start_serve(dir: &Path, listen: &str, token: &Path, rate: &str, more: &[&str]) -> Proc {
    let mut all = vec![
        "serve",
        "--listen",
        listen,
        "--token-file",
        s(token),
        "--rate-limit",
        rate,
    ];
    all.extend_from_slice(more);
    let mut p = Proc::spawn("serve", &mut xb(&all), dir.join("serve.log"), true);
    p.wait_log("listening on", Duration::from_secs(15));
    p
}

fn vm_hwm_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn a_rate_limited_serve_sends_no_faster_than_asked() {
    let dir = short_tempdir("ops-rate-serve");
    let src = make_tree(dir.path(), 6, 8 << 20);
    let token = write_token(dir.path());
    let port = free_port();
    let rate = 16 * MIB;
    let listen = format!("127.0.0.1:{port}");
    let mut serve = start_serve(dir.path(), &listen, &token, "16MiB", &["--dir", s(&src)]);
    let into = dir.path().join("clone");
    let start = Instant::now();
    let rc = run(&[
        "receive",
        "--from",
        &listen,
        "-C",
        s(&into),
        "--token-file",
        s(&token),
    ]);
    let took = start.elapsed().as_secs_f64();
    rc.code(0);
    let sent: u64 = fs::read_dir(into.join("db"))
        .expect("clone")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum();
    assert_eq!(sent, 6 * (8 << 20));
    assert_paced("serve → receive", sent, rate, took);
    // Memory stays flat: the donor never held the 48 MiB it sent.
    let hwm = vm_hwm_kib(serve.pid());
    eprintln!("serve at 16 MiB/s: {sent} bytes in {took:.3}s, serve's peak RSS {hwm} KiB");
    assert!(
        hwm < 40 * 1024,
        "serve's peak RSS {hwm} KiB for a 48 MiB clone"
    );
    serve.signal(Signal::TERM);
    serve.wait(Duration::from_secs(10));
}

#[test]
fn a_rate_limited_serve_still_heartbeats_and_stops_on_sigterm() {
    let dir = short_tempdir("ops-rate-hb");
    let src = make_tree(dir.path(), 2, 2 << 20);
    let stream = dir.path().join("s.xbstream");
    let out = xb(&["create", "-C", s(&src), "."])
        .output()
        .expect("create");
    assert!(out.status.success(), "create failed");
    fs::write(&stream, &out.stdout).expect("write stream");
    let token = write_token(dir.path());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // 1 MiB, then 4 s of silence (more than the receiver's stall timeout), then the rest.
    let exec = format!(
        "head -c 1048576 '{0}'; sleep 4; tail -c +1048577 '{0}'",
        s(&stream)
    );
    let mut serve = start_serve(
        dir.path(),
        &listen,
        &token,
        "2MiB",
        &["--exec", &exec, "--heartbeat", "1s"],
    );
    let into = dir.path().join("clone");
    let rc = run(&[
        "receive",
        "--from",
        &listen,
        "-C",
        s(&into),
        "--token-file",
        s(&token),
        "--stall-timeout",
        "3s",
    ]);
    rc.code(0);
    assert!(into.join(".xbagent-clone-complete").exists());

    // A slow clone (1 MiB/s of 4 MiB) is stopped by SIGTERM within a second or so.
    let slow = dir.path().join("slow");
    serve.signal(Signal::TERM);
    serve.wait(Duration::from_secs(10));
    let mut serve = start_serve(dir.path(), &listen, &token, "1MiB", &["--dir", s(&src)]);
    let mut recv = Proc::spawn(
        "receive",
        &mut xb(&[
            "receive",
            "--from",
            &listen,
            "-C",
            s(&slow),
            "--token-file",
            s(&token),
        ]),
        dir.path().join("receive.log"),
        false,
    );
    serve.wait_log("peer authenticated", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(800));
    let asked = Instant::now();
    serve.signal(Signal::TERM);
    let end = serve.wait(Duration::from_secs(10));
    let stop = asked.elapsed().as_secs_f64();
    assert_eq!(end.code, Some(130), "{}", end.log);
    assert!(
        stop < 2.0,
        "a throttled serve took {stop:.2}s to stop on SIGTERM"
    );
    let r = recv.wait(Duration::from_secs(30));
    assert_ne!(r.code, Some(0), "{}", r.log);
    assert!(!slow.join(".xbagent-clone-complete").exists());
}

#[test]
fn a_rate_limited_upload_reads_no_faster_than_asked_and_says_so() {
    let dir = short_tempdir("ops-rate-up");
    let src = make_tree(dir.path(), 6, 8 << 20);
    let repo = dir.path().join("repo");
    let start = Instant::now();
    let up = run(&[
        "upload",
        "--to",
        s(&repo),
        "--dir",
        s(&src),
        "--rate-limit",
        "16MiB/s",
    ]);
    let took = start.elapsed().as_secs_f64();
    up.code(0);
    let m = summary(&up, "upload");
    assert_eq!(float(&m, "rate_limit"), 16.0);
    assert_paced("upload", num(&m, "bytes"), 16 * MIB, took);
    eprintln!(
        "upload at 16 MiB/s: {} bytes in {took:.3}s",
        num(&m, "bytes")
    );
    assert!(float(&m, "rate") <= 16.0 * 1.05, "{m:?}");
}
