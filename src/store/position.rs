//! Where a full backup ends: the small files mariabackup puts in its stream
//! (`xtrabackup_binlog_info`, named `mariadb_backup_binlog_info` from 11.4 on, and
//! `xtrabackup_checkpoints`), captured from the chunks as they pass through `upload` and
//! parsed into the manifest's [`BinlogInfo`] and [`Checkpoints`].
//!
//! The stream is hostile input: only the top-level files of exactly these names are kept, each
//! at most [`MAX_INFO_FILE`] bytes, and parsing is strict. A file that is too large or
//! malformed gives a warning and no field; it never fails the upload (a full backup without a
//! position is still a full backup, only not a point-in-time recovery base). This module never
//! reads or writes anything itself: it sees chunks and returns values.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use super::manifest::{BinlogInfo, Checkpoints};
use crate::format::{is_below, Chunk, ChunkBody, Ledger, LedgerEvent};
use crate::stream::error::StreamError;
use crate::stream::sink::ChunkSink;

/// The binlog info file's name up to MariaDB 11.2.
pub const XTRABACKUP_BINLOG_INFO: &str = "xtrabackup_binlog_info";
/// Its name from MariaDB 11.4 on; preferred when both are present.
pub const MARIADB_BACKUP_BINLOG_INFO: &str = "mariadb_backup_binlog_info";
pub const XTRABACKUP_CHECKPOINTS: &str = "xtrabackup_checkpoints";
/// The most bytes kept of each file: the real ones are well under 200 bytes, so anything
/// larger is not what we think it is.
pub const MAX_INFO_FILE: usize = 4096;
/// The longest binlog file name accepted (a file system's name limit).
const MAX_FILE_NAME: usize = 255;

/// Parse a binlog info file: one line `<file>\t<position>\t<gtid>` (tabs, as mariabackup
/// writes it; a trailing newline is accepted; the GTID part may be missing or empty).
/// `end_time` is when the file passed. The error says what is wrong, without the file's name.
pub fn parse_binlog_info(
    info_file: &str,
    data: &[u8],
    end_time: String,
) -> Result<BinlogInfo, String> {
    let text = std::str::from_utf8(data).map_err(|_| "it is not UTF-8 text".to_string())?;
    let line = text.strip_suffix('\n').unwrap_or(text);
    if line.is_empty() {
        return Err("it is empty".into());
    }
    if line.contains('\n') {
        return Err("it holds more than one line".into());
    }
    let fields: Vec<&str> = line.split('\t').collect();
    let (file, position, gtid) = match fields.as_slice() {
        [f, p] => (*f, *p, ""),
        [f, p, g] => (*f, *p, *g),
        _ => {
            return Err(format!(
                "it has {} tab-separated field(s), not <file>, <position> and an optional <gtid>",
                fields.len()
            ))
        }
    };
    check_file_name(file)?;
    let position = parse_number(position)
        .ok_or_else(|| format!("the position '{}' is not a number", shown(position)))?;
    if !gtid
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b',' | b' '))
    {
        return Err(format!(
            "the GTID position '{}' holds characters other than digits, '-', ',' and spaces",
            shown(gtid)
        ));
    }
    Ok(BinlogInfo {
        info_file: info_file.to_string(),
        file: file.to_string(),
        position,
        gtid: gtid.to_string(),
        end_time,
    })
}

/// A binlog file name must be a plain name in the server's binlog directory: no directory
/// part (`/`), no `..` (either could point a restore at a file elsewhere), printable ASCII
/// without spaces (no control characters to rewrite a terminal), at most 255 bytes.
fn check_file_name(f: &str) -> Result<(), String> {
    if f.is_empty() {
        return Err("the binlog file name is empty".into());
    }
    if f.len() > MAX_FILE_NAME {
        return Err(format!(
            "the binlog file name is {} bytes long (at most {MAX_FILE_NAME})",
            f.len()
        ));
    }
    if !f.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the binlog file name '{}' is not printable ASCII without spaces",
            shown(f)
        ));
    }
    if f.contains('/') || f.contains("..") || f == "." {
        return Err(format!("the binlog file name '{f}' is not a plain name"));
    }
    Ok(())
}

/// A decimal u64 of digits only (`str::parse` would also take a leading `+`).
fn parse_number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Text from the stream, made safe to print: control characters escaped, at most 64 chars.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_default).collect();
    if s.chars().count() > 64 {
        out.push_str("...");
    }
    out
}

/// Parse `xtrabackup_checkpoints`: `key = value` lines; `backup_type`, `from_lsn`, `to_lsn`
/// and `last_lsn` are required (once each), other keys are ignored.
pub fn parse_checkpoints(data: &[u8]) -> Result<Checkpoints, String> {
    let text = std::str::from_utf8(data).map_err(|_| "it is not UTF-8 text".to_string())?;
    let (mut backup_type, mut from, mut to, mut last) = (None, None, None, None);
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {} is not 'key = value'", n + 1));
        };
        let (key, value) = (key.trim(), value.trim());
        let slot = match key {
            "backup_type" => {
                let ok = !value.is_empty()
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
                if !ok {
                    return Err(format!("backup_type '{}' is not a word", shown(value)));
                }
                if backup_type.replace(value.to_string()).is_some() {
                    return Err("backup_type appears twice".into());
                }
                continue;
            }
            "from_lsn" => &mut from,
            "to_lsn" => &mut to,
            "last_lsn" => &mut last,
            _ => continue,
        };
        let v = parse_number(value)
            .ok_or_else(|| format!("{key} '{}' is not a number", shown(value)))?;
        if slot.replace(v).is_some() {
            return Err(format!("{key} appears twice"));
        }
    }
    let missing = |k: &str| format!("it has no {k}");
    Ok(Checkpoints {
        backup_type: backup_type.ok_or_else(|| missing("backup_type"))?,
        from_lsn: from.ok_or_else(|| missing("from_lsn"))?,
        to_lsn: to.ok_or_else(|| missing("to_lsn"))?,
        last_lsn: last.ok_or_else(|| missing("last_lsn"))?,
    })
}

/// What became of one captured file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SlotState {
    /// Not in the stream (so far).
    Absent,
    /// Being received.
    Open,
    /// Its `E` chunk passed.
    Complete,
    /// It grew beyond [`MAX_INFO_FILE`]: its bytes were dropped.
    TooLarge,
    /// Removed or renamed by a later chunk: what it said no longer stands.
    Gone(&'static str),
}

/// One file being captured.
#[derive(Debug)]
struct Slot {
    name: &'static str,
    data: Vec<u8>,
    state: SlotState,
    /// When its first chunk passed.
    seen: Option<SystemTime>,
}

impl Slot {
    fn new(name: &'static str) -> Self {
        Slot {
            name,
            data: Vec::new(),
            state: SlotState::Absent,
            seen: None,
        }
    }

    /// Lay `len` bytes of data at `at` (holes before them stay zero), unless that makes the
    /// file too large.
    fn place(&mut self, at: u64, data: &[u8]) {
        let end = at.checked_add(data.len() as u64);
        match end {
            Some(end) if end <= MAX_INFO_FILE as u64 => {
                // Both fit in usize: they are at most MAX_INFO_FILE.
                let (at, end) = (at as usize, end as usize);
                if self.data.len() < end {
                    self.data.resize(end, 0);
                }
                self.data[at..end].copy_from_slice(data);
            }
            _ => {
                self.state = SlotState::TooLarge;
                self.data = Vec::new();
            }
        }
    }

    fn chunk(&mut self, chunk: &Chunk, event: &LedgerEvent) {
        if let LedgerEvent::File { created: true, .. } = event {
            // A new file, or a REWRITE of a completed one: start over.
            *self = Slot::new(self.name);
            self.state = SlotState::Open;
            self.seen = Some(SystemTime::now());
        }
        if self.state != SlotState::Open {
            return;
        }
        match &chunk.body {
            ChunkBody::Payload { offset, data } => self.place(*offset, data),
            ChunkBody::Sparse { offset, map, data } => {
                let mut at = *offset;
                let mut from = 0usize;
                for e in map {
                    at = at.saturating_add(e.skip as u64);
                    // The decoder checked that the runs add up to data's length.
                    let run = data.get(from..from + e.len as usize).unwrap_or_default();
                    self.place(at, run);
                    if self.state != SlotState::Open {
                        return;
                    }
                    at = at.saturating_add(e.len as u64);
                    from += e.len as usize;
                }
                // Trailing holes still make the file longer.
                if at > self.data.len() as u64 {
                    self.place(at, &[]);
                }
            }
            ChunkBody::Eof => self.state = SlotState::Complete,
            _ => {}
        }
    }

    /// The file's bytes and when they passed, if it arrived whole; else why not (`None` when
    /// it was never there).
    fn outcome(&self) -> Option<Result<(&[u8], SystemTime), String>> {
        match &self.state {
            SlotState::Absent => None,
            SlotState::Complete => Some(Ok((&self.data, self.seen.unwrap_or(SystemTime::now())))),
            SlotState::Open => Some(Err("it never ended".into())),
            SlotState::TooLarge => Some(Err(format!(
                "it is larger than {MAX_INFO_FILE} bytes, so it is not what mariabackup writes"
            ))),
            SlotState::Gone(how) => Some(Err(format!("the stream {how} it"))),
        }
    }
}

/// What the capture found: the manifest's two fields, and a warning for each file that was
/// there but could not be used.
#[derive(Debug, Default)]
pub struct Position {
    pub binlog: Option<BinlogInfo>,
    pub checkpoints: Option<Checkpoints>,
    pub warnings: Vec<String>,
}

/// Keeps the three files' bytes as their chunks pass. Feed it every accepted chunk with the
/// ledger's verdict; [`InfoCapture::position`] parses what arrived.
#[derive(Debug)]
pub struct InfoCapture {
    /// MariaDB 11.4's name first: it is preferred.
    binlog: [Slot; 2],
    checkpoints: Slot,
}

impl Default for InfoCapture {
    fn default() -> Self {
        InfoCapture {
            binlog: [
                Slot::new(MARIADB_BACKUP_BINLOG_INFO),
                Slot::new(XTRABACKUP_BINLOG_INFO),
            ],
            checkpoints: Slot::new(XTRABACKUP_CHECKPOINTS),
        }
    }
}

impl InfoCapture {
    pub fn new() -> Self {
        Self::default()
    }

    fn slots(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.binlog
            .iter_mut()
            .chain(std::iter::once(&mut self.checkpoints))
    }

    /// One chunk the ledger accepted.
    pub fn chunk(&mut self, chunk: &Chunk, event: &LedgerEvent) {
        match &chunk.body {
            // A removed or renamed file (or a directory of that name) no longer says where
            // the backup ends; a file renamed onto one of the names has unknown contents.
            ChunkBody::Remove => {
                for s in self.slots() {
                    if s.state != SlotState::Absent && gone(s.name, &chunk.path) {
                        s.state = SlotState::Gone("removes");
                    }
                }
            }
            ChunkBody::Rename { to } => {
                for s in self.slots() {
                    if gone(s.name, &chunk.path) || gone(s.name, to) {
                        s.state = SlotState::Gone("renames");
                    }
                }
            }
            _ => {
                // Only the top-level files of exactly these names.
                if let Some(s) = self.slots().find(|s| s.name.as_bytes() == &chunk.path[..]) {
                    s.chunk(chunk, event);
                }
            }
        }
    }

    /// Parse what arrived. `mariadb_backup_binlog_info` decides when both names are present.
    pub fn position(&self) -> Position {
        let mut p = Position::default();
        if let Some(slot) = self.binlog.iter().find(|s| s.state != SlotState::Absent) {
            let parsed = slot.outcome().map(|o| {
                o.and_then(|(data, seen)| parse_binlog_info(slot.name, data, rfc3339(seen)))
            });
            match parsed {
                Some(Ok(b)) => p.binlog = Some(b),
                Some(Err(why)) => p.warnings.push(format!(
                    "{}: {why}; no binlog position recorded (the backup is whole, but cannot be a point-in-time recovery base)",
                    slot.name
                )),
                None => {}
            }
        }
        match self
            .checkpoints
            .outcome()
            .map(|o| o.and_then(|(data, _)| parse_checkpoints(data)))
        {
            Some(Ok(c)) => p.checkpoints = Some(c),
            Some(Err(why)) => p.warnings.push(format!(
                "{}: {why}; no checkpoints recorded",
                XTRABACKUP_CHECKPOINTS
            )),
            None => {}
        }
        p
    }
}

/// Does a `D`/`R` of `path` take away the top-level file `name`?
fn gone(name: &str, path: &[u8]) -> bool {
    name.as_bytes() == path || is_below(name.as_bytes(), path)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// An [`InfoCapture`] shared between the stream checker (which feeds it, as a tap) and the
/// upload (which reads it once the stream has ended).
#[derive(Debug, Clone, Default)]
pub struct SharedCapture(Arc<Mutex<InfoCapture>>);

impl SharedCapture {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, InfoCapture> {
        // A panic elsewhere cannot leave the capture half-updated in a way that matters:
        // at worst one file's bytes are incomplete, and then its parse fails.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn position(&self) -> Position {
        self.lock().position()
    }
}

impl ChunkSink for SharedCapture {
    type Error = StreamError;

    fn chunk(&mut self, chunk: Chunk, event: &LedgerEvent) -> Result<(), StreamError> {
        self.lock().chunk(&chunk, event);
        Ok(())
    }

    fn finish(&mut self, _ledger: &Ledger) -> Result<(), StreamError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{DecodeOptions, Decoder, SparseEntry};
    use bytes::{Bytes, BytesMut};

    const T: &str = "2026-12-06T17:00:00.000Z";

    fn binlog(data: &[u8]) -> Result<BinlogInfo, String> {
        parse_binlog_info(XTRABACKUP_BINLOG_INFO, data, T.into())
    }

    #[test]
    fn binlog_info_as_mariabackup_writes_it() {
        let b = binlog(b"mariadb-bin.000096\t568\t0-1-2\n").unwrap();
        assert_eq!(
            b,
            BinlogInfo {
                info_file: XTRABACKUP_BINLOG_INFO.into(),
                file: "mariadb-bin.000096".into(),
                position: 568,
                gtid: "0-1-2".into(),
                end_time: T.into(),
            }
        );
        let b = binlog(b"mariadb-bin.000001\t329\t0-1-7,1-2-9").unwrap();
        assert_eq!(b.gtid, "0-1-7,1-2-9");
        assert_eq!(binlog(b"mariadb-bin.000001\t329\t\n").unwrap().gtid, "");
        assert_eq!(binlog(b"mariadb-bin.000001\t329").unwrap().gtid, "");
        assert_eq!(
            binlog(b"mariadb-bin.000001\t329\t0-1-2, 1-1-3")
                .unwrap()
                .gtid,
            "0-1-2, 1-1-3"
        );
    }

    #[test]
    fn binlog_info_refuses_what_is_not_a_plain_position() {
        let long = format!("{}\t4\t", "a".repeat(256));
        let cases: &[(&[u8], &str)] = &[
            (b"../x\t4\t0-1-2", "not a plain name"),
            (b"dir/mariadb-bin.000001\t4\t", "not a plain name"),
            (b"..\t4", "not a plain name"),
            (b"a\x1b[2Jb\t4", "printable ASCII"),
            (b"a b\t4", "printable ASCII"),
            (b"\t4\t0-1-2", "empty"),
            (long.as_bytes(), "256 bytes long"),
            (b"mariadb-bin.000001\t+4\t", "not a number"),
            (b"mariadb-bin.000001\t\t", "not a number"),
            (
                b"mariadb-bin.000001\t99999999999999999999999\t",
                "not a number",
            ),
            (
                b"mariadb-bin.000001\t4\t0-1-2; DROP",
                "characters other than",
            ),
            (b"mariadb-bin.000001\t4\t0-1-2\tx", "4 tab-separated"),
            (b"mariadb-bin.000001", "1 tab-separated"),
            (b"mariadb-bin.000001 4 0-1-2", "1 tab-separated"),
            (b"mariadb-bin.000001\t4\n\n", "more than one line"),
            (b"mariadb-bin.000001\t4\nx\t5", "more than one line"),
            (b"\xff\t4", "not UTF-8"),
            (b"", "empty"),
        ];
        for (data, why) in cases {
            let e = binlog(data).unwrap_err();
            assert!(e.contains(why), "{:?}: {e}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn checkpoints_as_mariabackup_writes_them() {
        let c = parse_checkpoints(
            b"backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 47011\nlast_lsn = 47020\nrecover_binlog_info = 0\n",
        )
        .unwrap();
        assert_eq!(
            c,
            Checkpoints {
                backup_type: "full-backuped".into(),
                from_lsn: 0,
                to_lsn: 47011,
                last_lsn: 47020,
            }
        );
    }

    #[test]
    fn checkpoints_refuse_missing_repeated_and_odd_values() {
        let cases: &[(&[u8], &str)] = &[
            (b"backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 1\n", "no last_lsn"),
            (b"from_lsn = 0\nto_lsn = 1\nlast_lsn = 1\n", "no backup_type"),
            (
                b"backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 1\nto_lsn = 2\nlast_lsn = 1\n",
                "to_lsn appears twice",
            ),
            (b"backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = -1\nlast_lsn = 1\n", "not a number"),
            (b"backup_type = \x1b[2J\nfrom_lsn = 0\nto_lsn = 1\nlast_lsn = 1\n", "not a word"),
            (b"backup_type full\n", "line 1 is not"),
            (b"\xff", "not UTF-8"),
        ];
        for (data, why) in cases {
            let e = parse_checkpoints(data).unwrap_err();
            assert!(e.contains(why), "{:?}: {e}", String::from_utf8_lossy(data));
        }
    }

    /// Feed `stream` (xbstream bytes) through a decoder and ledger into a capture.
    fn capture(stream: &[u8]) -> Position {
        let mut dec = Decoder::new(DecodeOptions::default());
        let mut ledger = Ledger::new();
        let mut cap = InfoCapture::new();
        let mut buf = BytesMut::from(stream);
        while let Some(c) = dec.decode_eof(&mut buf).unwrap() {
            let ev = ledger.apply(&c).unwrap();
            cap.chunk(&c, &ev);
        }
        cap.position()
    }

    fn payload(out: &mut Vec<u8>, path: &str, offset: u64, data: &[u8]) {
        crate::format::encode_payload(out, path.as_bytes(), offset, data);
    }

    fn eof(out: &mut Vec<u8>, path: &str) {
        crate::format::encode_eof(out, path.as_bytes());
    }

    const CHECKPOINTS: &[u8] =
        b"backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 5\nlast_lsn = 6\n";

    #[test]
    fn captures_files_split_across_chunks() {
        let mut s = Vec::new();
        payload(&mut s, "ibdata1", 0, &[1; 100]);
        payload(&mut s, XTRABACKUP_BINLOG_INFO, 0, b"mariadb-bin.0");
        payload(&mut s, XTRABACKUP_CHECKPOINTS, 0, &CHECKPOINTS[..10]);
        payload(&mut s, XTRABACKUP_BINLOG_INFO, 13, b"00003\t42\t0-1-9\n");
        payload(&mut s, XTRABACKUP_CHECKPOINTS, 10, &CHECKPOINTS[10..]);
        eof(&mut s, XTRABACKUP_BINLOG_INFO);
        eof(&mut s, XTRABACKUP_CHECKPOINTS);
        eof(&mut s, "ibdata1");
        let p = capture(&s);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let b = p.binlog.unwrap();
        assert_eq!(
            (b.file.as_str(), b.position, b.gtid.as_str()),
            ("mariadb-bin.000003", 42, "0-1-9")
        );
        assert!(
            humantime::parse_rfc3339(&b.end_time).is_ok(),
            "{}",
            b.end_time
        );
        assert_eq!(p.checkpoints.unwrap().to_lsn, 5);
    }

    #[test]
    fn only_top_level_files_of_those_names_count() {
        let mut s = Vec::new();
        payload(
            &mut s,
            "db/xtrabackup_binlog_info",
            0,
            b"mariadb-bin.000001\t4\t",
        );
        eof(&mut s, "db/xtrabackup_binlog_info");
        payload(
            &mut s,
            "xtrabackup_binlog_info.bak",
            0,
            b"mariadb-bin.000001\t4\t",
        );
        eof(&mut s, "xtrabackup_binlog_info.bak");
        let p = capture(&s);
        assert!(p.binlog.is_none() && p.checkpoints.is_none() && p.warnings.is_empty());
    }

    #[test]
    fn the_new_name_wins_over_the_old_one() {
        let mut s = Vec::new();
        payload(&mut s, XTRABACKUP_BINLOG_INFO, 0, b"old-bin.000001\t4\t");
        eof(&mut s, XTRABACKUP_BINLOG_INFO);
        payload(
            &mut s,
            MARIADB_BACKUP_BINLOG_INFO,
            0,
            b"new-bin.000001\t4\t",
        );
        eof(&mut s, MARIADB_BACKUP_BINLOG_INFO);
        let b = capture(&s).binlog.unwrap();
        assert_eq!(b.file, "new-bin.000001");
        assert_eq!(b.info_file, MARIADB_BACKUP_BINLOG_INFO);
    }

    #[test]
    fn too_large_or_malformed_warns_and_records_nothing() {
        let mut s = Vec::new();
        payload(&mut s, XTRABACKUP_BINLOG_INFO, 0, &[b'a'; 3000]);
        payload(&mut s, XTRABACKUP_BINLOG_INFO, 3000, &[b'a'; 3000]);
        eof(&mut s, XTRABACKUP_BINLOG_INFO);
        payload(&mut s, XTRABACKUP_CHECKPOINTS, 0, b"to_lsn = x\n");
        eof(&mut s, XTRABACKUP_CHECKPOINTS);
        let p = capture(&s);
        assert!(p.binlog.is_none() && p.checkpoints.is_none());
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("xtrabackup_binlog_info: it is larger than 4096 bytes"));
        assert!(p.warnings[1].contains("xtrabackup_checkpoints: to_lsn 'x' is not a number"));
    }

    #[test]
    fn a_hole_beyond_the_cap_is_too_large() {
        let mut s = Vec::new();
        payload(&mut s, XTRABACKUP_BINLOG_INFO, 0, b"a\t4");
        crate::format::encode_sparse(
            &mut s,
            XTRABACKUP_BINLOG_INFO.as_bytes(),
            3,
            &[SparseEntry {
                skip: 1 << 20,
                len: 1,
            }],
            b"x",
        );
        eof(&mut s, XTRABACKUP_BINLOG_INFO);
        let p = capture(&s);
        assert!(p.binlog.is_none());
        assert!(p.warnings[0].contains("larger than"), "{:?}", p.warnings);
    }

    #[test]
    fn a_removed_info_file_no_longer_counts() {
        let mut s = Vec::new();
        payload(
            &mut s,
            XTRABACKUP_BINLOG_INFO,
            0,
            b"mariadb-bin.000001\t4\t",
        );
        eof(&mut s, XTRABACKUP_BINLOG_INFO);
        crate::format::encode_header_into(
            &crate::format::ChunkHeader::Remove {
                path: XTRABACKUP_BINLOG_INFO.as_bytes(),
                flags: 0,
            },
            &mut s,
        );
        let p = capture(&s);
        assert!(p.binlog.is_none());
        assert!(p.warnings[0].contains("removes it"), "{:?}", p.warnings);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Hostile bytes never panic the parsers, and whatever they accept obeys the rules.
            #[test]
            fn parsers_never_panic_and_accept_only_plain_names(data in proptest::collection::vec(any::<u8>(), 0..300)) {
                if let Ok(b) = binlog(&data) {
                    prop_assert!(!b.file.is_empty() && b.file.len() <= 255);
                    prop_assert!(!b.file.contains('/') && !b.file.contains(".."));
                    prop_assert!(b.file.bytes().all(|c| c.is_ascii_graphic()));
                    prop_assert!(b.gtid.bytes().all(|c| c.is_ascii_digit() || b"-, ".contains(&c)));
                }
                let _ = parse_checkpoints(&data);
            }

            /// What mariabackup writes reads back as written.
            #[test]
            fn binlog_info_round_trips(
                file in "[a-z][a-z0-9_.-]{0,40}\\.[0-9]{6}",
                pos in any::<u64>(),
                gtid in proptest::collection::vec((0u32..5, 1u32..1000, any::<u64>()), 0..4),
                newline in any::<bool>(),
            ) {
                prop_assume!(!file.contains(".."));
                let gtid: Vec<String> = gtid.iter().map(|(d, s, n)| format!("{d}-{s}-{n}")).collect();
                let gtid = gtid.join(",");
                let text = format!("{file}\t{pos}\t{gtid}{}", if newline { "\n" } else { "" });
                let b = binlog(text.as_bytes()).unwrap();
                prop_assert_eq!((b.file, b.position, b.gtid), (file, pos, gtid));
            }

            /// However the file is cut into chunks, the capture sees the same bytes.
            #[test]
            fn the_cut_does_not_matter(cuts in proptest::collection::vec(1usize..20, 0..8)) {
                let text = b"mariadb-bin.000042\t123456\t0-1-77,1-2-88\n";
                let mut s = Vec::new();
                let mut at = 0usize;
                for c in cuts {
                    let end = (at + c).min(text.len());
                    payload(&mut s, XTRABACKUP_BINLOG_INFO, at as u64, &text[at..end]);
                    at = end;
                }
                payload(&mut s, XTRABACKUP_BINLOG_INFO, at as u64, &text[at..]);
                eof(&mut s, XTRABACKUP_BINLOG_INFO);
                let b = capture(&s).binlog.unwrap();
                prop_assert_eq!((b.position, b.gtid.as_str()), (123456, "0-1-77,1-2-88"));
            }
        }
    }

    #[test]
    fn the_shared_capture_is_a_sink() {
        let mut shared = SharedCapture::new();
        let chunk = Chunk {
            stream_offset: 0,
            encoded_len: 0,
            flags: 0,
            path: Bytes::from_static(XTRABACKUP_BINLOG_INFO.as_bytes()),
            body: ChunkBody::Payload {
                offset: 0,
                data: Bytes::from_static(b"f.000001\t4\t0-1-1"),
            },
        };
        let open = LedgerEvent::File {
            created: true,
            truncate: false,
            closed: false,
        };
        shared.chunk(chunk.clone(), &open).unwrap();
        let end = Chunk {
            body: ChunkBody::Eof,
            ..chunk
        };
        let closed = LedgerEvent::File {
            created: false,
            truncate: false,
            closed: true,
        };
        shared.chunk(end, &closed).unwrap();
        assert_eq!(shared.position().binlog.unwrap().gtid, "0-1-1");
    }
}
