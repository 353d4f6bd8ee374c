//! `xbagent restore` and `xbagent verify REPO`: a backup read back with parallel ranged GETs
//! into one ordered stream (bounded read-ahead), digested, decompressed, decoded by the one
//! decoder, and either written by the extractor or only checked; then compared with the
//! manifest.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::manifest::{self, Manifest};
use super::seal::{self, Identities, RangeOpener};
use super::{BackupError, BackupRef, Repository, StoreError, MANIFEST};
use crate::extract::target::{Markers, Target};
use crate::extract::{DirWriter, ExtractError, TargetDir, WriterOptions};
use crate::format::{DecodeOptions, Ledger, LedgerEvent};
use crate::progress::Progress;
use crate::stream::error::StreamError;
use crate::stream::sink::{self, ChunkSink, StreamTotals};
use crate::workers::FirstError;

/// Marker in DIR while a restore runs; removed only when the restore is complete and checked.
pub const IN_PROGRESS: &str = ".xbagent-restore-in-progress";
/// Bytes per ranged GET.
pub const RANGE: u64 = 8 << 20;
/// Memory kept for everything but read-ahead: the decoder's chunk, the writers' queue, the
/// decompressor's window, the HTTP client.
pub const RESERVE: u64 = 64 << 20;

#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Ranged GETs in flight.
    pub concurrency: usize,
    pub memory_limit: u64,
    pub decode: DecodeOptions,
    /// Identities to open sealed backups with.
    pub identities: Arc<Identities>,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            concurrency: 4,
            memory_limit: 256 << 20,
            decode: DecodeOptions::default(),
            identities: Arc::new(Identities::default()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub dir: PathBuf,
    pub force: bool,
    /// Writer threads of the extractor.
    pub writers: usize,
    /// No O_DIRECT writes (see [`crate::extract::WriterOptions::direct`]).
    pub buffered: bool,
    pub read: ReadOptions,
}

/// What a restore or verify found.
#[derive(Debug)]
pub struct Checked {
    pub id: String,
    pub manifest: Manifest,
    pub totals: StreamTotals,
}

/// Find the backup `r` names (or the latest complete one) and read its manifest.
pub fn resolve(repo: &dyn Repository, r: &BackupRef) -> Result<(String, Manifest), BackupError> {
    let id = match r {
        BackupRef::Id(id) => id.clone(),
        BackupRef::Latest => super::retention::scan(repo)?
            .into_iter()
            .filter(|b| b.complete)
            .map(|b| b.id)
            .next_back()
            .ok_or_else(|| BackupError::NoSuchBackup {
                what: "(no complete backup at all)".into(),
                repo: repo.describe(),
            })?,
    };
    let data = match fetch_manifest(repo, &id) {
        Ok(d) => d,
        Err(BackupError::Store(StoreError::NotFound { .. })) => {
            return Err(if repo.list(&format!("{id}/"))?.is_empty() {
                BackupError::NoSuchBackup {
                    what: id,
                    repo: repo.describe(),
                }
            } else {
                BackupError::Incomplete {
                    id,
                    repo: repo.describe(),
                }
            })
        }
        Err(e) => return Err(e),
    };
    let m = Manifest::parse(&id, &data).map_err(|reason| BackupError::BadManifest {
        id: id.clone(),
        reason,
    })?;
    Ok((id, m))
}

/// [`resolve`], and for a sealed backup, open its sealed part with `ids` and put the file list
/// back in the manifest. Nothing but the manifest and the sealed part is read: a missing or
/// wrong identity is known before the stream is touched.
pub fn resolve_open(
    repo: &dyn Repository,
    r: &BackupRef,
    ids: &Identities,
) -> Result<(String, Manifest), BackupError> {
    let (id, mut m) = resolve(repo, r)?;
    unseal(repo, &id, &mut m, ids)?;
    Ok((id, m))
}

/// Open a sealed backup's file list (a clear backup is left as it is).
pub fn unseal(
    repo: &dyn Repository,
    id: &str,
    m: &mut Manifest,
    ids: &Identities,
) -> Result<(), BackupError> {
    let Some(enc) = m.encryption.clone() else {
        return Ok(());
    };
    let recipients = seal::describe(&enc.recipients);
    if ids.is_empty() {
        return Err(BackupError::NeedsIdentity {
            id: id.into(),
            recipients,
        });
    }
    let key = format!("{id}/{}", enc.sealed.key);
    let mismatch = |reason: String| BackupError::Mismatch {
        id: id.into(),
        reason,
    };
    let data = match repo.get(&key, enc.sealed.size) {
        Ok(d) => d,
        Err(StoreError::NotFound { .. }) => {
            return Err(mismatch(format!("{} is missing", enc.sealed.key)))
        }
        Err(e) => return Err(e.into()),
    };
    let digest = blake3::hash(&data).to_hex().to_string();
    if data.len() as u64 != enc.sealed.size || digest != enc.sealed.blake3 {
        return Err(mismatch(format!(
            "{} has {} bytes with digest {digest}; the manifest says {} bytes, {}",
            enc.sealed.key,
            data.len(),
            enc.sealed.size,
            enc.sealed.blake3
        )));
    }
    let plain = match ids.open_bytes(&data, manifest::MAX_SEALED) {
        Ok(p) => p,
        Err(seal::OpenError::NoMatch) => {
            return Err(BackupError::NoIdentity {
                id: id.into(),
                recipients,
                tried: seal::describe(&ids.recipients()),
            })
        }
        Err(seal::OpenError::Damaged(reason)) => {
            return Err(StoreError::Damaged {
                key,
                repo: repo.describe(),
                reason,
            }
            .into())
        }
    };
    let part: manifest::SealedPart = serde_json::from_slice(&plain)
        .map_err(|e| mismatch(format!("{} does not hold a file list: {e}", enc.sealed.key)))?;
    m.put_sealed_part(part).map_err(mismatch)
}

/// The bytes of backup `id`'s manifest. One larger than [`manifest::MAX_MANIFEST`] is refused
/// from its size alone, before any of it is read.
pub fn fetch_manifest(repo: &dyn Repository, id: &str) -> Result<bytes::Bytes, BackupError> {
    let key = format!("{id}/{MANIFEST}");
    let size = repo.size(&key)?.ok_or_else(|| StoreError::NotFound {
        key: key.clone(),
        repo: repo.describe(),
    })?;
    if size > manifest::MAX_MANIFEST {
        return Err(BackupError::BadManifest {
            id: id.into(),
            reason: format!(
                "{MANIFEST} is {size} bytes, more than the {} MiB a manifest may have: refused unread",
                manifest::MAX_MANIFEST >> 20
            ),
        });
    }
    Ok(repo.get(&key, manifest::MAX_MANIFEST)?)
}

struct FetchState {
    /// Fetched ranges not yet read: buffer and length.
    ready: BTreeMap<u64, (Vec<u8>, usize)>,
    /// Next range a fetcher takes.
    next_fetch: u64,
    /// Next range the reader needs.
    next_read: u64,
}

struct FetchShared {
    state: Mutex<FetchState>,
    cv: Condvar,
    /// The first failed GET, which stops every fetcher; stopped without an error once the
    /// reader is done. Raised under `state`'s lock, so a waiter on `cv` cannot miss it.
    run: FirstError<StoreError>,
    /// Range buffers, allocated once: read-ahead can never hold more than these.
    pool_tx: Sender<Vec<u8>>,
    pool_rx: Receiver<Vec<u8>>,
}

/// How the fetchers read a sealed object: each opens it with the identities and reads whole
/// STREAM chunks at their computed offsets (a plaintext range of [`RANGE`] bytes is one GET of
/// [`SEALED_RANGE`] bytes), decrypting in parallel.
#[derive(Clone)]
struct SealedSource {
    ids: Arc<Identities>,
    /// The stored object's size.
    stored: u64,
    /// Its first bytes (the header and nonce, checked), so that no fetcher GETs them again.
    prefix: Vec<u8>,
}

/// The sealed bytes of one plaintext [`RANGE`].
pub const SEALED_RANGE: u64 = RANGE / seal::CHUNK * seal::SEALED_CHUNK;

/// The object as one ordered stream, fetched by parallel ranged GETs at most `window` ranges
/// ahead of the reader (for a sealed object, opened by the fetchers). Digests what it
/// delivers.
struct FetchReader {
    shared: Arc<FetchShared>,
    ranges: u64,
    /// The range being read: buffer, length, position.
    current: Option<(Vec<u8>, usize, usize)>,
    delivered: u64,
    digest: blake3::Hasher,
    threads: Vec<thread::JoinHandle<()>>,
    progress: Arc<Progress>,
    shutdown: Arc<AtomicBool>,
}

impl FetchReader {
    fn start(
        repo: Arc<dyn Repository>,
        key: String,
        size: u64,
        opts: &ReadOptions,
        sealed: Option<SealedSource>,
        progress: Arc<Progress>,
        shutdown: Arc<AtomicBool>,
    ) -> Self {
        let ranges = size.div_ceil(RANGE);
        // A sealed object's fetchers each hold one sealed range as well.
        let held = match sealed {
            Some(_) => opts.concurrency.max(1) as u64 * SEALED_RANGE,
            None => 0,
        };
        let budget = opts
            .memory_limit
            .saturating_sub(RESERVE + held)
            .max(2 * RANGE);
        let window = (budget / RANGE).clamp(2, 2 * opts.concurrency as u64 + 2);
        let (pool_tx, pool_rx) = crossbeam_channel::bounded(window as usize);
        for _ in 0..window.min(ranges.max(1)) {
            let _ = pool_tx.send(vec![0u8; RANGE.min(size.max(1)) as usize]);
        }
        let shared = Arc::new(FetchShared {
            pool_tx,
            pool_rx,
            state: Mutex::new(FetchState {
                ready: BTreeMap::new(),
                next_fetch: 0,
                next_read: 0,
            }),
            cv: Condvar::new(),
            run: FirstError::new(),
        });
        let threads = (0..opts.concurrency.max(1))
            .map(|_| {
                let (repo, key, shared) = (repo.clone(), key.clone(), shared.clone());
                let sealed = sealed.clone();
                thread::spawn(move || {
                    let mut read = match &sealed {
                        None => RangeRead::Clear,
                        Some(s) => RangeRead::Sealed(s, None),
                    };
                    fetcher(&*repo, &key, size, ranges, window, &shared, &mut read)
                })
            })
            .collect();
        FetchReader {
            shared,
            ranges,
            current: None,
            delivered: 0,
            digest: blake3::Hasher::new(),
            threads,
            progress,
            shutdown,
        }
    }

    fn take_error(&self) -> Option<StoreError> {
        self.shared.run.take()
    }

    fn stop(&mut self) {
        {
            let _s = self.shared.state.lock();
            self.shared.run.stop();
        }
        self.shared.cv.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for FetchReader {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How one fetcher reads a range: as stored, or opened (its reader made at the first range).
enum RangeRead<'s, 'r> {
    Clear,
    Sealed(&'s SealedSource, Option<Box<RangeOpener<'r>>>),
}

impl<'r> RangeRead<'_, 'r> {
    fn read(
        &mut self,
        repo: &'r dyn Repository,
        key: &'r str,
        start: u64,
        buf: &mut [u8],
    ) -> Result<(), StoreError> {
        let (source, opener) = match self {
            RangeRead::Clear => return repo.read_range(key, start, buf),
            RangeRead::Sealed(s, o) => (*s, o),
        };
        let damaged = |reason: String| StoreError::Damaged {
            key: key.to_string(),
            repo: repo.describe(),
            reason,
        };
        let opener = match opener {
            Some(o) => o,
            None => {
                let o = RangeOpener::new(
                    &source.ids,
                    repo,
                    key,
                    source.stored,
                    source.prefix.clone(),
                    SEALED_RANGE,
                )
                .map_err(|e| damaged(e.to_string()))?;
                opener.insert(Box::new(o))
            }
        };
        opener.read_at(start, buf).map_err(|e| match e {
            seal::RangeError::Store(se) => se,
            seal::RangeError::Damaged(reason) => damaged(reason),
        })
    }
}

fn fetcher<'r>(
    repo: &'r dyn Repository,
    key: &'r str,
    size: u64,
    ranges: u64,
    window: u64,
    shared: &FetchShared,
    read: &mut RangeRead<'_, 'r>,
) {
    loop {
        // A buffer first, then a range: every range handed out has a buffer to land in.
        let mut buf = loop {
            match shared.pool_rx.recv_timeout(Duration::from_millis(200)) {
                Ok(b) => break b,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    let Ok(s) = shared.state.lock() else {
                        return;
                    };
                    if shared.run.is_stopped() || s.next_fetch >= ranges {
                        return;
                    }
                }
                Err(_) => return,
            }
        };
        let idx = {
            let Ok(mut s) = shared.state.lock() else {
                return;
            };
            loop {
                if shared.run.is_stopped() || s.next_fetch >= ranges {
                    return;
                }
                if s.next_fetch < s.next_read + window {
                    break;
                }
                s = match shared.cv.wait_timeout(s, Duration::from_millis(200)) {
                    Ok((g, _)) => g,
                    Err(_) => return,
                };
            }
            s.next_fetch += 1;
            s.next_fetch - 1
        };
        let start = idx * RANGE;
        let len = RANGE.min(size - start) as usize;
        let r = read.read(repo, key, start, &mut buf[..len]);
        let Ok(mut s) = shared.state.lock() else {
            return;
        };
        match r {
            Ok(()) => {
                s.ready.insert(idx, (buf, len));
            }
            Err(e) => {
                shared.run.fail(e);
            }
        }
        shared.cv.notify_all();
    }
}

impl Read for FetchReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.current.is_none() {
            let Ok(mut s) = self.shared.state.lock() else {
                return Err(io::Error::other("fetcher failed"));
            };
            if s.next_read >= self.ranges {
                return Ok(0);
            }
            loop {
                // The GET's own error is taken by the caller (`take_error`), not this one.
                if self.shared.run.is_stopped() {
                    return Err(io::Error::other("a ranged GET failed"));
                }
                if self.shutdown.load(Ordering::SeqCst) {
                    return Err(io::Error::other("interrupted"));
                }
                let want = s.next_read;
                if let Some((b, len)) = s.ready.remove(&want) {
                    s.next_read += 1;
                    self.current = Some((b, len, 0));
                    break;
                }
                s = match self.shared.cv.wait_timeout(s, Duration::from_millis(200)) {
                    Ok((g, _)) => g,
                    Err(_) => return Err(io::Error::other("fetcher failed")),
                };
            }
            drop(s);
            self.shared.cv.notify_all();
        }
        let Some((buf, len, pos)) = &mut self.current else {
            return Ok(0);
        };
        let n = out.len().min(*len - *pos);
        let data = &buf[*pos..*pos + n];
        out[..n].copy_from_slice(data);
        self.digest.update(data);
        *pos += n;
        self.delivered += n as u64;
        self.progress.set_position(self.delivered);
        if *pos == *len {
            if let Some((buf, _, _)) = self.current.take() {
                let _ = self.shared.pool_tx.send(buf);
            }
        }
        Ok(n)
    }
}

/// A sink that keeps nothing: `verify` only needs the ledger's verdicts.
struct Discard;

impl ChunkSink for Discard {
    type Error = StreamError;

    fn chunk(&mut self, _: crate::format::Chunk, _: &LedgerEvent) -> Result<(), StreamError> {
        Ok(())
    }
    fn finish(&mut self, _: &Ledger) -> Result<(), StreamError> {
        Ok(())
    }
}

/// One read of a backup's object: where it is, what it must match, and how to read it.
struct ReadJob<'a> {
    repo: Arc<dyn Repository>,
    id: &'a str,
    manifest: &'a Manifest,
    opts: &'a ReadOptions,
    progress: Arc<Progress>,
    shutdown: Arc<AtomicBool>,
}

impl ReadJob<'_> {
    fn mismatch(&self, reason: String) -> BackupError {
        BackupError::Mismatch {
            id: self.id.into(),
            reason,
        }
    }

    /// The object is there, with the size the manifest gives.
    fn check_size(&self, key: &str) -> Result<(), BackupError> {
        let m = self.manifest;
        match self.repo.size(key)? {
            Some(s) if s == m.object.size => Ok(()),
            Some(s) => Err(self.mismatch(format!(
                "{} has {s} bytes, the manifest says {}",
                m.object.key, m.object.size
            ))),
            None => Err(self.mismatch(format!("{} is missing", m.object.key))),
        }
    }
}

/// Read the backup's object through `sink`, then check length, digest and the file list
/// against the manifest. `on_error` classifies what the decoder or the sink reported.
fn read_through<S: ChunkSink + ?Sized>(
    job: &ReadJob,
    sink: &mut S,
    on_error: &dyn Fn(S::Error) -> BackupError,
) -> Result<StreamTotals, BackupError> {
    let m = job.manifest;
    let key = format!("{}/{}", job.id, m.object.key);
    job.check_size(&key)?;
    let what = format!("{}/{key}", job.repo.describe());
    let sealed = sealed_source(job, &key)?;
    let (size, _) = m.stream_digest();
    let mut fetch = FetchReader::start(
        job.repo.clone(),
        key,
        size,
        job.opts,
        sealed,
        job.progress.clone(),
        job.shutdown.clone(),
    );
    let over = Cell::new(false);
    let (ledger, totals) = match decode(&mut fetch, m, &what, job.opts, sink, &over) {
        Ok(r) => r,
        Err(Decoded::Setup(se)) => return Err(se.into()),
        // The store's, a signal's or the bound's doing, when it was: the decoder only saw the
        // read fail.
        Err(Decoded::Stream(e)) => {
            if job.shutdown.load(Ordering::SeqCst) {
                return Err(BackupError::Interrupted("SIGINT/SIGTERM received".into()));
            }
            if let Some(se) = fetch.take_error() {
                return Err(se.into());
            }
            if over.get() {
                return Err(job.mismatch(format!(
                    "{} expands past the manifest's {} stream bytes: stopped there",
                    m.object.key, m.stream.bytes
                )));
            }
            return Err(on_error(e));
        }
    };
    check_object_end(job, &mut fetch, &what)?;
    manifest::compare(m, &totals, &manifest::files_of(&ledger)).map_err(|r| job.mismatch(r))?;
    Ok(totals)
}

/// For a sealed object: read its header (one small GET), check it, and check that the stored
/// size fits the plaintext size the manifest gives.
fn sealed_source(job: &ReadJob, key: &str) -> Result<Option<SealedSource>, BackupError> {
    let m = job.manifest;
    let Some(enc) = &m.encryption else {
        return Ok(None);
    };
    let prefix = job
        .repo
        .get_range(key, 0, m.object.size.min(seal::MAX_HEADER))?;
    let header = seal::header_len(&prefix).map_err(|e| StoreError::Damaged {
        key: key.to_string(),
        repo: job.repo.describe(),
        reason: e.to_string(),
    })?;
    if seal::plain_len(header, m.object.size) != Some(enc.plain_size) {
        return Err(job.mismatch(format!(
            "{} has {} bytes with a {header}-byte header, which cannot hold the {} bytes the manifest gives",
            m.object.key, m.object.size, enc.plain_size
        )));
    }
    let mut prefix = prefix.to_vec();
    prefix.truncate(header as usize + 16);
    Ok(Some(SealedSource {
        ids: job.opts.identities.clone(),
        stored: m.object.size,
        prefix,
    }))
}

/// Why [`decode`] stopped.
enum Decoded<E> {
    /// The decompressor could not be set up.
    Setup(StoreError),
    /// The decoder or the sink failed.
    Stream(E),
}

/// The stream as it leaves the decompressor (or the fetcher), before the decoder: it may not
/// run past the manifest's `stream.bytes` (a small object that expands without bound, a zstd
/// bomb, stops there), and it checks the shutdown flag on every read (one read of a
/// compressible object can expand to gigabytes, so checking per fetched range is not enough).
struct Bounded<'a, R> {
    inner: R,
    limit: u64,
    read: u64,
    shutdown: &'a AtomicBool,
    /// Set when the stream ran past `limit`.
    over: &'a Cell<bool>,
}

impl<R: Read> Read for Bounded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.shutdown.load(Ordering::SeqCst) {
            return Err(io::Error::other("interrupted"));
        }
        // At most one byte past the limit is asked for: enough to tell that there is more.
        let room = self.limit.saturating_sub(self.read).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.read += n as u64;
        if self.read > self.limit {
            self.over.set(true);
            return Err(io::Error::other(format!(
                "the stream runs past the {} bytes its manifest gives",
                self.limit
            )));
        }
        Ok(n)
    }
}

/// The object as stored, through zstd when it was compressed, bounded by the manifest's
/// stream size and the shutdown flag, decoded into `sink`.
fn decode<S: ChunkSink + ?Sized>(
    fetch: &mut FetchReader,
    m: &Manifest,
    what: &str,
    opts: &ReadOptions,
    sink: &mut S,
    over: &Cell<bool>,
) -> Result<(Ledger, StreamTotals), Decoded<S::Error>> {
    let zstd_err = |e: io::Error| Decoded::Setup(StoreError::Setup(format!("zstd: {e}")));
    let shutdown = fetch.shutdown.clone();
    let raw: Box<dyn Read + '_> = if m.is_compressed() {
        let mut dec = zstd::stream::read::Decoder::new(fetch).map_err(zstd_err)?;
        // Our compressor's windows are at most 8 MiB; refuse frames asking for more than 32.
        dec.window_log_max(25).map_err(zstd_err)?;
        Box::new(dec)
    } else {
        Box::new(fetch)
    };
    let input = Bounded {
        inner: raw,
        limit: m.stream.bytes,
        read: 0,
        shutdown: &shutdown,
        over,
    };
    sink::run_with(
        input,
        what,
        opts.decode,
        sink,
        &Progress::hidden(),
        Ledger::with_crcs(),
    )
    .map_err(Decoded::Stream)
}

/// After the stream's end: nothing may follow it, and the object's length and digest must be
/// the manifest's.
fn check_object_end(job: &ReadJob, fetch: &mut FetchReader, what: &str) -> Result<(), BackupError> {
    let m = job.manifest;
    // Anything after the stream's end is still part of the object and of its digest.
    let trailing = io::copy(fetch, &mut io::sink());
    if let Some(se) = fetch.take_error() {
        return Err(se.into());
    }
    let trailing = trailing.map_err(|e| StoreError::Setup(format!("reading {what}: {e}")))?;
    if trailing > 0 {
        return Err(job.mismatch(format!("{trailing} bytes follow the end of the stream")));
    }
    let digest = fetch.digest.finalize().to_hex().to_string();
    let (size, want) = m.stream_digest();
    if fetch.delivered != size || digest != want {
        return Err(job.mismatch(format!(
            "object digest {digest} ({} bytes) differs from the manifest's {want} ({size} bytes)",
            fetch.delivered
        )));
    }
    Ok(())
}

/// Stream a backup and check every CRC, completeness, the digest and the manifest; write nothing.
pub fn verify(
    repo: Arc<dyn Repository>,
    r: &BackupRef,
    opts: &ReadOptions,
    progress: Arc<Progress>,
    shutdown: Arc<AtomicBool>,
) -> Result<Checked, BackupError> {
    let (id, manifest) = resolve_open(&*repo, r, &opts.identities)?;
    let _span = tracing::info_span!("backup", id = %id).entered();
    tracing::info!("verifying backup {id} of {}", repo.describe());
    let job = ReadJob {
        repo,
        id: &id,
        manifest: &manifest,
        opts,
        progress,
        shutdown,
    };
    let totals = read_through(&job, &mut Discard, &|e| BackupError::BadStream {
        id: id.clone(),
        source: Box::new(e),
    })?;
    Ok(Checked {
        id,
        manifest,
        totals,
    })
}

/// The restore's markers in DIR: in progress only; its absence (with exit 0) is completion.
const MARKERS: Markers = Markers {
    in_progress: IN_PROGRESS,
    complete: None,
};

/// A problem with DIR itself.
fn target_error(id: &str, dir: &Path, e: ExtractError) -> BackupError {
    BackupError::Restore {
        id: id.into(),
        dir: dir.to_path_buf(),
        source: Box::new(e),
    }
}

/// What went wrong while restoring: the stored stream (exit 1) or writing DIR.
fn restore_error(id: &str, dir: &Path, e: ExtractError) -> BackupError {
    match e {
        ExtractError::Stream(
            source @ (StreamError::Format(_) | StreamError::Ledger(_) | StreamError::Read { .. }),
        ) => BackupError::BadStream {
            id: id.into(),
            source: Box::new(source),
        },
        other => target_error(id, dir, other),
    }
}

/// Take DIR for backup `id`: it must hold nothing but our marker, unless `--force`.
fn claim(id: &str, opts: &RestoreOptions) -> Result<Target, BackupError> {
    let dir = &opts.dir;
    let local = |e| target_error(id, dir, e);
    let target = Target::open(dir, MARKERS).map_err(local)?;
    if target.found().map_err(local)?.others && !opts.force {
        return Err(BackupError::Refused(format!(
            "{} is not empty: restore into an empty directory, or add --force to overwrite files in it",
            dir.display()
        )));
    }
    target
        .mark(format!("restoring backup {id}\n").as_bytes())
        .map_err(local)?;
    Ok(target)
}

/// Restore a backup into `opts.dir`.
pub fn restore(
    repo: Arc<dyn Repository>,
    r: &BackupRef,
    opts: &RestoreOptions,
    progress: Arc<Progress>,
    shutdown: Arc<AtomicBool>,
) -> Result<Checked, BackupError> {
    let dir = opts.dir.clone();
    let (checked, target) = restore_held(repo, r, opts, progress, shutdown)?;
    // Every restored byte on disk before the marker goes: `finish` syncs the filesystem first.
    target
        .finish(None)
        .map_err(|e| target_error(&checked.id, &dir, e))?;
    Ok(checked)
}

/// [`restore`], but the in-progress marker stays: the caller has more to do in the directory
/// (a point-in-time replay) and calls `finish` on the returned target when that is done.
pub fn restore_held(
    repo: Arc<dyn Repository>,
    r: &BackupRef,
    opts: &RestoreOptions,
    progress: Arc<Progress>,
    shutdown: Arc<AtomicBool>,
) -> Result<(Checked, Target), BackupError> {
    let (id, manifest) = resolve_open(&*repo, r, &opts.read.identities)?;
    // Log lines from here on carry the backup id (as a field in the JSON log format).
    let _span = tracing::info_span!("backup", id = %id).entered();
    let dir = &opts.dir;
    let target = claim(&id, opts)?;
    tracing::info!(
        "restoring backup {id} ({} bytes stored, {} files) from {} into {}",
        manifest.object.size,
        manifest.stream.files,
        repo.describe(),
        dir.display()
    );
    let wrap = |e| restore_error(&id, dir, e);
    let extract_dir = TargetDir::open(dir).map_err(wrap)?;
    let wopts = WriterOptions {
        threads: opts.writers.max(1),
        force: opts.force,
        direct: !opts.buffered,
        reserved: target.reserved(),
        ..WriterOptions::default()
    };
    let mut writer = DirWriter::new(&extract_dir, &wopts).map_err(wrap)?;
    let job = ReadJob {
        repo,
        id: &id,
        manifest: &manifest,
        opts: &opts.read,
        progress,
        shutdown,
    };
    let totals = read_through(&job, &mut writer, &wrap)?;
    drop(writer);
    Ok((
        Checked {
            id,
            manifest,
            totals,
        },
        target,
    ))
}
