//! Unit tests over hand-built binlogs: a small encoder writes events the way MariaDB lays
//! them out, and the reader and tracker must read them back, whole and byte by byte.

use super::event::*;
use super::*;

const VERSION: &str = "10.11.6-MariaDB-log";

/// Test-only binlog writer.
pub(crate) struct Enc {
    pub buf: Vec<u8>,
    pub crc: bool,
    pub server_id: u32,
    pub time: u32,
}

impl Enc {
    pub fn new(crc: bool) -> Enc {
        let mut e = Enc {
            buf: MAGIC.to_vec(),
            crc,
            server_id: 1,
            time: 1_700_000_000,
        };
        e.fde();
        e
    }

    /// Appends one event; returns its offset.
    pub fn event(&mut self, type_code: u8, body: &[u8]) -> u64 {
        let start = self.buf.len() as u64;
        let crc_len = if self.crc { 4 } else { 0 };
        let size = (HEADER_LEN + body.len() + crc_len) as u32;
        let h = EventHeader {
            timestamp: self.time,
            type_code,
            server_id: self.server_id,
            event_size: size,
            next_pos: (start as u32).wrapping_add(size),
            flags: 0,
        };
        self.buf.extend_from_slice(&h.encode());
        self.buf.extend_from_slice(body);
        if self.crc {
            let c = crc32fast::hash(&self.buf[start as usize..]);
            self.buf.extend_from_slice(&c.to_le_bytes());
        }
        start
    }

    fn fde(&mut self) {
        let mut b = Vec::new();
        b.extend_from_slice(&4u16.to_le_bytes());
        let mut v = VERSION.as_bytes().to_vec();
        v.resize(50, 0);
        b.extend_from_slice(&v);
        b.extend_from_slice(&self.time.to_le_bytes());
        b.push(19);
        let mut post = vec![0u8; 164];
        post[usize::from(QUERY_EVENT) - 1] = 13;
        b.extend_from_slice(&post);
        b.push(u8::from(self.crc));
        // Without checksums MariaDB still fills the FDE's CRC slot.
        let crc = self.crc;
        self.crc = true;
        self.event(FORMAT_DESCRIPTION_EVENT, &b);
        self.crc = crc;
    }

    pub fn gtid_list(&mut self, gtids: &[Gtid]) -> u64 {
        let mut b = (gtids.len() as u32).to_le_bytes().to_vec();
        for g in gtids {
            b.extend_from_slice(&g.domain.to_le_bytes());
            b.extend_from_slice(&g.server.to_le_bytes());
            b.extend_from_slice(&g.seq.to_le_bytes());
        }
        self.event(GTID_LIST_EVENT, &b)
    }

    pub fn checkpoint(&mut self, name: &str) -> u64 {
        let mut b = (name.len() as u32).to_le_bytes().to_vec();
        b.extend_from_slice(name.as_bytes());
        self.event(BINLOG_CHECKPOINT_EVENT, &b)
    }

    pub fn gtid(&mut self, domain: u32, seq: u64, flags: u8) -> u64 {
        let mut b = seq.to_le_bytes().to_vec();
        b.extend_from_slice(&domain.to_le_bytes());
        b.push(flags);
        if flags & FL_GROUP_COMMIT_ID != 0 {
            b.extend_from_slice(&77u64.to_le_bytes());
        } else {
            b.extend_from_slice(&[0; 6]);
        }
        self.event(GTID_EVENT, &b)
    }

    pub fn query(&mut self, text: &str) -> u64 {
        let mut b = Vec::new();
        b.extend_from_slice(&9u32.to_le_bytes()); // thread id
        b.extend_from_slice(&0u32.to_le_bytes()); // exec time
        b.push(4); // db length
        b.extend_from_slice(&0u16.to_le_bytes()); // error code
        let status = [0u8, 0, 0, 0, 0, 1, 0x20, 0, 0, 0]; // flags2 + sql_mode start
        b.extend_from_slice(&(status.len() as u16).to_le_bytes());
        b.extend_from_slice(&status);
        b.extend_from_slice(b"test\0");
        b.extend_from_slice(text.as_bytes());
        self.event(QUERY_EVENT, &b)
    }

    pub fn xid(&mut self, xid: u64) -> u64 {
        self.event(XID_EVENT, &xid.to_le_bytes())
    }

    pub fn rows(&mut self, len: usize) -> u64 {
        let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
        self.event(30, &body)
    }

    pub fn rotate(&mut self, next: &str) -> u64 {
        let mut b = 4u64.to_le_bytes().to_vec();
        b.extend_from_slice(next.as_bytes());
        self.event(ROTATE_EVENT, &b)
    }

    pub fn stop(&mut self) -> u64 {
        self.event(STOP_EVENT, &[])
    }

    /// A transactional group: GTID, BEGIN, a row event, XID. Returns (start, end).
    pub fn tx(&mut self, domain: u32, seq: u64) -> (u64, u64) {
        let s = self.gtid(domain, seq, 4);
        self.query("BEGIN");
        self.rows(40);
        self.xid(seq * 10);
        (s, self.buf.len() as u64)
    }
}

fn g(domain: u32, server: u32, seq: u64) -> Gtid {
    Gtid {
        domain,
        server,
        seq,
    }
}

fn read_all(file: &[u8], piece: usize) -> (Vec<Event>, Result<(), BinlogError>) {
    let mut r = EventReader::new("f.000001");
    let mut out = Vec::new();
    for c in file.chunks(piece.max(1)) {
        if let Err(e) = r.feed(c, &mut out) {
            return (out, Err(e));
        }
    }
    (out, Ok(()))
}

/// A file with every kind we decode, in the order MariaDB writes them.
fn sample(crc: bool) -> (Vec<u8>, Vec<(u64, u64)>) {
    let mut e = Enc::new(crc);
    e.gtid_list(&[g(0, 1, 10), g(1, 2, 3)]);
    e.checkpoint("f.000001");
    let mut txs = vec![e.tx(0, 11)];
    e.time += 5;
    // DDL: standalone.
    let s = e.gtid(0, 12, FL_STANDALONE);
    e.query("CREATE TABLE t (a int)");
    txs.push((s, e.buf.len() as u64));
    // Non-transactional: BEGIN ... COMMIT, with the group commit id.
    let s = e.gtid(1, 4, FL_GROUP_COMMIT_ID);
    e.query("BEGIN");
    e.event(160, b"\0insert into m values (1)");
    e.rows(10);
    e.query("COMMIT");
    txs.push((s, e.buf.len() as u64));
    e.time += 5;
    // Rolled back non-transactional changes still form a group.
    let s = e.gtid(0, 13, 0);
    e.query("BEGIN");
    e.query("ROLLBACK TO SAVEPOINT a");
    e.rows(10);
    e.query("ROLLBACK");
    txs.push((s, e.buf.len() as u64));
    e.checkpoint("f.000001");
    e.rotate("f.000002");
    (e.buf, txs)
}

#[test]
fn decodes_every_kind_with_and_without_crc() {
    for crc in [true, false] {
        let (file, _) = sample(crc);
        let (events, res) = read_all(&file, file.len());
        res.unwrap();
        let kinds: Vec<&EventKind> = events.iter().map(|e| &e.kind).collect();
        assert_eq!(
            kinds[0],
            &EventKind::FormatDescription {
                binlog_version: 4,
                server_version: VERSION.into(),
                checksum: crc
            }
        );
        assert_eq!(
            kinds[1],
            &EventKind::GtidList("0-1-10,1-2-3".parse().unwrap())
        );
        assert_eq!(
            kinds[2],
            &EventKind::BinlogCheckpoint {
                file: "f.000001".into()
            }
        );
        assert_eq!(
            kinds[3],
            &EventKind::Gtid {
                gtid: g(0, 1, 11),
                standalone: false
            }
        );
        assert_eq!(
            kinds[4],
            &EventKind::Query {
                kind: QueryKind::Begin
            }
        );
        assert_eq!(kinds[5], &EventKind::Other);
        assert_eq!(kinds[6], &EventKind::Xid { xid: 110 });
        assert_eq!(
            kinds[7],
            &EventKind::Gtid {
                gtid: g(0, 1, 12),
                standalone: true
            }
        );
        assert_eq!(
            kinds[8],
            &EventKind::Query {
                kind: QueryKind::Other
            }
        );
        assert_eq!(
            kinds[13],
            &EventKind::Query {
                kind: QueryKind::Commit
            }
        );
        assert_eq!(
            kinds[16],
            &EventKind::Query {
                kind: QueryKind::Other
            }
        );
        assert_eq!(
            kinds[18],
            &EventKind::Query {
                kind: QueryKind::Rollback
            }
        );
        assert_eq!(
            kinds.last().copied(),
            Some(&EventKind::Rotate {
                next_file: "f.000002".into(),
                position: 4
            })
        );
    }
}

#[test]
fn summary_of_a_closed_file() {
    let (file, txs) = sample(true);
    let (s, got) = scan("f.000001", &file).unwrap();
    let want: Vec<(u64, u64)> = got.iter().map(|t| (t.start, t.end)).collect();
    assert_eq!(want, txs);
    assert_eq!(
        got.iter().map(|t| t.gtid.to_string()).collect::<Vec<_>>(),
        ["0-1-11", "0-1-12", "1-1-4", "0-1-13"]
    );
    assert_eq!(got[0].commit_time, 1_700_000_000);
    assert_eq!(got[3].commit_time, 1_700_000_010);
    assert_eq!(s.file, "f.000001");
    assert_eq!(s.server_id, 1);
    assert_eq!(s.created, 1_700_000_000);
    assert_eq!(s.server_version, VERSION);
    assert!(s.checksum);
    assert_eq!(s.gtid_before, Some("0-1-10,1-2-3".parse().unwrap()));
    assert_eq!(s.gtid_after, "0-1-13,1-1-4".parse().unwrap());
    assert_eq!(s.first_gtid, Some(g(0, 1, 11)));
    assert_eq!(s.last_gtid, Some(g(0, 1, 13)));
    assert_eq!(s.first_time, Some(1_700_000_000));
    assert_eq!(s.last_time, Some(1_700_000_010));
    assert_eq!(s.transactions, 4);
    assert_eq!(s.complete_end, file.len() as u64);
    assert_eq!(
        s.closed,
        Some(Closed::Rotate {
            next_file: "f.000002".into()
        })
    );
    let json = serde_json::to_string(&s).unwrap();
    assert!(
        json.contains(r#""closed":{"by":"rotate","next_file":"f.000002"}"#),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<FileSummary>(&json).unwrap(), s);
}

#[test]
fn stop_closes_and_a_crashed_file_is_fine_at_a_boundary() {
    let mut e = Enc::new(true);
    e.gtid_list(&[]);
    e.tx(0, 1);
    let crashed = e.buf.clone();
    e.stop();
    let (s, _) = scan("f", &e.buf).unwrap();
    assert_eq!(s.closed, Some(Closed::Stop));
    assert_eq!(s.complete_end, e.buf.len() as u64);
    let (s, _) = scan("f", &crashed).unwrap();
    assert_eq!(s.closed, None);
    assert_eq!(s.complete_end, crashed.len() as u64);
    assert_eq!(s.gtid_before, Some(GtidState::new()));
    assert_eq!(s.gtid_after, "0-1-1".parse().unwrap());
}

#[test]
fn byte_by_byte_equals_whole() {
    for crc in [true, false] {
        let (file, _) = sample(crc);
        let whole = read_all(&file, file.len()).0;
        let events = whole.clone();
        // Events tile the file.
        let mut at = 4;
        for e in &events {
            assert_eq!(e.offset, at);
            at = e.end();
        }
        assert_eq!(at, file.len() as u64);
        for piece in [1, 2, 3, 7, 19, 23, 64] {
            assert_eq!(read_all(&file, piece).0, whole, "piece {piece}");
        }
    }
}

#[test]
fn every_prefix_summarises_the_transactions_before_it() {
    let (file, txs) = sample(true);
    let mut full = Vec::new();
    for cut in 0..=file.len() {
        let (s, got) = scan_prefix("f", &file[..cut]).unwrap();
        let wholly: Vec<_> = txs.iter().filter(|t| t.1 <= cut as u64).collect();
        assert_eq!(got.len(), wholly.len(), "cut {cut}");
        assert_eq!(s.transactions, wholly.len() as u64);
        assert!(s.complete_end <= cut as u64);
        // complete_end is never inside a transaction.
        assert!(txs
            .iter()
            .all(|t| s.complete_end <= t.0 || s.complete_end >= t.1));
        if let Some(last) = wholly.last() {
            assert!(s.complete_end >= last.1);
        }
        let at_boundary = scan("f", &file[..cut]);
        if cut == file.len() {
            full = at_boundary.unwrap().1;
        }
    }
    assert_eq!(full.len(), txs.len());
}

#[test]
fn a_file_cut_inside_an_event_is_truncated_for_scan_only() {
    let mut e = Enc::new(true);
    e.gtid_list(&[]);
    e.tx(0, 1);
    let at = e.gtid(0, 2, 0);
    e.query("BEGIN");
    let cut = &e.buf[..at as usize + 25];
    let err = scan("mariadb-bin.000003", cut).unwrap_err();
    assert!(
        matches!(
            err,
            BinlogError::Truncated {
                have: 25,
                need: 42,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.offset(), at);
    assert!(err
        .to_string()
        .contains(&format!("binlog mariadb-bin.000003 at byte {at}")));
    let (s, txs) = scan_prefix("mariadb-bin.000003", cut).unwrap();
    assert_eq!(txs.len(), 1);
    assert_eq!(s.complete_end, at);
    // Cut inside a header.
    let err = scan("f", &e.buf[..at as usize + 7]).unwrap_err();
    assert!(
        matches!(
            err,
            BinlogError::Truncated {
                have: 7,
                need: 19,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.offset(), at);
    // Cut inside a group but at an event boundary: scan is fine, complete_end stays put.
    let (s, _) = scan("f", &e.buf).unwrap();
    assert_eq!(s.complete_end, at);
    assert_eq!(s.last_gtid, Some(g(0, 1, 1)));
    // A file shorter than its magic.
    let err = scan("f", &MAGIC[..2]).unwrap_err();
    assert!(
        matches!(err, BinlogError::Truncated { offset: 0, .. }),
        "{err:?}"
    );
    assert!(scan("f", &[]).is_err());
    assert_eq!(scan_prefix("f", &[]).unwrap().0.complete_end, 0);
}

fn err_of(file: &[u8]) -> BinlogError {
    let (_, res) = read_all(file, file.len());
    let whole = match res {
        Err(e) => e,
        Ok(()) => match scan("f.000001", file) {
            Err(e) => e,
            Ok(_) => panic!("no error"),
        },
    };
    // The same error byte by byte.
    let by_byte = match read_all(file, 1).1 {
        Err(e) => e,
        Ok(()) => scan("f.000001", file).unwrap_err(),
    };
    assert_eq!(whole, by_byte);
    assert!(
        whole
            .to_string()
            .starts_with(&format!("binlog f.000001 at byte {}: ", whole.offset())),
        "{whole}"
    );
    whole
}

#[test]
fn bad_magic() {
    let e = err_of(b"\xfebix....");
    assert!(
        matches!(e, BinlogError::BadMagic { offset: 0, .. }),
        "{e:?}"
    );
}

#[test]
fn bad_headers() {
    let mut e = Enc::new(true);
    let at = e.gtid_list(&[]);
    let mut f = e.buf.clone();
    f[at as usize + 9..at as usize + 13].copy_from_slice(&18u32.to_le_bytes());
    let err = err_of(&f);
    assert!(
        matches!(err, BinlogError::BadHeader { .. }) && err.offset() == at,
        "{err:?}"
    );
    let mut f = e.buf.clone();
    f[at as usize + 13] ^= 1;
    let err = err_of(&f);
    assert!(err.to_string().contains("next position"), "{err}");
    assert_eq!(err.offset(), at);
    // With CRCs on, an event must have room for one.
    let mut e = Enc::new(true);
    e.crc = false;
    let at = e.stop();
    let err = err_of(&e.buf);
    assert!(
        matches!(err, BinlogError::BadHeader { .. }) && err.offset() == at,
        "{err:?}"
    );
}

#[test]
fn crc_mismatch_names_the_event() {
    for flip_in in ["rows", "fde", "crc"] {
        let mut e = Enc::new(true);
        e.gtid_list(&[]);
        let gt = e.gtid(0, 1, 0);
        e.query("BEGIN");
        let rows = e.rows(100);
        e.xid(1);
        let (at, byte) = match flip_in {
            "rows" => (rows, rows + 50),
            "fde" => (4, 4 + 30),
            _ => (gt, e.buf.len() as u64 - 1 - 31 - 23 - 23),
        };
        let _ = gt;
        let mut f = e.buf.clone();
        f[byte as usize] ^= 0x20;
        let err = err_of(&f);
        assert!(
            matches!(err, BinlogError::Checksum { .. }),
            "{flip_in}: {err:?}"
        );
        assert!(err.offset() <= byte);
        if flip_in != "crc" {
            assert_eq!(err.offset(), at, "{flip_in}");
        }
        assert!(
            err.to_string().contains("CRC32 mismatch (stored 0x"),
            "{err}"
        );
    }
}

#[test]
fn malformed_bodies() {
    let mut e = Enc::new(true);
    let at = e.event(GTID_EVENT, &[1, 2, 3]);
    let err = err_of(&e.buf);
    assert!(
        matches!(err, BinlogError::Malformed { .. }) && err.offset() == at,
        "{err:?}"
    );
    let mut e = Enc::new(false);
    let at = e.event(GTID_LIST_EVENT, &5u32.to_le_bytes());
    assert_eq!(err_of(&e.buf).offset(), at);
    let mut e = Enc::new(true);
    e.gtid_list(&[]);
    let at = e.rotate("../etc/passwd");
    let err = err_of(&e.buf);
    assert!(err.to_string().contains("not a plain file name"), "{err}");
    assert_eq!(err.offset(), at);
    // A QUERY whose status variables overrun it.
    let mut e = Enc::new(true);
    e.gtid(0, 1, 1);
    let mut body = vec![0u8; 13];
    body[11] = 200;
    let at = e.event(QUERY_EVENT, &body);
    assert_eq!(err_of(&e.buf).offset(), at);
}

#[test]
fn kept_bodies_are_capped() {
    let mut e = Enc::new(true);
    let at = e.event(GTID_LIST_EVENT, &vec![0u8; MAX_KEPT_BODY + 1]);
    let err = err_of(&e.buf);
    assert!(
        matches!(err, BinlogError::TooLarge { .. }) && err.offset() == at,
        "{err:?}"
    );
    // Fed only the header: refused before its body arrives.
    let mut r = EventReader::new("f.000001");
    assert!(r.feed(&e.buf[..at as usize + 19], &mut Vec::new()).is_err());
    // Large other events and long statements are fine and not kept.
    let mut e = Enc::new(true);
    e.gtid(0, 1, 0);
    e.query("BEGIN");
    e.rows(300_000);
    e.query(&format!("INSERT INTO t VALUES ('{}')", "x".repeat(200_000)));
    e.xid(1);
    let (s, _) = scan("f", &e.buf).unwrap();
    assert_eq!(s.transactions, 1);
}

#[test]
fn encrypted_binlogs_are_refused() {
    let mut e = Enc::new(true);
    let at = e.event(
        START_ENCRYPTION_EVENT,
        &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    let err = err_of(&e.buf);
    assert!(
        matches!(err, BinlogError::Encrypted { .. }) && err.offset() == at,
        "{err:?}"
    );
    assert!(err.to_string().contains("encrypted"));
}

#[test]
fn events_out_of_order() {
    type Build = fn(&mut Enc) -> u64;
    let cases: [(&str, Build); 9] = [
        ("GTID inside", |e| {
            e.gtid(0, 1, 0);
            e.gtid(0, 2, 0)
        }),
        ("XID outside", |e| e.xid(1)),
        ("COMMIT outside", |e| e.query("COMMIT")),
        ("after ROTATE", |e| {
            e.rotate("f.000002");
            e.gtid(0, 1, 0)
        }),
        ("after STOP", |e| {
            e.stop();
            e.stop()
        }),
        ("GTID_LIST after GTID", |e| {
            e.tx(0, 1);
            e.gtid_list(&[])
        }),
        ("seq backwards", |e| {
            e.gtid_list(&[g(0, 1, 5)]);
            e.tx(0, 5).0
        }),
        ("ROTATE inside", |e| {
            e.gtid(0, 1, 0);
            e.rotate("x")
        }),
        ("XID ends standalone", |e| {
            e.gtid(0, 1, FL_STANDALONE);
            e.xid(1)
        }),
    ];
    for (name, build) in cases {
        let mut e = Enc::new(true);
        let at = build(&mut e);
        let err = err_of(&e.buf);
        assert!(matches!(err, BinlogError::Order { .. }), "{name}: {err:?}");
        assert_eq!(err.offset(), at, "{name}: {err}");
    }
    // An FDE that is not first, and a first event that is not an FDE.
    let e = Enc::new(true);
    let mut f = e.buf.clone();
    f.extend_from_slice(&e.buf[4..]);
    let mut fixed = f.clone();
    let at = e.buf.len();
    fixed[at + 13..at + 17].copy_from_slice(&(f.len() as u32).to_le_bytes());
    let err = err_of(&fixed);
    assert!(
        matches!(err, BinlogError::Order { .. }) && err.offset() == at as u64,
        "{err:?}"
    );
    let mut e = Enc::new(true);
    let fde_end = e.buf.len();
    e.stop();
    let mut f = MAGIC.to_vec();
    f.extend_from_slice(&e.buf[fde_end..]);
    let len = f.len() as u32;
    f[17..21].copy_from_slice(&len.to_le_bytes());
    let err = err_of(&f);
    assert!(
        matches!(err, BinlogError::Order { offset: 4, .. }),
        "{err:?}"
    );
}

#[test]
fn an_error_is_sticky() {
    let mut r = EventReader::new("f");
    assert!(r.feed(b"xx", &mut Vec::new()).is_err());
    assert!(r.feed(&MAGIC, &mut Vec::new()).is_err());
}

#[test]
fn reader_reports_offsets_and_checksum() {
    let mut e = Enc::new(false);
    e.gtid_list(&[]);
    let mut r = EventReader::new("f");
    assert_eq!(r.checksum(), None);
    let mut out = Vec::new();
    r.feed(&e.buf[..e.buf.len() - 3], &mut out).unwrap();
    assert_eq!(r.checksum(), Some(false));
    assert_eq!(r.offset(), e.buf.len() as u64 - 3);
    assert_eq!(r.event_boundary(), out[0].end());
    assert_eq!(out.len(), 1);
}

#[test]
fn the_in_use_flag_of_an_open_file_is_outside_the_fde_crc() {
    let mut e = Enc::new(true);
    e.gtid_list(&[]);
    // The server writes the FDE's CRC with the flag cleared, then sets it while writing.
    e.buf[4 + 17] |= LOG_EVENT_BINLOG_IN_USE_F as u8;
    let (s, _) = scan("f", &e.buf).unwrap();
    assert!(s.checksum);
    // Any other flag is covered.
    e.buf[4 + 17] |= 2;
    assert!(matches!(
        err_of(&e.buf),
        BinlogError::Checksum { offset: 4, .. }
    ));
}

#[test]
fn an_fde_without_a_checksum_algorithm_is_refused() {
    // A pre-5.6.1 MySQL version: where the CRC is must not hinge on the version text.
    let mut e = Enc::new(true);
    let v = b"5.5.60-log\0";
    e.buf[4 + 19 + 2..4 + 19 + 2 + v.len()].copy_from_slice(v);
    let err = err_of(&e.buf);
    assert!(
        err.to_string().contains("predates binlog checksums"),
        "{err}"
    );
    assert_eq!(err.offset(), 4);
}

#[test]
fn the_fde_crc_is_checked_also_when_checksums_are_off() {
    // As a real server writes it: checksums off, the FDE's CRC slot filled.
    let e = Enc::new(false);
    let fde_end = e.buf.len();
    let (s, _) = scan("f", &e.buf).unwrap();
    assert!(!s.checksum);
    // Turning checksums off by flipping the algorithm byte is caught.
    let mut on = Enc::new(true);
    on.gtid_list(&[]);
    let mut bad = on.buf.clone();
    bad[fde_end - 5] = 0;
    assert!(matches!(
        err_of(&bad),
        BinlogError::Checksum { offset: 4, .. }
    ));
    // A writer that left the slot empty with checksums off is accepted.
    let mut empty = e.buf.clone();
    empty[fde_end - 4..fde_end].copy_from_slice(&[0; 4]);
    assert!(scan("f", &empty).is_ok());
}
