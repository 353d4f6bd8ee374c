//! What the listing commands print: tables for people, JSON for programs.

use std::io::Write;

use xbagent::format::FileState;
use xbagent::inspect::Listing;
use xbagent::store::retention;
use xbagent::stream::error::StreamError;

use crate::exit::Failure;

pub fn print_backups(
    out: &mut impl Write,
    all: &[retention::BackupSummary],
) -> std::io::Result<()> {
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
        // Where a complete backup ends, on a line of its own under the row: one more column
        // would not fit 100 columns.
        if let Some(m) = &b.manifest {
            writeln!(out, "{:<22} binlog {}", "", binlog_position(m))?;
            if let Some(e) = &m.encryption {
                writeln!(out, "{:<22} encrypted for {}", "", e.recipients.join(", "))?;
            }
        }
    }
    let complete = all.iter().filter(|b| b.complete).count();
    writeln!(
        out,
        "{} backup(s): {complete} complete, {} incomplete",
        all.len(),
        all.len() - complete
    )
}

/// `file:position gtid` (and the end LSN when known), or `-` when the backup recorded no
/// position (not a point-in-time recovery base).
fn binlog_position(m: &retention::ManifestSummary) -> String {
    let Some(b) = &m.binlog else {
        return "-".into();
    };
    let gtid = if b.gtid.is_empty() {
        "(no gtid)"
    } else {
        &b.gtid
    };
    let mut s = format!("{}:{} {gtid}", b.file, b.position);
    if let Some(c) = &m.checkpoints {
        s.push_str(&format!("  lsn {}", c.to_lsn));
    }
    s
}

/// Print `value` on stdout as pretty JSON, or as `table` prints it.
pub fn print_json_or<T: serde::Serialize>(
    json: bool,
    value: &T,
    table: impl FnOnce(&mut std::io::StdoutLock<'static>, &T) -> std::io::Result<()>,
) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let res = if json {
        serde_json::to_writer_pretty(&mut out, value)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out))
    } else {
        table(&mut out, value)
    };
    res.map_err(|e| StreamError::WriteStream(e).into())
}

pub fn print_table(out: &mut impl Write, l: &Listing) -> std::io::Result<()> {
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
