//! `restore --until`: a full backup rolled forward with archived binlogs to a time or a GTID.
//!
//! Order matters for "nothing is applied unless the whole plan holds": plan from the
//! inventory (refused with the recoverable window if the target cannot be reached), locate
//! the tools, fetch every needed binlog into a work directory checking each segment's digest,
//! scan them (CRC32 of every event, GTID continuity, the exact stop), and only then restore
//! the backup, prepare it, and replay. The restore's in-progress marker stays in the target
//! directory until the replay has ended and the private server has shut down cleanly.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use thiserror::Error;

use super::catalog::{self, Archive};
use super::layout;
use super::plan::{self, Base, Plan, PlannedFile, Refusal, Target};
use super::replay::{self, Located, PrivateServer, ReplayError, Step, Tools};
use super::segment::{self, SegmentError};
use crate::binlog::{BinlogError, Event, EventReader, FileTracker, Gtid, GtidState};
use crate::progress::Progress;
use crate::store::address::BackupRef;
use crate::store::manifest::Manifest;
use crate::store::restore::{self as base_restore, RestoreOptions};
use crate::store::seal::Identities;
use crate::store::{retention, BackupError, Repository, StoreError};

const RANGE: usize = 8 << 20;

#[derive(Debug, Clone)]
pub struct PitrOptions {
    pub restore: RestoreOptions,
    pub target: Target,
    pub tools: Tools,
    /// Where the binlogs are fetched to (default: a new directory beside the target).
    pub work_dir: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct PitrReport {
    pub backup: String,
    pub target: String,
    pub files: usize,
    pub transactions: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_gtid: Option<Gtid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_time: Option<u32>,
    /// The GTID state the restored server is at.
    pub gtid_state: GtidState,
    pub stream_bytes: u64,
    /// The replay alone: `mariadb-binlog | mariadb` from the first file to the stop.
    pub replay_seconds: f64,
}

#[derive(Debug, Error)]
pub enum PitrError {
    #[error("cannot restore to {target}: {refusal}")]
    Refused {
        target: String,
        refusal: Box<Refusal>,
    },
    /// An archived binlog is damaged or does not continue the one before it.
    #[error("archived binlog {object}: {reason}")]
    BadBinlog { object: String, reason: String },
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error("cannot {what}: {source}")]
    Local {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("interrupted")]
    Interrupted,
    /// An archived binlog is sealed, and no identity was given.
    #[error("{0}")]
    NeedsIdentity(String),
    /// None of the identities given opens an archived binlog.
    #[error("{0}")]
    NoIdentity(String),
}

fn local(what: impl Into<String>) -> impl FnOnce(io::Error) -> PitrError {
    let what = what.into();
    move |source| PitrError::Local { what, source }
}

/// The complete backups that recorded a binlog position, read from their manifests.
pub fn bases(repo: &dyn Repository) -> Result<Vec<Base>, BackupError> {
    bases_among(repo, &retention::scan(repo)?)
}

/// [`bases`] of backups already listed (prune has listed the repository).
pub fn bases_among(
    repo: &dyn Repository,
    backups: &[retention::BackupSummary],
) -> Result<Vec<Base>, BackupError> {
    let mut out = Vec::new();
    for b in backups.iter().filter(|b| b.complete) {
        let data = base_restore::fetch_manifest(repo, &b.id)?;
        let Ok(m) = Manifest::parse(&b.id, &data) else {
            continue;
        };
        if let Some(base) = base_of(&m) {
            out.push(base);
        }
    }
    Ok(out)
}

/// A manifest's binlog position as a plan's base, if it has a usable one.
pub fn base_of(m: &Manifest) -> Option<Base> {
    let info = m.binlog.as_ref()?;
    let end = humantime::parse_rfc3339_weak(info.end_time.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(&info.end_time))
        .ok()?;
    let end_ms = end
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis()
        .try_into()
        .ok()?;
    Some(Base {
        id: m.id.clone(),
        end_ms,
        file: info.file.clone(),
        position: info.position,
        gtid: info.gtid.parse().ok()?,
    })
}

/// Check the plan against the archive and the backups without fetching anything.
pub fn check(
    repo: &dyn Repository,
    target: Target,
    chosen: Option<&str>,
) -> Result<(Plan, Archive), PitrError> {
    let bases = bases(repo)?;
    let archive = catalog::load(repo)?;
    let plan =
        plan::plan(&archive, &bases, target, chosen).map_err(|refusal| PitrError::Refused {
            target: target.to_string(),
            refusal,
        })?;
    Ok((plan, archive))
}

/// Restore to `opts.target`.
pub fn restore_to(
    repo: Arc<dyn Repository>,
    chosen: Option<&BackupRef>,
    opts: &PitrOptions,
    progress: Arc<Progress>,
    shutdown: Arc<AtomicBool>,
) -> Result<PitrReport, PitrError> {
    let chosen_id = match chosen {
        Some(BackupRef::Id(id)) => Some(id.as_str()),
        _ => None,
    };
    let (plan, archive) = check(&*repo, opts.target, chosen_id)?;
    tracing::info!(
        "point-in-time restore to {}: backup {}, then {} binlog file(s) from {}",
        opts.target,
        plan.backup,
        plan.files.len(),
        plan.files
            .first()
            .map(|f| match f.from {
                Some(p) => format!("{}:{p}", f.file),
                None => format!("{} (after GTID {})", f.file, plan.start_gtid),
            })
            .unwrap_or_default()
    );
    let tools = opts.tools.locate()?;
    let work = work_dir(&opts.restore.dir, opts.work_dir.as_deref())?;
    // A sealed backup's identity is checked before the binlogs are fetched.
    let base = BackupRef::Id(plan.backup.clone());
    base_restore::resolve_open(&*repo, &base, &opts.restore.read.identities)?;
    let fetched = fetch_all(
        &*repo,
        &archive,
        &plan,
        work.path(),
        &opts.restore.read.identities,
        &shutdown,
    )?;
    let scanned = scan_all(&plan, &fetched, opts.target)?;
    if shutdown.load(Ordering::Relaxed) {
        return Err(PitrError::Interrupted);
    }
    let (checked, target) =
        base_restore::restore_held(repo, &base, &opts.restore, progress, shutdown.clone())?;
    let dir = &opts.restore.dir;
    target
        .mark(
            format!(
                "replaying binlogs to {} on backup {}\n",
                opts.target, plan.backup
            )
            .as_bytes(),
        )
        .map_err(|e| PitrError::Local {
            what: format!("mark {}", dir.display()),
            source: io::Error::other(e.to_string()),
        })?;
    let replay = apply(&tools, dir, work.path(), &scanned.steps, &shutdown)?;
    target.finish(None).map_err(|e| PitrError::Local {
        what: format!("finish {}", dir.display()),
        source: io::Error::other(e.to_string()),
    })?;
    Ok(PitrReport {
        backup: plan.backup,
        target: opts.target.to_string(),
        files: scanned.steps.len(),
        transactions: scanned.transactions,
        last_gtid: scanned.last_gtid,
        last_time: scanned.last_time,
        gtid_state: scanned.state,
        stream_bytes: checked.totals.bytes,
        replay_seconds: replay.as_secs_f64(),
    })
}

/// Prepare, start the private server, replay, shut down. Returns how long the replay took.
fn apply(
    tools: &Located,
    dir: &Path,
    work: &Path,
    steps: &[Step],
    shutdown: &AtomicBool,
) -> Result<std::time::Duration, PitrError> {
    // The socket path must stay short (a unix socket path is limited to ~107 bytes).
    let run = tempfile::Builder::new()
        .prefix("xbagent-pitr.")
        .tempdir()
        .map_err(local("create a private directory for the replay server"))?;
    tracing::info!("preparing {} (mariabackup --prepare)", dir.display());
    replay::prepare(tools, dir, work)?;
    if steps.is_empty() {
        tracing::info!("the backup is already at the target: nothing to replay");
        return Ok(std::time::Duration::ZERO);
    }
    let server = PrivateServer::start(tools, dir, run.path())?;
    let started = std::time::Instant::now();
    replay::replay(tools, &server, steps, work, shutdown)?;
    let took = started.elapsed();
    server.shutdown()?;
    Ok(took)
}

/// The directory the binlogs are fetched to.
fn work_dir(dir: &Path, given: Option<&Path>) -> Result<tempfile::TempDir, PitrError> {
    let parent = match given {
        Some(p) => p.to_path_buf(),
        None => dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    std::fs::create_dir_all(&parent).map_err(local(format!("create {}", parent.display())))?;
    tempfile::Builder::new()
        .prefix(".xbagent-binlogs.")
        .tempdir_in(&parent)
        .map_err(local(format!(
            "create a work directory in {}",
            parent.display()
        )))
}

/// Fetch each planned file's archived bytes, checking every segment's digest.
fn fetch_all(
    repo: &dyn Repository,
    archive: &Archive,
    plan: &Plan,
    work: &Path,
    ids: &Identities,
    shutdown: &AtomicBool,
) -> Result<Vec<PathBuf>, PitrError> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; RANGE];
    for pf in &plan.files {
        let Some(af) = archive.files.iter().find(|f| f.file_id == pf.file_id) else {
            return Err(PitrError::BadBinlog {
                object: layout::dir(&pf.file_id),
                reason: "vanished from the archive".into(),
            });
        };
        // Its own subdirectory: a name may repeat across file ids.
        let sub = work.join(&pf.file_id);
        std::fs::create_dir_all(&sub).map_err(local(format!("create {}", sub.display())))?;
        let path = sub.join(&pf.file);
        let mut f = File::create(&path).map_err(local(format!("create {}", path.display())))?;
        for seg in af.segments.iter().filter(|s| s.end <= pf.size) {
            let key = layout::segment_data(&pf.file_id, seg.start);
            let mut write = |piece: &[u8]| f.write_all(piece);
            segment::read(repo, seg, ids, &mut buf, shutdown, &mut write).map_err(|e| match e {
                SegmentError::Store(se) => PitrError::Store(se),
                SegmentError::Piece(io) => local(format!("write {}", path.display()))(io),
                SegmentError::Interrupted => PitrError::Interrupted,
                SegmentError::NeedsIdentity { .. } => PitrError::NeedsIdentity(e.describe(&key)),
                SegmentError::NoIdentity { .. } => PitrError::NoIdentity(e.describe(&key)),
                SegmentError::Missing | SegmentError::Damaged(_) => PitrError::BadBinlog {
                    reason: e.describe(&key),
                    object: key,
                },
            })?;
        }
        f.sync_all()
            .map_err(local(format!("sync {}", path.display())))?;
        out.push(path);
    }
    Ok(out)
}

/// What the scan of the fetched files decided.
#[derive(Debug)]
struct Scanned {
    steps: Vec<Step>,
    transactions: u64,
    last_gtid: Option<Gtid>,
    last_time: Option<u32>,
    state: GtidState,
}

/// Scan every fetched file: CRCs, continuity, and where to stop.
fn scan_all(plan: &Plan, files: &[PathBuf], target: Target) -> Result<Scanned, PitrError> {
    let mut out = Scanned {
        steps: Vec::new(),
        transactions: 0,
        last_gtid: None,
        last_time: None,
        state: plan.start_gtid.clone(),
    };
    let mut prev_after: Option<GtidState> = None;
    // A GTID target the backup already includes: nothing to replay.
    if let Target::Gtid(g) = target {
        if plan
            .start_gtid
            .get(g.domain)
            .is_some_and(|b| b.seq >= g.seq)
        {
            return Ok(out);
        }
    }
    for (i, (pf, path)) in plan.files.iter().zip(files).enumerate() {
        let s = scan_file(pf, path, i == 0, target, &plan.start_gtid)?;
        if let (Some(prev), Some(before)) = (&prev_after, &s.gtid_before) {
            if !before.same_seqs(prev) {
                return Err(PitrError::BadBinlog {
                    object: layout::dir(&pf.file_id),
                    reason: format!(
                        "its GTID list {before} does not continue the previous file's end {prev}"
                    ),
                });
            }
        }
        prev_after = Some(s.gtid_after.clone());
        if s.applied > 0 {
            out.steps.push(Step {
                file: path.clone(),
                start: if i == 0 { s.start } else { None },
                stop: s.stop,
            });
            out.transactions += s.applied;
            out.last_gtid = s.last_gtid.or(out.last_gtid);
            out.last_time = s.last_time.or(out.last_time);
        }
        for g in s.applied_state.iter() {
            out.state.apply(g);
        }
        if s.stop.is_some() {
            return Ok(out);
        }
    }
    match target {
        Target::Gtid(g) => Err(PitrError::BadBinlog {
            object: plan
                .files
                .last()
                .map(|f| layout::dir(&f.file_id))
                .unwrap_or_default(),
            reason: format!(
                "GTID {g} is not in the archived binlogs (the domain reaches {})",
                out.state
                    .get(g.domain)
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "nothing".into())
            ),
        }),
        // Every archived transaction is before the target, which the plan found within the
        // window: all of them are applied.
        Target::Time(_) => Ok(out),
    }
}

#[derive(Debug, Default)]
struct FileScan {
    /// In the first file: the offset of the first transaction the backup does not hold.
    start: Option<u64>,
    gtid_before: Option<GtidState>,
    gtid_after: GtidState,
    /// `--stop-position` when the target is inside this file.
    stop: Option<u64>,
    applied: u64,
    applied_state: GtidState,
    last_gtid: Option<Gtid>,
    last_time: Option<u32>,
}

/// One transaction after the start: applied, or where the replay stops.
fn take(
    out: &mut FileScan,
    t: &crate::binlog::Transaction,
    target: Target,
    pf: &PlannedFile,
) -> Result<(), PitrError> {
    let applied = |out: &mut FileScan| {
        out.applied += 1;
        out.applied_state.apply(t.gtid);
        out.last_gtid = Some(t.gtid);
        out.last_time = Some(t.commit_time);
    };
    match target {
        // The first transaction stamped at or after the target is not applied, nor anything
        // after it.
        Target::Time(limit) if u64::from(t.commit_time) >= limit => out.stop = Some(t.start),
        Target::Gtid(g) if t.gtid.domain == g.domain && t.gtid.seq >= g.seq => {
            if t.gtid != g {
                return Err(PitrError::BadBinlog {
                    object: layout::dir(&pf.file_id),
                    reason: format!("GTID {g} is not in the archive: {} follows", t.gtid),
                });
            }
            applied(out);
            out.stop = Some(t.end);
        }
        _ => applied(out),
    }
    Ok(())
}

/// The backup's GTID state does not cut the file in two: a transaction it holds follows one
/// it does not (domains interleaved).
fn start_mismatch(
    pf: &PlannedFile,
    t: &crate::binlog::Transaction,
    start_gtid: &GtidState,
) -> PitrError {
    PitrError::BadBinlog {
        object: layout::dir(&pf.file_id),
        reason: format!(
            "the backup's GTID state {start_gtid} does not cut the file in two: transaction {} \
             at byte {}, which the backup holds, follows one it does not",
            t.gtid, t.start
        ),
    }
}

fn bad(pf: &PlannedFile, e: BinlogError) -> PitrError {
    PitrError::BadBinlog {
        object: layout::dir(&pf.file_id),
        reason: e.to_string(),
    }
}

/// Scan one fetched file from its start; decide the stop for `target`.
fn scan_file(
    pf: &PlannedFile,
    path: &Path,
    first: bool,
    target: Target,
    start_gtid: &GtidState,
) -> Result<FileScan, PitrError> {
    let mut f = File::open(path).map_err(local(format!("open {}", path.display())))?;
    let mut reader = EventReader::new(&pf.file);
    let mut tracker = FileTracker::new(&pf.file);
    let mut events: Vec<Event> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut out = FileScan::default();
    let mut skipped_end = 0;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(local(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        events.clear();
        reader
            .feed(&buf[..n], &mut events)
            .map_err(|e| bad(pf, e))?;
        for ev in &events {
            let Some(t) = tracker.event(ev).map_err(|e| bad(pf, e))? else {
                continue;
            };
            // The first file: what the backup holds is skipped, by GTID (as mariadb-binlog
            // --start-position=GTID would). The GTID state decides, not the recorded position:
            // a backup taken on a replica records the replica's own file and position, and its
            // file name may well be one the primary also used.
            if first && start_gtid.contains(t.gtid) {
                if out.start.is_some() {
                    return Err(start_mismatch(pf, &t, start_gtid));
                }
                skipped_end = t.end;
                continue;
            }
            if first && out.start.is_none() {
                out.start = Some(t.start);
            }
            take(&mut out, &t, target, pf)?;
            if out.stop.is_some() {
                break;
            }
        }
        if out.stop.is_some() {
            break;
        }
    }
    if let Some(p) = pf.from.filter(|_| first) {
        if p < skipped_end || out.start.is_some_and(|start| p > start) {
            tracing::warn!(
                "backup position {}:{p} is not where its GTID state {start_gtid} ends in the \
                 archived {} (a backup taken on a replica?); replaying from the GTID state",
                pf.file,
                pf.file_id
            );
        }
    }
    let s = tracker.summary();
    out.gtid_before = s.gtid_before.clone();
    out.gtid_after = s.gtid_after.clone();
    // Only complete transactions are replayed: archived files end at a transaction boundary,
    // but a file that does not is stopped before its partial tail.
    if out.stop.is_none() && s.complete_end < reader.offset() {
        out.stop = Some(s.complete_end);
    }
    Ok(out)
}
