//! The push decoder of one binlog file ([`EventReader`]): bytes in, whole checked events out.
//!
//! State machine, one file from offset 0:
//!
//! ```text
//! Magic(4 bytes) ──► Header(19 bytes) ──► Body(event_size - 19 bytes) ──┐
//!                        ▲                                               │ event out
//!                        └───────────────────────────────────────────────┘
//! ```
//!
//! Memory is bounded whatever the input says: a body is kept only for the kinds we decode
//! and only up to [`MAX_KEPT_BODY`] (QUERY: only its post-header, status variables, database
//! name and the first bytes of the statement); every other body passes through the CRC and
//! is dropped. It must never do I/O and never trust a length before its bytes arrived.

use super::error::BinlogError;
use super::event::{self, Event, EventHeader, EventKind, CRC_LEN, HEADER_LEN, MAGIC, QUERY_PREFIX};

pub use super::tracker::{scan, scan_prefix, Closed, FileSummary, FileTracker, Transaction};

/// Largest body (CRC excluded) we keep for a decoded kind; a longer one is an error.
pub const MAX_KEPT_BODY: usize = 64 * 1024;

/// How much of an event body is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Nothing: the body only passes through the CRC.
    None,
    /// All of it (the decoded kinds other than QUERY).
    All,
    /// QUERY: the post-header first, then up to the statement's first bytes.
    Query { extended: bool },
}

#[derive(Debug)]
struct Body {
    start: u64,
    raw_header: [u8; HEADER_LEN],
    header: EventHeader,
    /// Body bytes after the header, the CRC included.
    len: usize,
    /// Bytes of CRC at the end of the body that the hasher must not see (0 for the
    /// FORMAT_DESCRIPTION, whose CRC is checked once its algorithm byte is known).
    crc_len: usize,
    pos: usize,
    hasher: crc32fast::Hasher,
    keep: Keep,
    kept: Vec<u8>,
    limit: usize,
    crc: [u8; CRC_LEN],
}

#[derive(Debug)]
enum State {
    Magic,
    Header { buf: [u8; HEADER_LEN], have: usize },
    Body(Box<Body>),
}

/// Push decoder of one binlog file. Feed it the file's bytes in pieces of any size, from
/// offset 0; it checks the magic, each header, each event's CRC32 when FORMAT_DESCRIPTION
/// says the file has them, and returns whole events. Memory is bounded: an event body is
/// kept only for the decoded kinds and only up to 64 KiB (a longer FDE/GTID_LIST/ROTATE/...
/// is an error; for Query only the leading bytes needed; Other bodies are never kept: their
/// CRC is computed as bytes pass).
#[derive(Debug)]
pub struct EventReader {
    file: String,
    offset: u64,
    boundary: u64,
    checksum: Option<bool>,
    query_post_header: usize,
    state: State,
    /// The first error: every later call returns it again.
    failed: Option<BinlogError>,
}

impl EventReader {
    /// `file` is the file's name, for errors.
    pub fn new(file: &str) -> Self {
        EventReader {
            file: file.to_string(),
            offset: 0,
            boundary: 0,
            checksum: None,
            query_post_header: 13,
            state: State::Magic,
            failed: None,
        }
    }

    /// Consume bytes from the front of `buf`, pushing the events completed by them to `out`
    /// (also those completed before an error). Returns how many bytes were consumed (always
    /// all of `buf` unless an error).
    pub fn feed(&mut self, buf: &[u8], out: &mut Vec<Event>) -> Result<usize, BinlogError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut rest = buf;
        while !rest.is_empty() {
            match self.step(rest, out) {
                Ok(n) => rest = &rest[n..],
                Err(e) => {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(buf.len())
    }

    /// Bytes consumed so far (= file offset of the next byte expected).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Offset where the last complete event ended (4 once the magic is in, 0 before).
    pub fn event_boundary(&self) -> u64 {
        self.boundary
    }

    /// Whether the file says events carry CRC32 (None until FDE was read).
    pub fn checksum(&self) -> Option<bool> {
        self.checksum
    }

    /// The unit the reader is in the middle of, as (its offset, bytes it needs in all):
    /// the magic, an event header, or an event. `None` at an event boundary.
    pub fn pending(&self) -> Option<(u64, u64)> {
        match &self.state {
            State::Magic => Some((0, MAGIC.len() as u64)),
            State::Header { have: 0, .. } => None,
            State::Header { .. } => Some((self.boundary, HEADER_LEN as u64)),
            State::Body(b) => Some((b.start, u64::from(b.header.event_size))),
        }
    }

    fn err_at(&self, offset: u64) -> ErrAt<'_> {
        ErrAt {
            file: &self.file,
            offset,
        }
    }

    /// Consumes some bytes of `buf` (at least one), returning how many.
    fn step(&mut self, buf: &[u8], out: &mut Vec<Event>) -> Result<usize, BinlogError> {
        match &mut self.state {
            State::Magic => {
                // Checked byte by byte, so that a short non-binlog fails at once.
                let at = self.offset as usize;
                if buf[0] != MAGIC[at] {
                    return Err(BinlogError::BadMagic {
                        file: self.file.clone(),
                        offset: 0,
                    });
                }
                self.offset += 1;
                if self.offset == MAGIC.len() as u64 {
                    self.boundary = self.offset;
                    self.state = State::Header {
                        buf: [0; HEADER_LEN],
                        have: 0,
                    };
                }
                Ok(1)
            }
            State::Header { buf: hb, have } => {
                let n = (HEADER_LEN - *have).min(buf.len());
                hb[*have..*have + n].copy_from_slice(&buf[..n]);
                *have += n;
                self.offset += n as u64;
                if *have == HEADER_LEN {
                    let raw = *hb;
                    self.start_event(raw, out)?;
                }
                Ok(n)
            }
            State::Body(_) => self.body_bytes(buf, out),
        }
    }

    /// A whole header arrived: check it and get ready for the body.
    fn start_event(
        &mut self,
        raw: [u8; HEADER_LEN],
        out: &mut Vec<Event>,
    ) -> Result<(), BinlogError> {
        let start = self.boundary;
        let header = EventHeader::parse(&raw);
        let e = self.err_at(start);
        let size = u64::from(header.event_size);
        if size < HEADER_LEN as u64 {
            return Err(e.header(format!("event size {size} is below the header's 19 bytes")));
        }
        // next_pos is 32 bits: past 4 GiB it wraps, as the server writes it.
        let end = start + size;
        if u64::from(header.next_pos) != end & 0xffff_ffff {
            return Err(e.header(format!(
                "next position {} does not match offset {start} + size {size}",
                header.next_pos
            )));
        }
        let body = self.plan_body(start, raw, header)?;
        self.state = State::Body(Box::new(body));
        if size == HEADER_LEN as u64 {
            return self.finish_event(out);
        }
        Ok(())
    }

    /// Decides, from the header, how the body will be read.
    fn plan_body(
        &self,
        start: u64,
        raw_header: [u8; HEADER_LEN],
        header: EventHeader,
    ) -> Result<Body, BinlogError> {
        let e = self.err_at(start);
        let t = header.type_code;
        let len = header.event_size as usize - HEADER_LEN;
        let is_fde = t == event::FORMAT_DESCRIPTION_EVENT;
        match (self.checksum, is_fde) {
            (None, false) => {
                return Err(e.order(format!(
                    "the first event is of type {t}, not FORMAT_DESCRIPTION"
                )))
            }
            (Some(_), true) => return Err(e.order("a second FORMAT_DESCRIPTION event".into())),
            _ => {}
        }
        if t == event::START_ENCRYPTION_EVENT {
            return Err(BinlogError::Encrypted {
                file: self.file.clone(),
                offset: start,
            });
        }
        let crc_len = if self.checksum == Some(true) {
            CRC_LEN
        } else {
            0
        };
        if len < crc_len {
            return Err(e.header(format!(
                "event size {} leaves no room for its CRC32",
                header.event_size
            )));
        }
        let payload = len - crc_len;
        let keep = match t {
            event::QUERY_EVENT => Keep::Query { extended: false },
            event::FORMAT_DESCRIPTION_EVENT
            | event::GTID_LIST_EVENT
            | event::BINLOG_CHECKPOINT_EVENT
            | event::GTID_EVENT
            | event::XID_EVENT
            | event::ROTATE_EVENT
            | event::STOP_EVENT => Keep::All,
            _ => Keep::None,
        };
        if keep == Keep::All && payload > MAX_KEPT_BODY {
            return Err(BinlogError::TooLarge {
                file: self.file.clone(),
                offset: start,
                what: kind_name(t),
                size: u64::from(header.event_size),
                limit: MAX_KEPT_BODY as u64,
            });
        }
        let limit = match keep {
            Keep::None => 0,
            Keep::All => payload,
            Keep::Query { .. } => payload.min(self.query_post_header),
        };
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&raw_header);
        Ok(Body {
            start,
            raw_header,
            header,
            len,
            crc_len,
            pos: 0,
            hasher,
            keep,
            kept: Vec::with_capacity(limit),
            limit,
            crc: [0; CRC_LEN],
        })
    }

    /// Body bytes: through the CRC, kept as far as wanted; the event is done at its end.
    fn body_bytes(&mut self, buf: &[u8], out: &mut Vec<Event>) -> Result<usize, BinlogError> {
        let qph = self.query_post_header;
        let State::Body(b) = &mut self.state else {
            return Ok(0);
        };
        let n = (b.len - b.pos).min(buf.len());
        let payload_len = b.len - b.crc_len;
        let in_payload = payload_len.saturating_sub(b.pos).min(n);
        b.take_payload(&buf[..in_payload], qph);
        b.pos += in_payload;
        for &byte in &buf[in_payload..n] {
            b.crc[b.pos - payload_len] = byte;
            b.pos += 1;
        }
        self.offset += n as u64;
        if b.pos == b.len {
            self.finish_event(out)?;
        }
        Ok(n)
    }

    /// The whole event is in: check its CRC, decode the kept body, hand it out.
    fn finish_event(&mut self, out: &mut Vec<Event>) -> Result<(), BinlogError> {
        let State::Body(b) = std::mem::replace(
            &mut self.state,
            State::Header {
                buf: [0; HEADER_LEN],
                have: 0,
            },
        ) else {
            return Ok(());
        };
        let e = self.err_at(b.start);
        let kind = if b.header.type_code == event::FORMAT_DESCRIPTION_EVENT {
            self.finish_fde(&b)?
        } else {
            if b.crc_len == CRC_LEN {
                let stored = u32::from_le_bytes(b.crc);
                let computed = b.hasher.clone().finalize();
                if stored != computed {
                    return Err(e.checksum(stored, computed));
                }
            }
            decode_kind(&b, self.query_post_header).map_err(|w| e.malformed(w))?
        };
        self.boundary = b.start + u64::from(b.header.event_size);
        out.push(Event {
            offset: b.start,
            header: b.header,
            kind,
        });
        Ok(())
    }

    /// FORMAT_DESCRIPTION: its own last bytes say whether it (and the file) has CRCs.
    fn finish_fde(&mut self, b: &Body) -> Result<EventKind, BinlogError> {
        let e = self.err_at(b.start);
        let fde = event::parse_fde(&b.kept).map_err(|w| e.malformed(w))?;
        let checksum = match fde.checksum_alg {
            0 => false,
            1 => true,
            a => return Err(e.malformed(format!("unknown checksum algorithm {a}"))),
        };
        // A checksum-aware server fills the FDE's CRC slot even when checksums are off, so
        // the FDE is always checked: a flipped algorithm byte cannot switch checking off. An
        // all-zero slot with checksums off is taken as a writer that left it empty.
        let split = b.kept.len() - CRC_LEN;
        let stored = u32::from_le_bytes(b.kept[split..].try_into().unwrap_or_default());
        if checksum || stored != 0 {
            // The server sets LOG_EVENT_BINLOG_IN_USE_F in the FDE of the file it writes and
            // clears it in place on close; the CRC is computed with the flag cleared.
            let mut header = b.raw_header;
            header[event::FLAGS_OFFSET] &= !(event::LOG_EVENT_BINLOG_IN_USE_F as u8);
            let mut h = crc32fast::Hasher::new();
            h.update(&header);
            h.update(&b.kept[..split]);
            let computed = h.finalize();
            if stored != computed {
                return Err(e.checksum(stored, computed));
            }
        }
        self.checksum = Some(checksum);
        self.query_post_header = fde.query_post_header;
        Ok(EventKind::FormatDescription {
            binlog_version: fde.binlog_version,
            server_version: fde.server_version,
            checksum,
        })
    }
}

impl Body {
    /// Payload bytes (never the CRC): hashed, and kept up to the current limit. A QUERY's
    /// limit grows once its post-header says where the statement starts.
    fn take_payload(&mut self, mut bytes: &[u8], query_post_header: usize) {
        self.hasher.update(bytes);
        loop {
            let n = (self.limit - self.kept.len()).min(bytes.len());
            self.kept.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.keep != (Keep::Query { extended: false }) {
                return;
            }
            let Some(start) = event::query_text_start(&self.kept, query_post_header) else {
                return;
            };
            self.keep = Keep::Query { extended: true };
            let payload = self.len - self.crc_len;
            self.limit = payload.min(start.saturating_add(QUERY_PREFIX));
        }
    }
}

fn decode_kind(b: &Body, query_post_header: usize) -> Result<EventKind, String> {
    let body = &b.kept[..];
    Ok(match b.header.type_code {
        event::GTID_LIST_EVENT => EventKind::GtidList(event::parse_gtid_list(body)?),
        event::BINLOG_CHECKPOINT_EVENT => EventKind::BinlogCheckpoint {
            file: event::parse_checkpoint(body)?,
        },
        event::GTID_EVENT => {
            let (gtid, standalone) = event::parse_gtid(body, b.header.server_id)?;
            EventKind::Gtid { gtid, standalone }
        }
        event::XID_EVENT => EventKind::Xid {
            xid: event::parse_xid(body)?,
        },
        event::ROTATE_EVENT => {
            let (next_file, position) = event::parse_rotate(body)?;
            EventKind::Rotate {
                next_file,
                position,
            }
        }
        event::STOP_EVENT => EventKind::Stop,
        event::QUERY_EVENT => EventKind::Query {
            kind: event::classify_query(body, b.len - b.crc_len, query_post_header)?,
        },
        _ => EventKind::Other,
    })
}

fn kind_name(t: u8) -> &'static str {
    match t {
        event::FORMAT_DESCRIPTION_EVENT => "FORMAT_DESCRIPTION",
        event::GTID_LIST_EVENT => "GTID_LIST",
        event::BINLOG_CHECKPOINT_EVENT => "BINLOG_CHECKPOINT",
        event::GTID_EVENT => "GTID",
        event::XID_EVENT => "XID",
        event::ROTATE_EVENT => "ROTATE",
        event::STOP_EVENT => "STOP",
        event::QUERY_EVENT => "QUERY",
        _ => "an",
    }
}

/// Builds errors for one place in one file.
pub(crate) struct ErrAt<'a> {
    pub file: &'a str,
    pub offset: u64,
}

impl ErrAt<'_> {
    pub fn header(&self, why: String) -> BinlogError {
        BinlogError::BadHeader {
            file: self.file.to_string(),
            offset: self.offset,
            why,
        }
    }
    pub fn order(&self, what: String) -> BinlogError {
        BinlogError::Order {
            file: self.file.to_string(),
            offset: self.offset,
            what,
        }
    }
    pub fn malformed(&self, what: String) -> BinlogError {
        BinlogError::Malformed {
            file: self.file.to_string(),
            offset: self.offset,
            what,
        }
    }
    pub fn checksum(&self, stored: u32, computed: u32) -> BinlogError {
        BinlogError::Checksum {
            file: self.file.to_string(),
            offset: self.offset,
            stored,
            computed,
        }
    }
}
