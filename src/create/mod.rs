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

mod walk;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::error::{Error, Result};
use crate::format::{encode_header_into, sparse_crc, ChunkHeader, SparseEntry, CREATE_CHUNK_SIZE};
use crate::progress::Progress;
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

/// A run of data or holes read from one file, ready to be framed.
enum Piece {
    /// A block of file data with its CRC, computed by the reader: the writer thread only
    /// writes (copying into the output is the longest step), and with `--parallel N` the
    /// checksums are spread over N threads.
    Data {
        path: Arc<[u8]>,
        offset: u64,
        /// A pooled buffer of `chunk_size` bytes; the first `len` are data.
        buf: Vec<u8>,
        len: usize,
        crc: u32,
    },
    Sparse {
        path: Arc<[u8]>,
        offset: u64,
        map: Vec<SparseEntry>,
        buf: Vec<u8>,
        crc: u32,
    },
    Eof {
        path: Arc<[u8]>,
    },
    Failed(Error),
}

/// Walk the paths and write the stream to `out`.
pub fn create<W: Write>(opts: &CreateOptions, out: W, progress: &Progress) -> Result<CreateTotals> {
    let files = walk(&opts.dir, &opts.paths)?;
    let threads = opts.parallel.max(1);
    let chunk_size = opts.chunk_size.max(1);
    // Buffers in circulation bound memory: threads + 2 chunks at most.
    let nbuf = threads + 2;
    let (pool_tx, pool_rx) = bounded::<Vec<u8>>(nbuf);
    for _ in 0..nbuf {
        let _ = pool_tx.send(Vec::new());
    }
    let (work_tx, work_rx) = unbounded::<SourceFile>();
    for f in files {
        let _ = work_tx.send(f);
    }
    drop(work_tx);
    let (piece_tx, piece_rx) = bounded::<Piece>(nbuf);
    let sparse = opts.sparse;

    let mut totals = CreateTotals::default();
    let cancel = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        for _ in 0..threads {
            let pool = Pool {
                take: pool_rx.clone(),
                give: pool_tx.clone(),
            };
            let (work_rx, piece_tx, cancel) = (work_rx.clone(), piece_tx.clone(), &cancel);
            s.spawn(move || read_files(work_rx, pool, piece_tx, chunk_size, sparse, cancel));
        }
        drop(piece_tx);
        let r = write_pieces(&piece_rx, &pool_tx, out, &mut totals, progress);
        if r.is_err() {
            // Stop the readers: no new files, no new blocks; hand back the buffers of what
            // they already sent, so none of them waits for one forever.
            cancel.store(true, Ordering::SeqCst);
            while work_rx.try_recv().is_ok() {}
            for piece in piece_rx.iter() {
                if let Piece::Data { buf, .. } | Piece::Sparse { buf, .. } = piece {
                    let _ = pool_tx.send(buf);
                }
            }
        }
        r
    });
    result.map(|()| totals)
}

fn write_pieces<W: Write>(
    pieces: &Receiver<Piece>,
    pool: &Sender<Vec<u8>>,
    out: W,
    totals: &mut CreateTotals,
    progress: &Progress,
) -> Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let mut hdr = Vec::with_capacity(1024);
    for piece in pieces {
        hdr.clear();
        let payload = match &piece {
            Piece::Data {
                path,
                offset,
                buf,
                len,
                crc,
            } => {
                let data = &buf[..*len];
                encode_header_into(
                    &ChunkHeader::Payload {
                        path,
                        flags: 0,
                        offset: *offset,
                        len: data.len() as u64,
                        crc: *crc,
                    },
                    &mut hdr,
                );
                data
            }
            Piece::Sparse {
                path,
                offset,
                map,
                buf,
                crc,
            } => {
                encode_header_into(
                    &ChunkHeader::Sparse {
                        path,
                        flags: 0,
                        offset: *offset,
                        map,
                        len: buf.len() as u64,
                        crc: *crc,
                    },
                    &mut hdr,
                );
                &buf[..]
            }
            Piece::Eof { path } => {
                encode_header_into(&ChunkHeader::Eof { path, flags: 0 }, &mut hdr);
                totals.files += 1;
                progress.file_done(&crate::format::chunk_display_path(path));
                &[][..]
            }
            Piece::Failed(_) => &[][..],
        };
        if let Piece::Failed(e) = piece {
            return Err(e);
        }
        write_both(&mut out, &hdr, payload).map_err(Error::WriteStream)?;
        totals.chunks += 1;
        totals.data_bytes += payload.len() as u64;
        totals.stream_bytes += (hdr.len() + payload.len()) as u64;
        progress.set_position(totals.data_bytes);
        match piece {
            Piece::Data { buf, .. } | Piece::Sparse { buf, .. } => {
                let _ = pool.send(buf);
            }
            _ => {}
        }
    }
    out.flush().map_err(Error::WriteStream)
}

/// The circulating buffers: every buffer taken goes back, either with a piece (the writer
/// returns it) or directly when a read found nothing, so the readers can never run dry.
struct Pool {
    take: Receiver<Vec<u8>>,
    give: Sender<Vec<u8>>,
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

fn read_files(
    work: Receiver<SourceFile>,
    pool: Pool,
    pieces: Sender<Piece>,
    chunk_size: usize,
    sparse: bool,
    cancel: &AtomicBool,
) {
    for f in work {
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = read_one(&f, &pool, &pieces, chunk_size, sparse, cancel) {
            let _ = pieces.send(Piece::Failed(e));
            return;
        }
    }
}

/// Send one file's chunks in order. `Ok` also when the writer has gone away (it reports why).
fn read_one(
    f: &SourceFile,
    pool: &Pool,
    pieces: &Sender<Piece>,
    chunk_size: usize,
    sparse: bool,
    cancel: &AtomicBool,
) -> Result<()> {
    let err = |e: std::io::Error| Error::Source {
        path: f.fs_path.clone(),
        reason: e.to_string(),
    };
    let file = File::open(&f.fs_path).map_err(err)?;
    let path: Arc<[u8]> = f.stream_path.clone().into();
    let mut offset = 0u64;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Ok(mut buf) = pool.take.recv() else {
            return Ok(());
        };
        if sparse {
            buf.clear();
            if let Some((piece, extent)) =
                read_sparse_block(&file, &path, offset, chunk_size, &mut buf).map_err(err)?
            {
                offset += extent;
                if pieces.send(piece).is_err() {
                    return Ok(());
                }
                continue;
            }
        }
        // Pool buffers are zeroed once, at their first use, and then read into in place.
        if buf.len() < chunk_size {
            buf.resize(chunk_size, 0);
        }
        // Split only where the file (as the walk saw it) has that much left: a thread per
        // block would cost more than it saves on small files.
        let split = f.size.saturating_sub(offset) >= SPLIT_READ as u64;
        let (n, crc) = read_block(&file, offset, &mut buf[..chunk_size], split).map_err(err)?;
        if n == 0 {
            let _ = pool.give.send(buf);
            break;
        }
        let piece = Piece::Data {
            path: path.clone(),
            offset,
            buf,
            len: n,
            crc,
        };
        offset += n as u64;
        if pieces.send(piece).is_err() {
            return Ok(());
        }
        if n < chunk_size {
            break;
        }
    }
    let _ = pieces.send(Piece::Eof { path });
    Ok(())
}

/// Blocks at least this large are read by two threads, half each.
const SPLIT_READ: usize = 1 << 20;

/// Read the block of `file` at `offset` into `buf` (until it is full or the file ends); returns
/// how many bytes were read and their CRC-32. Copying out of the page cache is the slowest
/// step of `create` (slower than the copy into the output), so with `split` a large block is
/// read by two threads, one half each, their CRCs combined.
fn read_block(
    file: &File,
    offset: u64,
    buf: &mut [u8],
    split: bool,
) -> std::io::Result<(usize, u32)> {
    if !split || buf.len() < SPLIT_READ {
        return read_part(file, offset, buf);
    }
    let half = buf.len() / 2;
    let (first, second) = buf.split_at_mut(half);
    let (a, b) = std::thread::scope(|s| {
        let b = s.spawn(|| read_part(file, offset + half as u64, second));
        (read_part(file, offset, first), b.join())
    });
    let (n1, crc1) = a?;
    let (n2, crc2) = b.map_err(|_| std::io::Error::other("a reader thread panicked"))??;
    if n1 < half {
        // The file ended in the first half (or was cut while we read): what the second half
        // saw is not next to it, so it is left for the next block to read again.
        return Ok((n1, crc1));
    }
    let mut h = crc32fast::Hasher::new_with_initial_len(crc1, n1 as u64);
    h.combine(&crc32fast::Hasher::new_with_initial_len(crc2, n2 as u64));
    Ok((n1 + n2, h.finalize()))
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
/// sparse chunk; `None` when the block is all data (or the file ends at `offset`).
fn read_sparse_block(
    file: &File,
    path: &Arc<[u8]>,
    offset: u64,
    chunk_size: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(Piece, u64)>> {
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
    let piece = Piece::Sparse {
        path: path.clone(),
        offset,
        map,
        buf: std::mem::take(buf),
        crc,
    };
    Ok(Some((piece, end - offset)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Split reads give the same bytes and CRC as one plain read, whatever the file's end.
    #[test]
    fn split_block_reads_match_a_plain_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let block = 2 * SPLIT_READ;
        let half = block / 2;
        for size in [
            0,
            1,
            half - 1,
            half,
            half + 1,
            block - 1,
            block,
            block + 1,
            3 * half + 7,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 131 + i / 997) as u8).collect();
            let path = dir.path().join(format!("f{size}"));
            std::fs::write(&path, &data).expect("write");
            let f = File::open(&path).expect("open");
            let mut buf = vec![0u8; block];
            let mut off = 0usize;
            loop {
                let (n, crc) = read_block(&f, off as u64, &mut buf, true).expect("read");
                let want = &data[off..(off + block).min(size)];
                assert_eq!(n, want.len(), "size {size} offset {off}");
                assert_eq!(&buf[..n], want, "size {size} offset {off}");
                assert_eq!(crc, crc32fast::hash(want), "size {size} offset {off}");
                if n == 0 {
                    break;
                }
                off += n;
            }
            assert_eq!(off, size);
        }
    }
}
