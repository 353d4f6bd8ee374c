//! Follows event groups (transactions) through one binlog file and keeps its summary: the
//! GTID state before and after it, its first and last complete transaction, where its
//! longest prefix without a partial transaction ends, and whether it was closed.
//!
//! Pure bookkeeping over decoded [`Event`]s; never sees bytes, never does I/O.

use super::error::BinlogError;
use super::event::{self, Event, EventKind, QueryKind};
use super::gtid::{Gtid, GtidState};
use super::reader::{ErrAt, EventReader};

/// One complete event group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub gtid: Gtid,
    /// Offset of its GTID event and offset just past its last event.
    pub start: u64,
    pub end: u64,
    /// Header timestamp (seconds since the epoch) of its LAST event (XID / COMMIT / the
    /// standalone statement): the time we call its commit time.
    pub commit_time: u32,
}

/// What one binlog file holds, as far as it has been read.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileSummary {
    pub file: String,
    /// Server id of the FORMAT_DESCRIPTION.
    pub server_id: u32,
    /// FORMAT_DESCRIPTION header timestamp.
    pub created: u32,
    pub server_version: String,
    pub checksum: bool,
    /// GTID_LIST: the state before this file (None until read).
    pub gtid_before: Option<GtidState>,
    /// gtid_before plus every complete transaction so far.
    pub gtid_after: GtidState,
    /// Complete transactions only.
    pub first_gtid: Option<Gtid>,
    pub last_gtid: Option<Gtid>,
    /// commit_time of the first/last complete transaction.
    pub first_time: Option<u32>,
    pub last_time: Option<u32>,
    pub transactions: u64,
    /// Offset just past the last complete transaction, or past the header events (FDE,
    /// GTID_LIST, BINLOG_CHECKPOINT, and any events outside a group) when none is incomplete
    /// after them: i.e. the longest prefix that holds no partial transaction.
    pub complete_end: u64,
    /// ROTATE or STOP seen (then complete_end is the file's end, past that event).
    pub closed: Option<Closed>,
}

/// How a file was closed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Closed {
    Rotate { next_file: String },
    Stop,
}

/// The group being read.
#[derive(Debug, Clone, Copy)]
struct Group {
    gtid: Gtid,
    start: u64,
    standalone: bool,
}

/// Follows event groups through a file and keeps its summary. Feed it every event in order.
#[derive(Debug)]
pub struct FileTracker {
    summary: FileSummary,
    events: u64,
    seen_gtid: bool,
    group: Option<Group>,
}

impl FileTracker {
    pub fn new(file: &str) -> Self {
        FileTracker {
            summary: FileSummary {
                file: file.to_string(),
                ..FileSummary::default()
            },
            events: 0,
            seen_gtid: false,
            group: None,
        }
    }

    pub fn summary(&self) -> &FileSummary {
        &self.summary
    }

    fn err(&self, ev: &Event, what: String) -> BinlogError {
        ErrAt {
            file: &self.summary.file,
            offset: ev.offset,
        }
        .order(what)
    }

    /// Returns the transaction this event completes, if any. An event out of order is an
    /// error and leaves the tracker as it was.
    pub fn event(&mut self, ev: &Event) -> Result<Option<Transaction>, BinlogError> {
        if self.summary.closed.is_some() {
            return Err(self.err(ev, "an event after the file's ROTATE/STOP".into()));
        }
        let is_fde = matches!(ev.kind, EventKind::FormatDescription { .. });
        if (self.events == 0) != is_fde {
            let what = if is_fde {
                "a FORMAT_DESCRIPTION that is not the first event"
            } else {
                "the first event is not a FORMAT_DESCRIPTION"
            };
            return Err(self.err(ev, what.into()));
        }
        let done = self.group_step(ev)?;
        self.events += 1;
        let tx = done.map(|g| Transaction {
            gtid: g.gtid,
            start: g.start,
            end: ev.end(),
            commit_time: ev.header.timestamp,
        });
        if let Some(t) = &tx {
            let s = &mut self.summary;
            s.gtid_after.apply(t.gtid);
            s.first_gtid.get_or_insert(t.gtid);
            s.last_gtid = Some(t.gtid);
            s.first_time.get_or_insert(t.commit_time);
            s.last_time = Some(t.commit_time);
            s.transactions += 1;
        }
        if self.group.is_none() {
            self.summary.complete_end = ev.end();
        }
        Ok(tx)
    }

    /// Applies `ev` to the group state; returns the group it completes.
    fn group_step(&mut self, ev: &Event) -> Result<Option<Group>, BinlogError> {
        let group = self.group;
        let inside = |what: &str| format!("{what} inside the group of GTID {}", fmt_group(group));
        match (&ev.kind, group) {
            (
                EventKind::FormatDescription {
                    server_version,
                    checksum,
                    ..
                },
                _,
            ) => {
                let s = &mut self.summary;
                s.server_id = ev.header.server_id;
                s.created = ev.header.timestamp;
                s.server_version.clone_from(server_version);
                s.checksum = *checksum;
                Ok(None)
            }
            (EventKind::GtidList(_), Some(_)) => Err(self.err(ev, inside("a GTID_LIST"))),
            (EventKind::GtidList(state), None) => {
                if self.seen_gtid || self.summary.gtid_before.is_some() {
                    return Err(self.err(ev, "a GTID_LIST after a GTID or a GTID_LIST".into()));
                }
                self.summary.gtid_before = Some(state.clone());
                self.summary.gtid_after = state.clone();
                Ok(None)
            }
            (EventKind::BinlogCheckpoint { .. }, Some(_)) => {
                Err(self.err(ev, inside("a BINLOG_CHECKPOINT")))
            }
            (EventKind::Gtid { .. }, Some(_)) => Err(self.err(ev, inside("a GTID"))),
            (&EventKind::Gtid { gtid, standalone }, None) => {
                if let Some(prev) = self.summary.gtid_after.get(gtid.domain) {
                    if gtid.seq <= prev.seq {
                        return Err(self.err(
                            ev,
                            format!("GTID {gtid} does not come after {prev} in its domain"),
                        ));
                    }
                }
                self.seen_gtid = true;
                self.group = Some(Group {
                    gtid,
                    start: ev.offset,
                    standalone,
                });
                Ok(None)
            }
            (EventKind::Rotate { .. } | EventKind::Stop, Some(_)) => {
                Err(self.err(ev, inside("a ROTATE/STOP")))
            }
            (EventKind::Rotate { next_file, .. }, None) => {
                self.summary.closed = Some(Closed::Rotate {
                    next_file: next_file.clone(),
                });
                Ok(None)
            }
            (EventKind::Stop, None) => {
                self.summary.closed = Some(Closed::Stop);
                Ok(None)
            }
            _ => self.in_group(ev),
        }
    }

    /// XID, QUERY and other events: whether they end the current group.
    fn in_group(&mut self, ev: &Event) -> Result<Option<Group>, BinlogError> {
        let Some(g) = self.group else {
            return match ev.kind {
                EventKind::Xid { .. } => Err(self.err(ev, "an XID outside any group".into())),
                EventKind::Query {
                    kind: k @ (QueryKind::Begin | QueryKind::Commit | QueryKind::Rollback),
                } => Err(self.err(ev, format!("a {k:?} query outside any group"))),
                // Other statements and events outside a group stand alone.
                _ => Ok(None),
            };
        };
        let ends = match (&ev.kind, g.standalone) {
            (EventKind::Xid { .. }, true) => {
                return Err(self.err(ev, format!("an XID ends standalone GTID {}", g.gtid)))
            }
            (EventKind::Xid { .. }, false) => true,
            (EventKind::Query { kind }, false) => matches!(
                kind,
                QueryKind::Commit | QueryKind::Rollback | QueryKind::XaCommit
            ),
            // The standalone statement ends its group; the context events that the server
            // writes before a statement (INTVAR, RAND, USER_VAR, ANNOTATE_ROWS) do not.
            (_, true) => !matches!(
                ev.header.type_code,
                event::INTVAR_EVENT
                    | event::RAND_EVENT
                    | event::USER_VAR_EVENT
                    | event::ANNOTATE_ROWS_EVENT
            ),
            // XA PREPARE ends the first half of an XA transaction.
            (_, false) => ev.header.type_code == event::XA_PREPARE_LOG_EVENT,
        };
        if ends {
            self.group = None;
            return Ok(Some(g));
        }
        Ok(None)
    }
}

fn fmt_group(g: Option<Group>) -> String {
    g.map_or_else(String::new, |g| g.gtid.to_string())
}

fn run(
    file: &str,
    bytes: &[u8],
    whole: bool,
) -> Result<(FileSummary, Vec<Transaction>), BinlogError> {
    let mut reader = EventReader::new(file);
    let mut tracker = FileTracker::new(file);
    let mut events = Vec::new();
    // Events completed before a reader error are tracked first, so that an order error
    // earlier in the file is the one reported.
    let fed = reader.feed(bytes, &mut events);
    let mut txs = Vec::new();
    for ev in &events {
        if let Some(t) = tracker.event(ev)? {
            txs.push(t);
        }
    }
    fed?;
    if whole {
        if let Some((offset, need)) = reader.pending() {
            return Err(BinlogError::Truncated {
                file: file.to_string(),
                offset,
                have: reader.offset() - offset,
                need,
            });
        }
    }
    Ok((tracker.summary, txs))
}

/// Convenience for tests and small files: read a whole file held in memory. A file that
/// ends inside an event (or before its magic is complete) is an error.
pub fn scan(file: &str, bytes: &[u8]) -> Result<(FileSummary, Vec<Transaction>), BinlogError> {
    run(file, bytes, true)
}

/// Like scan but a file that ends inside an event is fine (a growing file): the summary stops
/// at the last complete transaction.
pub fn scan_prefix(
    file: &str,
    bytes: &[u8],
) -> Result<(FileSummary, Vec<Transaction>), BinlogError> {
    run(file, bytes, false)
}
