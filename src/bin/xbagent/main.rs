//! The `xbagent` binary: parse the command line, set up logging, run one library command,
//! turn its error into a message and an exit code.
//!
//! The command-line definitions (`cli.rs`) live here, not in the library: the library knows
//! nothing of clap. Each command module turns parsed arguments into a library call with typed
//! options and prints its result.

mod archive;
mod backup;
mod binlogs;
mod cli;
mod clone;
mod exit;
mod output;
mod pushgateway;
mod signals;
mod summary;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::exit::Failure;
use crate::summary::Job;
use cli::{BackupsCommand, BinlogsCommand, Cli, Command, DropIn, TokenCommand};

/// How much a command shows while it works: a progress display (`show`) and a line per file
/// (`verbose`).
#[derive(Clone, Copy)]
pub struct Display {
    pub show: bool,
    pub verbose: bool,
}

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let result = if name == "xbstream" || name == "mbstream" {
        init_logging(false, false);
        archive::drop_in(DropIn::parse())
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
                | Command::Binlogs(BinlogsCommand::Push(_))
        );
        init_logging(cli.verbose || service, cli.quiet);
        run(cli)
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("xbagent: error: {e}");
            ExitCode::from(exit::code(&e) as u8)
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

fn run(cli: Cli) -> Result<i32, Failure> {
    let display = Display {
        show: !cli.quiet && !cli.no_progress,
        verbose: cli.verbose,
    };
    match cli.command {
        Command::Extract(a) => archive::extract(a, display),
        Command::Create(a) => archive::create(a, display),
        Command::List(a) => archive::list(a, display),
        Command::Verify(a) if backup::names_a_repository(&a) => backup::verify(a, display),
        Command::Verify(a) => archive::verify(a, display),
        Command::Serve(a) => clone::serve(a),
        Command::Receive(a) => clone::receive(a, display),
        Command::Upload(a) => {
            let (job, rate) = (a.job.clone(), a.rate_limit);
            summary::run_job(Job::Upload, &job, rate, summary_format(), |fig| {
                backup::upload(a, display, fig)
            })
        }
        Command::Restore(a) => {
            let job = a.job.clone();
            summary::run_job(Job::Restore, &job, None, summary_format(), |fig| {
                backup::restore(a, display, fig)
            })
        }
        Command::Backups(BackupsCommand::List(a)) => backup::list(a),
        Command::Backups(BackupsCommand::Prune(a)) => backup::prune(a),
        Command::Token(TokenCommand::New) => clone::token_new(),
        Command::Binlogs(BinlogsCommand::Push(a)) => binlogs::push(a),
        Command::Binlogs(BinlogsCommand::List(a)) => binlogs::list(a),
    }
}

/// How the summary line of upload and restore is written. Text until the global
/// `--log-format json` exists; then `Format::Json` with it.
fn summary_format() -> summary::Format {
    summary::Format::Text
}

/// A flag raised by SIGINT or SIGTERM, for the commands that stop cleanly on a signal.
fn shutdown_flag() -> Result<Arc<AtomicBool>, Failure> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, flag.clone()).map_err(Failure::Signals)?;
    }
    Ok(flag)
}
