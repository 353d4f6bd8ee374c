//! The binlog reader (`xbagent::binlog`) against real MariaDB binlogs, cross-checked with
//! `mariadb-binlog`:
//!
//! 1. a binlogging fixture server (`Server::start_binlog`, files of 16 KiB) gets InnoDB,
//!    MyISAM and Aria rows, DDL, a multi-statement transaction, a ROLLBACK that leaves
//!    non-transactional changes, an XA transaction, a second GTID domain, `FLUSH BINARY
//!    LOGS` and a restart (STOP);
//! 2. every file is scanned whole, and what the reader says must match `mariadb-binlog
//!    FILE`: the same GTIDs in order, transaction ends at event ends it shows, the GTID
//!    list, ROTATE/STOP, and the active file's `gtid_after` equals `@@gtid_binlog_pos`;
//! 3. a copy cut inside an event: `scan` names the file and the event's offset, and
//!    `scan_prefix` ends at the last whole transaction before the cut;
//! 4. a copy with one byte flipped inside a row event: a CRC error at that event.
//!
//! A missing MariaDB tool fails the test; it never skips.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use xbagent::binlog::{
    scan, scan_prefix, BinlogError, Closed, Event, EventReader, FileSummary, Gtid, GtidState,
    Transaction,
};

use crate::support::mariadb::{require_mariadb, Server};
use crate::support::{child_path, require_tools, short_tempdir};

/// What `mariadb-binlog FILE` shows of one file.
#[derive(Debug, Default)]
struct Shown {
    gtids: Vec<Gtid>,
    /// Offsets of event starts (`# at N`) and ends (`end_log_pos N`).
    starts: BTreeSet<u64>,
    ends: BTreeSet<u64>,
    gtid_list: Option<GtidState>,
    rotate_to: Option<String>,
    stop: bool,
}

fn mariadb_binlog(file: &Path) -> Shown {
    let out = Command::new("mariadb-binlog")
        .arg("--no-defaults")
        .arg(file)
        .env("PATH", child_path())
        .output()
        .expect("run mariadb-binlog");
    assert!(
        out.status.success(),
        "mariadb-binlog {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_shown(&String::from_utf8_lossy(&out.stdout))
}

fn word_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(key)? + key.len();
    line[at..].split_whitespace().next()
}

fn parse_shown(text: &str) -> Shown {
    let mut shown = Shown::default();
    let mut list: Option<String> = None;
    for line in text.lines() {
        if let Some(acc) = &mut list {
            // The GTID list spans lines, one GTID a line, up to its `]`.
            acc.push_str(line.trim_start_matches('#').trim());
            if line.contains(']') {
                let inner = acc.trim_end_matches(']').to_string();
                shown.gtid_list = Some(inner.parse().expect("GTID list"));
                list = None;
            }
            continue;
        }
        if let Some(n) = line.strip_prefix("# at ") {
            shown.starts.insert(n.trim().parse().expect("# at N"));
        }
        if !line.starts_with('#') {
            continue;
        }
        if let Some(n) = word_after(line, "end_log_pos ") {
            shown.ends.insert(n.parse().expect("end_log_pos N"));
        }
        if let Some(g) = word_after(line, "\tGTID ") {
            shown.gtids.push(g.parse().expect("GTID D-S-N"));
        }
        if let Some(f) = word_after(line, "Rotate to ") {
            shown.rotate_to = Some(f.to_string());
        }
        if line.ends_with("\tStop") {
            shown.stop = true;
        }
        if let Some(at) = line.find("Gtid list [") {
            let rest = &line[at + "Gtid list [".len()..];
            if rest.contains(']') {
                shown.gtid_list = Some(rest.trim_end_matches(']').parse().expect("GTID list"));
            } else {
                list = Some(rest.to_string());
            }
        }
    }
    shown
}

/// The workload: every kind of group the reader must follow, over several files.
fn write_workload(sv: &mut Server) {
    sv.sql(
        "CREATE DATABASE pitr;
         CREATE TABLE pitr.inno (id INT PRIMARY KEY, v VARCHAR(600)) ENGINE=InnoDB;
         CREATE TABLE pitr.my (id INT PRIMARY KEY, v VARCHAR(600)) ENGINE=MyISAM;
         CREATE TABLE pitr.aria (id INT PRIMARY KEY, v VARCHAR(600)) ENGINE=Aria;",
    );
    let mut rows = String::new();
    for i in 0..60 {
        rows.push_str(&format!(
            "INSERT INTO pitr.inno VALUES ({i}, REPEAT('i', 500));
             INSERT INTO pitr.my VALUES ({i}, REPEAT('m', 500));
             INSERT INTO pitr.aria VALUES ({i}, REPEAT('a', 500));"
        ));
    }
    sv.sql(&rows);
    sv.sql(
        "BEGIN;
         INSERT INTO pitr.inno VALUES (1000, 'multi');
         UPDATE pitr.inno SET v = 'changed' WHERE id < 5;
         DELETE FROM pitr.inno WHERE id = 7;
         COMMIT;
         BEGIN;
         INSERT INTO pitr.inno VALUES (2000, 'gone');
         INSERT INTO pitr.my VALUES (2000, 'stays');
         ROLLBACK;
         BEGIN;
         INSERT INTO pitr.inno VALUES (2001, 'gone');
         ROLLBACK;
         XA START 'x1';
         INSERT INTO pitr.inno VALUES (3000, 'xa');
         XA END 'x1';
         XA PREPARE 'x1';
         XA COMMIT 'x1';
         ALTER TABLE pitr.inno ADD COLUMN w INT;
         SET SESSION gtid_domain_id = 2;
         INSERT INTO pitr.inno VALUES (4000, 'domain 2', 1);
         SET SESSION gtid_domain_id = 0;",
    );
    sv.sql("FLUSH BINARY LOGS; INSERT INTO pitr.aria VALUES (5000, 'after flush');");
    sv.restart();
    sv.sql("INSERT INTO pitr.inno VALUES (6000, 'after restart', 2); DROP TABLE pitr.aria;");
}

fn binlog_files(datadir: &Path) -> Vec<String> {
    let index = fs::read_to_string(datadir.join("mariadb-bin.index")).expect("binlog index");
    index
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().trim_start_matches("./").to_string())
        .collect()
}

/// Scans one file and checks it against mariadb-binlog; returns the scan.
fn cross_check(path: &Path, name: &str, last: bool) -> (FileSummary, Vec<Transaction>) {
    let bytes = fs::read(path).expect("read binlog");
    let (sum, txs) = scan(name, &bytes).unwrap_or_else(|e| panic!("scan {name}: {e}"));
    let shown = mariadb_binlog(path);
    let ours: Vec<Gtid> = txs.iter().map(|t| t.gtid).collect();
    assert_eq!(ours, shown.gtids, "{name}: GTIDs");
    assert_eq!(sum.first_gtid, shown.gtids.first().copied(), "{name}");
    assert_eq!(sum.last_gtid, shown.gtids.last().copied(), "{name}");
    assert_eq!(sum.transactions, txs.len() as u64);
    assert_eq!(sum.gtid_before, shown.gtid_list, "{name}: GTID list");
    for t in &txs {
        assert!(
            shown.starts.contains(&t.start),
            "{name}: {t:?} starts at no event"
        );
        assert!(
            shown.ends.contains(&t.end),
            "{name}: {t:?} ends at no event end"
        );
        assert!(
            t.commit_time >= sum.created || sum.created == 0,
            "{name}: {t:?}"
        );
    }
    assert!(sum.checksum, "{name}: the fixture writes CRC32");
    assert_eq!(sum.server_id, 1);
    assert!(
        sum.server_version.contains("MariaDB"),
        "{}",
        sum.server_version
    );
    assert_eq!(
        sum.complete_end,
        bytes.len() as u64,
        "{name}: every group is whole"
    );
    let closed = match (&shown.rotate_to, shown.stop) {
        (Some(f), false) => Some(Closed::Rotate {
            next_file: f.clone(),
        }),
        (None, true) => Some(Closed::Stop),
        (None, false) => None,
        _ => panic!("{name}: both ROTATE and STOP"),
    };
    assert_eq!(sum.closed, closed, "{name}: closed by");
    assert_eq!(
        last,
        closed.is_none(),
        "{name}: only the active file is open"
    );
    (sum, txs)
}

#[test]
fn binlog_reader_agrees_with_mariadb_binlog() {
    require_mariadb();
    require_tools(&["mariadb-binlog"], "mariadb-client (mariadb-binlog)");
    let tmp = short_tempdir("blr");
    let mut sv = Server::start_binlog(&tmp.path().join("sv"), 16384);
    write_workload(&mut sv);
    let datadir = sv.datadir();
    let files = binlog_files(&datadir);
    assert!(files.len() >= 5, "expected several files, got {files:?}");
    let mut prev: Option<FileSummary> = None;
    let mut all = Vec::new();
    let mut kinds = BTreeSet::new();
    for (i, name) in files.iter().enumerate() {
        let (sum, txs) = cross_check(&datadir.join(name), name, i + 1 == files.len());
        if let Some(p) = &prev {
            // Each file starts where the one before ended.
            assert_eq!(sum.gtid_before.as_ref(), Some(&p.gtid_after), "{name}");
            if let Some(Closed::Rotate { next_file }) = &p.closed {
                assert_eq!(next_file, name);
            }
        }
        kinds.insert(format!(
            "{:?}",
            sum.closed.as_ref().map(std::mem::discriminant)
        ));
        all.extend(txs);
        prev = Some(sum);
    }
    assert!(
        kinds.len() == 3,
        "ROTATE, STOP and the open file: {kinds:?}"
    );
    let pos: GtidState = sv
        .sql("SELECT @@gtid_binlog_pos")
        .trim()
        .parse()
        .expect("pos");
    assert_eq!(prev.expect("files").gtid_after, pos);
    assert!(pos.get(2).is_some(), "the second domain is in {pos}");
    assert!(all.len() > 180, "{} transactions", all.len());

    let big = files
        .iter()
        .map(|f| (fs::read(datadir.join(f)).expect("read"), f))
        .max_by_key(|(b, _)| b.len())
        .expect("files");
    truncated_copy(&big.0, big.1);
    corrupted_copy(&big.0, big.1);
}

/// Cut inside the last event of the third transaction.
fn truncated_copy(bytes: &[u8], name: &str) {
    let (_, txs) = scan(name, bytes).expect("scan");
    assert!(txs.len() >= 3);
    let cut = (txs[2].end - 3) as usize;
    let err = scan(name, &bytes[..cut]).expect_err("a cut file");
    assert!(matches!(err, BinlogError::Truncated { .. }), "{err:?}");
    let last_event = events(bytes)
        .into_iter()
        .rfind(|e| e.offset < cut as u64)
        .expect("an event before the cut");
    assert_eq!(err.offset(), last_event.offset);
    assert!(
        err.to_string()
            .contains(&format!("binlog {name} at byte {}", last_event.offset)),
        "{err}"
    );
    let (sum, prefix_txs) = scan_prefix(name, &bytes[..cut]).expect("scan_prefix");
    assert_eq!(prefix_txs, txs[..2]);
    assert_eq!(sum.last_gtid, Some(txs[1].gtid));
    assert_eq!(sum.complete_end, txs[1].end);
}

/// One byte flipped in the middle of the first row event.
fn corrupted_copy(bytes: &[u8], name: &str) {
    // WRITE/UPDATE/DELETE_ROWS, v1 (23-25) and v2 (30-32).
    let row = events(bytes)
        .into_iter()
        .find(|e| matches!(e.header.type_code, 23..=25 | 30..=32))
        .expect("a row event");
    let mut bad = bytes.to_vec();
    bad[(row.offset + u64::from(row.header.event_size) / 2) as usize] ^= 0x01;
    let err = scan(name, &bad).expect_err("a corrupted file");
    assert!(matches!(err, BinlogError::Checksum { .. }), "{err:?}");
    assert_eq!(err.offset(), row.offset);
    assert!(err.to_string().contains(&format!(
        "binlog {name} at byte {}: CRC32 mismatch",
        row.offset
    )));
}

fn events(bytes: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    EventReader::new("x").feed(bytes, &mut out).expect("events");
    out
}

#[test]
fn parse_shown_reads_mariadb_binlog_lines() {
    let text = "# at 256\n#231206 19:00:00 server id 1  end_log_pos 298 CRC32 0x1  \tGTID 0-1-5 trans\n\
                #231206 19:00:00 server id 1  end_log_pos 300 CRC32 0x1 \tGtid list [0-1-4,\n# 1-1-2]\n\
                #231206 server id 1  end_log_pos 350 CRC32 0x1 \tRotate to mariadb-bin.000002  pos: 4\n";
    let s = parse_shown(text);
    assert_eq!(s.gtids, ["0-1-5".parse::<Gtid>().unwrap()]);
    assert_eq!(s.gtid_list, Some("0-1-4,1-1-2".parse().unwrap()));
    assert_eq!(s.rotate_to.as_deref(), Some("mariadb-bin.000002"));
    assert_eq!(s.ends, [298, 300, 350].into());
    assert!(s.starts.contains(&256));
    let _ = s;
}
