//! The manifest: what a complete backup holds, written last. Pure data and checks, no I/O.

use serde::{Deserialize, Serialize};

use crate::format::{chunk_display_path, FileState, Ledger};
use crate::stream::sink::StreamTotals;

pub const FORMAT: u32 = 1;
/// A manifest larger than this is refused before it is read (a few hundred thousand files
/// fit; no honest backup comes near it).
pub const MAX_MANIFEST: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub tool: String,
    pub id: String,
    /// RFC 3339, UTC.
    pub started: String,
    pub finished: String,
    pub source: SourceInfo,
    /// The producer's exit status (0 for a file, stdin or a directory that streamed cleanly).
    pub producer_exit_status: i32,
    /// `none` or `zstd:LEVEL`.
    pub compression: String,
    pub object: ObjectEntry,
    pub stream: StreamEntry,
    pub files: Vec<FileEntry>,
    /// Where the backup ends in the server's binlog (from `xtrabackup_binlog_info` or
    /// `mariadb_backup_binlog_info`). Needed for point-in-time recovery. Absent from older
    /// manifests and from streams without (or with a malformed) info file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binlog: Option<BinlogInfo>,
    /// The InnoDB LSNs of the backup (from `xtrabackup_checkpoints`), likewise optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<Checkpoints>,
    /// Set when the backup's objects are sealed with age: the stream object, and the file list
    /// and source in [`SEALED`] (this manifest then lists no file and no source detail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

/// The sealed part of an encrypted backup's manifest.
pub const SEALED: &str = "sealed.json.age";
/// Its plaintext is at most this large (like a manifest).
pub const MAX_SEALED: u64 = MAX_MANIFEST;

/// How an encrypted backup was sealed. Everything here is safe in the clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// `age-x25519`.
    pub scheme: String,
    /// The recipients (`age1...` public keys) it was sealed for: any one's identity opens it.
    pub recipients: Vec<String>,
    /// The stream object's plaintext: the bytes an unencrypted backup would store.
    pub plain_size: u64,
    pub plain_blake3: String,
    /// The sealed file list and source, as stored.
    pub sealed: SealedEntry,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedEntry {
    pub key: String,
    pub size: u64,
    pub blake3: String,
}

/// What [`SEALED`] holds: the parts of a manifest that name the database's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedPart {
    pub format: u32,
    pub source: SourceInfo,
    pub files: Vec<FileEntry>,
}

/// Where a backup ends in the server's binlog, as mariabackup recorded it under its commit
/// lock (see `super::position` for how it is read from the stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinlogInfo {
    /// Which of the two names it was read from.
    pub info_file: String,
    /// The binlog file, a plain name (e.g. `mariadb-bin.000096`).
    pub file: String,
    /// Byte position in that file (e.g. 568).
    pub position: u64,
    /// `gtid_current_pos` as written (`0-1-2`, several domains comma-separated; may be "").
    pub gtid: String,
    /// RFC 3339 UTC, milliseconds: when the info file passed through the upload. The backup
    /// holds no transaction committed after this instant, so point-in-time restore can use
    /// it as the backup's end time.
    pub end_time: String,
}

/// The InnoDB log sequence numbers of a backup (`xtrabackup_checkpoints`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoints {
    /// `full-backuped`, `incremental`, `full-prepared`...
    pub backup_type: String,
    pub from_lsn: u64,
    pub to_lsn: u64,
    pub last_lsn: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `exec`, `dir`, `file` or `stdin`.
    pub kind: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    /// Key within the backup's directory.
    pub key: String,
    pub size: u64,
    /// BLAKE3 of the object's bytes as stored (after compression), hex.
    pub blake3: String,
    pub parts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEntry {
    /// Bytes of the xbstream (before compression).
    pub bytes: u64,
    pub chunks: u64,
    /// Files completed.
    pub files: u64,
    /// File data bytes carried (holes excluded).
    pub data_bytes: u64,
    pub dialect: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub chunks: u64,
    /// CRC-32 of the file's data bytes in stream order (holes excluded).
    pub crc32: u32,
    /// `complete`, or `removed` for a file a later `D`/`R` chunk removed.
    pub state: FileState,
}

/// The per-file list of a stream, from a ledger that kept CRCs.
pub fn files_of(ledger: &Ledger) -> Vec<FileEntry> {
    ledger
        .records()
        .iter()
        .map(|r| FileEntry {
            path: chunk_display_path(&r.path),
            size: r.size,
            chunks: r.chunks,
            crc32: r.crc32,
            state: r.state,
        })
        .collect()
}

pub fn stream_entry(t: &StreamTotals) -> StreamEntry {
    StreamEntry {
        bytes: t.bytes,
        chunks: t.chunks,
        files: t.files,
        data_bytes: t.data_bytes,
        dialect: t.dialect.clone(),
    }
}

impl Manifest {
    /// Parse and check a manifest read from `<id>/manifest.json`.
    pub fn parse(id: &str, data: &[u8]) -> Result<Manifest, String> {
        let m: Manifest =
            serde_json::from_slice(data).map_err(|e| format!("not a valid manifest: {e}"))?;
        if m.format != FORMAT {
            return Err(format!(
                "format {} is not one this version reads ({FORMAT})",
                m.format
            ));
        }
        if m.id != id {
            return Err(format!("it names backup {}, not {id}", m.id));
        }
        let expect_key = if m.compression == "none" {
            super::STREAM
        } else if m.compression.starts_with("zstd") {
            super::STREAM_ZSTD
        } else {
            return Err(format!("unknown compression '{}'", m.compression));
        };
        let expect_key = match &m.encryption {
            None => expect_key.to_string(),
            Some(e) => {
                check_encryption(e)?;
                format!("{expect_key}{}", super::seal::SUFFIX)
            }
        };
        if m.object.key != expect_key {
            return Err(format!(
                "object key '{}' does not match compression '{}'",
                m.object.key, m.compression
            ));
        }
        if m.object.blake3.len() != 64 || !m.object.blake3.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("object digest is not 64 hex digits".into());
        }
        if m.producer_exit_status != 0 {
            return Err(format!(
                "it records a producer exit status of {}",
                m.producer_exit_status
            ));
        }
        Ok(m)
    }

    pub fn is_compressed(&self) -> bool {
        self.compression != "none"
    }

    /// Move what names the database's files (the file list, the source's detail) out of the
    /// manifest, to be sealed.
    pub fn take_sealed_part(&mut self) -> SealedPart {
        let source = self.source.clone();
        self.source.detail = String::new();
        SealedPart {
            format: FORMAT,
            source,
            files: std::mem::take(&mut self.files),
        }
    }

    /// Put an opened sealed part back.
    pub fn put_sealed_part(&mut self, part: SealedPart) -> Result<(), String> {
        if part.format != FORMAT {
            return Err(format!("{SEALED} has format {}, not {FORMAT}", part.format));
        }
        self.source = part.source;
        self.files = part.files;
        Ok(())
    }

    /// The digest and size the stream object's bytes must have once read (and opened).
    pub fn stream_digest(&self) -> (u64, &str) {
        match &self.encryption {
            Some(e) => (e.plain_size, &e.plain_blake3),
            None => (self.object.size, &self.object.blake3),
        }
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_encryption(e: &Encryption) -> Result<(), String> {
    if e.scheme != super::seal::SCHEME {
        return Err(format!("unknown encryption scheme '{}'", e.scheme));
    }
    if e.recipients.is_empty() {
        return Err("it is encrypted for no recipient".into());
    }
    if e.sealed.key != SEALED {
        return Err(format!(
            "its sealed part is '{}', not {SEALED}",
            e.sealed.key
        ));
    }
    if !is_hex64(&e.plain_blake3) || !is_hex64(&e.sealed.blake3) {
        return Err("an encryption digest is not 64 hex digits".into());
    }
    Ok(())
}

/// Compare what a read of the stream found with what the manifest lists. Returns the first
/// difference, named by path.
pub fn compare(m: &Manifest, totals: &StreamTotals, found: &[FileEntry]) -> Result<(), String> {
    if totals.bytes != m.stream.bytes {
        return Err(format!(
            "the stream has {} bytes, the manifest says {}",
            totals.bytes, m.stream.bytes
        ));
    }
    if totals.chunks != m.stream.chunks {
        return Err(format!(
            "the stream has {} chunks, the manifest says {}",
            totals.chunks, m.stream.chunks
        ));
    }
    if found.len() != m.files.len() {
        return Err(format!(
            "the stream has {} file records, the manifest lists {}",
            found.len(),
            m.files.len()
        ));
    }
    for (f, e) in found.iter().zip(&m.files) {
        if f != e {
            return Err(format!(
                "file '{}': found size {} chunks {} crc32 {:08x} ({:?}), the manifest says '{}' size {} chunks {} crc32 {:08x} ({:?})",
                f.path, f.size, f.chunks, f.crc32, f.state, e.path, e.size, e.chunks, e.crc32, e.state
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT,
            tool: "xbagent 0.1.0".into(),
            id: "20261127T051149.123Z".into(),
            started: "2026-11-27T05:11:49.123Z".into(),
            finished: "2026-11-27T05:12:49.000Z".into(),
            source: SourceInfo {
                kind: "stdin".into(),
                detail: "stdin".into(),
            },
            producer_exit_status: 0,
            compression: "zstd:3".into(),
            object: ObjectEntry {
                key: super::super::STREAM_ZSTD.into(),
                size: 10,
                blake3: "ab".repeat(32),
                parts: 1,
            },
            stream: StreamEntry {
                bytes: 100,
                chunks: 2,
                files: 1,
                data_bytes: 5,
                dialect: "percona".into(),
            },
            files: vec![FileEntry {
                path: "a".into(),
                size: 5,
                chunks: 2,
                crc32: 7,
                state: FileState::Complete,
            }],
            binlog: None,
            checkpoints: None,
            encryption: None,
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let m = sample();
        let j = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::parse(&m.id, &j).unwrap(), m);
        assert!(Manifest::parse("20261127T051149.124Z", &j)
            .unwrap_err()
            .contains("names backup"));
        let mut bad = m.clone();
        bad.object.key = "../x".into();
        assert!(Manifest::parse(&m.id, &serde_json::to_vec(&bad).unwrap()).is_err());
        let mut bad = m.clone();
        bad.producer_exit_status = 1;
        assert!(Manifest::parse(&m.id, &serde_json::to_vec(&bad).unwrap()).is_err());
        assert!(Manifest::parse(&m.id, b"{").is_err());
    }

    #[test]
    fn position_fields_round_trip_and_are_left_out_when_absent() {
        let mut m = sample();
        let plain = serde_json::to_string(&m).unwrap();
        assert!(
            !plain.contains("binlog") && !plain.contains("checkpoints"),
            "{plain}"
        );
        m.binlog = Some(BinlogInfo {
            info_file: "xtrabackup_binlog_info".into(),
            file: "mariadb-bin.000096".into(),
            position: 568,
            gtid: "0-1-2".into(),
            end_time: "2026-11-27T05:12:48.500Z".into(),
        });
        m.checkpoints = Some(Checkpoints {
            backup_type: "full-backuped".into(),
            from_lsn: 0,
            to_lsn: 47011,
            last_lsn: 47020,
        });
        let j = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::parse(&m.id, &j).unwrap(), m);
    }

    /// A manifest written before the position fields existed (verbatim shape of one) still
    /// parses, with neither field.
    #[test]
    fn an_old_manifest_without_the_position_still_parses() {
        let old = format!(
            r#"{{
  "format": 1,
  "tool": "xbagent 0.1.0",
  "id": "20261127T051149.123Z",
  "started": "2026-11-27T05:11:49.123Z",
  "finished": "2026-11-27T05:12:49.000Z",
  "source": {{ "kind": "stdin", "detail": "stdin" }},
  "producer_exit_status": 0,
  "compression": "none",
  "object": {{ "key": "{}", "size": 10, "blake3": "{}", "parts": 1 }},
  "stream": {{ "bytes": 100, "chunks": 2, "files": 1, "data_bytes": 5, "dialect": "mariadb" }},
  "files": [ {{ "path": "a", "size": 5, "chunks": 2, "crc32": 7, "state": "complete" }} ]
}}"#,
            super::super::STREAM,
            "ab".repeat(32)
        );
        let m = Manifest::parse("20261127T051149.123Z", old.as_bytes()).unwrap();
        assert_eq!(m.binlog, None);
        assert_eq!(m.checkpoints, None);
        assert_eq!(m.files.len(), 1);
    }

    #[test]
    fn compare_names_the_file() {
        let m = sample();
        let t = StreamTotals {
            bytes: 100,
            chunks: 2,
            ..Default::default()
        };
        assert!(compare(&m, &t, &m.files).is_ok());
        let mut f = m.files.clone();
        f[0].crc32 = 8;
        let e = compare(&m, &t, &f).unwrap_err();
        assert!(e.contains("file 'a'"), "{e}");
        let t2 = StreamTotals {
            bytes: 99,
            ..t.clone()
        };
        assert!(compare(&m, &t2, &m.files).unwrap_err().contains("99 bytes"));
    }
}
