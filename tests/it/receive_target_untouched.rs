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
use std::thread;
use std::time::Duration;

use crate::support::cli::{run_timed, Out};
use crate::support::proc::Proc;
use crate::support::{free_port, s, write_token, xb};
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

/// `serve --dir` with a token file on a free port, killed when dropped.
fn donor(root: &Path, token: &Path) -> (Proc, u16) {
    let src = root.join("src");
    fs::create_dir_all(src.join("db")).unwrap();
    fs::write(src.join("ibdata1"), vec![1u8; 300_000]).unwrap();
    fs::write(src.join("db/t.ibd"), vec![2u8; 50_000]).unwrap();
    let port = free_port();
    let mut serve = Proc::spawn(
        "serve",
        xb(&["serve", "--listen", &format!("127.0.0.1:{port}")]).args([
            "--dir",
            s(&src),
            "--token-file",
            s(token),
        ]),
        root.join("serve.log"),
        true,
    );
    serve.wait_log("listening on", Duration::from_secs(20));
    (serve, port)
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

/// Run `receive` into `dir` to its end (at most a minute).
fn receive(from: &str, dir: &Path, token: &Path) -> Out {
    let mut cmd = xb(&["receive", "--from", from, "-C", s(dir)]);
    cmd.args([
        "--token-file",
        s(token),
        "--retry-for",
        "2s",
        "--stall-timeout",
        "10s",
    ]);
    run_timed(cmd, None, Duration::from_secs(60))
}

/// Receive from `from` into every target of `case`; each must fail with exit 4 and leave its
/// directory as it was.
fn assert_untouched(root: &Path, case: &str, from: &str, token: &Path, words: &str) {
    for dir in targets(root, case) {
        let before = listing(&dir);
        // A write a moment from now would have a later mtime, even on a coarse clock.
        thread::sleep(Duration::from_millis(20));
        let out = receive(from, &dir, token);
        out.code(EXIT_PEER).says(words);
        assert_eq!(
            listing(&dir),
            before,
            "{case}: receive changed {dir:?}: {}",
            out.describe()
        );
    }
}

fn tokens(root: &Path) -> (PathBuf, PathBuf) {
    let good = write_token(root);
    let other = root.join("other");
    fs::create_dir(&other).unwrap();
    (good, write_token(&other))
}

fn tmp(tag: &str) -> tempfile::TempDir {
    crate::support::short_tempdir(&format!("xbr-{tag}"))
}

#[test]
fn a_wrong_token_leaves_the_target_as_it_was() {
    let t = tmp("wrong");
    let (good, wrong) = tokens(t.path());
    let (_donor, port) = donor(t.path(), &good);
    let from = format!("127.0.0.1:{port}");
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
