//! Issue 14, §3: `--metrics-listen` and `--log-format json` of the long-running sidecars. Real
//! `serve`, `receive` and `binlogs push --follow` processes (the push against a real binlogging
//! `mariadbd`), scraped over real HTTP on loopback.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::process::Signal;
use serde_json::Value;

use crate::support::mariadb::{require_mariadb, Server};
use crate::support::proc::{Outcome, Proc};
use crate::support::{free_port, noise, s, short_tempdir, write_token, xb};

/// One HTTP/1.1 GET over a fresh connection: status and body.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).expect("read the HTTP response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// `/metrics` as name → value (the text format's samples; no labels are used).
fn scrape(port: u16) -> BTreeMap<String, f64> {
    let (status, body) = get(port, "/metrics");
    assert_eq!(status, 200, "GET /metrics: {body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad sample line {l:?}"));
            (
                k.to_string(),
                v.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {l:?}")),
            )
        })
        .collect()
}

fn metric(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    *m.get(name)
        .unwrap_or_else(|| panic!("no {name} in the scrape: {m:?}"))
}

/// Scrape until `done` holds (at most `limit`); the last scrape.
fn scrape_until(
    port: u16,
    limit: Duration,
    what: &str,
    done: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let start = Instant::now();
    loop {
        let m = scrape(port);
        if done(&m) {
            return m;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not reached within {limit:?}; last scrape: {m:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn make_src(root: &Path) -> PathBuf {
    let src = root.join("src");
    fs::create_dir_all(src.join("db")).unwrap();
    fs::write(src.join("ibdata1"), noise(7, 2 << 20)).unwrap();
    fs::write(src.join("db/t.ibd"), noise(8, 300 << 10)).unwrap();
    fs::write(src.join("db/t.frm"), b"frm").unwrap();
    src
}

struct Donor {
    proc: Proc,
    port: u16,
    metrics: u16,
}

fn start_serve(dir: &Path, src: &Path, token: &Path, extra: &[&str]) -> Donor {
    let (port, metrics) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{port}");
    let mlisten = format!("127.0.0.1:{metrics}");
    let mut args = vec![
        "serve",
        "--listen",
        &listen,
        "--dir",
        s(src),
        "--token-file",
        s(token),
        "--metrics-listen",
        &mlisten,
    ];
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn("serve", &mut xb(&args), dir.join("serve.log"), true);
    proc.wait_log("listening on", Duration::from_secs(15));
    Donor {
        proc,
        port,
        metrics,
    }
}

fn receive(dir: &Path, name: &str, port: u16, token: &Path) -> Outcome {
    let from = format!("127.0.0.1:{port}");
    let dst = dir.join(name);
    let args = [
        "receive",
        "--from",
        &from,
        "-C",
        s(&dst),
        "--token-file",
        s(token),
        "--retry-for",
        "20s",
    ];
    Proc::spawn(name, &mut xb(&args), dir.join(format!("{name}.log")), false)
        .wait_shown(Duration::from_secs(60))
}

/// The stream bytes a receive reports: "clone complete: F files, C chunks, B bytes, ...".
fn received_bytes(out: &Outcome) -> u64 {
    out.log
        .lines()
        .find_map(|l| l.split("clone complete: ").nth(1))
        .and_then(|r| r.split(", ").nth(2))
        .and_then(|b| b.strip_suffix(" bytes"))
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no 'clone complete' line in:\n{}", out.log))
}

#[test]
fn serve_metrics_count_two_clones_one_wrong_token_and_the_bytes_sent() {
    let tmp = short_tempdir("xbm-serve");
    let dir = tmp.path();
    let src = make_src(dir);
    fs::create_dir(dir.join("good")).unwrap();
    fs::create_dir(dir.join("bad")).unwrap();
    let token = write_token(&dir.join("good"));
    let wrong = write_token(&dir.join("bad"));
    let mut d = start_serve(dir, &src, &token, &[]);

    // Bound and holding its token: ready; alive; anything else is 404.
    assert_eq!(get(d.metrics, "/readyz").0, 200);
    assert_eq!(get(d.metrics, "/healthz").0, 200);
    assert_eq!(get(d.metrics, "/metricz").0, 404);
    let before = scrape(d.metrics);
    assert_eq!(metric(&before, "xbagent_clones_served_total"), 0.0);
    assert_eq!(metric(&before, "xbagent_last_clone_duration_seconds"), 0.0);

    let mut sent = 0;
    for name in ["dst1", "dst2"] {
        let out = receive(dir, name, d.port, &token);
        assert_eq!(out.code, Some(0), "receive {name}:\n{}", out.log);
        sent += received_bytes(&out);
    }
    let out = receive(dir, "dst-wrong", d.port, &wrong);
    assert_ne!(out.code, Some(0), "a wrong token must fail:\n{}", out.log);

    let m = scrape_until(
        d.metrics,
        Duration::from_secs(10),
        "2 served, 1 refused",
        |m| {
            metric(m, "xbagent_clones_served_total") == 2.0
                && metric(m, "xbagent_clones_refused_total") == 1.0
        },
    );
    assert_eq!(metric(&m, "xbagent_clones_failed_total"), 0.0);
    assert_eq!(metric(&m, "xbagent_handshakes_failed_total"), 0.0);
    assert_eq!(metric(&m, "xbagent_clone_bytes_sent_total"), sent as f64);
    assert!(
        sent > 2 * (2 << 20),
        "two streams of the 2.3 MiB tree, got {sent}"
    );
    assert!(metric(&m, "xbagent_last_clone_duration_seconds") > 0.0);
    assert_eq!(metric(&m, "xbagent_connections_queued"), 0.0);
    assert_eq!(metric(&m, "xbagent_clones_running"), 0.0);
    assert_eq!(metric(&m, "xbagent_ready"), 1.0);

    // A connection that says nothing is queued (in its handshake) until it goes; then it is
    // a failed handshake, not a clone.
    let silent = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    scrape_until(d.metrics, Duration::from_secs(10), "1 queued", |m| {
        metric(m, "xbagent_connections_queued") == 1.0
    });
    drop(silent);
    let m = scrape_until(
        d.metrics,
        Duration::from_secs(10),
        "0 queued, 1 failed handshake",
        |m| {
            metric(m, "xbagent_connections_queued") == 0.0
                && metric(m, "xbagent_handshakes_failed_total") == 1.0
        },
    );
    assert_eq!(metric(&m, "xbagent_clones_served_total"), 2.0);
    assert_eq!(metric(&m, "xbagent_clones_failed_total"), 0.0);

    // The text log is as it always was: lines with the conn span, no JSON.
    let log = d.proc.log();
    assert!(
        log.lines()
            .any(|l| l.contains("conn{id=1 peer=127.0.0.1:") && l.contains("connected")),
        "{log}"
    );
    assert!(!log.lines().any(|l| l.starts_with('{')), "{log}");
    d.proc.signal(Signal::TERM);
    d.proc.wait(Duration::from_secs(10));
}

#[test]
fn json_log_format_gives_one_object_per_line_with_the_conn_span() {
    let tmp = short_tempdir("xbm-json");
    let dir = tmp.path();
    let src = make_src(dir);
    let token = write_token(dir);
    let mut d = start_serve(dir, &src, &token, &["--log-format", "json"]);
    let out = receive(dir, "dst", d.port, &token);
    assert_eq!(out.code, Some(0), "{}", out.log);
    scrape_until(d.metrics, Duration::from_secs(10), "1 served", |m| {
        metric(m, "xbagent_clones_served_total") == 1.0
    });
    d.proc.signal(Signal::TERM);
    let end = d.proc.wait(Duration::from_secs(10));
    let mut conn_lines = 0;
    for line in end.log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\nwhole log:\n{}", end.log));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        if v["span"]["name"] == "conn" {
            assert_eq!(v["span"]["id"], 1, "{line}");
            let peer = v["span"]["peer"].as_str().unwrap_or_default();
            assert!(peer.starts_with("127.0.0.1:"), "{line}");
            conn_lines += 1;
        }
    }
    // connected, peer authenticated, clone sent: at least.
    assert!(conn_lines >= 3, "{}", end.log);
    assert!(end.log.contains("serve stopped by a signal"), "{}", end.log);
}

#[test]
fn a_slow_or_garbage_metrics_client_blocks_neither_scrapes_nor_clones() {
    let tmp = short_tempdir("xbm-host");
    let dir = tmp.path();
    let src = make_src(dir);
    let token = write_token(dir);
    let d = start_serve(dir, &src, &token, &[]);

    // Half a request line, then silence; garbage; a request head far over the limit.
    let mut slow = TcpStream::connect(("127.0.0.1", d.metrics)).unwrap();
    slow.write_all(b"GET /metr").unwrap();
    let mut junk = TcpStream::connect(("127.0.0.1", d.metrics)).unwrap();
    junk.write_all(&noise(3, 4096)).unwrap();
    let mut huge = TcpStream::connect(("127.0.0.1", d.metrics)).unwrap();
    let head = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(64 << 10)
    );
    // The server may close before reading it all.
    let _ = huge.write_all(head.as_bytes());

    let t = Instant::now();
    let m = scrape(d.metrics);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a scrape took {:?}",
        t.elapsed()
    );
    assert_eq!(metric(&m, "xbagent_ready"), 1.0);
    let out = receive(dir, "dst", d.port, &token);
    assert_eq!(out.code, Some(0), "{}", out.log);

    // The huge head is answered with an error and closed; the slow one is cut at the deadline.
    huge.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reply = Vec::new();
    let _ = huge.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
        "an over-long head: {reply:?}"
    );
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "the slow client was held {:?}",
        t.elapsed()
    );
    assert_eq!(get(d.metrics, "/healthz").0, 200);
}

fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn push_metrics_follow_the_writers_last_commit_and_lag() {
    require_mariadb();
    let tmp = short_tempdir("xbm-push");
    let dir = tmp.path();
    let server = Server::start_binlog(&dir.join("srv"), 1 << 20);
    server.sql("CREATE DATABASE m; CREATE TABLE m.t (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(64)) ENGINE=InnoDB");
    let index = server.datadir().join("mariadb-bin.index");
    let (mut push, metrics) = spawn_push(dir, &index);
    push.wait_log("metrics at", Duration::from_secs(15));
    let t = Instant::now();
    while get(metrics, "/readyz").0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "push never ready:\n{}",
            push.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(metrics, "/healthz").0, 200);

    // The writer: rows over about three seconds, each bracketed by the wall clock; meanwhile
    // a scraper notes the highest lag it sees.
    let writing = Arc::new(AtomicBool::new(true));
    let w = writing.clone();
    let watcher = thread::spawn(move || {
        let mut most = 0.0f64;
        while w.load(Ordering::SeqCst) {
            most = most.max(metric(&scrape(metrics), "xbagent_binlog_lag_seconds"));
            thread::sleep(Duration::from_millis(100));
        }
        most
    });
    let mut last = (0.0, 0.0);
    for i in 0..6 {
        let before = unix_now_f64();
        server.sql(&format!("INSERT INTO m.t(v) VALUES('metrics-row-{i}')"));
        last = (before, unix_now_f64());
        thread::sleep(Duration::from_millis(500));
    }
    writing.store(false, Ordering::SeqCst);
    let most_lag = watcher.join().expect("the scraper panicked");
    // The binlog stamps whole seconds: the last row's stamp lies within its bracket.
    let (lo, hi) = (last.0.floor(), last.1.ceil());
    let m = scrape_until(
        metrics,
        Duration::from_secs(30),
        "the last row archived",
        |m| {
            let t = metric(m, "xbagent_binlog_last_event_timestamp_seconds");
            metric(m, "xbagent_binlog_lag_seconds") == 0.0 && lo <= t && t <= hi
        },
    );
    // Rows wait --max-lag/2 (1 s) before their segment is stored: the lag was seen, and small.
    assert!(
        (1.0..=5.0).contains(&most_lag),
        "highest lag seen while writing: {most_lag}"
    );
    assert!(metric(&m, "xbagent_binlog_bytes_archived_total") > 0.0);
    assert!(metric(&m, "xbagent_binlog_segments_archived_total") >= 1.0);
    assert_eq!(metric(&m, "xbagent_ready"), 1.0);
    push.signal(Signal::TERM);
    push.wait(Duration::from_secs(15));
}

/// Every stderr line of a `--log-format json` run parses; returns the lines' objects.
fn json_lines(stderr: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

#[test]
fn json_log_lines_of_upload_and_restore_carry_the_backup_id() {
    let tmp = short_tempdir("xbm-bid");
    let dir = tmp.path();
    let src = make_src(dir);
    let repo = dir.join("repo");
    let up = xb(&[
        "--log-format",
        "json",
        "upload",
        "--to",
        s(&repo),
        "--dir",
        s(&src),
    ])
    .output()
    .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    // stdout: "backup ID complete in ...".
    let stdout = String::from_utf8_lossy(&up.stdout);
    let id = stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no id in {stdout:?}"))
        .to_string();
    let out = dir.join("out");
    let rs = xb(&[
        "--log-format",
        "json",
        "restore",
        "--from",
        s(&repo),
        "-C",
        s(&out),
    ])
    .output()
    .unwrap();
    assert!(
        rs.status.success(),
        "{}",
        String::from_utf8_lossy(&rs.stderr)
    );
    for (what, stderr) in [("upload", &up.stderr), ("restore", &rs.stderr)] {
        let with_id = json_lines(stderr)
            .iter()
            .filter(|v| v["span"]["name"] == "backup" && v["span"]["id"] == id.as_str())
            .count();
        assert!(
            with_id >= 1,
            "no {what} line with the backup span of {id}:\n{}",
            String::from_utf8_lossy(stderr)
        );
        // The summary line is a JSON object too, the last line, exactly one.
        let lines = json_lines(stderr);
        let summaries: Vec<_> = lines.iter().filter(|v| v["summary"] == what).collect();
        assert_eq!(summaries.len(), 1, "{what}: {lines:?}");
        assert_eq!(lines.last(), Some(summaries[0]), "{what}: summary not last");
        assert_eq!(summaries[0]["result"], "ok");
        assert_eq!(summaries[0]["id"], id.as_str());
    }
}

/// `binlogs push --follow --max-lag 2s` of INDEX into DIR/repo, with its metrics on a free port.
fn spawn_push(dir: &Path, index: &Path) -> (Proc, u16) {
    let metrics = free_port();
    let mlisten = format!("127.0.0.1:{metrics}");
    let repo = dir.join("repo");
    let args = [
        "binlogs",
        "push",
        "--to",
        s(&repo),
        "--binlog-index",
        s(index),
        "--follow",
        "--max-lag",
        "2s",
        "--metrics-listen",
        &mlisten,
    ];
    let push = Proc::spawn("push", &mut xb(&args), dir.join("push.log"), true);
    (push, metrics)
}

#[test]
fn push_is_alive_but_not_ready_until_its_index_can_be_read() {
    let tmp = short_tempdir("xbm-ready");
    let dir = tmp.path();
    let index = dir.join("data/mariadb-bin.index");
    let (mut push, metrics) = spawn_push(dir, &index);
    push.wait_log("cannot read the binlog index", Duration::from_secs(15));
    assert_eq!(get(metrics, "/readyz").0, 503, "{}", push.log());
    assert_eq!(get(metrics, "/healthz").0, 200);
    assert_eq!(metric(&scrape(metrics), "xbagent_ready"), 0.0);
    // A server that has just started: an index that names no file yet.
    fs::create_dir_all(index.parent().unwrap()).unwrap();
    fs::write(&index, b"").unwrap();
    let t = Instant::now();
    while get(metrics, "/readyz").0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never ready:\n{}",
            push.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    push.signal(Signal::TERM);
    push.wait(Duration::from_secs(15));
}
