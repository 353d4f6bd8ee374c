//! Admission of unauthenticated connections to `serve`: how many handshakes run at once, in
//! total and per peer address, and how long an address that keeps failing authentication
//! waits before its next guess is answered. Pure bookkeeping: the caller passes the time, so
//! the rules are tested without sockets or clocks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
/// The first wait once an address is slowed down; it doubles with each further failure.
const FIRST_WAIT: Duration = Duration::from_millis(250);
/// The longest wait between two guesses from one address.
const MAX_WAIT: Duration = Duration::from_secs(5);
/// An address's failures are forgotten this long after its last one.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses remembered at most; past it, those with nothing in flight are forgotten first.
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

#[derive(Debug)]
struct Address {
    in_flight: usize,
    failures: u32,
    last_failure: Option<Instant>,
    /// When this address's next guess may be answered.
    next_turn: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    in_flight: usize,
    addresses: HashMap<IpAddr, Address>,
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
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        if let Some(a) = st.addresses.get_mut(&self.ip) {
            a.in_flight = a.in_flight.saturating_sub(1);
            if a.in_flight == 0 && a.failures == 0 {
                st.addresses.remove(&self.ip);
            }
        }
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

    /// Admit a new connection from `ip`, or say why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refused> {
        let mut st = self.lock();
        if st.in_flight >= self.limits.in_flight {
            return Err(Refused::Total(st.in_flight));
        }
        if st.addresses.len() >= MAX_ADDRESSES && !st.addresses.contains_key(&ip) {
            st.addresses.retain(|_, a| a.in_flight > 0);
        }
        let a = st.addresses.entry(ip).or_insert(Address {
            in_flight: 0,
            failures: 0,
            last_failure: None,
            next_turn: None,
        });
        if a.in_flight >= self.limits.per_address {
            return Err(Refused::Address(a.in_flight));
        }
        a.in_flight += 1;
        st.in_flight += 1;
        Ok(Ticket {
            gate: self.clone(),
            ip,
        })
    }

    /// Called when `ip`'s guess is about to be answered: how long to wait first. `None`: the
    /// wait would outlast the handshake deadline, so give up on this connection now.
    pub fn turn(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut st = self.lock();
        let Some(a) = st.addresses.get_mut(&ip) else {
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
        if let Some(a) = st.addresses.get_mut(&ip) {
            a.failures = a.failures.saturating_add(1);
            a.last_failure = Some(now);
        }
    }

    /// `ip`'s guess was right: its charge is refunded. Earlier failures still count, so a
    /// client sharing an address with an attacker does not wipe the attacker's record.
    pub fn refund(&self, ip: IpAddr) {
        let mut st = self.lock();
        if let Some(a) = st.addresses.get_mut(&ip) {
            a.failures = a.failures.saturating_sub(1);
        }
    }
}

/// The spacing between two guesses of an address with `failures` recent failures.
fn wait_after(failures: u32) -> Duration {
    if failures < FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_FAILURES).min(16);
    FIRST_WAIT.saturating_mul(1 << doublings).min(MAX_WAIT)
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
        assert_eq!(g.admit(B).unwrap_err(), Refused::Total(3));
        drop(a1);
        let _a3 = g.admit(A).unwrap();
        drop(b1);
        assert!(g.admit(B).is_ok());
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
