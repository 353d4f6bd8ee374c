//! Reading one archived segment back, clear or sealed, in pieces of bounded size: the one
//! loop behind the point-in-time fetch and `verify REPO`. The server's bytes are handed on in
//! order and their BLAKE3 checked against the entry; a sealed segment is opened with the
//! identities as it is read (every 64 KiB chunk authenticated), never held whole.

use std::sync::atomic::{AtomicBool, Ordering};

use super::inventory::{SealedSegment, Segment};
use super::layout;
use crate::store::seal::{self, Identities, OpenError, RangeError, RangeOpener};
use crate::store::{Repository, StoreError};

/// Why a segment could not be read back.
#[derive(Debug)]
pub enum SegmentError<E> {
    Store(StoreError),
    Missing,
    /// Altered, cut, or not what its entry says.
    Damaged(String),
    /// Sealed, and no identity was given.
    NeedsIdentity {
        recipients: String,
    },
    /// Sealed for others.
    NoIdentity {
        recipients: String,
        tried: String,
    },
    /// The consumer refused a piece.
    Piece(E),
    Interrupted,
}

impl<E: std::fmt::Display> SegmentError<E> {
    /// A message naming the object.
    pub fn describe(&self, key: &str) -> String {
        match self {
            SegmentError::Store(e) => e.to_string(),
            SegmentError::Missing => format!("{key} is missing"),
            SegmentError::Damaged(r) => format!("{key}: {r}"),
            SegmentError::NeedsIdentity { recipients } => format!(
                "{key} is encrypted (for {recipients}): give --identity-file with the identity of one of these recipients"
            ),
            SegmentError::NoIdentity { recipients, tried } => format!(
                "no identity given opens {key}: it was sealed for {recipients}; the identities given are for {tried}"
            ),
            SegmentError::Piece(e) => format!("{key}: {e}"),
            SegmentError::Interrupted => "interrupted".into(),
        }
    }
}

fn store_err<E>(e: StoreError) -> SegmentError<E> {
    match e {
        StoreError::NotFound { .. } => SegmentError::Missing,
        e => SegmentError::Store(e),
    }
}

/// Read segment `seg` of file `file_id` through `piece`, `buf.len()` bytes at a time, and check
/// the server's bytes' digest against the entry.
pub fn read<E>(
    repo: &dyn Repository,
    seg: &Segment,
    ids: &Identities,
    buf: &mut [u8],
    stop: &AtomicBool,
    piece: &mut dyn FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), SegmentError<E>> {
    let key = layout::segment_data(&seg.file_id, seg.start);
    let mut hasher = blake3::Hasher::new();
    // A sealed segment is opened by ranges as it is read, like a backup's stream object.
    let mut opener = match &seg.sealed {
        None => None,
        Some(sealed) => Some(open_sealed(repo, seg, sealed, &key, ids, buf.len() as u64)?),
    };
    let mut at = 0;
    while at < seg.len() {
        if stop.load(Ordering::Relaxed) {
            return Err(SegmentError::Interrupted);
        }
        let n = (seg.len() - at).min(buf.len() as u64) as usize;
        match &mut opener {
            None => repo
                .read_range(&key, at, &mut buf[..n])
                .map_err(store_err)?,
            Some(o) => o.read_at(at, &mut buf[..n]).map_err(|e| match e {
                RangeError::Store(se) => store_err(se),
                RangeError::Damaged(r) => SegmentError::Damaged(r),
            })?,
        }
        hasher.update(&buf[..n]);
        piece(&buf[..n]).map_err(SegmentError::Piece)?;
        at += n as u64;
    }
    let digest = hasher.finalize().to_hex().to_string();
    if digest != seg.blake3 {
        return Err(SegmentError::Damaged(format!(
            "its BLAKE3 is {digest}, its inventory entry says {}",
            seg.blake3
        )));
    }
    Ok(())
}

/// Open a sealed segment: its stored size against the entry, its header, and whether that
/// size holds exactly the segment's bytes; then a ranged reader with the identities.
fn open_sealed<'a, E>(
    repo: &'a dyn Repository,
    seg: &Segment,
    sealed: &SealedSegment,
    key: &'a str,
    ids: &Identities,
    window: u64,
) -> Result<RangeOpener<'a>, SegmentError<E>> {
    let recipients = seal::describe(&sealed.recipients);
    if ids.is_empty() {
        return Err(SegmentError::NeedsIdentity { recipients });
    }
    match repo.size(key).map_err(store_err)? {
        Some(s) if s == sealed.size => {}
        Some(s) => {
            return Err(SegmentError::Damaged(format!(
                "it has {s} bytes, its inventory entry says {}",
                sealed.size
            )))
        }
        None => return Err(SegmentError::Missing),
    }
    let prefix = repo
        .get_range(key, 0, sealed.size.min(seal::MAX_HEADER))
        .map_err(store_err)?;
    let header = seal::header_len(&prefix).map_err(|e| SegmentError::Damaged(e.to_string()))?;
    if seal::plain_len(header, sealed.size) != Some(seg.len()) {
        return Err(SegmentError::Damaged(format!(
            "its {} sealed bytes cannot hold the {} its entry gives",
            sealed.size,
            seg.len()
        )));
    }
    let mut prefix = prefix.to_vec();
    prefix.truncate(header as usize + 16);
    RangeOpener::new(
        ids,
        repo,
        key,
        sealed.size,
        prefix,
        window / seal::CHUNK * seal::SEALED_CHUNK,
    )
    .map_err(|e| match e {
        OpenError::NoMatch => SegmentError::NoIdentity {
            recipients,
            tried: seal::describe(&ids.recipients()),
        },
        OpenError::Damaged(r) => SegmentError::Damaged(r),
    })
}
