//! What the threads of one run share: the run's first error, and a byte budget.
//!
//! Several commands run a producer and worker threads: `create`'s readers, the directory
//! writer's threads, upload's part senders, restore's fetchers. Each needs the same two
//! things, written once here:
//!
//! - [`FirstError`]: the first error any thread hits is the one reported; later ones are
//!   dropped (they are usually consequences of the first). Recording it also raises a stop
//!   flag the other threads poll, so that they stop taking work.
//! - [`ByteBudget`]: the bytes the producer may have handed out and the consumers not yet
//!   finished with, so memory stays bounded whatever the input. The producer waits for room;
//!   a consumer gives bytes back when it is done with them.
//!
//! The two are separate so each can be used alone; a run that has both closes the budget
//! when it fails (see [`ByteBudget::close`]), or a producer waiting for room would never wake.
//!
//! Neither type may block forever once the run has stopped, nor panic: a poisoned lock (a
//! thread panicked while holding it) is taken over, since both guard plain values that are
//! never left half-updated.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// The first error of a run shared by threads, and the flag that tells them all to stop.
///
/// ```
/// use xbagent::workers::FirstError;
/// let run = FirstError::new();
/// assert!(run.fail("disk full"));
/// assert!(!run.fail("broken pipe")); // a consequence of the first: dropped
/// assert!(run.is_stopped());
/// assert_eq!(run.check(), Err("disk full"));
/// assert_eq!(run.take(), None); // taken once
/// ```
#[derive(Debug)]
pub struct FirstError<E> {
    stopped: AtomicBool,
    error: Mutex<Option<E>>,
}

impl<E> Default for FirstError<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> FirstError<E> {
    pub const fn new() -> Self {
        FirstError {
            stopped: AtomicBool::new(false),
            error: Mutex::new(None),
        }
    }

    /// Record `e` unless an error is already recorded, and stop the run. Returns whether `e`
    /// is the one kept.
    pub fn fail(&self, e: E) -> bool {
        let kept = {
            let mut slot = self.slot();
            let empty = slot.is_none();
            if empty {
                *slot = Some(e);
            }
            empty
        };
        self.stop();
        kept
    }

    /// Stop the run without an error: a signal, or an owner that gives up early.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Whether the run has failed or been stopped: threads poll this between units of work.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// The recorded error, once: later calls (and a run stopped without one) get `None`.
    pub fn take(&self) -> Option<E> {
        self.slot().take()
    }

    /// `Err` with the recorded error if the run has failed and nobody has taken it yet.
    /// Cheap while the run is going well: one atomic load.
    pub fn check(&self) -> Result<(), E> {
        if self.is_stopped() {
            if let Some(e) = self.take() {
                return Err(e);
            }
        }
        Ok(())
    }

    fn slot(&self) -> MutexGuard<'_, Option<E>> {
        self.error.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Bytes handed out by a producer and not yet given back by its consumers, at most `cap`.
///
/// One request larger than the whole budget still passes, alone (once nothing else is held):
/// a budget smaller than the largest chunk slows the run down rather than stopping it.
///
/// ```
/// use xbagent::workers::ByteBudget;
/// let budget = ByteBudget::new(10);
/// assert!(budget.acquire(6));
/// budget.release(6);
/// assert!(budget.acquire(25)); // larger than the budget: passes alone
/// budget.release(25);
/// budget.close();
/// assert!(!budget.acquire(1));
/// ```
#[derive(Debug)]
pub struct ByteBudget {
    cap: u64,
    state: Mutex<Held>,
    changed: Condvar,
}

#[derive(Debug)]
struct Held {
    bytes: u64,
    closed: bool,
}

impl ByteBudget {
    pub fn new(cap: u64) -> Self {
        ByteBudget {
            cap,
            state: Mutex::new(Held {
                bytes: 0,
                closed: false,
            }),
            changed: Condvar::new(),
        }
    }

    /// Take `n` bytes, waiting until they fit. `false`, with nothing taken, once the budget is
    /// closed (also when it closes during the wait): the run has stopped, drop the work.
    pub fn acquire(&self, n: u64) -> bool {
        let mut held = self.lock();
        while !held.closed && held.bytes > 0 && held.bytes.saturating_add(n) > self.cap {
            held = self.changed.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        if held.closed {
            return false;
        }
        held.bytes += n;
        true
    }

    /// Give back `n` bytes taken by [`acquire`](Self::acquire).
    pub fn release(&self, n: u64) {
        let mut held = self.lock();
        held.bytes = held.bytes.saturating_sub(n);
        drop(held);
        self.changed.notify_all();
    }

    /// Refuse every later request and wake every waiting one: the run failed or was stopped.
    /// Bytes still held may still be released.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.lock().bytes
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    /// Long enough for a thread that should be blocked to have run past a missing wait.
    const SETTLE: Duration = Duration::from_millis(100);
    /// A thread that should wake has this long before the test calls it hung.
    const HUNG: Duration = Duration::from_secs(10);

    #[test]
    fn the_first_error_of_many_threads_is_kept_and_the_others_dropped() {
        let run = FirstError::new();
        let kept: usize = thread::scope(|s| {
            let run = &run;
            let handles: Vec<_> = (0..8).map(|i| s.spawn(move || run.fail(i))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap() as usize)
                .sum()
        });
        assert_eq!(kept, 1);
        assert!(run.is_stopped());
        assert!(run.take().is_some());
        assert_eq!(run.take(), None);
    }

    #[test]
    fn an_error_is_reported_once_by_check() {
        let run = FirstError::new();
        assert_eq!(run.check(), Ok(()));
        run.fail("first");
        assert_eq!(run.check(), Err("first"));
        assert_eq!(run.check(), Ok(()));
        assert!(
            run.is_stopped(),
            "the run stays stopped once its error is taken"
        );
    }

    #[test]
    fn a_stop_without_an_error_stops_the_run_and_reports_nothing() {
        let run = FirstError::<&str>::new();
        run.stop();
        assert!(run.is_stopped());
        assert_eq!(run.check(), Ok(()));
        assert!(
            run.fail("later"),
            "an error after a plain stop is still recorded"
        );
        assert_eq!(run.take(), Some("later"));
    }

    #[test]
    fn a_poisoned_first_error_still_works() {
        let run = FirstError::new();
        let _ = thread::scope(|s| {
            s.spawn(|| {
                let _slot = run.error.lock();
                panic!("a thread dies holding the lock");
            })
            .join()
        });
        assert!(run.fail(1));
        assert_eq!(run.take(), Some(1));
    }

    #[test]
    fn an_acquire_that_does_not_fit_waits_for_a_release() {
        let budget = ByteBudget::new(10);
        assert!(budget.acquire(8));
        let (tx, rx) = mpsc::channel();
        thread::scope(|s| {
            s.spawn(|| tx.send(budget.acquire(5)));
            assert!(rx.recv_timeout(SETTLE).is_err(), "8 + 5 bytes fit in 10");
            budget.release(8);
            assert_eq!(rx.recv_timeout(HUNG), Ok(true));
        });
        assert_eq!(budget.held(), 5);
    }

    #[test]
    fn one_request_larger_than_the_budget_passes_alone() {
        let budget = ByteBudget::new(10);
        assert!(budget.acquire(100));
        let (tx, rx) = mpsc::channel();
        thread::scope(|s| {
            s.spawn(|| tx.send(budget.acquire(1)));
            assert!(
                rx.recv_timeout(SETTLE).is_err(),
                "a byte passed the oversized one"
            );
            budget.release(100);
            assert_eq!(rx.recv_timeout(HUNG), Ok(true));
        });
    }

    #[test]
    fn requests_that_fit_together_do_not_wait() {
        let budget = ByteBudget::new(10);
        assert!(budget.acquire(4));
        assert!(budget.acquire(6));
        assert_eq!(budget.held(), 10);
    }

    #[test]
    fn closing_wakes_a_waiting_acquire_which_takes_nothing() {
        let budget = ByteBudget::new(10);
        assert!(budget.acquire(10));
        let (tx, rx) = mpsc::channel();
        thread::scope(|s| {
            s.spawn(|| tx.send(budget.acquire(1)));
            assert!(rx.recv_timeout(SETTLE).is_err());
            budget.close();
            assert_eq!(rx.recv_timeout(HUNG), Ok(false));
        });
        assert_eq!(budget.held(), 10);
        budget.release(10);
        assert_eq!(budget.held(), 0);
        assert!(!budget.acquire(1), "a closed budget stays closed");
    }

    #[test]
    fn a_release_of_more_than_is_held_leaves_zero() {
        let budget = ByteBudget::new(10);
        assert!(budget.acquire(3));
        budget.release(5);
        assert_eq!(budget.held(), 0);
    }

    /// Producer and consumers at full speed: the budget is never exceeded (beyond a lone
    /// oversized request) and every byte comes back.
    #[test]
    fn a_producer_and_consumers_stay_within_the_budget() {
        let budget = ByteBudget::new(64);
        let most = Mutex::new(0u64);
        let (tx, rx) = crossbeam_channel::bounded::<u64>(4);
        thread::scope(|s| {
            for _ in 0..3 {
                let rx = rx.clone();
                s.spawn(|| {
                    for n in rx {
                        let mut m = most.lock().unwrap();
                        *m = (*m).max(budget.held());
                        drop(m);
                        budget.release(n);
                    }
                });
            }
            drop(rx);
            for i in 0..2000u64 {
                let n = 1 + i % 40;
                assert!(budget.acquire(n));
                tx.send(n).unwrap();
            }
            drop(tx);
        });
        assert_eq!(budget.held(), 0);
        assert!(*most.lock().unwrap() <= 64);
    }
}
