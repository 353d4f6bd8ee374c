//! The [`ChunkSink`] trait every consumer of a decoded stream implements, the one loop that
//! drives a sink from a byte source ([`run`]), and fan-out to several sinks.
//!
//! A sink never parses bytes: it receives whole, CRC-checked chunks that the [`Ledger`] has
//! already accepted, with the ledger's verdict on what each one means for its file.

use std::io::Read;

use crate::error::Result;
use crate::format::{Chunk, DecodeOptions, Ledger, LedgerEvent};
use crate::progress::Progress;
use crate::stream::reader::ChunkReader;

/// A consumer of decoded chunks: a disk writer, a verifier, an uploader, a forwarder.
pub trait ChunkSink {
    /// One chunk, accepted by the ledger. `event` says whether it creates or closes a file.
    fn chunk(&mut self, chunk: Chunk, event: &LedgerEvent) -> Result<()>;

    /// The stream ended cleanly and every file is complete. Flush whatever is pending.
    fn finish(&mut self, ledger: &Ledger) -> Result<()>;
}

/// Feeds every chunk to each of several sinks in turn.
pub struct FanOut<'a>(pub Vec<&'a mut dyn ChunkSink>);

impl ChunkSink for FanOut<'_> {
    fn chunk(&mut self, chunk: Chunk, event: &LedgerEvent) -> Result<()> {
        for s in &mut self.0 {
            s.chunk(chunk.clone(), event)?;
        }
        Ok(())
    }
    fn finish(&mut self, ledger: &Ledger) -> Result<()> {
        for s in &mut self.0 {
            s.finish(ledger)?;
        }
        Ok(())
    }
}

/// What a whole run saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StreamTotals {
    pub chunks: u64,
    /// Stream bytes read.
    pub bytes: u64,
    /// File data bytes carried (holes excluded).
    pub data_bytes: u64,
    pub files: u64,
    pub dialect: String,
}

/// Decode `input` and feed `sink` until a clean end. Returns the ledger (for listings) and
/// the totals. Any defect stops the run at once with an error naming offset and path.
pub fn run<R: Read>(
    input: R,
    what: &str,
    opts: DecodeOptions,
    sink: &mut dyn ChunkSink,
    progress: &Progress,
) -> Result<(Ledger, StreamTotals)> {
    run_with(input, what, opts, sink, progress, Ledger::new())
}

/// [`run`] with a given ledger (e.g. one that keeps per-file CRCs).
pub fn run_with<R: Read>(
    input: R,
    what: &str,
    opts: DecodeOptions,
    sink: &mut dyn ChunkSink,
    progress: &Progress,
    mut ledger: Ledger,
) -> Result<(Ledger, StreamTotals)> {
    let mut reader = ChunkReader::new(input, what, opts);
    let mut totals = StreamTotals::default();
    while let Some(chunk) = reader.next_chunk()? {
        progress.set_position(reader.stream_offset());
        let event = ledger.apply(&chunk)?;
        totals.chunks += 1;
        totals.data_bytes += chunk.data_len();
        if let LedgerEvent::File { closed: true, .. } = event {
            totals.files += 1;
            progress.file_done(&chunk.display_path());
        }
        sink.chunk(chunk, &event)?;
    }
    ledger.finish()?;
    sink.finish(&ledger)?;
    totals.bytes = reader.stream_offset();
    totals.dialect = reader.dialect().to_string();
    progress.set_position(totals.bytes);
    Ok((ledger, totals))
}
