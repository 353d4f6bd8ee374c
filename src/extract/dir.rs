//! Safe operations inside the target directory.
//!
//! Every path is resolved one component at a time from a descriptor of the target directory,
//! with `O_NOFOLLOW` on every step: a symlink anywhere on the way, even one pointing back
//! inside the directory, is refused, never followed. Together with the path rules of
//! [`crate::format::path`] (no absolute paths, no `..`), nothing outside the directory can be
//! created, changed or removed, whatever the stream says.

use std::collections::HashMap;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::error::{ExtractError, Result};
use crate::format::chunk_display_path as show;

/// Files are created 0640 and directories 0750 (the MySQL mysys defaults), minus the umask.
const FILE_MODE: u32 = 0o640;
const DIR_MODE: u32 = 0o750;
const DIR_CACHE_CAP: usize = 256;

fn os(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// The target directory: a descriptor and the name an operator knows it by.
#[derive(Debug)]
pub struct TargetDir {
    root: Arc<OwnedFd>,
    pub(crate) display: PathBuf,
    created_dirs: Arc<Mutex<HashSet<Vec<u8>>>>,
}

impl TargetDir {
    /// Open (creating if needed) the directory the operator named. The operator's own path
    /// may go through symlinks; only what lies below it is held to the no-follow rule.
    pub fn open(dir: &Path) -> Result<Self> {
        let err = |source| ExtractError::TargetDir {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let fd = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err(e.into()))?;
        Ok(TargetDir {
            root: Arc::new(fd),
            display: dir.to_path_buf(),
            created_dirs: Arc::default(),
        })
    }

    /// A resolver with its own cache of directory descriptors (one per thread).
    pub fn resolver(&self) -> Resolver {
        Resolver {
            root: self.root.clone(),
            display: self.display.clone(),
            cache: HashMap::new(),
            created_dirs: self.created_dirs.clone(),
        }
    }
}

/// Resolves stream paths to (parent directory descriptor, final name), creating directories
/// as needed, never following a symlink.
pub struct Resolver {
    root: Arc<OwnedFd>,
    display: PathBuf,
    cache: HashMap<Vec<u8>, Arc<OwnedFd>>,
    /// Directories this run created (shared by all threads): a remove or rename without
    /// `--force` may only touch what this run made.
    created_dirs: Arc<Mutex<HashSet<Vec<u8>>>>,
}

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create; an existing file is an error.
    CreateNew,
    /// Create, or truncate an existing regular file (--force, REWRITE).
    CreateOrTruncate,
    /// Reopen a file this run created (after it was pushed out of the open-file table).
    Reopen,
}

impl Resolver {
    /// The target directory as the operator named it.
    pub fn display(&self) -> &Path {
        &self.display
    }

    /// Forget cached directory descriptors (after a rename or removal changed the tree).
    pub fn clear(&mut self) {
        self.cache.clear();
    }

    fn split(path: &[u8]) -> (&[u8], &[u8]) {
        match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&b""[..], path),
        }
    }

    /// Descriptor of the directory holding `path`; `None` if it does not exist and `create` is
    /// off.
    fn parent(&mut self, path: &[u8], create: bool, offset: u64) -> Result<Option<Arc<OwnedFd>>> {
        let (dir, _) = Self::split(path);
        if dir.is_empty() {
            return Ok(Some(self.root.clone()));
        }
        if let Some(fd) = self.cache.get(dir) {
            return Ok(Some(fd.clone()));
        }
        let mut cur = self.root.clone();
        let mut end = 0;
        for comp in dir.split(|&b| b == b'/') {
            end += comp.len();
            let prefix = &dir[..end];
            end += 1; // the '/' after this component
            if let Some(fd) = self.cache.get(prefix) {
                cur = fd.clone();
                continue;
            }
            let next = match rustix::fs::openat(&*cur, os(comp), dir_flags(), Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&*cur, os(comp), Mode::from_raw_mode(DIR_MODE)) {
                        Ok(()) => {
                            self.created_dirs
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(prefix.to_vec());
                        }
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(self.target("create directory", prefix, offset, e)),
                    }
                    rustix::fs::openat(&*cur, os(comp), dir_flags(), Mode::empty())
                        .map_err(|e| self.not_followed(&cur, comp, prefix, path, offset, e))?
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(self.not_followed(&cur, comp, prefix, path, offset, e)),
            };
            let next = Arc::new(next);
            if self.cache.len() >= DIR_CACHE_CAP {
                self.cache.clear();
            }
            self.cache.insert(prefix.to_vec(), next.clone());
            cur = next;
        }
        Ok(Some(cur))
    }

    /// Turn a failed no-follow open into the error that says why.
    fn not_followed(
        &self,
        parent: &OwnedFd,
        name: &[u8],
        at: &[u8],
        path: &[u8],
        offset: u64,
        e: Errno,
    ) -> ExtractError {
        if matches!(e, Errno::LOOP | Errno::NOTDIR) {
            match rustix::fs::statat(parent, os(name), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                    return ExtractError::Symlink {
                        at: show(at),
                        path: show(path),
                        dir: self.display.clone(),
                        offset,
                    }
                }
                Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {
                    return ExtractError::NotADirectory {
                        at: show(at),
                        path: show(path),
                        dir: self.display.clone(),
                        offset,
                    }
                }
                _ => {}
            }
        }
        self.target("open directory", at, offset, e)
    }

    fn target(&self, op: &'static str, path: &[u8], offset: u64, e: Errno) -> ExtractError {
        ExtractError::Target {
            op,
            path: show(path),
            dir: self.display.clone(),
            offset,
            source: io::Error::from(e),
        }
    }

    /// Open a file for writing, per `mode`.
    pub fn open_file(&mut self, path: &[u8], mode: OpenMode, offset: u64) -> Result<File> {
        let parent = self
            .parent(path, mode != OpenMode::Reopen, offset)?
            .ok_or_else(|| self.target("reopen", path, offset, Errno::NOENT))?;
        let (_, name) = Self::split(path);
        // NONBLOCK: a FIFO planted in the target must not hang the open (it is refused below).
        let base = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fmode = Mode::from_raw_mode(FILE_MODE);
        let res = match mode {
            OpenMode::Reopen => rustix::fs::openat(&*parent, os(name), base, fmode),
            _ => rustix::fs::openat(
                &*parent,
                os(name),
                base | OFlags::CREATE | OFlags::EXCL,
                fmode,
            ),
        };
        let fd = match res {
            Ok(fd) => fd,
            Err(Errno::EXIST) if mode == OpenMode::CreateOrTruncate => {
                // Replace the name, never write into the existing inode: it may be a hard
                // link to a file outside the target. Only a regular file is replaced.
                match rustix::fs::statat(&*parent, os(name), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {}
                    _ => return Err(self.file_error(&parent, name, path, offset, Errno::EXIST)),
                }
                rustix::fs::unlinkat(&*parent, os(name), AtFlags::empty())
                    .map_err(|e| self.target("replace", path, offset, e))?;
                rustix::fs::openat(
                    &*parent,
                    os(name),
                    base | OFlags::CREATE | OFlags::EXCL,
                    fmode,
                )
                .map_err(|e| self.file_error(&parent, name, path, offset, e))?
            }
            Err(e) => return Err(self.file_error(&parent, name, path, offset, e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| self.target("open", path, offset, e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(self.target("open", path, offset, Errno::INVAL));
        }
        Ok(File::from(fd))
    }

    fn file_error(
        &self,
        parent: &OwnedFd,
        name: &[u8],
        path: &[u8],
        offset: u64,
        e: Errno,
    ) -> ExtractError {
        let is_link = rustix::fs::statat(parent, os(name), AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
            .unwrap_or(false);
        if is_link {
            return ExtractError::Symlink {
                at: show(path),
                path: show(path),
                dir: self.display.clone(),
                offset,
            };
        }
        let is_regular = rustix::fs::statat(parent, os(name), AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
            .unwrap_or(true);
        if e == Errno::EXIST && !is_regular {
            return ExtractError::NotRegular {
                path: show(path),
                dir: self.display.clone(),
                offset,
            };
        }
        if e == Errno::EXIST {
            return ExtractError::Exists {
                path: show(path),
                dir: self.display.clone(),
                offset,
            };
        }
        self.target("create", path, offset, e)
    }

    /// Whether `path` exists in the target (not following a final symlink).
    pub fn exists(&mut self, path: &[u8], offset: u64) -> Result<bool> {
        let Some(parent) = self.parent(path, false, offset)? else {
            return Ok(false);
        };
        let (_, name) = Self::split(path);
        match rustix::fs::statat(&*parent, os(name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(self.target("inspect", path, offset, e)),
        }
    }

    /// Whether this run created the directory `path`.
    pub fn created_dir(&self, path: &[u8]) -> bool {
        self.created_dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(path)
    }

    /// Keep the record of created directories in step with a rename or removal.
    fn move_created(&self, from: &[u8], to: Option<&[u8]>) {
        let mut set = self.created_dirs.lock().unwrap_or_else(|p| p.into_inner());
        let moved: Vec<Vec<u8>> = set
            .iter()
            .filter(|p| p[..] == *from || crate::format::is_below(p, from))
            .cloned()
            .collect();
        for p in moved {
            set.remove(&p);
            if let Some(to) = to {
                set.insert([to, &p[from.len()..]].concat());
            }
        }
    }

    /// `D`: remove `path` and everything below it. A missing path is not an error (the
    /// reference ignores it too); a symlink is removed as a link, never followed.
    pub fn remove(&mut self, path: &[u8], offset: u64) -> Result<()> {
        let Some(parent) = self.parent(path, false, offset)? else {
            return Ok(());
        };
        let (_, name) = Self::split(path);
        let st = match rustix::fs::statat(&*parent, os(name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(self.target("remove", path, offset, e)),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let fd = rustix::fs::openat(&*parent, os(name), dir_flags(), Mode::empty())
                .map_err(|e| self.target("remove", path, offset, e))?;
            remove_contents(fd).map_err(|e| self.target("remove", path, offset, e))?;
            rustix::fs::unlinkat(&*parent, os(name), AtFlags::REMOVEDIR)
        } else {
            rustix::fs::unlinkat(&*parent, os(name), AtFlags::empty())
        }
        .map_err(|e| self.target("remove", path, offset, e))?;
        self.move_created(path, None);
        self.clear();
        Ok(())
    }

    /// `R`: rename `from` to `to` (parents of `to` created as needed). A missing source is
    /// skipped, as the reference skips it: real DDL backups name many files that were never
    /// sent (mariabackup replays the server's DDL log), so this is only a debug message.
    pub fn rename(&mut self, from: &[u8], to: &[u8], offset: u64) -> Result<()> {
        let Some(src_parent) = self.parent(from, false, offset)? else {
            tracing::debug!("rename source '{}' does not exist; skipped", show(from));
            return Ok(());
        };
        let (_, src_name) = Self::split(from);
        match rustix::fs::statat(&*src_parent, os(src_name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => {}
            Err(Errno::NOENT) => {
                tracing::debug!("rename source '{}' does not exist; skipped", show(from));
                return Ok(());
            }
            Err(e) => return Err(self.target("rename", from, offset, e)),
        }
        let dst_parent = self
            .parent(to, true, offset)?
            .ok_or_else(|| self.target("rename", to, offset, Errno::NOENT))?;
        let (_, dst_name) = Self::split(to);
        rustix::fs::renameat(&*src_parent, os(src_name), &*dst_parent, os(dst_name))
            .map_err(|e| self.target("rename", from, offset, e))?;
        self.move_created(from, Some(to));
        self.clear();
        Ok(())
    }

    /// fsync every directory this resolver has open (after the files were synced).
    pub fn sync_dirs(&self) -> io::Result<()> {
        for fd in self.cache.values() {
            rustix::fs::fsync(fd.as_fd())?;
        }
        rustix::fs::fsync(self.root.as_fd())?;
        Ok(())
    }
}

/// Remove everything inside a directory, never following symlinks.
fn remove_contents(fd: OwnedFd) -> rustix::io::Result<()> {
    let mut names = Vec::new();
    {
        for entry in rustix::fs::Dir::read_from(&fd)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            names.push((name.to_vec(), entry.file_type()));
        }
    }
    for (name, ft) in names {
        let ft = if ft == FileType::Unknown {
            let st = rustix::fs::statat(&fd, os(&name), AtFlags::SYMLINK_NOFOLLOW)?;
            FileType::from_raw_mode(st.st_mode)
        } else {
            ft
        };
        if ft == FileType::Directory {
            let child = rustix::fs::openat(&fd, os(&name), dir_flags(), Mode::empty())?;
            remove_contents(child)?;
            rustix::fs::unlinkat(&fd, os(&name), AtFlags::REMOVEDIR)?;
        } else {
            rustix::fs::unlinkat(&fd, os(&name), AtFlags::empty())?;
        }
    }
    Ok(())
}
