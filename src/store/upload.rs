//! `xbagent upload`: a stream from a producer command, a directory, a file or stdin, checked
//! by the one decoder as it passes, optionally compressed, and written as one multipart object;
//! the manifest is written last, and only if everything before it succeeded.
//!
//! Threads: the source's reader; this thread (check, digest, compress, cut into parts);
//! `--concurrency` senders. Memory: the part buffers are bounded by a byte budget (the memory
//! limit less a fixed reserve); parts too large for it are spooled to temporary files.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use super::address::{id_for, is_valid_id};
use super::manifest::{self, Manifest, ObjectEntry, SourceInfo};
use super::parts::{self, Holding};
use super::{BackupError, PartBody, Repository, StoreError, Upload, MANIFEST, STARTED};
use crate::format::{DecodeOptions, Ledger};
use crate::progress::Progress;
use crate::stream::check::StreamChecker;
use crate::stream::source::{Piece, Running, Source};

/// Memory kept for everything but part buffers: source buffers, the decoder's chunk, the
/// compressor's windows and jobs, the HTTP client.
pub const RESERVE_PLAIN: u64 = 40 << 20;
pub const RESERVE_ZSTD: u64 = 96 << 20;
/// zstd job size: bounds each compression worker's buffers.
const ZSTD_JOB: u64 = 2 << 20;

/// Settings of an upload.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    pub source: Source,
    /// Readers for a directory source.
    pub parallel: usize,
    /// zstd level, or none.
    pub compress: Option<i32>,
    /// Parts sent at once.
    pub concurrency: usize,
    pub memory_limit: u64,
    pub first_part: u64,
    /// Where parts too large for memory are spooled (default: the system's temporary directory).
    pub spool_dir: Option<PathBuf>,
    pub id: Option<String>,
    pub decode: DecodeOptions,
}

impl UploadOptions {
    pub fn new(source: Source) -> Self {
        UploadOptions {
            source,
            parallel: 4,
            compress: None,
            concurrency: 4,
            memory_limit: 256 << 20,
            first_part: parts::DEFAULT_FIRST_PART,
            spool_dir: None,
            id: None,
            decode: DecodeOptions::default(),
        }
    }

    fn reserve(&self) -> u64 {
        if self.compress.is_some() {
            RESERVE_ZSTD
        } else {
            RESERVE_PLAIN
        }
    }

    /// Check the settings before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        if self.first_part < parts::MIN_FIRST_PART || self.first_part > parts::MAX_PART {
            return Err(format!(
                "--part-size must be between {} and {} bytes",
                parts::MIN_FIRST_PART,
                parts::MAX_PART
            ));
        }
        let min = self.reserve() + parts::MIN_FIRST_PART;
        if self.memory_limit < min {
            return Err(format!(
                "--memory-limit must be at least {} MiB with these settings",
                min >> 20
            ));
        }
        if self.concurrency == 0 || self.concurrency > 64 {
            return Err("--concurrency must be between 1 and 64".into());
        }
        if let Some(l) = self.compress {
            if !(1..=19).contains(&l) {
                return Err("zstd level must be between 1 and 19".into());
            }
        }
        Ok(())
    }
}

/// The result of a good upload.
#[derive(Debug)]
pub struct Uploaded {
    pub manifest: Manifest,
}

/// A byte budget shared by the part filler and the senders.
struct Budget {
    free: Mutex<u64>,
    cv: Condvar,
}

impl Budget {
    /// Wait for `n` bytes; `false` if `stop` was set meanwhile.
    fn take(&self, n: u64, stop: &AtomicBool) -> bool {
        let Ok(mut free) = self.free.lock() else {
            return false;
        };
        while *free < n {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            free = match self.cv.wait_timeout(free, Duration::from_millis(100)) {
                Ok((f, _)) => f,
                Err(_) => return false,
            };
        }
        *free -= n;
        true
    }

    fn give(&self, n: u64) {
        if let Ok(mut free) = self.free.lock() {
            *free += n;
        }
        self.cv.notify_all();
    }
}

/// State shared with the senders.
struct Shared {
    budget: Budget,
    /// Set on the first failure or on a signal: everything stops.
    stop: AtomicBool,
    error: Mutex<Option<StoreError>>,
}

impl Shared {
    fn fail(&self, e: StoreError) {
        if let Ok(mut slot) = self.error.lock() {
            if slot.is_none() {
                *slot = Some(e);
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        self.budget.cv.notify_all();
    }

    fn take_error(&self) -> Option<StoreError> {
        self.error.lock().ok().and_then(|mut s| s.take())
    }
}

struct Part {
    number: u32,
    offset: u64,
    body: PartBody,
    /// Budget bytes to give back once sent.
    held: u64,
}

enum Filling {
    Memory(Vec<u8>),
    Spool(tempfile::NamedTempFile, u64),
}

/// Cuts the object's bytes into parts and hands them to the senders; digests them on the way.
struct PartWriter {
    shared: Arc<Shared>,
    tx: Option<Sender<Part>>,
    first_part: u64,
    budget: u64,
    spool_dir: Option<PathBuf>,
    number: u32,
    /// Bytes of the object so far.
    offset: u64,
    /// Offset where the part being filled starts.
    part_start: u64,
    current: Option<(Filling, u64, u64)>, // (buffer, size, held)
    digest: blake3::Hasher,
}

fn stopped() -> io::Error {
    io::Error::other("upload stopped")
}

impl PartWriter {
    fn open_part(&mut self) -> io::Result<()> {
        let number = self.number + 1;
        if number > parts::MAX_PARTS {
            return Err(io::Error::other(format!(
                "the object exceeds {} parts ({} bytes so far): the stream is larger than S3 allows",
                parts::MAX_PARTS,
                self.offset
            )));
        }
        let size = parts::part_size(self.first_part, number);
        let filling = match parts::holding(size, self.budget) {
            Holding::Memory => {
                if !self.shared.budget.take(size, &self.shared.stop) {
                    return Err(stopped());
                }
                (
                    Filling::Memory(Vec::with_capacity(size as usize)),
                    size,
                    size,
                )
            }
            Holding::Spool => {
                let dir = self.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
                let f = tempfile::Builder::new()
                    .prefix("xbagent-part-")
                    .tempfile_in(&dir)
                    .map_err(|e| {
                        io::Error::other(format!(
                            "cannot create a spool file in {}: {e}",
                            dir.display()
                        ))
                    })?;
                if number == 1
                    || parts::holding(parts::part_size(self.first_part, number - 1), self.budget)
                        == Holding::Memory
                {
                    tracing::info!(
                        "parts of {} MiB exceed the memory budget: spooling them to {}",
                        size >> 20,
                        dir.display()
                    );
                }
                (Filling::Spool(f, 0), size, 0)
            }
        };
        self.number = number;
        self.part_start = self.offset;
        self.current = Some(filling);
        Ok(())
    }

    fn send_current(&mut self) -> io::Result<()> {
        let Some((filling, _, held)) = self.current.take() else {
            return Ok(());
        };
        let body = match filling {
            Filling::Memory(v) => PartBody::Memory(Bytes::from(v)),
            Filling::Spool(mut f, len) => {
                f.flush()?;
                PartBody::Spooled { file: f, len }
            }
        };
        let part = Part {
            number: self.number,
            offset: self.part_start,
            body,
            held,
        };
        match &self.tx {
            Some(tx) if !self.shared.stop.load(Ordering::SeqCst) => {
                tx.send(part).map_err(|_| stopped())
            }
            _ => Err(stopped()),
        }
    }

    /// Send the last part (an empty object still gets one part) and close the senders' queue.
    fn finish(mut self) -> io::Result<(u32, u64, String)> {
        if self.current.is_none() && self.number == 0 {
            self.open_part()?;
        }
        self.send_current()?;
        self.tx = None;
        Ok((
            self.number,
            self.offset,
            self.digest.finalize().to_hex().to_string(),
        ))
    }
}

impl Write for PartWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if self.shared.stop.load(Ordering::SeqCst) {
            return Err(stopped());
        }
        if self.current.is_none() {
            self.open_part()?;
        }
        let Some((filling, size, _)) = &mut self.current else {
            return Err(stopped());
        };
        let filled = self.offset - self.part_start;
        let n = ((*size - filled) as usize).min(data.len());
        match filling {
            Filling::Memory(v) => v.extend_from_slice(&data[..n]),
            Filling::Spool(f, len) => {
                f.write_all(&data[..n])?;
                *len += n as u64;
            }
        }
        self.digest.update(&data[..n]);
        self.offset += n as u64;
        if self.offset - self.part_start == *size {
            self.send_current()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where the object's bytes go: straight to the parts, or through zstd first.
enum Sink {
    Plain(PartWriter),
    Zstd(zstd::stream::write::Encoder<'static, PartWriter>),
}

impl Sink {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.write_all(data),
            Sink::Zstd(z) => z.write_all(data),
        }
    }

    fn finish(self) -> io::Result<(u32, u64, String)> {
        match self {
            Sink::Plain(w) => w.finish(),
            Sink::Zstd(z) => z.finish()?.finish(),
        }
    }
}

fn sender(up: Arc<dyn Upload>, rx: Receiver<Part>, shared: Arc<Shared>) {
    for part in rx {
        if !shared.stop.load(Ordering::SeqCst) {
            tracing::debug!(part = part.number, bytes = part.body.len(), "sending part");
            if let Err(e) = up.put_part(part.number, part.offset, &part.body) {
                shared.fail(e);
            }
        }
        shared.budget.give(part.held);
    }
}

/// zstd workers: at most 4, so the fixed reserve covers their buffers on any machine.
fn zstd_threads() -> usize {
    thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(4)
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Upload a backup. `shutdown` is set by SIGINT/SIGTERM: the upload is then aborted.
pub fn upload(
    repo: &dyn Repository,
    opts: &UploadOptions,
    progress: &Progress,
    shutdown: &AtomicBool,
) -> Result<Uploaded, BackupError> {
    opts.validate().map_err(BackupError::Refused)?;
    let started_at = SystemTime::now();
    let id = opts.id.clone().unwrap_or_else(|| id_for(started_at));
    if !is_valid_id(&id) {
        return Err(BackupError::Refused(format!(
            "'{id}' is not a backup id (YYYYMMDDTHHMMSS.mmmZ)"
        )));
    }
    if !repo.list(&format!("{id}/"))?.is_empty() {
        return Err(BackupError::Exists {
            id,
            repo: repo.describe(),
        });
    }
    let started = now_rfc3339();
    let source_info = SourceInfo {
        kind: opts.source.kind().to_string(),
        detail: opts.source.describe(),
    };
    let marker = serde_json::json!({
        "id": id,
        "tool": format!("xbagent {}", env!("CARGO_PKG_VERSION")),
        "started": started,
        "source": source_info,
    });
    repo.put(
        &format!("{id}/{STARTED}"),
        Bytes::from(marker.to_string().into_bytes()),
    )?;
    let object = if opts.compress.is_some() {
        super::STREAM_ZSTD
    } else {
        super::STREAM
    };
    let key = format!("{id}/{object}");
    tracing::info!(
        "uploading backup {id} to {} ({})",
        repo.describe(),
        source_info.detail
    );

    let up: Arc<dyn Upload> = match repo.start_upload(&key) {
        Ok(u) => Arc::from(u),
        Err(e) => {
            let _ = repo.delete(&format!("{id}/{STARTED}"));
            return Err(e.into());
        }
    };
    match stream_parts(repo, opts, &id, &key, up.clone(), progress, shutdown) {
        Ok((parts_n, size, digest, totals, ledger, status)) => {
            let manifest = Manifest {
                format: manifest::FORMAT,
                tool: format!("xbagent {}", env!("CARGO_PKG_VERSION")),
                id: id.clone(),
                started,
                finished: now_rfc3339(),
                source: source_info,
                producer_exit_status: status,
                compression: match opts.compress {
                    Some(l) => format!("zstd:{l}"),
                    None => "none".into(),
                },
                object: ObjectEntry {
                    key: object.to_string(),
                    size,
                    blake3: digest,
                    parts: parts_n,
                },
                stream: manifest::stream_entry(&totals),
                files: manifest::files_of(&ledger),
            };
            let body = serde_json::to_vec_pretty(&manifest)
                .map_err(|e| StoreError::Setup(format!("cannot encode the manifest: {e}")))?;
            // Written last: until this succeeds the backup is incomplete.
            repo.put(&format!("{id}/{MANIFEST}"), Bytes::from(body))?;
            let _ = repo.delete(&format!("{id}/{STARTED}"));
            tracing::info!(
                "backup {id} complete: {} files, {} stream bytes, {size} bytes stored in {parts_n} parts",
                manifest.stream.files,
                manifest.stream.bytes
            );
            Ok(Uploaded { manifest })
        }
        Err(e) => {
            tracing::warn!("upload of {id} failed: {e}; aborting it");
            match up.abort() {
                // A failed upload leaves nothing behind (a killed one leaves started.json,
                // which `list` shows as incomplete and `prune` removes).
                Ok(()) => {
                    let _ = repo.delete(&format!("{id}/{STARTED}"));
                }
                // Keep started.json so that `prune` finds the backup and aborts the upload.
                Err(ae) => tracing::warn!(
                    "could not abort the multipart upload of {key}: {ae} (`xbagent backups prune` removes it later)"
                ),
            }
            Err(e)
        }
    }
}

type Streamed = (
    u32,
    u64,
    String,
    crate::stream::sink::StreamTotals,
    Ledger,
    i32,
);

#[allow(clippy::too_many_arguments)]
fn stream_parts(
    repo: &dyn Repository,
    opts: &UploadOptions,
    id: &str,
    key: &str,
    up: Arc<dyn Upload>,
    progress: &Progress,
    shutdown: &AtomicBool,
) -> Result<Streamed, BackupError> {
    let budget = opts.memory_limit - opts.reserve();
    let shared = Arc::new(Shared {
        budget: Budget {
            free: Mutex::new(budget),
            cv: Condvar::new(),
        },
        stop: AtomicBool::new(false),
        error: Mutex::new(None),
    });
    let (tx, rx) = bounded::<Part>(0);
    let senders: Vec<_> = (0..opts.concurrency)
        .map(|_| {
            let (up, rx, sh) = (up.clone(), rx.clone(), shared.clone());
            thread::spawn(move || sender(up, rx, sh))
        })
        .collect();
    drop(rx);
    let writer = PartWriter {
        shared: shared.clone(),
        tx: Some(tx),
        first_part: opts.first_part,
        budget,
        spool_dir: opts.spool_dir.clone(),
        number: 0,
        offset: 0,
        part_start: 0,
        current: None,
        digest: blake3::Hasher::new(),
    };
    let result = (|| {
        let mut sink = match opts.compress {
            None => Sink::Plain(writer),
            Some(level) => {
                let mut z = zstd::stream::write::Encoder::new(writer, level)
                    .map_err(|e| StoreError::Setup(format!("zstd: {e}")))?;
                let threads = zstd_threads();
                z.multithread(threads as u32)
                    .map_err(|e| StoreError::Setup(format!("zstd: {e}")))?;
                z.include_checksum(true)
                    .map_err(|e| StoreError::Setup(format!("zstd: {e}")))?;
                // 2 MiB jobs instead of zstd's default (4 windows, 8 MiB at level 3): each
                // worker holds a few jobs' input and output, so this bounds its memory.
                z.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB as u32))
                    .map_err(|e| StoreError::Setup(format!("zstd: {e}")))?;
                Sink::Zstd(z)
            }
        };
        let mut src = Running::start(&opts.source, opts.parallel, 0, 1 << 20)
            .map_err(BackupError::SourceFailed)?;
        let mut checker = StreamChecker::with_ledger(opts.decode, Ledger::with_crcs());
        let mut read = 0u64;
        let io_fail = |e: io::Error, shared: &Shared| -> BackupError {
            match shared.take_error() {
                Some(se) => se.into(),
                None if shutdown.load(Ordering::SeqCst) => {
                    BackupError::Interrupted("SIGINT/SIGTERM received".into())
                }
                None => StoreError::Setup(format!("writing the object: {e}")).into(),
            }
        };
        loop {
            if shutdown.load(Ordering::SeqCst) {
                shared.stop.store(true, Ordering::SeqCst);
                src.stop();
                return Err(BackupError::Interrupted("SIGINT/SIGTERM received".into()));
            }
            if shared.stop.load(Ordering::SeqCst) {
                src.stop();
                return Err(io_fail(stopped(), &shared));
            }
            match src.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Piece::Data(buf, n)) => {
                    let data = &buf[..n];
                    if let Err(e) = checker.push(data) {
                        src.stop();
                        return Err(BackupError::BadSource(e.to_string()));
                    }
                    if let Err(e) = sink.write_all(data) {
                        src.stop();
                        shared.stop.store(true, Ordering::SeqCst);
                        return Err(io_fail(e, &shared));
                    }
                    read += n as u64;
                    progress.set_position(read);
                    src.recycle(buf);
                }
                Ok(Piece::End) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(Piece::Failed(e)) => {
                    src.stop();
                    return Err(BackupError::SourceFailed(format!(
                        "reading the source: {e}"
                    )));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        let status = src.status();
        if status != 0 {
            return Err(match &opts.source {
                Source::Exec(_) => BackupError::ProducerFailed(status),
                _ => BackupError::SourceFailed(format!(
                    "streaming {} failed",
                    opts.source.describe()
                )),
            });
        }
        let (totals, ledger) = checker
            .finish_with_ledger()
            .map_err(|e| BackupError::BadSource(e.to_string()))?;
        if totals.bytes == 0 {
            return Err(BackupError::BadSource(format!(
                "{} produced no bytes: nothing to back up",
                opts.source.describe()
            )));
        }
        let (parts_n, size, digest) = sink.finish().map_err(|e| io_fail(e, &shared))?;
        Ok((parts_n, size, digest, totals, ledger, status))
    })();
    if result.is_err() {
        shared.stop.store(true, Ordering::SeqCst);
    }
    // The writer (and its queue) is gone by now: the senders finish what they hold and stop.
    for s in senders {
        let _ = s.join();
    }
    let (parts_n, size, digest, totals, ledger, status) = result?;
    if let Some(e) = shared.take_error() {
        return Err(e.into());
    }
    if shutdown.load(Ordering::SeqCst) {
        return Err(BackupError::Interrupted("SIGINT/SIGTERM received".into()));
    }
    if let Err(e) = up.complete(parts_n, size) {
        // A retried completion whose first answer was lost fails with NoSuchUpload although the
        // object is whole: believe the store if it holds an object of exactly our size.
        match repo.size(key) {
            Ok(Some(s)) if s == size => {
                tracing::warn!("completing the upload reported '{e}', but the object is there with all {size} bytes: continuing")
            }
            _ => return Err(e.into()),
        }
    }
    // The store must hold what we sent, byte for byte in length, before a manifest says so.
    match repo.size(key)? {
        Some(s) if s == size => {}
        other => {
            return Err(StoreError::Remote {
                op: "HeadObject",
                key: key.to_string(),
                repo: repo.describe(),
                message: format!(
                    "backup {id}: stored object has {other:?} bytes, {size} were sent"
                ),
            }
            .into())
        }
    }
    Ok((parts_n, size, digest, totals, ledger, status))
}
