//! The archive commands: extract, create, list, verify FILE, and the `xbstream`/`mbstream`
//! drop-in mode.

use std::path::{Path, PathBuf};

use crate::exit;
use crate::exit::Failure;
use xbagent::create::CreateOptions;
use xbagent::extract::{extract_path, ExtractOptions, WriterOptions};
use xbagent::extract::{extract_reader, ExtractError};
use xbagent::format::DecodeOptions;
use xbagent::inspect::{scan, Listing, Scan};
use xbagent::progress::Progress;
use xbagent::stream::stdio::open_input;
use xbagent::stream::stop::Stoppable;

use crate::cli::{default_writers, CreateArgs, DropIn, ExtractArgs, ListArgs, VerifyArgs};
use crate::output::{print_json_or, print_table};
use crate::signals::Stop;
use crate::Display;

pub fn extract(a: ExtractArgs, d: Display) -> Result<i32, Failure> {
    let stop = Stop::install(format!(
        "{} keeps what was extracted so far, the last files possibly incomplete",
        a.dir.display()
    ))?;
    let opts = ExtractOptions {
        dir: a.dir,
        decode: a.decode.options(),
        writer: WriterOptions {
            threads: a.parallel.unwrap_or_else(default_writers).max(1),
            force: a.force,
            max_open_files: a.max_open_files.max(1),
            sync: a.fsync,
            direct: !a.buffered,
            ..WriterOptions::default()
        },
    };
    let progress = Progress::new("extract", None, d.show, d.verbose);
    let res = open_input(a.input.as_deref())
        .map_err(ExtractError::from)
        .and_then(|(f, what)| {
            extract_reader(Stoppable::new(f, stop.flag()), &what, &opts, &progress)
        });
    progress.finish();
    let (_, totals) = stop.settle(res)?;
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

pub fn create(a: CreateArgs, d: Display) -> Result<i32, Failure> {
    let stop = Stop::install("the stream written so far is incomplete")?;
    let opts = CreateOptions {
        dir: a.dir,
        paths: a.paths,
        parallel: a.parallel.max(1),
        chunk_size: a.chunk_size.clamp(1, 1 << 30) as usize,
        sparse: a.sparse,
    };
    let progress = Progress::new("create", None, d.show, d.verbose);
    let out = Stoppable::new(xbagent::stream::stdio::stdout()?, stop.flag());
    let res = xbagent::create::create(&opts, out, &progress);
    progress.finish();
    let totals = stop.settle(res)?;
    tracing::info!(
        "streamed {} files, {} data bytes as {} stream bytes ({} chunks)",
        totals.files,
        totals.data_bytes,
        totals.stream_bytes,
        totals.chunks
    );
    Ok(exit::OK)
}

pub fn list(a: ListArgs, d: Display) -> Result<i32, Failure> {
    let stop = Stop::install("nothing was listed")?;
    let progress = Progress::new("list", None, d.show && a.input.is_some(), false);
    let scan = scan_stoppable(a.input.as_deref(), a.decode.options(), &progress, &stop)?;
    progress.finish();
    let listing = Listing::from_scan(&scan);
    print_json_or(a.json, &listing, print_table)?;
    match scan.defect {
        Some(e) => Err(e.into()),
        None => Ok(exit::OK),
    }
}

/// `verify FILE`: check a stream, write nothing.
pub fn verify(a: VerifyArgs, d: Display) -> Result<i32, Failure> {
    let stop = Stop::install("the stream was not verified")?;
    let progress = Progress::new("verify", None, d.show, d.verbose);
    let input = a.input.as_deref().map(Path::new);
    let scan = scan_stoppable(input, a.decode.options(), &progress, &stop)?;
    progress.finish();
    if let Some(e) = scan.defect {
        return Err(e.into());
    }
    let t = &scan.totals;
    println!(
        "ok: {} files, {} chunks, {} data bytes, {} stream bytes ({} dialect)",
        t.files, t.chunks, t.data_bytes, t.bytes, t.dialect
    );
    Ok(exit::OK)
}

/// Scan a file or standard input, stopping at a signal: a scan cut short by one is reported as
/// the signal, not as the defect its cut-off read looks like.
fn scan_stoppable(
    input: Option<&Path>,
    opts: DecodeOptions,
    progress: &Progress,
    stop: &Stop,
) -> Result<Scan, Failure> {
    let res = open_input(input)
        .map(|(f, what)| scan(Stoppable::new(f, stop.flag()), &what, opts, progress));
    let scan = stop.settle(res)?;
    if scan.defect.is_some() && stop.raised() {
        return Err(stop.interrupted());
    }
    Ok(scan)
}

/// `xbstream` / `mbstream` compatibility: the same jobs under the reference tools' flags.
pub fn drop_in(a: DropIn) -> Result<i32, Failure> {
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
        xbagent::create::create(&opts, xbagent::stream::stdio::stdout()?, &progress)?;
        Ok(exit::OK)
    } else {
        eprintln!("xbagent: either -c or -x must be specified");
        Ok(exit::USAGE)
    }
}
