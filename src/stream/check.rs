//! The checker a forwarder runs beside its bytes: the stream passes through it piece by piece
//! (as the source delivers it, cut anywhere), and it says at the first defect, or at the end,
//! whether what went past was a whole, CRC-checked xbstream with every file complete.
//!
//! It never holds more than one chunk, never writes anything, and never decides what to do
//! about a defect: the caller (the pump) stops the source and tells its peer.

use bytes::BytesMut;

use crate::stream::error::StreamError;

type Result<T> = std::result::Result<T, StreamError>;
use crate::format::{Chunk, DecodeOptions, Decoder, Ledger, LedgerEvent};
use crate::stream::sink::{ChunkSink, StreamTotals};

/// A sink that sees every accepted chunk as it passes (e.g. upload's capture of the small
/// files that say where a backup ends). Its error stops the stream like a defect.
pub type Tap = Box<dyn ChunkSink<Error = StreamError> + Send>;

/// Checks a stream pushed to it piece by piece (a forwarder's view: the bytes go elsewhere,
/// a copy passes through here). Memory: at most one chunk is held.
pub struct StreamChecker {
    decoder: Decoder,
    buf: BytesMut,
    ledger: Ledger,
    totals: StreamTotals,
    tap: Option<Tap>,
}

impl StreamChecker {
    pub fn new(opts: DecodeOptions) -> Self {
        Self::with_ledger(opts, Ledger::new())
    }

    /// A checker keeping its records in `ledger` (e.g. one that keeps per-file CRCs).
    pub fn with_ledger(opts: DecodeOptions, ledger: Ledger) -> Self {
        StreamChecker {
            decoder: Decoder::new(opts),
            buf: BytesMut::new(),
            ledger,
            totals: StreamTotals::default(),
            tap: None,
        }
    }

    /// The same checker, also handing each accepted chunk to `tap`.
    pub fn with_tap(mut self, tap: Tap) -> Self {
        self.tap = Some(tap);
        self
    }

    /// Check the next bytes of the stream.
    pub fn push(&mut self, data: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(data);
        while let Some(chunk) = self.decoder.decode(&mut self.buf)? {
            self.account(&chunk)?;
        }
        Ok(())
    }

    fn account(&mut self, chunk: &Chunk) -> Result<()> {
        let ev = self.ledger.apply(chunk)?;
        self.totals.chunks += 1;
        self.totals.data_bytes += chunk.data_len();
        if let LedgerEvent::File { closed: true, .. } = ev {
            self.totals.files += 1;
        }
        if let Some(tap) = &mut self.tap {
            // A clone shares the chunk's bytes: no copy of the data.
            tap.chunk(chunk.clone(), &ev)?;
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
        if let Some(tap) = &mut self.tap {
            tap.finish(&self.ledger)?;
        }
        self.totals.bytes = self.decoder.stream_offset();
        self.totals.dialect = self.decoder.dialect().to_string();
        Ok((self.totals, self.ledger))
    }
}
