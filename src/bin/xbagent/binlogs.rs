//! The binlog commands: `binlogs push`, `binlogs list`, and `restore --until`.

use std::io::Write;
use std::sync::Arc;

use xbagent::progress::Progress;
use xbagent::store::binlogs::inventory::rfc3339;
use xbagent::store::binlogs::pitr::{self, PitrError, PitrOptions};
use xbagent::store::binlogs::plan::Target;
use xbagent::store::binlogs::push::{self, PushOptions};
use xbagent::store::binlogs::{self as archive, catalog, Listing};
use xbagent::store::restore::RestoreOptions;
use xbagent::store::{BackupError, BackupRef};

use crate::backup::{open_backup, open_repo, read_opts};
use crate::cli::default_writers;
use crate::cli::{BinlogsListArgs, BinlogsPushArgs, RestoreArgs};
use crate::exit::{self, Failure};
use crate::metrics_http::{self, Watched};
use crate::output::print_json_or;
use crate::summary::Figures;
use crate::{say, shutdown_flag, Display};

pub fn push(a: BinlogsPushArgs) -> Result<i32, Failure> {
    let stop = shutdown_flag()?;
    let repo = open_repo(&a.to, &a.s3, 1, true, Some(stop.clone()))?;
    let mut opts = PushOptions::new(a.binlog_index.clone());
    opts.follow = a.follow;
    opts.max_lag = a.max_lag;
    opts.retry_for = a.index_wait;
    opts.segment_max = a.segment_size.max(64 << 10);
    opts.recipients = a.seal.recipients()?;
    opts.stop = stop;
    if let Some(addr) = &a.metrics_listen {
        // A round may wait on one repository write through all its retries.
        let stale = a.s3.retry_for + a.max_lag + std::time::Duration::from_secs(120);
        let watched = Watched::Push {
            metrics: opts.metrics.clone(),
            stale,
        };
        metrics_http::start(addr, watched)?;
    }
    tracing::info!(
        "archiving the binlogs of {} to {}{}",
        a.binlog_index.display(),
        repo.describe(),
        if a.follow {
            format!(
                ", following (max lag {})",
                humantime::format_duration(a.max_lag)
            )
        } else {
            String::new()
        }
    );
    let report = push::push(&*repo, &opts)?;
    println!(
        "binlogs push done: {} segment(s), {} bytes stored, {} file(s) finished{}{}",
        report.segments,
        report.bytes,
        report.files_sealed,
        report
            .last_gtid
            .map(|g| format!(", up to GTID {g}"))
            .unwrap_or_default(),
        report
            .last_time
            .map(|t| format!(" ({})", rfc3339(u64::from(t))))
            .unwrap_or_default()
    );
    if !report.purged_unarchived.is_empty() {
        say(
            "WARN",
            &format!(
                "warning: binlog(s) left the server before they were archived, the archive has a gap: {}",
                report.purged_unarchived.join(", ")
            ),
        );
    }
    Ok(exit::OK)
}

pub fn list(a: BinlogsListArgs) -> Result<i32, Failure> {
    let repo = open_repo(&a.repo, &a.s3, 1, false, None)?;
    let bases = pitr::bases(&*repo)?;
    let archive = catalog::load(&*repo).map_err(BackupError::from)?;
    let listing = archive::listing(archive, &bases);
    let files = a.files;
    print_json_or(a.json, &listing, |out, l: &Listing| {
        print_listing(out, l, files)
    })?;
    Ok(exit::OK)
}

fn opt_time(t: Option<u32>) -> String {
    t.map(|t| rfc3339(u64::from(t)))
        .unwrap_or_else(|| "-".into())
}

fn print_listing(out: &mut impl Write, l: &Listing, files: bool) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<8} {:>6} {:>9} {:>14} {:>12} {:<21} {:<21} LAST GTID",
        "SERVER", "FILES", "SEGMENTS", "STORED", "TRANSACTIONS", "FIRST", "LAST"
    )?;
    for s in &l.servers {
        writeln!(
            out,
            "{:<8} {:>6} {:>9} {:>14} {:>12} {:<21} {:<21} {}",
            s.server_id,
            s.files,
            s.segments,
            s.stored_bytes,
            s.transactions,
            opt_time(s.first_time),
            opt_time(s.last_time),
            s.last_gtid
                .map(|g| g.to_string())
                .unwrap_or_else(|| "-".into())
        )?;
    }
    if files {
        writeln!(out)?;
        for f in &l.archive.files {
            writeln!(
                out,
                "{:<48} {:>12} bytes {:>4} segment(s) {:<21} {:<21} {} {}",
                f.file_id,
                f.end(),
                f.segments.len(),
                opt_time(f.first_time()),
                opt_time(f.last_time()),
                f.gtid_after().map(|g| g.to_string()).unwrap_or_default(),
                if f.sealed { "finished" } else { "growing" }
            )?;
        }
    }
    writeln!(out, "{}", l.window)?;
    for p in &l.problems {
        writeln!(out, "problem: {p}")?;
    }
    Ok(())
}

/// `restore --until TIME` / `--until-gtid GTID`.
/// `restore --until`; what it learns goes into `fig` for the summary line.
pub fn restore_until(a: RestoreArgs, d: Display, fig: &mut Figures) -> Result<i32, Failure> {
    let target = match (&a.until, &a.until_gtid) {
        (Some(t), _) => Target::Time(*t),
        (None, Some(g)) => Target::Gtid(
            g.parse()
                .map_err(|e| BackupError::Refused(format!("--until-gtid: {e}")))?,
        ),
        (None, None) => {
            return Err(BackupError::Refused("no --until or --until-gtid given".into()).into())
        }
    };
    let (repo, which, shutdown) = open_backup(&a.from, &a.s3, a.read.concurrency)?;
    let chosen = match which {
        Some(BackupRef::Id(id)) => Some(BackupRef::Id(id)),
        _ => None,
    };
    let progress = Arc::new(Progress::new("restore", None, d.show, d.verbose));
    let opts = PitrOptions {
        restore: RestoreOptions {
            dir: a.dir.clone(),
            force: a.force,
            writers: a.parallel.unwrap_or_else(default_writers).max(1),
            buffered: a.buffered,
            read: read_opts(&a.read, &a.decode)?,
        },
        target,
        tools: Default::default(),
        work_dir: a.work_dir.clone(),
    };
    let res = pitr::restore_to(repo, chosen.as_ref(), &opts, progress.clone(), shutdown);
    progress.finish();
    fig.bytes = progress.position();
    let r = res?;
    fig.id = Some(r.backup.clone());
    println!(
        "restored backup {} into {} and replayed {} transaction(s) from {} binlog file(s) to {}: \
         last applied {}{}; GTID state {}; replay took {:.3}s",
        r.backup,
        a.dir.display(),
        r.transactions,
        r.files,
        r.target,
        r.last_gtid
            .map(|g| g.to_string())
            .unwrap_or_else(|| "none (the backup was at the target)".into()),
        r.last_time
            .map(|t| format!(" ({})", rfc3339(u64::from(t))))
            .unwrap_or_default(),
        r.gtid_state,
        r.replay_seconds
    );
    Ok(exit::OK)
}

/// The binlog part of `backups prune`.
pub struct BinlogPrune {
    pub doomed: Vec<DoomedFile>,
    pub note: Option<String>,
}

pub struct DoomedFile {
    pub file_id: String,
    pub keys: Vec<String>,
    pub reason: String,
}

/// What `backups prune` deletes of the binlog archive once `doomed` backups are gone.
pub fn prune_plan(
    repo: &dyn xbagent::store::Repository,
    all: &[xbagent::store::retention::BackupSummary],
    doomed: &[xbagent::store::retention::Doomed],
) -> Result<BinlogPrune, Failure> {
    let archive = catalog::load(repo).map_err(BackupError::from)?;
    if archive.files.is_empty() {
        return Ok(BinlogPrune {
            doomed: Vec::new(),
            note: None,
        });
    }
    let kept: Vec<_> = pitr::bases_among(repo, all)?
        .into_iter()
        .filter(|b| !doomed.iter().any(|d| d.id == b.id))
        .collect();
    if kept.is_empty() {
        return Ok(BinlogPrune {
            doomed: Vec::new(),
            note: Some(
                "keeping every archived binlog: no kept backup recorded a binlog position".into(),
            ),
        });
    }
    let doomed = xbagent::store::binlogs::check::prunable(&archive, &kept)
        .into_iter()
        .map(|f| DoomedFile {
            file_id: f.file_id.clone(),
            keys: f.keys(),
            reason: format!(
                "{}, GTID up to {}: before every kept backup's position",
                f.file,
                f.gtid_after().map(|g| g.to_string()).unwrap_or_default()
            ),
        })
        .collect();
    Ok(BinlogPrune { doomed, note: None })
}

pub fn prune_apply(
    repo: &dyn xbagent::store::Repository,
    plan: &BinlogPrune,
) -> Result<(), Failure> {
    for f in &plan.doomed {
        // The file record first: a half-deleted file then shows as unfinished, never as a
        // finished file with missing bytes.
        let mut keys = f.keys.clone();
        keys.sort_by_key(|k| !k.ends_with(xbagent::store::binlogs::layout::FILE_RECORD));
        for k in &keys {
            repo.delete(k).map_err(BackupError::from)?;
        }
    }
    Ok(())
}

/// The binlog part of `verify REPO`.
pub fn verify_archive(
    repo: &dyn xbagent::store::Repository,
    ids: &xbagent::store::seal::Identities,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<i32, Failure> {
    let archive = catalog::load(repo).map_err(BackupError::from)?;
    if archive.files.is_empty() {
        return Ok(exit::OK);
    }
    // Sealed segments and no identity: a usage error (exit 2), as for a sealed backup.
    if ids.is_empty() {
        if let Some(s) = archive
            .files
            .iter()
            .flat_map(|f| &f.segments)
            .find_map(|s| s.sealed.as_ref())
        {
            return Err(PitrError::NeedsIdentity(format!(
                "the archived binlogs are encrypted (for {}): give --identity-file to verify them",
                xbagent::store::seal::describe(&s.recipients)
            ))
            .into());
        }
    }
    let v = xbagent::store::binlogs::check::verify(repo, &archive, ids, stop)
        .map_err(BackupError::from)?;
    if v.problems.is_empty() {
        println!(
            "ok: {} archived binlog file(s), {} segment(s), {} bytes, {} transactions: digests, event checksums and GTID continuity hold",
            v.files, v.segments, v.bytes, v.transactions
        );
        return Ok(exit::OK);
    }
    Err(BackupError::Mismatch {
        id: "binlog archive".into(),
        reason: v.problems.join("; "),
    }
    .into())
}
