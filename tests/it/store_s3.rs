//! Upload and restore through the real S3-compatible server: a multi-GB round trip with its
//! memory measured, retries through a proxy that injects 5xx answers and dropped
//! connections, and parts spooled to disk when the memory limit is small.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Output;

use crate::support::s3_fault_proxy::{Fault, FaultProxy};
use crate::support::trees::assert_same_tree;
use crate::support::{s as p, s3env};

const MIB: u64 = 1 << 20;

/// Incompressible bytes, fast: xorshift64.
fn write_random(path: &Path, len: u64, seed: u64) {
    let mut f = std::io::BufWriter::with_capacity(4 << 20, fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

fn ok(out: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {err}\nstdout: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

/// `upload --to REPO EXTRA --dir SRC`.
fn upload<'a>(repo: &'a str, extra: &[&'a str], src: &'a Path) -> Vec<&'a str> {
    [&["upload", "--to", repo], extra, &["--dir", p(src)]].concat()
}

/// `restore --from FROM -C DST`.
fn restore<'a>(from: &'a str, dst: &'a Path) -> [&'a str; 5] {
    ["restore", "--from", from, "-C", p(dst)]
}

/// Run `cmd` under /usr/bin/time; returns its output and peak RSS in bytes.
fn timed(env: &s3env::S3Env, args: &[&str], rss_file: &Path) -> (Output, u64) {
    let mut full = vec![
        "-f",
        "%M",
        "-o",
        rss_file.to_str().unwrap(),
        env!("CARGO_BIN_EXE_xbagent"),
    ];
    full.extend_from_slice(args);
    let mut c = env.xbagent(&[]);
    let envs: Vec<(String, String)> = c
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
        .collect();
    c = std::process::Command::new("/usr/bin/time");
    c.args(&full).envs(envs).env_remove("AWS_PROFILE");
    let out = c
        .output()
        .expect("cannot run /usr/bin/time (Debian package 'time')");
    let kb: u64 = fs::read_to_string(rss_file)
        .unwrap_or_default()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RSS figure from /usr/bin/time for {args:?}"));
    (out, kb * 1024)
}

/// 4 GiB of incompressible files, uploaded from the directory and restored, byte-identical;
/// the peak RSS of each side stays within --memory-limit plus a small fixed overhead.
#[test]
fn four_gib_round_trip_with_bounded_memory() {
    let Some(env) = s3env::s3_env() else { return };
    let bucket = env.new_bucket("big");
    let repo = format!("s3://{bucket}/nightly");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(src.join("db")).unwrap();
    for i in 0..4u64 {
        write_random(&src.join(format!("db/t{i}.ibd")), 1 << 30, 0x9e37_79b9 + i);
    }
    write_random(&src.join("ibdata1"), 3 * MIB + 5, 7);
    let limit = 128 * MIB;
    let overhead = 24 * MIB;
    let limit_s = format!("{}MiB", limit / MIB);

    let (out, up_rss) = timed(
        &env,
        &upload(&repo, &["--memory-limit", &limit_s], &src),
        &work.path().join("rss-up"),
    );
    ok(&out, "upload");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("complete"), "{stdout}");

    let dst = work.path().join("dst");
    let (out, down_rss) = timed(
        &env,
        &[
            &restore(&format!("{repo}@latest"), &dst)[..],
            &["--memory-limit", &limit_s],
        ]
        .concat(),
        &work.path().join("rss-down"),
    );
    ok(&out, "restore");
    eprintln!(
        "4 GiB: upload peak RSS {} MiB, restore peak RSS {} MiB (limit {} MiB)",
        up_rss / MIB,
        down_rss / MIB,
        limit / MIB
    );
    assert!(
        up_rss <= limit + overhead,
        "upload peak RSS {} MiB",
        up_rss / MIB
    );
    assert!(
        down_rss <= limit + overhead,
        "restore peak RSS {} MiB",
        down_rss / MIB
    );
    assert_same_tree(&src, &dst);
    assert!(!dst.join(".xbagent-restore-in-progress").exists());

    // The same 4 GiB sealed with age (issue 13): the fetchers open whole STREAM chunks at
    // computed offsets in parallel, within the same memory bound. The clear backup and its
    // restore go first, so the disk holds one copy of each at a time.
    fs::remove_dir_all(&dst).unwrap();
    let lib =
        xbagent::store::s3::S3Repo::open(&bucket, "nightly", &env.settings(&env.endpoint)).unwrap();
    for o in xbagent::store::Repository::list(&lib, "").unwrap() {
        xbagent::store::Repository::delete(&lib, &o.key).unwrap();
    }
    let key = work.path().join("key.txt");
    let keygen = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .expect("age-keygen (Debian package age) is needed");
    assert!(keygen.status.success());
    let public = std::process::Command::new("age-keygen")
        .arg("-y")
        .arg(&key)
        .output()
        .unwrap();
    let recipient = String::from_utf8(public.stdout).unwrap().trim().to_string();
    let (out, up_rss) = timed(
        &env,
        &upload(
            &repo,
            &["--memory-limit", &limit_s, "--recipient", &recipient],
            &src,
        ),
        &work.path().join("rss-up-age"),
    );
    ok(&out, "sealed upload");
    let (out, down_rss) = timed(
        &env,
        &[
            &restore(&format!("{repo}@latest"), &dst)[..],
            &["--memory-limit", &limit_s, "--identity-file", p(&key)],
        ]
        .concat(),
        &work.path().join("rss-down-age"),
    );
    ok(&out, "sealed restore");
    eprintln!(
        "4 GiB sealed: upload peak RSS {} MiB, restore peak RSS {} MiB (limit {} MiB)",
        up_rss / MIB,
        down_rss / MIB,
        limit / MIB
    );
    assert!(
        up_rss <= limit + overhead,
        "sealed upload peak RSS {} MiB",
        up_rss / MIB
    );
    assert!(
        down_rss <= limit + overhead,
        "sealed restore peak RSS {} MiB",
        down_rss / MIB
    );
    assert_same_tree(&src, &dst);
    assert!(!dst.join(".xbagent-restore-in-progress").exists());
}

/// A proxy answers 503 (SlowDown), 500, drops connections and cuts responses: upload,
/// list, verify and restore still succeed, and the retries are logged.
#[test]
fn retries_through_faults() {
    let Some(env) = s3env::s3_env() else { return };
    let bucket = env.new_bucket("faults");
    let proxy = FaultProxy::start(&env.endpoint, |i, head| {
        let part = head.query_param("partNumber").is_some();
        let range = head.header("range").is_some();
        match i % 7 {
            3 if part => Some(Fault::Status(503)),
            5 if part => Some(Fault::Drop),
            2 if range => Some(Fault::DropMidResponse),
            4 if range => Some(Fault::Status(500)),
            6 if head.method == "PUT" && !part => Some(Fault::Status(503)),
            _ => None,
        }
    });
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    write_random(&src.join("a.ibd"), 70 * MIB + 3, 1);
    write_random(&src.join("b.ibd"), 9 * MIB, 2);
    let repo = format!("s3://{bucket}/r");
    let run = |args: &[&str]| {
        env.xbagent(args)
            .env("AWS_ENDPOINT_URL", &proxy.endpoint)
            .output()
            .unwrap()
    };
    let up = run(&upload(&repo, &["--retry-for", "2m"], &src));
    let up_err = ok(&up, "upload through faults");
    let dst = work.path().join("dst");
    let down = run(&restore(&repo, &dst));
    let down_err = ok(&down, "restore through faults");
    let log = proxy.log_text();
    assert!(proxy.faults() >= 4, "too few faults injected: {log}");
    assert!(
        up_err.contains("retrying UploadPart"),
        "upload retries not logged: {up_err}"
    );
    assert!(
        down_err.contains("retrying GetObject"),
        "restore retries not logged: {down_err}"
    );
    assert_same_tree(&src, &dst);
    let verify = run(&["verify", &format!("{repo}@latest")]);
    ok(&verify, "verify through faults");
}

/// A store that keeps failing: the upload gives up within --retry-for, exit 4, and no
/// backup is recorded.
#[test]
fn persistent_failure_gives_up_cleanly() {
    let Some(env) = s3env::s3_env() else { return };
    let bucket = env.new_bucket("down");
    let proxy = FaultProxy::start(&env.endpoint, |_, head| {
        head.query_param("partNumber").map(|_| Fault::Status(503))
    });
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    write_random(&src.join("a"), 3 * MIB, 3);
    let repo = format!("s3://{bucket}/r");
    let t = std::time::Instant::now();
    let out = env
        .xbagent(&upload(&repo, &["--retry-for", "3s"], &src))
        .env("AWS_ENDPOINT_URL", &proxy.endpoint)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("giving up on UploadPart"), "{err}");
    assert!(t.elapsed() < std::time::Duration::from_secs(30));
    let list = env
        .xbagent(&["backups", "list", &repo, "--json"])
        .output()
        .unwrap();
    ok(&list, "list");
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v.as_array().map(|a| a.len()), Some(0), "{v}");
}

/// With a memory limit too small for even two parts, parts are spooled to disk and the
/// backup is still whole; with zstd as well.
#[test]
fn small_memory_limit_spools_parts() {
    let Some(env) = s3env::s3_env() else { return };
    let bucket = env.new_bucket("spool");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    write_random(&src.join("a.ibd"), 20 * MIB + 1, 4);
    fs::write(src.join("text.frm"), "compressible ".repeat(500_000)).unwrap();
    let spool = work.path().join("spool");
    fs::create_dir_all(&spool).unwrap();
    for (i, extra) in [&[][..], &["--compress", "zstd:1"][..]].iter().enumerate() {
        let repo = format!("s3://{bucket}/r{i}");
        let limit = if extra.is_empty() { "46MiB" } else { "102MiB" };
        let spooled = [
            "--memory-limit",
            limit,
            "--part-size",
            "6MiB",
            "--spool-dir",
            p(&spool),
        ];
        let args = upload(&repo, &[&spooled[..], extra].concat(), &src);
        let up = env.xbagent(&args).arg("-v").output().unwrap();
        let err = ok(&up, "upload with spooled parts");
        assert!(err.contains("spooling"), "no spooling logged: {err}");
        assert_eq!(
            fs::read_dir(&spool).unwrap().count(),
            0,
            "spool files left behind"
        );
        let dst = work.path().join(format!("dst{i}"));
        let down = env.xbagent(&restore(&repo, &dst)).output().unwrap();
        ok(&down, "restore");
        assert_same_tree(&src, &dst);
    }
}
