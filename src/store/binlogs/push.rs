//! `binlogs push`: ship a running server's binlog files to the repository, from the data
//! directory the pusher shares with the server.
//!
//! Each file is read as it grows and stored in segments cut at transaction boundaries: a
//! segment is stored when its first transaction has waited `max_lag / 2` (so a commit reaches
//! the repository within `max_lag` plus the upload), when it reaches `segment_max`, or when
//! the file is closed (ROTATE, STOP). Each segment's data object is written with a
//! no-overwrite put, then its inventory entry; a finished file then gets its file record.
//!
//! It must never write to the server's directory, never overwrite an object of the archive
//! (an object that exists with other contents stops the push), and never upload a stored
//! segment twice: on start it reads the archive and resumes each file where it ends.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use thiserror::Error;

use super::catalog::{self, ArchivedFile};
use super::inventory::{FileRecord, SealedSegment, Segment, FORMAT, MAX_FILE_RECORD};
use super::layout;
use crate::binlog::event::{FLAGS_OFFSET, LOG_EVENT_BINLOG_IN_USE_F};
use crate::binlog::{
    BinlogError, Event, EventReader, FileTracker, Gtid, GtidState, Transaction, MAGIC,
};
use crate::metrics::PushMetrics;
use crate::store::seal::{self, Recipients};
use crate::store::{Repository, StoreError};

/// How much of a file is read at once.
const BLOCK: usize = 1 << 20;
/// Bytes from the file's start that hold the header events we digest into the file id:
/// enough for FORMAT_DESCRIPTION and a GTID_LIST of many domains.
const HEADER_SCAN: u64 = 64 << 10;

#[derive(Debug, Clone)]
pub struct PushOptions {
    /// The server's binlog index file (`@@log_bin_index`).
    pub index: PathBuf,
    /// Keep running and ship as the files grow; without it, ship what is there and stop.
    pub follow: bool,
    pub max_lag: Duration,
    /// How long a missing or unreadable index is retried before giving up.
    pub retry_for: Duration,
    /// A segment is cut when it reaches this size, even before `max_lag`.
    pub segment_max: u64,
    /// Set by SIGINT/SIGTERM.
    pub stop: Arc<AtomicBool>,
    /// Seal each segment for these recipients (none: stored in the clear).
    pub recipients: Recipients,
    /// Counters, readiness and heartbeat, read by whoever exports them.
    pub metrics: Arc<PushMetrics>,
}

impl PushOptions {
    pub fn new(index: PathBuf) -> Self {
        PushOptions {
            index,
            follow: false,
            max_lag: Duration::from_secs(60),
            retry_for: Duration::from_secs(300),
            segment_max: 16 << 20,
            stop: Arc::new(AtomicBool::new(false)),
            recipients: Recipients::default(),
            metrics: Arc::default(),
        }
    }

    /// How often the files are looked at: often enough that a transaction waits at most
    /// `max_lag / 2` before its segment is due, plus one poll.
    fn poll(&self) -> Duration {
        (self.max_lag / 8).clamp(Duration::from_millis(100), Duration::from_secs(2))
    }
}

/// What a push did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PushReport {
    pub segments: u64,
    pub bytes: u64,
    pub files_sealed: u64,
    /// Data objects a killed push had stored without their entry, now entered.
    pub adopted: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_gtid: Option<Gtid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_time: Option<u32>,
    /// Files that left the index before they were wholly archived (a gap in the archive).
    pub purged_unarchived: Vec<String>,
}

#[derive(Debug, Error)]
pub enum PushError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "cannot read the binlog index {}: {source} (for {waited:?}); is the server running with \
         log-bin, and is its data directory shared with this container?",
        path.display()
    )]
    Index {
        path: PathBuf,
        waited: Duration,
        #[source]
        source: io::Error,
    },
    #[error("cannot read binlog {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Binlog(#[from] BinlogError),
    #[error(
        "{key} in {repo} exists with other contents: refusing to overwrite it ({detail}); the \
         archive and the server's binlog {file} disagree"
    )]
    Conflict {
        key: String,
        repo: String,
        file: String,
        detail: String,
    },
    #[error("the binlog index {} names '{name}', which is not a binlog file name we archive", index.display())]
    BadName { index: PathBuf, name: String },
    #[error("interrupted")]
    Interrupted,
}

/// Per-segment figures gathered while scanning, from the last cut on.
#[derive(Debug, Clone, Default)]
struct Pending {
    first_gtid: Option<Gtid>,
    first_time: Option<u32>,
    transactions: u64,
}

/// One server file being followed.
struct Tracked {
    name: String,
    path: PathBuf,
    id: String,
    reader: EventReader,
    tracker: FileTracker,
    /// The archive holds `[0, shipped)`.
    shipped: u64,
    state_at_shipped: GtidState,
    /// A data object a killed push left at `shipped` without an entry: its end, to be cut at
    /// exactly there and entered.
    adopt: Option<u64>,
    /// Where the archive ends per its last entry, and that entry, until the scan has checked
    /// the server's file agrees with it.
    verify: Option<Segment>,
    pending: Pending,
    /// When a complete, unshipped transaction was first seen.
    due_from: Option<Instant>,
    read_at: u64,
    last_read_at: u64,
    sealed: bool,
    quiet_polls: u32,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The index's file names, in order (the last is the active file). Lines are paths as the
/// server wrote them (often `./name`); only the name is used, beside the index, so the
/// pusher may mount the directory elsewhere than the server.
pub fn read_index(index: &Path) -> io::Result<Vec<String>> {
    let text = std::fs::read_to_string(index)?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.rsplit('/').next().unwrap_or(l).to_string())
        .collect())
}

/// Run the push until done (one-shot) or stopped (follow).
pub fn push(repo: &dyn Repository, opts: &PushOptions) -> Result<PushReport, PushError> {
    let mut p = Pusher {
        repo,
        opts,
        dir: opts
            .index
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        tracked: BTreeMap::new(),
        sealed: BTreeMap::new(),
        archive: BTreeMap::new(),
        report: PushReport::default(),
        index_failing_since: None,
    };
    // Only the files the server still has matter; their ids hold their names.
    let names = read_index(&opts.index).unwrap_or_default();
    let archive = catalog::load_matching(repo, |id| {
        names.is_empty() || names.iter().any(|n| id.contains(&format!("-{n}-")))
    })?;
    for f in archive.files {
        opts.metrics.archived_up_to(f.last_time());
        p.archive.insert(f.file_id.clone(), f);
    }
    loop {
        opts.metrics.heartbeat.beat();
        let round = Instant::now();
        let names = match p.index()? {
            Some(n) => n,
            None => {
                p.sleep(opts.poll())?;
                continue;
            }
        };
        p.round(&names)?;
        opts.metrics.set_oldest_unarchived(p.oldest_unarchived());
        // The index was read, and each file's archived end checked against the server's.
        opts.metrics.set_ready();
        if !opts.follow {
            return Ok(p.report);
        }
        if opts.stop.load(Ordering::Relaxed) {
            return Err(PushError::Interrupted);
        }
        p.sleep(opts.poll().saturating_sub(round.elapsed()))?;
    }
}

struct Pusher<'a> {
    repo: &'a dyn Repository,
    opts: &'a PushOptions,
    dir: PathBuf,
    /// Key: (name, inode): a name reused for a new file is a new file.
    tracked: BTreeMap<(String, u64), Tracked>,
    sealed: BTreeMap<(String, u64), String>,
    archive: BTreeMap<String, ArchivedFile>,
    report: PushReport,
    index_failing_since: Option<Instant>,
}

impl Pusher<'_> {
    fn sleep(&self, d: Duration) -> Result<(), PushError> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.opts.metrics.heartbeat.beat();
            if self.opts.stop.load(Ordering::Relaxed) {
                return Err(PushError::Interrupted);
            }
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
        }
        Ok(())
    }

    /// The index's names, or `None` to try again later; an error once it has failed for
    /// longer than `retry_for`.
    fn index(&mut self) -> Result<Option<Vec<String>>, PushError> {
        match read_index(&self.opts.index) {
            Ok(names) => {
                self.index_failing_since = None;
                for n in &names {
                    if !layout::valid_file_name(n) {
                        return Err(PushError::BadName {
                            index: self.opts.index.clone(),
                            name: n.clone(),
                        });
                    }
                }
                Ok(Some(names))
            }
            Err(e) => {
                let since = *self.index_failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.opts.retry_for {
                    return Err(PushError::Index {
                        path: self.opts.index.clone(),
                        waited: self.opts.retry_for,
                        source: e,
                    });
                }
                tracing::warn!(
                    "cannot read the binlog index {}: {e}; retrying (for at most {})",
                    self.opts.index.display(),
                    humantime::format_duration(self.opts.retry_for)
                );
                Ok(None)
            }
        }
    }

    /// Commit time of the oldest complete transaction read and not yet stored.
    fn oldest_unarchived(&self) -> Option<u32> {
        self.tracked
            .values()
            .filter(|t| t.pending.transactions > 0)
            .filter_map(|t| t.pending.first_time)
            .min()
    }

    fn round(&mut self, names: &[String]) -> Result<(), PushError> {
        let mut live = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if self.opts.stop.load(Ordering::Relaxed) {
                return Err(PushError::Interrupted);
            }
            let path = self.dir.join(name);
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                // Purged between reading the index and now; noticed below.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(PushError::Read { path, source: e }),
            };
            let key = (name.clone(), meta.ino());
            live.push(key.clone());
            if self.sealed.contains_key(&key) {
                continue;
            }
            if !self.tracked.contains_key(&key) {
                match self.start_tracking(name, &path)? {
                    Some(t) if t.sealed => {
                        self.sealed.insert(key, t.id);
                        continue;
                    }
                    Some(t) => {
                        self.tracked.insert(key.clone(), t);
                    }
                    // Too short to hold its header events yet.
                    None => continue,
                }
            }
            let newer_exists = i + 1 < names.len();
            self.advance(&key, newer_exists)?;
        }
        // Files that left the index (PURGE, expire_logs_days) before they were archived.
        let gone: Vec<_> = self
            .tracked
            .keys()
            .filter(|k| !live.contains(k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(t) = self.tracked.remove(&k) {
                tracing::error!(
                    "binlog {} left the server before it was wholly archived (archived up to byte \
                     {}): the archive has a gap after it",
                    t.name,
                    t.shipped
                );
                self.report.purged_unarchived.push(t.name);
            }
        }
        Ok(())
    }

    /// Read the file's header events, name it, and find where the archive has it.
    fn start_tracking(&mut self, name: &str, path: &Path) -> Result<Option<Tracked>, PushError> {
        let file = File::open(path).map_err(|e| PushError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        let mut head = vec![0u8; HEADER_SCAN as usize];
        let n = read_at_most(&file, 0, &mut head).map_err(|e| PushError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        head.truncate(n);
        normalize(&mut head, 0);
        let Some(header_end) = header_events_end(name, &head)? else {
            if n == head.len() {
                return Err(PushError::Read {
                    path: path.to_path_buf(),
                    source: io::Error::other(format!(
                        "no GTID_LIST event in its first {HEADER_SCAN} bytes: not a MariaDB binlog"
                    )),
                });
            }
            return Ok(None);
        };
        let (summary, _) = crate::binlog::scan_prefix(name, &head[..header_end as usize])?;
        let digest = blake3::hash(&head[..header_end as usize])
            .to_hex()
            .to_string();
        let id = layout::file_id(summary.created, summary.server_id, name, &digest);
        let mut t = Tracked {
            name: name.to_string(),
            path: path.to_path_buf(),
            id: id.clone(),
            reader: EventReader::new(name),
            tracker: FileTracker::new(name),
            shipped: 0,
            state_at_shipped: GtidState::new(),
            adopt: None,
            verify: None,
            pending: Pending::default(),
            due_from: None,
            read_at: 0,
            last_read_at: 0,
            sealed: false,
            quiet_polls: 0,
        };
        if let Some(a) = self.archive.get(&id) {
            if a.sealed {
                t.sealed = true;
                return Ok(Some(t));
            }
            if let Some(p) = a.problems.first() {
                tracing::warn!("archived binlog {id}: {p}");
            }
            t.shipped = a.end();
            if let Some(last) = a.segments.iter().take_while(|s| s.end <= t.shipped).last() {
                t.state_at_shipped = last.gtid_after.clone();
                t.last_read_at = last.read_at;
                t.verify = Some(last.clone());
            }
            t.adopt = a
                .unindexed
                .iter()
                .find(|(start, _)| *start == t.shipped)
                .map(|(start, size)| start + size);
            tracing::info!(
                "resuming {name} ({id}) at byte {} of the archive{}",
                t.shipped,
                if t.adopt.is_some() {
                    " (a stored segment without its entry is checked and entered)"
                } else {
                    ""
                }
            );
        } else {
            tracing::info!("archiving {name} as {id}");
        }
        Ok(Some(t))
    }

    /// Read what the file has gained, store what is due, seal it when finished.
    fn advance(&mut self, key: &(String, u64), newer_exists: bool) -> Result<(), PushError> {
        let Some(mut t) = self.tracked.remove(key) else {
            return Ok(());
        };
        let result = self.advance_file(&mut t, newer_exists);
        if t.sealed {
            self.sealed.insert(key.clone(), t.id.clone());
        } else {
            self.tracked.insert(key.clone(), t);
        }
        result
    }

    fn advance_file(&mut self, t: &mut Tracked, newer_exists: bool) -> Result<(), PushError> {
        let file = File::open(&t.path).map_err(|e| PushError::Read {
            path: t.path.clone(),
            source: e,
        })?;
        let read_at = now_secs();
        let grew = self.scan(t, &file)?;
        t.read_at = read_at;
        let s = t.tracker.summary();
        let cut = s.complete_end;
        let closed = s.closed.is_some();
        if cut > t.shipped && t.due_from.is_none() {
            t.due_from = Some(Instant::now());
        }
        t.quiet_polls = if grew { 0 } else { t.quiet_polls + 1 };
        // A file the server abandoned (a crash): a newer one exists and it no longer grows.
        let abandoned = !closed && newer_exists && t.quiet_polls >= 2;
        let due = t
            .due_from
            .is_some_and(|d| d.elapsed() >= self.opts.max_lag / 2);
        if cut > t.shipped
            && (closed || abandoned || due || !self.opts.follow || self.stopping())
            && t.adopt.is_none()
        {
            self.ship(t, &file, cut, read_at)?;
        }
        if t.shipped == cut && (closed || abandoned) && t.adopt.is_none() {
            self.seal(t)?;
        }
        Ok(())
    }

    fn stopping(&self) -> bool {
        self.opts.stop.load(Ordering::Relaxed)
    }

    /// Feed the file's new bytes through the reader; store segments that reach
    /// `segment_max` on the way. Returns whether the file had new bytes.
    fn scan(&mut self, t: &mut Tracked, file: &File) -> Result<bool, PushError> {
        let mut buf = vec![0u8; BLOCK];
        let mut events: Vec<Event> = Vec::new();
        let mut grew = false;
        loop {
            if self.stopping() {
                return Err(PushError::Interrupted);
            }
            let at = t.reader.offset();
            let n = read_at_most(file, at, &mut buf).map_err(|e| PushError::Read {
                path: t.path.clone(),
                source: e,
            })?;
            if n == 0 {
                return Ok(grew);
            }
            grew = true;
            events.clear();
            t.reader.feed(&buf[..n], &mut events)?;
            for ev in &events {
                let txn = t.tracker.event(ev)?;
                self.after_event(t, file, txn)?;
            }
            let cut = t.tracker.summary().complete_end;
            if cut >= t.shipped + self.opts.segment_max && t.adopt.is_none() && t.verify.is_none() {
                // Claims nothing about transactions beyond what earlier segments claimed.
                let read_at = t.last_read_at;
                self.ship(t, file, cut, read_at)?;
            }
            if n < buf.len() {
                return Ok(true);
            }
        }
    }

    /// Bookkeeping after one event: the segment's first transaction, and the checks of
    /// where the archive ends.
    fn after_event(
        &mut self,
        t: &mut Tracked,
        file: &File,
        txn: Option<Transaction>,
    ) -> Result<(), PushError> {
        if let Some(x) = txn {
            if x.start >= t.shipped {
                if t.pending.first_gtid.is_none() {
                    t.pending.first_gtid = Some(x.gtid);
                    t.pending.first_time = Some(x.commit_time);
                }
                t.pending.transactions += 1;
            }
        }
        let s = t.tracker.summary();
        if let Some(v) = &t.verify {
            if s.complete_end == v.end {
                if s.gtid_after != v.gtid_after {
                    return Err(self.conflict(
                        &layout::segment_entry(&t.id, v.start),
                        &t.name,
                        format!(
                            "the archive ends at byte {} with GTID state {}, the server's file has {} there",
                            v.end, v.gtid_after, s.gtid_after
                        ),
                    ));
                }
                let v = v.clone();
                self.check_stored_bytes(t, &v)?;
                t.verify = None;
            } else if s.complete_end > v.end {
                return Err(self.conflict(
                    &layout::segment_entry(&t.id, v.start),
                    &t.name,
                    format!(
                        "the archive ends at byte {}, which is not a transaction boundary of the server's file",
                        v.end
                    ),
                ));
            }
            return Ok(());
        }
        // A segment a killed push stored without its entry: cut exactly there and enter it
        // (`ship` checks the stored bytes are the server's).
        if let Some(a) = t.adopt {
            let cut = t.tracker.summary().complete_end;
            if cut == a {
                let read_at = t.last_read_at;
                self.ship(t, file, a, read_at)?;
            } else if cut > a {
                return Err(self.conflict(
                    &layout::segment_data(&t.id, t.shipped),
                    &t.name,
                    format!(
                        "it has no entry and ends at byte {a}, which is not a transaction boundary of the server's file"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The last stored segment's digest against the server's bytes (once, on resume).
    fn check_stored_bytes(&self, t: &Tracked, v: &Segment) -> Result<(), PushError> {
        let file = File::open(&t.path).map_err(|e| PushError::Read {
            path: t.path.clone(),
            source: e,
        })?;
        let bytes = read_segment(&file, &t.path, v.start, v.end)?;
        let digest = blake3::hash(&bytes).to_hex().to_string();
        let key = layout::segment_data(&t.id, v.start);
        if digest != v.blake3 {
            return Err(self.conflict(
                &key,
                &t.name,
                format!(
                    "its entry's digest {}, the server's bytes {digest}",
                    v.blake3
                ),
            ));
        }
        // And the stored object itself: the archive's end must be sound before more is added.
        // A sealed one is checked against its entry's digest of the sealed bytes (the push
        // holds no key to open it).
        let (want, size) = match &v.sealed {
            Some(s) => (&s.blake3, s.size),
            None => (&v.blake3, v.len()),
        };
        let stored = self.repo.get(&key, size)?;
        let stored_digest = blake3::hash(&stored).to_hex().to_string();
        if stored_digest != *want {
            return Err(self.conflict(
                &key,
                &t.name,
                format!("its digest {stored_digest}, its entry {want}"),
            ));
        }
        Ok(())
    }

    fn conflict(&self, key: &str, file: &str, detail: String) -> PushError {
        PushError::Conflict {
            key: key.to_string(),
            repo: self.repo.describe(),
            file: file.to_string(),
            detail,
        }
    }

    /// Store `[shipped, cut)` as one segment, then its entry.
    fn ship(
        &mut self,
        t: &mut Tracked,
        file: &File,
        cut: u64,
        read_at: u64,
    ) -> Result<(), PushError> {
        let bytes = read_segment(file, &t.path, t.shipped, cut)?;
        let digest = blake3::hash(&bytes).to_hex().to_string();
        let data_key = layout::segment_data(&t.id, t.shipped);
        let sealed = self.store_segment(t, &data_key, bytes, &digest)?;
        let seg = segment_of(t, cut, digest, sealed, read_at);
        self.put_entry(
            &layout::segment_entry(&t.id, t.shipped),
            &seg,
            &t.name,
            |a: &Segment, b: &Segment| {
                Segment {
                    read_at: 0,
                    ..a.clone()
                } == Segment {
                    read_at: 0,
                    ..b.clone()
                }
            },
        )?;
        tracing::info!(
            "stored {} bytes {}..{} ({} transactions{})",
            t.name,
            seg.start,
            seg.end,
            seg.transactions,
            seg.last_gtid
                .map(|g| format!(", up to {g}"))
                .unwrap_or_default()
        );
        self.report.segments += 1;
        self.opts.metrics.entered(seg.last_time);
        self.opts.metrics.heartbeat.beat();
        if seg.last_gtid.is_some() {
            self.report.last_gtid = seg.last_gtid;
            self.report.last_time = seg.last_time;
        }
        t.last_read_at = seg.read_at;
        t.shipped = cut;
        t.state_at_shipped = seg.gtid_after.clone();
        t.pending = Pending::default();
        t.due_from = None;
        t.adopt = None;
        self.archive
            .entry(t.id.clone())
            .or_insert_with(|| ArchivedFile::empty(&t.id))
            .segments
            .push(seg);
        Ok(())
    }

    /// Store one segment's object (sealed first when there are recipients); an object left
    /// by a killed run is adopted if it is what this run would have stored. Returns the sealed
    /// object's entry, if sealed.
    fn store_segment(
        &mut self,
        t: &Tracked,
        data_key: &str,
        bytes: Vec<u8>,
        digest: &str,
    ) -> Result<Option<SealedSegment>, PushError> {
        let plain_len = bytes.len() as u64;
        let (stored, sealed) = if self.opts.recipients.is_empty() {
            (bytes, None)
        } else {
            let s = self
                .opts
                .recipients
                .seal_bytes(&bytes)
                .map_err(|e| StoreError::Setup(format!("age: {e}")))?;
            let entry = SealedSegment {
                size: s.len() as u64,
                blake3: blake3::hash(&s).to_hex().to_string(),
                recipients: self.opts.recipients.strings(),
            };
            (s, Some(entry))
        };
        let len = stored.len() as u64;
        let mut sealed = sealed;
        if !self.repo.put_new(data_key, Bytes::from(stored))? {
            let size = self.repo.size(data_key)?;
            if size != Some(len) {
                return Err(self.conflict(
                    data_key,
                    &t.name,
                    format!("it holds {size:?} bytes, the server's segment {len}"),
                ));
            }
            let stored = self.repo.get(data_key, len)?;
            let stored_digest = blake3::hash(&stored).to_hex().to_string();
            match &mut sealed {
                None if stored_digest != *digest => {
                    return Err(self.conflict(
                        data_key,
                        &t.name,
                        format!("stored digest {stored_digest}, the server's bytes {digest}"),
                    ));
                }
                None => {}
                // Left by a push killed between the object and its entry. The push cannot
                // open it (it holds no identity): sealing is randomised, so only its size
                // (exactly what sealing these bytes for these recipients gives) and its
                // header are checked; the restore authenticates every chunk and checks the
                // server's digest recorded here.
                Some(s) => {
                    let header = seal::header_len(&stored).map_err(|e| {
                        self.conflict(data_key, &t.name, format!("not an age file: {e}"))
                    })?;
                    if seal::plain_len(header, len) != Some(plain_len) {
                        return Err(self.conflict(
                            data_key,
                            &t.name,
                            format!("its sealed size {len} does not hold {plain_len} bytes"),
                        ));
                    }
                    s.blake3 = stored_digest;
                }
            }
            self.report.adopted += 1;
        } else {
            self.report.bytes += len;
            self.opts.metrics.stored(len);
        }
        Ok(sealed)
    }

    /// Write an inventory object that must not exist yet; one that exists is fine only if
    /// `same` says it says the same (an earlier run was killed right after writing it).
    fn put_entry<T: Serialize + for<'de> serde::Deserialize<'de>>(
        &self,
        key: &str,
        value: &T,
        file: &str,
        same: impl Fn(&T, &T) -> bool,
    ) -> Result<(), PushError> {
        let json = serde_json::to_vec_pretty(value)
            .map_err(|e| StoreError::Setup(format!("cannot encode {key}: {e}")))?;
        if self.repo.put_new(key, Bytes::from(json))? {
            return Ok(());
        }
        let stored = self.repo.get(key, MAX_FILE_RECORD)?;
        match serde_json::from_slice::<T>(&stored) {
            Ok(v) if same(&v, value) => Ok(()),
            _ => Err(self.conflict(key, file, "it holds another entry".into())),
        }
    }

    /// Write the file record of a finished file.
    fn seal(&mut self, t: &mut Tracked) -> Result<(), PushError> {
        let Some(a) = self.archive.get(&t.id) else {
            return Ok(());
        };
        let s = t.tracker.summary();
        let record = FileRecord {
            format: FORMAT,
            file_id: t.id.clone(),
            file: t.name.clone(),
            server_id: s.server_id,
            created: s.created,
            size: t.shipped,
            closed: s.closed.clone(),
            segments: a.segments.clone(),
        };
        self.put_entry(&layout::file_record(&t.id), &record, &t.name, |a, b| a == b)?;
        if s.closed.is_none() {
            tracing::warn!(
                "{} was abandoned by the server (no ROTATE or STOP, and a newer file follows): \
                 archived up to its last complete transaction, byte {}",
                t.name,
                t.shipped
            );
        }
        tracing::info!("{} is wholly archived ({} bytes)", t.name, t.shipped);
        self.report.files_sealed += 1;
        t.sealed = true;
        // Nothing more is read of it: memory stays flat however long the push runs.
        self.archive.remove(&t.id);
        Ok(())
    }
}

/// The inventory entry of `[t.shipped, cut)`, from the tracker's summary at `cut`.
fn segment_of(
    t: &Tracked,
    cut: u64,
    digest: String,
    sealed: Option<SealedSegment>,
    read_at: u64,
) -> Segment {
    let s = t.tracker.summary();
    Segment {
        format: FORMAT,
        file_id: t.id.clone(),
        file: t.name.clone(),
        server_id: s.server_id,
        created: s.created,
        start: t.shipped,
        end: cut,
        blake3: digest,
        sealed,
        gtid_before: if t.shipped == 0 {
            s.gtid_before.clone().unwrap_or_default()
        } else {
            t.state_at_shipped.clone()
        },
        gtid_after: s.gtid_after.clone(),
        first_gtid: t.pending.first_gtid,
        last_gtid: if t.pending.transactions > 0 {
            s.last_gtid
        } else {
            None
        },
        first_time: t.pending.first_time,
        last_time: if t.pending.transactions > 0 {
            s.last_time
        } else {
            None
        },
        transactions: t.pending.transactions,
        closed: if cut == s.complete_end {
            s.closed.clone()
        } else {
            None
        },
        read_at: read_at.max(t.last_read_at),
    }
}

/// Read into `buf` from `at` until it is full or the file ends; returns the bytes read.
fn read_at_most(file: &File, at: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Bytes `[start, end)` of a server file as archived (the in-use flag cleared).
fn read_segment(file: &File, path: &Path, start: u64, end: u64) -> Result<Vec<u8>, PushError> {
    let mut bytes = vec![0u8; (end - start) as usize];
    let n = read_at_most(file, start, &mut bytes).map_err(|e| PushError::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    if n != bytes.len() {
        return Err(PushError::Read {
            path: path.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file shrank below byte {end}"),
            ),
        });
    }
    normalize(&mut bytes, start);
    Ok(bytes)
}

/// The archive stores files as a clean shutdown leaves them: the FORMAT_DESCRIPTION's
/// "in use" flag, which the server clears in place when it closes a file, is stored cleared
/// (its CRC32 is computed without it), so a segment stored while the file was open is the
/// same bytes as the closed file has.
pub fn normalize(bytes: &mut [u8], start: u64) {
    let flag_at = MAGIC.len() as u64 + FLAGS_OFFSET as u64;
    if start <= flag_at && flag_at < start + bytes.len() as u64 {
        let i = (flag_at - start) as usize;
        bytes[i] &= !(LOG_EVENT_BINLOG_IN_USE_F as u8);
    }
}

/// Where the file's header events end (after FORMAT_DESCRIPTION and GTID_LIST), if `head`
/// holds them yet.
fn header_events_end(name: &str, head: &[u8]) -> Result<Option<u64>, BinlogError> {
    let mut reader = EventReader::new(name);
    let mut events = Vec::new();
    reader.feed(head, &mut events)?;
    for ev in &events {
        if matches!(ev.kind, crate::binlog::EventKind::GtidList(_)) {
            return Ok(Some(ev.offset + u64::from(ev.header.event_size)));
        }
    }
    Ok(None)
}
