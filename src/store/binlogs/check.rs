//! Checks of the binlog archive (`verify REPO`) and what `backups prune` may delete of it.

use std::collections::BTreeSet;

use serde::Serialize;

use super::catalog::{Archive, ArchivedFile};
use super::layout;
use super::plan::Base;
use super::segment::{self, SegmentError};
use crate::binlog::{Closed, Event, EventReader, FileTracker};
use crate::store::seal::Identities;
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
    ids: &Identities,
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
        for s in &f.segments {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(StoreError::Setup("interrupted".into()));
            }
            v.segments += 1;
            let key = layout::segment_data(&f.file_id, s.start);
            if reader.offset() != s.start {
                // A hole, already reported by the catalog; the rest of the file cannot be read.
                break;
            }
            let mut feed = |piece: &[u8]| -> Result<(), String> {
                events.clear();
                reader.feed(piece, &mut events).map_err(|e| e.to_string())?;
                for ev in &events {
                    tracker.event(ev).map_err(|e| e.to_string())?;
                }
                Ok(())
            };
            match segment::read(repo, s, ids, &mut buf, stop, &mut feed) {
                Ok(()) => v.bytes += s.len(),
                Err(SegmentError::Store(e)) => return Err(e),
                Err(SegmentError::Interrupted) => {
                    return Err(StoreError::Setup("interrupted".into()))
                }
                // Not the archive's fault: the caller's keys.
                Err(e @ (SegmentError::NeedsIdentity { .. } | SegmentError::NoIdentity { .. })) => {
                    return Err(StoreError::Setup(e.describe(&key)))
                }
                Err(e) => {
                    v.problems.push(e.describe(&key));
                    break;
                }
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
