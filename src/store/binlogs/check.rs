//! Checks of the binlog archive (`verify REPO`) and what `backups prune` may delete of it.

use std::collections::BTreeSet;

use serde::Serialize;

use super::catalog::{Archive, ArchivedFile};
use super::layout;
use super::plan::Base;
use crate::binlog::{Closed, Event, EventReader, FileTracker};
use crate::store::{Repository, StoreError};

/// Gaps and damaged files: a closed file that no archived file continues while newer files
/// exist, and each file's own problems. Pure: from the inventory only.
pub fn continuity(archive: &Archive) -> Vec<String> {
    let mut out = Vec::new();
    for f in &archive.files {
        for p in &f.problems {
            out.push(format!("{} ({}): {p}", f.file, f.file_id));
        }
        if f.closed.is_none() && !f.sealed {
            continue;
        }
        let Some(after) = f.gtid_after() else {
            continue;
        };
        let newer = archive.files.iter().any(|g| g.created > f.created);
        let continued = archive.files.iter().any(|g| super::plan::continues(g, f));
        if newer && !continued {
            let how = match &f.closed {
                Some(Closed::Rotate { next_file }) => format!("rotated to {next_file}"),
                Some(Closed::Stop) => "stopped".into(),
                None => "abandoned".into(),
            };
            out.push(format!(
                "gap: no archived binlog continues {} ({}, {how}, GTID state {after})",
                f.file, f.file_id
            ));
        }
    }
    out
}

/// What `verify` found in the binlog archive.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verified {
    pub files: usize,
    pub segments: usize,
    pub bytes: u64,
    pub transactions: u64,
    pub problems: Vec<String>,
}

/// Read every archived segment whole: its digest, every event's CRC32 through the binlog
/// reader, and its inventory entry's GTID states against what the bytes say. Then the
/// continuity between files.
pub fn verify(
    repo: &dyn Repository,
    archive: &Archive,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Verified, StoreError> {
    let mut v = Verified {
        problems: continuity(archive),
        ..Verified::default()
    };
    let mut buf = vec![0u8; 8 << 20];
    for f in &archive.files {
        v.files += 1;
        let mut reader = EventReader::new(&f.file);
        let mut tracker = FileTracker::new(&f.file);
        let mut events: Vec<Event> = Vec::new();
        'segments: for s in &f.segments {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(StoreError::Setup("interrupted".into()));
            }
            v.segments += 1;
            let key = layout::segment_data(&f.file_id, s.start);
            if reader.offset() != s.start {
                // A hole, already reported by the catalog; the rest of the file cannot be read.
                break;
            }
            let mut hasher = blake3::Hasher::new();
            let mut at = 0;
            while at < s.len() {
                let n = (s.len() - at).min(buf.len() as u64) as usize;
                match repo.read_range(&key, at, &mut buf[..n]) {
                    Ok(()) => {}
                    Err(StoreError::NotFound { .. }) => {
                        v.problems.push(format!("{key} is missing"));
                        break 'segments;
                    }
                    Err(e) => return Err(e),
                }
                hasher.update(&buf[..n]);
                events.clear();
                if let Err(e) = reader.feed(&buf[..n], &mut events) {
                    v.problems.push(format!("{key}: {e}"));
                    break 'segments;
                }
                for ev in &events {
                    if let Err(e) = tracker.event(ev) {
                        v.problems.push(format!("{key}: {e}"));
                        break 'segments;
                    }
                }
                at += n as u64;
                v.bytes += n as u64;
            }
            let digest = hasher.finalize().to_hex().to_string();
            if digest != s.blake3 {
                v.problems.push(format!(
                    "{key}: BLAKE3 {digest}, its inventory entry says {}",
                    s.blake3
                ));
                break;
            }
            let sum = tracker.summary();
            if sum.complete_end != s.end || !sum.gtid_after.same_seqs(&s.gtid_after) {
                v.problems.push(format!(
                    "{key}: the bytes end a transaction at {} with GTID state {}, its entry says {} and {}",
                    sum.complete_end, sum.gtid_after, s.end, s.gtid_after
                ));
                break;
            }
        }
        v.transactions += tracker.summary().transactions;
    }
    Ok(v)
}

/// Which archived files `backups prune` deletes: sealed files that no kept backup needs to
/// roll forward to the present, and that end before the oldest kept backup's position. With
/// no kept backup that recorded a position, nothing.
pub fn prunable<'a>(archive: &'a Archive, kept: &[Base]) -> Vec<&'a ArchivedFile> {
    let Some(oldest) = kept.iter().min_by_key(|b| b.end_ms) else {
        return Vec::new();
    };
    let mut needed: BTreeSet<&str> = BTreeSet::new();
    for b in kept {
        for f in super::plan::chain_from(archive, b) {
            needed.insert(&f.file_id);
        }
    }
    archive
        .files
        .iter()
        .filter(|f| f.sealed && !needed.contains(f.file_id.as_str()))
        .filter(|f| f.gtid_after().is_some_and(|a| a.is_within(&oldest.gtid)))
        .filter(|f| u64::from(f.created) * 1000 < oldest.end_ms)
        .collect()
}
