//! The local directory backend: the embedded default, needing no server.
//!
//! Small objects are written to a temporary name, fsynced and renamed; a multipart upload
//! writes `KEY.partial` at each part's offset and renames it at completion, so a reader never
//! sees a half-written object under its final name.
//!
//! It never follows a symbolic link inside the repository (a backup directory or an object
//! that is a link is refused by every command alike), and never reads or deletes through one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{ObjectInfo, PartBody, Repository, StoreError, Upload};

pub const PARTIAL_SUFFIX: &str = ".partial";

pub struct LocalRepo {
    root: PathBuf,
}

fn local(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Local { op, path, source }
}

impl LocalRepo {
    /// Open (and create, if missing) the repository directory.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(root).map_err(local("create the repository directory", root))?;
        let meta = fs::metadata(root).map_err(local("open the repository directory", root))?;
        if !meta.is_dir() {
            return Err(StoreError::Local {
                op: "use as a repository",
                path: root.to_path_buf(),
                source: io::Error::other("not a directory"),
            });
        }
        Ok(LocalRepo {
            root: root.to_path_buf(),
        })
    }

    /// Open a repository directory that must already exist.
    pub fn open_existing(root: &Path) -> Result<Self, StoreError> {
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => Ok(LocalRepo {
                root: root.to_path_buf(),
            }),
            Ok(_) => Err(StoreError::Local {
                op: "use as a repository",
                path: root.to_path_buf(),
                source: io::Error::other("not a directory"),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::Local {
                op: "open the repository",
                path: root.to_path_buf(),
                source: io::Error::other("no such directory (no backups were ever uploaded there)"),
            }),
            Err(e) => Err(local("open the repository directory", root)(e)),
        }
    }

    /// The file of a key. Keys are made by this program from checked ids; refuse anything
    /// that could leave the root all the same, and any symbolic link on the way (a backup
    /// directory linked to elsewhere is not part of the repository).
    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        if key.is_empty()
            || key.starts_with('/')
            || key
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(StoreError::Setup(format!("invalid key '{key}'")));
        }
        let mut p = self.root.clone();
        let mut exists = true;
        for c in key.split('/') {
            p.push(c);
            if !exists {
                continue;
            }
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(StoreError::Local {
                        op: "use",
                        path: p,
                        source: io::Error::other(SYMLINK_REFUSED),
                    })
                }
                Ok(_) => {}
                // Nothing further down exists: nothing to follow.
                Err(_) => exists = false,
            }
        }
        Ok(p)
    }
}

/// Why a symbolic link in the repository is refused.
pub const SYMLINK_REFUSED: &str =
    "a symbolic link: xbagent never follows, reads or deletes symbolic links in a repository";

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(local("fsync directory", dir))
}

/// `data` in a new temporary file in `dir`, mode 0644 and fsynced, ready to be put in place.
fn write_temp(dir: &Path, data: &[u8]) -> Result<tempfile::NamedTempFile, StoreError> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(local("create a temporary file in", dir))?;
    io::Write::write_all(&mut tmp, data).map_err(local("write", tmp.path()))?;
    // Readable like the stream object (a temporary file starts as 0600).
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(local("chmod", tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(local("fsync", tmp.path()))?;
    Ok(tmp)
}

fn parent(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("."))
}

impl Repository for LocalRepo {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let dir = parent(&path);
        fs::create_dir_all(dir).map_err(local("create directory", dir))?;
        let tmp = write_temp(dir, &data)?;
        tmp.persist(&path)
            .map_err(|e| local("rename into place", &path)(e.error))?;
        sync_dir(dir)
    }

    fn put_new(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        let dir = parent(&path);
        fs::create_dir_all(dir).map_err(local("create directory", dir))?;
        let tmp = write_temp(dir, &data)?;
        // A hard link appears whole and fails if the name is taken: the first writer wins and
        // no one overwrites it (the temporary name goes when `tmp` drops).
        match fs::hard_link(tmp.path(), &path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(local("create", &path)(e)),
        }
        drop(tmp);
        sync_dir(dir)?;
        Ok(true)
    }

    fn get(&self, key: &str, max: u64) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    key: key.into(),
                    repo: self.describe(),
                })
            }
            Err(e) => return Err(local("open", &path)(e)),
        };
        // Refused before reading a byte of it, when the file says it is too large.
        let len = f.metadata().map_err(local("stat", &path))?.len();
        if len > max {
            return Err(StoreError::Local {
                op: "read",
                path,
                source: io::Error::other(format!("{len} bytes, larger than {max}")),
            });
        }
        let mut buf = Vec::new();
        f.take(max + 1)
            .read_to_end(&mut buf)
            .map_err(local("read", &path))?;
        if buf.len() as u64 > max {
            return Err(StoreError::Local {
                op: "read",
                path,
                source: io::Error::other(format!("larger than {max} bytes")),
            });
        }
        Ok(buf.into())
    }

    fn read_range(&self, key: &str, start: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let f = File::open(&path).map_err(local("open", &path))?;
        f.read_exact_at(buf, start).map_err(local("read", &path))
    }

    fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let path = self.path(key)?;
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(local("stat", &path)(e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut out = Vec::new();
        walk(&self.root, "", &mut out, &mut Vec::new())?;
        out.retain(|o| o.key.starts_with(prefix));
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn refused(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut other = Vec::new();
        walk(&self.root, "", &mut Vec::new(), &mut other)?;
        other.retain(|k| k.starts_with(prefix) || prefix.starts_with(&format!("{k}/")));
        other.sort();
        Ok(other)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(local("delete", &path)(e)),
        }
        // An emptied backup directory goes too (a non-empty one stays: rmdir fails).
        let dir = parent(&path);
        if dir != self.root {
            let _ = fs::remove_dir(dir);
        }
        Ok(())
    }

    fn start_upload(&self, key: &str) -> Result<Box<dyn Upload>, StoreError> {
        let path = self.path(key)?;
        let dir = parent(&path).to_path_buf();
        fs::create_dir_all(&dir).map_err(local("create directory", &dir))?;
        let partial = PathBuf::from(format!("{}{PARTIAL_SUFFIX}", path.display()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(local("create", &partial))?;
        Ok(Box::new(LocalUpload {
            file,
            partial,
            path,
        }))
    }

    fn abort_unfinished(&self, prefix: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for o in self.list(prefix)? {
            if o.key.ends_with(PARTIAL_SUFFIX) {
                self.delete(&o.key)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Every regular file under `dir`, keys relative to the root, into `out`; symbolic links and
/// other non-regular files into `other` (never followed). Temporary files (`.tmp-*`) are
/// skipped.
fn walk(
    dir: &Path,
    rel: &str,
    out: &mut Vec<ObjectInfo>,
    other: &mut Vec<String>,
) -> Result<(), StoreError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(local("list", dir)(e)),
    };
    for entry in rd {
        let entry = entry.map_err(local("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(".tmp-") {
            continue;
        }
        let key = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let ft = entry.file_type().map_err(local("stat", &entry.path()))?;
        if ft.is_dir() {
            walk(&entry.path(), &key, out, other)?;
        } else if ft.is_file() {
            let meta = entry.metadata().map_err(local("stat", &entry.path()))?;
            out.push(ObjectInfo {
                key,
                size: meta.len(),
                modified: meta.modified().ok(),
            });
        } else {
            other.push(key);
        }
    }
    Ok(())
}

struct LocalUpload {
    file: File,
    partial: PathBuf,
    path: PathBuf,
}

impl Upload for LocalUpload {
    fn put_part(&self, _number: u32, offset: u64, body: &PartBody) -> Result<(), StoreError> {
        match body {
            PartBody::Memory(b) => self
                .file
                .write_all_at(b, offset)
                .map_err(local("write", &self.partial)),
            PartBody::Spooled { file, len } => {
                let mut src = file.reopen().map_err(local("reopen", file.path()))?;
                let mut buf = vec![0u8; 1 << 20];
                let mut done = 0u64;
                while done < *len {
                    let want = (*len - done).min(buf.len() as u64) as usize;
                    src.read_exact(&mut buf[..want])
                        .map_err(local("read", file.path()))?;
                    self.file
                        .write_all_at(&buf[..want], offset + done)
                        .map_err(local("write", &self.partial))?;
                    done += want as u64;
                }
                Ok(())
            }
        }
    }

    fn complete(&self, _parts: u32, size: u64) -> Result<(), StoreError> {
        let have = self
            .file
            .metadata()
            .map_err(local("stat", &self.partial))?
            .len();
        if have != size {
            return Err(StoreError::Local {
                op: "complete",
                path: self.partial.clone(),
                source: io::Error::other(format!("holds {have} bytes, expected {size}")),
            });
        }
        self.file
            .sync_all()
            .map_err(local("fsync", &self.partial))?;
        fs::rename(&self.partial, &self.path).map_err(local("rename into place", &self.path))?;
        sync_dir(parent(&self.path))
    }

    fn abort(&self) -> Result<(), StoreError> {
        match fs::remove_file(&self.partial) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(local("delete", &self.partial)(e)),
        }
    }
}
