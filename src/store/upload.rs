//! `xbagent upload`: a stream from a producer command, a directory, a file or stdin, checked
//! by the one decoder as it passes, optionally compressed, and written as one multipart object;
//! the manifest is written last, and only if everything before it succeeded.
//!
//! Threads: the source's reader; this thread (the checked pump of [`crate::stream::pump`], then
//! compress, digest, cut into parts); `--concurrency` senders. Memory: the part buffers are
//! bounded by a byte budget (the memory limit less a fixed reserve); parts too large for it
//! are spooled to temporary files.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, Sender};

use super::address::{id_for, is_valid_id};
use super::manifest::{self, Manifest, ObjectEntry, SourceInfo};
use super::parts::{self, Holding};
use super::position::SharedCapture;
use super::seal::{self, Recipients};
use super::{BackupError, PartBody, Repository, StoreError, Upload, MANIFEST, STARTED};
use crate::format::{DecodeOptions, Ledger};
use crate::progress::Progress;
use crate::stream::check::StreamChecker;
use crate::stream::pump::{pump, CheckedPiece, Forward, PumpError, PumpSettings};
use crate::stream::sink::StreamTotals;
use crate::stream::source::Source;
use crate::throttle::RateLimit;
use crate::workers::{ByteBudget, FirstError};

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
    /// Seal the backup for these recipients (none: stored in the clear).
    pub recipients: Recipients,
    /// Stream bytes read from the source, per second at most (`--rate-limit`).
    pub rate_limit: Option<RateLimit>,
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
            recipients: Recipients::default(),
            rate_limit: None,
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
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.first_part < parts::MIN_FIRST_PART || self.first_part > parts::MAX_PART {
            return Err(OptionsError::PartSize {
                min: parts::MIN_FIRST_PART,
                max: parts::MAX_PART,
            });
        }
        let min = self.reserve() + parts::MIN_FIRST_PART;
        if self.memory_limit < min {
            return Err(OptionsError::MemoryLimit { min_mib: min >> 20 });
        }
        if self.concurrency == 0 || self.concurrency > 64 {
            return Err(OptionsError::Concurrency);
        }
        if let Some(l) = self.compress {
            if !(1..=19).contains(&l) {
                return Err(OptionsError::ZstdLevel);
            }
        }
        Ok(())
    }
}

/// Upload settings that cannot work together, refused before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("--part-size must be between {min} and {max} bytes")]
    PartSize { min: u64, max: u64 },
    #[error("--memory-limit must be at least {min_mib} MiB with these settings")]
    MemoryLimit { min_mib: u64 },
    #[error("--concurrency must be between 1 and 64")]
    Concurrency,
    #[error("zstd level must be between 1 and 19")]
    ZstdLevel,
}

/// The result of a good upload.
#[derive(Debug)]
pub struct Uploaded {
    pub manifest: Manifest,
}

/// State shared by the part filler and the senders: the part buffers' byte budget, and the
/// first error (which stops everything).
struct Shared {
    budget: ByteBudget,
    run: FirstError<StoreError>,
}

impl Shared {
    fn new(budget: u64) -> Self {
        Shared {
            budget: ByteBudget::new(budget),
            run: FirstError::new(),
        }
    }

    /// A sender failed: keep the first error and stop everything.
    fn fail(&self, e: StoreError) {
        self.run.fail(e);
        self.budget.close();
    }

    /// Stop everything without an error of our own (a signal, or the pump gave up).
    fn stop(&self) {
        self.run.stop();
        self.budget.close();
    }

    fn is_stopped(&self) -> bool {
        self.run.is_stopped()
    }

    fn take_error(&self) -> Option<StoreError> {
        self.run.take()
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

/// The part being filled.
struct OpenPart {
    filling: Filling,
    /// Bytes it takes before it is sent.
    size: u64,
    /// Budget bytes it holds.
    held: u64,
}

/// What the part writer wrote: the object's parts, size and blake3 (hex); when sealed, the
/// plaintext's size and digest.
struct Written {
    parts: u32,
    size: u64,
    digest: String,
    plain: Option<seal::Plain>,
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
    current: Option<OpenPart>,
    digest: blake3::Hasher,
}

fn stopped() -> io::Error {
    io::Error::other("upload stopped")
}

impl PartWriter {
    fn new(shared: Arc<Shared>, tx: Sender<Part>, opts: &UploadOptions, budget: u64) -> Self {
        PartWriter {
            shared,
            tx: Some(tx),
            first_part: opts.first_part,
            budget,
            spool_dir: opts.spool_dir.clone(),
            number: 0,
            offset: 0,
            part_start: 0,
            current: None,
            digest: blake3::Hasher::new(),
        }
    }

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
                if !self.shared.budget.acquire(size) {
                    return Err(stopped());
                }
                OpenPart {
                    filling: Filling::Memory(Vec::with_capacity(size as usize)),
                    size,
                    held: size,
                }
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
                OpenPart {
                    filling: Filling::Spool(f, 0),
                    size,
                    held: 0,
                }
            }
        };
        self.number = number;
        self.part_start = self.offset;
        self.current = Some(filling);
        Ok(())
    }

    fn send_current(&mut self) -> io::Result<()> {
        let Some(OpenPart { filling, held, .. }) = self.current.take() else {
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
            Some(tx) if !self.shared.is_stopped() => tx.send(part).map_err(|_| stopped()),
            _ => Err(stopped()),
        }
    }

    /// Send the last part (an empty object still gets one part) and close the senders' queue.
    fn finish(mut self) -> io::Result<Written> {
        if self.current.is_none() && self.number == 0 {
            self.open_part()?;
        }
        self.send_current()?;
        self.tx = None;
        Ok(Written {
            parts: self.number,
            size: self.offset,
            digest: self.digest.finalize().to_hex().to_string(),
            plain: None,
        })
    }
}

impl Write for PartWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if self.shared.is_stopped() {
            return Err(stopped());
        }
        if self.current.is_none() {
            self.open_part()?;
        }
        let Some(OpenPart { filling, size, .. }) = &mut self.current else {
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

/// The object's bytes after compression: to the parts as they are, or sealed with age first
/// on a thread of its own (age, the plaintext's digest and the part writer's copy and digest
/// cost about as much CPU as the rest of the upload; in line they would slow the pump).
enum Sealer {
    Clear(Box<PartWriter>),
    Piped(SealPipe),
}

/// The pump's end of the sealing thread.
struct SealPipe {
    tx: Option<Sender<Vec<u8>>>,
    worker: Option<thread::JoinHandle<io::Result<Written>>>,
    /// Set when the upload is abandoned: the thread then stops without writing the last part.
    abandon: Arc<AtomicBool>,
}

/// Pieces in flight to the sealing thread (each at most a pump piece, 1 MiB).
const SEAL_QUEUE: usize = 4;

/// The sealing thread's writer: age over the parts, digesting the plaintext on the way (a
/// restore checks what it opens against it).
struct Sealing {
    w: age::stream::StreamWriter<PartWriter>,
    digest: blake3::Hasher,
    len: u64,
    abandon: Arc<AtomicBool>,
}

impl Sealing {
    fn run(mut self, rx: Receiver<Vec<u8>>) -> io::Result<Written> {
        for piece in rx {
            self.w.write_all(&piece)?;
            self.digest.update(&piece);
            self.len += piece.len() as u64;
        }
        if self.abandon.load(Ordering::SeqCst) {
            return Err(stopped());
        }
        let mut written = self.w.finish()?.finish()?;
        written.plain = Some(seal::Plain {
            size: self.len,
            blake3: self.digest.finalize().to_hex().to_string(),
        });
        Ok(written)
    }
}

impl SealPipe {
    fn start(parts: PartWriter, recipients: &Recipients) -> Result<Self, BackupError> {
        let w = recipients
            .seal(parts)
            .map_err(|e| StoreError::Setup(format!("age: {e}")))?;
        let abandon = Arc::new(AtomicBool::new(false));
        let sealing = Sealing {
            w,
            digest: blake3::Hasher::new(),
            len: 0,
            abandon: abandon.clone(),
        };
        let (tx, rx) = bounded::<Vec<u8>>(SEAL_QUEUE);
        let worker = thread::Builder::new()
            .name("seal".into())
            .spawn(move || sealing.run(rx))
            .map_err(|e| StoreError::Setup(format!("cannot start the sealing thread: {e}")))?;
        Ok(SealPipe {
            tx: Some(tx),
            worker: Some(worker),
            abandon,
        })
    }

    /// The sealing thread's result.
    fn join(&mut self) -> io::Result<Written> {
        self.tx = None;
        match self.worker.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the sealing thread panicked")),
            None => Err(stopped()),
        }
    }

    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(t) = &self.tx {
            if t.send(data.to_vec()).is_ok() {
                return Ok(data.len());
            }
        }
        // The thread stopped: its error is the cause.
        match self.join() {
            Err(e) => Err(e),
            Ok(_) => Err(stopped()),
        }
    }
}

impl Drop for SealPipe {
    /// Dropped unfinished (the upload failed): the thread stops without its last part, and is
    /// joined, so nothing of it outlives the upload.
    fn drop(&mut self) {
        if self.worker.is_some() {
            self.abandon.store(true, Ordering::SeqCst);
            let _ = self.join();
        }
    }
}

impl Sealer {
    fn new(parts: PartWriter, recipients: &Recipients) -> Result<Self, BackupError> {
        if recipients.is_empty() {
            return Ok(Sealer::Clear(Box::new(parts)));
        }
        Ok(Sealer::Piped(SealPipe::start(parts, recipients)?))
    }

    fn finish(self) -> io::Result<Written> {
        match self {
            Sealer::Clear(w) => w.finish(),
            Sealer::Piped(mut p) => p.join(),
        }
    }
}

impl Write for Sealer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Sealer::Clear(w) => w.write(data),
            Sealer::Piped(p) => p.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealer::Clear(w) => w.flush(),
            Sealer::Piped(_) => Ok(()),
        }
    }
}

/// Where the object's bytes go: straight on, or through zstd first.
enum ObjectWriter {
    Plain(Sealer),
    Zstd(zstd::stream::write::Encoder<'static, Sealer>),
}

impl ObjectWriter {
    fn new(writer: Sealer, compress: Option<i32>) -> Result<Self, BackupError> {
        let Some(level) = compress else {
            return Ok(ObjectWriter::Plain(writer));
        };
        let zstd_err = |e: io::Error| StoreError::Setup(format!("zstd: {e}"));
        let mut z = zstd::stream::write::Encoder::new(writer, level).map_err(zstd_err)?;
        z.multithread(zstd_threads() as u32).map_err(zstd_err)?;
        z.include_checksum(true).map_err(zstd_err)?;
        // 2 MiB jobs instead of zstd's default (4 windows, 8 MiB at level 3): each
        // worker holds a few jobs' input and output, so this bounds its memory.
        z.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB as u32))
            .map_err(zstd_err)?;
        Ok(ObjectWriter::Zstd(z))
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            ObjectWriter::Plain(w) => w.write_all(data),
            ObjectWriter::Zstd(z) => z.write_all(data),
        }
    }

    fn finish(self) -> io::Result<Written> {
        match self {
            ObjectWriter::Plain(w) => w.finish(),
            ObjectWriter::Zstd(z) => z.finish()?.finish(),
        }
    }
}

fn sender(up: Arc<dyn Upload>, rx: Receiver<Part>, shared: Arc<Shared>) {
    for part in rx {
        if !shared.is_stopped() {
            tracing::debug!(part = part.number, bytes = part.body.len(), "sending part");
            if let Err(e) = up.put_part(part.number, part.offset, &part.body) {
                shared.fail(e);
            }
        }
        shared.budget.release(part.held);
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
    let backup = Backup::begin(repo, opts)?;
    // Log lines from here on carry the backup id (as a field in the JSON log format).
    let _span = tracing::info_span!("backup", id = %backup.id).entered();
    let up: Arc<dyn Upload> = match repo.start_upload(&backup.key) {
        Ok(u) => Arc::from(u),
        Err(e) => {
            drop_started(repo, &backup.id, &backup.owner);
            return Err(e.into());
        }
    };
    let dest = Destination {
        repo,
        id: &backup.id,
        key: &backup.key,
        owner: &backup.owner,
        up,
    };
    match stream_parts(&dest, opts, progress, shutdown) {
        Ok(sent) => backup.write_manifest(repo, opts, sent),
        Err(e) => {
            dest.abort(&e);
            Err(e)
        }
    }
}

/// A backup being made: its id, its stream object and the `started.json` it announced.
struct Backup {
    id: String,
    /// Name of the stream object within the backup (plain or zstd, sealed or not).
    object: String,
    /// The stream object's key in the repository.
    key: String,
    started: String,
    source: SourceInfo,
    /// A random token in our `started.json`: only the upload that wrote it deletes it.
    owner: String,
}

/// A random token naming this upload (not a secret: it only tells two uploads apart).
fn owner_token() -> String {
    let mut b = [0u8; 16];
    let mut filled = 0;
    while filled < b.len() {
        match rustix::rand::getrandom(&mut b[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            // No randomness: time and pid still tell two uploads apart.
            Err(_) => break,
        }
    }
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{hex}-{}-{nanos}", std::process::id())
}

/// The owner token of backup `id`'s `started.json`, if it can be read and has one.
fn started_owner(repo: &dyn Repository, id: &str) -> Option<String> {
    let data = repo.get(&format!("{id}/{STARTED}"), 64 << 10).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&data).ok()?;
    v.get("owner")?.as_str().map(str::to_string)
}

/// Delete backup `id`'s `started.json` only if it is ours: an upload that lost a race for the
/// id (or any other) must not remove the winner's.
fn drop_started(repo: &dyn Repository, id: &str, owner: &str) {
    if started_owner(repo, id).as_deref() == Some(owner) {
        let _ = repo.delete(&format!("{id}/{STARTED}"));
    } else {
        tracing::warn!("{id}/{STARTED} is not this upload's: left in place");
    }
}

impl Backup {
    /// Check the settings and the id, refuse an existing backup, and write `started.json`.
    fn begin(repo: &dyn Repository, opts: &UploadOptions) -> Result<Backup, BackupError> {
        opts.validate()?;
        let id = opts.id.clone().unwrap_or_else(|| id_for(SystemTime::now()));
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
        let object = match (opts.compress.is_some(), opts.recipients.is_empty()) {
            (true, true) => super::STREAM_ZSTD.to_string(),
            (false, true) => super::STREAM.to_string(),
            (true, false) => format!("{}{}", super::STREAM_ZSTD, seal::SUFFIX),
            (false, false) => format!("{}{}", super::STREAM, seal::SUFFIX),
        };
        let backup = Backup {
            key: format!("{id}/{object}"),
            id,
            object,
            started: now_rfc3339(),
            source: SourceInfo {
                kind: opts.source.kind().to_string(),
                detail: opts.source.describe(),
            },
            owner: owner_token(),
        };
        // A sealed backup's source command stays out of the clear (it may name databases).
        let source = if opts.recipients.is_empty() {
            backup.source.clone()
        } else {
            SourceInfo {
                kind: backup.source.kind.clone(),
                detail: String::new(),
            }
        };
        let marker = serde_json::json!({
            "id": backup.id,
            "tool": format!("xbagent {}", env!("CARGO_PKG_VERSION")),
            "started": backup.started,
            "source": source,
            "owner": backup.owner,
        });
        // Created only if absent: of two uploads given the same id, one wins and the other
        // stops here, having written nothing. A lost answer to our own write, retried, also
        // finds the key taken: the owner token read back tells that case apart.
        let created = repo.put_new(
            &backup.started_key(),
            Bytes::from(marker.to_string().into_bytes()),
        )?;
        // Read back: a store whose conditional write is not atomic (or that has none) may
        // let a concurrent writer replace ours; whoever's token is there owns the id. A
        // read-back that fails after a clean create trusts the create.
        let won = match started_owner(repo, &backup.id) {
            Some(o) => o == backup.owner,
            None => created,
        };
        if !won {
            return Err(BackupError::Exists {
                id: backup.id,
                repo: repo.describe(),
            });
        }
        tracing::info!(
            "uploading backup {} to {} ({})",
            backup.id,
            repo.describe(),
            backup.source.detail
        );
        Ok(backup)
    }

    fn started_key(&self) -> String {
        format!("{}/{STARTED}", self.id)
    }

    /// Write the manifest (last: until it is written the backup is incomplete), then drop
    /// `started.json`.
    fn write_manifest(
        self,
        repo: &dyn Repository,
        opts: &UploadOptions,
        sent: Sent,
    ) -> Result<Uploaded, BackupError> {
        let id = self.id.clone();
        let owner = self.owner.clone();
        let mut manifest = Manifest {
            format: manifest::FORMAT,
            tool: format!("xbagent {}", env!("CARGO_PKG_VERSION")),
            id: self.id,
            started: self.started,
            finished: now_rfc3339(),
            source: self.source,
            producer_exit_status: sent.exit_status,
            compression: match opts.compress {
                Some(l) => format!("zstd:{l}"),
                None => "none".into(),
            },
            object: ObjectEntry {
                key: self.object.clone(),
                size: sent.object.size,
                blake3: sent.object.digest,
                parts: sent.object.parts,
            },
            stream: manifest::stream_entry(&sent.totals),
            files: manifest::files_of(&sent.ledger),
            binlog: sent.position.binlog,
            checkpoints: sent.position.checkpoints,
            encryption: None,
        };
        if let Some(plain) = sent.object.plain {
            manifest.encryption = Some(seal_part(repo, &id, &mut manifest, opts, plain)?);
        }
        let body = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| StoreError::Setup(format!("cannot encode the manifest: {e}")))?;
        repo.put(&format!("{id}/{MANIFEST}"), Bytes::from(body))?;
        drop_started(repo, &id, &owner);
        tracing::info!(
            "backup {id} complete: {} files, {} stream bytes, {} bytes stored in {} parts",
            manifest.stream.files,
            manifest.stream.bytes,
            manifest.object.size,
            manifest.object.parts
        );
        Ok(Uploaded { manifest })
    }
}

/// Seal the manifest's file list and source into [`manifest::SEALED`] (written before the
/// manifest, so a complete backup always has it) and say so in the manifest.
fn seal_part(
    repo: &dyn Repository,
    id: &str,
    m: &mut Manifest,
    opts: &UploadOptions,
    plain: seal::Plain,
) -> Result<manifest::Encryption, BackupError> {
    let part = m.take_sealed_part();
    let json = serde_json::to_vec(&part)
        .map_err(|e| StoreError::Setup(format!("cannot encode the file list: {e}")))?;
    let sealed = opts
        .recipients
        .seal_bytes(&json)
        .map_err(|e| StoreError::Setup(format!("age: {e}")))?;
    let entry = manifest::SealedEntry {
        key: manifest::SEALED.into(),
        size: sealed.len() as u64,
        blake3: blake3::hash(&sealed).to_hex().to_string(),
    };
    repo.put(&format!("{id}/{}", manifest::SEALED), Bytes::from(sealed))?;
    Ok(manifest::Encryption {
        scheme: seal::SCHEME.into(),
        recipients: opts.recipients.strings(),
        plain_size: plain.size,
        plain_blake3: plain.blake3,
        sealed: entry,
    })
}

/// Where the object goes: which backup, which key, through which multipart upload.
struct Destination<'a> {
    repo: &'a dyn Repository,
    id: &'a str,
    key: &'a str,
    owner: &'a str,
    up: Arc<dyn Upload>,
}

impl Destination<'_> {
    /// The upload failed with `e`: abort the multipart upload.
    fn abort(&self, e: &BackupError) {
        tracing::warn!("upload of {} failed: {e}; aborting it", self.id);
        match self.up.abort() {
            // A failed upload leaves nothing behind (a killed one leaves started.json,
            // which `list` shows as incomplete and `prune` removes).
            Ok(()) => drop_started(self.repo, self.id, self.owner),
            // Keep started.json so that `prune` finds the backup and aborts the upload.
            Err(ae) => tracing::warn!(
                "could not abort the multipart upload of {}: {ae} (`xbagent backups prune` removes it later)",
                self.key
            ),
        }
    }

    /// Complete the multipart upload and check that the store holds all `size` bytes.
    fn complete(&self, parts: u32, size: u64) -> Result<(), BackupError> {
        if let Err(e) = self.up.complete(parts, size) {
            // A retried completion whose first answer was lost fails with NoSuchUpload although
            // the object is whole: believe the store if it holds an object of exactly our size.
            match self.repo.size(self.key) {
                Ok(Some(s)) if s == size => {
                    tracing::warn!("completing the upload reported '{e}', but the object is there with all {size} bytes: continuing")
                }
                _ => return Err(e.into()),
            }
        }
        // The store must hold what we sent, byte for byte in length, before a manifest says so.
        match self.repo.size(self.key)? {
            Some(s) if s == size => Ok(()),
            other => Err(StoreError::Remote {
                op: "HeadObject",
                key: self.key.to_string(),
                repo: self.repo.describe(),
                message: format!(
                    "backup {}: stored object has {other:?} bytes, {size} were sent",
                    self.id
                ),
            }
            .into()),
        }
    }
}

/// What a good upload sent: the object, what the checker saw in the stream, and the
/// producer's exit status.
struct Sent {
    object: Written,
    totals: StreamTotals,
    ledger: Ledger,
    exit_status: i32,
    /// Where the backup ends, from the info files captured as they passed.
    position: super::position::Position,
}

/// Run the source through the pump into parts, send them with `--concurrency` senders, and
/// complete the object.
fn stream_parts(
    dest: &Destination,
    opts: &UploadOptions,
    progress: &Progress,
    shutdown: &AtomicBool,
) -> Result<Sent, BackupError> {
    let budget = opts.memory_limit - opts.reserve();
    let shared = Arc::new(Shared::new(budget));
    let (tx, rx) = bounded::<Part>(0);
    let senders: Vec<_> = (0..opts.concurrency)
        .map(|_| {
            let (up, rx, sh) = (dest.up.clone(), rx.clone(), shared.clone());
            thread::spawn(move || sender(up, rx, sh))
        })
        .collect();
    drop(rx);
    let writer = PartWriter::new(shared.clone(), tx, opts, budget);
    let result = fill_parts(writer, opts, &shared, progress, shutdown);
    if result.is_err() {
        shared.stop();
    }
    // The writer (and its queue) is gone by now: the senders finish what they hold and stop.
    for s in senders {
        let _ = s.join();
    }
    let sent = result?;
    if let Some(e) = shared.take_error() {
        return Err(e.into());
    }
    if shutdown.load(Ordering::SeqCst) {
        return Err(interrupted());
    }
    dest.complete(sent.object.parts, sent.object.size)?;
    Ok(sent)
}

fn interrupted() -> BackupError {
    BackupError::Interrupted("SIGINT/SIGTERM received".into())
}

/// A write into the parts failed: the senders' error if one of them failed first (it is the
/// cause), the signal if there was one, else the write's own error.
fn write_failed(e: io::Error, shared: &Shared, shutdown: &AtomicBool) -> BackupError {
    match shared.take_error() {
        Some(se) => se.into(),
        None if shutdown.load(Ordering::SeqCst) => interrupted(),
        None => StoreError::Setup(format!("writing the object: {e}")).into(),
    }
}

/// Pump the source into the parts (through zstd if asked); check what the stream and the
/// producer's exit status say; close the last part.
fn fill_parts(
    writer: PartWriter,
    opts: &UploadOptions,
    shared: &Shared,
    progress: &Progress,
    shutdown: &AtomicBool,
) -> Result<Sent, BackupError> {
    let mut filler = PartFiller {
        object: ObjectWriter::new(Sealer::new(writer, &opts.recipients)?, opts.compress)?,
        shared,
        progress,
        read: 0,
    };
    let settings = PumpSettings {
        parallel: opts.parallel,
        headroom: 0,
        piece: 1 << 20,
        idle: Duration::from_millis(200),
        // The manifest's digest is the stored object's (compressed or not): the part writer
        // computes it.
        digest: false,
        rate_limit: opts.rate_limit,
    };
    // The info files saying where the backup ends are caught as their chunks pass: they are
    // never read again.
    let capture = SharedCapture::new();
    let checker = StreamChecker::with_ledger(opts.decode, Ledger::with_crcs())
        .with_tap(Box::new(capture.clone()));
    let pumped =
        pump(&opts.source, &settings, checker, &mut filler, shutdown).map_err(|e| match e {
            PumpError::Start(e) => BackupError::SourceFailed(e.to_string()),
            PumpError::Interrupted => interrupted(),
            PumpError::Read(e) => BackupError::SourceFailed(format!("reading the source: {e}")),
            PumpError::Defective(e) => BackupError::BadSource(e.to_string()),
            PumpError::Forward(e) => write_failed(e, shared, shutdown),
        })?;
    if pumped.exit_status != 0 {
        return Err(match &opts.source {
            Source::Exec(_) => BackupError::ProducerFailed(pumped.exit_status),
            _ => BackupError::SourceFailed(format!("streaming {} failed", opts.source.describe())),
        });
    }
    let (totals, ledger) = pumped
        .checked
        .map_err(|e| BackupError::BadSource(e.to_string()))?;
    if totals.bytes == 0 {
        return Err(BackupError::BadSource(format!(
            "{} produced no bytes: nothing to back up",
            opts.source.describe()
        )));
    }
    let object = filler
        .object
        .finish()
        .map_err(|e| write_failed(e, shared, shutdown))?;
    let position = capture.position();
    for w in &position.warnings {
        tracing::warn!("{w}");
    }
    Ok(Sent {
        object,
        totals,
        ledger,
        exit_status: pumped.exit_status,
        position,
    })
}

/// The pump's consumer in upload: writes each checked piece into the object and shows
/// progress; stops the pump once a sender has failed.
struct PartFiller<'a> {
    object: ObjectWriter,
    shared: &'a Shared,
    progress: &'a Progress,
    /// Stream bytes read so far.
    read: u64,
}

impl Forward for PartFiller<'_> {
    type Error = io::Error;

    fn check(&mut self) -> io::Result<()> {
        if self.shared.is_stopped() {
            return Err(stopped());
        }
        Ok(())
    }

    fn forward(&mut self, piece: CheckedPiece<'_>) -> io::Result<()> {
        self.object.write_all(piece.data())?;
        self.read += piece.data().len() as u64;
        self.progress.set_position(self.read);
        Ok(())
    }

    fn abort(&mut self) {
        // Senders stop taking parts now, not once the source has been stopped.
        self.shared.stop();
    }
}
