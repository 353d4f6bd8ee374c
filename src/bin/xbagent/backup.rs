//! The repository commands: upload, restore, verify REPO, backups list and prune.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::SystemTime;

use crate::exit;
use crate::exit::Failure;
use xbagent::progress::Progress;
use xbagent::store::address::id_for;
use xbagent::store::restore::{ReadOptions, RestoreOptions};
use xbagent::store::upload::UploadOptions;
use xbagent::store::{retention, BackupError, BackupRef, RepoAddress, Repository, S3Settings};
use xbagent::stream::source::Source;

use crate::cli::{
    default_writers, BackupsListArgs, DecodeArgs, PruneArgs, ReadArgs, RestoreArgs, S3Args,
    UploadArgs, VerifyArgs,
};
use crate::output::{print_backups, print_json_or};
use crate::summary::Figures;
use crate::{shutdown_flag, Display};

/// `verify` names a repository (`s3://...`, `file://...`, or an existing directory) rather
/// than a stream file.
pub fn names_a_repository(a: &VerifyArgs) -> bool {
    a.input
        .as_deref()
        .is_some_and(RepoAddress::looks_like_repository)
}

/// `verify REPO[@ID]`: read a backup whole and check it against its manifest.
pub fn verify(a: VerifyArgs, d: Display) -> Result<i32, Failure> {
    let input = a.input.as_deref().unwrap_or_default();
    let (repo, which, shutdown) = open_backup(input, &a.s3, a.read.concurrency)?;
    // REPO alone: the latest backup and the binlog archive; REPO@ID: that backup only.
    let which_given = which.is_some();
    let (repo2, shutdown2) = (repo.clone(), shutdown.clone());
    let progress = Arc::new(Progress::new("verify", None, d.show, d.verbose));
    let opts = read_opts(&a.read, &a.decode)?;
    let res = xbagent::store::restore::verify(
        repo,
        &which.unwrap_or(BackupRef::Latest),
        &opts,
        progress.clone(),
        shutdown,
    );
    progress.finish();
    let c = res?;
    println!(
        "ok: backup {} matches its manifest: {} files, {} chunks, {} stream bytes, {} bytes stored (blake3 {})",
        c.id, c.totals.files, c.totals.chunks, c.totals.bytes, c.manifest.object.size, c.manifest.object.blake3
    );
    if which_given {
        return Ok(exit::OK);
    }
    crate::binlogs::verify_archive(&*repo2, &opts.identities, &shutdown2)
}

/// `backups list REPO`.
pub fn list(a: BackupsListArgs) -> Result<i32, Failure> {
    let repo = open_repo(&a.repo, &a.s3, 1, false, None)?;
    let all = retention::list(&*repo).map_err(BackupError::from)?;
    print_json_or(a.json, &all, |out, all: &Vec<_>| print_backups(out, all))?;
    Ok(exit::OK)
}

fn s3_settings(a: &S3Args, concurrency: usize, cancel: Option<Arc<AtomicBool>>) -> S3Settings {
    S3Settings {
        endpoint: a.endpoint.clone(),
        region: a.region.clone(),
        retry_for: Some(a.retry_for),
        concurrency,
        cancel,
    }
}

pub(crate) fn open_repo(
    addr: &str,
    s3: &S3Args,
    concurrency: usize,
    create: bool,
    cancel: Option<Arc<AtomicBool>>,
) -> Result<Arc<dyn Repository>, Failure> {
    let addr = RepoAddress::parse(addr).map_err(BackupError::from)?;
    Ok(
        xbagent::store::open(&addr, &s3_settings(s3, concurrency, cancel), create)
            .map_err(BackupError::from)?,
    )
}

/// A repository opened for reading: the backup named after `@`, and the signal flag its
/// retries stop on.
type Opened = (Arc<dyn Repository>, Option<BackupRef>, Arc<AtomicBool>);

/// Open an existing repository named as `REPO[@ID|@latest]` (verify REPO, restore).
pub(crate) fn open_backup(addr: &str, s3: &S3Args, concurrency: usize) -> Result<Opened, Failure> {
    let (addr, which) = RepoAddress::parse_with_backup(addr).map_err(BackupError::from)?;
    let shutdown = shutdown_flag()?;
    let settings = s3_settings(s3, concurrency, Some(shutdown.clone()));
    let repo = xbagent::store::open(&addr, &settings, false).map_err(BackupError::from)?;
    Ok((repo, which, shutdown))
}

/// The reading settings, with the identity files read (and checked) up front.
pub(crate) fn read_opts(r: &ReadArgs, d: &DecodeArgs) -> Result<ReadOptions, Failure> {
    Ok(ReadOptions {
        concurrency: r.concurrency.clamp(1, 64),
        memory_limit: r.memory_limit,
        decode: d.options(),
        identities: Arc::new(r.identities()?),
    })
}

/// `upload`; what it learns goes into `fig` for the summary line, also when it fails.
pub fn upload(a: UploadArgs, d: Display, fig: &mut Figures) -> Result<i32, Failure> {
    let source = match (&a.exec, &a.dir, &a.input) {
        (Some(cmd), _, _) => Source::Exec(cmd.clone()),
        (None, Some(d), _) => Source::Dir(d.clone()),
        (None, None, Some(p)) if p.as_os_str() != "-" => Source::File(p.clone()),
        _ => Source::Stdin,
    };
    let total = match &source {
        Source::File(p) => std::fs::metadata(p).ok().map(|m| m.len()),
        _ => None,
    };
    let mut opts = UploadOptions::new(source);
    opts.parallel = a.parallel.max(1);
    opts.compress = a.compress;
    opts.concurrency = a.concurrency;
    opts.memory_limit = a.memory_limit;
    opts.first_part = a.part_size;
    opts.spool_dir = a.spool_dir.clone();
    // The id is fixed here (as the library would: the start time) so that a failed upload's
    // summary names it too.
    let id = a.id.clone().unwrap_or_else(|| id_for(SystemTime::now()));
    opts.id = Some(id.clone());
    opts.decode = a.decode.options();
    opts.recipients = a.seal.recipients()?;
    opts.rate_limit = a.rate_limit;
    opts.validate().map_err(BackupError::from)?;
    let shutdown = shutdown_flag()?;
    let repo = open_repo(&a.to, &a.s3, a.concurrency, true, Some(shutdown.clone()))?;
    let progress = Progress::new("upload", total, d.show, d.verbose);
    fig.id = Some(id);
    let res = xbagent::store::upload::upload(&*repo, &opts, &progress, &shutdown);
    progress.finish();
    fig.bytes = progress.position();
    let up = res?;
    let m = &up.manifest;
    fig.bytes = m.stream.bytes;
    fig.stored = Some(m.object.size);
    println!(
        "backup {} complete in {}: {} files, {} stream bytes, {} bytes stored ({}), blake3 {}",
        m.id,
        repo.describe(),
        m.stream.files,
        m.stream.bytes,
        m.object.size,
        m.compression,
        m.object.blake3
    );
    Ok(exit::OK)
}

/// `restore`; what it learns goes into `fig` for the summary line, also when it fails.
pub fn restore(a: RestoreArgs, d: Display, fig: &mut Figures) -> Result<i32, Failure> {
    if a.until.is_some() || a.until_gtid.is_some() {
        return crate::binlogs::restore_until(a, d, fig);
    }
    let (repo, which, shutdown) = open_backup(&a.from, &a.s3, a.read.concurrency)?;
    let which = which.unwrap_or(BackupRef::Latest);
    // The object's size, for the progress display's ETA.
    let resolved = xbagent::store::restore::resolve(&*repo, &which).ok();
    let total = resolved.as_ref().map(|(_, m)| m.stream_digest().0);
    // The backup resolved, else the one asked for (a summary of `@ID` that does not exist).
    fig.id = resolved.map(|(id, _)| id).or(match &which {
        BackupRef::Id(id) => Some(id.clone()),
        BackupRef::Latest => None,
    });
    let progress = Arc::new(Progress::new("restore", total, d.show, d.verbose));
    let opts = RestoreOptions {
        dir: a.dir.clone(),
        force: a.force,
        writers: a.parallel.unwrap_or_else(default_writers).max(1),
        buffered: a.buffered,
        read: read_opts(&a.read, &a.decode)?,
    };
    let res = xbagent::store::restore::restore(repo, &which, &opts, progress.clone(), shutdown);
    progress.finish();
    fig.bytes = progress.position();
    let c = res?;
    fig.id = Some(c.id.clone());
    fig.bytes = c.totals.bytes;
    println!(
        "restored backup {} into {}: {} files, {} stream bytes; digest and file list match the manifest",
        c.id,
        a.dir.display(),
        c.totals.files,
        c.totals.bytes
    );
    Ok(exit::OK)
}

pub fn prune(a: PruneArgs) -> Result<i32, Failure> {
    let repo = open_repo(&a.repo, &a.s3, 1, false, Some(shutdown_flag()?))?;
    let all = retention::scan(&*repo).map_err(BackupError::from)?;
    let policy = retention::Policy {
        keep_last: a.keep_last,
        keep_within: a.keep_within,
        grace: a.grace,
    };
    let now = std::time::SystemTime::now();
    let doomed = retention::plan(&all, &policy, now);
    for (id, idle) in retention::in_grace(&all, &policy, now) {
        let idle = std::time::Duration::from_secs(idle.as_secs());
        println!(
            "keeping {id} (incomplete, last written {} ago: within the grace period of {}, it may be an upload in progress)",
            humantime::format_duration(idle),
            humantime::format_duration(policy.grace)
        );
    }
    let verb = if a.apply { "deleting" } else { "would delete" };
    for d in &doomed {
        println!("{verb} {} ({})", d.id, d.reason);
    }
    let binlogs = crate::binlogs::prune_plan(&*repo, &all, &doomed)?;
    for f in &binlogs.doomed {
        println!("{verb} binlog {} ({})", f.file_id, f.reason);
    }
    if let Some(note) = &binlogs.note {
        println!("{note}");
    }
    let kept = all.len() - doomed.len();
    if !a.apply {
        println!(
            "dry run: {} backup(s) would be deleted, {kept} kept; add --apply to delete",
            doomed.len()
        );
        if !binlogs.doomed.is_empty() {
            println!(
                "dry run: {} archived binlog file(s) would be deleted",
                binlogs.doomed.len()
            );
        }
        return Ok(exit::OK);
    }
    // Binlogs first: a backup is deleted only after the binlogs only it needed are gone, so an
    // interrupted prune never leaves binlogs that no listing explains.
    crate::binlogs::prune_apply(&*repo, &binlogs)?;
    if !binlogs.doomed.is_empty() {
        println!("deleted {} archived binlog file(s)", binlogs.doomed.len());
    }
    let left = retention::apply(&*repo, &doomed)?;
    println!(
        "deleted {} backup(s), kept {kept}",
        doomed.len() - left.len()
    );
    if left.is_empty() {
        return Ok(exit::OK);
    }
    let what: Vec<String> = left
        .iter()
        .map(|l| format!("{} (left: {})", l.id, l.keys.join(", ")))
        .collect();
    Err(BackupError::Refused(format!(
        "{} backup(s) could not be deleted entirely, symbolic links are never followed or deleted: {}",
        left.len(),
        what.join("; ")
    ))
    .into())
}
