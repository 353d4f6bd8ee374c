//! Planning a point-in-time restore: which full backup, which archived binlog files, and
//! whether the target can be reached at all. Pure logic over the archive's inventory and the
//! backups' recorded positions; tested without I/O.
//!
//! Semantics (format-spec/repository.md, "Point-in-time targets"):
//! - a transaction's commit time is the timestamp of its last binlog event, whole seconds;
//! - `--until T` replays the binlog, in its order, up to the first transaction stamped at or
//!   after T (so T must be whole seconds);
//! - `--until-gtid G` replays up to and including the transaction G.

use serde::Serialize;

use super::catalog::{Archive, ArchivedFile};
use crate::binlog::{Closed, Gtid, GtidState};

/// A target of a point-in-time restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Seconds since the epoch (whole seconds).
    Time(u64),
    Gtid(Gtid),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Time(t) => write!(f, "{}", super::inventory::rfc3339(*t)),
            Target::Gtid(g) => write!(f, "GTID {g}"),
        }
    }
}

/// A full backup that can start a point-in-time restore: its recorded binlog position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub id: String,
    /// When the backup's binlog position was recorded, milliseconds since the epoch.
    pub end_ms: u64,
    pub file: String,
    pub position: u64,
    pub gtid: GtidState,
}

/// What can be recovered: from the oldest backup's end to the last archived transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Window {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_backup: Option<String>,
    /// Seconds since the epoch (rounded up: the earliest whole-second target).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_time: Option<u64>,
    pub from_gtid: GtidState,
    /// The latest time target that can be reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_time: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_gtid: Option<Gtid>,
    pub to_state: GtidState,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = |x: Option<u64>| {
            x.map(super::inventory::rfc3339)
                .unwrap_or_else(|| "?".into())
        };
        match &self.from_backup {
            None => write!(
                f,
                "nothing is recoverable (no full backup with a binlog position)"
            ),
            Some(b) => write!(
                f,
                "recoverable from {} (backup {b}, GTID {}) to {} (GTID {})",
                t(self.from_time),
                self.from_gtid,
                t(self.to_time),
                self.to_gtid
                    .map(|g| g.to_string())
                    .unwrap_or_else(|| self.to_state.to_string())
            ),
        }
    }
}

/// One file to fetch and replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedFile {
    pub file_id: String,
    pub file: String,
    /// The archived bytes to fetch: `[0, size)`.
    pub size: u64,
    /// In the first file: the backup's recorded position, when the archive holds the very
    /// file the backup names (a backup of the primary). `None`: the whole file (later files),
    /// or, in the first file, every transaction the backup's GTID state does not include (a
    /// backup taken on a replica records the replica's own file and position).
    pub from: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub backup: String,
    pub start_gtid: GtidState,
    pub files: Vec<PlannedFile>,
    pub window: Window,
}

/// Why a target cannot be reached; the message names what is missing and the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub window: Box<Window>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; {}", self.reason, self.window)
    }
}

/// The archived file a backup's position lies in, and the position if the archive has the
/// very file the backup names. Else (a backup taken on a replica, whose file and position are
/// the replica's own) the latest file whose GTID range holds the backup's GTID state.
fn file_of<'a>(archive: &'a Archive, base: &Base) -> Option<(&'a ArchivedFile, Option<u64>)> {
    let holds = |f: &&ArchivedFile| {
        f.problems.is_empty()
            && f.gtid_before().is_some_and(|g| g.is_within(&base.gtid))
            && f.gtid_after().is_some_and(|a| base.gtid_in(a))
    };
    let by_name = archive
        .files
        .iter()
        .filter(holds)
        .filter(|f| f.file == base.file && f.end() >= base.position)
        .filter(|f| u64::from(f.created) * 1000 <= base.end_ms + 1000)
        .max_by_key(|f| f.created);
    if let Some(f) = by_name {
        return Some((f, Some(base.position)));
    }
    archive
        .files
        .iter()
        .filter(holds)
        .filter(|f| !base.gtid.is_empty() || f.gtid_before().is_some_and(GtidState::is_empty))
        .max_by_key(|f| f.created)
        .map(|f| (f, None))
}

impl Base {
    /// Whether this backup's state is reached within `after`: every domain of the backup's
    /// state, at its seq or beyond. (Checking only the domains the file knows let a file
    /// without any GTID, such as the first binlog of the mariadb image's set-up server, "hold"
    /// every state: a replica's backup naming a file of the same name was then placed in it.)
    fn gtid_in(&self, after: &GtidState) -> bool {
        self.gtid
            .iter()
            .all(|b| after.get(b.domain).is_some_and(|a| b.seq <= a.seq))
    }
}

/// Whether `next` can follow `prev`: another file, created no earlier, whose GTID_LIST is
/// `prev`'s final state.
pub fn continues(next: &ArchivedFile, prev: &ArchivedFile) -> bool {
    next.file_id != prev.file_id
        && next.created >= prev.created
        && next
            .gtid_before()
            .zip(prev.gtid_after())
            .is_some_and(|(b, a)| b.same_seqs(a))
}

/// The file that continues `f` in the archive: its GTID_LIST is `f`'s final state.
fn successor<'a>(archive: &'a Archive, f: &ArchivedFile) -> Option<&'a ArchivedFile> {
    f.closed.as_ref()?;
    let next_name = match &f.closed {
        Some(Closed::Rotate { next_file }) => Some(next_file.as_str()),
        _ => None,
    };
    archive
        .files
        .iter()
        .filter(|g| continues(g, f))
        .min_by_key(|g| {
            (
                Some(g.file.as_str()) != next_name,
                g.server_id != f.server_id,
                g.created,
            )
        })
}

/// The files from `base`'s position on, following the GTID chain while `more` says the
/// target lies beyond the file; the chain's end and why it ended.
fn chain<'a>(
    archive: &'a Archive,
    first: &'a ArchivedFile,
    mut more: impl FnMut(&ArchivedFile) -> bool,
) -> (Vec<&'a ArchivedFile>, Option<String>) {
    let mut files = vec![first];
    let mut cur = first;
    loop {
        if !cur.problems.is_empty() {
            return (files, Some(format!("{}: {}", cur.file, cur.problems[0])));
        }
        if !more(cur) {
            return (files, None);
        }
        if cur.closed.is_none() && !cur.sealed {
            // The active file: nothing follows it yet.
            return (files, None);
        }
        match successor(archive, cur) {
            Some(n) if !files.iter().any(|f| f.file_id == n.file_id) => {
                files.push(n);
                cur = n;
            }
            _ => {
                return (
                    files,
                    Some(format!(
                        "no archived binlog follows {} ({}, GTID state {}): the archive has a gap there",
                        cur.file,
                        cur.file_id,
                        cur.gtid_after().map(|g| g.to_string()).unwrap_or_default()
                    )),
                )
            }
        }
    }
}

/// The latest target the chain reaches: its last transaction, or for an open last file the
/// time it was last read (every transaction committed before then is archived).
fn reach(files: &[&ArchivedFile]) -> (Option<u64>, Option<Gtid>, GtidState) {
    let last_time = files
        .iter()
        .rev()
        .find_map(|f| f.last_time())
        .map(u64::from);
    let last = files.last();
    let open_read = last
        .filter(|f| f.closed.is_none() && !f.sealed)
        .and_then(|f| f.read_at());
    let to_time = match (last_time, open_read) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let to_gtid = files.iter().rev().find_map(|f| f.last_gtid());
    let state = last
        .and_then(|f| f.gtid_after().cloned())
        .unwrap_or_default();
    (to_time, to_gtid, state)
}

/// The window of the whole archive: from the oldest usable backup to the end of its chain.
pub fn window(archive: &Archive, bases: &[Base]) -> Window {
    let mut w = Window::default();
    let mut sorted: Vec<&Base> = bases.iter().collect();
    sorted.sort_by_key(|b| b.end_ms);
    for b in sorted {
        let Some((first, _)) = file_of(archive, b) else {
            continue;
        };
        let (files, _) = chain(archive, first, |_| true);
        let (to_time, to_gtid, to_state) = reach(&files);
        w = Window {
            from_backup: Some(b.id.clone()),
            from_time: Some(b.end_ms.div_ceil(1000)),
            from_gtid: b.gtid.clone(),
            to_time,
            to_gtid,
            to_state,
        };
        break;
    }
    w
}

/// Whether `base` comes before the target: it holds nothing the target excludes.
fn base_before(base: &Base, target: Target) -> bool {
    match target {
        Target::Time(t) => base.end_ms < t * 1000,
        Target::Gtid(g) => base.gtid.get(g.domain).is_none_or(|b| b.seq <= g.seq),
    }
}

/// Whether a file's transactions may reach past the target (so the chain must go on).
fn before_target(f: &ArchivedFile, target: Target) -> bool {
    match target {
        Target::Time(t) => f.last_time().is_none_or(|l| u64::from(l) < t),
        Target::Gtid(g) => f
            .gtid_after()
            .is_none_or(|a| a.get(g.domain).is_none_or(|x| x.seq < g.seq)),
    }
}

/// Plan a restore to `target`. `chosen`: the backup the user named, else the newest that
/// ends before the target. Nothing is fetched or written by planning.
pub fn plan(
    archive: &Archive,
    bases: &[Base],
    target: Target,
    chosen: Option<&str>,
) -> Result<Plan, Box<Refusal>> {
    let window = window(archive, bases);
    let refuse = |reason: String| {
        Box::new(Refusal {
            reason,
            window: Box::new(window.clone()),
        })
    };
    let base = match chosen {
        Some(id) => {
            let b = bases.iter().find(|b| b.id == id).ok_or_else(|| {
                refuse(format!(
                    "backup {id} has no recorded binlog position (it was not taken with binlogs on, or predates position capture)"
                ))
            })?;
            if !base_before(b, target) {
                return Err(refuse(format!("{target} is before the end of backup {id}")));
            }
            b
        }
        None => bases
            .iter()
            .filter(|b| base_before(b, target))
            .max_by_key(|b| b.end_ms)
            .ok_or_else(|| {
                refuse(format!(
                    "{target} is before the end of every full backup with a binlog position"
                ))
            })?,
    };
    let (first, position) = file_of(archive, base).ok_or_else(|| {
        refuse(format!(
            "backup {}'s binlog position {}:{} (GTID {}) is not in the archive",
            base.id, base.file, base.position, base.gtid
        ))
    })?;
    let (files, broken) = chain(archive, first, |f| before_target(f, target));
    let (to_time, to_gtid, to_state) = reach(&files);
    let reached = match target {
        Target::Time(t) => to_time.is_some_and(|e| t <= e),
        Target::Gtid(g) => {
            base.gtid.get(g.domain).is_some_and(|b| b.seq == g.seq)
                || to_state.get(g.domain).is_some_and(|x| x.seq >= g.seq)
        }
    };
    if !reached {
        let why = broken.unwrap_or_else(|| {
            format!(
                "{target} is after the last archived transaction ({}, GTID {})",
                to_time
                    .map(super::inventory::rfc3339)
                    .unwrap_or_else(|| "none".into()),
                to_gtid.map(|g| g.to_string()).unwrap_or_default()
            )
        });
        return Err(refuse(why));
    }
    Ok(Plan {
        backup: base.id.clone(),
        start_gtid: base.gtid.clone(),
        files: files
            .iter()
            .enumerate()
            .map(|(i, f)| PlannedFile {
                file_id: f.file_id.clone(),
                file: f.file.clone(),
                size: f.end(),
                from: if i == 0 { position } else { None },
            })
            .collect(),
        window,
    })
}

/// Every archived file a backup needs to roll forward to the present: the file of its
/// position and the chain that continues it.
pub fn chain_from<'a>(archive: &'a Archive, base: &Base) -> Vec<&'a ArchivedFile> {
    match file_of(archive, base) {
        Some((first, _)) => chain(archive, first, |_| true).0,
        None => Vec::new(),
    }
}

/// Parse a `--until` time: RFC 3339 to the second (`2026-12-06T17:59:00Z`,
/// `2026-12-06T18:59:00+01:00`; no offset means UTC; a space may replace the `T`). Fractions
/// of a second are refused: the binlog records whole seconds, so a fraction could not be
/// honoured exactly.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let t = s.trim().replacen(' ', "T", 1);
    let has_offset = t.ends_with('Z')
        || t.ends_with('z')
        || t.get(19..)
            .is_some_and(|rest| rest.contains('+') || rest.contains('-'));
    let full = if has_offset {
        t.clone()
    } else {
        format!("{t}Z")
    };
    let dt = time::OffsetDateTime::parse(&full, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("'{s}' is not an RFC 3339 time like 2026-12-06T17:59:00Z ({e})"))?;
    if dt.nanosecond() != 0 {
        return Err(format!(
            "'{s}' has a fraction of a second: the binlog records whole seconds, give the time to the second"
        ));
    }
    u64::try_from(dt.unix_timestamp()).map_err(|_| format!("'{s}' is before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::binlogs::inventory::{Segment, FORMAT};

    fn st(s: &str) -> GtidState {
        s.parse().unwrap()
    }

    /// A finished (or growing) file of server 1 holding transactions `first..=last` of domain
    /// 0, stamped `t0 + seq`.
    fn file(
        name: &str,
        created: u32,
        first: u64,
        last: u64,
        closed: Option<Closed>,
    ) -> ArchivedFile {
        let g = |seq: u64| Gtid {
            domain: 0,
            server: 1,
            seq,
        };
        let before = if first > 1 {
            st(&format!("0-1-{}", first - 1))
        } else {
            GtidState::new()
        };
        let after = st(&format!("0-1-{last}"));
        let n = last + 1 - first;
        let seg = Segment {
            format: FORMAT,
            file_id: format!("{created}-{name}"),
            file: name.into(),
            server_id: 1,
            created,
            start: 0,
            end: 1000,
            blake3: "0".repeat(64),
            sealed: None,
            gtid_before: before,
            gtid_after: after,
            first_gtid: (n > 0).then(|| g(first)),
            last_gtid: (n > 0).then(|| g(last)),
            first_time: (n > 0).then(|| 1000 + first as u32),
            last_time: (n > 0).then(|| 1000 + last as u32),
            transactions: n,
            closed: closed.clone(),
            read_at: 1000 + last + 1,
        };
        ArchivedFile {
            file_id: seg.file_id.clone(),
            file: name.into(),
            server_id: 1,
            created,
            segments: vec![seg],
            closed: closed.clone(),
            sealed: closed.is_some(),
            unindexed: vec![],
            problems: vec![],
            stored_bytes: 1000,
        }
    }

    fn rot(next: &str) -> Option<Closed> {
        Some(Closed::Rotate {
            next_file: next.into(),
        })
    }

    fn archive() -> Archive {
        Archive {
            files: vec![
                file("b.1", 1000, 1, 10, rot("b.2")),
                file("b.2", 1010, 11, 20, rot("b.3")),
                file("b.3", 1020, 21, 30, None),
            ],
        }
    }

    fn base(id: &str, file: &str, pos: u64, seq: u64) -> Base {
        Base {
            id: id.into(),
            end_ms: (1000 + seq) * 1000 + 500,
            file: file.into(),
            position: pos,
            gtid: st(&format!("0-1-{seq}")),
        }
    }

    fn gtid(seq: u64) -> Target {
        Target::Gtid(Gtid {
            domain: 0,
            server: 1,
            seq,
        })
    }

    #[test]
    fn newest_backup_before_the_target_and_the_files_after_it() {
        let bases = [base("A", "b.1", 500, 5), base("B", "b.2", 600, 15)];
        let p = plan(&archive(), &bases, gtid(25), None).unwrap();
        assert_eq!(p.backup, "B");
        let names: Vec<&str> = p.files.iter().map(|f| f.file.as_str()).collect();
        assert_eq!(names, ["b.2", "b.3"]);
        assert_eq!(p.files[0].from, Some(600));
        assert_eq!(p.files[1].from, None);
        // A target before B's end: A, and the chain stops at the target's file.
        let p = plan(&archive(), &bases, gtid(12), None).unwrap();
        assert_eq!(p.backup, "A");
        assert_eq!(p.files.len(), 2);
        // By time: B ended at 1015.5 s.
        assert_eq!(
            plan(&archive(), &bases, Target::Time(1016), None)
                .unwrap()
                .backup,
            "B"
        );
        assert_eq!(
            plan(&archive(), &bases, Target::Time(1015), None)
                .unwrap()
                .backup,
            "A"
        );
    }

    #[test]
    fn a_replica_backup_is_not_placed_in_a_gtid_less_file_of_the_same_name() {
        // The primary's first file has no transaction and no GTID state at all (written by a
        // set-up server); the replica's backup names its own file of that name.
        let mut empty = file("b.1", 990, 1, 0, rot("b.2"));
        empty.segments[0].gtid_after = GtidState::new();
        let mut a = archive();
        for f in &mut a.files {
            f.file = format!("n.{}", &f.file[2..]);
        }
        a.files.insert(0, empty);
        let bases = [base("R", "b.1", 330, 6)];
        let p = plan(&a, &bases, gtid(15), None).unwrap();
        let names: Vec<&str> = p.files.iter().map(|f| f.file.as_str()).collect();
        assert_eq!(names, ["n.1", "n.2"]);
        assert_eq!(
            p.files[0].from, None,
            "placed by the GTID state, not by the name"
        );
    }

    #[test]
    fn refusals_name_the_window() {
        let bases = [base("A", "b.1", 500, 5)];
        let e = plan(&archive(), &bases, gtid(31), None).unwrap_err();
        assert!(
            e.reason.contains("after the last archived transaction"),
            "{e}"
        );
        assert!(e.to_string().contains("recoverable from"), "{e}");
        assert_eq!(e.window.to_gtid.map(|g| g.seq), Some(30));
        let e = plan(&archive(), &bases, gtid(3), None).unwrap_err();
        assert!(e.reason.contains("before the end"), "{e}");
        // The growing last file was read at 1031: a time up to then is reachable.
        assert!(plan(&archive(), &bases, Target::Time(1031), None).is_ok());
        assert!(plan(&archive(), &bases, Target::Time(1032), None).is_err());
        let e = plan(&archive(), &bases, gtid(25), Some("X")).unwrap_err();
        assert!(e.reason.contains("no recorded binlog position"), "{e}");
    }

    #[test]
    fn a_missing_file_is_a_gap() {
        let mut a = archive();
        a.files.remove(1);
        let bases = [base("A", "b.1", 500, 5)];
        let e = plan(&a, &bases, gtid(25), None).unwrap_err();
        assert!(e.reason.contains("gap") && e.reason.contains("b.1"), "{e}");
        // Up to the gap is still reachable.
        assert!(plan(&a, &bases, gtid(9), None).is_ok());
        assert_eq!(window(&a, &bases).to_gtid.map(|g| g.seq), Some(10));
    }

    #[test]
    fn a_replica_backup_is_placed_by_its_gtid() {
        // The replica's own file name and position mean nothing in the primary's archive.
        let bases = [base("R", "replica-bin.000007", 1234, 15)];
        let p = plan(&archive(), &bases, gtid(25), None).unwrap();
        assert_eq!(p.files[0].file, "b.2");
        assert_eq!(p.files[0].from, None);
    }

    #[test]
    fn prune_keeps_what_a_kept_backup_needs() {
        let a = archive();
        let kept = [base("B", "b.2", 600, 15)];
        let gone: Vec<&str> = crate::store::binlogs::check::prunable(&a, &kept)
            .iter()
            .map(|f| f.file.as_str())
            .collect();
        assert_eq!(gone, ["b.1"]);
        assert!(crate::store::binlogs::check::prunable(&a, &[]).is_empty());
    }

    #[test]
    fn until_times() {
        assert_eq!(parse_time("1970-01-01T00:01:00Z"), Ok(60));
        assert_eq!(parse_time("1970-01-01 00:01:00"), Ok(60));
        assert_eq!(parse_time("1970-01-01T01:01:00+01:00"), Ok(60));
        assert!(parse_time("1970-01-01T00:01:00.5Z")
            .unwrap_err()
            .contains("whole seconds"));
        assert!(parse_time("yesterday").is_err());
    }
}
