//! What the integration tests share: the built binary, tools, temp dirs, free ports, trees,
//! running processes, the MariaDB fixture, the S3 test server, a stream builder.
//!
//! Test helpers only. Nothing here may hide a failure: a missing tool fails the test (it never
//! skips); only a missing S3 server outside CI is a loud skip (see `s3env`).

#![allow(dead_code)]

pub mod backends;
pub mod cli;
pub mod mariadb;
pub mod proc;
pub mod s3_fault_proxy;
pub mod s3env;
pub mod stream;
pub mod trees;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

/// The binary under test.
pub const XBAGENT: &str = env!("CARGO_BIN_EXE_xbagent");

/// A path as `&str` (test paths are made by the tests, always UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// `xbagent ARGS`, not yet run.
pub fn xb(args: &[&str]) -> Command {
    let mut c = Command::new(XBAGENT);
    c.args(args);
    c
}

/// PATH for child processes: the test's PATH plus the sbin directories (mariadbd, ip).
pub fn child_path() -> String {
    let cur = std::env::var("PATH").unwrap_or_default();
    format!("{cur}:/usr/local/sbin:/usr/sbin:/sbin")
}

/// Fail (never skip) when a tool is missing; `hint` names what to install.
pub fn require_tools(tools: &[&str], hint: &str) {
    let path = child_path();
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !std::env::split_paths(&path).any(|d| d.join(t).is_file()))
        .collect();
    assert!(
        missing.is_empty(),
        "required tool(s) not found in PATH: {} — install {hint} (scripts/test does); this test never skips",
        missing.join(", ")
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot find a free TCP port")
        .port()
}

/// A short temp dir under /tmp (unix socket paths are limited to ~107 bytes), named
/// `PREFIX-...`. Set `XBAGENT_TEST_KEEP=1` to keep it (logs, streams, datadirs) for a
/// post-mortem.
pub fn short_tempdir(prefix: &str) -> tempfile::TempDir {
    let keep = std::env::var_os("XBAGENT_TEST_KEEP").is_some_and(|v| v != "0");
    let dir = tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .disable_cleanup(keep)
        .tempdir_in("/tmp")
        .expect("cannot create a temp dir in /tmp");
    if keep {
        eprintln!("keeping {}", dir.path().display());
    }
    dir
}

/// Deterministic pseudo-random bytes (xorshift), incompressible enough for a stream.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A proper clone token in `dir/token`: 64 hex digits and a newline, mode 0600, as
/// `xbagent token new > FILE` writes it. Each call writes a different one.
pub fn write_token(dir: &Path) -> std::path::PathBuf {
    let mut raw = [0u8; 32];
    let mut filled = 0;
    while filled < raw.len() {
        filled +=
            rustix::rand::getrandom(&mut raw[filled..], rustix::rand::GetRandomFlags::empty())
                .expect("no randomness");
    }
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    write_token_text(dir, "token", &hex)
}

/// A token file `dir/name` holding `token` and a newline, created with mode 0600 (it is never
/// readable by others, not even for a moment). Replaces an earlier one.
pub fn write_token_text(dir: &Path, name: &str, token: &str) -> std::path::PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .expect("cannot create the token file");
    writeln!(f, "{token}").expect("cannot write the token file");
    path
}
