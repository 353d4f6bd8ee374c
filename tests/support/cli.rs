//! Running the binary (or any command) from a test: with arguments and optional standard
//! input, output captured, a time limit that kills a hung child, and assertions on the
//! outcome that print everything it said. A child is never left running.

use std::io::Write;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// What a finished command said.
pub struct Out {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn from_output(what: String, o: Output) -> Out {
        Out {
            what,
            status: o.status,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// The exit code, -1 when killed by a signal.
    pub fn exit(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    pub fn describe(&self) -> String {
        format!(
            "{}\n  status: {:?}\n  stdout:\n{}\n  stderr:\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }

    #[track_caller]
    pub fn code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit status {code}: {}",
            self.describe()
        );
        self
    }

    /// stderr contains `needle` (case-insensitive).
    #[track_caller]
    pub fn says(&self, needle: &str) -> &Self {
        assert!(
            self.stderr
                .to_ascii_lowercase()
                .contains(&needle.to_ascii_lowercase()),
            "expected {needle:?} on stderr: {}",
            self.describe()
        );
        self
    }

    /// stderr contains one of `needles` (case-insensitive).
    #[track_caller]
    pub fn says_one_of(&self, needles: &[&str]) -> &Self {
        let e = self.stderr.to_ascii_lowercase();
        assert!(
            needles.iter().any(|n| e.contains(&n.to_ascii_lowercase())),
            "expected one of {needles:?} on stderr: {}",
            self.describe()
        );
        self
    }

    #[track_caller]
    pub fn prints(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "expected {needle:?} on stdout: {}",
            self.describe()
        );
        self
    }

    #[track_caller]
    pub fn prints_not(&self, needle: &str) -> &Self {
        assert!(
            !self.stdout.contains(needle),
            "did not expect {needle:?} on stdout: {}",
            self.describe()
        );
        self
    }
}

/// Run `cmd` to its end with no standard input.
pub fn run(mut cmd: Command) -> Out {
    let what = format!("{cmd:?}");
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    Out::from_output(what, o)
}

/// Run `cmd` with `stdin` (or none) as its standard input, killing it after `limit`.
pub fn run_timed(mut cmd: Command, stdin: Option<&[u8]>, limit: Duration) -> Out {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if let Some(data) = stdin {
        let mut si = child.stdin.take().expect("stdin is piped");
        // The process may exit before reading everything: a broken pipe is fine.
        let _ = si.write_all(data);
    }
    Out::from_output(what, wait_with_timeout(child, limit))
}

/// Wait for `child`, collecting its output; kill it and panic after `limit`.
pub fn wait_with_timeout(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the command did not finish within {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
