//! The one checked pump: run a source, check every piece of its stream, digest it, hand it on,
//! and collect the producer's exit status. `serve` forwards to a network peer with it, `upload`
//! fills multipart parts with it.
//!
//! ```text
//!  Running source --piece--> StreamChecker --> blake3 (if asked) --> Forward::forward
//!        ^                                                                  |
//!        +----------------------- buffer recycled -------------------------+
//!  silence longer than `idle`  --> Forward::idle (e.g. a heartbeat)
//!  defect, read error, consumer error, signal --> Forward::abort, then the source is stopped
//! ```
//!
//! The pump decides nothing about what an outcome means: a non-zero exit status or a stream
//! the checker rejects at its end is reported in [`Pumped`], and the caller decides (serve
//! tells its peer in a trailer, upload refuses the backup). It never writes anywhere itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

use crate::format::Ledger;
use crate::stream::check::StreamChecker;
use crate::stream::error::StreamError;
use crate::stream::sink::StreamTotals;
use crate::stream::source::{Piece, Running, Source, SourceError};
use crate::throttle::{RateLimit, Throttle};

/// How to run the source and when to call the consumer between pieces.
#[derive(Debug, Clone)]
pub struct PumpSettings {
    /// Parallel readers for a directory source.
    pub parallel: usize,
    /// Spare bytes in front of each piece (room for a frame header, see
    /// [`CheckedPiece::with_header`]).
    pub headroom: usize,
    /// Most bytes read from the source at once.
    pub piece: usize,
    /// How long the source may be silent before [`Forward::idle`] is called.
    pub idle: Duration,
    /// Compute the blake3 digest of the stream's bytes ([`Pumped::digest`]).
    pub digest: bool,
    /// Hand the bytes on no faster than this (`--rate-limit`); each run gets a fresh bucket.
    pub rate_limit: Option<RateLimit>,
}

/// Stream bytes that the checker has seen, in a buffer with room in front of them.
pub struct CheckedPiece<'a> {
    buf: &'a mut [u8],
    headroom: usize,
    len: usize,
}

impl CheckedPiece<'_> {
    /// The stream's bytes (may be empty: a read interrupted by a signal).
    pub fn data(&self) -> &[u8] {
        &self.buf[self.headroom..self.headroom + self.len]
    }

    /// `header` written into the room just in front of the data, and the two as one slice, so
    /// that both leave in one write. `header` must fit the pump's `headroom`.
    pub fn with_header(&mut self, header: &[u8]) -> &[u8] {
        assert!(
            header.len() <= self.headroom,
            "frame header exceeds the headroom"
        );
        let start = self.headroom - header.len();
        self.buf[start..self.headroom].copy_from_slice(header);
        &self.buf[start..self.headroom + self.len]
    }
}

/// Where the checked bytes go: the network writer in serve, the part filler in upload.
pub trait Forward {
    type Error;

    /// The source has started; nothing has been read from it yet.
    fn started(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Asked before every wait for the source: a consumer whose own workers have failed says
    /// so here, and the pump stops.
    fn check(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// The next checked piece, to hand on.
    fn forward(&mut self, piece: CheckedPiece<'_>) -> Result<(), Self::Error>;

    /// The source has been silent for the pump's `idle` time; `sent` bytes so far.
    fn idle(&mut self, _sent: u64) -> Result<(), Self::Error> {
        Ok(())
    }

    /// The pump is giving up (any error or a signal): stop any work of your own now, before the
    /// source is stopped, which may take seconds.
    fn abort(&mut self) {}
}

/// Why the pump stopped early. The source has been stopped in every case.
#[derive(Debug)]
pub enum PumpError<E> {
    /// The source could not be started.
    Start(SourceError),
    /// The shutdown flag was set (a signal).
    Interrupted,
    /// Reading the source's bytes failed.
    Read(std::io::Error),
    /// The checker found a defect in the stream.
    Defective(StreamError),
    /// The consumer failed.
    Forward(E),
}

/// What a pump that ran to the end of its source saw.
pub struct Pumped {
    /// The producer's exit status (0 for a file or stdin; negative: killed by that signal).
    pub exit_status: i32,
    /// Stream bytes handed on.
    pub bytes: u64,
    /// blake3 of those bytes, if [`PumpSettings::digest`] asked for it.
    pub digest: Option<blake3::Hash>,
    /// The checker's verdict at the end of the stream: every chunk whole and every file
    /// complete (its totals and records), or the defect.
    pub checked: Result<(StreamTotals, Ledger), StreamError>,
}

/// How often a pump waiting on a silent source (or on its rate limit) looks at the shutdown
/// flag.
const SIGNAL_POLL: Duration = Duration::from_millis(100);
/// The smallest piece a throttled source is read in, whatever the rate.
const MIN_THROTTLED_PIECE: usize = 4096;

/// Run `source` to its end through `checker` into `out`, until done, an error, or `shutdown`.
pub fn pump<F: Forward>(
    source: &Source,
    settings: &PumpSettings,
    checker: StreamChecker,
    out: &mut F,
    shutdown: &AtomicBool,
) -> Result<Pumped, PumpError<F::Error>> {
    // A throttled source is read in pieces no larger than the burst, so that each waits at
    // most about a tenth of a second (and the bucket never has to split a piece).
    let piece = match settings.rate_limit {
        Some(r) => settings.piece.min(
            usize::try_from(r.burst_bytes())
                .unwrap_or(usize::MAX)
                .max(MIN_THROTTLED_PIECE),
        ),
        None => settings.piece,
    };
    let mut running = Running::start(source, settings.parallel, settings.headroom, piece)
        .map_err(PumpError::Start)?;
    let mut pass = Pass {
        checker,
        digest: settings.digest.then(blake3::Hasher::new),
        bytes: 0,
        throttle: settings.rate_limit.map(RateLimit::throttle),
    };
    if let Err(e) = pass.run(&mut running, settings, out, shutdown) {
        out.abort();
        running.stop();
        return Err(e);
    }
    let exit_status = running.status();
    Ok(Pumped {
        exit_status,
        bytes: pass.bytes,
        digest: pass.digest.map(|d| d.finalize()),
        checked: pass.checker.finish_with_ledger(),
    })
}

/// What one run of the pump accumulates.
struct Pass {
    checker: StreamChecker,
    digest: Option<blake3::Hasher>,
    bytes: u64,
    throttle: Option<Throttle>,
}

impl Pass {
    /// Forward every piece until the source ends; the first error stops it.
    fn run<F: Forward>(
        &mut self,
        running: &mut Running,
        settings: &PumpSettings,
        out: &mut F,
        shutdown: &AtomicBool,
    ) -> Result<(), PumpError<F::Error>> {
        out.started().map_err(PumpError::Forward)?;
        let mut last = Instant::now();
        loop {
            if shutdown.load(Ordering::SeqCst) {
                return Err(PumpError::Interrupted);
            }
            out.check().map_err(PumpError::Forward)?;
            // A silent source is waited for in short slices, so a signal is seen within one
            // slice rather than one idle period.
            let wait = settings
                .idle
                .saturating_sub(last.elapsed())
                .min(SIGNAL_POLL);
            match running.rx.recv_timeout(wait) {
                Ok(Piece::Data(mut buf, len)) => {
                    self.pace(len, settings, out, shutdown, &mut last)?;
                    self.take(&mut buf, settings.headroom, len, out)?;
                    running.recycle(buf);
                    last = Instant::now();
                }
                Ok(Piece::End) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
                Ok(Piece::Failed(e)) => return Err(PumpError::Read(e)),
                Err(RecvTimeoutError::Timeout) if last.elapsed() >= settings.idle => {
                    out.idle(self.bytes).map_err(PumpError::Forward)?;
                    last = Instant::now();
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Hold a piece of `len` bytes back until the rate limit lets it go. The wait is cut in
    /// slices: a signal still stops the pump, and a consumer that has sent nothing for `idle`
    /// (serve's heartbeat) is still called as if the source were silent.
    fn pace<F: Forward>(
        &mut self,
        len: usize,
        settings: &PumpSettings,
        out: &mut F,
        shutdown: &AtomicBool,
        last: &mut Instant,
    ) -> Result<(), PumpError<F::Error>> {
        let Some(t) = &mut self.throttle else {
            return Ok(());
        };
        t.charge(len as u64);
        while let Some(wait) = t.wait() {
            if shutdown.load(Ordering::SeqCst) {
                return Err(PumpError::Interrupted);
            }
            let to_idle = settings.idle.saturating_sub(last.elapsed());
            std::thread::sleep(wait.min(SIGNAL_POLL).min(to_idle));
            if last.elapsed() >= settings.idle {
                out.idle(self.bytes).map_err(PumpError::Forward)?;
                *last = Instant::now();
            }
        }
        Ok(())
    }

    /// Check, digest and forward one piece.
    fn take<F: Forward>(
        &mut self,
        buf: &mut [u8],
        headroom: usize,
        len: usize,
        out: &mut F,
    ) -> Result<(), PumpError<F::Error>> {
        let data = &buf[headroom..headroom + len];
        self.checker.push(data).map_err(PumpError::Defective)?;
        if let Some(d) = &mut self.digest {
            d.update(data);
        }
        self.bytes += len as u64;
        out.forward(CheckedPiece { buf, headroom, len })
            .map_err(PumpError::Forward)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::create::{create, CreateOptions};
    use crate::format::DecodeOptions;
    use crate::progress::Progress;
    use std::path::{Path, PathBuf};

    /// Collects what it is given; fails on the `fail_at`-th piece if asked.
    #[derive(Default)]
    struct Collect {
        bytes: Vec<u8>,
        started: bool,
        aborted: bool,
        pieces: usize,
        fail_at: Option<usize>,
        idles: usize,
    }

    impl Forward for Collect {
        type Error = String;
        fn started(&mut self) -> Result<(), String> {
            self.started = true;
            Ok(())
        }
        fn forward(&mut self, piece: CheckedPiece<'_>) -> Result<(), String> {
            self.pieces += 1;
            if self.fail_at == Some(self.pieces) {
                return Err("consumer failed".into());
            }
            self.bytes.extend_from_slice(piece.data());
            Ok(())
        }
        fn idle(&mut self, _sent: u64) -> Result<(), String> {
            self.idles += 1;
            Ok(())
        }
        fn abort(&mut self) {
            self.aborted = true;
        }
    }

    fn settings() -> PumpSettings {
        PumpSettings {
            parallel: 1,
            headroom: 5,
            piece: 4096,
            idle: Duration::from_secs(5),
            digest: true,
            rate_limit: None,
        }
    }

    /// A stream of a small tree, written to a file in `dir`.
    fn stream_file(dir: &Path) -> (PathBuf, Vec<u8>) {
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("db")).expect("mkdir");
        std::fs::write(tree.join("db/t.ibd"), vec![7u8; 100_000]).expect("write");
        std::fs::write(tree.join("ibdata1"), b"system").expect("write");
        let mut bytes = Vec::new();
        let opts = CreateOptions::new(tree, vec![PathBuf::from(".")]);
        create(&opts, &mut bytes, &Progress::hidden()).expect("create");
        let path = dir.join("s.xbstream");
        std::fs::write(&path, &bytes).expect("write");
        (path, bytes)
    }

    fn run(source: &Source, out: &mut Collect) -> Result<Pumped, PumpError<String>> {
        let checker = StreamChecker::new(DecodeOptions::default());
        pump(source, &settings(), checker, out, &AtomicBool::new(false))
    }

    #[test]
    fn forwards_every_byte_unchanged_with_its_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, bytes) = stream_file(dir.path());
        let mut out = Collect::default();
        let pumped = run(&Source::File(path), &mut out).expect("pump");
        assert!(out.started && !out.aborted);
        assert_eq!(out.bytes, bytes);
        assert_eq!(pumped.bytes, bytes.len() as u64);
        assert_eq!(pumped.digest, Some(blake3::hash(&bytes)));
        assert_eq!(pumped.exit_status, 0);
        let (totals, _) = pumped.checked.expect("whole stream");
        assert_eq!(totals.files, 2);
    }

    #[test]
    fn reports_the_producer_exit_status_without_judging_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, bytes) = stream_file(dir.path());
        let cmd = format!("cat '{}'; exit 3", path.display());
        let mut out = Collect::default();
        let pumped = run(&Source::Exec(cmd), &mut out).expect("pump");
        assert_eq!(pumped.exit_status, 3);
        assert_eq!(out.bytes, bytes);
        assert!(pumped.checked.is_ok());
    }

    #[test]
    fn a_cut_stream_is_reported_at_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, bytes) = stream_file(dir.path());
        std::fs::write(&path, &bytes[..bytes.len() - 10]).expect("write");
        let pumped = run(&Source::File(path), &mut Collect::default()).expect("pump");
        assert!(pumped.checked.is_err());
    }

    #[test]
    fn a_defect_stops_the_source_before_the_bytes_are_forwarded() {
        let mut out = Collect::default();
        let source = Source::Exec("printf 'not an xbstream'; sleep 30".into());
        match run(&source, &mut out) {
            Err(PumpError::Defective(_)) => {}
            Err(e) => panic!("expected a defect, got {e:?}"),
            Ok(_) => panic!("expected a defect"),
        }
        assert!(out.aborted);
        assert!(out.bytes.is_empty());
    }

    #[test]
    fn a_consumer_error_stops_the_pump() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = stream_file(dir.path());
        let mut out = Collect {
            fail_at: Some(2),
            ..Default::default()
        };
        match run(&Source::File(path), &mut out) {
            Err(PumpError::Forward(e)) => assert_eq!(e, "consumer failed"),
            Err(e) => panic!("expected the consumer's error, got {e:?}"),
            Ok(_) => panic!("expected the consumer's error"),
        }
        assert!(out.aborted);
    }

    #[test]
    fn a_set_shutdown_flag_interrupts() {
        let mut out = Collect::default();
        let checker = StreamChecker::new(DecodeOptions::default());
        let source = Source::Exec("sleep 30".into());
        let r = pump(
            &source,
            &settings(),
            checker,
            &mut out,
            &AtomicBool::new(true),
        );
        assert!(matches!(r, Err(PumpError::Interrupted)));
        assert!(out.aborted);
    }

    #[test]
    fn a_source_that_cannot_start_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = run(
            &Source::File(dir.path().join("missing")),
            &mut Collect::default(),
        );
        assert!(matches!(r, Err(PumpError::Start(_))));
    }

    #[test]
    fn a_rate_limit_paces_the_pieces_and_idle_still_comes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, bytes) = stream_file(dir.path());
        let rate = 100 << 10;
        let s = PumpSettings {
            idle: Duration::from_millis(30),
            rate_limit: Some(RateLimit::new(rate).expect("rate")),
            ..settings()
        };
        let mut out = Collect::default();
        let checker = StreamChecker::new(DecodeOptions::default());
        let start = Instant::now();
        let pumped = pump(
            &Source::File(path),
            &s,
            checker,
            &mut out,
            &AtomicBool::new(false),
        )
        .expect("pump");
        let took = start.elapsed().as_secs_f64();
        assert_eq!(out.bytes, bytes);
        assert_eq!(pumped.bytes, bytes.len() as u64);
        // The first tenth of a second's worth goes at once, the rest at the rate.
        let ideal = (bytes.len() as u64 - rate / 10) as f64 / rate as f64;
        assert!(took >= ideal * 0.95, "took {took:.3}s, ideal {ideal:.3}s");
        assert!(
            out.idles > 0,
            "a piece held back longer than idle calls idle"
        );
    }

    #[test]
    fn a_header_goes_just_in_front_of_the_data() {
        let mut buf = *b"....DATA";
        let mut piece = CheckedPiece {
            buf: &mut buf,
            headroom: 4,
            len: 4,
        };
        assert_eq!(piece.with_header(b"HH"), b"HHDATA");
        assert_eq!(piece.data(), b"DATA");
    }
}
