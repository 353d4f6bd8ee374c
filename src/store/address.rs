//! Repository addresses (`s3://bucket/prefix`, `file:///dir`, a plain path) and backup ids.

use std::path::PathBuf;
use std::time::SystemTime;

use super::StoreError;

/// Where a repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoAddress {
    Local(PathBuf),
    /// `prefix` has no leading or trailing `/`; it may be empty.
    S3 {
        bucket: String,
        prefix: String,
    },
}

/// Which backup of a repository an address names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupRef {
    Latest,
    Id(String),
}

impl RepoAddress {
    /// Parse `REPO`, with no `@ID` suffix.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::Address {
            address: s.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.len() < 3
                || bucket.len() > 63
                || !bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            {
                return Err(bad(
                    "the bucket name must be 3 to 63 characters of a-z, 0-9, '-' and '.'",
                ));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|c| c == "." || c == "..")
                || prefix.contains("//")
                || prefix.contains('\0')
            {
                return Err(bad(
                    "the prefix may not contain '.', '..' or empty components",
                ));
            }
            return Ok(RepoAddress::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if let Some(rest) = s.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad("a file:// URL needs an absolute path (file:///dir)"));
            }
            return Ok(RepoAddress::Local(PathBuf::from(rest)));
        }
        if s.contains("://") {
            return Err(bad(
                "unknown scheme: use s3://bucket/prefix, file:///dir or a path",
            ));
        }
        if s.is_empty() {
            return Err(bad("empty"));
        }
        Ok(RepoAddress::Local(PathBuf::from(s)))
    }

    /// Parse `REPO[@ID|@latest]`. A suffix that is neither `latest` nor a valid id stays part
    /// of the address (a directory may have `@` in its name).
    pub fn parse_with_backup(s: &str) -> Result<(Self, Option<BackupRef>), StoreError> {
        if let Some((repo, tail)) = s.rsplit_once('@') {
            if tail == "latest" {
                return Ok((Self::parse(repo)?, Some(BackupRef::Latest)));
            }
            if is_valid_id(tail) {
                return Ok((Self::parse(repo)?, Some(BackupRef::Id(tail.to_string()))));
            }
        }
        Ok((Self::parse(s)?, None))
    }

    /// Whether `s` names a repository rather than a stream file: an `s3://` or `file://` URL,
    /// or an existing directory.
    pub fn looks_like_repository(s: &str) -> bool {
        if s.starts_with("s3://") || s.starts_with("file://") {
            return true;
        }
        let path = match s.rsplit_once('@') {
            Some((p, t)) if t == "latest" || is_valid_id(t) => p,
            _ => s,
        };
        std::path::Path::new(path).is_dir()
    }
}

/// Length of an id: `YYYYMMDDTHHMMSS.mmmZ`.
const ID_LEN: usize = 20;

/// The id of a backup started at `t`: its UTC time to the millisecond, `20261127T051149.123Z`.
/// Ids sort in time order.
pub fn id_for(t: SystemTime) -> String {
    // humantime gives `2026-11-27T05:11:49.123Z`; drop the separators.
    humantime::format_rfc3339_millis(t)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

/// Whether `s` has the shape of an id (and so is safe as a key component).
pub fn is_valid_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == ID_LEN
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'.'
        && b[16..19].iter().all(u8::is_ascii_digit)
        && b[19] == b'Z'
        && id_time(s).is_some()
}

/// The time an id stands for.
pub fn id_time(s: &str) -> Option<SystemTime> {
    let b = s.get(..ID_LEN)?;
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        b.get(0..4)?,
        b.get(4..6)?,
        b.get(6..8)?,
        b.get(9..11)?,
        b.get(11..13)?,
        b.get(13..19)?
    );
    humantime::parse_rfc3339(&rfc).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn addresses() {
        assert_eq!(
            RepoAddress::parse("s3://my-bucket/a/b/").unwrap(),
            RepoAddress::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            RepoAddress::parse("s3://bkt").unwrap(),
            RepoAddress::S3 {
                bucket: "bkt".into(),
                prefix: "".into()
            }
        );
        assert!(RepoAddress::parse("s3://B/x").is_err());
        assert!(RepoAddress::parse("s3://bkt/a/../b").is_err());
        assert!(RepoAddress::parse("http://x").is_err());
        assert!(RepoAddress::parse("file://rel").is_err());
        assert_eq!(
            RepoAddress::parse("file:///srv/backups").unwrap(),
            RepoAddress::Local("/srv/backups".into())
        );
        assert_eq!(
            RepoAddress::parse("backups").unwrap(),
            RepoAddress::Local("backups".into())
        );
    }

    #[test]
    fn backup_suffix() {
        let (a, r) = RepoAddress::parse_with_backup("s3://bkt/p@latest").unwrap();
        assert_eq!(r, Some(BackupRef::Latest));
        assert!(matches!(a, RepoAddress::S3 { .. }));
        let (_, r) = RepoAddress::parse_with_backup("/b@20261127T051149.123Z").unwrap();
        assert_eq!(r, Some(BackupRef::Id("20261127T051149.123Z".into())));
        let (a, r) = RepoAddress::parse_with_backup("/b@home").unwrap();
        assert_eq!(r, None);
        assert_eq!(a, RepoAddress::Local("/b@home".into()));
    }

    #[test]
    fn ids_round_trip_and_sort() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_756_309_123);
        let id = id_for(t);
        assert_eq!(id.len(), ID_LEN);
        assert!(is_valid_id(&id), "{id}");
        assert_eq!(id_time(&id), Some(t));
        let later = id_for(t + Duration::from_millis(1));
        assert!(later > id);
        assert!(!is_valid_id("20261327T051149.123Z"));
        assert!(!is_valid_id("../../etc/passwd..Z"));
        assert!(!is_valid_id("20261127T051149.123"));
    }
}
