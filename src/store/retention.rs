//! What a repository holds (`backups list`) and what to delete (`backups prune`). The plan is
//! pure and tested without I/O; [`apply`] carries it out.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::address::{id_time, is_valid_id};
use super::manifest::{BinlogInfo, Checkpoints, Manifest};
use super::{BackupError, Repository, StoreError, MANIFEST};

/// One backup as the repository shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    pub id: String,
    /// Has its manifest.
    pub complete: bool,
    /// Bytes of every object under the backup's directory.
    pub stored_bytes: u64,
    pub objects: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<ManifestSummary>,
    /// Why a manifest that exists could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The newest write time of its objects (`started.json`, a part being written): when an
    /// upload was last seen working on it.
    #[serde(skip)]
    pub last_written: Option<SystemTime>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ManifestSummary {
    pub finished: String,
    pub source: String,
    pub compression: String,
    pub object_size: u64,
    pub stream_bytes: u64,
    pub files: u64,
    /// Where the backup ends in the binlog, as in the manifest (absent when not recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binlog: Option<BinlogInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<Checkpoints>,
    /// How it is sealed, when it is (the recipients it was made for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EncryptionSummary {
    pub scheme: String,
    pub recipients: Vec<String>,
}

impl From<&Manifest> for ManifestSummary {
    fn from(m: &Manifest) -> Self {
        ManifestSummary {
            finished: m.finished.clone(),
            source: m.source.detail.clone(),
            compression: m.compression.clone(),
            object_size: m.object.size,
            stream_bytes: m.stream.bytes,
            files: m.stream.files,
            binlog: m.binlog.clone(),
            checkpoints: m.checkpoints.clone(),
            encryption: m.encryption.as_ref().map(|e| EncryptionSummary {
                scheme: e.scheme.clone(),
                recipients: e.recipients.clone(),
            }),
        }
    }
}

/// Every backup in the repository, oldest first (ids sort by time). Keys that are not under a
/// valid id are ignored; entries the repository refuses (symbolic links) are skipped with a
/// warning that names them.
pub fn scan(repo: &dyn Repository) -> Result<Vec<BackupSummary>, StoreError> {
    for key in repo.refused("")? {
        tracing::warn!(
            "skipping {key} in {}: {}",
            repo.describe(),
            super::local::SYMLINK_REFUSED
        );
    }
    let mut by_id: BTreeMap<String, BackupSummary> = BTreeMap::new();
    for o in repo.list("")? {
        let Some((id, rest)) = o.key.split_once('/') else {
            continue;
        };
        if !is_valid_id(id) {
            continue;
        }
        let b = by_id
            .entry(id.to_string())
            .or_insert_with(|| BackupSummary {
                id: id.to_string(),
                complete: false,
                stored_bytes: 0,
                objects: 0,
                manifest: None,
                problem: None,
                last_written: None,
            });
        b.objects += 1;
        b.stored_bytes += o.size;
        b.last_written = b.last_written.max(o.modified);
        if rest == MANIFEST {
            b.complete = true;
        }
    }
    Ok(by_id.into_values().collect())
}

/// [`scan`], with each complete backup's manifest read and summarised (for `list`).
pub fn list(repo: &dyn Repository) -> Result<Vec<BackupSummary>, StoreError> {
    let mut all = scan(repo)?;
    for b in all.iter_mut().filter(|b| b.complete) {
        let data = match super::restore::fetch_manifest(repo, &b.id) {
            Ok(d) => d,
            Err(BackupError::BadManifest { reason, .. }) => {
                b.problem = Some(reason);
                continue;
            }
            Err(BackupError::Store(e)) => return Err(e),
            Err(e) => return Err(StoreError::Setup(e.to_string())),
        };
        match Manifest::parse(&b.id, &data) {
            Ok(m) => b.manifest = Some((&m).into()),
            Err(e) => b.problem = Some(e),
        }
    }
    Ok(all)
}

/// Retention rules.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Complete backups kept, newest first.
    pub keep_last: usize,
    /// Complete backups younger than this are kept too.
    pub keep_within: Option<Duration>,
    /// Incomplete backups younger than this are left alone: they may be uploads in progress.
    pub grace: Duration,
}

/// A backup to delete, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Doomed {
    pub id: String,
    pub complete: bool,
    pub reason: String,
}

/// How long ago an incomplete backup was last written to: its age for the grace period.
/// Counted from its objects' write times, never from its id (an upload may be given an old
/// id); unknown counts as just now, so it is kept.
pub fn idle_for(b: &BackupSummary, now: SystemTime) -> Duration {
    b.last_written
        .and_then(|t| now.duration_since(t).ok())
        .unwrap_or(Duration::ZERO)
}

/// The incomplete backups [`plan`] leaves alone because they were written to within the grace
/// period (they may be uploads in progress), with how long ago.
pub fn in_grace(
    backups: &[BackupSummary],
    policy: &Policy,
    now: SystemTime,
) -> Vec<(String, Duration)> {
    backups
        .iter()
        .filter(|b| !b.complete)
        .map(|b| (b.id.clone(), idle_for(b, now)))
        .filter(|(_, idle)| *idle < policy.grace)
        .collect()
}

/// Decide what to delete. The newest complete backup is never deleted, whatever the policy.
pub fn plan(backups: &[BackupSummary], policy: &Policy, now: SystemTime) -> Vec<Doomed> {
    let age = |id: &str| -> Duration {
        id_time(id)
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or(Duration::ZERO)
    };
    let mut out = Vec::new();
    let complete: Vec<&BackupSummary> = backups.iter().filter(|b| b.complete).rev().collect();
    for (rank, b) in complete.iter().enumerate() {
        if rank == 0 || rank < policy.keep_last {
            continue;
        }
        if let Some(w) = policy.keep_within {
            if age(&b.id) < w {
                continue;
            }
        }
        out.push(Doomed {
            id: b.id.clone(),
            complete: true,
            reason: format!(
                "beyond the newest {}{}",
                policy.keep_last.max(1),
                policy
                    .keep_within
                    .map(|w| format!(" and older than {}", humantime::format_duration(w)))
                    .unwrap_or_default()
            ),
        });
    }
    for b in backups.iter().filter(|b| !b.complete) {
        if idle_for(b, now) >= policy.grace {
            out.push(Doomed {
                id: b.id.clone(),
                complete: false,
                reason: format!(
                    "incomplete (no manifest) and not written to for {}",
                    humantime::format_duration(policy.grace)
                ),
            });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// A doomed backup that could not be deleted entirely: what is left of it.
#[derive(Debug, Clone)]
pub struct LeftBehind {
    pub id: String,
    pub keys: Vec<String>,
}

/// Delete what `plan` chose. The manifest goes first, so a deletion cut short leaves an
/// incomplete backup (which a later prune removes), never a complete-looking broken one.
/// Returns the backups of which something is left (entries the repository refuses, such as
/// symbolic links, are never deleted): those are not reported deleted.
pub fn apply(repo: &dyn Repository, doomed: &[Doomed]) -> Result<Vec<LeftBehind>, BackupError> {
    let mut left = Vec::new();
    for d in doomed {
        let dir = format!("{}/", d.id);
        repo.delete(&format!("{dir}{MANIFEST}"))?;
        for o in repo.list(&dir)? {
            repo.delete(&o.key)?;
        }
        match repo.abort_unfinished(&dir) {
            Ok(0) => {}
            Ok(n) => tracing::info!("{}: aborted {n} unfinished multipart upload(s)", d.id),
            Err(e) => tracing::warn!(
                "{}: could not list unfinished multipart uploads ({e}); the store's own lifecycle rules must clean them",
                d.id
            ),
        }
        let mut keys: Vec<String> = repo.list(&dir)?.into_iter().map(|o| o.key).collect();
        keys.extend(repo.refused(&dir)?);
        if keys.is_empty() {
            tracing::info!("deleted backup {} ({})", d.id, d.reason);
        } else {
            left.push(LeftBehind {
                id: d.id.clone(),
                keys,
            });
        }
    }
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::address::id_for;

    const DAY: Duration = Duration::from_secs(86400);

    fn at(now: SystemTime, days_ago: u64, complete: bool) -> BackupSummary {
        BackupSummary {
            id: id_for(now - DAY * days_ago as u32),
            complete,
            stored_bytes: 1,
            objects: 2,
            manifest: None,
            problem: None,
            last_written: Some(now - DAY * days_ago as u32),
        }
    }

    fn policy(keep_last: usize, within: Option<u64>) -> Policy {
        Policy {
            keep_last,
            keep_within: within.map(|d| DAY * d as u32),
            grace: DAY,
        }
    }

    #[test]
    fn keeps_the_newest_n() {
        let now = SystemTime::now();
        let all: Vec<_> = (0..5).rev().map(|d| at(now, d, true)).collect();
        let doomed = plan(&all, &policy(2, None), now);
        assert_eq!(doomed.len(), 3);
        assert_eq!(
            doomed.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
            vec![all[0].id.clone(), all[1].id.clone(), all[2].id.clone()]
        );
    }

    #[test]
    fn never_deletes_the_newest_complete_one() {
        let now = SystemTime::now();
        let all = vec![at(now, 30, true), at(now, 20, true), at(now, 1, false)];
        let doomed = plan(&all, &policy(0, None), now);
        assert!(doomed.iter().all(|d| d.id != all[1].id), "{doomed:?}");
        assert!(doomed.iter().any(|d| d.id == all[0].id));
        // the incomplete one is past the grace period
        assert!(doomed.iter().any(|d| d.id == all[2].id && !d.complete));
    }

    #[test]
    fn keep_within_keeps_recent_ones() {
        let now = SystemTime::now();
        let all: Vec<_> = [10, 6, 3, 2, 1].iter().map(|&d| at(now, d, true)).collect();
        let doomed = plan(&all, &policy(1, Some(4)), now);
        let ids: Vec<_> = doomed.iter().map(|d| d.id.clone()).collect();
        assert_eq!(ids, vec![all[0].id.clone(), all[1].id.clone()]);
    }

    #[test]
    fn incomplete_within_grace_is_left_alone() {
        let now = SystemTime::now();
        let mut young = at(now, 0, false);
        young.last_written = Some(now - Duration::from_secs(3600));
        let all = vec![at(now, 2, true), young.clone()];
        assert!(plan(&all, &policy(1, None), now).is_empty());
        assert_eq!(in_grace(&all, &policy(1, None), now).len(), 1);
    }

    #[test]
    fn grace_counts_from_the_last_write_not_the_id() {
        let now = SystemTime::now();
        // An upload given an id of long ago, written to a minute ago: left alone.
        let mut running = at(now, 400, false);
        running.last_written = Some(now - Duration::from_secs(60));
        let all = vec![at(now, 2, true), running.clone()];
        assert!(plan(&all, &policy(1, None), now).is_empty());
        // A fresh id, but nothing written for two days: past the grace period.
        let mut dead = at(now, 0, false);
        dead.last_written = Some(now - DAY * 2);
        let doomed = plan(&[at(now, 2, true), dead.clone()], &policy(1, None), now);
        assert_eq!(doomed.len(), 1);
        assert_eq!(doomed[0].id, dead.id);
    }
}
