//! The directory walker behind `create`: which files go into the stream, under which names.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::error::{CreateError, Result};
use crate::format::{path as path_rules, MAX_PATH_LEN};

/// One regular file to stream.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub fs_path: PathBuf,
    /// Its name in the stream: relative, `/`-separated.
    pub stream_path: Vec<u8>,
    pub size: u64,
}

/// The stream name of an operator's argument: `./` and `.` dropped, a leading `/` removed
/// (with a warning, as tar does), `..` refused (the name could not be extracted safely).
fn stream_name(arg: &Path) -> Result<Vec<u8>> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in arg.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => {
                tracing::warn!("removing leading '/' from '{}'", arg.display())
            }
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(CreateError::Source {
                    path: arg.to_path_buf(),
                    reason: "'..' in a path: give paths inside the -C directory".into(),
                })
            }
            Component::Normal(n) => parts.push(n.as_bytes()),
        }
    }
    Ok(parts.join(&b'/'))
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

pub(super) fn source_err(path: &Path, e: impl ToString) -> CreateError {
    CreateError::Source {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Every regular file under the given paths (relative to `base`), in stream order.
pub fn walk(base: &Path, args: &[PathBuf]) -> Result<Vec<SourceFile>> {
    let mut out = Vec::new();
    for arg in args {
        let fs_path = base.join(arg);
        let name = stream_name(arg)?;
        // The operator's own argument may be a symlink; nothing below it is followed.
        let md = fs::metadata(&fs_path).map_err(|e| source_err(&fs_path, e))?;
        if md.is_dir() {
            walk_dir(&fs_path, &name, &mut out)?;
        } else if md.is_file() {
            push_file(fs_path, name, md.len(), &mut out)?;
        } else {
            return Err(source_err(&fs_path, "not a regular file or directory"));
        }
    }
    Ok(out)
}

fn push_file(fs_path: PathBuf, name: Vec<u8>, size: u64, out: &mut Vec<SourceFile>) -> Result<()> {
    if name.len() > MAX_PATH_LEN {
        return Err(source_err(
            &fs_path,
            format!(
                "stream path is {} bytes, above the limit of {MAX_PATH_LEN}",
                name.len()
            ),
        ));
    }
    if let Err(why) = path_rules::check(&name) {
        return Err(source_err(
            &fs_path,
            format!("cannot be named in a stream: {why}"),
        ));
    }
    out.push(SourceFile {
        fs_path,
        stream_path: name,
        size,
    });
    Ok(())
}

fn walk_dir(dir: &Path, name: &[u8], out: &mut Vec<SourceFile>) -> Result<()> {
    let mut entries = fs::read_dir(dir)
        .map_err(|e| source_err(dir, e))?
        .map(|e| e.map_err(|e| source_err(dir, e)))
        .collect::<Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    let mut subdirs = Vec::new();
    for e in entries {
        let p = e.path();
        let ft = e.file_type().map_err(|err| source_err(&p, err))?;
        let child = join(name, e.file_name().as_bytes());
        if ft.is_file() {
            let size = e.metadata().map_err(|err| source_err(&p, err))?.len();
            push_file(p, child, size, out)?;
        } else if ft.is_dir() {
            subdirs.push((p, child));
        } else {
            tracing::warn!(
                "skipping '{}': not a regular file or directory",
                p.display()
            );
        }
    }
    for (p, child) in subdirs {
        walk_dir(&p, &child, out)?;
    }
    Ok(())
}
