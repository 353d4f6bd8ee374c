//! Integration tests against a real MariaDB server and the real mariabackup.
//!
//! Each test starts its own throw-away server with `scripts/mariadb-fixture` (own temp dir,
//! own socket, own free TCP port), streams a `mariabackup --backup --stream=xbstream
//! --parallel=4` backup, extracts it with `xbagent extract`, prepares it with
//! `mariabackup --prepare`, starts a second server on the result and compares table
//! checksums with the source. The same stream is also extracted with the reference
//! `mbstream -x` and both trees must be byte-identical.
//!
//! These tests never skip: a missing tool (mariadbd, mariabackup, mbstream, ...) is a failure
//! that names the tool and the packages to install.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use bytes::BytesMut;
use xbagent::format::{ChunkBody, DecodeOptions, Decoder, FLAG_REWRITE};

use crate::support::cli::run;
use crate::support::mariadb::{
    fixture, fixture_to_file, mbstream_extract, require_mariadb, Server,
};
use crate::support::trees::{assert_same_tree, tree, Entry};
use crate::support::{s as p, short_tempdir, xb};

/// Extract `stream` with xbagent into `ours` and with the reference `mbstream -x` into
/// `reference`: both trees must be byte-identical.
fn extract_like_mbstream(stream: &Path, ours: &Path, reference: &Path) {
    run(xb(&["extract", "--no-progress", "-C", p(ours), p(stream)])).code(0);
    mbstream_extract(stream, reference);
    assert_same_tree(reference, ours);
}

/// Where the reference left holes (page-compressed tablespaces: each page's trailing zeros),
/// ours must too: the restored files take no more room on disk than mbstream's. The fixture
/// has a PAGE_COMPRESSED table, so at least one such file must be there.
fn assert_sparse_like_reference(ours: &Path, reference: &Path) {
    use std::os::unix::fs::MetadataExt;
    let ref_files = tree(reference);
    let mut sparse = Vec::new();
    for (name, _) in ref_files
        .iter()
        .filter(|(_, e)| matches!(e, Entry::File { .. }))
    {
        let r = std::fs::metadata(reference.join(name)).expect("stat reference file");
        let o = std::fs::metadata(ours.join(name)).expect("stat our file");
        let (r_alloc, o_alloc) = (r.blocks() * 512, o.blocks() * 512);
        if r.len() >= 64 << 10 && r_alloc < r.len() * 9 / 10 {
            sparse.push(format!(
                "{name}: {} bytes, mbstream allocated {r_alloc}, xbagent {o_alloc}",
                r.len()
            ));
            assert!(
                o_alloc <= r_alloc + r_alloc / 10 + (1 << 20),
                "{name} takes more room on disk than mbstream's: {o_alloc} against {r_alloc} bytes allocated ({} bytes long)",
                r.len()
            );
        }
    }
    eprintln!("sparse files (page-compressed): {sparse:?}");
    assert!(
        sparse.iter().any(|s| s.contains(".ibd")),
        "no page-compressed tablespace came out sparse in mbstream's extraction: the test proves nothing"
    );
}

/// Table data files without their table's `.frm`, in every database directory of a datadir.
///
/// mariabackup 10.11 copies every `.frm` under BACKUP STAGE BLOCK_DDL, after the DDL it has
/// to account for, and sends D and R chunks for data files it copied earlier under names
/// that no longer exist. An extractor that ignores D or R leaves such files behind: the server
/// does not see them, but the restored datadir holds stale data under dead names.
fn orphan_table_files(datadir: &Path) -> Vec<String> {
    const DATA_EXTS: &[&str] = &["ibd", "MYD", "MYI", "MAD", "MAI", "CSV", "CSM", "ARZ"];
    let mut orphans = Vec::new();
    for db in fs::read_dir(datadir).unwrap() {
        let db = db.unwrap().path();
        if !db.is_dir() {
            continue;
        }
        for f in fs::read_dir(&db).unwrap() {
            let f = f.unwrap().path();
            let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
            if DATA_EXTS.contains(&ext) && !f.with_extension("frm").exists() {
                orphans.push(f.strip_prefix(datadir).unwrap().display().to_string());
            }
        }
    }
    orphans.sort();
    orphans
}

/// What a stream holds, chunk kind by chunk kind.
#[derive(Debug, Default)]
struct StreamStats {
    chunks: u64,
    payload: u64,
    eof: u64,
    seek: u64,
    sparse: u64,
    remove: u64,
    rename: u64,
    ignored: u64,
    rewrite_flagged: u64,
    /// R chunks whose source had been completely sent (E seen) earlier in the stream.
    renames_of_sent_files: u64,
    /// R chunks whose source never appeared in the stream (nothing to rename).
    renames_of_unsent_files: u64,
    /// D chunks whose path had been sent earlier in the stream.
    removes_of_sent_files: u64,
    /// D chunks whose path never appeared in the stream.
    removes_of_unsent_files: u64,
    seek_examples: Vec<String>,
    /// Only shown (through Debug) in messages.
    #[allow(dead_code)]
    bytes: u64,
}

fn stream_stats(stream: &Path) -> StreamStats {
    let data = fs::read(stream).expect("cannot read the stream");
    let mut st = StreamStats {
        bytes: data.len() as u64,
        ..Default::default()
    };
    let mut buf = BytesMut::from(&data[..]);
    let mut dec = Decoder::new(DecodeOptions::default());
    // Paths present in the extracted tree as the stream is applied (sent, renamed, removed).
    let mut present: BTreeSet<Vec<u8>> = BTreeSet::new();
    loop {
        let chunk = match dec.decode(&mut buf) {
            Ok(Some(c)) => c,
            Ok(None) => match dec.decode_eof(&mut buf) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => panic!("the decoder rejects the mariabackup stream at its end: {e}"),
            },
            Err(e) => panic!("the decoder rejects the mariabackup stream: {e}"),
        };
        st.chunks += 1;
        if chunk.flags & FLAG_REWRITE != 0 {
            st.rewrite_flagged += 1;
        }
        let path = chunk.path.to_vec();
        match &chunk.body {
            ChunkBody::Payload { .. } => {
                st.payload += 1;
                present.insert(path);
            }
            ChunkBody::Sparse { .. } => st.sparse += 1,
            ChunkBody::Seek { offset } => {
                st.seek += 1;
                if st.seek_examples.len() < 5 {
                    st.seek_examples
                        .push(format!("{} -> {offset}", chunk.display_path()));
                }
            }
            ChunkBody::Eof => {
                st.eof += 1;
                present.insert(path);
            }
            ChunkBody::Remove => {
                st.remove += 1;
                if present.remove(&path) {
                    st.removes_of_sent_files += 1;
                } else {
                    st.removes_of_unsent_files += 1;
                }
            }
            ChunkBody::Rename { to } => {
                st.rename += 1;
                if present.remove(&path) {
                    st.renames_of_sent_files += 1;
                    present.insert(to.to_vec());
                } else {
                    st.renames_of_unsent_files += 1;
                }
            }
            ChunkBody::Ignored { .. } => st.ignored += 1,
        }
    }
    st
}

/// `mariabackup --prepare` the extracted backup, check that no table file lost its `.frm`,
/// start a server on it; every table must be readable. Returns the server and its checksums.
fn prepare_and_start(restore: &Path) -> (Server, BTreeMap<String, String>) {
    fixture(&["prepare", p(restore)]);
    let orphans = orphan_table_files(restore);
    assert!(
        orphans.is_empty(),
        "table files without a .frm after prepare: {orphans:?}"
    );
    let restored = Server::start_on(restore);
    let sums = restored.checksums();
    let nulls: Vec<_> = sums.iter().filter(|(_, c)| *c == "NULL").collect();
    assert!(
        nulls.is_empty(),
        "unreadable tables after restore: {nulls:?}"
    );
    (restored, sums)
}

// ---------------------------------------------------------------------------------------------
// (a) a plain backup

#[test]
fn plain_backup_extracts_prepares_and_matches_source_checksums() {
    require_mariadb();
    let tmp = short_tempdir("xbm-plain");
    let src_dir = tmp.path().join("src");
    let restore = tmp.path().join("restore");
    let reference = tmp.path().join("ref");
    let stream = tmp.path().join("plain.xb");

    let src = Server::start(&src_dir);
    src.load("2");
    let source_sums = src.checksums();
    assert!(
        source_sums.len() >= 6,
        "the fixture loaded too few tables: {source_sums:?}"
    );

    // A restart checkpoints the redo log: tables created by the load are then streamed under
    // their own names (`.ibd`) rather than as files created during the backup (`.new`), so
    // the page-compressed one is recognised and extracted sparse, as mbstream does.
    drop(src);
    let src = Server::start(&src_dir);

    fixture_to_file(&["backup", p(&src_dir)], &stream);
    let st = stream_stats(&stream);
    eprintln!("plain backup stream: {st:?}");
    assert!(
        st.payload > 0 && st.eof > 0,
        "the backup stream is empty: {st:?}"
    );

    extract_like_mbstream(&stream, &restore, &reference);
    assert_sparse_like_reference(&restore, &reference);

    let (restored, restored_sums) = prepare_and_start(&restore);
    assert_eq!(
        restored_sums, source_sums,
        "CHECKSUM TABLE of the restored server differs from the source"
    );
    drop(restored);
    drop(src);
}

// ---------------------------------------------------------------------------------------------
// (b) a backup taken while DDL runs

/// One completed statement of the fixture's DDL loop (see scripts/mariadb-fixture).
#[derive(Debug, Clone)]
enum Ddl {
    Create(String),
    Drop(String),
    Rename(String, String),
    Alter(String),
}

#[derive(Debug, Default)]
struct DdlLog {
    initial: BTreeSet<String>,
    steps: Vec<Ddl>,
    /// Steps completed before the backup process was started.
    before_backup: usize,
    /// Steps logged before the backup process exited (some may have completed just after
    /// BACKUP STAGE END released them; none logged later can be in the backup).
    before_backup_end: usize,
}

fn parse_ddl_log(text: &str) -> DdlLog {
    let mut log = DdlLog::default();
    let mut saw_start = false;
    let mut saw_end = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# initial-tables") {
            log.initial = rest.split_whitespace().map(str::to_string).collect();
        } else if line == "# backup-start" {
            log.before_backup = log.steps.len();
            saw_start = true;
        } else if line.starts_with("# backup-end") {
            log.before_backup_end = log.steps.len();
            saw_end = true;
        } else if line.starts_with("# failed") {
            panic!("the DDL loop failed: {line}");
        } else if line.starts_with('#') || line.is_empty() {
        } else {
            let f: Vec<&str> = line.split_whitespace().collect();
            let n: usize = f[0]
                .parse()
                .unwrap_or_else(|_| panic!("bad ddl.log line {line:?}"));
            assert_eq!(
                n,
                log.steps.len() + 1,
                "ddl.log steps out of order at {line:?}"
            );
            log.steps.push(match (f[1], f.len()) {
                ("create", 3) => Ddl::Create(f[2].into()),
                ("drop", 3) => Ddl::Drop(f[2].into()),
                ("alter", 3) => Ddl::Alter(f[2].into()),
                ("rename", 4) => Ddl::Rename(f[2].into(), f[3].into()),
                _ => panic!("bad ddl.log line {line:?}"),
            });
        }
    }
    assert!(
        saw_start && saw_end,
        "ddl.log lacks its backup markers:\n{text}"
    );
    log
}

/// The table set after each step: `sets[k]` is the state after `k` steps.
fn table_sets(log: &DdlLog) -> Vec<BTreeSet<String>> {
    let mut cur = log.initial.clone();
    let mut sets = vec![cur.clone()];
    for (i, step) in log.steps.iter().enumerate() {
        match step {
            Ddl::Create(t) => assert!(cur.insert(t.clone()), "step {}: {t} created twice", i + 1),
            Ddl::Drop(t) => assert!(cur.remove(t), "step {}: {t} dropped but absent", i + 1),
            Ddl::Rename(a, b) => {
                assert!(cur.remove(a), "step {}: {a} renamed but absent", i + 1);
                assert!(cur.insert(b.clone()), "step {}: {b} already exists", i + 1);
            }
            Ddl::Alter(t) => assert!(cur.contains(t), "step {}: {t} altered but absent", i + 1),
        }
        sets.push(cur.clone());
    }
    sets
}

/// rows(i) of the fixture's DDL loop: `ddl.{c,r}_<engine>_<i>` holds this many rows.
fn ddl_rows(i: u64) -> u64 {
    50 + (i * 37) % 400
}

#[test]
fn ddl_backup_with_remove_and_rename_chunks_restores_consistently() {
    require_mariadb();
    let tmp = short_tempdir("xbm-ddl");
    let src_dir = tmp.path().join("src");
    let restore = tmp.path().join("restore");
    let reference = tmp.path().join("ref");
    let stream = tmp.path().join("ddl.xb");

    let src = Server::start(&src_dir);
    src.load("1");

    // The loop starts before the backup and stops after it; see the fixture for how the
    // backup is throttled so that DDL lands inside BACKUP STAGE START .. BLOCK_DDL.
    fixture_to_file(&["backup-ddl", p(&src_dir)], &stream);
    let log_text = fs::read_to_string(src_dir.join("ddl.log")).expect("no ddl.log");
    let log = parse_ddl_log(&log_text);
    let sets = table_sets(&log);
    eprintln!(
        "DDL loop: {} statements, {} before the backup started, {} before it ended",
        log.steps.len(),
        log.before_backup,
        log.before_backup_end
    );
    for l in log_text.lines().filter(|l| {
        l.starts_with("# pause") || l.starts_with("# resume") || l.starts_with("# aria-")
    }) {
        eprintln!("DDL loop: {}", &l[2..]);
    }
    assert!(
        log.before_backup_end > log.before_backup,
        "no DDL statement completed while the backup ran; the test proves nothing"
    );

    let st = stream_stats(&stream);
    eprintln!("DDL backup stream: {st:?}");
    assert!(
        st.remove > 0 && st.rename > 0,
        "the DDL backup holds no D (remove) or no R (rename) chunk: {st:?}; the DDL loop did \
         not overlap the backup's copy phase (see {}/backup.log)",
        src_dir.display()
    );

    assert!(
        st.renames_of_sent_files + st.removes_of_sent_files > 0,
        "no D or R chunk in the DDL backup touches a file sent earlier in the stream: {st:?}; \
         the fixture did not catch BACKUP STAGE FLUSH (see '# paused' lines in {}/ddl.log), \
         so this stream cannot tell whether an extractor applies D and R",
        src_dir.display()
    );

    assert!(
        st.seek > 0,
        "the DDL backup holds no S (seek) chunk: {st:?}; no Aria log rollover after mariabackup \
         listed the Aria logs (see `# aria-rollover` in {}/ddl.log, and backup.log)",
        src_dir.display()
    );

    extract_like_mbstream(&stream, &restore, &reference);
    let orphans = orphan_table_files(&restore);
    assert!(
        orphans.is_empty(),
        "table files without a .frm after extraction (D or R chunks not applied?): {orphans:?}"
    );

    // The source as it is now (the loop has stopped).
    let source_sums = src.checksums();

    let (restored, restored_sums) = prepare_and_start(&restore);
    let restored_set: BTreeSet<String> = restored_sums.keys().cloned().collect();

    // 1. The restored table set is the source's table set right after some DDL statement
    //    that completed while the backup ran (DDL is atomic, and BACKUP STAGE BLOCK_DDL
    //    waits for running DDL and holds new DDL back until the backup ends).
    let lo = log.before_backup;
    let hi = log.before_backup_end;
    let matching: Vec<usize> = (lo..=hi).filter(|&k| sets[k] == restored_set).collect();
    if matching.is_empty() {
        let (best, diff) = (lo..=hi)
            .map(|k| (k, sets[k].symmetric_difference(&restored_set).count()))
            .min_by_key(|&(_, d)| d)
            .unwrap();
        panic!(
            "the restored table set matches the source after no DDL step in {lo}..={hi}; \
             closest is step {best} ({diff} tables differ): only restored {:?}, only source {:?}",
            restored_set.difference(&sets[best]).collect::<Vec<_>>(),
            sets[best].difference(&restored_set).collect::<Vec<_>>()
        );
    }
    eprintln!(
        "restored table set = source after DDL step(s) {:?} (backup ran over steps {lo}..={hi})",
        matching
    );

    // 2. Every restored table is readable: checked by prepare_and_start.

    // 3. Tables the DDL loop never touches have the source's content.
    let touched = |t: &str| {
        t.starts_with("ddl.c_")
            || t.starts_with("ddl.r_")
            || t.starts_with("ddl.flip_")
            || t.starts_with("ddl.pool_")
    };
    for (t, sum) in source_sums.iter().filter(|(t, _)| !touched(t)) {
        assert_eq!(
            restored_sums.get(t),
            Some(sum),
            "table {t} (untouched by DDL) differs after restore"
        );
    }
    // The flip tables are only renamed: their content must survive under whichever name.
    for e in ["innodb", "myisam", "aria"] {
        let name = |s: &BTreeMap<String, String>| {
            let a = format!("ddl.flip_{e}_a");
            let b = format!("ddl.flip_{e}_b");
            match (s.get(&a), s.get(&b)) {
                (Some(x), None) | (None, Some(x)) => x.clone(),
                other => panic!("expected exactly one of {a}, {b}; found {other:?}"),
            }
        };
        assert_eq!(
            name(&restored_sums),
            name(&source_sums),
            "renamed table ddl.flip_{e}_* lost its content"
        );
    }
    // The pool tables are only dropped: those still there keep the source's content.
    for (t, sum) in restored_sums
        .iter()
        .filter(|(t, _)| t.starts_with("ddl.pool_"))
    {
        if let Some(s) = source_sums.get(t) {
            assert_eq!(sum, s, "table {t} differs after restore");
        }
    }

    // 4. Tables created by the loop hold the rows they were created with.
    for t in restored_set
        .iter()
        .filter(|t| t.starts_with("ddl.c_") || t.starts_with("ddl.r_"))
    {
        let i: u64 = t.rsplit('_').next().unwrap().parse().unwrap();
        let count = restored.sql(&format!("SELECT COUNT(*) FROM {t}"));
        assert_eq!(
            count.trim(),
            ddl_rows(i).to_string(),
            "table {t} has the wrong number of rows after restore"
        );
    }
    drop(restored);
    drop(src);
}
