//! Operational figures of the long-running commands (`serve`, `binlogs push --follow`): plain
//! atomic counters and gauges that the library updates as it works, and a heartbeat and a
//! readiness flag for the probes.
//!
//! Nothing here does I/O or knows an exposition format: the binary owns the Prometheus
//! registry and the HTTP server (`--metrics-listen`) and reads [`ServeMetrics::figures`] /
//! [`PushMetrics::figures`] at each scrape. Updating a figure never blocks and never fails, so
//! the code that reports cannot be slowed by whoever reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// When a command's main loop last went round, on the monotonic clock: the liveness probe
/// reads its age.
#[derive(Debug)]
pub struct Heartbeat {
    base: Instant,
    /// Milliseconds from `base` to the last beat.
    last_ms: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Heartbeat {
    pub fn beat(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last beat (since creation, if none).
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

/// What `serve` reports.
#[derive(Debug, Default)]
pub struct ServeMetrics {
    served: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    handshakes_failed: AtomicU64,
    bytes_sent: AtomicU64,
    /// Duration of the last clone served, in microseconds.
    last_clone_us: AtomicU64,
    /// Connections admitted and not yet closed.
    open: AtomicU64,
    /// Of those, clones streaming (they hold a `--max-conns` slot).
    running: AtomicU64,
    ready: AtomicBool,
    pub heartbeat: Heartbeat,
}

/// One reading of [`ServeMetrics`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServeFigures {
    /// Clones that ended with their trailer: the source exited 0 and wrote files.
    pub served: u64,
    /// Clones that authenticated but did not end that way (source failed or wrote nothing,
    /// defective stream, receiver gone, shutdown).
    pub failed: u64,
    /// Peers refused at authentication: wrong or missing token, or an address sitting out
    /// its wait after failing too often.
    pub refused: u64,
    /// Connections closed before authentication for anything else: timeout, junk, TLS
    /// failure, eviction, or turned away at accept (too many handshakes in flight).
    pub handshakes_failed: u64,
    /// Stream bytes sent to receivers (the xbstream bytes, without the clone protocol's
    /// framing), counted as they leave.
    pub bytes_sent: u64,
    /// Seconds the last clone served took, from its slot to its trailer; 0 before the first.
    pub last_clone_seconds: f64,
    /// Connections in their handshake or waiting for a slot.
    pub queued: u64,
    /// Clones streaming now.
    pub running: u64,
    /// The listener is bound (and the token loaded) and serve is not shutting down.
    pub ready: bool,
}

impl ServeMetrics {
    pub fn figures(&self) -> ServeFigures {
        let running = self.running.load(Ordering::Relaxed);
        let open = self.open.load(Ordering::Relaxed);
        ServeFigures {
            served: self.served.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            handshakes_failed: self.handshakes_failed.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            last_clone_seconds: self.last_clone_us.load(Ordering::Relaxed) as f64 / 1e6,
            // The two are read one after the other: never let a clone starting in between
            // show as a negative queue.
            queued: open.saturating_sub(running),
            running,
            ready: self.ready.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub(crate) fn sent(&self, n: u64) {
        self.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn ended(&self, how: SessionEnd) {
        let c = match how {
            SessionEnd::Served(took) => {
                let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                // A clone shorter than a microsecond still shows that it was measured.
                self.last_clone_us.store(us.max(1), Ordering::Relaxed);
                &self.served
            }
            SessionEnd::Failed => &self.failed,
            SessionEnd::Refused => &self.refused,
            SessionEnd::HandshakeFailed => &self.handshakes_failed,
            SessionEnd::NotStarted => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection as open until the guard is dropped.
    pub(crate) fn open(&self) -> Held<'_> {
        Held::new(&self.open)
    }

    /// Counts a clone as running until the guard is dropped.
    pub(crate) fn running(&self) -> Held<'_> {
        Held::new(&self.running)
    }
}

/// How one connection to `serve` ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SessionEnd {
    Served(Duration),
    Failed,
    Refused,
    HandshakeFailed,
    /// Closed by a shutdown before it authenticated: none of the above.
    NotStarted,
}

/// One more in a gauge while it lives.
pub(crate) struct Held<'a>(&'a AtomicU64);

impl<'a> Held<'a> {
    fn new(g: &'a AtomicU64) -> Self {
        g.fetch_add(1, Ordering::Relaxed);
        Held(g)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What `binlogs push` reports.
#[derive(Debug, Default)]
pub struct PushMetrics {
    /// Unix seconds; 0: none yet.
    last_event: AtomicU64,
    /// Unix seconds of the oldest transaction read but not yet archived; 0: none.
    oldest_unarchived: AtomicU64,
    bytes: AtomicU64,
    segments: AtomicU64,
    ready: AtomicBool,
    pub heartbeat: Heartbeat,
}

/// One reading of [`PushMetrics`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PushFigures {
    /// Commit time (the binlog's timestamp, unix seconds) of the newest transaction in the
    /// archive: stored by this run, or found in the archive when it started.
    pub last_event_time: Option<u64>,
    /// Commit time of the oldest transaction the push has read from the server's files and not
    /// yet stored, as of its last look at them; `None` when it has stored all it has read.
    pub oldest_unarchived_time: Option<u64>,
    /// Bytes this run stored (segment objects as stored: sealed size when sealed).
    pub bytes: u64,
    /// Segments this run stored.
    pub segments: u64,
    /// The index was read and the first pass over the server's files, with its checks of
    /// where the archive ends, succeeded.
    pub ready: bool,
}

impl PushFigures {
    /// Seconds the archive is behind: `now` minus the commit time of the oldest transaction
    /// read and not yet stored; 0 when every transaction read is stored (caught up). A
    /// transaction committed since the push last looked (at most one poll, 2 s) is not counted
    /// yet.
    pub fn lag_seconds(&self, now: u64) -> u64 {
        self.oldest_unarchived_time
            .map_or(0, |t| now.saturating_sub(t))
    }
}

fn nonzero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

impl PushMetrics {
    pub fn figures(&self) -> PushFigures {
        PushFigures {
            last_event_time: nonzero(self.last_event.load(Ordering::Relaxed)),
            oldest_unarchived_time: nonzero(self.oldest_unarchived.load(Ordering::Relaxed)),
            bytes: self.bytes.load(Ordering::Relaxed),
            segments: self.segments.load(Ordering::Relaxed),
            ready: self.ready.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub(crate) fn stored(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A segment was entered; `last_time` is its last transaction's commit time, if any.
    pub(crate) fn entered(&self, last_time: Option<u32>) {
        self.segments.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = last_time {
            self.last_event.fetch_max(u64::from(t), Ordering::Relaxed);
        }
    }

    pub(crate) fn archived_up_to(&self, last_time: Option<u32>) {
        if let Some(t) = last_time {
            self.last_event.fetch_max(u64::from(t), Ordering::Relaxed);
        }
    }

    pub(crate) fn set_oldest_unarchived(&self, t: Option<u32>) {
        let v = t.map_or(0, |t| u64::from(t).max(1));
        self.oldest_unarchived.store(v, Ordering::Relaxed);
    }
}

/// Now, in unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_is_open_connections_not_streaming() {
        let m = ServeMetrics::default();
        let a = m.open();
        let b = m.open();
        let r = m.running();
        assert_eq!((m.figures().queued, m.figures().running), (1, 1));
        drop(r);
        drop(a);
        drop(b);
        assert_eq!((m.figures().queued, m.figures().running), (0, 0));
    }

    #[test]
    fn lag_is_zero_when_caught_up_and_age_of_oldest_unarchived_otherwise() {
        let m = PushMetrics::default();
        m.set_oldest_unarchived(Some(1_000));
        assert_eq!(m.figures().lag_seconds(1_007), 7);
        m.set_oldest_unarchived(None);
        assert_eq!(m.figures().lag_seconds(1_007), 0);
    }

    #[test]
    fn last_event_time_never_goes_back() {
        let m = PushMetrics::default();
        m.entered(Some(50));
        m.archived_up_to(Some(40));
        m.entered(None);
        assert_eq!(m.figures().last_event_time, Some(50));
        assert_eq!(m.figures().segments, 2);
    }
}
