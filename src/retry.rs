//! Retries bounded by a total time: the schedule of waits between attempts (exponential,
//! capped, jittered) and the loop that runs a request under it.
//!
//! Used by the object store's requests and by `receive`'s connection to its donor, which is why
//! it lives here and not in either: `clone/` and `store/` never depend on each other. It must
//! never know what is being retried; callers say what is transient and what to log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How one request is retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Set by SIGINT/SIGTERM: stop retrying at once.
    pub cancel: Option<Arc<AtomicBool>>,
    /// First backoff ceiling.
    pub base: Duration,
    /// Largest backoff ceiling.
    pub cap: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            cancel: None,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(20),
            total: Duration::from_secs(300),
        }
    }
}

/// How the wait between attempts grows: from `base`, doubling with each retry up to `cap`,
/// jittered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub base: Duration,
    pub cap: Duration,
    pub jitter: Jitter,
}

/// How a [`Schedule`] spreads its waits, so that clients failing together do not come back in
/// step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `[0, ceiling]` ("full jitter").
    Full,
    /// The ceiling plus up to this much (less than it).
    Added(Duration),
    /// Exactly the ceiling: waits that only pace, where nobody else is coming back in step.
    None,
}

impl Schedule {
    /// The wait before retry `attempt` (1 = first retry), from a random `u64`. The ceiling is
    /// `min(cap, base·2^(attempt-1))`.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(
                1u32.checked_shl(attempt.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.cap);
        let below = |ms: u64| if ms == 0 { 0 } else { random % ms };
        match self.jitter {
            Jitter::Full => Duration::from_millis(below(ceiling.as_millis() as u64 + 1)),
            Jitter::Added(max) => ceiling + Duration::from_millis(below(max.as_millis() as u64)),
            Jitter::None => ceiling,
        }
    }
}

/// Backoff before retry `attempt` (1 = first retry): uniform in `[0, min(cap, base·2^(attempt-1))]`
/// ("full jitter"), from a random `u64`.
pub fn backoff(policy: &RetryPolicy, attempt: u32, random: u64) -> Duration {
    Schedule {
        base: policy.base,
        cap: policy.cap,
        jitter: Jitter::Full,
    }
    .delay(attempt, random)
}

/// What one attempt's failure means.
pub enum Failure<E> {
    /// Worth another try (5xx, SlowDown, timeout, connection reset).
    Transient(E),
    /// Will not get better (403, 404, a bad request).
    Permanent(E),
}

/// Run `op` until it succeeds, fails permanently, or the policy's total time is spent. Each
/// retry is logged with `what`, the attempt and the cause.
pub fn run<T, E: std::fmt::Display>(
    policy: &RetryPolicy,
    what: &dyn Fn() -> String,
    mut op: impl FnMut() -> Result<T, Failure<E>>,
) -> Result<T, E> {
    let start = Instant::now();
    let mut attempt = 0u32;
    loop {
        match op() {
            Ok(v) => return Ok(v),
            Err(Failure::Permanent(e)) => return Err(e),
            Err(Failure::Transient(e)) => {
                attempt += 1;
                let wait = backoff(policy, attempt, random_u64());
                if start.elapsed() + wait >= policy.total {
                    tracing::warn!(
                        "giving up on {} after {} attempts over {:.1?}: {e}",
                        what(),
                        attempt,
                        start.elapsed()
                    );
                    return Err(e);
                }
                let cancelled = || {
                    policy
                        .cancel
                        .as_ref()
                        .is_some_and(|c| c.load(Ordering::SeqCst))
                };
                if cancelled() {
                    return Err(e);
                }
                tracing::warn!(
                    "retrying {} (attempt {}) after {:?}: {e}",
                    what(),
                    attempt + 1,
                    wait
                );
                // Sleep in slices so that a signal ends the wait.
                let until = Instant::now() + wait;
                while Instant::now() < until {
                    if cancelled() {
                        return Err(e);
                    }
                    std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
                }
            }
        }
    }
}

/// A random `u64` for jitter; zero if the system has no randomness to give (the waits are then
/// only less spread).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            total: Duration::from_secs(60),
            cancel: None,
        };
        assert_eq!(
            backoff(&p, 1, u64::MAX),
            Duration::from_millis(u64::MAX % 101)
        );
        assert!(backoff(&p, 1, 12345) <= Duration::from_millis(100));
        assert!(backoff(&p, 3, 12345) <= Duration::from_millis(400));
        assert!(backoff(&p, 40, 12345) <= Duration::from_secs(2));
        assert_eq!(backoff(&p, 5, 0), Duration::ZERO);
    }

    #[test]
    fn added_jitter_lies_above_the_ceiling() {
        let s = Schedule {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(15),
            jitter: Jitter::Added(Duration::from_millis(500)),
        };
        assert_eq!(s.delay(1, 0), Duration::from_millis(500));
        assert_eq!(s.delay(2, 499), Duration::from_millis(1499));
        assert_eq!(s.delay(3, 500), Duration::from_millis(2000));
        assert_eq!(s.delay(10, 0), Duration::from_secs(15));
        assert!(s.delay(40, u64::MAX) < Duration::from_millis(15_500));
    }

    #[test]
    fn no_jitter_is_the_ceiling_whatever_the_random() {
        let s = Schedule {
            base: Duration::from_millis(250),
            cap: Duration::from_secs(5),
            jitter: Jitter::None,
        };
        let waits: Vec<u64> = (1..=7)
            .map(|a| s.delay(a, u64::MAX).as_millis() as u64)
            .collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 5000, 5000]);
    }

    #[test]
    fn transient_failures_are_retried_then_succeed() {
        let p = RetryPolicy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
            total: Duration::from_secs(5),
            cancel: None,
        };
        let mut n = 0;
        let r: Result<u32, String> = run(&p, &|| "test".into(), || {
            n += 1;
            if n < 4 {
                Err(Failure::Transient(format!("503 #{n}")))
            } else {
                Ok(n)
            }
        });
        assert_eq!(r, Ok(4));
    }

    #[test]
    fn permanent_failure_is_not_retried() {
        let p = RetryPolicy::default();
        let mut n = 0;
        let r: Result<(), String> = run(&p, &|| "test".into(), || {
            n += 1;
            Err(Failure::Permanent("403".into()))
        });
        assert_eq!(r, Err("403".into()));
        assert_eq!(n, 1);
    }

    #[test]
    fn a_signal_stops_the_retries() {
        let cancel = Arc::new(AtomicBool::new(false));
        let p = RetryPolicy {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(10),
            total: Duration::from_secs(600),
            cancel: Some(cancel.clone()),
        };
        let c2 = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            c2.store(true, Ordering::SeqCst);
        });
        let t = Instant::now();
        let r: Result<(), String> = run(&p, &|| "test".into(), || {
            Err(Failure::Transient("503".into()))
        });
        assert!(r.is_err());
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[test]
    fn gives_up_within_total_time() {
        let p = RetryPolicy {
            base: Duration::from_millis(5),
            cap: Duration::from_millis(10),
            total: Duration::from_millis(100),
            cancel: None,
        };
        let t = Instant::now();
        let r: Result<(), String> = run(&p, &|| "test".into(), || {
            Err(Failure::Transient("reset".into()))
        });
        assert!(r.is_err());
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
