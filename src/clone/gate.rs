//! Admission of unauthenticated connections to `serve`: how many handshakes run at once, in
//! total and per peer address, and how long an address that keeps failing authentication
//! waits before its next guess is answered. Pure bookkeeping: the caller passes the time, so
//! the rules are tested without sockets or clocks.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::retry::{Jitter, Schedule};

/// Bounds on connections that have not authenticated yet.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    /// Handshakes in flight at once; past it, new connections are closed at once.
    pub in_flight: usize,
    /// Handshakes in flight from one address.
    pub per_address: usize,
    /// Total time a handshake may take, TLS included (not per read).
    pub deadline: Duration,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            in_flight: 64,
            per_address: 8,
            deadline: Duration::from_secs(10),
        }
    }
}

/// Failures an address may have before it is slowed down (a typo, a restarted pod).
const FREE_FAILURES: u32 = 3;
/// The spacing between two guesses once an address is slowed down: 0.25 s, doubling with each
/// further failure, at most 5 s.
const GUESS_SPACING: Schedule = Schedule {
    base: Duration::from_millis(250),
    cap: Duration::from_secs(5),
    jitter: Jitter::None,
};
/// An address's failures are forgotten this long after its last one.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Failure records kept at most; past it, those older than [`FORGET_AFTER`] are dropped.
const MAX_ADDRESSES: usize = 16_384;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `in_flight` handshakes are already running.
    Total(usize),
    /// `per_address` handshakes from this address are already running.
    Address(usize),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Total(n) => write!(f, "{n} handshakes already in flight"),
            Refused::Address(n) => write!(f, "{n} handshakes already in flight from this address"),
        }
    }
}

/// An address's record of failed guesses.
#[derive(Debug)]
struct Record {
    failures: u32,
    last_failure: Option<Instant>,
    /// When this address's next guess may be answered.
    next_turn: Option<Instant>,
}

/// One handshake in flight: its ticket's number and the token that evicts it.
#[derive(Debug)]
struct Held {
    id: u64,
    evict: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    in_flight: usize,
    /// The handshakes in flight per address, oldest first (only addresses with some).
    holding: HashMap<IpAddr, VecDeque<Held>>,
    records: HashMap<IpAddr, Record>,
    next_id: u64,
}

/// The admission gate; cheap to share.
#[derive(Debug)]
pub struct Gate {
    limits: HandshakeLimits,
    state: Mutex<State>,
}

/// One admitted handshake; dropping it frees its place.
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<Gate>,
    ip: IpAddr,
    id: u64,
    evict: CancellationToken,
}

impl Ticket {
    /// Cancelled when the gate takes this place back for an address with fewer handshakes.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evict
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        let Some(q) = st.holding.get_mut(&self.ip) else {
            return;
        };
        // Not found: it was evicted, and its place already given back.
        let Some(at) = q.iter().position(|h| h.id == self.id) else {
            return;
        };
        q.remove(at);
        if q.is_empty() {
            st.holding.remove(&self.ip);
        }
        st.in_flight = st.in_flight.saturating_sub(1);
    }
}

impl Gate {
    pub fn new(limits: HandshakeLimits) -> Arc<Self> {
        Arc::new(Gate {
            limits: HandshakeLimits {
                in_flight: limits.in_flight.max(1),
                per_address: limits.per_address.max(1),
                deadline: limits.deadline,
            },
            state: Mutex::new(State::default()),
        })
    }

    pub fn limits(&self) -> HandshakeLimits {
        self.limits
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every step, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admit a new connection from `ip`, or say why not. When every place is taken, an
    /// address holding at least two more places than `ip` gives up its oldest one: many
    /// attacking addresses cannot keep a newcomer out for longer than it takes to connect.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refused> {
        let mut st = self.lock();
        let mine = st.holding.get(&ip).map_or(0, VecDeque::len);
        if mine >= self.limits.per_address {
            return Err(Refused::Address(mine));
        }
        if st.in_flight >= self.limits.in_flight && !evict_for(&mut st, mine) {
            return Err(Refused::Total(st.in_flight));
        }
        st.next_id += 1;
        let id = st.next_id;
        let evict = CancellationToken::new();
        st.holding.entry(ip).or_default().push_back(Held {
            id,
            evict: evict.clone(),
        });
        st.in_flight += 1;
        Ok(Ticket {
            gate: self.clone(),
            ip,
            id,
            evict,
        })
    }

    /// Called when `ip`'s guess is about to be answered: how long to wait first. `None`: the
    /// wait would outlast the handshake deadline, so give up on this connection now.
    pub fn turn(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut st = self.lock();
        let Some(a) = st.records.get_mut(&ip) else {
            return Some(Duration::ZERO);
        };
        if a.last_failure
            .is_some_and(|t| now.duration_since(t) >= FORGET_AFTER)
        {
            a.failures = 0;
            a.next_turn = None;
        }
        let spacing = wait_after(a.failures);
        if spacing.is_zero() {
            return Some(Duration::ZERO);
        }
        let start = a.next_turn.map_or(now, |t| t.max(now));
        let wait = start - now;
        if wait >= self.limits.deadline {
            return None;
        }
        a.next_turn = Some(start + spacing);
        Some(wait)
    }

    /// `ip`'s guess is being answered: counted as a failure until the guess proves right. (A
    /// peer that checks the answer and goes away, or never answers, has still had its guess.)
    pub fn charge(&self, ip: IpAddr, now: Instant) {
        let mut st = self.lock();
        if st.records.len() >= MAX_ADDRESSES && !st.records.contains_key(&ip) {
            st.records.retain(|_, r| {
                r.last_failure
                    .is_some_and(|t| now.duration_since(t) < FORGET_AFTER)
            });
        }
        let r = st.records.entry(ip).or_insert(Record {
            failures: 0,
            last_failure: None,
            next_turn: None,
        });
        r.failures = r.failures.saturating_add(1);
        r.last_failure = Some(now);
    }

    /// `ip`'s guess was right: its charge is refunded. Earlier failures still count, so a
    /// client sharing an address with an attacker does not wipe the attacker's record.
    pub fn refund(&self, ip: IpAddr) {
        let mut st = self.lock();
        if let Some(r) = st.records.get_mut(&ip) {
            r.failures = r.failures.saturating_sub(1);
            if r.failures == 0 {
                st.records.remove(&ip);
            }
        }
    }
}

/// Take the oldest place of the address holding the most, if it holds at least two more than
/// `mine`; whether a place was freed.
fn evict_for(st: &mut State, mine: usize) -> bool {
    let Some((&big, q)) = st.holding.iter().max_by_key(|(_, q)| q.len()) else {
        return false;
    };
    if q.len() < mine + 2 {
        return false;
    }
    let Some(q) = st.holding.get_mut(&big) else {
        return false;
    };
    if let Some(oldest) = q.pop_front() {
        oldest.evict.cancel();
    }
    if q.is_empty() {
        st.holding.remove(&big);
    }
    st.in_flight = st.in_flight.saturating_sub(1);
    true
}

/// The spacing between two guesses of an address with `failures` recent failures.
fn wait_after(failures: u32) -> Duration {
    if failures < FREE_FAILURES {
        return Duration::ZERO;
    }
    GUESS_SPACING.delay(failures - FREE_FAILURES + 1, 0)
}

/// A warning logged at most once per period, with a count of the ones held back.
#[derive(Debug)]
pub struct RateLimited {
    period: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimited {
    pub fn new(period: Duration) -> Self {
        RateLimited {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held back)` when a message is due now; the count of those held back since.
    pub fn due(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.0 {
            Some(last) if now.duration_since(last) < self.period => {
                st.1 += 1;
                None
            }
            _ => {
                let held = st.1;
                *st = (Some(now), 0);
                Some(held)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(in_flight: usize, per_address: usize) -> Arc<Gate> {
        Gate::new(HandshakeLimits {
            in_flight,
            per_address,
            deadline: Duration::from_secs(10),
        })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn bounds_hold_in_total_and_per_address_and_tickets_free_them() {
        let g = gate(3, 2);
        let a1 = g.admit(A).unwrap();
        let _a2 = g.admit(A).unwrap();
        assert_eq!(g.admit(A).unwrap_err(), Refused::Address(2));
        let b1 = g.admit(B).unwrap();
        // Full; A holds 2, B 1: B may not take A's place (2 < 1 + 2).
        assert_eq!(g.admit(B).unwrap_err(), Refused::Total(3));
        drop(a1);
        let _a3 = g.admit(A).unwrap();
        drop(b1);
        assert!(g.admit(B).is_ok());
    }

    #[test]
    fn a_newcomer_takes_the_oldest_place_of_the_biggest_holder() {
        let g = gate(4, 4);
        let a: Vec<Ticket> = (0..4).map(|_| g.admit(A).unwrap()).collect();
        // Full, all A's: B gets in, A's oldest handshake is told to go.
        let b = g.admit(B).unwrap();
        assert!(a[0].evicted().is_cancelled());
        assert!(a[1..].iter().all(|t| !t.evicted().is_cancelled()));
        // The evicted ticket's drop gives nothing back twice: still full.
        let mut a: std::collections::VecDeque<Ticket> = a.into_iter().collect();
        drop(a.pop_front());
        let c = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 3));
        let _c = g.admit(c).unwrap();
        assert!(
            a[0].evicted().is_cancelled(),
            "A held 3, C none: A gives one up"
        );
        // A 2, B 1, C 1: nobody holds two more than C, so C waits its turn.
        assert_eq!(g.admit(c).unwrap_err(), Refused::Total(4));
        drop(b);
        assert!(g.admit(c).is_ok());
    }

    #[test]
    fn an_address_that_keeps_failing_waits_longer_and_longer() {
        let g = gate(10, 10);
        let t0 = Instant::now();
        let _t = g.admit(A).unwrap();
        // Right guesses cost nothing.
        for _ in 0..10 {
            assert_eq!(g.turn(A, t0), Some(Duration::ZERO));
            g.charge(A, t0);
            g.refund(A);
        }
        for _ in 0..FREE_FAILURES {
            assert_eq!(g.turn(A, t0), Some(Duration::ZERO));
            g.charge(A, t0);
        }
        // Slowed down now: each guess is spaced from the one before.
        let mut waits = Vec::new();
        for _ in 0..4 {
            waits.push(g.turn(A, t0).unwrap());
            g.charge(A, t0);
        }
        assert_eq!(waits[0], Duration::ZERO);
        assert!(
            waits.windows(2).all(|w| w[1] > w[0]),
            "waits must grow: {waits:?}"
        );
        // Another address is not slowed down.
        let _b = g.admit(B).unwrap();
        assert_eq!(g.turn(B, t0), Some(Duration::ZERO));
        // A wait beyond the deadline gives up at once rather than hold a place.
        for _ in 0..20 {
            g.charge(A, t0);
            let _ = g.turn(A, t0);
        }
        assert_eq!(g.turn(A, t0), None);
        // A right guess does not wipe the record; a quiet while does.
        g.refund(A);
        assert_eq!(g.turn(A, t0), None);
        assert_eq!(g.turn(A, t0 + FORGET_AFTER), Some(Duration::ZERO));
    }

    #[test]
    fn rate_limited_counts_what_it_holds_back() {
        let r = RateLimited::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(r.due(t0), Some(0));
        assert_eq!(r.due(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.due(t0 + Duration::from_secs(2)), None);
        assert_eq!(r.due(t0 + Duration::from_secs(11)), Some(2));
    }
}
