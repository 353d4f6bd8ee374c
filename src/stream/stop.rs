//! A reader or writer that fails once a stop flag is raised (SIGINT or SIGTERM), so that a
//! command reading or writing a stream stops at its next read or write instead of at the end
//! of its input.
//!
//! It only refuses further work: it never blocks, and it cannot wake a read or write that is
//! already waiting (on a silent pipe or socket). The command that raises the flag must bound
//! that wait itself (the binary's signal watcher exits the process if the command has not
//! stopped soon after the signal).

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `inner`, refusing every read and write once `flag` is set.
pub struct Stoppable<T> {
    inner: T,
    flag: Arc<AtomicBool>,
}

impl<T> Stoppable<T> {
    pub fn new(inner: T, flag: Arc<AtomicBool>) -> Self {
        Stoppable { inner, flag }
    }

    fn check(&self) -> io::Result<()> {
        if self.flag.load(Ordering::SeqCst) {
            // Not ErrorKind::Interrupted: readers retry that one.
            Err(io::Error::other(STOPPED))
        } else {
            Ok(())
        }
    }
}

/// The error of a read or write refused after the stop flag was raised.
pub const STOPPED: &str = "stopped by a signal";

impl<R: Read> Read for Stoppable<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check()?;
        self.inner.read(buf)
    }
}

impl<W: Write> Write for Stoppable<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_fail_once_the_flag_is_raised() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut r = Stoppable::new(&b"abcdef"[..], flag.clone());
        let mut buf = [0u8; 3];
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        let mut w = Stoppable::new(Vec::new(), flag.clone());
        w.write_all(b"xy").unwrap();
        flag.store(true, Ordering::SeqCst);
        let e = r.read(&mut buf).unwrap_err();
        assert_ne!(e.kind(), io::ErrorKind::Interrupted);
        assert_eq!(e.to_string(), STOPPED);
        assert!(w.write(b"z").is_err());
        assert_eq!(w.inner, b"xy");
    }
}
