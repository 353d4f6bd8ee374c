//! A receiver that cannot authenticate its donor leaves DIR exactly as it was.
//!
//! `receive` may write into DIR (a marker, a cleared partial clone) only once it has reached a
//! donor that proved it knows the token. A wrong token, an impostor speaking something else,
//! or a donor that never answers must leave no marker, create no DIR, remove nothing and
//! touch no timestamp. Each case compares a full listing of DIR (names, kinds, sizes, modes,
//! mtimes, DIR itself included) before and after.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{free_port, s, XBAGENT};
const PARTIAL: &str = ".xbagent-clone-in-progress";
/// Exit status of `receive` for the peer or the network.
const EXIT_PEER: i32 = 4;

/// One entry of a listing: kind, size, permission bits, mtime in nanoseconds.
#[derive(Debug, PartialEq, Eq)]
struct Meta {
    kind: &'static str,
    len: u64,
    mode: u32,
    mtime_ns: i128,
}

/// Everything under `root`, `root` itself as ".", symlinks not followed. A missing `root`
/// lists as nothing at all.
fn listing(root: &Path) -> BTreeMap<String, Meta> {
    fn meta(p: &Path) -> Meta {
        let m = fs::symlink_metadata(p).expect("stat");
        let kind = if m.is_dir() {
            "dir"
        } else if m.file_type().is_symlink() {
            "symlink"
        } else {
            "file"
        };
        Meta {
            kind,
            len: if m.is_dir() { 0 } else { m.len() },
            mode: m.permissions().mode(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<String, Meta>) {
        for e in fs::read_dir(root.join(rel)).expect("read_dir") {
            let e = e.expect("dir entry");
            let rel = rel.join(e.file_name());
            let m = meta(&root.join(&rel));
            let is_dir = m.kind == "dir";
            out.insert(rel.display().to_string(), m);
            if is_dir {
                walk(root, &rel, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    if fs::symlink_metadata(root).is_err() {
        return out;
    }
    out.insert(".".into(), meta(root));
    walk(root, Path::new(""), &mut out);
    out
}

/// A directory holding a partial clone of ours from an earlier attempt: the marker, a file,
/// a subdirectory. A receiver that gets going would clear all of it.
fn partial_clone(dir: &Path) {
    fs::create_dir_all(dir.join("mysql")).unwrap();
    fs::write(dir.join(PARTIAL), "xbagent clone in progress\n").unwrap();
    fs::write(dir.join("ibdata1"), vec![7u8; 10_000]).unwrap();
    fs::write(dir.join("mysql/user.frm"), b"half of it").unwrap();
}

/// The directories a case runs against: an empty one, a partial clone of ours, a missing one.
fn targets(root: &Path, case: &str) -> Vec<PathBuf> {
    let empty = root.join(format!("{case}-empty"));
    fs::create_dir(&empty).unwrap();
    let partial = root.join(format!("{case}-partial"));
    partial_clone(&partial);
    vec![empty, partial, root.join(format!("{case}-missing"))]
}

/// `serve --dir` with a token file, killed when dropped.
struct Donor {
    child: Child,
    port: u16,
}

impl Donor {
    fn start(root: &Path, token: &Path) -> Donor {
        let src = root.join("src");
        fs::create_dir_all(src.join("db")).unwrap();
        fs::write(src.join("ibdata1"), vec![1u8; 300_000]).unwrap();
        fs::write(src.join("db/t.ibd"), vec![2u8; 50_000]).unwrap();
        let port = free_port();
        let log = root.join("serve.log");
        let child = Command::new(XBAGENT)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--dir", s(&src), "--token-file", s(token)])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot start xbagent serve");
        let mut donor = Donor { child, port };
        let start = Instant::now();
        while !fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("listening on")
        {
            if let Ok(Some(st)) = donor.child.try_wait() {
                panic!(
                    "serve exited with {st}: {}",
                    fs::read_to_string(&log).unwrap()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "serve never listened"
            );
            thread::sleep(Duration::from_millis(50));
        }
        donor
    }
}

impl Drop for Donor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A listener that answers every connection with `reply` and closes it: something else
/// listening where the donor should be.
fn impostor(reply: &'static [u8]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("local addr").port();
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
            let mut hello = [0u8; 256];
            let _ = c.read(&mut hello);
            let _ = c.write_all(reply);
        }
    });
    port
}

/// Run `receive` into `dir` to its end (at most a minute) and return its exit code and log.
fn receive(from: &str, dir: &Path, token: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(XBAGENT)
        .args(["receive", "--from", from, "-C", s(dir)])
        .args(["--token-file", s(token), "--retry-for", "2s"])
        .args(["--stall-timeout", "10s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start xbagent receive");
    let mut err = child.stderr.take().expect("piped stderr");
    let reader = thread::spawn(move || {
        let mut log = String::new();
        let _ = err.read_to_string(&mut log);
        log
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for receive") {
            break st;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("receive did not end within a minute");
        }
        thread::sleep(Duration::from_millis(50));
    };
    (status.code(), reader.join().unwrap_or_default())
}

/// Receive from `from` into every target of `case`; each must fail with exit 4 and leave its
/// directory as it was.
fn assert_untouched(root: &Path, case: &str, from: &str, token: &Path, words: &str) {
    for dir in targets(root, case) {
        let before = listing(&dir);
        // A write a moment from now would have a later mtime, even on a coarse clock.
        thread::sleep(Duration::from_millis(20));
        let (code, log) = receive(from, &dir, token);
        assert_eq!(
            code,
            Some(EXIT_PEER),
            "{case}: receive into {dir:?} should exit {EXIT_PEER}; its log:\n{log}"
        );
        assert!(
            log.to_lowercase().contains(words),
            "{case}: the message should say '{words}':\n{log}"
        );
        assert_eq!(
            listing(&dir),
            before,
            "{case}: receive changed {dir:?}; its log:\n{log}"
        );
    }
}

fn tokens(root: &Path) -> (PathBuf, PathBuf) {
    let good = root.join("token");
    fs::write(&good, "correct horse battery staple\n").unwrap();
    let wrong = root.join("wrong-token");
    fs::write(&wrong, "not the token\n").unwrap();
    (good, wrong)
}

fn tmp(tag: &str) -> tempfile::TempDir {
    crate::support::short_tempdir(&format!("xbr-{tag}"))
}

#[test]
fn a_wrong_token_leaves_the_target_as_it_was() {
    let t = tmp("wrong");
    let (good, wrong) = tokens(t.path());
    let donor = Donor::start(t.path(), &good);
    let from = format!("127.0.0.1:{}", donor.port);
    assert_untouched(t.path(), "wrong-token", &from, &wrong, "authentication");
}

#[test]
fn an_unreachable_donor_leaves_the_target_as_it_was() {
    let t = tmp("unreach");
    let (good, _) = tokens(t.path());
    let from = format!("127.0.0.1:{}", free_port());
    assert_untouched(
        t.path(),
        "unreachable",
        &from,
        &good,
        "cannot reach the donor",
    );
}

#[test]
fn an_impostor_leaves_the_target_as_it_was() {
    let t = tmp("impostor");
    let (good, _) = tokens(t.path());
    for (name, reply) in [
        (
            "http",
            &b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"[..],
        ),
        ("xbstream", &b"XBSTCK01\x00\x00\x00\x00"[..]),
        ("silent-close", &b""[..]),
    ] {
        let from = format!("127.0.0.1:{}", impostor(reply));
        assert_untouched(t.path(), &format!("impostor-{name}"), &from, &good, "");
    }
}
