//! Reading what the binlog archive holds: list the keys under `binlogs/`, read each finished
//! file's record or, for a file still being written, its segment entries.

use std::collections::BTreeMap;

use serde::Serialize;

use super::inventory::{FileRecord, Segment, MAX_ENTRY, MAX_FILE_RECORD};
use super::layout::{self, Key};
use crate::binlog::{Closed, Gtid, GtidState};
use crate::store::{Repository, StoreError};

/// One server binlog file as archived.
#[derive(Debug, Clone, Serialize)]
pub struct ArchivedFile {
    pub file_id: String,
    pub file: String,
    pub server_id: u32,
    pub created: u32,
    /// Its segments with entries, in offset order.
    pub segments: Vec<Segment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed: Option<Closed>,
    /// Its file record exists: nothing more will be added.
    pub sealed: bool,
    /// Data objects without an entry (an upload killed between the two writes, or one in
    /// progress): `(start, size)`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unindexed: Vec<(u64, u64)>,
    /// What is wrong with it: unreadable entries, holes between segments.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    pub stored_bytes: u64,
}

impl ArchivedFile {
    /// A file id with nothing known of it yet.
    pub fn empty(id: &str) -> ArchivedFile {
        ArchivedFile {
            file_id: id.to_string(),
            file: String::new(),
            server_id: 0,
            created: 0,
            segments: Vec::new(),
            closed: None,
            sealed: false,
            unindexed: Vec::new(),
            problems: Vec::new(),
            stored_bytes: 0,
        }
    }

    /// Bytes of the file the archive holds without a hole, from offset 0.
    pub fn end(&self) -> u64 {
        let mut at = 0;
        for s in &self.segments {
            if s.start != at {
                break;
            }
            at = s.end;
        }
        at
    }

    pub fn gtid_before(&self) -> Option<&GtidState> {
        self.segments.first().map(|s| &s.gtid_before)
    }

    pub fn gtid_after(&self) -> Option<&GtidState> {
        self.segments.last().map(|s| &s.gtid_after)
    }

    pub fn first_gtid(&self) -> Option<Gtid> {
        self.segments.iter().find_map(|s| s.first_gtid)
    }

    pub fn last_gtid(&self) -> Option<Gtid> {
        self.segments.iter().rev().find_map(|s| s.last_gtid)
    }

    pub fn first_time(&self) -> Option<u32> {
        self.segments.iter().find_map(|s| s.first_time)
    }

    pub fn last_time(&self) -> Option<u32> {
        self.segments.iter().rev().find_map(|s| s.last_time)
    }

    pub fn transactions(&self) -> u64 {
        self.segments.iter().map(|s| s.transactions).sum()
    }

    /// When the push last read this file from the server.
    pub fn read_at(&self) -> Option<u64> {
        self.segments.iter().map(|s| s.read_at).max()
    }

    /// Every key of this file in the repository.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .segments
            .iter()
            .flat_map(|s| {
                [
                    layout::segment_data(&self.file_id, s.start),
                    layout::segment_entry(&self.file_id, s.start),
                ]
            })
            .collect();
        keys.extend(
            self.unindexed
                .iter()
                .map(|(start, _)| layout::segment_data(&self.file_id, *start)),
        );
        if self.sealed {
            keys.push(layout::file_record(&self.file_id));
        }
        keys
    }
}

/// The archive: every file, oldest first (by creation time, then name).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Archive {
    pub files: Vec<ArchivedFile>,
}

#[derive(Default)]
struct Listed {
    data: BTreeMap<u64, u64>,
    entries: Vec<u64>,
    record: bool,
    bytes: u64,
}

/// Read the archive's inventory. Entries that cannot be read are reported in the file's
/// `problems`, never skipped silently; store errors end the read.
pub fn load(repo: &dyn Repository) -> Result<Archive, StoreError> {
    load_matching(repo, |_| true)
}

/// [`load`], reading the records of only the files whose id `wanted` accepts (the push reads
/// only the files its server still has, not the whole history).
pub fn load_matching(
    repo: &dyn Repository,
    wanted: impl Fn(&str) -> bool,
) -> Result<Archive, StoreError> {
    let mut by_id: BTreeMap<String, Listed> = BTreeMap::new();
    for o in repo.list(layout::ROOT)? {
        let Some(k) = layout::parse_key(&o.key) else {
            continue;
        };
        let id = match &k {
            Key::Data { file_id, .. }
            | Key::Entry { file_id, .. }
            | Key::FileRecord { file_id } => file_id.clone(),
        };
        let l = by_id.entry(id).or_default();
        l.bytes += o.size;
        match k {
            Key::Data { start, .. } => {
                l.data.insert(start, o.size);
            }
            Key::Entry { start, .. } => l.entries.push(start),
            Key::FileRecord { .. } => l.record = true,
        }
    }
    let mut files = Vec::with_capacity(by_id.len());
    for (id, listed) in by_id.into_iter().filter(|(id, _)| wanted(id)) {
        files.push(load_file(repo, &id, listed)?);
    }
    files.sort_by(|a, b| (a.created, &a.file, &a.file_id).cmp(&(b.created, &b.file, &b.file_id)));
    Ok(Archive { files })
}

fn read_record(repo: &dyn Repository, id: &str) -> Result<Result<FileRecord, String>, StoreError> {
    match repo.get(&layout::file_record(id), MAX_FILE_RECORD) {
        Ok(d) => Ok(FileRecord::parse(&d, id)),
        Err(StoreError::NotFound { .. }) => Ok(Err("its file record vanished".into())),
        Err(e) => Err(e),
    }
}

fn load_file(repo: &dyn Repository, id: &str, listed: Listed) -> Result<ArchivedFile, StoreError> {
    let mut f = ArchivedFile {
        stored_bytes: listed.bytes,
        ..ArchivedFile::empty(id)
    };
    if listed.record {
        match read_record(repo, id)? {
            Ok(r) => {
                f.sealed = true;
                f.closed = r.closed.clone();
                f.segments = r.segments;
            }
            Err(e) => f.problems.push(format!("{}: {e}", layout::file_record(id))),
        }
    }
    if !f.sealed {
        let mut entries = listed.entries.clone();
        entries.sort_unstable();
        for start in entries {
            let key = layout::segment_entry(id, start);
            match repo.get(&key, MAX_ENTRY) {
                Ok(d) => match Segment::parse(&d, id, start) {
                    Ok(s) => f.segments.push(s),
                    Err(e) => f.problems.push(format!("{key}: {e}")),
                },
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        f.closed = f.segments.last().and_then(|s| s.closed.clone());
    }
    if let Some(s) = f.segments.first() {
        f.file = s.file.clone();
        f.server_id = s.server_id;
        f.created = s.created;
    }
    let mut at = 0;
    for s in &f.segments {
        if s.start != at {
            f.problems
                .push(format!("bytes {at}..{} of {} are missing", s.start, f.file));
        }
        match listed.data.get(&s.start) {
            Some(&size) if size == s.stored_len() => {}
            Some(&size) => f.problems.push(format!(
                "{} holds {size} bytes, its entry says {}",
                layout::segment_data(id, s.start),
                s.stored_len()
            )),
            None => f
                .problems
                .push(format!("{} is missing", layout::segment_data(id, s.start))),
        }
        at = s.end;
    }
    let indexed: Vec<u64> = f.segments.iter().map(|s| s.start).collect();
    f.unindexed = listed
        .data
        .iter()
        .filter(|(start, _)| !indexed.contains(start))
        .map(|(s, n)| (*s, *n))
        .collect();
    Ok(f)
}
