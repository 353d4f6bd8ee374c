//! The `xbagent` binary: parse the command line, set up logging, run one library command,
//! turn its error into a message and an exit code.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use xbagent::cli::{Cli, Command, DecodeArgs, DropIn};
use xbagent::create::{create, CreateOptions};
use xbagent::error::exit;
use xbagent::extract::{extract_path, ExtractOptions, WriterOptions};
use xbagent::format::{DecodeOptions, FileState};
use xbagent::inspect::{scan_path, Listing};
use xbagent::progress::Progress;
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
        init_logging(cli.verbose, cli.quiet);
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
                    threads: a.parallel.max(1),
                    force: a.force,
                    max_open_files: a.max_open_files.max(1),
                    sync: a.fsync,
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
            let res = create(&opts, xbagent::stdio::stdout()?, &progress);
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
            let mut out = std::io::stdout().lock();
            let res = if a.json {
                serde_json::to_writer_pretty(&mut out, &listing)
                    .map_err(std::io::Error::other)
                    .and_then(|()| writeln!(out))
            } else {
                print_table(&mut out, &listing)
            };
            res.map_err(Error::WriteStream)?;
            match scan.defect {
                Some(e) => Err(e),
                None => Ok(exit::OK),
            }
        }
        Command::Verify(a) => {
            let progress = Progress::new("verify", None, show, cli.verbose);
            let scan = scan_path(a.input.as_deref(), decode_opts(&a.decode), &progress)?;
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
                threads: a.parallel.max(1),
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
            parallel: a.parallel.max(1),
            ..CreateOptions::new(".", Vec::new())
        };
        let progress = Progress::new("create", None, false, a.verbose);
        create(&opts, xbagent::stdio::stdout()?, &progress)?;
        Ok(exit::OK)
    } else {
        eprintln!("xbagent: either -c or -x must be specified");
        Ok(exit::USAGE)
    }
}
