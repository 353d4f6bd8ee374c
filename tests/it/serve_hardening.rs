//! Issue 11, §1, §2 and §4: `serve` under connection floods and hostile handshakes, addresses
//! that keep failing, what a recorded handshake gives an attacker, and SIGTERM in mid-clone. Real `serve` and `receive` processes on loopback.
//!
//! The attacker connects from 127.0.0.2 (any 127/8 address is the loopback), the genuine
//! receiver from 127.0.0.1, as an attacker's pod and a new replica would in a cluster.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use xbagent::clone::protocol::{self, DonorPake, FrameType, ReceiverPake, Token};
use xbagent::clone::transport::read_frame;

use crate::support::proc::{Outcome, Proc};
use crate::support::trees::{tree_skipping, Tree};
use crate::support::{free_port, noise, short_tempdir, write_token_text, xb};

const COMPLETE: &str = ".xbagent-clone-complete";
const PARTIAL: &str = ".xbagent-clone-in-progress";
const FLOOD: usize = 10_000;
const ATTACKER: &str = "127.0.0.2";

const TOKEN: &str = "5f2c8e1a9b7d4c3e6a0f1b2d3c4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a";

/// A source tree of a few files, some of them a few MiB.
fn make_src(root: &Path) -> PathBuf {
    let src = root.join("src");
    fs::create_dir_all(src.join("db")).unwrap();
    fs::write(src.join("ibdata1"), noise(1, 3 << 20)).unwrap();
    fs::write(src.join("db/t.ibd"), noise(2, 1 << 20)).unwrap();
    fs::write(src.join("db/t.frm"), b"frm").unwrap();
    src
}

fn tree(root: &Path) -> Tree {
    tree_skipping(root, &[COMPLETE, PARTIAL])
}

fn start_serve(dir: &Path, port: u16, src: &Path, token: &Path, extra: &[&str]) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "serve",
        "--listen",
        &listen,
        "--dir",
        src.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut p = Proc::spawn("serve", &mut xb(&args), dir.join("serve.log"), true);
    p.wait_log("listening on", Duration::from_secs(15));
    p
}

fn receive(
    dir: &Path,
    name: &str,
    from: &str,
    dst: &Path,
    token: &Path,
    limit: Duration,
) -> Outcome {
    let args = [
        "receive",
        "--from",
        from,
        "-C",
        dst.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
        "--retry-for",
        "60s",
    ];
    Proc::spawn(name, &mut xb(&args), dir.join(format!("{name}.log")), false).wait_shown(limit)
}

/// `Threads` and `VmRSS` (KiB) of a process, from /proc.
fn threads_and_rss(pid: i32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("Threads:"), field("VmRSS:"))
}

/// Room for the flood's sockets in this process.
fn raise_open_files(need: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    let max = l.maximum.unwrap_or(u64::MAX);
    assert!(
        max >= need,
        "the flood test needs {need} open files; the hard limit is {max} (raise it with ulimit -Hn)"
    );
    if l.current.unwrap_or(u64::MAX) < need {
        l.current = Some(need);
        setrlimit(Resource::Nofile, l).expect("cannot raise the open-files limit");
    }
}

/// The attacker: `FLOOD` connections from 127.0.0.2, half idle, half dripping a HELLO a byte a
/// second; and, while `go` holds, new ones opened without pause, so that the places the donor
/// gives one address are always taken.
struct Flood {
    rt: tokio::runtime::Runtime,
    go: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
}

impl Flood {
    fn start(port: u16) -> Flood {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let go = Arc::new(AtomicBool::new(true));
        let opened = Arc::new(AtomicU64::new(0));
        let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let t0 = Instant::now();
        let socks = rt.block_on(async {
            let mut socks = Vec::with_capacity(FLOOD);
            for batch in 0..FLOOD / 500 {
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..500 {
                    set.spawn(attacker_conn(target));
                }
                while let Some(r) = set.join_next().await {
                    match r.unwrap() {
                        Ok(s) => socks.push(s),
                        Err(e) => panic!("flood connection failed in batch {batch}: {e}"),
                    }
                }
            }
            socks
        });
        opened.fetch_add(socks.len() as u64, Ordering::SeqCst);
        eprintln!(
            "[flood] {} connections open after {:.1?}",
            socks.len(),
            t0.elapsed()
        );
        // Half idle (kept open, never written), half slow.
        let mut slow = Vec::new();
        let mut idle = Vec::new();
        for (i, s) in socks.into_iter().enumerate() {
            if i % 2 == 0 {
                idle.push(s)
            } else {
                slow.push(s)
            }
        }
        let go2 = go.clone();
        rt.spawn(async move {
            let _idle = idle;
            let hello = protocol::hello(ReceiverPake::start(None).hello());
            let mut frame = protocol::frame_header(FrameType::Hello, hello.len()).to_vec();
            frame.extend_from_slice(&hello);
            let mut at = 0;
            while go2.load(Ordering::SeqCst) {
                for s in slow.iter_mut() {
                    use tokio::io::AsyncWriteExt;
                    let _ = tokio::time::timeout(
                        Duration::from_millis(1),
                        s.write_all(&frame[at % frame.len()..at % frame.len() + 1]),
                    )
                    .await;
                }
                at += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        rt.spawn(churn(
            ATTACKER.into(),
            target,
            200,
            Duration::from_millis(2),
            go.clone(),
            opened.clone(),
        ));
        Flood { rt, go, opened }
    }

    fn stop(self) -> u64 {
        self.go.store(false, Ordering::SeqCst);
        self.rt.shutdown_timeout(Duration::from_secs(5));
        self.opened.load(Ordering::SeqCst)
    }
}

/// While `go` holds, open connections from `from` one after another (a `pause` apart), keeping
/// the newest `keep` open: whatever places the donor gives that address stay taken.
async fn churn(
    from: String,
    target: SocketAddr,
    keep: usize,
    pause: Duration,
    go: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
) {
    let mut held = std::collections::VecDeque::new();
    while go.load(Ordering::SeqCst) {
        if let Ok(s) = conn_from(&from, target).await {
            opened.fetch_add(1, Ordering::SeqCst);
            held.push_back(s);
            if held.len() > keep {
                held.pop_front();
            }
        }
        tokio::time::sleep(pause).await;
    }
}

async fn attacker_conn(target: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    conn_from(ATTACKER, target).await
}

async fn conn_from(from: &str, target: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(format!("{from}:0").parse().unwrap())?;
    tokio::time::timeout(Duration::from_secs(20), s.connect(target))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

#[test]
fn a_flood_of_idle_and_slow_connections_neither_stops_nor_starves_serve() {
    raise_open_files(FLOOD as u64 + 2_000);
    let w = short_tempdir("flood");
    let src = make_src(w.path());
    let token = write_token_text(w.path(), "token", TOKEN);
    let port = free_port();
    let mut serve = start_serve(w.path(), port, &src, &token, &["--handshake-timeout", "3s"]);
    let (threads0, rss0) = threads_and_rss(serve.pid());

    let flood = Flood::start(port);
    // The donor under the flood: few threads, little memory, still listening.
    thread::sleep(Duration::from_secs(1));
    let (threads, rss) = threads_and_rss(serve.pid());
    eprintln!(
        "[flood] serve before: {threads0} threads, {rss0} KiB; with {FLOOD} connections opened: {threads} threads, {rss} KiB"
    );
    assert!(threads <= 8, "serve runs {threads} threads under the flood");
    assert!(rss < 64 * 1024, "serve holds {rss} KiB under the flood");

    let dst = w.path().join("during");
    let from = format!("127.0.0.1:{port}");
    let out = receive(
        w.path(),
        "during",
        &from,
        &dst,
        &token,
        Duration::from_secs(90),
    );
    let (threads_busy, _) = threads_and_rss(serve.pid());
    let opened = flood.stop();
    assert_eq!(
        out.code,
        Some(0),
        "receive under the flood failed:\n{}",
        out.log
    );
    assert!(dst.join(COMPLETE).exists());
    assert_eq!(tree(&src), tree(&dst), "the clone differs from the source");
    eprintln!("[flood] {opened} attacker connections in all; serve ran {threads_busy} threads after the clone");

    // Once the flood stops, clones go on as before (the old donor stayed locked out).
    let dst2 = w.path().join("after");
    let out = receive(
        w.path(),
        "after",
        &from,
        &dst2,
        &token,
        Duration::from_secs(60),
    );
    assert_eq!(
        out.code,
        Some(0),
        "receive after the flood failed:\n{}",
        out.log
    );
    assert_eq!(tree(&src), tree(&dst2));
    assert!(
        serve.running(),
        "serve exited under the flood:\n{}",
        serve.log()
    );

    // Refusals were logged, but rate-limited: a handful of lines for thousands of refusals.
    let log = serve.log();
    let refused = log.matches("refused a connection").count();
    assert!(refused >= 1, "no refusal was logged:\n{log}");
    assert!(
        refused <= 20,
        "{refused} refusal lines for one flood: the log is not rate-limited"
    );
    assert!(!log.contains("panicked"), "serve panicked:\n{log}");
}

#[test]
fn repeated_wrong_tokens_from_one_address_are_slowed_down() {
    let w = short_tempdir("slowdn");
    let src = make_src(w.path());
    let token = write_token_text(w.path(), "token", TOKEN);
    let wrong = write_token_text(w.path(), "wrong", &TOKEN.replace('5', "6"));
    let port = free_port();
    let mut serve = start_serve(w.path(), port, &src, &token, &[]);
    let from = format!("127.0.0.1:{port}");
    let mut took = Vec::new();
    for i in 0..9 {
        let dst = w.path().join(format!("d{i}"));
        let out = receive(
            w.path(),
            &format!("wrong{i}"),
            &from,
            &dst,
            &wrong,
            Duration::from_secs(30),
        );
        assert_eq!(
            out.code,
            Some(4),
            "a wrong token must fail (exit 4):\n{}",
            out.log
        );
        assert!(out.log.contains("authentication failed"), "{}", out.log);
        took.push(out.elapsed);
    }
    eprintln!("[slowdown] wrong-token attempts took {took:?}");
    assert!(
        took[..3].iter().all(|t| *t < Duration::from_secs(1)),
        "the first failures must not be slowed: {took:?}"
    );
    assert!(
        took[8] >= Duration::from_millis(1500),
        "the ninth failure in a row must wait: {took:?}"
    );
    // The right token from the same address still gets through (after its wait).
    let dst = w.path().join("good");
    let out = receive(
        w.path(),
        "good",
        &from,
        &dst,
        &token,
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(0), "{}", out.log);
    assert!(serve.running());
    let log = serve.log();
    assert!(
        log.matches("peer refused: receiver refuses").count() >= 9,
        "every wrong guess ends at the receiver, which tells the donor:\n{log}"
    );
}

/// What went up (receiver → donor) and down, as recorded.
type Recorded = (Vec<u8>, Vec<u8>);

/// A relay that records both directions of one connection.
fn recording_relay(target: u16) -> (u16, thread::JoinHandle<Recorded>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = thread::spawn(move || {
        let (client, _) = l.accept().unwrap();
        let upstream = TcpStream::connect(("127.0.0.1", target)).unwrap();
        let pipe = |mut from: TcpStream, mut to: TcpStream, rec: Arc<Mutex<Vec<u8>>>| {
            thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    let n = match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    {
                        let mut r = rec.lock().unwrap();
                        if r.len() < 4096 {
                            r.extend_from_slice(&buf[..n.min(4096)]);
                        }
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(Shutdown::Write);
            })
        };
        let (up, down) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(Mutex::new(Vec::new())),
        );
        let a = pipe(
            client.try_clone().unwrap(),
            upstream.try_clone().unwrap(),
            up.clone(),
        );
        let b = pipe(upstream, client, down.clone());
        a.join().unwrap();
        b.join().unwrap();
        let up = up.lock().unwrap().clone();
        let down = down.lock().unwrap().clone();
        (up, down)
    });
    (port, h)
}

#[test]
fn a_recorded_handshake_gives_nothing_to_test_guesses_against() {
    let w = short_tempdir("record");
    let src = make_src(w.path());
    // A weak, dictionary-like token: the kind that fell in 0.34 s to protocol version 1.
    let weak = "hunter2hunter2";
    let token = write_token_text(w.path(), "token", weak);
    let port = free_port();
    let _serve = start_serve(w.path(), port, &src, &token, &["--allow-weak-token"]);
    let (rport, relay) = recording_relay(port);
    let dst = w.path().join("dst");
    let args = [
        "receive",
        "--from",
        &format!("127.0.0.1:{rport}"),
        "-C",
        dst.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
        "--allow-weak-token",
    ];
    let out = Proc::spawn("recv", &mut xb(&args), w.path().join("recv.log"), false)
        .wait(Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{}", out.log);
    let (up, down) = relay.join().unwrap();

    // What an eavesdropper recorded: HELLO and PROOF one way, CHALLENGE the other.
    let mut r = &up[..];
    let mut buf = Vec::new();
    assert_eq!(
        read_frame(&mut r, &mut buf, protocol::MAX_FRAME).unwrap(),
        FrameType::Hello
    );
    let hello = protocol::parse_hello(&buf).unwrap();
    assert_eq!(
        read_frame(&mut r, &mut buf, protocol::MAX_FRAME).unwrap(),
        FrameType::Proof
    );
    let proof = buf.clone();
    let mut r = &down[..];
    assert_eq!(
        read_frame(&mut r, &mut buf, protocol::MAX_FRAME).unwrap(),
        FrameType::Challenge
    );
    let challenge = protocol::parse_challenge(&buf).unwrap();

    // Every offline check on a candidate: as a receiver finishing the recorded CHALLENGE, and
    // as a donor answering the recorded HELLO (its confirmation, or the recorded PROOF). The
    // real token is among the candidates, and it confirms nothing either.
    let dictionary = ["password", "letmein", "hunter2", weak, "hunter2hunter3"];
    for guess in dictionary {
        let t = Token::new(guess.as_bytes());
        assert!(
            ReceiverPake::start(Some(&t)).finish(&challenge).is_err(),
            "the recorded CHALLENGE confirmed the guess {guess:?}"
        );
        let d = DonorPake::answer(Some(&t), &hello).unwrap();
        assert_ne!(d.challenge.confirm, challenge.confirm, "{guess:?}");
        assert!(
            !d.accepts(&proof),
            "the recorded PROOF confirmed the guess {guess:?}"
        );
    }
    // No token bytes on the wire either.
    for rec in [&up, &down] {
        assert!(!rec.windows(weak.len()).any(|w| w == weak.as_bytes()));
    }
}

/// Read what the donor says before it closes: its ERROR text, if any.
fn donor_says(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = Vec::new();
    match read_frame(s, &mut buf, protocol::MAX_FRAME) {
        Ok(FrameType::Error) => String::from_utf8_lossy(&buf).into_owned(),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("closed: {e}"),
    }
}

#[test]
fn oversized_and_dripping_handshakes_cost_little_and_end_on_time() {
    let w = short_tempdir("hostile");
    let src = make_src(w.path());
    let token = write_token_text(w.path(), "token", TOKEN);
    let port = free_port();
    let mut serve = start_serve(
        w.path(),
        port,
        &src,
        &token,
        &[
            "--handshake-timeout",
            "2s",
            "--max-handshakes-per-address",
            "64",
        ],
    );
    let (_, rss0) = threads_and_rss(serve.pid());
    // 50 connections announce a 4 MiB HELLO (the real one is 44 bytes) and send 1 MiB of it.
    let junk = vec![0x41u8; 1 << 20];
    let mut conns: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(&protocol::frame_header(FrameType::Hello, 4 << 20))
                .unwrap();
            // The donor may close before all of it is written.
            let _ = s.write_all(&junk);
            s
        })
        .collect();
    let (_, rss) = threads_and_rss(serve.pid());
    eprintln!("[hostile] serve RSS {rss0} KiB before, {rss} KiB with 50 oversized HELLOs");
    assert!(
        rss < rss0 + 16 * 1024,
        "serve grew from {rss0} to {rss} KiB"
    );
    for s in conns.iter_mut() {
        let said = donor_says(s);
        assert!(said.contains("above the limit of 44"), "{said}");
    }
    // A HELLO dripped a byte at a time is cut at the total deadline, not kept per read.
    let mut drip = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let start = Instant::now();
    let dripper = {
        let mut d = drip.try_clone().unwrap();
        thread::spawn(move || {
            for b in protocol::frame_header(FrameType::Hello, protocol::HELLO_LEN) {
                if d.write_all(&[b]).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(700));
            }
        })
    };
    let said = donor_says(&mut drip);
    let took = start.elapsed();
    dripper.join().unwrap();
    assert!(said.contains("not done within 2s"), "{said}");
    assert!(
        took < Duration::from_millis(3500),
        "a dripping peer held its handshake for {took:?} (deadline 2s)"
    );
    // And one dripping peer does not hold up a SIGTERM.
    let mut held = TcpStream::connect(("127.0.0.1", port)).unwrap();
    held.write_all(&[0x01]).unwrap();
    thread::sleep(Duration::from_millis(200));
    serve.signal(rustix::process::Signal::TERM);
    let out = serve.wait(Duration::from_secs(10));
    assert_eq!(out.code, Some(130), "{}", out.log);
    assert!(
        out.elapsed < Duration::from_secs(1),
        "serve took {:?} to stop with a handshake open",
        out.elapsed
    );
    assert!(!out.log.contains("panicked"), "{}", out.log);
}

/// A receiver that authenticates and then reads nothing: the donor's writes block.
fn authenticate_and_sit(port: u16, token: &str) -> TcpStream {
    use xbagent::clone::transport::write_frame;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let pake = ReceiverPake::start(Some(&Token::new(token.as_bytes())));
    write_frame(&mut s, FrameType::Hello, &protocol::hello(pake.hello())).unwrap();
    let mut buf = Vec::new();
    assert_eq!(
        read_frame(&mut s, &mut buf, protocol::MAX_FRAME).unwrap(),
        FrameType::Challenge
    );
    let c = protocol::parse_challenge(&buf).unwrap();
    let proof = pake.finish(&c).expect("the donor's confirmation");
    write_frame(&mut s, FrameType::Proof, &proof).unwrap();
    assert_eq!(
        read_frame(&mut s, &mut buf, protocol::MAX_FRAME).unwrap(),
        FrameType::Start
    );
    s
}

/// SIGTERM 0.5 s into a clone of `src`: serve exits 130 within 1 s, with its message, and the
/// source is gone with it. Once with a real receiver, once with one that reads nothing.
fn sigterm_mid_clone(tag: &str, src: &Path) {
    let w = short_tempdir(tag);
    let token = write_token_text(w.path(), "token", TOKEN);
    for sitting in [false, true] {
        let port = free_port();
        let mut serve = start_serve(w.path(), port, src, &token, &[]);
        let dst = w.path().join(format!("dst-{sitting}"));
        let mut recv = None;
        let mut sit = None;
        if sitting {
            sit = Some(authenticate_and_sit(port, TOKEN));
        } else {
            let args = [
                "receive",
                "--from",
                &format!("127.0.0.1:{port}"),
                "-C",
                dst.to_str().unwrap(),
                "--token-file",
                token.to_str().unwrap(),
            ];
            let log = w.path().join(format!("recv-{sitting}.log"));
            let mut r = Proc::spawn("recv", &mut xb(&args), log, false);
            r.wait_log("clone started", Duration::from_secs(15));
            recv = Some(r);
        }
        thread::sleep(Duration::from_millis(500));
        serve.signal(rustix::process::Signal::TERM);
        let out = serve.wait(Duration::from_secs(15));
        eprintln!(
            "[{tag}] receiver sitting: {sitting}; serve stopped {:?} after SIGTERM",
            out.elapsed
        );
        assert_eq!(out.code, Some(130), "{}", out.log);
        assert!(out.log.contains("stopped by a signal"), "{}", out.log);
        assert!(
            out.elapsed < Duration::from_secs(1),
            "serve took {:?} to stop (receiver sitting: {sitting})",
            out.elapsed
        );
        if let Some(mut r) = recv {
            let r = r.wait(Duration::from_secs(30));
            if out.log.contains("clone sent") {
                // It was over before the signal: nothing to abort.
                assert_eq!(r.code, Some(0), "{}", r.log);
            } else {
                assert_eq!(r.code, Some(4), "{}", r.log);
                assert!(r.log.contains("shutting down"), "{}", r.log);
                assert!(!dst.join(COMPLETE).exists());
            }
        }
        drop(sit);
    }
}

#[test]
fn sigterm_stops_serve_within_a_second_mid_clone_of_zeros() {
    let w = short_tempdir("zsrc");
    let src = w.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // 8 GiB of zeros, sparse on disk: far more than a clone gets through in 0.5 s.
    let f = fs::File::create(src.join("ibdata1")).unwrap();
    f.set_len(8 << 30).unwrap();
    sigterm_mid_clone("sigz", &src);
}

#[test]
fn sigterm_stops_serve_within_a_second_mid_clone_of_random_data() {
    let w = short_tempdir("rsrc");
    let src = w.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..8 {
        fs::write(src.join(format!("t{i}.ibd")), noise(i + 10, 64 << 20)).unwrap();
    }
    sigterm_mid_clone("sigr", &src);
}

#[test]
fn many_attacking_addresses_cannot_keep_a_receiver_out() {
    // 20 addresses, each keeping its 8 places filled with idle connections: 160 for the 64
    // places. Without eviction, a receiver would wait for a place to expire (30 s here).
    let w = short_tempdir("manyaddr");
    let src = make_src(w.path());
    let token = write_token_text(w.path(), "token", TOKEN);
    let port = free_port();
    let mut serve = start_serve(
        w.path(),
        port,
        &src,
        &token,
        &["--handshake-timeout", "30s"],
    );
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let go = Arc::new(AtomicBool::new(true));
    let opened = Arc::new(AtomicU64::new(0));
    for a in 0..20u8 {
        let from = format!("127.0.0.{}", 10 + a);
        rt.spawn(churn(
            from,
            target,
            16,
            Duration::from_millis(20),
            go.clone(),
            opened.clone(),
        ));
    }
    thread::sleep(Duration::from_secs(2));
    let dst = w.path().join("dst");
    let from = format!("127.0.0.1:{port}");
    let out = receive(
        w.path(),
        "recv",
        &from,
        &dst,
        &token,
        Duration::from_secs(90),
    );
    go.store(false, Ordering::SeqCst);
    rt.shutdown_timeout(Duration::from_secs(5));
    eprintln!(
        "[many] {} attacker connections from 20 addresses; the receive took {:?}",
        opened.load(Ordering::SeqCst),
        out.elapsed
    );
    assert_eq!(out.code, Some(0), "{}", out.log);
    assert_eq!(tree(&src), tree(&dst));
    assert!(
        out.elapsed < Duration::from_secs(10),
        "the receiver waited {:?} for a place",
        out.elapsed
    );
    assert!(serve.running());
    assert!(
        serve.log().contains("closed to make room"),
        "no handshake was evicted"
    );
}
