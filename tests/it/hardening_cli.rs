//! Issue 11 (hardening), the command-line side: token files (§2), signals for the archive
//! commands and `receive` (§4), the empty clone (§5.3) and `receive --insecure` (§5.6).
//!
//! Every test runs the built binary, bounds every wait, and leaves no process behind (`Proc`
//! kills on drop).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::cli::{run_timed, Out};
use crate::support::proc::Proc;
use crate::support::{free_port, s, short_tempdir, write_token, xb};

const EXIT_LOCAL: i32 = 3;
const EXIT_PEER: i32 = 4;

fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// A file holding `text` with `mode`.
fn file_with_mode(path: &Path, text: &str, mode: u32) -> PathBuf {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    path.to_path_buf()
}

/// `serve --dir DIR --token-file TOKEN EXTRA` on a free port: does it start listening? It is
/// stopped again either way.
fn serve_starts(root: &Path, name: &str, token: &Path, extra: &[&str]) -> (bool, String) {
    let listen = local(free_port());
    let mut p = Proc::spawn(
        name,
        xb(&["serve", "--listen", &listen, "--dir", s(root)])
            .args(["--token-file", s(token)])
            .args(extra),
        root.join(format!("{name}.log")),
        true,
    );
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if p.log().contains("listening on") {
            return (true, p.log());
        }
        if !p.running() {
            let out = p.wait(Duration::from_secs(5));
            return (false, out.log);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("serve neither listened nor exited within 15 s: {}", p.log());
}

/// `receive` from a port where nothing listens, retrying for no time: exit 4 once the token
/// was accepted, exit 3 when it was refused.
fn receive_nowhere(root: &Path, token: &Path, extra: &[&str]) -> Out {
    let mut cmd = xb(&[
        "receive",
        "--from",
        &local(free_port()),
        "-C",
        s(&root.join("dst")),
        "--retry-for",
        "0s",
        "--token-file",
        s(token),
    ]);
    cmd.args(extra);
    run_timed(cmd, None, Duration::from_secs(30))
}

// ---------------------------------------------------------------------------------------------
// §2 token files
// ---------------------------------------------------------------------------------------------

#[test]
fn token_new_writes_a_private_file_of_64_hex_digits() {
    let t = short_tempdir("xbh-tnew");
    let mut tokens = Vec::new();
    for name in ["a", "b"] {
        let f = t.path().join(name);
        let out = run_timed(
            {
                let mut c = std::process::Command::new("sh");
                c.args([
                    "-c",
                    &format!(
                        "umask 022; '{}' token new > '{}'",
                        crate::support::XBAGENT,
                        s(&f)
                    ),
                ]);
                c
            },
            None,
            Duration::from_secs(10),
        );
        out.code(0);
        let mode = fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "token new > FILE left mode {mode:o}");
        let text = fs::read_to_string(&f).unwrap();
        let hex = text.strip_suffix('\n').expect("a newline after the token");
        assert_eq!(hex.len(), 64, "not 64 characters: {text:?}");
        assert!(
            hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "not hex: {text:?}"
        );
        tokens.push(f);
    }
    assert_ne!(
        fs::read(&tokens[0]).unwrap(),
        fs::read(&tokens[1]).unwrap(),
        "two runs gave the same token"
    );
    let (started, log) = serve_starts(t.path(), "serve", &tokens[0], &[]);
    assert!(started, "serve refused the token of `token new`: {log}");
}

#[test]
fn a_token_file_readable_by_others_is_refused_unless_allowed() {
    let t = short_tempdir("xbh-tmode");
    let good = write_token(t.path());
    let text = fs::read_to_string(&good).unwrap();
    for mode in [0o644, 0o640, 0o604] {
        let open = file_with_mode(&t.path().join("open"), &text, mode);
        let (started, log) = serve_starts(t.path(), "serve-open", &open, &[]);
        assert!(
            !started,
            "serve accepted a token file of mode {mode:o}: {log}"
        );
        assert!(
            log.contains("readable by group or others") && log.contains("chmod 600"),
            "serve's refusal does not say what is wrong and how to fix it: {log}"
        );
        let out = receive_nowhere(t.path(), &open, &[]);
        out.code(EXIT_LOCAL).says("chmod 600");
    }
    let open = file_with_mode(&t.path().join("open"), &text, 0o644);
    let (started, log) = serve_starts(t.path(), "serve-weak", &open, &["--allow-weak-token"]);
    assert!(started, "--allow-weak-token did not accept mode 644: {log}");
    receive_nowhere(t.path(), &open, &["--allow-weak-token"]).code(EXIT_PEER);
}

/// A Kubernetes Secret volume: `token -> ..data/token`, `..data -> ..2026_12_06...`; the mode
/// that counts is the file's at the end of the links.
#[test]
fn a_secret_volume_is_judged_by_the_file_behind_its_symlinks() {
    let t = short_tempdir("xbh-tk8s");
    let vol = t.path().join("vol");
    let real = vol.join("..2026_12_06_16_00_00.000000001");
    fs::create_dir_all(&real).unwrap();
    let text = fs::read_to_string(write_token(t.path())).unwrap();
    let file = file_with_mode(&real.join("token"), &text, 0o400);
    symlink("..2026_12_06_16_00_00.000000001", vol.join("..data")).unwrap();
    symlink("..data/token", vol.join("token")).unwrap();
    let token = vol.join("token");
    let (started, log) = serve_starts(t.path(), "serve-0400", &token, &[]);
    assert!(
        started,
        "serve refused a 0400 Secret behind symlinks: {log}"
    );
    receive_nowhere(t.path(), &token, &[]).code(EXIT_PEER);

    // The Secret's default mode, 0644, is refused through the same links.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let (started, log) = serve_starts(t.path(), "serve-0644", &token, &[]);
    assert!(!started, "serve accepted a 0644 Secret: {log}");
    assert!(log.contains("defaultMode: 0400"), "{log}");
}

#[test]
fn a_short_token_is_refused_unless_allowed() {
    let t = short_tempdir("xbh-tshort");
    let short = file_with_mode(
        &t.path().join("short"),
        "  correct horse battery staple\n",
        0o600,
    );
    let (started, log) = serve_starts(t.path(), "serve-short", &short, &[]);
    assert!(!started, "serve accepted a 28-byte token: {log}");
    assert!(
        log.contains("at least 32") && log.contains("xbagent token new"),
        "serve's refusal does not say what is wrong and how to fix it: {log}"
    );
    receive_nowhere(t.path(), &short, &[])
        .code(EXIT_LOCAL)
        .says("xbagent token new");

    let (started, log) = serve_starts(t.path(), "serve-weak", &short, &["--allow-weak-token"]);
    assert!(
        started,
        "--allow-weak-token did not accept a short token: {log}"
    );
    receive_nowhere(t.path(), &short, &["--allow-weak-token"]).code(EXIT_PEER);

    // 32 bytes exactly, padded with whitespace, is enough.
    let just = file_with_mode(
        &t.path().join("just"),
        &format!("\n {}\t\n", "k".repeat(32)),
        0o600,
    );
    receive_nowhere(t.path(), &just, &[]).code(EXIT_PEER);
}

#[test]
fn an_endless_token_file_is_refused_at_once() {
    let t = short_tempdir("xbh-tzero");
    for cmd in ["serve", "receive"] {
        let mut c = match cmd {
            "serve" => xb(&[
                "serve",
                "--listen",
                &local(free_port()),
                "--dir",
                s(t.path()),
            ]),
            _ => xb(&[
                "receive",
                "--from",
                &local(free_port()),
                "-C",
                s(&t.path().join("dst")),
            ]),
        };
        c.args(["--token-file", "/dev/zero"]);
        let out = run_timed(c, None, Duration::from_secs(5));
        out.code(EXIT_LOCAL).says("larger than 4096 bytes");
    }
}

// ---------------------------------------------------------------------------------------------
// §4 signals: extract, create, list, verify FILE, receive
// ---------------------------------------------------------------------------------------------

/// What the streams of the signal tests are made of.
#[derive(Clone, Copy, Debug)]
enum Data {
    /// A 64 GiB sparse file: GB/s of zeros, the most compressible stream there is.
    Zeros,
    /// 256 hard links to one 32 MiB file of noise: 8 GiB that do not compress.
    Random,
}

/// A source tree of `data`, under `root/src-...`.
fn signal_src(root: &Path, data: Data) -> PathBuf {
    let src = root.join(format!("src-{data:?}"));
    fs::create_dir_all(&src).unwrap();
    match data {
        Data::Zeros => {
            let f = fs::File::create(src.join("zeros")).unwrap();
            f.set_len(64 << 30).unwrap();
        }
        Data::Random => {
            let first = src.join("noise-000");
            fs::write(&first, crate::support::noise(11, 32 << 20)).unwrap();
            for i in 1..256 {
                fs::hard_link(&first, src.join(format!("noise-{i:03}"))).unwrap();
            }
        }
    }
    src
}

/// `sh -c SCRIPT` as a watched process (its log: the script's stderr and stdout).
fn sh(root: &Path, name: &str, script: &str) -> Proc {
    Proc::spawn(
        name,
        std::process::Command::new("sh").args(["-c", script]),
        root.join(format!("{name}.log")),
        false,
    )
}

/// `create` of `src` into a new FIFO, started; returns the FIFO and the feeder.
fn fifo_of(root: &Path, name: &str, src: &Path) -> (PathBuf, Proc) {
    let fifo = root.join(format!("{name}.fifo"));
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .expect("mkfifo");
    let feeder = sh(
        root,
        &format!("{name}-feeder"),
        &format!(
            "exec '{}' create -C '{}' . > '{}'",
            crate::support::XBAGENT,
            s(src),
            s(&fifo)
        ),
    );
    (fifo, feeder)
}

/// Let `p` work for `after`, send SIGTERM, and require exit 130 with the signal's message
/// within 1.5 s. Returns the seconds from signal to exit.
fn stops_on_sigterm(mut p: Proc, what: &str, after: Duration, message: &str) -> f64 {
    std::thread::sleep(after);
    assert!(
        p.running(),
        "{what}: ended before the signal (the test's data ran out): {}",
        p.log()
    );
    p.signal(rustix::process::Signal::TERM);
    let out = p.wait(Duration::from_secs(10));
    eprintln!(
        "[signal] {what}: exit {:?} {:.3} s after SIGTERM",
        out.code,
        out.elapsed.as_secs_f64()
    );
    assert_eq!(
        out.code,
        Some(130),
        "{what}: SIGTERM did not give exit 130: {:?}\n{}",
        out.status,
        out.log
    );
    assert!(
        out.elapsed < Duration::from_millis(1500),
        "{what}: took {:?} to stop after SIGTERM\n{}",
        out.elapsed,
        out.log
    );
    assert!(
        out.log.contains("stopped by SIGTERM") && out.log.contains(message),
        "{what}: no signal message ({message:?}):\n{}",
        out.log
    );
    out.elapsed.as_secs_f64()
}

#[test]
fn extract_list_and_verify_stop_within_a_second_of_sigterm() {
    let t = short_tempdir("xbh-sigx");
    for data in [Data::Zeros, Data::Random] {
        let src = signal_src(t.path(), data);
        for cmd in ["extract", "list", "verify"] {
            let name = format!("{cmd}-{data:?}");
            let (fifo, _feeder) = fifo_of(t.path(), &name, &src);
            let dst = t.path().join(format!("dst-{name}"));
            let mut c = match cmd {
                "extract" => xb(&["extract", "-C", s(&dst)]),
                _ => xb(&[cmd]),
            };
            c.arg(s(&fifo));
            let p = Proc::spawn(&name, &mut c, t.path().join(format!("{name}.log")), false);
            let left = match cmd {
                "extract" => "keeps what was extracted so far",
                "list" => "nothing was listed",
                _ => "not verified",
            };
            stops_on_sigterm(p, &name, Duration::from_millis(500), left);
            if cmd == "extract" {
                let _ = fs::remove_dir_all(&dst);
            }
        }
    }
}

/// A silent input: the reader waits inside one read; the signal still ends it.
#[test]
fn extract_waiting_on_a_silent_fifo_stops_within_a_second_of_sigterm() {
    let t = short_tempdir("xbh-sigq");
    let fifo = t.path().join("silent.fifo");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .expect("mkfifo");
    let _holder = sh(
        t.path(),
        "holder",
        &format!("exec sleep 30 > '{}'", s(&fifo)),
    );
    let p = Proc::spawn(
        "extract",
        &mut xb(&["extract", "-C", s(&t.path().join("dst")), s(&fifo)]),
        t.path().join("extract.log"),
        false,
    );
    stops_on_sigterm(
        p,
        "extract (silent)",
        Duration::from_millis(500),
        "extracted",
    );
}

/// A child killed (and reaped) on drop, also when the test fails.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn create_stops_within_a_second_of_sigterm() {
    let t = short_tempdir("xbh-sigc");
    for data in [Data::Zeros, Data::Random] {
        let src = signal_src(t.path(), data);
        // Into /dev/null (as fast as it reads), and into a pipe nobody reads (blocked in a
        // write).
        for how in ["devnull", "blocked"] {
            let name = format!("create-{data:?}-{how}");
            let log = t.path().join(format!("{name}.log"));
            let stdout = match how {
                "devnull" => std::process::Stdio::null(),
                _ => std::process::Stdio::piped(),
            };
            let mut child = Reaped(
                xb(&["create", "-C", s(&src), "."])
                    .stdin(std::process::Stdio::null())
                    .stdout(stdout)
                    .stderr(fs::File::create(&log).unwrap())
                    .spawn()
                    .expect("cannot start create"),
            );
            std::thread::sleep(Duration::from_millis(500));
            assert!(
                matches!(child.0.try_wait(), Ok(None)),
                "{name}: ended before the signal"
            );
            let pid = rustix::process::Pid::from_child(&child.0);
            let started = std::time::Instant::now();
            rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("kill");
            let status = loop {
                if let Some(st) = child.0.try_wait().expect("wait") {
                    break st;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "{name}: still running 10 s after SIGTERM"
                );
                std::thread::sleep(Duration::from_millis(10));
            };
            let elapsed = started.elapsed();
            eprintln!(
                "[signal] {name}: exit {:?} {:.3} s after SIGTERM",
                status.code(),
                elapsed.as_secs_f64()
            );
            let said = fs::read_to_string(&log).unwrap();
            assert_eq!(status.code(), Some(130), "{name}: {status:?}: {said}");
            assert!(
                elapsed < Duration::from_millis(1500),
                "{name}: took {elapsed:?}"
            );
            assert!(
                said.contains("stopped by SIGTERM") && said.contains("incomplete"),
                "{name}: no signal message: {said}"
            );
        }
    }
}

/// `serve --exec SCRIPT` with `token` on a free port, listening.
fn donor(root: &Path, name: &str, token: &Path, script: &str, extra: &[&str]) -> (Proc, String) {
    let from = local(free_port());
    let mut p = Proc::spawn(
        name,
        xb(&["serve", "--listen", &from, "--exec", script])
            .args(["--token-file", s(token)])
            .args(extra),
        root.join(format!("{name}.log")),
        true,
    );
    p.wait_log("listening on", Duration::from_secs(15));
    (p, from)
}

#[test]
fn receive_stops_within_a_second_of_sigterm() {
    let t = short_tempdir("xbh-sigr");
    let token = write_token(t.path());
    let mut cases: Vec<(String, String)> = Vec::new();
    for data in [Data::Zeros, Data::Random] {
        let src = signal_src(t.path(), data);
        cases.push((
            format!("{data:?}"),
            format!(
                "exec '{}' create -C '{}' .",
                crate::support::XBAGENT,
                s(&src)
            ),
        ));
    }
    // A donor whose backup command is silent: receive waits inside a socket read.
    cases.push(("silent".into(), "exec sleep 30".into()));
    for (what, script) in cases {
        let (_serve, from) = donor(t.path(), &format!("serve-{what}"), &token, &script, &[]);
        let dst = t.path().join(format!("dst-{what}"));
        let name = format!("receive-{what}");
        let mut p = Proc::spawn(
            &name,
            xb(&["receive", "--from", &from, "-C", s(&dst)]).args(["--token-file", s(&token)]),
            t.path().join(format!("{name}.log")),
            false,
        );
        p.wait_log("clone started", Duration::from_secs(15));
        stops_on_sigterm(
            p,
            &name,
            Duration::from_millis(500),
            "no completion marker was written",
        );
        assert!(
            dst.join(".xbagent-clone-in-progress").exists(),
            "{name}: the in-progress marker is gone"
        );
        assert!(
            !dst.join(".xbagent-clone-complete").exists(),
            "{name}: a stopped clone is marked complete"
        );
        let _ = fs::remove_dir_all(&dst);
    }
}

// ---------------------------------------------------------------------------------------------
// §5.3 empty clone, §5.6 receive --insecure
// ---------------------------------------------------------------------------------------------

#[test]
fn an_empty_clone_fails_unless_allowed() {
    let t = short_tempdir("xbh-empty");
    let token = write_token(t.path());
    let (mut serve, from) = donor(t.path(), "serve", &token, "true", &[]);
    let recv = |dst: &Path, extra: &[&str]| {
        let mut c = xb(&["receive", "--from", &from, "-C", s(dst)]);
        c.args(["--token-file", s(&token)]).args(extra);
        run_timed(c, None, Duration::from_secs(60))
    };
    let dst = t.path().join("dst");
    recv(&dst, &[])
        .code(1)
        .says("holds no files")
        .says("--allow-empty");
    assert!(
        !dst.join(".xbagent-clone-complete").exists(),
        "an empty clone was marked complete"
    );
    // The donor logs it as a failure too.
    serve.wait_log(
        "clone failed: the source wrote no files",
        Duration::from_secs(10),
    );
    // Run again (an initContainer restarts): still a failure, never "already complete".
    recv(&dst, &[]).code(1).says("holds no files");

    let ok = t.path().join("dst-allowed");
    recv(&ok, &["--allow-empty"])
        .code(0)
        .says("clone complete: 0 files");
    assert!(ok.join(".xbagent-clone-complete").exists());
}

#[test]
fn receive_insecure_warns() {
    let t = short_tempdir("xbh-insec");
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let from = local(free_port());
    let mut serve = Proc::spawn(
        "serve",
        &mut xb(&["serve", "--listen", &from, "--dir", s(&src), "--insecure"]),
        t.path().join("serve.log"),
        true,
    );
    serve.wait_log("listening on", Duration::from_secs(15));
    let dst = t.path().join("dst");
    let out = run_timed(
        xb(&["receive", "--from", &from, "-C", s(&dst), "--insecure"]),
        None,
        Duration::from_secs(60),
    );
    out.code(0)
        .says("WITHOUT authentication (--insecure)")
        .says("clone complete");
}
