//! `--rate-limit`: pace a byte stream at a steady rate, so that a clone or a backup does not
//! saturate the donor's disk or network.
//!
//! The bucket is `governor`'s GCRA (a token bucket kept as one "theoretical arrival time"), with
//! bytes as its cells and a burst of a tenth of a second. Two details keep it within a fraction
//! of a percent of the asked rate at any rate:
//! - governor keeps time in whole nanoseconds per cell: with one byte per cell, 200 MiB/s would
//!   be 4.77 ns per byte, rounded to 4 (19% too fast). A cell here is `rate / 1,000,000` bytes
//!   (at least one), about a microsecond of the rate, so the rounding costs at most 0.05%.
//! - bytes that do not fill a whole cell are carried over to the next charge, never dropped.
//!
//! GCRA makes up for a caller that sleeps a little too long (the time is owed to the bucket,
//! up to the burst), so oversleeping does not make the stream slower than asked.
//!
//! This module only says how long to wait: it never sleeps. The pump that calls it waits in
//! short slices, so that heartbeats and signals are still served while a stream is held back.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// The slowest rate accepted: below it a tenth of a second's burst would be a few bytes.
pub const MIN_RATE: u64 = 1024;
/// The burst: this fraction of a second's worth of bytes may go at once.
const BURST_PER_SECOND: u64 = 10;
/// A cell is about this many nanoseconds of the rate (see the module docs).
const CELL_NANOS: u64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum RateError {
    #[error("--rate-limit must be at least {MIN_RATE} bytes per second (1KiB), got {0}")]
    TooLow(u64),
}

/// A validated rate, in bytes per second. Each run of a stream gets its own [`Throttle`] from
/// it (each clone of `serve` is limited on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit(u64);

impl RateLimit {
    pub fn new(bytes_per_second: u64) -> Result<Self, RateError> {
        if bytes_per_second < MIN_RATE {
            return Err(RateError::TooLow(bytes_per_second));
        }
        Ok(RateLimit(bytes_per_second))
    }

    pub fn bytes_per_second(self) -> u64 {
        self.0
    }

    /// Bytes that may go at once when the bucket is full: a tenth of a second's worth.
    pub fn burst_bytes(self) -> u64 {
        (self.0 / BURST_PER_SECOND).max(1)
    }

    /// A fresh, full bucket at this rate.
    pub fn throttle(self) -> Throttle {
        Throttle::new(self)
    }
}

type Limiter = RateLimiter<
    NotKeyed,
    InMemoryState,
    MonotonicClock,
    NoOpMiddleware<<MonotonicClock as Clock>::Instant>,
>;

/// One stream's bucket: [`Throttle::charge`] the bytes about to go, then wait as long as
/// [`Throttle::wait`] says, until it says they may go.
pub struct Throttle {
    limiter: Limiter,
    clock: MonotonicClock,
    /// Bytes per cell.
    cell: u64,
    /// Cells in a full bucket.
    burst_cells: u32,
    /// Bytes charged but not yet let through the bucket.
    owed: u64,
}

impl Throttle {
    fn new(rate: RateLimit) -> Self {
        let rate = rate.0;
        let cell = (rate.saturating_mul(CELL_NANOS) / 1_000_000_000).max(1);
        // The period of one cell, rounded to the nearest nanosecond (at least 1 µs by the choice
        // of `cell`, except at rates under 1 MB/s where a byte is already longer than that).
        let period_ns =
            ((u128::from(cell) * 1_000_000_000 + u128::from(rate) / 2) / u128::from(rate)).max(1);
        let period = Duration::from_nanos(u64::try_from(period_ns).unwrap_or(u64::MAX));
        let burst_cells =
            u32::try_from((rate / BURST_PER_SECOND / cell).max(1)).unwrap_or(u32::MAX);
        let burst = NonZeroU32::new(burst_cells).unwrap_or(NonZeroU32::MIN);
        // `with_period` is None only for a zero period, which `max(1)` rules out.
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let clock = MonotonicClock;
        Throttle {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            cell,
            burst_cells,
            owed: 0,
        }
    }

    /// `n` more bytes are about to go.
    pub fn charge(&mut self, n: u64) {
        self.owed = self.owed.saturating_add(n);
    }

    /// `None`: the bytes charged so far may go now. `Some(d)`: ask again in `d` (a charge larger
    /// than the burst is let through a burst at a time, so several waits may follow).
    pub fn wait(&mut self) -> Option<Duration> {
        loop {
            let cells = (self.owed / self.cell).min(u64::from(self.burst_cells));
            // Less than a cell left: carried over to the next charge.
            let n = NonZeroU32::new(u32::try_from(cells).unwrap_or(self.burst_cells))?;
            match self.limiter.check_n(n) {
                Ok(Ok(())) => self.owed -= cells * self.cell,
                Ok(Err(not_until)) => return Some(not_until.wait_time_from(self.clock.now())),
                // Never more than the burst is asked for; if it were, let it go rather than
                // stall the stream for good.
                Err(_) => {
                    self.owed = 0;
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Push `total` bytes through in `piece`-sized charges, sleeping as told.
    fn run(rate: u64, total: u64, piece: u64) -> Duration {
        let mut t = RateLimit::new(rate).expect("rate").throttle();
        let start = Instant::now();
        let mut sent = 0;
        while sent < total {
            t.charge(piece);
            while let Some(d) = t.wait() {
                std::thread::sleep(d);
            }
            sent += piece;
        }
        start.elapsed()
    }

    #[test]
    fn rates_under_a_kibibyte_per_second_are_refused() {
        assert!(RateLimit::new(1023).is_err());
        assert!(RateLimit::new(1024).is_ok());
    }

    #[test]
    fn the_first_burst_goes_at_once_then_the_rate_holds() {
        // 10 MiB/s: the first 1 MiB (the burst) at once, then 2 MiB more take 0.2 s.
        let rate = 10 << 20;
        let took = run(rate, 3 << 20, 64 << 10);
        let expected = 0.2;
        let got = took.as_secs_f64();
        assert!(
            got > expected * 0.95 && got < expected * 1.25,
            "3 MiB at 10 MiB/s with a 1 MiB burst took {got:.3}s, expected ~{expected}s"
        );
    }

    #[test]
    fn high_rates_are_not_rounded_up() {
        // 200 MiB/s, where one byte per cell would round to 250 MB/s: 60 MiB after the 20 MiB
        // burst take 0.3 s, not 0.24 s.
        let rate = 200 << 20;
        let took = run(rate, 80 << 20, 1 << 20).as_secs_f64();
        assert!(
            (0.285..0.4).contains(&took),
            "80 MiB at 200 MiB/s took {took:.3}s, expected ~0.3s"
        );
    }

    #[test]
    fn bytes_short_of_a_cell_are_carried_over_not_dropped() {
        // 100 MiB/s: a cell is 104 bytes; charges of 7 bytes, well within the 10 MiB burst.
        let mut t = RateLimit::new(100 << 20).expect("rate").throttle();
        assert_eq!(t.cell, 104);
        let mut charged = 0u64;
        for _ in 0..1000 {
            t.charge(7);
            charged += 7;
            assert_eq!(t.wait(), None, "within the burst");
            assert!(t.owed < t.cell, "whole cells go through the bucket at once");
        }
        // What went through the bucket is whole cells; the rest is still owed, not forgotten.
        assert_eq!((charged - t.owed) % t.cell, 0);
        assert_eq!(charged, 7000);
        assert_eq!(t.owed, 7000 % 104);
    }

    #[test]
    fn a_charge_larger_than_the_burst_waits_for_the_rest() {
        let mut t = RateLimit::new(1 << 20).expect("rate").throttle();
        t.charge(1 << 20);
        let d = t.wait().expect("a MiB at 1 MiB/s cannot go at once");
        assert!(
            d <= Duration::from_millis(120),
            "waits a burst at a time, got {d:?}"
        );
    }
}
