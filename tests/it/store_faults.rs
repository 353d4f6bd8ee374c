//! Fault scenarios of the backup repository (format-spec/repository.md), each run against both
//! backends: a local directory in a temporary directory, and S3 (the test server of
//! `tests/support/s3env.rs`, a fresh bucket per test; skipped, loudly, without one).
//!
//! Every scenario runs the binary and checks its exit status, its message on stderr, and what
//! the repository holds afterwards. The repository is read independently of xbagent: the files
//! themselves, the S3 API through aws-sdk-s3, and for unfinished multipart uploads either
//! ListMultipartUploads (Garage, AWS, MinIO) or, for s3s-fs, which does not implement it, its
//! data directory: s3s-fs keeps an upload as `.bucket-B.object-K.upload-ID.metadata.json`,
//! `.upload-ID.json` and `.upload_id-ID.part-N` at the top of its root (B and K in unpadded
//! URL-safe base64). The root is `XBAGENT_TEST_S3FS_ROOT`, else the last argument of the
//! s3s-fs process listening on the endpoint's port.
//!
//! Scenarios: an upload killed (SIGKILL) or stopped (SIGTERM) midway, a producer that fails, a
//! corrupt source stream, an altered stored object (plain and zstd), restore into a non-empty
//! directory, the prune policy end to end, `@latest` skipping a newer incomplete backup, and an
//! upload to an id that exists.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::primitives::ByteStream;
use serde_json::Value;
use tempfile::TempDir;

use crate::support::backends::{on_both_backends, Kind};
use crate::support::cli::{run, Out};
use crate::support::proc::Proc;
use crate::support::s3env::{s3_env, S3Env};
use crate::support::trees::{assert_same_tree, tree, Entry};
use crate::support::{s, XBAGENT as BIN};
/// The smallest first part xbagent accepts; the "big" fixture holds one full part and more.
const PART: &str = "6MiB";
const PART_BYTES: u64 = 6 << 20;
const MARKER: &str = ".xbagent-restore-in-progress";

// ---------------------------------------------------------------------------------------------
// Source data: a directory and the stream `xbagent create` makes of it.

struct Fixture {
    tmp: TempDir,
    src: PathBuf,
    xbs: PathBuf,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }

    /// Text of words from a small vocabulary: compresses, but not to nothing.
    fn text(&mut self, n: usize) -> Vec<u8> {
        const WORDS: &str = "innodb page extent redo undo tablespace checkpoint lsn row index \
                             buffer pool flush commit binlog xtrabackup";
        let mut v = Vec::with_capacity(n + 64);
        let mut line = 0u64;
        while v.len() < n {
            line += 1;
            v.extend_from_slice(format!("{line:08} ").as_bytes());
            for _ in 0..8 {
                let r = self.next();
                let word = WORDS.split_whitespace().nth((r % 16) as usize);
                v.extend_from_slice(word.unwrap_or_default().as_bytes());
                v.extend_from_slice(format!(" {} ", r % 1000).as_bytes());
            }
            v.push(b'\n');
        }
        v.truncate(n);
        v
    }
}

impl Fixture {
    /// `random` incompressible bytes in `a.bin`, `text` bytes of text in `sub/notes.txt`, and
    /// an empty file.
    fn new(seed: u64, random: usize, text: usize) -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        if random > 0 {
            fs::write(src.join("a.bin"), rng.bytes(random)).unwrap();
        }
        fs::write(src.join("sub/notes.txt"), rng.text(text)).unwrap();
        fs::write(src.join("empty"), b"").unwrap();
        let xbs = tmp.path().join("f.xbs");
        let mut c = Command::new(BIN);
        c.args(["-q", "create", "-C", s(&src), "."])
            .stdout(fs::File::create(&xbs).unwrap());
        run(c).code(0);
        Fixture { tmp, src, xbs }
    }

    /// About 1.1 MiB of stream.
    fn small(seed: u64) -> Fixture {
        Fixture::new(seed, 1 << 20, 64 << 10)
    }

    /// More than one 6 MiB part (7.2 MiB), so that a part is stored while the producer sleeps.
    fn big(seed: u64) -> Fixture {
        Fixture::new(seed, 7 << 20, 200 << 10)
    }

    /// Mostly text (2.5 MiB), so that zstd output is entropy-coded, not raw blocks.
    fn compressible(seed: u64) -> Fixture {
        Fixture::new(seed, 0, 5 << 19)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// Every file under `dir` (relative path -> size).
fn sizes(dir: &Path) -> BTreeMap<String, u64> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => walk(base, &p, out),
                Ok(m) => {
                    let rel = p.strip_prefix(base).unwrap().to_str().unwrap().to_string();
                    out.insert(rel, m.len());
                }
                // Renamed or deleted meanwhile (an upload is running).
                Err(_) => {}
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// The S3 API, read without xbagent.

struct Raw {
    rt: tokio::runtime::Runtime,
    c: aws_sdk_s3::Client,
}

impl Raw {
    fn new(env: &S3Env) -> Raw {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(env.region.clone()))
            .endpoint_url(&env.endpoint)
            .credentials_provider(Credentials::new(
                &env.access_key,
                &env.secret_key,
                None,
                None,
                "store_faults",
            ))
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        Raw {
            rt,
            c: aws_sdk_s3::Client::from_conf(conf),
        }
    }

    fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .rt
                .block_on(
                    self.c
                        .list_objects_v2()
                        .bucket(bucket)
                        .prefix(prefix)
                        .set_continuation_token(token.clone())
                        .send(),
                )
                .unwrap_or_else(|e| panic!("ListObjectsV2 {bucket}/{prefix}: {e:?}"));
            for o in page.contents() {
                out.push((
                    o.key().unwrap_or_default().to_string(),
                    o.size().unwrap_or(0) as u64,
                ));
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out
    }

    fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.rt.block_on(async {
            let o = self
                .c
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GetObject {bucket}/{key}: {e:?}"));
            o.body.collect().await.unwrap().into_bytes().to_vec()
        })
    }

    fn put(&self, bucket: &str, key: &str, data: Vec<u8>) {
        self.rt
            .block_on(
                self.c
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(ByteStream::from(data))
                    .send(),
            )
            .unwrap_or_else(|e| panic!("PutObject {bucket}/{key}: {e:?}"));
    }

    fn abort(&self, bucket: &str, key: &str, upload_id: &str) {
        self.rt
            .block_on(
                self.c
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .send(),
            )
            .unwrap_or_else(|e| panic!("AbortMultipartUpload {bucket}/{key} {upload_id}: {e:?}"));
    }

    /// Unfinished multipart uploads of exactly `key`, with the number of parts each holds.
    fn uploads(&self, bucket: &str, key: &str) -> Vec<(String, usize)> {
        let page = self
            .rt
            .block_on(
                self.c
                    .list_multipart_uploads()
                    .bucket(bucket)
                    .prefix(key)
                    .send(),
            )
            .unwrap_or_else(|e| {
                panic!("ListMultipartUploads {bucket}/{key} (needed to check aborts): {e:?}")
            });
        page.uploads()
            .iter()
            .filter(|u| u.key() == Some(key))
            .filter_map(|u| u.upload_id())
            .map(|id| {
                let parts = self
                    .rt
                    .block_on(
                        self.c
                            .list_parts()
                            .bucket(bucket)
                            .key(key)
                            .upload_id(id)
                            .send(),
                    )
                    .map(|p| p.parts().len())
                    .unwrap_or(0);
                (id.to_string(), parts)
            })
            .collect()
    }
}

/// Unpadded URL-safe base64, as s3s-fs names its metadata files.
fn b64url(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in s.as_bytes().chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

/// The data directory of the s3s-fs serving `endpoint`.
fn s3s_fs_root(endpoint: &str) -> Option<PathBuf> {
    if let Some(r) = std::env::var_os("XBAGENT_TEST_S3FS_ROOT") {
        return Some(PathBuf::from(r));
    }
    let port = endpoint
        .trim_end_matches('/')
        .rsplit(':')
        .next()?
        .to_string();
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_s3s = args
            .first()
            .is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == "s3s-fs"));
        let on_port = args
            .windows(2)
            .any(|w| (w[0] == "--port" && w[1] == port) || w[0] == format!("--port={port}"));
        if is_s3s && on_port {
            let root = PathBuf::from(args.last()?);
            let root = if root.is_absolute() {
                root
            } else {
                fs::read_link(e.path().join("cwd")).ok()?.join(root)
            };
            if root.is_dir() {
                return Some(root);
            }
        }
    }
    None
}

fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A repository of either kind.

struct S3Side {
    env: S3Env,
    bucket: String,
    /// The key prefix of the repository, ending in `/`.
    prefix: String,
    raw: Raw,
    /// s3s-fs's data directory (s3s-fs cannot list multipart uploads).
    fs_root: Option<PathBuf>,
}

enum Backend {
    Local(PathBuf),
    S3(Box<S3Side>),
}

struct Repo {
    url: String,
    backend: Backend,
}

impl Repo {
    /// A fresh repository, or `None` (the test is skipped) for S3 without a test server.
    fn open(kind: Kind, fx: &Fixture, tag: &str) -> Option<Repo> {
        match kind {
            Kind::Local => {
                let dir = fx.path("repo");
                Some(Repo {
                    url: s(&dir).to_string(),
                    backend: Backend::Local(dir),
                })
            }
            Kind::S3 => {
                let env = s3_env()?;
                let bucket = env.new_bucket(&format!("sf-{tag}"));
                let fs_root = if env.server == "s3s-fs" {
                    let root = s3s_fs_root(&env.endpoint).unwrap_or_else(|| {
                        panic!(
                            "s3s-fs at {}: cannot find its data directory (set XBAGENT_TEST_S3FS_ROOT); \
                             it is needed to check that multipart uploads are aborted",
                            env.endpoint
                        )
                    });
                    assert!(
                        root.join(&bucket).is_dir(),
                        "{} is not the data directory of the s3s-fs at {} (no {bucket} in it)",
                        root.display(),
                        env.endpoint
                    );
                    Some(root)
                } else {
                    None
                };
                let raw = Raw::new(&env);
                Some(Repo {
                    url: format!("s3://{bucket}/db/main"),
                    backend: Backend::S3(Box::new(S3Side {
                        env,
                        bucket,
                        prefix: "db/main/".into(),
                        raw,
                        fs_root,
                    })),
                })
            }
        }
    }

    fn at(&self, id: &str) -> String {
        format!("{}@{id}", self.url)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        match &self.backend {
            Backend::Local(_) => {
                let mut c = Command::new(BIN);
                c.args(args);
                c
            }
            Backend::S3(s3) => s3.env.xbagent(args),
        }
    }

    fn run(&self, args: &[&str]) -> Out {
        run(self.cmd(args))
    }

    /// Every object of the repository (every file, for a local one, `.partial` and temporary
    /// files included), keys relative to the repository, with sizes.
    fn objects(&self) -> BTreeMap<String, u64> {
        match &self.backend {
            Backend::Local(dir) => {
                if !dir.exists() {
                    return BTreeMap::new();
                }
                sizes(dir)
            }
            Backend::S3(s3) => s3
                .raw
                .list(&s3.bucket, &s3.prefix)
                .into_iter()
                .map(|(k, n)| (k[s3.prefix.len()..].to_string(), n))
                .collect(),
        }
    }

    /// Names of the objects under backup `id`.
    fn under(&self, id: &str) -> Vec<String> {
        let p = format!("{id}/");
        self.objects()
            .keys()
            .filter_map(|k| k.strip_prefix(&p).map(str::to_string))
            .collect()
    }

    fn read(&self, key: &str) -> Vec<u8> {
        match &self.backend {
            Backend::Local(dir) => fs::read(dir.join(key)).unwrap(),
            Backend::S3(s3) => s3.raw.get(&s3.bucket, &format!("{}{key}", s3.prefix)),
        }
    }

    fn write(&self, key: &str, data: Vec<u8>) {
        match &self.backend {
            Backend::Local(dir) => {
                let p = dir.join(key);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, data).unwrap();
            }
            Backend::S3(s3) => s3.raw.put(&s3.bucket, &format!("{}{key}", s3.prefix), data),
        }
    }

    /// Flip one bit of the byte at `at` of an object: in place for a local file, by rewriting
    /// the object under the same key on S3.
    fn flip(&self, key: &str, at: u64) {
        match &self.backend {
            Backend::Local(dir) => {
                let f = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(dir.join(key))
                    .unwrap();
                let mut b = [0u8; 1];
                f.read_exact_at(&mut b, at).unwrap();
                b[0] ^= 0x10;
                f.write_all_at(&b, at).unwrap();
            }
            Backend::S3(_) => {
                let mut d = self.read(key);
                d[at as usize] ^= 0x10;
                self.write(key, d);
            }
        }
    }

    /// `backups list --json`.
    #[track_caller]
    fn list(&self) -> Vec<Value> {
        let out = self.run(&["backups", "list", &self.url, "--json"]);
        out.code(0);
        match serde_json::from_str(&out.stdout) {
            Ok(Value::Array(v)) => v,
            other => panic!(
                "backups list --json: not an array: {other:?}\n{}",
                out.stdout
            ),
        }
    }

    fn listed_ids(&self) -> Vec<(String, bool)> {
        self.list()
            .iter()
            .map(|b| {
                (
                    b["id"].as_str().unwrap().to_string(),
                    b["complete"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    /// Unfinished multipart uploads of `key` (relative to the repository): upload id and parts
    /// stored. S3 only.
    fn pending(&self, key: &str) -> Vec<(String, usize)> {
        let Backend::S3(s3) = &self.backend else {
            panic!("pending uploads: not an S3 repository");
        };
        let full = format!("{}{key}", s3.prefix);
        match &s3.fs_root {
            None => s3.raw.uploads(&s3.bucket, &full),
            Some(root) => {
                let head = format!(
                    ".bucket-{}.object-{}.upload-",
                    b64url(&s3.bucket),
                    b64url(&full)
                );
                let names = names_in(root);
                names
                    .iter()
                    .filter_map(|n| n.strip_prefix(&head)?.strip_suffix(".metadata.json"))
                    .map(|id| {
                        let part = format!(".upload_id-{id}.part-");
                        let parts = names.iter().filter(|n| n.starts_with(&part)).count();
                        (id.to_string(), parts)
                    })
                    .collect()
            }
        }
    }

    /// Whatever the store still keeps of multipart upload `upload_id` of `key` (empty once it
    /// is aborted or completed).
    fn upload_leftovers(&self, key: &str, upload_id: &str) -> Vec<String> {
        let Backend::S3(s3) = &self.backend else {
            panic!("upload leftovers: not an S3 repository");
        };
        match &s3.fs_root {
            Some(root) => names_in(root)
                .into_iter()
                .filter(|n| n.contains(upload_id))
                .collect(),
            None => self
                .pending(key)
                .into_iter()
                .filter(|(id, _)| id == upload_id)
                .map(|(id, n)| format!("upload {id} with {n} parts"))
                .collect(),
        }
    }

    /// Abort multipart upload `upload_id` of `key` (relative to the repository). S3 only.
    fn abort_upload(&self, key: &str, upload_id: &str) {
        let Backend::S3(s3) = &self.backend else {
            panic!("abort: not an S3 repository");
        };
        s3.raw
            .abort(&s3.bucket, &format!("{}{key}", s3.prefix), upload_id);
    }

    fn is_s3s_fs(&self) -> bool {
        matches!(&self.backend, Backend::S3(s3) if s3.fs_root.is_some())
    }

    /// `restore --from FROM -C DIR ARGS`.
    fn restore(&self, from: &str, dir: &Path, args: &[&str]) -> Out {
        self.run(&[&["restore", "--from", from, "-C", s(dir)], args].concat())
    }

    /// `upload --to REPO --id ID ARGS`.
    fn upload(&self, id: &str, args: &[&str]) -> Out {
        self.run(&[&["upload", "--to", &self.url, "--id", id], args].concat())
    }

    /// `backups prune REPO ARGS`.
    fn prune(&self, args: &[&str]) -> Out {
        self.run(&[&["backups", "prune", &self.url], args].concat())
    }

    /// Upload `fx`'s stream file under `id`.
    #[track_caller]
    fn upload_file(&self, fx: &Fixture, id: &str, extra: &[&str]) -> Out {
        let out = self.upload(id, &[extra, &[s(&fx.xbs)]].concat());
        out.code(0).prints(&format!("backup {id} complete"));
        out
    }
}

// ---------------------------------------------------------------------------------------------
// An upload caught midway: a producer that writes more than one part, then sleeps.

struct Slow {
    proc: Proc,
    pidfile: PathBuf,
}

impl Slow {
    /// `upload` from `cat f.xbs; exec sleep 30`, with 6 MiB parts.
    fn start(repo: &Repo, fx: &Fixture, extra: &[&str]) -> Slow {
        let pidfile = fx.path("producer.pid");
        let exec = format!(
            "echo $$ > {}; cat {}; exec sleep 30",
            s(&pidfile),
            s(&fx.xbs)
        );
        let upload = [
            "upload",
            "--to",
            &repo.url,
            "--part-size",
            PART,
            "--exec",
            &exec,
        ];
        let mut c = repo.cmd(&[&upload[..], extra].concat());
        let proc = Proc::spawn("upload", &mut c, fx.path("upload.log"), false);
        Slow { proc, pidfile }
    }

    /// What the upload printed (stdout and stderr).
    fn output(&self) -> String {
        self.proc.log()
    }

    fn producer_pid(&self) -> Option<i32> {
        fs::read_to_string(&self.pidfile).ok()?.trim().parse().ok()
    }

    /// Wait until the upload is mid-stream: started.json is there and a first full part is
    /// stored (local: the `.partial` file holds it; S3: the multipart upload has a part).
    /// Returns the backup id and, on S3, the multipart upload's id.
    fn wait_mid_upload(&mut self, repo: &Repo) -> (String, Option<String>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if !self.proc.running() {
                panic!("upload ended early\n{}", self.output());
            }
            assert!(
                Instant::now() < deadline,
                "upload did not reach mid-stream in 30s; repository: {:?}\n{}",
                repo.objects(),
                self.output()
            );
            let objects = repo.objects();
            let id = objects
                .keys()
                .filter_map(|k| k.strip_suffix("/started.json"))
                .find(|id| id.len() == 20)
                .map(str::to_string);
            if let (Some(id), Some(_)) = (id, self.producer_pid()) {
                match &repo.backend {
                    Backend::Local(_) => {
                        let partial = objects
                            .get(&format!("{id}/stream.xbstream.partial"))
                            .copied()
                            .unwrap_or(0);
                        if partial >= PART_BYTES {
                            return (id, None);
                        }
                    }
                    Backend::S3(_) => {
                        let p = repo.pending(&format!("{id}/stream.xbstream"));
                        if let Some((up, _)) = p.iter().find(|(_, parts)| *parts >= 1) {
                            assert_eq!(p.len(), 1, "one multipart upload expected: {p:?}");
                            return (id, Some(up.clone()));
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: rustix::process::Signal) {
        self.proc.signal(sig);
    }

    /// Wait for xbagent to exit (at most 20 s).
    fn wait(&mut self) -> ExitStatus {
        self.proc.wait(Duration::from_secs(20)).status
    }

    /// Whether the producer (the `sleep`) is still running.
    fn producer_alive(&self) -> bool {
        self.producer_pid().is_some_and(|p| {
            fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep"))
        })
    }

    fn kill_producer(&self) {
        if self.producer_alive() {
            if let Some(pid) = self.producer_pid().and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

impl Drop for Slow {
    fn drop(&mut self) {
        // The upload itself is killed when `proc` drops.
        self.kill_producer();
    }
}

fn no_partial_files(repo: &Repo) {
    let partial: Vec<_> = repo
        .objects()
        .into_keys()
        .filter(|k| k.ends_with(".partial") || k.contains("/.tmp-"))
        .collect();
    assert!(partial.is_empty(), "leftover files: {partial:?}");
}

// ---------------------------------------------------------------------------------------------
// 1. SIGKILL midway: an incomplete backup that restore and verify refuse and prune removes.

fn killed_upload(kind: Kind) {
    let fx = Fixture::big(1);
    let Some(repo) = Repo::open(kind, &fx, "kill") else {
        return;
    };
    let mut up = Slow::start(&repo, &fx, &[]);
    let (id, upload_id) = up.wait_mid_upload(&repo);
    up.signal(rustix::process::Signal::KILL);
    let st = up.wait();
    assert_eq!(st.signal(), Some(9), "{st:?}");
    up.kill_producer();

    // What a killed upload leaves: started.json and the unfinished stream, no manifest.
    let left = repo.under(&id);
    assert!(left.contains(&"started.json".to_string()), "{left:?}");
    assert!(!left.contains(&"manifest.json".to_string()), "{left:?}");
    let key = format!("{id}/stream.xbstream");
    match kind {
        Kind::Local => assert!(
            left.contains(&"stream.xbstream.partial".to_string()),
            "{left:?}"
        ),
        Kind::S3 => {
            assert!(!left.contains(&"stream.xbstream".to_string()), "{left:?}");
            let p = repo.pending(&key);
            assert!(
                p.iter()
                    .any(|(u, n)| Some(u) == upload_id.as_ref() && *n >= 1),
                "the killed upload's multipart upload should still be there: {p:?}"
            );
        }
    }

    // Listed as incomplete.
    let list = repo.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["complete"], false, "{list:?}");
    assert!(list[0].get("manifest").is_none(), "{list:?}");
    let table = repo.run(&["backups", "list", &repo.url]);
    table.code(0).prints("incomplete");

    // restore and verify refuse it (exit 1), and restore writes nothing.
    let target = fx.path("restored");
    repo.restore(&repo.at(&id), &target, &[])
        .code(1)
        .says("incomplete");
    assert!(
        !target.exists(),
        "restore of an incomplete backup created its target"
    );
    repo.run(&["verify", &repo.at(&id)])
        .code(1)
        .says("incomplete")
        .prints_not("ok:");
    // @latest never picks it: there is no complete backup.
    repo.run(&["verify", &repo.at("latest")])
        .code(3)
        .says("no complete backup");

    // Within the default grace (24h) prune leaves it alone.
    let before = repo.objects();
    repo.prune(&["--keep-last", "1"])
        .code(0)
        .prints(&format!("keeping {id} (incomplete"))
        .prints_not(&format!("delete {id}"));
    // Dry run with no grace: listed, nothing deleted.
    repo.prune(&["--keep-last", "1", "--grace", "0s"])
        .code(0)
        .prints(&format!("would delete {id}"))
        .prints("incomplete");
    assert_eq!(repo.objects(), before, "a dry run deleted something");

    // --apply deletes it.
    let out = repo.prune(&[
        "--keep-last",
        "1",
        "--grace",
        "0s",
        "--apply",
        "--retry-for",
        "20s",
    ]);
    out.code(0).prints(&format!("deleting {id}"));
    assert!(repo.under(&id).is_empty(), "{:?}", repo.objects());
    assert!(repo.list().is_empty());
    match kind {
        Kind::Local => {
            no_partial_files(&repo);
            assert!(repo.objects().is_empty(), "{:?}", repo.objects());
        }
        Kind::S3 if repo.is_s3s_fs() => {
            // s3s-fs cannot list multipart uploads: prune must say so (once, without retrying a
            // 501 NotImplemented for --retry-for), and leave them to lifecycle rules.
            out.says("could not list unfinished multipart uploads");
            assert!(
                !out.stderr.contains("retrying ListMultipartUploads"),
                "501 NotImplemented was retried:\n{}",
                out.stderr
            );
            // So the killed upload's parts are still there; abort it by hand (which also shows
            // that upload_leftovers sees them).
            let upload_id = upload_id.as_deref().unwrap();
            let l = repo.upload_leftovers(&key, upload_id);
            assert!(!l.is_empty(), "s3s-fs lost the killed upload's parts");
            repo.abort_upload(&key, upload_id);
            let l = repo.upload_leftovers(&key, upload_id);
            assert!(l.is_empty(), "still there after an abort: {l:?}");
        }
        Kind::S3 => {
            let p = repo.pending(&key);
            assert!(p.is_empty(), "prune left the multipart upload: {p:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. SIGTERM midway: exit 130, producer stopped, multipart aborted, nothing left.

fn terminated_upload(kind: Kind) {
    let fx = Fixture::big(2);
    let Some(repo) = Repo::open(kind, &fx, "term") else {
        return;
    };
    let mut up = Slow::start(&repo, &fx, &[]);
    let (id, upload_id) = up.wait_mid_upload(&repo);
    assert!(up.producer_alive());
    up.signal(rustix::process::Signal::TERM);
    let st = up.wait();
    let err = up.output();
    assert_eq!(st.code(), Some(130), "{st:?}\n{}", up.output());
    assert!(err.to_lowercase().contains("interrupted"), "{err}");
    assert!(
        !up.producer_alive(),
        "the producer survived the upload's SIGTERM"
    );

    let left = repo.under(&id);
    assert!(left.is_empty(), "left under {id}: {left:?}");
    assert!(repo.list().is_empty());
    match kind {
        Kind::Local => no_partial_files(&repo),
        Kind::S3 => {
            let key = format!("{id}/stream.xbstream");
            let upload_id = upload_id.unwrap();
            let p = repo.pending(&key);
            assert!(p.is_empty(), "multipart upload not aborted: {p:?}");
            let l = repo.upload_leftovers(&key, &upload_id);
            assert!(l.is_empty(), "multipart upload {upload_id} left: {l:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A producer that exits non-zero after streaming everything (more than one part).

fn failed_producer(kind: Kind) {
    let fx = Fixture::big(3);
    let Some(repo) = Repo::open(kind, &fx, "prod") else {
        return;
    };
    let id = "20250301T000000.000Z";
    let exec = format!("cat {}; exit 3", s(&fx.xbs));
    repo.upload(id, &["--part-size", PART, "--exec", &exec])
        .code(1)
        .says("status 3")
        .prints_not("complete");
    assert!(repo.objects().is_empty(), "{:?}", repo.objects());
    assert!(repo.list().is_empty());
    if kind == Kind::S3 {
        let p = repo.pending(&format!("{id}/stream.xbstream"));
        assert!(p.is_empty(), "multipart upload not aborted: {p:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. A corrupt source stream: refused before anything is stored.

/// Offset in `stream` of a byte of `file`'s data (found by content, so it is payload).
fn payload_offset(stream: &[u8], file: &[u8], at: usize) -> usize {
    let needle = &file[at..at + 64];
    stream
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("file data in the stream")
        + 32
}

fn corrupt_source(kind: Kind) {
    let fx = Fixture::small(4);
    let Some(repo) = Repo::open(kind, &fx, "bad") else {
        return;
    };
    let mut stream = fs::read(&fx.xbs).unwrap();
    let data = fs::read(fx.src.join("a.bin")).unwrap();
    let at = payload_offset(&stream, &data, data.len() / 2);
    stream[at] ^= 0x01;
    let bad = fx.path("bad.xbs");
    fs::write(&bad, &stream).unwrap();
    let id = "20250401T000000.000Z";
    // From a file, and from a producer that exits 0.
    repo.upload(id, &[s(&bad)])
        .code(1)
        .says("checksum")
        .prints_not("complete");
    assert!(repo.objects().is_empty(), "{:?}", repo.objects());
    let exec = format!("cat {}", s(&bad));
    repo.upload(id, &["--compress", "zstd", "--exec", &exec])
        .code(1)
        .says("checksum");
    assert!(repo.objects().is_empty(), "{:?}", repo.objects());
    assert!(repo.list().is_empty());
    if kind == Kind::S3 {
        for key in ["stream.xbstream", "stream.xbstream.zst"] {
            let p = repo.pending(&format!("{id}/{key}"));
            assert!(p.is_empty(), "multipart upload not aborted: {p:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. A stored object altered after the upload: restore and verify fail (exit 1).

fn altered_object(kind: Kind) {
    let fx = Fixture::compressible(5);
    let Some(repo) = Repo::open(kind, &fx, "alter") else {
        return;
    };
    for (id, extra, key) in [
        ("20250501T000000.000Z", &[][..], "stream.xbstream"),
        (
            "20250502T000000.000Z",
            &["--compress", "zstd"][..],
            "stream.xbstream.zst",
        ),
    ] {
        repo.upload_file(&fx, id, extra);
        let m: Value = serde_json::from_slice(&repo.read(&format!("{id}/manifest.json"))).unwrap();
        assert_eq!(m["object"]["key"], key);
        let size = m["object"]["size"].as_u64().unwrap();
        let obj = format!("{id}/{key}");
        assert_eq!(repo.objects()[&obj], size);
        repo.run(&["verify", &repo.at(id)]).code(0).prints("ok:");

        // One bit flipped in the middle.
        repo.flip(&obj, size / 2);
        let bad = &[
            "checksum",
            "mismatch",
            "does not match",
            "digest",
            "corrupt",
        ];
        repo.run(&["verify", &repo.at(id)])
            .code(1)
            .says_one_of(bad)
            .prints_not("ok:");
        let target = fx.path(&format!("restore-{id}"));
        repo.restore(&repo.at(id), &target, &[])
            .code(1)
            .says_one_of(bad)
            .prints_not("restored backup");
        assert!(
            target.join(MARKER).exists(),
            "a failed restore must leave {MARKER}"
        );

        // Flipped back, the backup is good again: the flip was the only change.
        repo.flip(&obj, size / 2);
        repo.run(&["verify", &repo.at(id)]).code(0).prints("ok:");

        // One byte short: the size no longer matches the manifest.
        let mut short = repo.read(&obj);
        short.pop();
        repo.write(&obj, short);
        repo.run(&["verify", &repo.at(id)])
            .code(1)
            .says("manifest")
            .prints_not("ok:");
        let target = fx.path(&format!("restore-short-{id}"));
        repo.restore(&repo.at(id), &target, &[])
            .code(1)
            .says("manifest");
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Restore into a non-empty directory: refused (exit 3) and untouched, unless --force.

fn restore_non_empty(kind: Kind) {
    let fx = Fixture::small(6);
    let Some(repo) = Repo::open(kind, &fx, "nonempty") else {
        return;
    };
    let id = "20250601T000000.000Z";
    repo.upload_file(&fx, id, &[]);

    let fresh = fx.path("fresh");
    repo.restore(&repo.at(id), &fresh, &[])
        .code(0)
        .prints(&format!("restored backup {id}"));
    assert_same_tree(&fx.src, &fresh);

    let target = fx.path("busy");
    fs::create_dir_all(&target).unwrap();
    fs::write(target.join("keep.txt"), b"mine").unwrap();
    let before = tree(&target);
    repo.restore(&repo.at(id), &target, &[])
        .code(3)
        .says("not empty");
    assert_eq!(
        tree(&target),
        before,
        "a refused restore changed its target"
    );

    repo.restore(&repo.at(id), &target, &["--force"])
        .code(0)
        .prints(&format!("restored backup {id}"));
    let mut want = tree(&fx.src);
    want.insert("keep.txt".into(), Entry::file(b"mine"));
    assert_eq!(tree(&target), want);
}

// ---------------------------------------------------------------------------------------------
// 7. The prune policy end to end.

fn started_json(id: &str) -> Vec<u8> {
    format!(
        r#"{{"id":"{id}","tool":"xbagent test","started":"2020-01-02T12:00:00.000Z","source":{{"kind":"exec","detail":"killed"}}}}"#
    )
    .into_bytes()
}

fn prune_policy(kind: Kind) {
    let fx = Fixture::new(7, 64 << 10, 16 << 10);
    let Some(repo) = Repo::open(kind, &fx, "prune") else {
        return;
    };
    let ids = [
        "20200101T000000.000Z",
        "20200102T000000.000Z",
        "20200103T000000.000Z",
        "20200104T000000.000Z",
    ];
    for id in ids {
        repo.upload_file(&fx, id, &[]);
    }
    // An upload killed long ago, between the second and the third.
    let dead = "20200102T120000.000Z";
    repo.write(&format!("{dead}/started.json"), started_json(dead));
    assert_eq!(
        repo.listed_ids(),
        vec![
            (ids[0].to_string(), true),
            (ids[1].to_string(), true),
            (dead.to_string(), false),
            (ids[2].to_string(), true),
            (ids[3].to_string(), true),
        ]
    );

    // The dead upload's started.json was written just now: no grace, so that it counts as
    // long dead (prune's grace counts from the last write, not from the id).
    let prune = |extra: &[&str]| {
        let mut args = vec![
            "backups",
            "prune",
            &repo.url,
            "--retry-for",
            "20s",
            "--grace",
            "0s",
        ];
        args.extend_from_slice(extra);
        repo.run(&args)
    };

    // Dry run: prints, deletes nothing.
    let before = repo.objects();
    prune(&["--keep-last", "2"])
        .code(0)
        .prints(&format!("would delete {}", ids[0]))
        .prints(&format!("would delete {}", ids[1]))
        .prints(&format!("would delete {dead} (incomplete"))
        .prints_not(ids[2])
        .prints_not(ids[3])
        .prints("3 backup(s) would be deleted");
    assert_eq!(repo.objects(), before, "a dry run deleted something");

    // Applied: the two oldest complete backups and the incomplete one go.
    prune(&["--keep-last", "2", "--apply"])
        .code(0)
        .prints(&format!("deleting {}", ids[0]))
        .prints(&format!("deleting {}", ids[1]))
        .prints(&format!("deleting {dead}"))
        .prints_not(ids[2])
        .prints_not(ids[3]);
    assert_eq!(
        repo.listed_ids(),
        vec![(ids[2].to_string(), true), (ids[3].to_string(), true)]
    );
    for gone in [ids[0], ids[1], dead] {
        assert!(
            repo.under(gone).is_empty(),
            "{gone}: {:?}",
            repo.under(gone)
        );
    }
    for kept in [ids[2], ids[3]] {
        let mut k = repo.under(kept);
        k.sort();
        assert_eq!(k, vec!["manifest.json", "stream.xbstream"], "{kept}");
    }

    // --keep-last 0 still keeps the newest complete backup, however old.
    prune(&["--keep-last", "0", "--apply"])
        .code(0)
        .prints(&format!("deleting {}", ids[2]))
        .prints_not(ids[3]);
    assert_eq!(repo.listed_ids(), vec![(ids[3].to_string(), true)]);
    prune(&["--keep-last", "0", "--apply"])
        .code(0)
        .prints_not(ids[3]);
    assert_eq!(repo.listed_ids(), vec![(ids[3].to_string(), true)]);
    repo.run(&["verify", &repo.at(ids[3])])
        .code(0)
        .prints("ok:");
    if kind == Kind::Local {
        no_partial_files(&repo);
    }
}

// ---------------------------------------------------------------------------------------------
// 8. @latest: the newest complete backup, never a newer incomplete one.

fn latest_skips_incomplete(kind: Kind) {
    let fx = Fixture::small(8);
    let Some(repo) = Repo::open(kind, &fx, "latest") else {
        return;
    };
    let newer_src = fx.path("src2");
    fs::create_dir_all(&newer_src).unwrap();
    fs::write(newer_src.join("only-in-second.txt"), b"second backup\n").unwrap();
    fs::write(newer_src.join("data"), Rng(88).bytes(300 << 10)).unwrap();

    let (old, new, dead) = (
        "20210101T000000.000Z",
        "20210102T000000.000Z",
        "20210103T000000.000Z",
    );
    repo.upload_file(&fx, old, &[]);
    repo.upload(new, &["--dir", s(&newer_src)])
        .code(0)
        .prints(&format!("backup {new} complete"));
    // Newer, and incomplete although its stream object looks whole: no manifest.
    repo.write(&format!("{dead}/started.json"), started_json(dead));
    repo.write(
        &format!("{dead}/stream.xbstream"),
        repo.read(&format!("{old}/stream.xbstream")),
    );
    assert_eq!(
        repo.listed_ids(),
        vec![
            (old.to_string(), true),
            (new.to_string(), true),
            (dead.to_string(), false)
        ]
    );

    let target = fx.path("latest");
    repo.restore(&repo.at("latest"), &target, &[])
        .code(0)
        .prints(&format!("restored backup {new}"));
    assert_same_tree(&newer_src, &target);
    // REPO alone means @latest.
    let target = fx.path("bare");
    repo.restore(&repo.url, &target, &[])
        .code(0)
        .prints(&format!("restored backup {new}"));
    assert_same_tree(&newer_src, &target);
    repo.run(&["verify", &repo.at("latest")])
        .code(0)
        .prints(&format!("ok: backup {new}"));
    repo.run(&["verify", &repo.at(dead)])
        .code(1)
        .says("incomplete");
}

// ---------------------------------------------------------------------------------------------
// 9. An id that exists (complete or not) is refused; the backup there stays as it was.

fn existing_id(kind: Kind) {
    let fx = Fixture::small(9);
    let Some(repo) = Repo::open(kind, &fx, "exists") else {
        return;
    };
    let other = Fixture::small(99);
    let id = "20250901T000000.000Z";
    repo.upload_file(&fx, id, &[]);
    let manifest = repo.read(&format!("{id}/manifest.json"));
    let stream = repo.read(&format!("{id}/stream.xbstream"));
    let before = repo.objects();

    for extra in [&[][..], &["--compress", "zstd"][..]] {
        repo.upload(id, &[extra, &[s(&other.xbs)]].concat())
            .code(3)
            .says("already exists")
            .prints_not("complete");
    }
    assert_eq!(repo.objects(), before);
    assert_eq!(repo.read(&format!("{id}/manifest.json")), manifest);
    assert_eq!(repo.read(&format!("{id}/stream.xbstream")), stream);
    let target = fx.path("restored");
    repo.restore(&repo.at(id), &target, &[]).code(0);
    assert_same_tree(&fx.src, &target);

    // An incomplete backup's id is taken too.
    let dead = "20250902T000000.000Z";
    repo.write(&format!("{dead}/started.json"), started_json(dead));
    repo.upload(dead, &[s(&other.xbs)])
        .code(3)
        .says("already exists");
    assert_eq!(repo.under(dead), vec!["started.json"]);
    assert_eq!(
        repo.read(&format!("{dead}/started.json")),
        started_json(dead)
    );

    if kind == Kind::S3 {
        for i in [id, dead] {
            let p = repo.pending(&format!("{i}/stream.xbstream"));
            assert!(
                p.is_empty(),
                "a refused upload started a multipart upload: {p:?}"
            );
        }
    }

    // Not an id at all: refused (exit 3), nothing written.
    repo.upload("2025-09-03", &[s(&other.xbs)])
        .code(3)
        .says("not a backup id");
    assert_eq!(repo.under(id).len(), 2);
    assert_eq!(repo.objects().len(), 3, "{:?}", repo.objects());
}

#[test]
fn b64url_matches_s3s_fs() {
    // s3s-fs named bucket "manual1" `.bucket-bWFudWFsMQ`.
    assert_eq!(b64url("manual1"), "bWFudWFsMQ");
    assert_eq!(b64url("ab"), "YWI");
    assert_eq!(b64url("abc"), "YWJj");
    assert_eq!(b64url("~~~"), "fn5-");
}

on_both_backends!(
    killed_upload,
    terminated_upload,
    failed_producer,
    corrupt_source,
    altered_object,
    restore_non_empty,
    prune_policy,
    latest_skips_incomplete,
    existing_id,
);
