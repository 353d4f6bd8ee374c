//! Fuzz the sans-I/O binlog reader (`xbagent::binlog`) with arbitrary bytes.
//!
//! Inputs whose first byte is odd get the binlog magic in front of the rest, so half the
//! runs get past the magic check (real binlog files, which start with 0xfe, are used as they
//! are). The bytes are read whole and in pseudo-random pieces (seeded from the input), and
//! must never panic. Checked on the way:
//! - pieces and whole agree on the events and on the error;
//! - events tile the file from offset 4, the reader's offsets only grow, and its event
//!   boundary is the end of the last event;
//! - the tracker's complete_end never passes the bytes read, transactions lie inside it and
//!   their GTIDs only grow within a domain;
//! - `scan_prefix` agrees with the reader and tracker run by hand, and `scan` succeeds only
//!   when the input ends at an event boundary;
//! - error messages name the file and never carry a NUL or an escape character.

#![no_main]

use libfuzzer_sys::fuzz_target;
use xbagent::binlog::{scan, scan_prefix, BinlogError, Event, EventReader, FileTracker, MAGIC};

fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Reads `data` in pieces (`seed` = None: at once), checking offsets as it goes.
fn read(data: &[u8], seed: Option<u64>) -> (Vec<Event>, Option<BinlogError>, u64) {
    let mut r = EventReader::new("fuzz-bin.000001");
    let mut out = Vec::new();
    let mut pos = 0;
    let mut seed = seed.map(|s| s | 1);
    while pos < data.len() {
        let n = match &mut seed {
            None => data.len(),
            Some(s) => {
                let x = next(s);
                match x % 3 {
                    0 => 1,
                    1 => (x >> 8) as usize % 32 + 1,
                    _ => (x >> 8) as usize % 4096 + 1,
                }
            }
        }
        .min(data.len() - pos);
        let before = r.offset();
        match r.feed(&data[pos..pos + n], &mut out) {
            Ok(m) => {
                assert_eq!(m, n, "feed consumed less than it was given");
                assert_eq!(r.offset(), before + n as u64);
            }
            Err(e) => return (out, Some(e), r.offset()),
        }
        assert!(r.event_boundary() <= r.offset());
        pos += n;
    }
    (out, None, r.offset())
}

fuzz_target!(|input: &[u8]| {
    let owned;
    let data = match input.first() {
        Some(b) if b & 1 == 1 => {
            owned = [&MAGIC[..], &input[1..]].concat();
            &owned[..]
        }
        _ => input,
    };
    // FNV-1a of the input: the piece sizes depend on the bytes, reproducibly.
    let seed = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let (whole, werr, _) = read(data, None);
    let (split, serr, read_to) = read(data, Some(seed));
    assert_eq!(whole, split, "pieces and whole disagree on the events");
    assert_eq!(werr, serr, "pieces and whole disagree on the error");
    let mut at = 4;
    for e in &whole {
        assert_eq!(e.offset, at, "events must tile the file");
        assert!(e.end() > e.offset);
        at = e.end();
    }
    assert!(whole.is_empty() || at <= read_to);
    if let Some(e) = &werr {
        let m = e.to_string();
        assert!(m.starts_with("binlog fuzz-bin.000001 at byte "), "{m}");
        assert!(!m.contains('\0') && !m.contains('\x1b'), "{m:?}");
        assert!(e.offset() >= at.min(e.offset()));
    }

    // The tracker over the events, as scan_prefix runs it.
    let mut t = FileTracker::new("fuzz-bin.000001");
    let mut txs = Vec::new();
    let mut terr = None;
    for e in &whole {
        match t.event(e) {
            Ok(Some(tx)) => {
                assert!(tx.start < tx.end && tx.end <= e.end());
                txs.push(tx);
            }
            Ok(None) => {}
            Err(err) => {
                terr = Some(err);
                break;
            }
        }
        assert!(t.summary().complete_end <= e.end());
    }
    let s = t.summary();
    assert!(s.complete_end <= read_to);
    assert_eq!(s.transactions, txs.len() as u64);
    for w in txs.windows(2) {
        assert!(w[0].end <= w[1].start);
        if w[0].gtid.domain == w[1].gtid.domain {
            assert!(w[0].gtid.seq < w[1].gtid.seq);
        }
    }
    if let Some(last) = txs.last() {
        assert!(last.end <= s.complete_end);
        assert!(s.gtid_after.contains(last.gtid));
    }
    match scan_prefix("fuzz-bin.000001", data) {
        Ok((sum, got)) => {
            assert!(terr.is_none() && werr.is_none());
            assert_eq!(&sum, s);
            assert_eq!(got, txs);
            let whole_file = scan("fuzz-bin.000001", data);
            assert_eq!(whole_file.is_ok(), at == data.len() as u64 && at >= 4);
        }
        Err(e) => {
            assert_eq!(Some(&e), terr.as_ref().or(werr.as_ref()));
            assert!(scan("fuzz-bin.000001", data).is_err());
        }
    }
});
