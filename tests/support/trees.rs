//! Directory trees as values: what a restore, clone or extraction left, to compare with its
//! source. Reads only; never changes a tree.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    /// A regular file: its length and BLAKE3 (hex), so that big trees need little memory.
    File {
        len: u64,
        blake3: String,
    },
    Symlink(PathBuf),
    /// A FIFO, socket or device, by its file type.
    Other(String),
}

impl Entry {
    /// The entry of a regular file holding `data`.
    pub fn file(data: &[u8]) -> Entry {
        Entry::File {
            len: data.len() as u64,
            blake3: blake3::hash(data).to_hex().to_string(),
        }
    }
}

/// Relative path (with `/`) → entry.
pub type Tree = BTreeMap<String, Entry>;

/// Every entry under `root`.
pub fn tree(root: &Path) -> Tree {
    tree_skipping(root, &[])
}

/// Every entry under `root`, except the top-level names in `skip` (markers, for instance).
pub fn tree_skipping(root: &Path, skip: &[&str]) -> Tree {
    fn walk(root: &Path, rel: &Path, skip: &[&str], out: &mut Tree) {
        let dir = root.join(rel);
        let rd = fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {dir:?}: {e}"));
        for e in rd {
            let e = e.unwrap_or_else(|e| panic!("cannot list {dir:?}: {e}"));
            let rel_p = rel.join(e.file_name());
            let key = rel_p.to_string_lossy().into_owned();
            if rel.as_os_str().is_empty() && skip.contains(&key.as_str()) {
                continue;
            }
            let ft = e.file_type().unwrap();
            let entry = if ft.is_dir() {
                walk(root, &rel_p, skip, out);
                Entry::Dir
            } else if ft.is_symlink() {
                Entry::Symlink(fs::read_link(e.path()).unwrap())
            } else if ft.is_file() {
                file_entry(&e.path())
            } else {
                Entry::Other(format!("{ft:?}"))
            };
            out.insert(key, entry);
        }
    }
    let mut out = Tree::new();
    walk(root, Path::new(""), skip, &mut out);
    out
}

fn file_entry(path: &Path) -> Entry {
    let mut h = blake3::Hasher::new();
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    h.update_reader(f)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    Entry::File {
        len: fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        blake3: h.finalize().to_hex().to_string(),
    }
}

/// `got` holds the same directories, files (byte for byte) and links as `want`, which is not
/// empty. A failure names every missing and unexpected entry and the first differing byte of
/// the first differing file.
#[track_caller]
pub fn assert_same_tree(want: &Path, got: &Path) {
    let (w, g) = (tree(want), tree(got));
    assert!(!w.is_empty(), "the expected tree {want:?} is empty");
    assert_same_entries(&w, &g, want, got);
}

/// [`assert_same_tree`] on trees already read.
#[track_caller]
pub fn assert_same_entries(w: &Tree, g: &Tree, want: &Path, got: &Path) {
    if let Err(diff) = diff(w, g, want, got) {
        panic!("{diff}");
    }
}

/// What differs between tree `g` (read from `got`) and `w` (from `want`): every missing and
/// unexpected entry, or the first differing entry (with its first differing byte).
pub fn diff(w: &Tree, g: &Tree, want: &Path, got: &Path) -> Result<(), String> {
    let missing: Vec<&String> = w.keys().filter(|k| !g.contains_key(*k)).collect();
    let extra: Vec<&String> = g.keys().filter(|k| !w.contains_key(*k)).collect();
    if !missing.is_empty() || !extra.is_empty() {
        return Err(format!(
            "{got:?} differs from {want:?}: {} missing {missing:?}, {} unexpected {extra:?}",
            missing.len(),
            extra.len()
        ));
    }
    for (k, e) in w {
        if &g[k] != e {
            let at = match e {
                Entry::File { .. } => first_difference(&want.join(k), &got.join(k))
                    .map(|i| format!(", first difference at byte {i}"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            return Err(format!(
                "{k} differs between {want:?} and {got:?}: {e:?} against {:?}{at}",
                g[k]
            ));
        }
    }
    Ok(())
}

/// Byte offset of the first difference between two files, if any.
pub fn first_difference(a: &Path, b: &Path) -> Option<u64> {
    let open = |p: &Path| File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a), open(b));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut pos = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if let Some(i) = ba[..na].iter().zip(&bb[..nb]).position(|(x, y)| x != y) {
            return Some(pos + i as u64);
        }
        if na != nb {
            return Some(pos + na.min(nb) as u64);
        }
        if na == 0 {
            return None;
        }
        pos += na as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    n
}
