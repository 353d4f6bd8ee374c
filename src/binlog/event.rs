//! Binlog event headers and the few event bodies we decode, as pure functions over bytes.
//!
//! Layout (all integers little-endian), see `format-spec/binlog.md`:
//!
//! ```text
//! file   := MAGIC event*
//! event  := header(19) body [crc32(4) when the FORMAT_DESCRIPTION says so]
//! header := timestamp u32 | type u8 | server_id u32 | event_size u32 | next_pos u32 | flags u16
//! ```
//!
//! Bodies handed to these functions never include the trailing CRC. Nothing here allocates
//! in proportion to a length read from input before checking it against the bytes present.

use super::gtid::{Gtid, GtidState};

/// `\xfebin`: every binlog file starts with these four bytes.
pub const MAGIC: [u8; 4] = [0xfe, b'b', b'i', b'n'];
/// The v4 event header: timestamp, type, server id, size, next position, flags.
pub const HEADER_LEN: usize = 19;
/// Offset of the flags (u16) in an event header.
pub const FLAGS_OFFSET: usize = 17;
/// Size of the CRC32 that ends each event when checksums are on.
pub const CRC_LEN: usize = 4;

pub const QUERY_EVENT: u8 = 2;
pub const STOP_EVENT: u8 = 3;
pub const ROTATE_EVENT: u8 = 4;
pub const INTVAR_EVENT: u8 = 5;
pub const RAND_EVENT: u8 = 13;
pub const USER_VAR_EVENT: u8 = 14;
pub const FORMAT_DESCRIPTION_EVENT: u8 = 15;
pub const XID_EVENT: u8 = 16;
pub const XA_PREPARE_LOG_EVENT: u8 = 38;
pub const ANNOTATE_ROWS_EVENT: u8 = 160;
pub const BINLOG_CHECKPOINT_EVENT: u8 = 161;
pub const GTID_EVENT: u8 = 162;
pub const GTID_LIST_EVENT: u8 = 163;
pub const START_ENCRYPTION_EVENT: u8 = 164;

/// Header flag of a FORMAT_DESCRIPTION: the file is still open for writing (not covered by
/// its CRC, since the server clears it in place when it closes the file).
pub const LOG_EVENT_BINLOG_IN_USE_F: u16 = 1;

/// GTID event flag: the group is this event and the one statement after it (DDL etc.).
pub const FL_STANDALONE: u8 = 1;
/// GTID event flag: a commit id (u64) follows the flags byte.
pub const FL_GROUP_COMMIT_ID: u8 = 2;

/// The fixed header in front of every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventHeader {
    pub timestamp: u32,
    pub type_code: u8,
    pub server_id: u32,
    pub event_size: u32,
    pub next_pos: u32,
    pub flags: u16,
}

impl EventHeader {
    pub fn parse(b: &[u8; HEADER_LEN]) -> EventHeader {
        EventHeader {
            timestamp: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            type_code: b[4],
            server_id: u32::from_le_bytes([b[5], b[6], b[7], b[8]]),
            event_size: u32::from_le_bytes([b[9], b[10], b[11], b[12]]),
            next_pos: u32::from_le_bytes([b[13], b[14], b[15], b[16]]),
            flags: u16::from_le_bytes([b[17], b[18]]),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.timestamp.to_le_bytes());
        b[4] = self.type_code;
        b[5..9].copy_from_slice(&self.server_id.to_le_bytes());
        b[9..13].copy_from_slice(&self.event_size.to_le_bytes());
        b[13..17].copy_from_slice(&self.next_pos.to_le_bytes());
        b[17..19].copy_from_slice(&self.flags.to_le_bytes());
        b
    }
}

/// What an event is, as far as following transactions needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    FormatDescription {
        binlog_version: u16,
        server_version: String,
        checksum: bool,
    },
    GtidList(GtidState),
    BinlogCheckpoint {
        file: String,
    },
    /// Starts an event group. `standalone`: FL_STANDALONE, the group is this event and ONE
    /// following event (DDL etc.), no XID/COMMIT ends it.
    Gtid {
        gtid: Gtid,
        standalone: bool,
    },
    Xid {
        xid: u64,
    },
    /// Only what transaction tracking needs: whether the query is BEGIN, COMMIT, ROLLBACK
    /// or something else. Never keep the query text beyond its first bytes.
    Query {
        kind: QueryKind,
    },
    Rotate {
        next_file: String,
        position: u64,
    },
    Stop,
    Other,
}

/// The statement of a QUERY event, as far as it opens or closes a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    Begin,
    Commit,
    /// Exactly `ROLLBACK` (not `ROLLBACK TO SAVEPOINT`, which stays inside its group).
    Rollback,
    /// "XA COMMIT ..." / "XA ROLLBACK ...": ends the group that completes a prepared XA
    /// transaction.
    XaCommit,
    Other,
}

/// One decoded event: where it starts in its file, its header, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub offset: u64,
    pub header: EventHeader,
    pub kind: EventKind,
}

impl Event {
    /// Offset just past this event.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.header.event_size)
    }
}

/// Longest query prefix [`classify_query`] looks at ("XA ROLLBACK" plus a separator).
pub(crate) const QUERY_PREFIX: usize = 12;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// What a FORMAT_DESCRIPTION body says (the body as stored, its CRC included if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fde {
    pub binlog_version: u16,
    pub server_version: String,
    /// The checksum algorithm byte (0 off, 1 CRC32).
    pub checksum_alg: u8,
    /// Post-header length of QUERY events.
    pub query_post_header: usize,
}

/// binlog_version(2) server_version(50) create_timestamp(4) header_len(1).
const FDE_FIXED: usize = 57;

/// Whether a server of this version writes the checksum-algorithm byte (and a CRC slot) at
/// the end of its FORMAT_DESCRIPTION: MariaDB from 5.3, MySQL from 5.6.1.
fn writes_checksum_alg(version: &str) -> bool {
    let mut nums = version
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (
        nums.next().unwrap_or(0),
        nums.next().unwrap_or(0),
        nums.next().unwrap_or(0),
    );
    let split = if version.contains("MariaDB") || version.contains("-maria-") {
        (5, 3, 0)
    } else {
        (5, 6, 1)
    };
    v >= split
}

pub(crate) fn parse_fde(body: &[u8]) -> Result<Fde, String> {
    if body.len() < FDE_FIXED {
        return Err(format!(
            "FORMAT_DESCRIPTION body of {} bytes, expected at least {FDE_FIXED}",
            body.len()
        ));
    }
    let binlog_version = u16_at(body, 0).unwrap_or(0);
    if binlog_version != 4 {
        return Err(format!(
            "binlog format version {binlog_version}, only version 4 is supported"
        ));
    }
    let raw = &body[2..52];
    let raw = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
    let server_version = String::from_utf8_lossy(raw).into_owned();
    if body[56] as usize != HEADER_LEN {
        return Err(format!(
            "event header length {}, only {HEADER_LEN} is supported",
            body[56]
        ));
    }
    // Older servers wrote no checksum-algorithm byte; their files are not supported, so that
    // where the CRC is never depends on the (CRC-protected) version text alone.
    if !writes_checksum_alg(&server_version) {
        return Err(format!(
            "server version {server_version:?} predates binlog checksums (MariaDB 5.3, MySQL 5.6.1); not supported"
        ));
    }
    if body.len() < FDE_FIXED + 1 + CRC_LEN {
        return Err("FORMAT_DESCRIPTION too short for its checksum algorithm".into());
    }
    let alg_at = body.len() - CRC_LEN - 1;
    let (post_headers, checksum_alg) = (&body[FDE_FIXED..alg_at], body[alg_at]);
    let query_post_header = post_headers
        .get(usize::from(QUERY_EVENT) - 1)
        .map_or(13, |&b| usize::from(b));
    if query_post_header < 13 {
        return Err(format!(
            "QUERY post-header length {query_post_header}, expected at least 13"
        ));
    }
    Ok(Fde {
        binlog_version,
        server_version,
        checksum_alg,
        query_post_header,
    })
}

/// A file name inside a ROTATE or BINLOG_CHECKPOINT event. Refused unless it is a plain
/// file name: callers may join it to a directory, so no separators, `.`/`..` or controls.
fn file_name(raw: &[u8], what: &str) -> Result<String, String> {
    let name = std::str::from_utf8(raw).map_err(|_| format!("{what}: file name is not UTF-8"))?;
    if name.is_empty()
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(format!("{what}: {name:?} is not a plain file name"));
    }
    Ok(name.to_string())
}

pub(crate) fn parse_gtid_list(body: &[u8]) -> Result<GtidState, String> {
    let word = u32_at(body, 0).ok_or("GTID_LIST body shorter than its count")?;
    // The high 4 bits are flags; the count is the low 28.
    let count = (word & 0x0fff_ffff) as usize;
    let need = 4 + count * 16;
    if body.len() < need {
        return Err(format!(
            "GTID_LIST announces {count} GTIDs ({need} bytes) in a body of {} bytes",
            body.len()
        ));
    }
    let mut state = GtidState::new();
    for i in 0..count {
        let at = 4 + i * 16;
        let g = Gtid {
            domain: u32_at(body, at).unwrap_or(0),
            server: u32_at(body, at + 4).unwrap_or(0),
            seq: u64_at(body, at + 8).unwrap_or(0),
        };
        if state.get(g.domain).is_some() {
            return Err(format!("GTID_LIST names domain {} twice", g.domain));
        }
        state.apply(g);
    }
    Ok(state)
}

pub(crate) fn parse_checkpoint(body: &[u8]) -> Result<String, String> {
    let len = u32_at(body, 0).ok_or("BINLOG_CHECKPOINT body shorter than its length")? as usize;
    let name = body
        .get(4..4usize.saturating_add(len))
        .ok_or("BINLOG_CHECKPOINT name longer than its body")?;
    file_name(name, "BINLOG_CHECKPOINT")
}

pub(crate) fn parse_gtid(body: &[u8], server: u32) -> Result<(Gtid, bool), String> {
    let seq = u64_at(body, 0).ok_or("GTID body shorter than 13 bytes")?;
    let domain = u32_at(body, 8).ok_or("GTID body shorter than 13 bytes")?;
    let flags = *body.get(12).ok_or("GTID body shorter than 13 bytes")?;
    if flags & FL_GROUP_COMMIT_ID != 0 && body.len() < 21 {
        return Err("GTID with a commit id in a body shorter than 21 bytes".into());
    }
    Ok((
        Gtid {
            domain,
            server,
            seq,
        },
        flags & FL_STANDALONE != 0,
    ))
}

pub(crate) fn parse_xid(body: &[u8]) -> Result<u64, String> {
    u64_at(body, 0).ok_or_else(|| "XID body shorter than 8 bytes".to_string())
}

pub(crate) fn parse_rotate(body: &[u8]) -> Result<(String, u64), String> {
    let position = u64_at(body, 0).ok_or("ROTATE body shorter than 8 bytes")?;
    Ok((file_name(&body[8..], "ROTATE")?, position))
}

/// Where the statement text of a QUERY event starts, from its post-header (`None` until
/// `prefix` holds the post-header).
pub(crate) fn query_text_start(prefix: &[u8], post_header: usize) -> Option<usize> {
    if prefix.len() < post_header {
        return None;
    }
    let db_len = usize::from(prefix[8]);
    let status_len = usize::from(u16_at(prefix, 11)?);
    Some(post_header + status_len + db_len + 1)
}

/// Classifies a QUERY event from the leading bytes of its body (`prefix`, at least up to
/// [`QUERY_PREFIX`] bytes of text when the body has them) and the body's full length.
pub(crate) fn classify_query(
    prefix: &[u8],
    body_len: usize,
    post_header: usize,
) -> Result<QueryKind, String> {
    let start = query_text_start(prefix, post_header)
        .ok_or_else(|| format!("QUERY body shorter than its {post_header}-byte post-header"))?;
    if start > body_len {
        return Err(format!(
            "QUERY status variables and database name ({start} bytes) overrun its body of {body_len} bytes"
        ));
    }
    let text_len = body_len - start;
    let text = &prefix[start.min(prefix.len())..];
    Ok(classify_text(text, text_len))
}

/// `text` is the leading part of a statement of `len` bytes.
fn classify_text(text: &[u8], len: usize) -> QueryKind {
    let is = |word: &[u8]| len == word.len() && text.eq_ignore_ascii_case(word);
    let starts = |word: &[u8]| {
        text.len() >= word.len()
            && text[..word.len()].eq_ignore_ascii_case(word)
            && (len == word.len() || text.get(word.len()) == Some(&b' '))
    };
    if is(b"BEGIN") {
        QueryKind::Begin
    } else if is(b"COMMIT") {
        QueryKind::Commit
    } else if is(b"ROLLBACK") {
        QueryKind::Rollback
    } else if starts(b"XA COMMIT") || starts(b"XA ROLLBACK") {
        QueryKind::XaCommit
    } else {
        QueryKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = EventHeader {
            timestamp: 1,
            type_code: 2,
            server_id: 3,
            event_size: 4,
            next_pos: 5,
            flags: 6,
        };
        assert_eq!(EventHeader::parse(&h.encode()), h);
    }

    #[test]
    fn query_words() {
        assert_eq!(classify_text(b"BEGIN", 5), QueryKind::Begin);
        assert_eq!(classify_text(b"COMMIT", 6), QueryKind::Commit);
        assert_eq!(classify_text(b"rollback", 8), QueryKind::Rollback);
        assert_eq!(classify_text(b"ROLLBACK TO ", 22), QueryKind::Other);
        assert_eq!(classify_text(b"XA COMMIT X'", 30), QueryKind::XaCommit);
        assert_eq!(classify_text(b"XA ROLLBACK ", 30), QueryKind::XaCommit);
        assert_eq!(classify_text(b"XA COMMITTED", 30), QueryKind::Other);
        assert_eq!(classify_text(b"BEGIN", 6), QueryKind::Other);
        assert_eq!(classify_text(b"", 0), QueryKind::Other);
    }

    #[test]
    fn checksum_alg_by_version() {
        assert!(writes_checksum_alg("10.11.6-MariaDB-log"));
        assert!(writes_checksum_alg("5.3.0-MariaDB"));
        assert!(writes_checksum_alg("5.6.1"));
        assert!(!writes_checksum_alg("5.5.60"));
        assert!(!writes_checksum_alg(""));
    }

    #[test]
    fn file_names_are_plain() {
        assert!(file_name(b"mariadb-bin.000002", "x").is_ok());
        for bad in [&b""[..], b"..", b".", b"a/b", b"a\\b", b"a\0", b"\xff"] {
            assert!(file_name(bad, "x").is_err());
        }
    }
}
