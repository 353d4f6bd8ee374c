//! The [`ChunkSink`] trait every consumer of a decoded stream implements, the one loop that
//! drives a sink from a byte source ([`run`]), and fan-out to several sinks.
//!
//! A sink never parses bytes: it receives whole, CRC-checked chunks that the [`Ledger`] has
//! already accepted, with the ledger's verdict on what each one means for its file.

use std::io::Read;

use crate::format::{Chunk, DecodeOptions, Ledger, LedgerEvent};
use crate::progress::Progress;
use crate::stream::error::StreamError;
use crate::stream::reader::ChunkReader;

/// A consumer of decoded chunks: a disk writer, a verifier, an uploader, a forwarder.
///
/// Its error type is its own (a disk writer's names the target directory); a defect of the
/// stream itself reaches the caller through it, hence `From<StreamError>`.
pub trait ChunkSink {
    type Error: From<StreamError>;

    /// One chunk, accepted by the ledger. `event` says whether it creates or closes a file.
    fn chunk(&mut self, chunk: Chunk, event: &LedgerEvent) -> Result<(), Self::Error>;

    /// The stream ended cleanly and every file is complete. Flush whatever is pending.
    fn finish(&mut self, ledger: &Ledger) -> Result<(), Self::Error>;
}

/// Feeds every chunk to each of several sinks in turn.
pub struct FanOut<'a, E>(pub Vec<&'a mut dyn ChunkSink<Error = E>>);

impl<E: From<StreamError>> ChunkSink for FanOut<'_, E> {
    type Error = E;

    fn chunk(&mut self, chunk: Chunk, event: &LedgerEvent) -> Result<(), E> {
        for s in &mut self.0 {
            s.chunk(chunk.clone(), event)?;
        }
        Ok(())
    }
    fn finish(&mut self, ledger: &Ledger) -> Result<(), E> {
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
pub fn run<R: Read, S: ChunkSink + ?Sized>(
    input: R,
    what: &str,
    opts: DecodeOptions,
    sink: &mut S,
    progress: &Progress,
) -> Result<(Ledger, StreamTotals), S::Error> {
    run_with(input, what, opts, sink, progress, Ledger::new())
}

/// [`run`] with a given ledger (e.g. one that keeps per-file CRCs).
pub fn run_with<R: Read, S: ChunkSink + ?Sized>(
    input: R,
    what: &str,
    opts: DecodeOptions,
    sink: &mut S,
    progress: &Progress,
    mut ledger: Ledger,
) -> Result<(Ledger, StreamTotals), S::Error> {
    let mut reader = ChunkReader::new(input, what, opts);
    let mut totals = StreamTotals::default();
    while let Some(chunk) = reader.next_chunk()? {
        progress.set_position(reader.stream_offset());
        let event = ledger.apply(&chunk).map_err(StreamError::from)?;
        totals.chunks += 1;
        totals.data_bytes += chunk.data_len();
        if let LedgerEvent::File { closed: true, .. } = event {
            totals.files += 1;
            progress.file_done(&chunk.display_path());
        }
        sink.chunk(chunk, &event)?;
    }
    ledger.finish().map_err(StreamError::from)?;
    sink.finish(&ledger)?;
    totals.bytes = reader.stream_offset();
    totals.dialect = reader.dialect().to_string();
    progress.set_position(totals.bytes);
    Ok((ledger, totals))
}
