//! Property tests: random files of valid event groups, encoded by the test encoder, cut at a
//! random point and fed in random pieces; and single flipped bytes in CRC-protected files.

use proptest::prelude::*;

use super::event::{FL_GROUP_COMMIT_ID, FL_STANDALONE, XA_PREPARE_LOG_EVENT};
use super::tests::Enc;
use super::*;

/// One event group (or a lone BINLOG_CHECKPOINT) of a generated file.
#[derive(Debug, Clone)]
enum Op {
    /// GTID, BEGIN, row events, XID.
    Trans {
        domain: u32,
        rows: Vec<u16>,
    },
    /// GTID (standalone) and one statement.
    Ddl {
        domain: u32,
    },
    /// GTID, BEGIN, rows, COMMIT (non-transactional engines), with a group commit id.
    NonTrans {
        domain: u32,
        rows: Vec<u16>,
    },
    /// GTID, BEGIN, rows, ROLLBACK.
    Rollback {
        domain: u32,
    },
    /// GTID, XA START, rows, XA END, XA_PREPARE; then GTID, XA COMMIT.
    Xa {
        domain: u32,
    },
    Checkpoint,
}

fn op() -> impl Strategy<Value = Op> {
    let domain = 0u32..3;
    let rows = prop::collection::vec(0u16..3000, 0..4);
    prop_oneof![
        (domain.clone(), rows.clone()).prop_map(|(domain, rows)| Op::Trans { domain, rows }),
        domain.clone().prop_map(|domain| Op::Ddl { domain }),
        (domain.clone(), rows).prop_map(|(domain, rows)| Op::NonTrans { domain, rows }),
        domain.clone().prop_map(|domain| Op::Rollback { domain }),
        domain.prop_map(|domain| Op::Xa { domain }),
        Just(Op::Checkpoint),
    ]
}

/// A generated file and what a reader must find in it.
struct Built {
    bytes: Vec<u8>,
    before: GtidState,
    txs: Vec<Transaction>,
    /// Ends of events after which no group is open, ascending.
    clean: Vec<u64>,
    closed_at: Option<(u64, Closed)>,
}

struct Builder {
    e: Enc,
    state: GtidState,
    txs: Vec<Transaction>,
    clean: Vec<u64>,
}

impl Builder {
    fn clean(&mut self) {
        self.clean.push(self.e.buf.len() as u64);
    }

    fn gtid(&mut self, domain: u32, flags: u8) -> (Gtid, u64) {
        let seq = self.state.get(domain).map_or(1, |g| g.seq + 1);
        let g = Gtid {
            domain,
            server: self.e.server_id,
            seq,
        };
        self.state.apply(g);
        (g, self.e.gtid(domain, seq, flags))
    }

    fn end(&mut self, g: Gtid, start: u64) {
        self.txs.push(Transaction {
            gtid: g,
            start,
            end: self.e.buf.len() as u64,
            commit_time: self.e.time,
        });
        self.clean();
    }

    fn rows(&mut self, rows: &[u16]) {
        for &n in rows {
            self.e.rows(usize::from(n));
        }
    }

    fn op(&mut self, op: &Op) {
        match op {
            Op::Trans { domain, rows } => {
                let (g, s) = self.gtid(*domain, 4);
                self.e.query("BEGIN");
                self.rows(rows);
                self.e.time += 1;
                self.e.xid(g.seq);
                self.end(g, s);
            }
            Op::Ddl { domain } => {
                let (g, s) = self.gtid(*domain, FL_STANDALONE);
                self.e.query("CREATE TABLE t (a INT)");
                self.end(g, s);
            }
            Op::NonTrans { domain, rows } => {
                let (g, s) = self.gtid(*domain, FL_GROUP_COMMIT_ID);
                self.e.query("BEGIN");
                self.rows(rows);
                self.e.query("COMMIT");
                self.end(g, s);
            }
            Op::Rollback { domain } => {
                let (g, s) = self.gtid(*domain, 0);
                self.e.query("BEGIN");
                self.rows(&[10]);
                self.e.query("ROLLBACK");
                self.end(g, s);
            }
            Op::Xa { domain } => {
                let (g, s) = self.gtid(*domain, 64);
                self.e.query("XA START X'31',X'',1");
                self.rows(&[20]);
                self.e.query("XA END X'31',X'',1");
                self.e.event(XA_PREPARE_LOG_EVENT, &[0; 10]);
                self.end(g, s);
                let (g, s) = self.gtid(*domain, 128);
                self.e.query("XA COMMIT X'31',X'',1");
                self.end(g, s);
            }
            Op::Checkpoint => {
                self.e.checkpoint("f.000001");
                self.clean();
            }
        }
    }
}

fn build(crc: bool, before: &[(u32, u64)], ops: &[Op], ending: u8, server: u32) -> Built {
    let mut e = Enc::new(crc);
    e.server_id = server;
    let before: GtidState = before
        .iter()
        .map(|&(domain, seq)| Gtid {
            domain,
            server: 9,
            seq,
        })
        .collect();
    let list: Vec<Gtid> = before.iter().collect();
    let mut b = Builder {
        e,
        state: before.clone(),
        txs: Vec::new(),
        clean: Vec::new(),
    };
    b.clean();
    b.e.gtid_list(&list);
    b.clean();
    for op in ops {
        b.op(op);
    }
    let closed = match ending % 3 {
        0 => None,
        1 => {
            b.e.rotate("f.000002");
            Some(Closed::Rotate {
                next_file: "f.000002".into(),
            })
        }
        _ => {
            b.e.stop();
            Some(Closed::Stop)
        }
    };
    if closed.is_some() {
        b.clean();
    }
    let end = b.e.buf.len() as u64;
    Built {
        bytes: b.e.buf,
        before,
        txs: b.txs,
        clean: b.clean,
        closed_at: closed.map(|c| (end, c)),
    }
}

/// The summary a reader must give of `built` cut at `cut`.
fn expected(built: &Built, cut: u64) -> (Vec<Transaction>, u64, Option<Closed>, GtidState) {
    let txs: Vec<Transaction> = built.txs.iter().filter(|t| t.end <= cut).cloned().collect();
    // The FDE's end is the first clean boundary; before it nothing is complete.
    let complete_end = built
        .clean
        .iter()
        .rev()
        .find(|&&c| c <= cut)
        .copied()
        .unwrap_or(0);
    let closed = built
        .closed_at
        .as_ref()
        .filter(|(end, _)| *end <= cut)
        .map(|(_, c)| c.clone());
    // gtid_before (and so gtid_after) is known once the GTID_LIST is in.
    let mut after = if cut >= built.clean[1] {
        built.before.clone()
    } else {
        GtidState::new()
    };
    for t in &txs {
        after.apply(t.gtid);
    }
    (txs, complete_end, closed, after)
}

/// Reader and tracker over `bytes` in pieces whose sizes come from `sizes` (cycled).
fn feed_pieces(bytes: &[u8], sizes: &[usize]) -> (FileSummary, Vec<Transaction>) {
    let mut r = EventReader::new("f.000001");
    let mut t = FileTracker::new("f.000001");
    let mut txs = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < bytes.len() {
        let n = sizes[i % sizes.len()].min(bytes.len() - pos);
        i += 1;
        let mut evs = Vec::new();
        r.feed(&bytes[pos..pos + n], &mut evs)
            .expect("a valid prefix");
        pos += n;
        for ev in &evs {
            txs.extend(t.event(ev).expect("events in order"));
        }
    }
    (t.summary().clone(), txs)
}

fn file() -> impl Strategy<Value = (bool, Vec<(u32, u64)>, Vec<Op>, u8, u32)> {
    (
        any::<bool>(),
        prop::collection::vec((0u32..3, 0u64..1000), 0..3),
        prop::collection::vec(op(), 0..12),
        any::<u8>(),
        1u32..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_prefix_summarises_the_transactions_wholly_before_the_cut(
        (crc, before, ops, ending, server) in file(),
        cut in any::<prop::sample::Index>(),
        sizes in prop::collection::vec(1usize..200, 1..8),
    ) {
        let built = build(crc, &before, &ops, ending, server);
        let cut = cut.index(built.bytes.len() + 1);
        let prefix = &built.bytes[..cut];
        let (sum, txs) = scan_prefix("f.000001", prefix).expect("a valid prefix");
        let (want_txs, complete_end, closed, after) = expected(&built, cut as u64);
        prop_assert_eq!(&txs, &want_txs);
        prop_assert_eq!(sum.complete_end, complete_end);
        prop_assert_eq!(&sum.closed, &closed);
        prop_assert_eq!(&sum.gtid_after, &after);
        prop_assert_eq!(sum.transactions, want_txs.len() as u64);
        prop_assert_eq!(sum.first_gtid, want_txs.first().map(|t| t.gtid));
        prop_assert_eq!(sum.last_gtid, want_txs.last().map(|t| t.gtid));
        prop_assert_eq!(sum.first_time, want_txs.first().map(|t| t.commit_time));
        prop_assert_eq!(sum.last_time, want_txs.last().map(|t| t.commit_time));
        if cut as u64 >= built.clean[1] {
            prop_assert_eq!(sum.gtid_before.as_ref(), Some(&built.before));
            prop_assert_eq!(sum.checksum, crc);
        }
        // In pieces: the same.
        let (psum, ptxs) = feed_pieces(prefix, &sizes);
        prop_assert_eq!(&psum, &sum);
        prop_assert_eq!(&ptxs, &txs);
        // scan accepts the prefix exactly when it ends at an event boundary.
        let whole = scan("f.000001", prefix);
        let mut r = EventReader::new("f.000001");
        r.feed(prefix, &mut Vec::new()).expect("a valid prefix");
        let at_boundary = r.pending().is_none();
        prop_assert_eq!(whole.is_ok(), at_boundary);
    }

    #[test]
    fn a_flipped_byte_is_an_error_or_changes_nothing(
        (_, before, ops, ending, server) in file(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let built = build(true, &before, &ops, ending, server);
        let good = scan("f.000001", &built.bytes).expect("a valid file");
        let mut bad = built.bytes.clone();
        let at = at.index(bad.len());
        bad[at] ^= 1 << bit;
        // Never a panic; and never a different reading (the FDE's in-use flag is the one
        // bit no CRC covers, and it changes nothing we report).
        if let Ok(got) = scan("f.000001", &bad) {
            let gtids = |t: &[Transaction]| t.iter().map(|t| (t.gtid, t.end)).collect::<Vec<_>>();
            prop_assert_eq!(gtids(&got.1), gtids(&good.1), "byte {} bit {}", at, bit);
            prop_assert_eq!(&got, &good, "byte {} bit {} changed the reading", at, bit);
        }
        if let Ok((sum, txs)) = scan_prefix("f.000001", &bad) {
            for t in &txs {
                prop_assert!(good.1.contains(t), "byte {} bit {}: {:?}", at, bit, t);
            }
            prop_assert!(sum.gtid_after.is_within(&good.0.gtid_after));
        }
    }
}
