//! Path rules: which chunk paths name a file strictly inside the target directory.
//!
//! Every chunk kind carries a path, and `R` carries two; all of them pass through
//! [`check`] before anything touches the disk. The rules stop these attacks:
//! - absolute paths (`/etc/passwd`) would write anywhere;
//! - `..` components (`../x`, `a/../../x`) climb out of the target directory;
//! - `.` and empty components (`./../x`, `a//b`, a trailing `/`) are never written by a real
//!   producer and only serve to disguise the above, so they are refused outright;
//! - an empty path, or `.`, names the target directory itself (a `D` of it would wipe it);
//! - a NUL byte truncates the path in C tools, so the reference would act on another name.
//!
//! Symlinks are a property of the disk, not of the bytes; the extractor refuses to follow any
//! (see `extract::dir`).

/// Why a path was refused.
pub fn check(raw: &[u8]) -> Result<(), &'static str> {
    if raw.is_empty() {
        return Err("empty path");
    }
    if raw.contains(&0) {
        return Err("NUL byte in path");
    }
    if raw[0] == b'/' {
        return Err("absolute path");
    }
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" => return Err("empty path component (// or trailing /)"),
            b"." => return Err("'.' path component"),
            b".." => return Err("'..' path component"),
            _ => {}
        }
    }
    Ok(())
}

/// Components of a path that passed [`check`].
pub fn components(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    raw.split(|&b| b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        for p in [
            &b"ibdata1"[..],
            b"db/t1.ibd",
            b"a b/\xc3\xa9t\xc3\xa9.frm",
            b".hidden/x",
            b"a/..b/c..",
        ] {
            assert_eq!(check(p), Ok(()), "{:?}", String::from_utf8_lossy(p));
        }
    }

    #[test]
    fn refuses_every_escape_form() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty path"),
            (b".", "'.' path component"),
            (b"..", "'..' path component"),
            (b"../x", "'..' path component"),
            (b"a/../../x", "'..' path component"),
            (b"./../x", "'.' path component"),
            (b"/etc/passwd", "absolute path"),
            (b"a\0b", "NUL byte in path"),
            (b"a//b", "empty path component (// or trailing /)"),
            (b"a/", "empty path component (// or trailing /)"),
            (b"a/..", "'..' path component"),
        ];
        for (p, why) in cases {
            assert_eq!(check(p), Err(*why), "{:?}", String::from_utf8_lossy(p));
        }
    }
}
