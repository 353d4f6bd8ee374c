//! Large writes bypass the page cache (`O_DIRECT`).
//!
//! An extraction writes each byte once and does not read it back; through the page cache,
//! every byte of a multi-gigabyte restore is first copied into freshly allocated cache pages
//! (charged to the pod's memory cgroup on Kubernetes) and then written back by the kernel at
//! its own pace, throttling the writer once the dirty limit is reached. Written directly, the
//! data goes from one reused buffer to the disk: memory stays flat, the cache keeps what the
//! database host had in it, and the data is on the device when the command returns.
//!
//! Only the 4 KiB-aligned middle of a write of at least [`MIN_DIRECT`] bytes goes direct;
//! its unaligned head and tail, and small writes, use the page cache as before. A file
//! system that refuses `O_DIRECT` (EINVAL) turns it off for the rest of the run.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use rustix::fs::OFlags;

/// Offsets, lengths and buffer addresses of direct writes are multiples of this (the largest
/// logical block size in common use).
const ALIGN: usize = 4096;
/// Writes shorter than this go through the page cache.
pub const MIN_DIRECT: usize = 1 << 20;
/// The aligned buffer a direct write is copied into (stream payloads sit at arbitrary
/// addresses), written out in pieces of at most this size.
const BOUNCE: usize = 4 << 20;

/// Per writer thread: the aligned buffer and whether direct writes are on.
pub struct DirectWrites {
    enabled: bool,
    /// Allocated at the first direct write; `ALIGN` bytes longer than used, so that an
    /// aligned window of `BOUNCE` bytes always fits.
    buf: Vec<u8>,
}

impl DirectWrites {
    pub fn new(enabled: bool) -> Self {
        DirectWrites {
            enabled,
            buf: Vec::new(),
        }
    }

    /// Write all of `data` at `offset` of `file`. `direct` says whether the descriptor is in
    /// `O_DIRECT` mode now; it is switched as the pieces need.
    pub fn write_at(
        &mut self,
        file: &File,
        direct: &mut bool,
        data: &[u8],
        offset: u64,
    ) -> io::Result<()> {
        if !self.enabled || data.len() < MIN_DIRECT {
            set_direct(file, direct, false)?;
            return file.write_all_at(data, offset);
        }
        let head = ((ALIGN as u64 - offset % ALIGN as u64) % ALIGN as u64) as usize;
        let body = (data.len() - head) / ALIGN * ALIGN;
        if head > 0 {
            set_direct(file, direct, false)?;
            file.write_all_at(&data[..head], offset)?;
        }
        let done =
            self.write_aligned(file, direct, &data[head..head + body], offset + head as u64)?;
        // What the direct path did not write (all of it, if direct writes were refused).
        let rest = head + done;
        if rest < data.len() {
            set_direct(file, direct, false)?;
            file.write_all_at(&data[rest..], offset + rest as u64)?;
        }
        Ok(())
    }

    /// Write the aligned `data` at the aligned `offset` directly; returns how many bytes were
    /// written (fewer than asked only when direct writes turned out to be refused).
    fn write_aligned(
        &mut self,
        file: &File,
        direct: &mut bool,
        data: &[u8],
        offset: u64,
    ) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if let Err(e) = set_direct(file, direct, true) {
            return self.refused(e).map(|()| 0);
        }
        if self.buf.is_empty() {
            self.buf = vec![0u8; BOUNCE + ALIGN];
        }
        let at = self.buf.as_ptr().align_offset(ALIGN).min(ALIGN);
        let mut done = 0;
        while done < data.len() {
            let n = (data.len() - done).min(BOUNCE);
            let window = &mut self.buf[at..at + n];
            window.copy_from_slice(&data[done..done + n]);
            let mut put = 0;
            while put < n {
                match file.write_at(&window[put..], offset + (done + put) as u64) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    // A short direct write leaves an aligned remainder only if it stopped
                    // on a block boundary; otherwise the caller finishes through the cache.
                    Ok(k) if !(put + k).is_multiple_of(ALIGN) => return Ok(done + put + k),
                    Ok(k) => put += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                        return self.refused(e).map(|()| done + put);
                    }
                    Err(e) => return Err(e),
                }
            }
            done += n;
        }
        Ok(done)
    }

    /// Direct writes were refused by the file system: use the page cache from now on.
    fn refused(&mut self, e: io::Error) -> io::Result<()> {
        if e.raw_os_error() != Some(rustix::io::Errno::INVAL.raw_os_error()) {
            return Err(e);
        }
        tracing::debug!("direct writes refused by the file system ({e}); using the page cache");
        self.enabled = false;
        self.buf = Vec::new();
        Ok(())
    }
}

/// Put the descriptor in (or out of) `O_DIRECT` mode, if it is not already.
fn set_direct(file: &File, direct: &mut bool, on: bool) -> io::Result<()> {
    if *direct == on {
        return Ok(());
    }
    let flags = rustix::fs::fcntl_getfl(file)?;
    let flags = if on {
        flags | OFlags::DIRECT
    } else {
        flags - OFlags::DIRECT
    };
    rustix::fs::fcntl_setfl(file, flags)?;
    *direct = on;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    /// Whatever the alignment of offset and length, the file holds exactly the bytes written
    /// (whether the file system under the temp dir takes O_DIRECT or not).
    #[test]
    fn unaligned_heads_and_tails_land_where_they_belong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let f = File::create(&path).expect("create");
        let mut w = DirectWrites::new(true);
        let mut direct = false;
        let a = pattern(MIN_DIRECT + 12345);
        let b = pattern(BOUNCE * 2 + 4096 * 3 + 17);
        let c = pattern(100);
        w.write_at(&f, &mut direct, &a, 1000).expect("a");
        let b_at = 1000 + a.len() as u64;
        w.write_at(&f, &mut direct, &b, b_at).expect("b");
        let c_at = b_at + b.len() as u64;
        w.write_at(&f, &mut direct, &c, c_at).expect("c");
        drop(f);
        let mut got = Vec::new();
        File::open(&path)
            .expect("open")
            .read_to_end(&mut got)
            .expect("read");
        let mut want = vec![0u8; 1000];
        want.extend_from_slice(&a);
        want.extend_from_slice(&b);
        want.extend_from_slice(&c);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "file contents differ");
    }
}
