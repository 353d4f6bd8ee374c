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
mod metrics_http;
mod output;
mod pushgateway;
mod signals;
mod summary;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::exit::Failure;
use crate::summary::Job;
use cli::{BackupsCommand, BinlogsCommand, Cli, Command, DropIn, LogFormat, TokenCommand};

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
        init_logging(false, false, LogFormat::Text);
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
        init_logging(cli.verbose || service, cli.quiet, cli.log_format);
        run(cli)
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            say("ERROR", &format!("error: {e}"));
            ExitCode::from(exit::code(&e) as u8)
        }
    }
}

/// `--log-format json`: every line on stderr is a JSON object, [`say`]'s too.
static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Spans that only the JSON format shows: the text format stays as it was (its lines carry
/// the `conn` span only), the JSON lines carry the backup id and the receive's donor as fields.
const JSON_ONLY_SPANS: [&str; 2] = ["backup", "receive"];

fn init_logging(verbose: bool, quiet: bool, format: LogFormat) {
    let default = if quiet {
        "error"
    } else if verbose {
        "info"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_env("XBAGENT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let registry = tracing_subscriber::registry();
    if format == LogFormat::Json {
        JSON_LOGS.store(true, Ordering::Relaxed);
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_target(false)
            .with_writer(std::io::stderr);
        registry.with(layer.with_filter(filter)).init();
        return;
    }
    let text_spans = filter_fn(|m| !(m.is_span() && JSON_ONLY_SPANS.contains(&m.name())));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false);
    registry
        .with(layer.with_filter(text_spans).with_filter(filter))
        .init();
}

/// A line for the operator on stderr outside the log (a command's last word, the final
/// error): `xbagent: MSG` as text, or with `--log-format json` one JSON object shaped like
/// the log's lines, so that a log collector can parse every line.
pub fn say(level: &str, msg: &str) {
    if JSON_LOGS.load(Ordering::Relaxed) {
        let line = serde_json::json!({
            "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            "level": level,
            "message": msg,
        });
        eprintln!("{line}");
    } else {
        eprintln!("xbagent: {msg}");
    }
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

/// How the summary line of upload and restore is written: one JSON object with
/// `--log-format json`, like every other line then.
fn summary_format() -> summary::Format {
    if JSON_LOGS.load(Ordering::Relaxed) {
        summary::Format::Json
    } else {
        summary::Format::Text
    }
}

/// A flag raised by SIGINT or SIGTERM, for the commands that stop cleanly on a signal.
fn shutdown_flag() -> Result<Arc<AtomicBool>, Failure> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, flag.clone()).map_err(Failure::Signals)?;
    }
    Ok(flag)
}
