//! SIGINT and SIGTERM for the commands that have no cleanup of their own to run on a signal:
//! `extract`, `create`, `list`, `verify FILE` and `receive`. (`upload`, `restore`,
//! `verify REPO`, `backups prune` and `serve` stop through their own flag: `shutdown_flag` in
//! main.rs.)
//!
//! A signal raises the command's stop flag: its reads and writes fail from then on (see
//! [`xbagent::stream::stop`]), and it returns an error. [`Stop::settle`] turns that error into
//! "stopped by SIGTERM" and exit 130. A command can still be waiting inside one read or write
//! (a silent pipe, a socket with nothing to read, a full pipe downstream): if it has not
//! settled [`GRACE`] after the signal, the watcher thread prints the same message and ends the
//! process with 130 itself. So every such command is gone within a second of the signal.
//!
//! The watcher must never end the process once the command has settled: from then on the
//! command's own outcome (its exit code and message) stands. A signal that arrives after that
//! is ignored; only printing the result is left.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::exit::{Failure, INTERRUPTED};

/// How long a command has, after the signal, to stop by itself before the watcher ends the
/// process. Short enough that the whole stop stays within a second.
const GRACE: Duration = Duration::from_millis(600);

/// The stop flag of one command, and what its signal message says is left behind.
pub struct Stop {
    flag: Arc<AtomicBool>,
    signal: Arc<AtomicI32>,
    /// Set (under the lock) once the command has its outcome.
    settled: Arc<Mutex<bool>>,
    left: Arc<str>,
}

impl Stop {
    /// Catch SIGINT and SIGTERM from now on. `left` says what a stopped run leaves behind
    /// (ends the message).
    pub fn install(left: impl Into<String>) -> Result<Stop, Failure> {
        let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(Failure::Signals)?;
        let stop = Stop {
            flag: Arc::new(AtomicBool::new(false)),
            signal: Arc::new(AtomicI32::new(0)),
            settled: Arc::new(Mutex::new(false)),
            left: left.into().into(),
        };
        let (flag, signal, settled, left) = (
            stop.flag.clone(),
            stop.signal.clone(),
            stop.settled.clone(),
            stop.left.clone(),
        );
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let Some(sig) = signals.forever().next() else {
                    return;
                };
                {
                    let done = settled.lock().unwrap_or_else(|e| e.into_inner());
                    if *done {
                        return;
                    }
                    signal.store(sig, Ordering::SeqCst);
                    flag.store(true, Ordering::SeqCst);
                }
                std::thread::sleep(GRACE);
                let done = settled.lock().unwrap_or_else(|e| e.into_inner());
                if !*done {
                    // Still inside a read or write: end it here, the lock held so that the
                    // command cannot settle meanwhile.
                    eprintln!("xbagent: error: {}", message(sig, &left));
                    std::process::exit(INTERRUPTED);
                }
            })
            .map_err(Failure::Signals)?;
        Ok(stop)
    }

    /// The flag the command's reads and writes check.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    /// The command has its outcome: from now on no signal ends the process. A failure after
    /// a signal is reported as the signal (exit 130): the signal caused it. A success stands.
    pub fn settle<T, E: Into<Failure>>(&self, res: Result<T, E>) -> Result<T, Failure> {
        let mut done = self.settled.lock().unwrap_or_else(|e| e.into_inner());
        *done = true;
        match res {
            Ok(v) => Ok(v),
            Err(_) if self.flag.load(Ordering::SeqCst) => Err(self.interrupted()),
            Err(e) => Err(e.into()),
        }
    }

    /// The failure to report for a stop (exit 130).
    pub fn interrupted(&self) -> Failure {
        Failure::Interrupted(message(self.signal.load(Ordering::SeqCst), &self.left))
    }

    /// Has a signal arrived?
    pub fn raised(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

fn message(sig: i32, left: &str) -> String {
    let name = match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    };
    format!("stopped by {name}; {left}")
}
