//! `list` and `verify`: read a whole stream through the decoder and the ledger, write nothing.
//!
//! This module only reports: it never writes a file, and it never forwards bytes (a forwarder
//! checks what passes with [`crate::stream::check::StreamChecker`]).

use std::io::Read;
use std::path::Path;

use crate::format::{DecodeOptions, FileRecord, FileState, Ledger, LedgerEvent};
use crate::progress::Progress;
use crate::stream::error::StreamError;
use crate::stream::reader::ChunkReader;
use crate::stream::sink::StreamTotals;

/// What a scan found: every file seen, the totals, and the first defect if any.
pub struct Scan {
    pub ledger: Ledger,
    pub totals: StreamTotals,
    pub defect: Option<StreamError>,
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
            Ok(None) => break ledger.finish().err().map(StreamError::from),
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
pub fn scan_path(
    input: Option<&Path>,
    opts: DecodeOptions,
    progress: &Progress,
) -> Result<Scan, StreamError> {
    let (f, what) = crate::stream::stdio::open_input(input)?;
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
