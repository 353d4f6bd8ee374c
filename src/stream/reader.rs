//! A blocking reader over the sans-I/O decoder: reads bytes as the decoder asks for them.
//!
//! The buffer grows only with bytes that have arrived: capacity is reserved in proportion to
//! what was read (and to the size of the previous chunk, which also arrived), never by a
//! length the input declares.

use std::io::{ErrorKind, Read};

use bytes::BytesMut;

use crate::stream::error::StreamError;

type Result<T> = std::result::Result<T, StreamError>;
use crate::format::{Chunk, DecodeOptions, Decoder, Dialect};

const MIN_READ: usize = 1 << 20;

pub struct ChunkReader<R> {
    input: R,
    what: String,
    decoder: Decoder,
    buf: BytesMut,
    eof: bool,
    /// Size of the last whole chunk: a good guess for the next one, and already paid for.
    hint: usize,
    last_read: usize,
}

impl<R: Read> ChunkReader<R> {
    pub fn new(input: R, what: &str, opts: DecodeOptions) -> Self {
        ChunkReader {
            input,
            what: what.to_string(),
            decoder: Decoder::new(opts),
            buf: BytesMut::new(),
            eof: false,
            hint: MIN_READ,
            last_read: MIN_READ,
        }
    }

    /// Stream offset just past the last chunk returned.
    pub fn stream_offset(&self) -> u64 {
        self.decoder.stream_offset()
    }

    pub fn dialect(&self) -> Dialect {
        self.decoder.dialect()
    }

    /// The next whole chunk, `None` at a clean end of input.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        loop {
            if let Some(c) = self.decoder.decode(&mut self.buf)? {
                self.hint = self.hint.max(c.encoded_len as usize);
                return Ok(Some(c));
            }
            if self.eof {
                return Ok(self.decoder.decode_eof(&mut self.buf)?);
            }
            self.fill()?;
        }
    }

    fn fill(&mut self) -> Result<()> {
        let have = self.buf.len();
        let need = self.decoder.bytes_needed().max(have + 1);
        let remaining = need - have;
        // Grow only when the chunk cannot fit, and then by no more than what has arrived
        // justifies (the bytes in hand, or the size of the last whole chunk): a declared
        // length alone never reserves memory. Spare room is otherwise used as it is, so a
        // buffer is never reallocated (and copied) just to read ahead.
        if self.buf.capacity() - have < remaining {
            let grant = remaining.min(self.hint.max(have).max(MIN_READ));
            // Once every chunk cut from the buffer has been dropped (written), `reserve` takes
            // the same allocation back instead of faulting in a fresh one.
            self.buf.reserve(grant);
        }
        let start = self.buf.len();
        // Zero only a window that the last read suggests will be filled (pipes deliver
        // 64 KiB at a time, files as much as asked), so spare capacity is not re-zeroed.
        let window = (self.last_read * 2).clamp(64 << 10, 4 << 20);
        let room = (self.buf.capacity() - start).min(window);
        self.buf.resize(start + room, 0);
        let n = loop {
            match self.input.read(&mut self.buf[start..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(start);
                    return Err(StreamError::Read {
                        what: self.what.clone(),
                        source: e,
                    });
                }
            }
        };
        self.buf.truncate(start + n);
        self.last_read = n;
        if n == 0 {
            self.eof = true;
        }
        Ok(())
    }
}
