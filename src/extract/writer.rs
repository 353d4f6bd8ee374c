//! [`DirWriter`]: the sink that writes a decoded stream into a directory.
//!
//! Chunks are handed to `N` writer threads by a hash of their path, so each file's chunks are
//! written in stream order by one thread while different files are written in parallel, and
//! reading and checking the stream overlaps with writing it. The bytes queued for writing
//! are bounded (a budget, not a chunk count), so memory stays flat whatever the archive size
//! and whatever `N`. Removes and renames wait until every writer is idle.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, Sender};

use super::dir::{OpenMode, Resolver, TargetDir};
use super::direct::DirectWrites;
use super::error::{ExtractError, Result};
use super::innodb;
use crate::format::{Chunk, ChunkBody, Ledger, LedgerEvent, SparseEntry};
use crate::stream::sink::ChunkSink;
use crate::workers::{ByteBudget, FirstError};

/// Settings of a [`DirWriter`].
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub threads: usize,
    /// Overwrite files that already exist.
    pub force: bool,
    /// Descriptors kept open at most, over all threads; files beyond are closed and reopened
    /// when their next chunk arrives.
    pub max_open_files: usize,
    /// Bytes of chunk data queued for the writers at most.
    pub queue_bytes: u64,
    /// fsync every file at its end chunk and every directory at the end.
    pub sync: bool,
    /// Paths never written (checked, counted, then dropped): the clone's own markers, so a
    /// stream that carries a copy of them cannot fake a complete clone.
    pub reserved: Vec<Bytes>,
    /// Write large aligned runs with `O_DIRECT` (see [`super::direct`]).
    pub direct: bool,
    /// Leave the trailing zeros of each page of page-compressed `.ibd` files as holes, as the
    /// reference does (see [`super::innodb`]).
    pub punch_holes: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            threads: 1,
            force: false,
            max_open_files: 512,
            queue_bytes: 8 << 20,
            sync: false,
            reserved: Vec::new(),
            direct: true,
            punch_holes: true,
        }
    }
}

enum Job {
    Chunk(Chunk, LedgerEvent),
    /// Drop cached directory descriptors and acknowledge: the dispatcher is about to change
    /// the tree.
    Quiesce(Sender<()>),
}

/// What the dispatcher and the writer threads share.
struct Shared {
    /// Bytes of chunk data sent to the writers and not yet written.
    budget: ByteBudget,
    errors: FirstError<ExtractError>,
}

impl Shared {
    fn fail(&self, e: ExtractError) {
        self.errors.fail(e);
        // A dispatcher waiting for room must see the failure, not wait for writes that the
        // writers now skip.
        self.budget.close();
    }
}

/// Writes chunks into a target directory.
pub struct DirWriter {
    /// With one writer, chunks are written on the caller's thread: no hand-off per chunk,
    /// which costs more than it overlaps for streams of many small files.
    inline: Option<Worker>,
    senders: Vec<Sender<Job>>,
    handles: Vec<JoinHandle<Resolver>>,
    shared: Arc<Shared>,
    resolver: Resolver,
    hasher: RandomState,
    sync: bool,
    force: bool,
    reserved: Vec<Bytes>,
    /// Files this run created: without `--force`, removes and renames touch only these and
    /// the directories this run created.
    created_files: HashSet<Bytes>,
}

impl DirWriter {
    pub fn new(target: &TargetDir, opts: &WriterOptions) -> Result<Self> {
        let threads = opts.threads.max(1);
        let shared = Arc::new(Shared {
            budget: ByteBudget::new(opts.queue_bytes),
            errors: FirstError::new(),
        });
        let per_thread = (opts.max_open_files / threads).max(4);
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        let make_worker = || Worker {
            resolver: target.resolver(),
            files: HashMap::new(),
            open_fds: 0,
            max_fds: per_thread,
            force: opts.force,
            sync: opts.sync,
            direct: DirectWrites::new(opts.direct),
            punch_holes: opts.punch_holes,
        };
        let inline = (threads == 1).then(make_worker);
        for i in 0..if inline.is_some() { 0 } else { threads } {
            let (tx, rx) = bounded::<Job>(64);
            let worker = make_worker();
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("xbagent-writer-{i}"))
                .spawn(move || worker.run(rx, shared))
                .map_err(|e| ExtractError::TargetDir {
                    dir: target.display.clone(),
                    source: e,
                })?;
            senders.push(tx);
            handles.push(handle);
        }
        Ok(DirWriter {
            inline,
            senders,
            handles,
            shared,
            resolver: target.resolver(),
            hasher: RandomState::new(),
            sync: opts.sync,
            force: opts.force,
            reserved: opts.reserved.clone(),
            created_files: HashSet::new(),
        })
    }

    fn check_failed(&self) -> Result<()> {
        self.shared.errors.check()
    }

    /// Wait until every writer has drained its queue and dropped its directory cache.
    fn quiesce(&mut self) -> Result<()> {
        if let Some(w) = &mut self.inline {
            w.resolver.clear();
            return Ok(());
        }
        let (ack_tx, ack_rx) = bounded(self.senders.len());
        for s in &self.senders {
            // A closed channel means the writer stopped on an error, reported below.
            let _ = s.send(Job::Quiesce(ack_tx.clone()));
        }
        drop(ack_tx);
        while ack_rx.recv().is_ok() {}
        self.check_failed()
    }

    fn stop_workers(&mut self) -> Vec<Resolver> {
        self.senders.clear();
        self.handles
            .drain(..)
            .filter_map(|h| h.join().ok())
            .collect()
    }
}

impl ChunkSink for DirWriter {
    type Error = ExtractError;

    fn chunk(&mut self, chunk: Chunk, event: &LedgerEvent) -> Result<()> {
        self.check_failed()?;
        let touches = |p: &Bytes| {
            chunk.path == *p || matches!(&chunk.body, ChunkBody::Rename { to } if to == p)
        };
        if self.reserved.iter().any(touches) {
            if let LedgerEvent::File { created: true, .. } = event {
                tracing::warn!(
                    "not writing '{}' from the stream: that name is reserved for this tool's own marker",
                    chunk.display_path()
                );
            }
            return Ok(());
        }
        match (&chunk.body, event) {
            (ChunkBody::Remove, _) => {
                self.quiesce()?;
                self.refuse_unless_ours("remove", &chunk.path, chunk.stream_offset)?;
                self.resolver.remove(&chunk.path, chunk.stream_offset)?;
                self.move_created(&chunk.path, None);
                Ok(())
            }
            (ChunkBody::Rename { to }, _) => {
                self.quiesce()?;
                self.refuse_unless_ours("rename", &chunk.path, chunk.stream_offset)?;
                self.refuse_unless_ours("replace", to, chunk.stream_offset)?;
                self.resolver.rename(&chunk.path, to, chunk.stream_offset)?;
                self.move_created(&chunk.path, Some(to));
                Ok(())
            }
            (_, LedgerEvent::Ignored) => {
                tracing::warn!(
                    "skipped an ignorable chunk of unknown type for '{}' at stream offset {}",
                    chunk.display_path(),
                    chunk.stream_offset
                );
                Ok(())
            }
            _ => {
                if let LedgerEvent::File { created: true, .. } = event {
                    self.created_files.insert(chunk.path.clone());
                }
                if let Some(w) = &mut self.inline {
                    return w.write(chunk, event);
                }
                let n = chunk.data_len();
                if !self.shared.budget.acquire(n) {
                    // A writer failed: its error is reported here, the chunk dropped.
                    return self.check_failed();
                }
                let i = (self.hasher.hash_one(&chunk.path) % self.senders.len() as u64) as usize;
                if self.senders[i]
                    .send(Job::Chunk(chunk, event.clone()))
                    .is_err()
                {
                    self.shared.budget.release(n);
                }
                self.check_failed()
            }
        }
    }

    fn finish(&mut self, _ledger: &Ledger) -> Result<()> {
        let mut resolvers = self.stop_workers();
        if let Some(w) = self.inline.take() {
            resolvers.push(w.resolver);
        }
        if let Some(e) = self.shared.errors.take() {
            return Err(e);
        }
        if self.sync {
            for r in resolvers.iter().chain(std::iter::once(&self.resolver)) {
                r.sync_dirs().map_err(|e| ExtractError::TargetDir {
                    dir: self.resolver_display(),
                    source: e,
                })?;
            }
        }
        Ok(())
    }
}

impl DirWriter {
    /// Without `--force`, a remove or rename may only touch what this run created (or what
    /// does not exist): a stream must not destroy files that were in the target before.
    fn refuse_unless_ours(&mut self, op: &'static str, path: &[u8], offset: u64) -> Result<()> {
        if self.force
            || self.created_files.contains(path)
            || self.resolver.created_dir(path)
            || !self.resolver.exists(path, offset)?
        {
            return Ok(());
        }
        Err(ExtractError::NotOurs {
            op,
            path: crate::format::chunk_display_path(path),
            dir: self.resolver_display(),
            offset,
        })
    }

    fn move_created(&mut self, from: &[u8], to: Option<&[u8]>) {
        let moved: Vec<Bytes> = self
            .created_files
            .iter()
            .filter(|p| p[..] == *from || crate::format::is_below(p, from))
            .cloned()
            .collect();
        for p in moved {
            self.created_files.remove(&p);
            if let Some(to) = to {
                self.created_files
                    .insert(Bytes::from([to, &p[from.len()..]].concat()));
            }
        }
    }

    fn resolver_display(&self) -> std::path::PathBuf {
        self.resolver.display().to_path_buf()
    }
}

impl Drop for DirWriter {
    fn drop(&mut self) {
        // On an early error the workers must still stop; their errors are already reported.
        self.shared.errors.stop();
        self.shared.budget.close();
        self.stop_workers();
    }
}

/// With `--fsync`, start writing a chunk's pages back at once (the kernel writes back dirty
/// pages it is asked to drop), so the final fsync waits for little and disk writes overlap
/// with receiving; it also keeps a clone from filling the page cache.
fn start_writeback(f: &File, offset: u64, len: u64) {
    let _ = rustix::fs::fadvise(
        f,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::DontNeed,
    );
}

/// Write `data` at `offset` of a page-compressed file with pages of `page` bytes, leaving
/// each page's trailing zeros as a hole. Ranges left out that were written before (a
/// rewrite) are punched out, so they read as zeros. Returns the end of the last byte written.
fn write_with_holes(
    direct: &mut DirectWrites,
    f: &File,
    direct_mode: &mut bool,
    data: &[u8],
    offset: u64,
    page: usize,
    written_end: u64,
) -> std::io::Result<u64> {
    // Holes smaller than a file-system block free nothing.
    const MIN_HOLE: usize = 4096;
    let mut last = 0u64;
    let mut prev = 0usize;
    let runs = innodb::data_runs(data, offset, page, MIN_HOLE);
    let end = data.len();
    for (a, b) in runs.iter().copied().chain(std::iter::once((end, end))) {
        if a > prev && offset + (prev as u64) < written_end {
            zero_range(f, offset + prev as u64, (a - prev) as u64)?;
        }
        if b > a {
            direct.write_at(f, direct_mode, &data[a..b], offset + a as u64)?;
            last = offset + b as u64;
        }
        prev = b;
    }
    Ok(last)
}

/// Make `len` bytes at `offset` read as zeros: punch a hole, or write zeros where the file
/// system cannot punch.
fn zero_range(f: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use rustix::fs::FallocateFlags;
    match rustix::fs::fallocate(
        f,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    ) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP) => {
            let zeros = vec![0u8; len.min(1 << 20) as usize];
            let mut at = 0u64;
            while at < len {
                let n = (len - at).min(zeros.len() as u64) as usize;
                f.write_all_at(&zeros[..n], offset + at)?;
                at += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

struct OpenFile {
    file: Option<File>,
    /// The descriptor is in `O_DIRECT` mode.
    direct: bool,
    /// Page size, if this is a page-compressed tablespace whose pages' trailing zeros are
    /// left as holes; decided at its first payload.
    pages: Option<usize>,
    checked_pages: bool,
    /// End of the furthest byte written.
    written_end: u64,
    /// End of the file as the stream describes it (a trailing hole included).
    logical_end: u64,
}

impl OpenFile {
    /// Write a payload at `offset`; the first one decides whether the file is a
    /// page-compressed tablespace whose pages' trailing zeros are left as holes.
    fn write_payload(
        &mut self,
        direct: &mut DirectWrites,
        sync: bool,
        path: &[u8],
        offset: u64,
        data: &[u8],
    ) -> std::io::Result<()> {
        if !self.checked_pages {
            self.checked_pages = true;
            self.pages = innodb::page_compressed(path, data);
        }
        let end = offset + data.len() as u64;
        if let Some(f) = &self.file {
            match self.pages {
                None => direct.write_at(f, &mut self.direct, data, offset)?,
                Some(page) => {
                    let written_end = write_with_holes(
                        direct,
                        f,
                        &mut self.direct,
                        data,
                        offset,
                        page,
                        self.written_end,
                    )?;
                    self.written_end = self.written_end.max(written_end);
                }
            }
            if sync {
                start_writeback(f, offset, data.len() as u64);
            }
        }
        if self.pages.is_none() {
            self.written_end = self.written_end.max(end);
        }
        self.logical_end = self.logical_end.max(end);
        Ok(())
    }

    /// Write the data runs of a sparse chunk starting at `offset`, leaving its holes.
    fn write_sparse(
        &mut self,
        direct: &mut DirectWrites,
        offset: u64,
        map: &[SparseEntry],
        data: &[u8],
    ) -> std::io::Result<()> {
        let mut pos = offset;
        let mut at_data = 0usize;
        for e in map {
            pos += e.skip as u64;
            let len = e.len as usize;
            if len > 0 {
                if let Some(f) = &self.file {
                    direct.write_at(f, &mut self.direct, &data[at_data..at_data + len], pos)?;
                }
                self.written_end = self.written_end.max(pos + len as u64);
            }
            at_data += len;
            pos += len as u64;
        }
        self.logical_end = self.logical_end.max(pos);
        Ok(())
    }

    /// The file's last chunk: give it its full length and, with `sync`, flush it. The error
    /// comes with the operation that failed.
    fn end(mut self, sync: bool) -> std::result::Result<(), (&'static str, std::io::Error)> {
        let Some(f) = self.file.take() else {
            return Ok(());
        };
        if self.logical_end > self.written_end {
            // A trailing hole: extend the file without writing.
            f.set_len(self.logical_end).map_err(|e| ("extend", e))?;
        }
        if sync {
            f.sync_all().map_err(|e| ("fsync", e))?;
        }
        Ok(())
    }
}

struct Worker {
    resolver: Resolver,
    files: HashMap<Bytes, OpenFile>,
    open_fds: usize,
    max_fds: usize,
    force: bool,
    sync: bool,
    direct: DirectWrites,
    punch_holes: bool,
}

impl Worker {
    fn run(mut self, rx: Receiver<Job>, shared: Arc<Shared>) -> Resolver {
        for job in rx {
            match job {
                Job::Quiesce(ack) => {
                    self.resolver.clear();
                    let _ = ack.send(());
                }
                Job::Chunk(chunk, event) => {
                    let n = chunk.data_len();
                    if !shared.errors.is_stopped() {
                        if let Err(e) = self.write(chunk, &event) {
                            shared.fail(e);
                        }
                    }
                    shared.budget.release(n);
                }
            }
        }
        self.resolver
    }

    /// Apply one chunk of a file: open (or create) the file as the ledger says, then write
    /// its data or end it.
    fn write(&mut self, chunk: Chunk, event: &LedgerEvent) -> Result<()> {
        let LedgerEvent::File {
            created, truncate, ..
        } = *event
        else {
            return Ok(());
        };
        if created {
            self.create(&chunk, truncate)?;
        }
        let needs_fd = matches!(
            chunk.body,
            ChunkBody::Payload { .. } | ChunkBody::Sparse { .. } | ChunkBody::Eof
        );
        if needs_fd {
            self.reopen(&chunk)?;
        }
        let werr = |op, e| ExtractError::Target {
            op,
            path: chunk.display_path(),
            dir: self.resolver.display().to_path_buf(),
            offset: chunk.stream_offset,
            source: e,
        };
        let Some(entry) = self.files.get_mut(&chunk.path) else {
            // Seek chunks of an unknown file cannot happen: the ledger creates it first.
            return Ok(());
        };
        match &chunk.body {
            ChunkBody::Payload { offset, data } => entry
                .write_payload(&mut self.direct, self.sync, &chunk.path, *offset, data)
                .map_err(|e| werr("write", e)),
            ChunkBody::Sparse { offset, map, data } => entry
                .write_sparse(&mut self.direct, *offset, map, data)
                .map_err(|e| werr("write", e)),
            ChunkBody::Eof => {
                let Some(e) = self.files.remove(&chunk.path) else {
                    return Ok(());
                };
                if e.file.is_some() {
                    self.open_fds -= 1;
                }
                e.end(self.sync).map_err(|(op, e)| werr(op, e))
            }
            _ => Ok(()),
        }
    }

    /// The chunk's file is new to the stream (or rewritten): create it, replacing whatever
    /// this thread still tracks under its name.
    fn create(&mut self, chunk: &Chunk, truncate: bool) -> Result<()> {
        let mode = if truncate || self.force {
            OpenMode::CreateOrTruncate
        } else {
            OpenMode::CreateNew
        };
        // A REWRITE of a file this thread still tracks replaces it.
        if let Some(old) = self.files.remove(&chunk.path) {
            if old.file.is_some() {
                self.open_fds -= 1;
            }
        }
        self.make_room();
        let file = self
            .resolver
            .open_file(&chunk.path, mode, chunk.stream_offset)?;
        self.open_fds += 1;
        self.files.insert(
            chunk.path.clone(),
            OpenFile {
                file: Some(file),
                direct: false,
                pages: None,
                checked_pages: !self.punch_holes,
                written_end: 0,
                logical_end: 0,
            },
        );
        Ok(())
    }

    /// Open again a file whose descriptor was closed to make room for others'.
    fn reopen(&mut self, chunk: &Chunk) -> Result<()> {
        let closed = self
            .files
            .get(&chunk.path)
            .is_some_and(|f| f.file.is_none());
        if !closed {
            return Ok(());
        }
        self.make_room();
        let file = self
            .resolver
            .open_file(&chunk.path, OpenMode::Reopen, chunk.stream_offset)?;
        self.open_fds += 1;
        if let Some(f) = self.files.get_mut(&chunk.path) {
            f.file = Some(file);
            f.direct = false;
        }
        Ok(())
    }

    /// Keep the number of open descriptors under the cap by closing some other file's.
    fn make_room(&mut self) {
        if self.open_fds < self.max_fds {
            return;
        }
        for f in self.files.values_mut() {
            if f.file.take().is_some() {
                self.open_fds -= 1;
                if self.open_fds < self.max_fds {
                    break;
                }
            }
        }
    }
}
