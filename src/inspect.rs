//! `list` and `verify`: read a whole stream through the decoder and the ledger, write nothing.

use std::io::Read;
use std::path::Path;

use crate::codec::ChunkReader;
use crate::error::{Error, Result};
use crate::format::{DecodeOptions, FileRecord, FileState, Ledger, LedgerEvent};
use crate::progress::Progress;
use crate::sink::StreamTotals;

/// What a scan found: every file seen, the totals, and the first defect if any.
pub struct Scan {
    pub ledger: Ledger,
    pub totals: StreamTotals,
    pub defect: Option<Error>,
}

/// Read the whole stream, checking every CRC, every offset and completeness. Stops at the
/// first defect, keeping what was seen before it.
pub fn scan<R: Read>(input: R, what: &str, opts: DecodeOptions, progress: &Progress) -> Scan {
    let mut reader = ChunkReader::new(input, what, opts);
    let mut ledger = Ledger::new();
    let mut totals = StreamTotals::default();
    let defect = loop {
        match reader.next_chunk() {
            Ok(Some(chunk)) => {
                progress.set_position(reader.stream_offset());
                match ledger.apply(&chunk) {
                    Ok(ev) => {
                        totals.chunks += 1;
                        totals.data_bytes += chunk.data_len();
                        if let LedgerEvent::File { closed: true, .. } = ev {
                            totals.files += 1;
                            progress.file_done(&chunk.display_path());
                        }
                    }
                    Err(e) => break Some(e.into()),
                }
            }
            Ok(None) => break ledger.finish().err().map(Error::from),
            Err(e) => break Some(e),
        }
    };
    totals.bytes = reader.stream_offset();
    totals.dialect = reader.dialect().to_string();
    Scan {
        ledger,
        totals,
        defect,
    }
}

/// Scan a file, or standard input for `None` / `-`.
pub fn scan_path(input: Option<&Path>, opts: DecodeOptions, progress: &Progress) -> Result<Scan> {
    let (f, what) = crate::stdio::open_input(input)?;
    Ok(scan(f, &what, opts, progress))
}

/// One file of a listing, as printed by `list --json`.
#[derive(Debug, serde::Serialize)]
pub struct ListedFile {
    pub path: String,
    pub size: u64,
    pub data_bytes: u64,
    pub chunks: u64,
    pub state: FileState,
}

impl From<&FileRecord> for ListedFile {
    fn from(r: &FileRecord) -> Self {
        ListedFile {
            path: crate::format::chunk_display_path(&r.path),
            size: r.size,
            data_bytes: r.data_bytes,
            chunks: r.chunks,
            state: r.state,
        }
    }
}

/// The whole listing, as printed by `list --json`.
#[derive(Debug, serde::Serialize)]
pub struct Listing {
    pub dialect: String,
    pub chunks: u64,
    pub bytes: u64,
    pub files: Vec<ListedFile>,
    /// The defect that stopped the scan, if any.
    pub error: Option<String>,
}

impl Listing {
    pub fn from_scan(scan: &Scan) -> Self {
        Listing {
            dialect: scan.totals.dialect.clone(),
            chunks: scan.totals.chunks,
            bytes: scan.totals.bytes,
            files: scan.ledger.records().iter().map(ListedFile::from).collect(),
            error: scan.defect.as_ref().map(|e| e.to_string()),
        }
    }
}

/// Checks a stream pushed to it piece by piece (a forwarder's view: the bytes go elsewhere,
/// a copy passes through here). Memory: at most one chunk is held.
pub struct StreamChecker {
    decoder: crate::format::Decoder,
    buf: bytes::BytesMut,
    ledger: Ledger,
    totals: StreamTotals,
}

impl StreamChecker {
    pub fn new(opts: DecodeOptions) -> Self {
        Self::with_ledger(opts, Ledger::new())
    }

    /// A checker keeping its records in `ledger` (e.g. one that keeps per-file CRCs).
    pub fn with_ledger(opts: DecodeOptions, ledger: Ledger) -> Self {
        StreamChecker {
            decoder: crate::format::Decoder::new(opts),
            buf: bytes::BytesMut::new(),
            ledger,
            totals: StreamTotals::default(),
        }
    }

    /// Check the next bytes of the stream.
    pub fn push(&mut self, data: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(data);
        while let Some(chunk) = self.decoder.decode(&mut self.buf)? {
            self.account(&chunk)?;
        }
        Ok(())
    }

    fn account(&mut self, chunk: &crate::format::Chunk) -> Result<()> {
        let ev = self.ledger.apply(chunk)?;
        self.totals.chunks += 1;
        self.totals.data_bytes += chunk.data_len();
        if let LedgerEvent::File { closed: true, .. } = ev {
            self.totals.files += 1;
        }
        Ok(())
    }

    /// The stream ended: it must end at a chunk boundary with every file complete.
    pub fn finish(self) -> Result<StreamTotals> {
        self.finish_with_ledger().map(|(t, _)| t)
    }

    /// [`StreamChecker::finish`], also returning the ledger with every file's record.
    pub fn finish_with_ledger(mut self) -> Result<(StreamTotals, Ledger)> {
        while let Some(chunk) = self.decoder.decode_eof(&mut self.buf)? {
            self.account(&chunk)?;
        }
        self.ledger.finish()?;
        self.totals.bytes = self.decoder.stream_offset();
        self.totals.dialect = self.decoder.dialect().to_string();
        Ok((self.totals, self.ledger))
    }
}
