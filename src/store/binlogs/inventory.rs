//! The inventory of archived binlogs: one entry per stored segment, one record per finished
//! file. Pure data and checks, no I/O.

use serde::{Deserialize, Serialize};

use crate::binlog::{Closed, Gtid, GtidState};

pub const FORMAT: u32 = 1;
/// Inventory objects are small; anything larger is refused before it is read.
pub const MAX_ENTRY: u64 = 1 << 20;
pub const MAX_FILE_RECORD: u64 = 16 << 20;

/// One stored segment: bytes `[start, end)` of a server's binlog file, cut at a transaction
/// boundary (or at the file's end after ROTATE/STOP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub format: u32,
    pub file_id: String,
    /// The server's name for the file, e.g. `mariadb-bin.000003`.
    pub file: String,
    pub server_id: u32,
    /// The file's creation time (its FORMAT_DESCRIPTION), seconds since the epoch.
    pub created: u32,
    pub start: u64,
    pub end: u64,
    /// BLAKE3 of the server's bytes `[start, end)`, hex (for a clear segment, the stored bytes).
    pub blake3: String,
    /// Set when the stored object is sealed with age: what is stored, and for whom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<SealedSegment>,
    /// The GTID state at `start` (for a file's first segment: its GTID_LIST).
    pub gtid_before: GtidState,
    /// The GTID state at `end`.
    pub gtid_after: GtidState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_gtid: Option<Gtid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_gtid: Option<Gtid>,
    /// Commit timestamps (seconds) of its first and last transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_time: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_time: Option<u32>,
    pub transactions: u64,
    /// Set on the file's last segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<Closed>,
    /// When the push read the server's file for this segment (seconds since the epoch): every
    /// transaction the server had committed by then is in this segment or an earlier one.
    pub read_at: u64,
}

/// A sealed segment's stored object: `end - start` bytes sealed with age for `recipients`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSegment {
    pub size: u64,
    /// BLAKE3 of the stored (sealed) bytes, hex.
    pub blake3: String,
    pub recipients: Vec<String>,
}

/// A finished file: every segment, in order, covering `[0, size)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub format: u32,
    pub file_id: String,
    pub file: String,
    pub server_id: u32,
    pub created: u32,
    pub size: u64,
    /// `None` for a file the server abandoned (a crash) and a newer file followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<Closed>,
    pub segments: Vec<Segment>,
}

impl Segment {
    pub fn parse(data: &[u8], file_id: &str, start: u64) -> Result<Segment, String> {
        let s: Segment =
            serde_json::from_slice(data).map_err(|e| format!("not a segment entry: {e}"))?;
        s.check(file_id, start)?;
        Ok(s)
    }

    fn check(&self, file_id: &str, start: u64) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format {} is not {FORMAT}", self.format));
        }
        if self.file_id != file_id || self.start != start {
            return Err(format!(
                "it describes {} at {}, not {file_id} at {start}",
                self.file_id, self.start
            ));
        }
        if self.end <= self.start {
            return Err(format!("it ends at {} before its start", self.end));
        }
        if !is_hex_digest(&self.blake3) {
            return Err("its digest is not 64 hex digits".into());
        }
        if let Some(sealed) = &self.sealed {
            if !is_hex_digest(&sealed.blake3) || sealed.recipients.is_empty() {
                return Err("its sealed object's digest or recipients are malformed".into());
            }
            if sealed.size <= self.end - self.start {
                return Err(format!(
                    "its sealed object has {} bytes, fewer than the {} it holds",
                    sealed.size,
                    self.end - self.start
                ));
            }
        }
        if !self.gtid_before.is_within(&self.gtid_after) {
            return Err(format!(
                "its GTID state goes backwards ({} then {})",
                self.gtid_before, self.gtid_after
            ));
        }
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// The stored object's size: the segment's bytes, or what sealing them made.
    pub fn stored_len(&self) -> u64 {
        match &self.sealed {
            Some(s) => s.size,
            None => self.len(),
        }
    }
}

impl FileRecord {
    pub fn parse(data: &[u8], file_id: &str) -> Result<FileRecord, String> {
        let r: FileRecord =
            serde_json::from_slice(data).map_err(|e| format!("not a file record: {e}"))?;
        if r.format != FORMAT || r.file_id != file_id {
            return Err(format!(
                "it describes {} (format {}), not {file_id}",
                r.file_id, r.format
            ));
        }
        let mut at = 0;
        for s in &r.segments {
            s.check(file_id, at)?;
            at = s.end;
        }
        if at != r.size {
            return Err(format!(
                "its segments cover {at} bytes, the record says {}",
                r.size
            ));
        }
        Ok(r)
    }
}

pub fn is_hex_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Seconds since the epoch as RFC 3339 (for listings).
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}
