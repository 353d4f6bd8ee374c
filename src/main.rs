//! The `xbagent` binary: parse the command line, set up logging, run one library command,
//! turn its error into a message and an exit code.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use xbagent::cli::{
    default_writers, BackupsCommand, Cli, Command, DecodeArgs, DropIn, PruneArgs, ReadArgs,
    ReceiveArgs, RestoreArgs, S3Args, ServeArgs, UploadArgs,
};
use xbagent::clone::receive::{receive, ReceiveOptions, Received};
use xbagent::clone::serve::{serve, ServeOptions};
use xbagent::clone::tls;
use xbagent::create::{create, CreateOptions};
use xbagent::error::exit;
use xbagent::extract::{extract_path, ExtractOptions, WriterOptions};
use xbagent::format::{DecodeOptions, FileState};
use xbagent::inspect::{scan_path, Listing};
use xbagent::progress::Progress;
use xbagent::store::restore::{ReadOptions, RestoreOptions};
use xbagent::store::upload::UploadOptions;
use xbagent::store::{retention, BackupRef, RepoAddress, Repository, S3Settings};
use xbagent::stream::source::Source;
use xbagent::Error;

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let result = if name == "xbstream" || name == "mbstream" {
        init_logging(false, false);
        drop_in(DropIn::parse())
    } else {
        let cli = Cli::parse();
        // The clone commands are services: their connection log is wanted by default.
        let service = matches!(
            cli.command,
            Command::Serve(_)
                | Command::Receive(_)
                | Command::Upload(_)
                | Command::Restore(_)
                | Command::Backups(BackupsCommand::Prune(_))
        );
        init_logging(cli.verbose || service, cli.quiet);
        run(cli)
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("xbagent: error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn init_logging(verbose: bool, quiet: bool) {
    let default = if quiet {
        "error"
    } else if verbose {
        "info"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_env("XBAGENT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .init();
}

fn decode_opts(d: &DecodeArgs) -> DecodeOptions {
    DecodeOptions {
        dialect: d.dialect.into(),
        max_chunk_size: d.max_chunk_size,
        ..DecodeOptions::default()
    }
}

fn run(cli: Cli) -> Result<i32, Error> {
    let show = !cli.quiet && !cli.no_progress;
    match cli.command {
        Command::Extract(a) => {
            let opts = ExtractOptions {
                dir: a.dir,
                decode: decode_opts(&a.decode),
                writer: WriterOptions {
                    threads: a.parallel.unwrap_or_else(default_writers).max(1),
                    force: a.force,
                    max_open_files: a.max_open_files.max(1),
                    sync: a.fsync,
                    direct: !a.buffered,
                    ..WriterOptions::default()
                },
            };
            let progress = Progress::new("extract", None, show, cli.verbose);
            let res = extract_path(a.input.as_deref(), &opts, &progress);
            progress.finish();
            let (_, totals) = res?;
            tracing::info!(
                "extracted {} files, {} data bytes from {} stream bytes ({} chunks, {} dialect)",
                totals.files,
                totals.data_bytes,
                totals.bytes,
                totals.chunks,
                totals.dialect
            );
            Ok(exit::OK)
        }
        Command::Create(a) => {
            let opts = CreateOptions {
                dir: a.dir,
                paths: a.paths,
                parallel: a.parallel.max(1),
                chunk_size: a.chunk_size.clamp(1, 1 << 30) as usize,
                sparse: a.sparse,
            };
            let progress = Progress::new("create", None, show, cli.verbose);
            let res = create(&opts, xbagent::stream::stdio::stdout()?, &progress);
            progress.finish();
            let totals = res?;
            tracing::info!(
                "streamed {} files, {} data bytes as {} stream bytes ({} chunks)",
                totals.files,
                totals.data_bytes,
                totals.stream_bytes,
                totals.chunks
            );
            Ok(exit::OK)
        }
        Command::List(a) => {
            let progress = Progress::new("list", None, show && a.input.is_some(), false);
            let scan = scan_path(a.input.as_deref(), decode_opts(&a.decode), &progress)?;
            progress.finish();
            let listing = Listing::from_scan(&scan);
            print_json_or(a.json, &listing, print_table)?;
            match scan.defect {
                Some(e) => Err(e),
                None => Ok(exit::OK),
            }
        }
        Command::Serve(a) => run_serve(a),
        Command::Receive(a) => run_receive(a, show, cli.verbose),
        Command::Upload(a) => run_upload(a, show, cli.verbose),
        Command::Restore(a) => run_restore(a, show, cli.verbose),
        Command::Backups(BackupsCommand::List(a)) => {
            let repo = open_repo(&a.repo, &a.s3, 1, false, None)?;
            let all = retention::list(&*repo).map_err(xbagent::store::BackupError::from)?;
            print_json_or(a.json, &all, |out, all: &Vec<_>| print_backups(out, all))?;
            Ok(exit::OK)
        }
        Command::Backups(BackupsCommand::Prune(a)) => run_prune(a),
        Command::Verify(a)
            if a.input
                .as_deref()
                .is_some_and(RepoAddress::looks_like_repository) =>
        {
            let input = a.input.as_deref().unwrap_or_default();
            let (addr, which) =
                RepoAddress::parse_with_backup(input).map_err(xbagent::store::BackupError::from)?;
            let shutdown = shutdown_flag()?;
            let repo = xbagent::store::open(
                &addr,
                &s3_settings(&a.s3, a.read.concurrency, Some(shutdown.clone())),
                false,
            )
            .map_err(xbagent::store::BackupError::from)?;
            let progress = Arc::new(Progress::new("verify", None, show, cli.verbose));
            let res = xbagent::store::restore::verify(
                repo,
                &which.unwrap_or(BackupRef::Latest),
                &read_opts(&a.read, &a.decode),
                progress.clone(),
                shutdown,
            );
            progress.finish();
            let c = res?;
            println!(
                "ok: backup {} matches its manifest: {} files, {} chunks, {} stream bytes, {} bytes stored (blake3 {})",
                c.id, c.totals.files, c.totals.chunks, c.totals.bytes, c.manifest.object.size, c.manifest.object.blake3
            );
            Ok(exit::OK)
        }
        Command::Verify(a) => {
            let progress = Progress::new("verify", None, show, cli.verbose);
            let input = a.input.as_deref().map(Path::new);
            let scan = scan_path(input, decode_opts(&a.decode), &progress)?;
            progress.finish();
            if let Some(e) = scan.defect {
                return Err(e);
            }
            let t = &scan.totals;
            println!(
                "ok: {} files, {} chunks, {} data bytes, {} stream bytes ({} dialect)",
                t.files, t.chunks, t.data_bytes, t.bytes, t.dialect
            );
            Ok(exit::OK)
        }
    }
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

fn open_repo(
    addr: &str,
    s3: &S3Args,
    concurrency: usize,
    create: bool,
    cancel: Option<Arc<AtomicBool>>,
) -> Result<Arc<dyn Repository>, Error> {
    let addr = RepoAddress::parse(addr).map_err(xbagent::store::BackupError::from)?;
    Ok(
        xbagent::store::open(&addr, &s3_settings(s3, concurrency, cancel), create)
            .map_err(xbagent::store::BackupError::from)?,
    )
}

fn read_opts(r: &ReadArgs, d: &DecodeArgs) -> ReadOptions {
    ReadOptions {
        concurrency: r.concurrency.clamp(1, 64),
        memory_limit: r.memory_limit,
        decode: decode_opts(d),
    }
}

fn run_upload(a: UploadArgs, show: bool, verbose: bool) -> Result<i32, Error> {
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
    opts.id = a.id.clone();
    opts.decode = decode_opts(&a.decode);
    opts.validate()
        .map_err(|e| Error::Backup(xbagent::store::BackupError::Refused(e)))?;
    let shutdown = shutdown_flag()?;
    let repo = open_repo(&a.to, &a.s3, a.concurrency, true, Some(shutdown.clone()))?;
    let progress = Progress::new("upload", total, show, verbose);
    let res = xbagent::store::upload::upload(&*repo, &opts, &progress, &shutdown);
    progress.finish();
    let up = res?;
    let m = &up.manifest;
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

fn run_restore(a: RestoreArgs, show: bool, verbose: bool) -> Result<i32, Error> {
    let (addr, which) =
        RepoAddress::parse_with_backup(&a.from).map_err(xbagent::store::BackupError::from)?;
    let shutdown = shutdown_flag()?;
    let repo = xbagent::store::open(
        &addr,
        &s3_settings(&a.s3, a.read.concurrency, Some(shutdown.clone())),
        false,
    )
    .map_err(xbagent::store::BackupError::from)?;
    let which = which.unwrap_or(BackupRef::Latest);
    // The object's size, for the progress display's ETA.
    let total = xbagent::store::restore::resolve(&*repo, &which)
        .ok()
        .map(|(_, m)| m.object.size);
    let progress = Arc::new(Progress::new("restore", total, show, verbose));
    let opts = RestoreOptions {
        dir: a.dir.clone(),
        force: a.force,
        writers: a.parallel.unwrap_or_else(default_writers).max(1),
        buffered: a.buffered,
        read: read_opts(&a.read, &a.decode),
    };
    let res = xbagent::store::restore::restore(repo, &which, &opts, progress.clone(), shutdown);
    progress.finish();
    let c = res?;
    println!(
        "restored backup {} into {}: {} files, {} stream bytes; digest and file list match the manifest",
        c.id,
        a.dir.display(),
        c.totals.files,
        c.totals.bytes
    );
    Ok(exit::OK)
}

fn run_prune(a: PruneArgs) -> Result<i32, Error> {
    let repo = open_repo(&a.repo, &a.s3, 1, false, Some(shutdown_flag()?))?;
    let all = retention::scan(&*repo).map_err(xbagent::store::BackupError::from)?;
    let policy = retention::Policy {
        keep_last: a.keep_last,
        keep_within: a.keep_within,
        grace: a.grace,
    };
    let doomed = retention::plan(&all, &policy, std::time::SystemTime::now());
    let verb = if a.apply { "deleting" } else { "would delete" };
    for d in &doomed {
        println!("{verb} {} ({})", d.id, d.reason);
    }
    let kept = all.len() - doomed.len();
    if a.apply {
        retention::apply(&*repo, &doomed)?;
        println!("deleted {} backup(s), kept {kept}", doomed.len());
    } else {
        println!(
            "dry run: {} backup(s) would be deleted, {kept} kept; add --apply to delete",
            doomed.len()
        );
    }
    Ok(exit::OK)
}

fn print_backups(out: &mut impl Write, all: &[retention::BackupSummary]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<22} {:<10} {:>14} {:>8} {:<8} {:<25} SOURCE",
        "ID", "STATE", "STORED", "FILES", "COMPRESS", "FINISHED"
    )?;
    for b in all {
        let state = match (&b.problem, b.complete) {
            (Some(_), _) => "damaged",
            (None, true) => "complete",
            (None, false) => "incomplete",
        };
        let (files, comp, fin, src) = match &b.manifest {
            Some(m) => (
                m.files.to_string(),
                m.compression.clone(),
                m.finished.clone(),
                m.source.clone(),
            ),
            None => (
                "-".into(),
                "-".into(),
                "-".into(),
                b.problem.clone().unwrap_or_default(),
            ),
        };
        writeln!(
            out,
            "{:<22} {:<10} {:>14} {:>8} {:<8} {:<25} {}",
            b.id, state, b.stored_bytes, files, comp, fin, src
        )?;
    }
    let complete = all.iter().filter(|b| b.complete).count();
    writeln!(
        out,
        "{} backup(s): {complete} complete, {} incomplete",
        all.len(),
        all.len() - complete
    )
}

/// Print `value` on stdout as pretty JSON, or as `table` prints it.
fn print_json_or<T: serde::Serialize>(
    json: bool,
    value: &T,
    table: impl FnOnce(&mut std::io::StdoutLock<'static>, &T) -> std::io::Result<()>,
) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    let res = if json {
        serde_json::to_writer_pretty(&mut out, value)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out))
    } else {
        table(&mut out, value)
    };
    res.map_err(Error::WriteStream)
}

fn read_token(path: Option<&Path>, insecure: bool) -> Result<Option<[u8; 32]>, Error> {
    match path {
        Some(p) => {
            let t = std::fs::read(p).map_err(|e| Error::Read {
                what: format!("token file {}", p.display()),
                source: e,
            })?;
            if t.trim_ascii().is_empty() {
                return Err(Error::Refused(format!("token file {} is empty", p.display())));
            }
            Ok(Some(xbagent::clone::protocol::derive_key(&t)))
        }
        None if insecure => Ok(None),
        None => Err(Error::Refused(
            "no --token-file given: refusing to run unauthenticated (add --insecure to accept that risk)".into(),
        )),
    }
}

fn shutdown_flag() -> Result<Arc<AtomicBool>, Error> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, flag.clone())
            .map_err(|e| Error::Refused(format!("cannot install a signal handler: {e}")))?;
    }
    Ok(flag)
}

fn run_serve(a: ServeArgs) -> Result<i32, Error> {
    let key = if a.raw {
        None
    } else {
        read_token(a.token_file.as_deref(), a.insecure)?
    };
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(tls::server_config(&tls::ServerTls {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: a.tls_client_ca.clone(),
        })?),
        _ => None,
    };
    let source = match (a.exec, a.dir) {
        (Some(cmd), _) => Source::Exec(cmd),
        (None, Some(d)) => Source::Dir(d),
        (None, None) => return Ok(exit::USAGE),
    };
    let opts = ServeOptions {
        listen: a.listen,
        source,
        max_conns: a.max_conns.max(1),
        key,
        tls,
        raw: a.raw,
        heartbeat: a.heartbeat.max(std::time::Duration::from_millis(100)),
        parallel: a.parallel,
    };
    serve(opts, shutdown_flag()?)?;
    Ok(exit::OK)
}

fn run_receive(a: ReceiveArgs, show: bool, verbose: bool) -> Result<i32, Error> {
    // A restarted initContainer must succeed at once, even if its token is gone by now.
    if a.dir.join(xbagent::clone::COMPLETE_MARKER).exists() {
        eprintln!(
            "xbagent: {} already holds a complete clone; nothing to do",
            a.dir.display()
        );
        return Ok(exit::OK);
    }
    let key = if a.raw {
        None
    } else {
        read_token(a.token_file.as_deref(), a.insecure)?
    };
    let tls = match &a.tls_ca {
        Some(ca) => {
            let host = a
                .tls_server_name
                .clone()
                .unwrap_or_else(|| host_of(&a.from).to_string());
            let cfg = tls::client_config(&tls::ClientTls {
                ca: ca.clone(),
                cert: a.tls_cert.clone().zip(a.tls_key.clone()),
            })?;
            Some((cfg, tls::server_name(&host)?))
        }
        None => None,
    };
    let opts = ReceiveOptions {
        from: a.from,
        dir: a.dir,
        key,
        tls,
        retry_for: a.retry_for,
        stall_timeout: a.stall_timeout,
        keep_partial: a.keep_partial,
        raw: a.raw,
        parallel: a.parallel.unwrap_or_else(default_writers).max(1),
        buffered: a.buffered,
    };
    let progress = Progress::new("receive", None, show, verbose);
    let res = receive(&opts, &progress);
    progress.finish();
    match res? {
        Received::AlreadyComplete => eprintln!(
            "xbagent: {} already holds a complete clone; nothing to do",
            opts.dir.display()
        ),
        Received::Complete(t) => eprintln!(
            "xbagent: clone complete: {} files, {} chunks, {} bytes, digest {}",
            t.files,
            t.chunks,
            t.bytes,
            blake3::Hash::from(t.digest).to_hex()
        ),
        Received::RawUnproven { files, bytes } => eprintln!(
            "xbagent: raw stream received ({files} files, {bytes} bytes); raw mode cannot prove the stream was whole, so no completion marker was written"
        ),
    }
    Ok(exit::OK)
}

/// Host part of HOST:PORT (brackets of an IPv6 literal removed).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn print_table(out: &mut impl Write, l: &Listing) -> std::io::Result<()> {
    writeln!(out, "{:<9} {:>14} {:>7}  PATH", "STATE", "SIZE", "CHUNKS")?;
    for f in &l.files {
        let state = match f.state {
            FileState::Complete => "complete",
            FileState::Open => "open",
            FileState::Removed => "removed",
        };
        writeln!(
            out,
            "{:<9} {:>14} {:>7}  {}",
            state, f.size, f.chunks, f.path
        )?;
    }
    Ok(())
}

/// `xbstream` / `mbstream` compatibility: the same jobs under the reference tools' flags.
fn drop_in(a: DropIn) -> Result<i32, Error> {
    if a.decompress {
        eprintln!("xbagent: --decompress is not supported yet");
        return Ok(exit::USAGE);
    }
    let dir = a.dir.unwrap_or_else(|| PathBuf::from("."));
    if a.extract {
        let opts = ExtractOptions {
            dir,
            decode: DecodeOptions::default(),
            writer: WriterOptions {
                threads: a.parallel.unwrap_or_else(default_writers).max(1),
                ..WriterOptions::default()
            },
        };
        let progress = Progress::new("extract", None, false, a.verbose);
        extract_path(None, &opts, &progress)?;
        Ok(exit::OK)
    } else if a.create {
        if a.files.is_empty() {
            eprintln!("xbagent: -c needs files to stream");
            return Ok(exit::USAGE);
        }
        let opts = CreateOptions {
            dir,
            paths: a.files,
            parallel: a.parallel.unwrap_or(1).max(1),
            ..CreateOptions::new(".", Vec::new())
        };
        let progress = Progress::new("create", None, false, a.verbose);
        create(&opts, xbagent::stream::stdio::stdout()?, &progress)?;
        Ok(exit::OK)
    } else {
        eprintln!("xbagent: either -c or -x must be specified");
        Ok(exit::USAGE)
    }
}
