//! `create`: walk files and directories and write them as an xbstream.
//!
//! Paths in the stream are relative to the `-C` directory, `/`-separated, without `./`.
//! A directory's regular files come before its subdirectories, sorted by name: the reference
//! `mbstream -x` creates only one missing directory level per file, so a parent's files must
//! arrive first for deep trees to extract with it. Each file is read in blocks of at most
//! `chunk_size` (2 MiB by default; the reference writes 10 MiB), a 0-byte file becomes a lone
//! `E` chunk, and with `--parallel N` N files are read at once, their chunks interleaved as
//! `xtrabackup --parallel` interleaves them. With `sparse`, holes become Percona sparse
//! chunks (which mbstream cannot read).

pub mod error;
mod walk;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::format::{encode_header_into, sparse_crc, ChunkHeader, SparseEntry, CREATE_CHUNK_SIZE};
use crate::progress::Progress;
use crate::workers::FirstError;
use error::{CreateError, Result};
pub use walk::{walk, SourceFile};

/// Settings of a `create` run.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Directory the paths are relative to.
    pub dir: PathBuf,
    pub paths: Vec<PathBuf>,
    /// Files read at once.
    pub parallel: usize,
    /// Largest payload per chunk.
    pub chunk_size: usize,
    /// Write holes as Percona sparse chunks.
    pub sparse: bool,
}

impl CreateOptions {
    pub fn new(dir: impl Into<PathBuf>, paths: Vec<PathBuf>) -> Self {
        CreateOptions {
            dir: dir.into(),
            paths,
            parallel: 1,
            chunk_size: CREATE_CHUNK_SIZE,
            sparse: false,
        }
    }
}

/// What a `create` run wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CreateTotals {
    pub files: u64,
    pub chunks: u64,
    pub data_bytes: u64,
    pub stream_bytes: u64,
}

/// Walk the paths and write the stream to `out`.
///
/// Work is done by `max(parallel, 2)` worker threads in lock step: each claims the next block
/// (a numbered ticket), reads it and computes its CRC on its own, then waits for its ticket's
/// turn and writes the chunk itself. Reads overlap with the other workers' writes, and each
/// block is written by the thread that just read it, from its own cache, into pages that
/// thread just freed from the source (measured on a 1 GiB file against a reader → writer
/// pipeline: 0.25 s against 0.30 s median, and no slow outliers). Tickets fix the order: a
/// file's chunks go out in offset order, and with `--parallel N` the blocks of N files are
/// claimed in turn, so their chunks interleave as `xtrabackup --parallel` interleaves them.
pub fn create<W: Write + Send>(
    opts: &CreateOptions,
    out: W,
    progress: &Progress,
) -> Result<CreateTotals> {
    let files = walk(&opts.dir, &opts.paths)?;
    stream_files(files, opts, out, progress)
}

/// Write `files` as a stream (the part of [`create`] after the walk).
fn stream_files<W: Write + Send>(
    files: Vec<SourceFile>,
    opts: &CreateOptions,
    out: W,
    progress: &Progress,
) -> Result<CreateTotals> {
    let parallel = opts.parallel.max(1);
    let workers = parallel.max(2);
    let chunk_size = opts.chunk_size.max(1);
    let sched = Mutex::new(Scheduler {
        queue: files.into_iter(),
        active: VecDeque::with_capacity(parallel),
        parallel,
        chunk_size: chunk_size as u64,
        next_ticket: 0,
    });
    let out = Mutex::new(Output {
        w: BufWriter::with_capacity(1 << 20, out),
        hdr: Vec::with_capacity(1024),
        turn: 0,
        totals: CreateTotals::default(),
    });
    let turn = Condvar::new();
    let shared = Shared {
        sched: &sched,
        out: &out,
        turn: &turn,
        errors: FirstError::new(),
        chunk_size,
        sparse: opts.sparse,
        progress,
    };
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| shared.work());
        }
    });
    if let Some(e) = shared.errors.take() {
        return Err(e);
    }
    let mut o = out.into_inner().unwrap_or_else(|e| e.into_inner());
    o.w.flush().map_err(CreateError::WriteStream)?;
    Ok(o.totals)
}

/// A source file being read: shared by the workers that hold blocks of it.
struct FileJob {
    fs_path: PathBuf,
    path: Arc<[u8]>,
    file: File,
    /// Its size when walked: blocks are claimed up to the one holding this offset.
    size: u64,
    /// Its `E` chunk is written; blocks of it still in flight are dropped. Read and set only
    /// by the worker whose turn it is.
    ended: AtomicBool,
}

impl FileJob {
    fn source_err(&self, e: std::io::Error) -> CreateError {
        walk::source_err(&self.fs_path, e)
    }
}

/// Hands out blocks in stream order.
struct Scheduler {
    queue: std::vec::IntoIter<SourceFile>,
    /// Files being claimed from, at most `parallel`, with the next offset to claim of each.
    active: VecDeque<(Arc<FileJob>, u64)>,
    parallel: usize,
    chunk_size: u64,
    next_ticket: u64,
}

/// One unit of work: a block to read and write at its ticket's turn.
struct Claim {
    ticket: u64,
    what: ClaimKind,
}

enum ClaimKind {
    Block {
        job: Arc<FileJob>,
        offset: u64,
        /// The last block claimed of this file (the one its walked size ends in).
        last: bool,
    },
    /// A file that could not be opened: reported at this ticket's turn.
    Failed(CreateError),
}

impl Scheduler {
    fn claim(&mut self) -> Option<Claim> {
        while self.active.len() < self.parallel {
            let Some(f) = self.queue.next() else { break };
            let ticket = self.next_ticket;
            match File::open(&f.fs_path) {
                Ok(file) => {
                    let job = FileJob {
                        path: f.stream_path.clone().into(),
                        fs_path: f.fs_path,
                        file,
                        size: f.size,
                        ended: AtomicBool::new(false),
                    };
                    self.active.push_back((Arc::new(job), 0));
                }
                Err(e) => {
                    self.next_ticket += 1;
                    return Some(Claim {
                        ticket,
                        what: ClaimKind::Failed(walk::source_err(&f.fs_path, e)),
                    });
                }
            }
        }
        let (job, offset) = self.active.pop_front()?;
        let next = offset + self.chunk_size;
        let last = next > job.size;
        if !last {
            self.active.push_back((job.clone(), next));
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        Some(Claim {
            ticket,
            what: ClaimKind::Block { job, offset, last },
        })
    }
}

/// The stream being written, owned by whichever worker's turn it is.
struct Output<W: Write> {
    w: BufWriter<W>,
    hdr: Vec<u8>,
    /// The ticket whose chunk goes out next.
    turn: u64,
    totals: CreateTotals,
}

struct Shared<'a, W: Write> {
    sched: &'a Mutex<Scheduler>,
    out: &'a Mutex<Output<W>>,
    turn: &'a Condvar,
    /// The first error in stream order (only the worker whose turn it is fails the run);
    /// once set, claims stop and waiting workers leave.
    errors: FirstError<CreateError>,
    chunk_size: usize,
    sparse: bool,
    progress: &'a Progress,
}

/// What a worker read for its block.
enum Block {
    Data {
        len: usize,
        crc: u32,
    },
    Sparse {
        map: Vec<SparseEntry>,
        extent: u64,
        crc: u32,
    },
}

impl<W: Write + Send> Shared<'_, W> {
    fn work(&self) {
        let _guard = WakeOnPanic(self);
        // Zeroed once, at the first block; read into in place afterwards.
        let mut buf = Vec::new();
        while !self.errors.is_stopped() {
            let claim = match self.sched.lock() {
                Ok(mut s) => s.claim(),
                Err(_) => None,
            };
            let Some(Claim { ticket, what }) = claim else {
                return;
            };
            let read = match &what {
                ClaimKind::Block { job, offset, .. } => self
                    .read(job, *offset, &mut buf)
                    .map_err(|e| job.source_err(e)),
                ClaimKind::Failed(_) => Ok(Block::Data { len: 0, crc: 0 }),
            };
            let Some(mut out) = self.wait_turn(ticket) else {
                return;
            };
            let res = match (what, read) {
                (ClaimKind::Failed(e), _) | (_, Err(e)) => Err(e),
                (ClaimKind::Block { job, offset, last }, Ok(block)) => {
                    self.put(&mut out, &job, offset, last, block, &mut buf)
                }
            };
            if let Err(e) = res {
                // Under the output lock, so that no worker is between its check and its wait.
                self.errors.fail(e);
            }
            out.turn += 1;
            drop(out);
            self.turn.notify_all();
        }
    }

    /// The output, once it is `ticket`'s turn; `None` when the run has failed.
    fn wait_turn(&self, ticket: u64) -> Option<MutexGuard<'_, Output<W>>> {
        let mut out = self.out.lock().ok()?;
        loop {
            if self.errors.is_stopped() {
                return None;
            }
            if out.turn == ticket {
                return Some(out);
            }
            out = self.turn.wait(out).ok()?;
        }
    }

    fn read(&self, job: &FileJob, offset: u64, buf: &mut Vec<u8>) -> std::io::Result<Block> {
        if self.sparse {
            buf.clear();
            if let Some((map, extent, crc)) =
                read_sparse_block(&job.file, offset, self.chunk_size, buf)?
            {
                return Ok(Block::Sparse { map, extent, crc });
            }
        }
        if buf.len() < self.chunk_size {
            buf.resize(self.chunk_size, 0);
        }
        let (len, crc) = read_part(&job.file, offset, &mut buf[..self.chunk_size])?;
        Ok(Block::Data { len, crc })
    }

    /// Write a block read from `job` at `offset` (its turn has come); end the file where the
    /// block came back short. A file that grew since the walk is read on to its new end here,
    /// by this worker, holding the turn.
    fn put(
        &self,
        out: &mut Output<W>,
        job: &FileJob,
        mut offset: u64,
        last: bool,
        mut block: Block,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        if job.ended.load(Ordering::Relaxed) {
            // The file ended in an earlier block (it shrank, or its end fell on a block edge).
            return Ok(());
        }
        loop {
            let full = match block {
                Block::Data { len, crc } => {
                    if len > 0 {
                        let data = &buf[..len];
                        let hdr = ChunkHeader::Payload {
                            path: &job.path,
                            flags: 0,
                            offset,
                            len: len as u64,
                            crc,
                        };
                        out.emit(&hdr, data)?;
                    }
                    offset += len as u64;
                    len == self.chunk_size
                }
                Block::Sparse { map, extent, crc } => {
                    let hdr = ChunkHeader::Sparse {
                        path: &job.path,
                        flags: 0,
                        offset,
                        map: &map,
                        len: buf.len() as u64,
                        crc,
                    };
                    out.emit(&hdr, buf)?;
                    offset += extent;
                    extent == self.chunk_size as u64
                }
            };
            self.progress.set_position(out.totals.data_bytes);
            if !full {
                out.emit(
                    &ChunkHeader::Eof {
                        path: &job.path,
                        flags: 0,
                    },
                    &[],
                )?;
                out.totals.files += 1;
                self.progress
                    .file_done(&crate::format::chunk_display_path(&job.path));
                job.ended.store(true, Ordering::Relaxed);
                return Ok(());
            }
            if !last {
                return Ok(());
            }
            block = self.read(job, offset, buf).map_err(|e| job.source_err(e))?;
        }
    }
}

/// A worker that panicked would never take its turn, and the others would wait for it forever:
/// stop them (the panic itself reaches the caller when the thread scope ends).
struct WakeOnPanic<'a, 'b, W: Write>(&'a Shared<'b, W>);

impl<W: Write> Drop for WakeOnPanic<'_, '_, W> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.errors.stop();
            // Under the lock, so that no worker is between its check and its wait.
            let _out = self.0.out.lock();
            self.0.turn.notify_all();
        }
    }
}

impl<W: Write> Output<W> {
    fn emit(&mut self, hdr: &ChunkHeader<'_>, payload: &[u8]) -> Result<()> {
        self.hdr.clear();
        encode_header_into(hdr, &mut self.hdr);
        write_both(&mut self.w, &self.hdr, payload).map_err(CreateError::WriteStream)?;
        self.totals.chunks += 1;
        self.totals.data_bytes += payload.len() as u64;
        self.totals.stream_bytes += (self.hdr.len() + payload.len()) as u64;
        Ok(())
    }
}

/// Header and payload in as few writes as the sink allows (one, for a pipe or a file).
fn write_both(out: &mut impl Write, hdr: &[u8], payload: &[u8]) -> std::io::Result<()> {
    let mut bufs = [std::io::IoSlice::new(hdr), std::io::IoSlice::new(payload)];
    let mut bufs = &mut bufs[..];
    while !bufs.is_empty() {
        match out.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Read into `buf` at `offset` until it is full or the file ends; drop what was read from the
/// cache; return the count and CRC-32.
fn read_part(file: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<(usize, u32)> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if n > 0 {
        drop_cached(file, offset, n);
    }
    Ok((n, crc32fast::hash(&buf[..n])))
}

/// Each source byte is read once: drop its pages from the cache once read (as the reference
/// does), so that streaming a data directory does not push the database's working set out of
/// memory, and the pages are free for the stream's own writes.
fn drop_cached(file: &File, offset: u64, len: usize) {
    let _ = rustix::fs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len as u64),
        rustix::fs::Advice::DontNeed,
    );
}

/// If the block at `offset` holds a hole, read its data runs into `buf` and describe it as a
/// sparse chunk (its map, the extent it covers, its CRC); `None` when the block is all data
/// (or the file ends at `offset`).
fn read_sparse_block(
    file: &File,
    offset: u64,
    chunk_size: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(Vec<SparseEntry>, u64, u32)>> {
    use rustix::fs::{seek, SeekFrom};
    let size = file.metadata()?.len();
    if offset >= size {
        return Ok(None);
    }
    let end = size.min(offset + chunk_size as u64);
    let mut runs = Vec::new();
    let mut cur = offset;
    while cur < end {
        let data = match seek(file, SeekFrom::Data(cur)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if data >= end {
            break;
        }
        let hole = seek(file, SeekFrom::Hole(data))?.min(end);
        runs.push((data, hole));
        cur = hole;
    }
    if runs.len() == 1 && runs[0] == (offset, end) {
        return Ok(None);
    }
    let mut map = Vec::with_capacity(runs.len() + 1);
    let mut prev = offset;
    for &(a, b) in &runs {
        let len = (b - a) as usize;
        let at = buf.len();
        buf.resize(at + len, 0);
        file.read_exact_at(&mut buf[at..], a)?;
        map.push(SparseEntry {
            skip: (a - prev) as u32,
            len: len as u32,
        });
        prev = b;
    }
    if prev < end {
        map.push(SparseEntry {
            skip: (end - prev) as u32,
            len: 0,
        });
    }
    let crc = sparse_crc(&map, buf);
    Ok(Some((map, end - offset, crc)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{ChunkBody, DecodeOptions, Decoder};
    use bytes::BytesMut;
    use std::collections::HashMap;

    const CHUNK: usize = 4096;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| {
                (i as u8)
                    .wrapping_mul(31)
                    .wrapping_add(seed ^ (i >> 12) as u8)
            })
            .collect()
    }

    /// `(name, contents, size the walk saw)` → the stream, written with `parallel`.
    fn stream(files: &[(&str, Vec<u8>, u64)], parallel: usize) -> (Result<CreateTotals>, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let list = files
            .iter()
            .map(|(name, bytes, walked)| {
                let fs_path = dir.path().join(name);
                if !name.starts_with("missing") {
                    std::fs::write(&fs_path, bytes).expect("write");
                }
                SourceFile {
                    fs_path,
                    stream_path: name.as_bytes().to_vec(),
                    size: *walked,
                }
            })
            .collect();
        let mut opts = CreateOptions::new(dir.path(), vec![]);
        opts.parallel = parallel;
        opts.chunk_size = CHUNK;
        let mut out = Vec::new();
        let res = stream_files(list, &opts, &mut out, &Progress::hidden());
        (res, out)
    }

    /// Decode a stream: each file's contents (offsets must be contiguous), its `E` count, and
    /// the order of the chunks' paths.
    /// Per file: its contents and how many `E` chunks it got.
    type Decoded = HashMap<String, (Vec<u8>, usize)>;

    fn decode(bytes: &[u8]) -> (Decoded, Vec<String>) {
        let mut dec = Decoder::new(DecodeOptions::default());
        let mut buf = BytesMut::from(bytes);
        let mut files = Decoded::new();
        let mut order = Vec::new();
        while let Some(c) = dec.decode_eof(&mut buf).expect("decodes") {
            let name = String::from_utf8(c.path.to_vec()).expect("utf-8");
            order.push(name.clone());
            let f = files.entry(name.clone()).or_default();
            assert_eq!(f.1, 0, "{name}: a chunk after its E");
            match c.body {
                ChunkBody::Payload { offset, data } => {
                    assert_eq!(offset, f.0.len() as u64, "{name}: offsets not contiguous");
                    assert!(!data.is_empty(), "{name}: an empty payload chunk");
                    f.0.extend_from_slice(&data);
                }
                ChunkBody::Eof => f.1 += 1,
                other => panic!("{name}: unexpected chunk {other:?}"),
            }
        }
        (files, order)
    }

    #[test]
    fn files_that_changed_size_since_the_walk_stream_what_they_hold_when_read() {
        let grew = data(5 * CHUNK + 3, 1);
        let shrank = data(CHUNK + 10, 2);
        let edge = data(3 * CHUNK, 3);
        let (res, out) = stream(
            &[
                ("grew", grew.clone(), CHUNK as u64),
                ("shrank", shrank.clone(), 9 * CHUNK as u64),
                ("edge", edge.clone(), 3 * CHUNK as u64),
                ("empty", Vec::new(), 0),
                ("grew-from-empty", data(CHUNK / 2, 4), 0),
            ],
            1,
        );
        let totals = res.expect("create");
        assert_eq!(totals.files, 5);
        let (files, order) = decode(&out);
        assert_eq!(files["grew"], (grew, 1));
        assert_eq!(files["shrank"], (shrank, 1));
        assert_eq!(files["edge"], (edge, 1));
        assert_eq!(files["empty"], (Vec::new(), 1));
        assert_eq!(files["grew-from-empty"], (data(CHUNK / 2, 4), 1));
        // With --parallel 1 the files follow each other whole, in the walk's order.
        let mut seen: Vec<&String> = order.iter().collect();
        seen.dedup();
        let names: Vec<&str> = seen.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            ["grew", "shrank", "edge", "empty", "grew-from-empty"]
        );
    }

    #[test]
    fn parallel_files_interleave_and_each_stays_in_order() {
        let files: Vec<(String, Vec<u8>)> = (0..5)
            .map(|i| (format!("f{i}"), data(7 * CHUNK + 100 * i, i as u8)))
            .collect();
        let list: Vec<(&str, Vec<u8>, u64)> = files
            .iter()
            .map(|(n, d)| (n.as_str(), d.clone(), d.len() as u64))
            .collect();
        for parallel in [1, 2, 3, 8] {
            let (res, out) = stream(&list, parallel);
            assert_eq!(res.expect("create").files, 5);
            let (got, order) = decode(&out);
            for (n, d) in &files {
                assert_eq!(got[n], (d.clone(), 1), "parallel {parallel}: {n}");
            }
            // How many files have chunks between their first and last: 0 without parallel.
            let mut runs = order.clone();
            runs.dedup();
            let interleaved = runs.len() > files.len();
            assert_eq!(interleaved, parallel > 1, "parallel {parallel}: {runs:?}");
        }
    }

    /// A sink that panics on its third write, once the other workers are waiting.
    struct PanicsOnThirdWrite(usize);

    impl Write for PanicsOnThirdWrite {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += 1;
            if self.0 == 3 {
                // Let the other workers finish their reads and wait for their turns.
                std::thread::sleep(std::time::Duration::from_millis(300));
                panic!("test sink: third write");
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The workers waiting for the lock see it poisoned and leave; those already waiting on
    /// the condition variable (an interleaving this test does not force) are woken by
    /// `WakeOnPanic`.
    #[test]
    fn a_panic_while_writing_reaches_the_caller_and_leaves_no_worker_waiting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let list: Vec<SourceFile> = (0..6)
            .map(|i| {
                let fs_path = dir.path().join(format!("f{i}"));
                std::fs::write(&fs_path, data(3 << 20, i as u8)).expect("write");
                SourceFile {
                    fs_path,
                    stream_path: format!("f{i}").into_bytes(),
                    size: 3 << 20,
                }
            })
            .collect();
        let mut opts = CreateOptions::new(dir.path(), vec![]);
        opts.parallel = 3;
        // Payloads larger than the output buffer go straight to the sink.
        opts.chunk_size = 2 << 20;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(|| {
                stream_files(list, &opts, PanicsOnThirdWrite(0), &Progress::hidden())
            });
            let _ = tx.send(r.is_err());
        });
        let panicked = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("create hung after a worker panicked");
        assert!(panicked, "the worker's panic did not reach the caller");
    }

    #[test]
    fn a_file_that_cannot_be_opened_stops_the_stream_after_the_files_before_it() {
        let a = data(3 * CHUNK + 1, 5);
        let (res, out) = stream(
            &[
                ("a", a.clone(), a.len() as u64),
                ("missing", Vec::new(), 10),
                ("b", data(100, 6), 100),
            ],
            1,
        );
        match res {
            Err(CreateError::Source { path, .. }) => assert!(path.ends_with("missing"), "{path:?}"),
            other => panic!("expected a source error, got {other:?}"),
        }
        let (got, _) = decode(&out);
        assert_eq!(got["a"], (a, 1));
        assert!(
            !got.contains_key("b"),
            "a file after the failed one was written"
        );
    }
}
