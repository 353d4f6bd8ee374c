//! The ledger: per-file bookkeeping over a stream of chunks, with no I/O.
//!
//! It enforces the rules that span chunks: offsets contiguous per file (exactly as the
//! reference extractor requires), no data after a file's `E` chunk unless the chunk carries
//! the REWRITE flag, and at the end, every file closed. The extractor, `verify` and `list`
//! all run the same ledger, so they agree on what a good stream is.

use std::collections::HashMap;

use bytes::Bytes;

use super::chunk::{display_path, Chunk, ChunkBody};
use super::error::LedgerError;

/// Where a file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    /// Chunks seen, no `E` yet.
    Open,
    /// Its `E` chunk arrived.
    Complete,
    /// Removed by a `D` chunk (or replaced by a rename onto it).
    Removed,
}

/// What the stream said about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub path: Bytes,
    /// Logical size: the end of the furthest data or hole written.
    pub size: u64,
    /// Data bytes carried (holes excluded).
    pub data_bytes: u64,
    /// Chunks of this file, `E` included.
    pub chunks: u64,
    pub state: FileState,
    /// File offset the next data chunk must start at.
    pub next_offset: u64,
    /// CRC-32 of the data bytes in stream order (holes excluded); kept only by a ledger made
    /// with [`Ledger::with_crcs`], else 0.
    pub crc32: u32,
}

/// What applying one chunk means for the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerEvent {
    /// A data, seek or end chunk. `created` is set on the first chunk of a file (the file must
    /// be created; `truncate` says it may replace an existing one: the REWRITE flag).
    File {
        created: bool,
        truncate: bool,
        closed: bool,
    },
    /// `D`: the path (and anything below it) is gone.
    Removed,
    /// `R`: the path was renamed.
    Renamed,
    /// An IGNORABLE chunk of unknown type, skipped.
    Ignored,
}

#[derive(Debug, Default)]
pub struct Ledger {
    records: Vec<FileRecord>,
    /// Latest record of each live path.
    by_path: HashMap<Bytes, usize>,
    open: usize,
    crcs: bool,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// A ledger that also keeps each file's CRC-32 (for backup manifests).
    pub fn with_crcs() -> Self {
        Ledger {
            crcs: true,
            ..Self::default()
        }
    }

    /// Apply one decoded chunk.
    pub fn apply(&mut self, c: &Chunk) -> Result<LedgerEvent, LedgerError> {
        let at = c.stream_offset;
        let spath = || display_path(&c.path);
        match &c.body {
            ChunkBody::Ignored { .. } => return Ok(LedgerEvent::Ignored),
            ChunkBody::Remove => {
                self.refuse_open_under(at, "remove", &c.path)?;
                self.remove_tree(&c.path);
                return Ok(LedgerEvent::Removed);
            }
            ChunkBody::Rename { to } => {
                if c.path == *to || is_below(to, &c.path) {
                    return Err(LedgerError::BadRename {
                        offset: at,
                        path: spath(),
                        to: display_path(to),
                        reason: "target is the source or lies inside it",
                    });
                }
                self.refuse_open_under(at, "rename", &c.path)?;
                self.refuse_open_under(at, "rename", to)?;
                self.rename_tree(&c.path, to);
                return Ok(LedgerEvent::Renamed);
            }
            _ => {}
        }

        let existing = self.by_path.get(&c.path).copied();
        let (idx, created) = match existing {
            Some(i) if self.records[i].state == FileState::Open => (i, false),
            Some(_) if !c.is_rewrite() => {
                return Err(LedgerError::AfterEnd {
                    offset: at,
                    path: spath(),
                })
            }
            _ => (self.new_record(c.path.clone()), true),
        };
        let rec = &mut self.records[idx];
        rec.chunks += 1;
        let mut closed = false;
        match &c.body {
            ChunkBody::Payload { offset, data } => {
                expect_offset(rec, at, *offset)?;
                rec.next_offset += data.len() as u64;
                rec.data_bytes += data.len() as u64;
                rec.size = rec.size.max(rec.next_offset);
                if self.crcs {
                    rec.crc32 = continue_crc(rec.crc32, data);
                }
            }
            ChunkBody::Sparse { offset, map, data } => {
                expect_offset(rec, at, *offset)?;
                let holes: u64 = map.iter().map(|e| e.skip as u64).sum();
                rec.next_offset = offset + holes + data.len() as u64;
                rec.data_bytes += data.len() as u64;
                rec.size = rec.size.max(rec.next_offset);
                if self.crcs {
                    rec.crc32 = continue_crc(rec.crc32, data);
                }
            }
            ChunkBody::Seek { offset } => rec.next_offset = *offset,
            ChunkBody::Eof => {
                rec.state = FileState::Complete;
                self.open -= 1;
                closed = true;
            }
            ChunkBody::Remove | ChunkBody::Rename { .. } | ChunkBody::Ignored { .. } => {}
        }
        Ok(LedgerEvent::File {
            created,
            truncate: c.is_rewrite(),
            closed,
        })
    }

    /// At end of input: every file must have had its `E` chunk.
    pub fn finish(&self) -> Result<(), LedgerError> {
        if self.open == 0 {
            return Ok(());
        }
        let paths = self
            .records
            .iter()
            .filter(|r| r.state == FileState::Open)
            .map(|r| display_path(&r.path))
            .collect();
        Err(LedgerError::Incomplete { paths })
    }

    /// Files in order of first appearance, removed ones included.
    pub fn records(&self) -> &[FileRecord] {
        &self.records
    }

    /// The record for a live path.
    pub fn get(&self, path: &[u8]) -> Option<&FileRecord> {
        self.by_path.get(path).map(|&i| &self.records[i])
    }

    /// Files still waiting for their `E` chunk.
    pub fn open_files(&self) -> usize {
        self.open
    }

    fn new_record(&mut self, path: Bytes) -> usize {
        // A REWRITE of a completed file starts a new version of it.
        if let Some(old) = self.by_path.get(&path).copied() {
            self.kill(old);
        }
        self.records.push(FileRecord {
            path: path.clone(),
            size: 0,
            data_bytes: 0,
            chunks: 0,
            state: FileState::Open,
            next_offset: 0,
            crc32: 0,
        });
        let i = self.records.len() - 1;
        self.by_path.insert(path, i);
        self.open += 1;
        i
    }

    fn kill(&mut self, i: usize) {
        if self.records[i].state == FileState::Open {
            self.open -= 1;
        }
        self.records[i].state = FileState::Removed;
    }

    fn live_under(&self, path: &[u8]) -> Vec<(Bytes, usize)> {
        self.by_path
            .iter()
            .filter(|(p, _)| p[..] == *path || is_below(p, path))
            .map(|(p, &i)| (p.clone(), i))
            .collect()
    }

    /// The reference refuses to remove or rename a file it still has open; so do we, since
    /// its later chunks would land in a file that no longer has that name.
    fn refuse_open_under(&self, at: u64, op: &'static str, path: &[u8]) -> Result<(), LedgerError> {
        if let Some((p, _)) = self
            .live_under(path)
            .into_iter()
            .find(|(_, i)| self.records[*i].state == FileState::Open)
        {
            return Err(LedgerError::TouchesOpenFile {
                offset: at,
                op,
                path: display_path(path),
                open: display_path(&p),
            });
        }
        Ok(())
    }

    fn remove_tree(&mut self, path: &[u8]) {
        for (p, i) in self.live_under(path) {
            self.by_path.remove(&p);
            self.kill(i);
        }
    }

    fn rename_tree(&mut self, from: &[u8], to: &Bytes) {
        let moved = self.live_under(from);
        // Whatever lived at the target is replaced, as rename(2) replaces it.
        self.remove_tree(to);
        for (p, i) in moved {
            self.by_path.remove(&p);
            let mut np = to.to_vec();
            np.extend_from_slice(&p[from.len()..]);
            let np = Bytes::from(np);
            self.records[i].path = np.clone();
            self.by_path.insert(np, i);
        }
    }
}

fn expect_offset(rec: &FileRecord, at: u64, got: u64) -> Result<(), LedgerError> {
    if got != rec.next_offset {
        return Err(LedgerError::OutOfOrder {
            offset: at,
            path: display_path(&rec.path),
            got,
            expected: rec.next_offset,
        });
    }
    Ok(())
}

/// `p` lies strictly below directory `dir`.
pub fn is_below(p: &[u8], dir: &[u8]) -> bool {
    p.len() > dir.len() && p.starts_with(dir) && p[dir.len()] == b'/'
}

fn continue_crc(crc: u32, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(crc);
    h.update(data);
    h.finalize()
}
