//! Where archived binlogs live in a repository. Pure naming, no I/O.
//!
//! ```text
//! binlogs/<file-id>/<start>.bin     bytes [start, end) of one server binlog file (a segment)
//! binlogs/<file-id>/<start>.json    the segment's inventory entry, written after the .bin
//! binlogs/<file-id>/file.json       the whole file's record, written once its last segment
//!                                   (ending with ROTATE or STOP) is stored
//! ```
//!
//! A file id names one binlog file of one server for ever: its creation time and server id
//! (from FORMAT_DESCRIPTION), its name, and a digest of its header events (which hold the
//! GTID state before it). A name reused after `RESET MASTER` or a failover gets another id, so
//! no archived file is ever overwritten by a newer one of the same name.

/// Everything of the binlog archive is under this prefix of the repository.
pub const ROOT: &str = "binlogs/";
pub const FILE_RECORD: &str = "file.json";
const SEGMENT_DATA: &str = ".bin";
const SEGMENT_ENTRY: &str = ".json";
/// Offsets are written with this many digits, so that keys sort by offset.
const OFFSET_DIGITS: usize = 12;

/// Binlog base names we archive: what `log_bin` may reasonably be set to. Anything else is
/// refused rather than escaped, so a key never needs decoding.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

/// `<created>-s<server>-<name>-<digest8>`, e.g. `20261206T191031Z-s1-mariadb-bin.000001-1a2b3c4d`.
pub fn file_id(created: u32, server_id: u32, name: &str, header_digest: &str) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(created));
    let stamp = humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "");
    let short = header_digest.get(..8).unwrap_or(header_digest);
    format!("{stamp}-s{server_id}-{name}-{short}")
}

/// A file id as [`file_id`] makes them (used to ignore foreign keys under `binlogs/`).
pub fn valid_file_id(id: &str) -> bool {
    id.len() <= 260
        && id.len() > 16
        && id.as_bytes()[..16]
            .iter()
            .all(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

pub fn dir(file_id: &str) -> String {
    format!("{ROOT}{file_id}/")
}

pub fn segment_data(file_id: &str, start: u64) -> String {
    format!(
        "{ROOT}{file_id}/{start:0w$}{SEGMENT_DATA}",
        w = OFFSET_DIGITS
    )
}

pub fn segment_entry(file_id: &str, start: u64) -> String {
    format!(
        "{ROOT}{file_id}/{start:0w$}{SEGMENT_ENTRY}",
        w = OFFSET_DIGITS
    )
}

pub fn file_record(file_id: &str) -> String {
    format!("{ROOT}{file_id}/{FILE_RECORD}")
}

/// What a key under [`ROOT`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Data { file_id: String, start: u64 },
    Entry { file_id: String, start: u64 },
    FileRecord { file_id: String },
}

/// Parse a repository key; `None` for anything that is not ours (ignored, never deleted).
pub fn parse_key(key: &str) -> Option<Key> {
    let rest = key.strip_prefix(ROOT)?;
    let (id, name) = rest.split_once('/')?;
    if !valid_file_id(id) || name.contains('/') {
        return None;
    }
    let file_id = id.to_string();
    if name == FILE_RECORD {
        return Some(Key::FileRecord { file_id });
    }
    let offset = |digits: &str| -> Option<u64> {
        (digits.len() == OFFSET_DIGITS && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    };
    if let Some(d) = name.strip_suffix(SEGMENT_DATA) {
        return Some(Key::Data {
            file_id,
            start: offset(d)?,
        });
    }
    if let Some(d) = name.strip_suffix(SEGMENT_ENTRY) {
        return Some(Key::Entry {
            file_id,
            start: offset(d)?,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let id = file_id(1_765_048_231, 1, "mariadb-bin.000001", "1a2b3c4d5e6f");
        assert_eq!(id, "20251206T191031Z-s1-mariadb-bin.000001-1a2b3c4d");
        assert!(valid_file_id(&id));
        assert_eq!(
            parse_key(&segment_data(&id, 4096)),
            Some(Key::Data {
                file_id: id.clone(),
                start: 4096
            })
        );
        assert_eq!(
            segment_entry(&id, 0),
            format!("binlogs/{id}/000000000000.json")
        );
        assert_eq!(
            parse_key(&file_record(&id)),
            Some(Key::FileRecord {
                file_id: id.clone()
            })
        );
        assert_eq!(parse_key("binlogs/x/000000000000.bin"), None);
        assert_eq!(parse_key(&format!("binlogs/{id}/12.bin")), None);
        assert_eq!(parse_key(&format!("binlogs/{id}/a/000000000000.bin")), None);
        assert_eq!(parse_key("20261206T191031.000Z/manifest.json"), None);
    }

    #[test]
    fn names() {
        assert!(valid_file_name("mariadb-bin.000001"));
        assert!(valid_file_name("mysql_bin.1"));
        assert!(!valid_file_name("../x"));
        assert!(!valid_file_name("a/b"));
        assert!(!valid_file_name(".hidden"));
        assert!(!valid_file_name(""));
        assert!(!valid_file_name("a b"));
    }
}
