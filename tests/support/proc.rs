//! A process a test starts and watches: its stdout and stderr in one log file, waits bounded
//! by a time limit (then it is killed and the test fails with its log), signals, and a kill
//! (and reap) on drop, so that no test leaves a process behind, also when it fails.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use super::child_path;

/// A process started by a test; killed (and reaped) on drop. Its stdout and stderr go to one
/// log file.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// `serve`: SIGTERM first, so it stops its sources (they run in their own process groups).
    term_first: bool,
}

/// How a process ended.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub status: ExitStatus,
    pub log: String,
    pub elapsed: Duration,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf, term_first: bool) -> Proc {
        let f = fs::File::create(&log).expect("cannot create a log file");
        let f2 = f.try_clone().expect("cannot dup a log file");
        let child = cmd
            .env("PATH", child_path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
            term_first,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill_process(Pid::from_raw(self.pid()).expect("pid"), sig);
    }

    /// Wait for the exit, at most `limit` (then kill it and panic with its log).
    pub fn wait(&mut self, limit: Duration) -> Outcome {
        let start = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    return Outcome {
                        code: st.code(),
                        status: st,
                        log: self.log(),
                        elapsed: start.elapsed(),
                    }
                }
                Ok(None) if start.elapsed() < limit => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "{} did not exit within {limit:?}; killed it. Its log:\n{}",
                        self.name,
                        self.log()
                    );
                }
                Err(e) => panic!("cannot wait for {}: {e}", self.name),
            }
        }
    }

    /// [`Proc::wait`], then show (with --nocapture) how it ended: exit, time, last log line.
    pub fn wait_shown(&mut self, limit: Duration) -> Outcome {
        let out = self.wait(limit);
        eprintln!(
            "[{}] exit {:?} after {:.1?}: {}",
            self.name,
            out.code,
            out.elapsed,
            out.log.lines().last().unwrap_or("")
        );
        out
    }

    /// Wait until the log holds `needle` (the process must stay alive meanwhile).
    pub fn wait_log(&mut self, needle: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            if self.log().contains(needle) {
                return;
            }
            if !self.running() {
                panic!(
                    "{} exited before logging {needle:?}. Its log:\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                start.elapsed() < limit,
                "{} did not log {needle:?} within {limit:?}. Its log:\n{}",
                self.name,
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if self.term_first {
                self.signal(Signal::TERM);
                let deadline = Instant::now() + Duration::from_secs(8);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = self.child.try_wait() {
                        return;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
