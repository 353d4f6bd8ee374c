//! Integration tests of the clone commands (`xbagent serve` / `xbagent receive`, issue 3),
//! over real TCP sockets, against the built binary.
//!
//! Every test picks its own free port(s), works in its own temp dir, kills every process it
//! starts (guards with `Drop`, also when an assertion fails) and bounds every wait, so a bug
//! makes a test fail, never hang. Tests that need external tools (openssl, ip, mbstream, the
//! MariaDB server and mariabackup) fail with the tool's name when it is missing; they never
//! skip.
//!
//! After every failed clone the tests assert a non-zero exit code and that no completion
//! marker was written.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, kill_process_group, Pid, Signal};
use xbagent::clone::protocol::{self, FrameType};
use xbagent::clone::transport::{read_frame, write_frame};

use crate::support::mariadb::{fixture, require_mariadb, Server};
use crate::support::proc::{Outcome, Proc};
use crate::support::trees::{self, tree_skipping, Tree};
use crate::support::{
    child_path, free_port, noise, require_tools, s, short_tempdir, write_token, xb, XBAGENT,
};

/// The receiver's markers, as the clone contract names them.
const COMPLETE: &str = ".xbagent-clone-complete";
const PARTIAL: &str = ".xbagent-clone-in-progress";
/// Exit codes of the contract.
const EXIT_BAD_STREAM: i32 = 1;
const EXIT_LOCAL: i32 = 3;
const EXIT_PEER: i32 = 4;
/// Where a "slow" source pauses: this many bytes of the stream, then silence.
const CUT_AT: u64 = 1_000_000;

// ---------------------------------------------------------------------------------------------
// Environment, tools, temp dirs
// ---------------------------------------------------------------------------------------------

fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Poll `f` every 50 ms until it holds; panic after `limit` with `what`.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Is this process still running (a zombie counts as gone)?
fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the parenthesised command name.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next()),
            Some("Z") | Some("X")
        ),
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Kills, on drop, the process group whose leader wrote its PID into `file` (a source command
/// started by `serve`, which runs in its own process group and would outlive a killed serve).
struct GroupGuard(Vec<PathBuf>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        for f in &self.0 {
            if let Some(pid) = read_pid(f).and_then(Pid::from_raw) {
                let _ = kill_process_group(pid, Signal::KILL);
                let _ = kill_process(pid, Signal::KILL);
            }
        }
    }
}

fn read_pid(f: &Path) -> Option<i32> {
    fs::read_to_string(f).ok()?.trim().parse().ok()
}

/// Start `xbagent serve ARGS` and wait until it listens.
fn start_serve(dir: &Path, name: &str, args: &[&str]) -> Proc {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    let mut p = Proc::spawn(name, &mut xb(&all), dir.join(format!("{name}.log")), true);
    p.wait_log("listening on", Duration::from_secs(15));
    p
}

fn start_receive(dir: &Path, name: &str, args: &[&str]) -> Proc {
    let mut all = vec!["receive"];
    all.extend_from_slice(args);
    Proc::spawn(name, &mut xb(&all), dir.join(format!("{name}.log")), false)
}

/// Run `xbagent receive ARGS` to its end (at most `limit`).
fn receive(dir: &Path, name: &str, args: &[&str], limit: Duration) -> Outcome {
    start_receive(dir, name, args).wait_shown(limit)
}

// ---------------------------------------------------------------------------------------------
// Trees, markers, streams
// ---------------------------------------------------------------------------------------------

/// Every entry under `root`, the clone markers at the top left out.
fn tree(root: &Path) -> Tree {
    tree_skipping(root, &[COMPLETE, PARTIAL])
}

/// The clone in `dst` is `src`, markers aside.
#[track_caller]
fn assert_same_tree(src: &Path, dst: &Path) {
    let (a, b) = (tree(src), tree(dst));
    assert!(!a.is_empty(), "source tree {src:?} is empty");
    trees::assert_same_entries(&a, &b, src, dst);
}

fn marker(dst: &Path) -> bool {
    dst.join(COMPLETE).exists()
}

/// The outcome of a clone that must fail: the exit code, words of the message, no marker.
fn assert_failed(out: &Outcome, code: i32, words: &[&str], dst: &Path) {
    assert_eq!(
        out.code,
        Some(code),
        "expected exit {code}; receive's log:\n{}",
        out.log
    );
    let lower = out.log.to_lowercase();
    for w in words {
        assert!(
            lower.contains(&w.to_lowercase()),
            "receive's message lacks {w:?}; its log:\n{}",
            out.log
        );
    }
    assert!(
        !marker(dst),
        "a failed clone left the completion marker in {dst:?}; receive's log:\n{}",
        out.log
    );
}

fn assert_complete(out: &Outcome, src: &Path, dst: &Path) {
    assert_eq!(out.code, Some(0), "receive failed; its log:\n{}", out.log);
    assert!(
        out.log.contains("clone complete:"),
        "no 'clone complete' line; receive's log:\n{}",
        out.log
    );
    assert!(marker(dst), "no completion marker in {dst:?}");
    assert!(
        !dst.join(PARTIAL).exists(),
        "the in-progress marker is still in {dst:?} after a complete clone"
    );
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(dst.join(COMPLETE)).unwrap()).expect("marker is JSON");
    assert_eq!(m["trailer"]["exit_status"], 0, "marker: {m}");
    assert_same_tree(src, dst);
}

/// A source tree: nested directories, an empty file, small files, a 3 MiB file.
fn make_src(src: &Path) {
    fs::create_dir_all(src.join("db1/sub")).unwrap();
    fs::create_dir_all(src.join("db2")).unwrap();
    fs::write(src.join("ibdata1"), noise(1, 3 << 20)).unwrap();
    fs::write(src.join("db1/t1.ibd"), noise(2, 200_000)).unwrap();
    fs::write(src.join("db1/t1.frm"), b"frm of t1\n").unwrap();
    fs::write(src.join("db1/sub/deep.txt"), b"deep\n").unwrap();
    fs::write(src.join("db2/empty"), b"").unwrap();
    fs::write(
        src.join("xtrabackup_checkpoints"),
        b"backup_type = full-backuped\n",
    )
    .unwrap();
}

/// A test's world: a source tree, its stream `good.xb` (256 KiB chunks), a token file.
struct World {
    _t: tempfile::TempDir,
    dir: PathBuf,
    src: PathBuf,
    xb: PathBuf,
    token: PathBuf,
}

impl World {
    fn new(tag: &str) -> World {
        let t = short_tempdir(&format!("xbc-{tag}"));
        let dir = t.path().to_path_buf();
        let src = dir.join("src");
        make_src(&src);
        let xb = dir.join("good.xb");
        let f = fs::File::create(&xb).unwrap();
        let out = Command::new(XBAGENT)
            .args(["create", "--chunk-size", "256K", "-C", s(&src), "."])
            .stdout(Stdio::from(f))
            .stderr(Stdio::piped())
            .output()
            .expect("cannot run xbagent create");
        assert!(
            out.status.success(),
            "xbagent create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(fs::metadata(&xb).unwrap().len() > 3 << 20);
        let token = write_token(&dir);
        World {
            _t: t,
            dir,
            src,
            xb,
            token,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `serve --listen PORT --dir DIR` with the token and `extra`, listening.
    fn serve_dir(&self, name: &str, dir: &Path, port: u16, extra: &[&str]) -> Proc {
        let listen = local(port);
        let args = [&["--listen", &listen, "--dir", s(dir)], extra].concat();
        let tok = token_args(self);
        start_serve(&self.dir, name, &[&args[..], &strs(&tok)].concat())
    }

    /// `receive` from PORT into `dst` with the token and `extra`, to its end.
    fn recv(&self, name: &str, port: u16, dst: &Path, extra: &[&str]) -> Outcome {
        self.recv_within(name, port, dst, extra, MIN)
    }

    /// `receive` from PORT into `dst` with the token and `extra`, started.
    fn start_recv(&self, name: &str, port: u16, dst: &Path, extra: &[&str]) -> Proc {
        start_receive(&self.dir, name, &strs(&recv_args(self, port, dst, extra)))
    }

    /// [`World::recv`] with a time limit.
    fn recv_within(
        &self,
        name: &str,
        port: u16,
        dst: &Path,
        extra: &[&str],
        limit: Duration,
    ) -> Outcome {
        receive(
            &self.dir,
            name,
            &strs(&recv_args(self, port, dst, extra)),
            limit,
        )
    }

    /// A shell command that sends CUT_AT bytes of the stream, records its PID in `pidfile`,
    /// and then sleeps (the process itself, `exec`ed, so killing that PID ends the source).
    fn stalling_source(&self, pidfile: &Path) -> String {
        format!(
            "echo $$ > '{}'; head -c {CUT_AT} '{}'; exec sleep 30",
            s(pidfile),
            s(&self.xb)
        )
    }
}

/// Wait until the receiver has written something of the stream into `dst`.
fn wait_data(dst: &Path, recv: &mut Proc) {
    let start = Instant::now();
    loop {
        let n = fs::read_dir(dst)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    // Not our markers (nor the temp file the in-progress one is written as).
                    .filter(|e| {
                        !e.file_name()
                            .to_string_lossy()
                            .starts_with(".xbagent-clone")
                    })
                    .count()
            })
            .unwrap_or(0);
        if n > 0 {
            return;
        }
        assert!(
            recv.running(),
            "receive exited before any data arrived; its log:\n{}",
            recv.log()
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no data arrived in {dst:?} within 20 s; receive's log:\n{}",
            recv.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

const MIN: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// 1. The happy path with --dir, and the re-run on a complete clone
// ---------------------------------------------------------------------------------------------

#[test]
fn dir_clone_is_identical_and_a_rerun_is_a_no_op() {
    let w = World::new("dir");
    let port = free_port();
    let mut serve = w.serve_dir("serve", &w.src, port, &[]);
    let dst = w.path("dst");
    let args = [
        "--from",
        &local(port),
        "-C",
        s(&dst),
        "--token-file",
        s(&w.token),
    ];
    let out = receive(&w.dir, "recv1", &args, MIN);
    assert_complete(&out, &w.src, &dst);
    serve.wait_log("clone sent: 6 files", Duration::from_secs(10));
    assert!(serve.log().contains("peer authenticated"));

    let before = fs::read(dst.join(COMPLETE)).unwrap();
    let again = receive(&w.dir, "recv2", &args, MIN);
    assert_eq!(again.code, Some(0), "second receive: {}", again.log);
    assert!(
        again.log.contains("already holds a complete clone"),
        "second receive: {}",
        again.log
    );
    assert!(
        again.elapsed < Duration::from_secs(5),
        "second receive took {:?}",
        again.elapsed
    );
    assert_eq!(fs::read(dst.join(COMPLETE)).unwrap(), before);
    assert_same_tree(&w.src, &dst);
    assert_eq!(
        serve.log().matches("}: connected").count(),
        1,
        "the second receive must not even connect; serve's log:\n{}",
        serve.log()
    );
    assert!(serve.running(), "serve exited: {}", serve.log());
}

// ---------------------------------------------------------------------------------------------
// 2. End to end with a real MariaDB server and mariabackup
// ---------------------------------------------------------------------------------------------

#[test]
fn mariabackup_clone_restores_to_identical_tables() {
    require_mariadb();
    let w = World::new("mdb");
    let (src, dst, mbtmp) = (w.path("s"), w.path("d"), w.path("mbt"));
    fs::create_dir_all(&mbtmp).unwrap();
    let src_server = Server::start(&src);
    src_server.load("1");
    let want = src_server.checksums();
    assert!(
        ["fx.t_innodb", "fx.t_myisam", "fx.t_aria"]
            .iter()
            .all(|t| want.contains_key(*t)),
        "unexpected source tables: {want:?}"
    );

    let cmd = format!(
        "mariabackup --no-defaults --backup --stream=xbstream --parallel=2 --user=root \
         --socket='{}/sock' --datadir='{}/data' --target-dir='{}'",
        s(&src),
        s(&src),
        s(&mbtmp)
    );
    let (serve, port) = serve_exec(&w, "serve", &cmd, &[]);
    let out = w.recv_within("recv", port, &dst, &[], Duration::from_secs(180));
    assert_eq!(
        out.code,
        Some(0),
        "receive failed: {}\nserve's log:\n{}",
        out.log,
        serve.log()
    );
    assert!(marker(&dst), "no completion marker; {}", out.log);
    assert!(dst.join("xtrabackup_checkpoints").is_file());
    drop(serve);

    // The markers are ours, not the server's: they must not bother prepare or the server.
    fixture(&["prepare", s(&dst)]);
    let dst_server = Server::start_on(&dst);
    let got = dst_server.checksums();
    assert_eq!(got, want, "table checksums differ between source and clone");
    drop(src_server);

    // Also with --dir: the restored (and now stopped) datadir served as a directory.
    drop(dst_server);
    let _ = fs::remove_file(dst.join("sock"));
    let port3 = free_port();
    let serve = w.serve_dir("serve-dir", &dst, port3, &[]);
    let dst2 = w.path("d2");
    let out = w.recv_within("recv-dir", port3, &dst2, &[], Duration::from_secs(120));
    assert_eq!(
        out.code,
        Some(0),
        "receive from serve --dir failed: {}\nserve's log:\n{}",
        out.log,
        serve.log()
    );
    assert_same_tree(&dst, &dst2);
    drop(serve);
    let got = Server::start_on(&dst2).checksums();
    assert_eq!(got, want, "table checksums differ after the --dir clone");
}

// ---------------------------------------------------------------------------------------------
// 3. Faults
// ---------------------------------------------------------------------------------------------

fn token_args(w: &World) -> Vec<String> {
    vec!["--token-file".into(), s(&w.token).into()]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `serve --exec CMD --token-file T [extra]` on a fresh port.
fn serve_exec(w: &World, name: &str, cmd: &str, extra: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let listen = local(port);
    let mut args = vec!["--listen", &listen, "--exec", cmd];
    let tok = token_args(w);
    args.extend(strs(&tok));
    args.extend_from_slice(extra);
    (start_serve(&w.dir, name, &args), port)
}

fn recv_args(w: &World, port: u16, dst: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec!["--from".into(), local(port), "-C".into(), s(dst).into()];
    v.extend(token_args(w));
    v.extend(extra.iter().map(|x| x.to_string()));
    v
}

// a. serve killed with SIGKILL mid-stream
#[test]
fn fault_serve_sigkilled_mid_stream() {
    let w = World::new("kill9");
    let pidf = w.path("src.pid");
    let _g = GroupGuard(vec![pidf.clone()]);
    let (serve, port) = serve_exec(&w, "serve", &w.stalling_source(&pidf), &[]);
    let dst = w.path("dst");
    let mut r = w.start_recv("recv", port, &dst, &[]);
    wait_data(&dst, &mut r);
    serve.signal(Signal::KILL);
    let out = r.wait(Duration::from_secs(30));
    assert_failed(&out, EXIT_PEER, &["closed the connection"], &dst);
    assert!(
        dst.join(PARTIAL).exists(),
        "the in-progress marker must stay"
    );
}

// b. only the child killed
#[test]
fn fault_source_killed() {
    let w = World::new("kchild");
    let pidf = w.path("src.pid");
    let _g = GroupGuard(vec![pidf.clone()]);
    let (mut serve, port) = serve_exec(&w, "serve", &w.stalling_source(&pidf), &[]);
    let dst = w.path("dst");
    let mut r = w.start_recv("recv", port, &dst, &[]);
    wait_data(&dst, &mut r);
    let pid = read_pid(&pidf).expect("the source wrote its pid");
    kill_process(Pid::from_raw(pid).unwrap(), Signal::KILL).expect("kill the source");
    let out = r.wait(Duration::from_secs(30));
    assert_failed(&out, EXIT_BAD_STREAM, &[], &dst);
    assert!(
        serve.running(),
        "serve must survive its source: {}",
        serve.log()
    );
    serve.wait_log("status -9", Duration::from_secs(10));
}

// c. child exits non-zero after sending everything
#[test]
fn fault_source_exits_non_zero_after_the_whole_stream() {
    let w = World::new("exit3");
    let cmd = format!("cat '{}'; exit 3", s(&w.xb));
    let (_serve, port) = serve_exec(&w, "serve", &cmd, &[]);
    let dst = w.path("dst");
    let out = w.recv("recv", port, &dst, &[]);
    assert_failed(&out, EXIT_BAD_STREAM, &["exit status 3"], &dst);
}

/// The first connection to `l` within 60 s (unless `stop` is set first); else `who` panics.
fn accept_within(l: &TcpListener, who: &str, stop: &AtomicBool) -> TcpStream {
    l.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let c = loop {
        match l.accept() {
            Ok((c, _)) => break c,
            Err(_) if Instant::now() < deadline && !stop.load(Ordering::SeqCst) => {
                thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{who}: no peer within 60 s: {e}"),
        }
    };
    c.set_nonblocking(false).unwrap();
    c
}

/// A TCP proxy that forwards one connection to `target` and cuts it (both ways) once
/// `cut_after` bytes went from the server to the client.
fn cutting_proxy(target: u16, cut_after: u64) -> (u16, thread::JoinHandle<u64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = thread::spawn(move || {
        let client = accept_within(&l, "proxy", &AtomicBool::new(false));
        let upstream = TcpStream::connect(("127.0.0.1", target)).expect("proxy: connect");
        for sock in [&client, &upstream] {
            sock.set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
        }
        // Client to server: forward until either side closes.
        let (mut c_r, mut u_w) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
        thread::spawn(move || {
            let mut b = [0u8; 16 * 1024];
            while let Ok(n) = c_r.read(&mut b) {
                if n == 0 || u_w.write_all(&b[..n]).is_err() {
                    break;
                }
            }
        });
        // Server to client: forward `cut_after` bytes, then cut.
        let (mut u_r, mut c_w) = (upstream.try_clone().unwrap(), client.try_clone().unwrap());
        let mut sent = 0u64;
        let mut b = [0u8; 16 * 1024];
        while sent < cut_after {
            let want = (cut_after - sent).min(b.len() as u64) as usize;
            match u_r.read(&mut b[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if c_w.write_all(&b[..n]).is_err() {
                        break;
                    }
                    sent += n as u64;
                }
            }
        }
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
        sent
    });
    (port, h)
}

// d. connection cut mid-stream by a proxy
#[test]
fn fault_connection_cut_by_proxy() {
    let w = World::new("proxy");
    let pidf = w.path("src.pid");
    let _g = GroupGuard(vec![pidf.clone()]);
    let (mut serve, port) = serve_exec(
        &w,
        "serve",
        &w.stalling_source(&pidf),
        &["--heartbeat", "1s"],
    );
    let (pport, proxy) = cutting_proxy(port, 500_000);
    let dst = w.path("dst");
    let out = w.recv("recv", pport, &dst, &[]);
    assert_eq!(proxy.join().unwrap(), 500_000, "the proxy cut too early");
    assert_failed(&out, EXIT_PEER, &["closed the connection"], &dst);
    // The donor notices that its receiver went away and stops the source.
    serve.wait_log("clone aborted", Duration::from_secs(15));
    let pid = read_pid(&pidf).unwrap();
    wait_for("the source to be stopped", Duration::from_secs(10), || {
        !process_alive(pid)
    });
}

/// A fake donor: completes the handshake with `token`, sends START, then nothing at all.
fn silent_donor(token: &[u8]) -> (u16, Arc<AtomicBool>, thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let token = protocol::Token::new(token);
    let stop2 = stop.clone();
    let h = thread::spawn(move || {
        let mut c = accept_within(&l, "fake donor", &stop2);
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = Vec::new();
        let ty = read_frame(&mut c, &mut buf, protocol::MAX_FRAME).expect("fake donor: HELLO");
        assert_eq!(ty, FrameType::Hello);
        let hello = protocol::parse_hello(&buf).expect("fake donor: parse HELLO");
        let pake = protocol::DonorPake::answer(Some(&token), &hello).expect("fake donor: SPAKE2");
        write_frame(
            &mut c,
            FrameType::Challenge,
            &protocol::challenge(&pake.challenge),
        )
        .unwrap();
        let ty = read_frame(&mut c, &mut buf, protocol::MAX_FRAME).expect("fake donor: PROOF");
        assert_eq!(ty, FrameType::Proof);
        assert!(
            pake.accepts(&buf),
            "fake donor: the receiver's proof is wrong"
        );
        write_frame(&mut c, FrameType::Start, b"exec: silence").unwrap();
        // Then nothing: no data, no heartbeat, but the connection stays open.
        let until = Instant::now() + Duration::from_secs(30);
        while !stop2.load(Ordering::SeqCst) && Instant::now() < until {
            thread::sleep(Duration::from_millis(20));
        }
    });
    (port, stop, h)
}

// e. a silent source: no heartbeats → stalled; heartbeats → kept alive
#[test]
fn fault_silent_donor_without_heartbeats_stalls() {
    let w = World::new("stall");
    let (port, stop, h) = silent_donor(&fs::read(&w.token).unwrap());
    let dst = w.path("dst");
    let out = w.recv("recv", port, &dst, &["--stall-timeout", "2s"]);
    stop.store(true, Ordering::SeqCst);
    h.join().expect("the fake donor failed");
    assert_failed(&out, EXIT_PEER, &["stalled"], &dst);
    assert!(
        out.elapsed >= Duration::from_millis(1900) && out.elapsed < Duration::from_secs(10),
        "stalled after {:?}, --stall-timeout was 2s",
        out.elapsed
    );
}

#[test]
fn silent_source_is_kept_alive_by_heartbeats() {
    let w = World::new("hbeat");
    let cmd = format!("sleep 8; cat '{}'", s(&w.xb));
    let (serve, port) = serve_exec(&w, "serve", &cmd, &["--heartbeat", "1s"]);
    let dst = w.path("dst");
    let out = w.recv("recv", port, &dst, &["--stall-timeout", "3s"]);
    assert!(
        out.elapsed >= Duration::from_secs(7),
        "the clone ended after {:?}, before the source spoke",
        out.elapsed
    );
    assert_complete(&out, &w.src, &dst);
    drop(serve);
}

// A corrupt stream from the source: serve's check stops it; the bad chunk is never delivered.
#[test]
fn fault_corrupt_source_stream_is_never_delivered() {
    let w = World::new("crc");
    let mut bad = fs::read(&w.xb).unwrap();
    // Inside ibdata1's payload (the stream's first and biggest file).
    let at = bad.len() / 4;
    bad[at] ^= 0x55;
    let bad_xb = w.path("bad.xb");
    fs::write(&bad_xb, &bad).unwrap();
    let cmd = format!("cat '{}'", s(&bad_xb));
    let (mut serve, port) = serve_exec(&w, "serve", &cmd, &[]);
    let dst = w.path("dst");
    let out = w.recv("recv", port, &dst, &[]);
    assert_failed(
        &out,
        EXIT_PEER,
        &["donor reported an error", "checksum mismatch"],
        &dst,
    );
    serve.wait_log("clone aborted", Duration::from_secs(10));
    // No byte of the corrupt chunk reached the target: what arrived is a prefix of the
    // original file, shorter than the position of the flipped byte.
    if let Ok(got) = fs::read(dst.join("ibdata1")) {
        let orig = fs::read(w.src.join("ibdata1")).unwrap();
        assert!(got.len() < at, "{} bytes of ibdata1 arrived", got.len());
        assert_eq!(&orig[..got.len()], &got[..], "ibdata1 is not a good prefix");
    }
}

// The donor never answers (nothing listens; a name that does not resolve): retried, then exit 4.
#[test]
fn unreachable_donor_fails_after_retry_for() {
    let t = short_tempdir("xbc-unreach");
    for (name, from) in [
        ("refused", local(free_port())),
        ("dns", "no-such-donor.invalid:3307".to_string()),
    ] {
        let dst = t.path().join(name);
        let args = ["--from", &from, "-C", s(&dst), "--insecure"];
        let out = receive(
            t.path(),
            name,
            &[&args, &["--retry-for", "3s"][..]].concat(),
            MIN,
        );
        assert_failed(&out, EXIT_PEER, &["cannot reach the donor"], &dst);
        assert!(
            out.log.matches("not reachable yet").count() >= 2,
            "receive should retry: {}",
            out.log
        );
        assert!(
            out.elapsed >= Duration::from_millis(2900) && out.elapsed < Duration::from_secs(30),
            "gave up after {:?} with --retry-for 3s",
            out.elapsed
        );
    }
}

// A receiver that goes away stops the donor's source (no orphaned backups); serve goes on.
#[test]
fn receiver_killed_stops_the_source() {
    let w = World::new("rkill");
    let pidf = w.path("src.pid");
    let _g = GroupGuard(vec![pidf.clone()]);
    let (mut serve, port) = serve_exec(
        &w,
        "serve",
        &w.stalling_source(&pidf),
        &["--heartbeat", "1s"],
    );
    let dst = w.path("dst");
    let mut r = w.start_recv("recv", port, &dst, &[]);
    wait_data(&dst, &mut r);
    let pid = read_pid(&pidf).expect("the source wrote its pid");
    r.signal(Signal::KILL);
    let _ = r.wait(Duration::from_secs(10));
    assert!(!marker(&dst));
    serve.wait_log("clone aborted", Duration::from_secs(15));
    wait_for("the source to be stopped", Duration::from_secs(10), || {
        !process_alive(pid)
    });
    assert!(serve.running(), "serve exited: {}", serve.log());
}

// Chained clones: a datadir that was itself cloned (it holds our completion marker) is served
// with --dir. The marker inside the stream must never count as the receiver's own: not after a
// good clone (the receiver writes its own), and above all not after a failed one.
#[test]
fn a_marker_inside_the_stream_never_fakes_completion() {
    let w = World::new("chain");
    // First clone: w.src -> hop1 (now holds a completion marker).
    let port = free_port();
    let serve1 = w.serve_dir("serve1", &w.src, port, &[]);
    let hop1 = w.path("hop1");
    let out = w.recv("recv1", port, &hop1, &[]);
    assert_complete(&out, &w.src, &hop1);
    drop(serve1);

    // Second hop, good: hop1 -> hop2; the marker is the receiver's own, about this clone.
    let port2 = free_port();
    let _serve2 = w.serve_dir("serve2", &hop1, port2, &[]);
    let hop2 = w.path("hop2");
    let out = w.recv("recv2", port2, &hop2, &[]);
    assert_complete(&out, &w.src, &hop2);
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(hop2.join(COMPLETE)).unwrap()).unwrap();
    assert_eq!(m["from"], local(port2), "hop2's marker is not its own: {m}");

    // Second hop, failing: the stream of hop1 (marker included) from a source exiting 3.
    let stream = w.path("hop1.xb");
    let f = fs::File::create(&stream).unwrap();
    let st = Command::new(XBAGENT)
        .args(["create", "-C", s(&hop1), "."])
        .stdout(Stdio::from(f))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let cmd = format!("cat '{}'; exit 3", s(&stream));
    let (_bad, bad_port) = serve_exec(&w, "serve-bad", &cmd, &[]);
    let hop3 = w.path("hop3");
    let args = recv_args(&w, bad_port, &hop3, &[]);
    let out = receive(&w.dir, "recv-bad", &strs(&args), MIN);
    assert_failed(&out, EXIT_BAD_STREAM, &["exit status 3"], &hop3);
    // And the restarted initContainer must not take it for a complete clone.
    let again = receive(&w.dir, "recv-bad-again", &strs(&args), MIN);
    assert_failed(&again, EXIT_BAD_STREAM, &["exit status 3"], &hop3);
}

// f. authentication: wrong token, missing token, junk; the source never starts
#[test]
fn fault_wrong_token_and_junk_never_start_the_source() {
    let w = World::new("auth");
    let started = w.path("started");
    let cmd = format!("touch '{}'; cat '{}'", s(&started), s(&w.xb));
    let (mut serve, port) = serve_exec(&w, "serve", &cmd, &[]);

    let wrong_dir = w.path("wrong");
    fs::create_dir(&wrong_dir).unwrap();
    let wrong = write_token(&wrong_dir);
    let dst = w.path("dst-wrong");
    let args = [
        "--from",
        &local(port),
        "-C",
        s(&dst),
        "--token-file",
        s(&wrong),
    ];
    let out = receive(&w.dir, "recv-wrong", &args, MIN);
    assert_failed(&out, EXIT_PEER, &["authentication"], &dst);
    assert!(!started.exists(), "the source started for a wrong token");

    let dst = w.path("dst-none");
    let out = receive(
        &w.dir,
        "recv-none",
        &["--from", &local(port), "-C", s(&dst), "--insecure"],
        MIN,
    );
    assert_failed(&out, EXIT_PEER, &["authentication"], &dst);
    assert!(
        !started.exists(),
        "the source started for a peer without token"
    );

    // Junk: an HTTP request, a frame header announcing a huge frame, a silent close.
    let junk: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0x01, 0xff, 0xff, 0xff, 0x7f],
        b"",
    ];
    for j in junk {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect to serve");
        c.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
        c.write_all(j).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        let _ = c.read_to_end(&mut reply);
        if !j.is_empty() {
            assert_eq!(
                reply.first().copied(),
                Some(FrameType::Error as u8),
                "serve should answer junk {j:?} with an ERROR frame, got {reply:?}"
            );
        }
        assert!(serve.running(), "serve died on junk: {}", serve.log());
    }
    assert!(!started.exists(), "the source started for junk");

    // The next good peer is served.
    let dst = w.path("dst-good");
    let out = w.recv("recv-good", port, &dst, &[]);
    assert_complete(&out, &w.src, &dst);
    assert!(started.exists(), "the source did not run for the good peer");
}

// g. receive started before serve
#[test]
fn receive_waits_for_a_late_donor() {
    let w = World::new("late");
    let port = free_port();
    let dst = w.path("dst");
    let mut r = w.start_recv("recv", port, &dst, &["--retry-for", "60s"]);
    thread::sleep(Duration::from_secs(2));
    assert!(
        r.running(),
        "receive gave up before the donor came: {}",
        r.log()
    );
    let _serve = w.serve_dir("serve", &w.src, port, &[]);
    let out = r.wait(MIN);
    assert_complete(&out, &w.src, &dst);
    assert!(
        out.log.contains("not reachable yet"),
        "receive should say it waits: {}",
        out.log
    );
}

// h. re-run after a failure, --keep-partial, a foreign non-empty DIR
#[test]
fn rerun_after_failure_clears_the_partial_clone() {
    let w = World::new("rerun");
    let cmd = format!("cat '{}'; exit 3", s(&w.xb));
    let (bad, bad_port) = serve_exec(&w, "serve-bad", &cmd, &[]);
    let dst = w.path("dst");
    let out = w.recv("recv-bad", bad_port, &dst, &[]);
    assert_failed(&out, EXIT_BAD_STREAM, &["exit status 3"], &dst);
    assert!(
        dst.join(PARTIAL).exists(),
        "a failed clone keeps its in-progress marker"
    );
    drop(bad);
    fs::write(dst.join("stray-from-attempt-1"), b"x").unwrap();

    let port = free_port();
    let mut serve = w.serve_dir("serve", &w.src, port, &[]);
    // --keep-partial refuses, and touches nothing.
    let before = tree(&dst);
    let out = w.recv("recv-keep", port, &dst, &["--keep-partial"]);
    assert_failed(&out, EXIT_LOCAL, &["partial"], &dst);
    assert_eq!(tree(&dst), before, "--keep-partial changed the directory");
    assert!(dst.join(PARTIAL).exists());

    // A plain re-run clears the partial clone and succeeds.
    let out = w.recv("recv-again", port, &dst, &[]);
    assert_complete(&out, &w.src, &dst);
    assert!(!dst.join("stray-from-attempt-1").exists());

    // A non-empty directory that is not ours: refused, untouched, the donor never contacted.
    let foreign = w.path("foreign");
    fs::create_dir_all(foreign.join("mysql")).unwrap();
    fs::write(foreign.join("mysql/user.frm"), b"precious").unwrap();
    fs::write(foreign.join("ibdata1"), b"precious too").unwrap();
    let before = tree(&foreign);
    let connects = serve.log().matches("}: connected").count();
    let out = w.recv("recv-foreign", port, &foreign, &[]);
    assert_failed(&out, EXIT_LOCAL, &["not empty"], &foreign);
    assert_eq!(tree(&foreign), before, "a foreign directory was modified");
    assert!(!foreign.join(PARTIAL).exists());
    assert_eq!(serve.log().matches("}: connected").count(), connects);
    assert!(serve.running());
}

// i. SIGTERM to serve mid-clone
#[test]
fn sigterm_stops_serve_and_its_source() {
    let w = World::new("term");
    let pidf = w.path("src.pid");
    let gpidf = w.path("grandchild.pid");
    let _g = GroupGuard(vec![pidf.clone(), gpidf.clone()]);
    // The source and a grandchild of it (a backup tool's helper): both must go.
    let cmd = format!(
        "echo $$ > '{}'; head -c {CUT_AT} '{}'; sleep 60 & echo $! > '{}'; wait",
        s(&pidf),
        s(&w.xb),
        s(&gpidf)
    );
    let (mut serve, port) = serve_exec(&w, "serve", &cmd, &["--heartbeat", "1s"]);
    let dst = w.path("dst");
    let mut r = w.start_recv("recv", port, &dst, &[]);
    wait_data(&dst, &mut r);
    wait_for("the grandchild's pid", Duration::from_secs(10), || {
        read_pid(&gpidf).is_some()
    });
    let (pid, gpid) = (read_pid(&pidf).unwrap(), read_pid(&gpidf).unwrap());
    assert!(process_alive(pid) && process_alive(gpid));

    serve.signal(Signal::TERM);
    let s_out = serve.wait(Duration::from_secs(10));
    assert!(
        s_out.elapsed < Duration::from_secs(10),
        "serve took {:?} to stop",
        s_out.elapsed
    );
    assert_eq!(s_out.code, Some(130), "serve after SIGTERM: {}", s_out.log);
    assert!(!process_alive(pid), "the source (pid {pid}) outlived serve");
    wait_for("the grandchild to die", Duration::from_secs(5), || {
        !process_alive(gpid)
    });
    let out = r.wait(Duration::from_secs(30));
    assert_failed(&out, EXIT_PEER, &["shutting down"], &dst);
}

// j. --max-conns 1: the second receiver waits, then completes
#[test]
fn max_conns_queues_the_second_receiver() {
    let w = World::new("queue");
    let lock = w.path("first");
    let events = w.path("events");
    // The first clone's source is slow (8 s), the next ones are fast; each source records its
    // start and end, so the test can tell whether two ever ran at once.
    let cmd = format!(
        "echo start >> '{ev}'; if mkdir '{}' 2>/dev/null; then sleep 8; fi; cat '{}'; echo end >> '{ev}'",
        s(&lock),
        s(&w.xb),
        ev = s(&events)
    );
    let (mut serve, port) = serve_exec(
        &w,
        "serve",
        &cmd,
        &["--max-conns", "1", "--heartbeat", "1s"],
    );
    let (d1, d2) = (w.path("dst1"), w.path("dst2"));
    let start = Instant::now();
    let mut r1 = w.start_recv("recv1", port, &d1, &[]);
    serve.wait_log("source started", Duration::from_secs(15));
    let mut r2 = w.start_recv("recv2", port, &d2, &[]);
    let (o1, o2) = (r1.wait(MIN), r2.wait(MIN));
    assert_complete(&o1, &w.src, &d1);
    assert_complete(&o2, &w.src, &d2);
    assert!(
        o2.log.contains("donor busy"),
        "the second receiver was not told to wait: {}",
        o2.log
    );
    assert!(
        start.elapsed() >= Duration::from_secs(8),
        "both clones done after {:?}, before the first source could finish",
        start.elapsed()
    );
    assert_eq!(
        fs::read_to_string(&events).unwrap(),
        "start\nend\nstart\nend\n",
        "two sources ran at once with --max-conns 1"
    );
    assert!(serve.log().contains("waiting: 1 clone(s) already running"));
}

// k. no token and no --insecure
#[test]
fn serve_refuses_to_run_without_a_token() {
    let t = short_tempdir("xbc-notok");
    let src = t.path().join("src");
    make_src(&src);
    let mut p = Proc::spawn(
        "serve",
        &mut xb(&["serve", "--listen", &local(free_port()), "--dir", s(&src)]),
        t.path().join("serve.log"),
        true,
    );
    let out = p.wait(Duration::from_secs(10));
    assert_eq!(out.code, Some(EXIT_LOCAL), "serve: {}", out.log);
    for w in ["--token-file", "--insecure"] {
        assert!(out.log.contains(w), "message lacks {w}: {}", out.log);
    }
    assert!(!out.log.contains("listening on"), "{}", out.log);
}

// l. raw mode, both ways
#[test]
fn raw_mode_clones_but_writes_no_marker_and_feeds_mbstream() {
    require_tools(&["mbstream"], "mariadb-backup");
    let w = World::new("raw");
    let port = free_port();
    let _serve = start_serve(
        &w.dir,
        "serve",
        &["--listen", &local(port), "--raw", "--dir", s(&w.src)],
    );
    let dst = w.path("dst");
    let out = receive(
        &w.dir,
        "recv",
        &["--raw", "--from", &local(port), "-C", s(&dst)],
        MIN,
    );
    assert_eq!(out.code, Some(0), "raw receive: {}", out.log);
    assert!(out.log.contains("raw"), "{}", out.log);
    assert!(
        !marker(&dst),
        "raw mode must not write the completion marker"
    );
    assert_same_tree(&w.src, &dst);

    // An ncat-style receiver: a plain socket read into `mbstream -x`.
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut stream = Vec::new();
    c.read_to_end(&mut stream).expect("reading the raw stream");
    assert!(stream.starts_with(b"XBSTCK01"), "not an xbstream");
    let mb = w.path("mb");
    fs::create_dir_all(&mb).unwrap();
    let mut p = Command::new("mbstream")
        .args(["-x", "-C", s(&mb)])
        .env("PATH", child_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run mbstream");
    p.stdin.take().unwrap().write_all(&stream).unwrap();
    let o = p.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "mbstream -x failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_same_tree(&w.src, &mb);
}

// m. TLS
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    srv_cert: PathBuf,
    srv_key: PathBuf,
    cli_cert: PathBuf,
    cli_key: PathBuf,
}

/// `openssl ARGS` in `dir`, ARGS split at spaces.
fn openssl(dir: &Path, args: &str) {
    let args: Vec<&str> = args.split(' ').collect();
    let out = Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .env("PATH", child_path())
        .stdin(Stdio::null())
        .output()
        .expect("cannot run openssl");
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_pki(dir: &Path) -> Pki {
    require_tools(&["openssl"], "openssl");
    fs::create_dir_all(dir).unwrap();
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    for ca in ["ca", "other-ca"] {
        // The subject is one argument: no space in it.
        openssl(
            dir,
            &format!(
                "req -x509 -days 2 -subj /CN=xbagent-test-{ca} {ec} -keyout {ca}.key -out {ca}.crt \
                 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
            ),
        );
    }
    fs::write(
        dir.join("srv.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    fs::write(
        dir.join("cli.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    for (n, serial) in [("srv", "1001"), ("cli", "1002")] {
        let subj = format!("/CN=xbagent-test-{n}");
        openssl(
            dir,
            &format!("req -new -subj {subj} {ec} -keyout {n}.key -out {n}.csr"),
        );
        openssl(
            dir,
            &format!(
                "x509 -req -in {n}.csr -CA ca.crt -CAkey ca.key -set_serial {serial} -days 2 \
                 -extfile {n}.ext -out {n}.crt"
            ),
        );
    }
    Pki {
        ca: dir.join("ca.crt"),
        other_ca: dir.join("other-ca.crt"),
        srv_cert: dir.join("srv.crt"),
        srv_key: dir.join("srv.key"),
        cli_cert: dir.join("cli.crt"),
        cli_key: dir.join("cli.key"),
    }
}

fn assert_tls_failure(out: &Outcome, dst: &Path) {
    assert!(
        matches!(out.code, Some(3) | Some(4)),
        "expected exit 3 or 4; receive's log:\n{}",
        out.log
    );
    let l = out.log.to_lowercase();
    assert!(
        l.contains("tls") || l.contains("certificate"),
        "the message should mention TLS or the certificate:\n{}",
        out.log
    );
    assert!(
        !marker(dst),
        "a failed TLS clone left the completion marker"
    );
}

#[test]
fn tls_verifies_the_donor_and_optionally_the_receiver() {
    let w = World::new("tls");
    let pki = make_pki(&w.path("pki"));
    let port = free_port();
    let tls = ["--tls-cert", s(&pki.srv_cert), "--tls-key", s(&pki.srv_key)];
    let mut serve = w.serve_dir("serve", &w.src, port, &tls);
    let dst = w.path("dst-ok");
    let out = w.recv("recv-ok", port, &dst, &["--tls-ca", s(&pki.ca)]);
    assert_complete(&out, &w.src, &dst);

    let dst = w.path("dst-wrong-ca");
    let out = w.recv("recv-wrong-ca", port, &dst, &["--tls-ca", s(&pki.other_ca)]);
    assert_tls_failure(&out, &dst);

    // A plaintext receiver against a TLS donor: refused, no marker.
    let dst = w.path("dst-plain");
    let out = w.recv("recv-plain", port, &dst, &["--stall-timeout", "10s"]);
    assert!(
        out.code.is_some_and(|c| c != 0),
        "plaintext receive against TLS serve: {}",
        out.log
    );
    assert!(!marker(&dst));
    assert!(serve.running(), "{}", serve.log());

    // Client certificates required.
    let port2 = free_port();
    let mtls = [&tls[..], &["--tls-client-ca", s(&pki.ca)]].concat();
    let _serve2 = w.serve_dir("serve-mtls", &w.src, port2, &mtls);
    let dst = w.path("dst-no-client-cert");
    let out = w.recv("recv-no-cert", port2, &dst, &["--tls-ca", s(&pki.ca)]);
    assert_tls_failure(&out, &dst);
    let dst = w.path("dst-client-cert");
    let cli = ["--tls-ca", s(&pki.ca), "--tls-cert", s(&pki.cli_cert)];
    let out = w.recv(
        "recv-cert",
        port2,
        &dst,
        &[&cli[..], &["--tls-key", s(&pki.cli_key)]].concat(),
    );
    assert_complete(&out, &w.src, &dst);
}

// ---------------------------------------------------------------------------------------------
// 4. Donor and receiver in two network namespaces joined by a veth pair
// ---------------------------------------------------------------------------------------------

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(args)
        .env("PATH", child_path())
        .stdin(Stdio::null())
        .output()
        .expect("cannot run ip")
}

fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces and a veth pair; all removed on drop.
struct Netns {
    ns: [String; 2],
    veth: [String; 2],
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.ns {
            let _ = ip(&["netns", "del", n]);
        }
        // Only there if moving it into a namespace failed.
        let _ = ip(&["link", "del", &self.veth[0]]);
    }
}

#[test]
fn clone_between_network_namespaces_over_veth() {
    require_tools(&["ip"], "iproute2");
    let id = std::process::id() % 1_000_000;
    let net = Netns {
        ns: [format!("xbc-{id}-donor"), format!("xbc-{id}-recv")],
        veth: [format!("xbv{id}a"), format!("xbv{id}b")],
    };
    let out = ip(&["netns", "add", &net.ns[0]]);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let l = err.to_lowercase();
        if l.contains("permission") || l.contains("not permitted") {
            panic!(
                "`ip netns add` is not permitted ({}): this test needs root (CAP_SYS_ADMIN and \
                 CAP_NET_ADMIN), as CI runs it",
                err.trim()
            );
        }
        panic!("ip netns add {} failed: {}", net.ns[0], err.trim());
    }
    ip_ok(&["netns", "add", &net.ns[1]]);
    let (a, b) = (&net.veth[0], &net.veth[1]);
    ip_ok(&["link", "add", a, "type", "veth", "peer", "name", b]);
    for (i, addr) in ["10.77.0.1/24", "10.77.0.2/24"].into_iter().enumerate() {
        ip_ok(&["link", "set", &net.veth[i], "netns", &net.ns[i]]);
        ip_ok(&["-n", &net.ns[i], "addr", "add", addr, "dev", &net.veth[i]]);
        ip_ok(&["-n", &net.ns[i], "link", "set", &net.veth[i], "up"]);
        ip_ok(&["-n", &net.ns[i], "link", "set", "lo", "up"]);
    }

    let w = World::new("netns");
    // `xbagent ARGS` in namespace `i`, with the token.
    let in_ns = |i: usize, args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &net.ns[i], XBAGENT]).args(args);
        c.args(["--token-file", s(&w.token)]);
        c
    };
    let serve_args = ["serve", "--listen", "10.77.0.1:3307", "--dir", s(&w.src)];
    let mut serve = Proc::spawn(
        "serve",
        &mut in_ns(0, &serve_args),
        w.path("serve.log"),
        true,
    );
    serve.wait_log("listening on", Duration::from_secs(15));
    let dst = w.path("dst");
    let recv_args = ["receive", "--from", "10.77.0.1:3307", "-C", s(&dst)];
    let mut recv = in_ns(1, &recv_args);
    recv.args(["--retry-for", "20s"]);
    let out = Proc::spawn("receive", &mut recv, w.path("recv.log"), false).wait(MIN);
    assert_complete(&out, &w.src, &dst);
    // The peer the donor saw is the other namespace's address: the clone crossed the veth.
    serve.wait_log("peer=10.77.0.2:", Duration::from_secs(5));
    drop(serve);
    drop(net);
}
