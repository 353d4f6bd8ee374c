//! Replaying archived binlogs: `mariabackup --prepare`, a private `mariadbd` on the restored
//! directory, and `mariadb-binlog FILE | mariadb`, one `mariadb-binlog` per file (as WAL-G
//! does; several files in one call have had `--stop-*` bugs) into one client session.
//!
//! The private server listens on no network port: only on a socket in a fresh 0700 directory.
//! It runs with `--skip-grant-tables` so the replay needs no password of the restored server;
//! the session's first statement, `FLUSH PRIVILEGES`, turns the grant tables back on for
//! anything else, while the replaying session keeps all privileges (GRANT statements in the
//! binlog then work). It never binlogs what it replays (`--skip-log-bin`) and starts no
//! replication.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

/// The external programs a point-in-time restore runs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub mariabackup: OsString,
    pub mariadbd: OsString,
    pub mariadb: OsString,
    pub mariadb_binlog: OsString,
    pub mariadb_admin: OsString,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            mariabackup: "mariabackup".into(),
            mariadbd: "mariadbd".into(),
            mariadb: "mariadb".into(),
            mariadb_binlog: "mariadb-binlog".into(),
            mariadb_admin: "mariadb-admin".into(),
        }
    }
}

#[derive(Debug, Error)]
pub enum ReplayError {
    #[error(
        "{tool} is needed for a point-in-time restore and was not found in PATH (or /usr/sbin); \
         install mariadb-server, mariadb-client and mariadb-backup of the backup's version"
    )]
    MissingTool { tool: String },
    #[error("{what} failed ({status}){}", tail_of(log))]
    Failed {
        what: String,
        status: String,
        log: String,
    },
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the private server did not answer within {0:?}{tail}", tail = tail_of(.1))]
    ServerStart(Duration, String),
    #[error("interrupted")]
    Interrupted,
}

fn tail_of(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = &lines[lines.len().saturating_sub(12)..];
    format!("; its last output:\n  {}", tail.join("\n  "))
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ReplayError {
    let what = what.into();
    move |source| ReplayError::Io { what, source }
}

/// Find `tool` in PATH (and /usr/sbin, where Debian puts mariadbd).
pub fn locate(tool: &OsString) -> Result<PathBuf, ReplayError> {
    let p = Path::new(tool);
    if p.components().count() > 1 {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(ReplayError::MissingTool {
                tool: p.display().to_string(),
            })
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(p))
        .find(|c| c.is_file())
        .ok_or_else(|| ReplayError::MissingTool {
            tool: p.display().to_string(),
        })
}

/// Every tool located, before anything is written.
#[derive(Debug, Clone)]
pub struct Located {
    pub mariabackup: PathBuf,
    pub mariadbd: PathBuf,
    pub mariadb: PathBuf,
    pub mariadb_binlog: PathBuf,
    pub mariadb_admin: PathBuf,
}

impl Tools {
    pub fn locate(&self) -> Result<Located, ReplayError> {
        Ok(Located {
            mariabackup: locate(&self.mariabackup)?,
            mariadbd: locate(&self.mariadbd)?,
            mariadb: locate(&self.mariadb)?,
            mariadb_binlog: locate(&self.mariadb_binlog)?,
            mariadb_admin: locate(&self.mariadb_admin)?,
        })
    }
}

/// Run a command to completion with its output in `log`; an error with the log's tail if it
/// fails.
fn run_logged(mut cmd: Command, what: &str, log: &Path) -> Result<(), ReplayError> {
    let out = File::create(log).map_err(io_err(format!("create {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io_err(format!("open {}", log.display())))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(io_err(format!("run {what}")))?;
    if !status.success() {
        return Err(ReplayError::Failed {
            what: what.to_string(),
            status: status.to_string(),
            log: std::fs::read_to_string(log).unwrap_or_default(),
        });
    }
    Ok(())
}

/// `mariabackup --prepare --target-dir=DIR`.
pub fn prepare(tools: &Located, dir: &Path, work: &Path) -> Result<(), ReplayError> {
    let mut c = Command::new(&tools.mariabackup);
    c.arg("--prepare")
        .arg(format!("--target-dir={}", dir.display()));
    run_logged(c, "mariabackup --prepare", &work.join("prepare.log"))
}

/// A private mariadbd on a restored, prepared directory.
pub struct PrivateServer {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    admin: PathBuf,
}

const START_WAIT: Duration = Duration::from_secs(300);
/// A clean shutdown flushes the buffer pool: a few seconds, longer on a slow disk.
const STOP_WAIT: Duration = Duration::from_secs(300);

impl PrivateServer {
    pub fn start(tools: &Located, dir: &Path, work: &Path) -> Result<PrivateServer, ReplayError> {
        let socket = work.join("sock");
        let log = work.join("mariadbd.err");
        let tmp = work.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
        let mut c = Command::new(&tools.mariadbd);
        c.arg("--no-defaults")
            .arg(format!("--datadir={}", dir.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!(
                "--pid-file={}",
                work.join("mariadbd.pid").display()
            ))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args([
                "--skip-networking",
                "--skip-log-bin",
                "--skip-slave-start",
                "--skip-grant-tables",
                "--skip-name-resolve",
                // No fsync per replayed commit and no doublewrite: the clean shutdown at the
                // end writes everything, and a replay cut short leaves the restore's marker,
                // so its directory is never taken for a finished one (about twice as fast).
                "--innodb-flush-log-at-trx-commit=2",
                "--innodb-doublewrite=0",
            ]);
        if rustix::process::geteuid().is_root() {
            c.arg("--user=root");
        }
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_err("start mariadbd"))?;
        let mut s = PrivateServer {
            child,
            socket,
            log,
            admin: tools.mariadb_admin.clone(),
        };
        s.wait_ready()?;
        Ok(s)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self) -> Result<(), ReplayError> {
        let started = Instant::now();
        while started.elapsed() < START_WAIT {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ReplayError::Failed {
                    what: "the private mariadbd".into(),
                    status: format!("exited during start-up: {status}"),
                    log: self.log_text(),
                });
            }
            let ok = Command::new(&self.admin)
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket.display()))
                .args(["--user=root", "--connect-timeout=2", "ping"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(ReplayError::ServerStart(START_WAIT, self.log_text()))
    }

    /// Shut down cleanly (so InnoDB is consistent on disk) and wait for the process. By
    /// SIGTERM, which mariadbd handles as SHUTDOWN: `mariadb-admin shutdown` has to log in, and
    /// once the replay's FLUSH PRIVILEGES has turned the grant tables back on, root of a
    /// restored server that has a password (the mariadb image's root@localhost) is refused,
    /// and the wait for the server then never ended.
    pub fn shutdown(mut self) -> Result<(), ReplayError> {
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            rustix::process::kill_process(pid, rustix::process::Signal::TERM).map_err(|e| {
                ReplayError::Io {
                    what: "signal the private mariadbd to shut down".into(),
                    source: e.into(),
                }
            })?;
        }
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().map_err(io_err("wait for mariadbd"))? {
                break status;
            }
            if started.elapsed() > STOP_WAIT {
                // Drop kills it.
                return Err(ReplayError::Failed {
                    what: "shutting the private mariadbd down".into(),
                    status: format!("still running {STOP_WAIT:?} after SIGTERM"),
                    log: self.log_text(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if !status.success() {
            return Err(ReplayError::Failed {
                what: "shutting the private mariadbd down".into(),
                status: format!("mariadbd {status}"),
                log: self.log_text(),
            });
        }
        Ok(())
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        // Only on an error path: a clean end went through `shutdown`, which waited.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One `mariadb-binlog` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub file: PathBuf,
    /// `--start-position` (a byte offset), if not the file's start.
    pub start: Option<u64>,
    /// `--stop-position` (a byte offset): events at or after it are not replayed.
    pub stop: Option<u64>,
}

/// The arguments of one step's `mariadb-binlog`.
pub fn binlog_args(step: &Step) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["--no-defaults".into()];
    if let Some(s) = step.start {
        a.push(format!("--start-position={s}").into());
    }
    if let Some(s) = step.stop {
        a.push(format!("--stop-position={s}").into());
    }
    a.push(step.file.clone().into_os_string());
    a
}

/// Replay `steps` in order through one `mariadb` session on the private server. Bytes go
/// from each `mariadb-binlog` straight into the client's stdin (an OS pipe; nothing is
/// copied through this process).
pub fn replay(
    tools: &Located,
    server: &PrivateServer,
    steps: &[Step],
    work: &Path,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), ReplayError> {
    let (reader, mut writer) = io::pipe().map_err(io_err("create a pipe"))?;
    let client_log = work.join("mariadb.err");
    let client_err = File::create(&client_log).map_err(io_err("create the client's log"))?;
    let mut client = Command::new(&tools.mariadb)
        .arg("--no-defaults")
        .arg(format!("--socket={}", server.socket().display()))
        .args(["--user=root", "--binary-mode", "--batch"])
        .stdin(reader)
        .stdout(Stdio::null())
        .stderr(client_err)
        .spawn()
        .map_err(io_err("start the mariadb client"))?;
    let fed = feed(tools, steps, &mut writer, work, stop);
    drop(writer);
    let status = client
        .wait()
        .map_err(io_err("wait for the mariadb client"))?;
    let client_failed = |status: ExitStatus| ReplayError::Failed {
        what: "the mariadb client replaying the binlogs".into(),
        status: status.to_string(),
        log: std::fs::read_to_string(&client_log).unwrap_or_default(),
    };
    // The client's error explains a broken pipe of mariadb-binlog; report it first.
    if !status.success() {
        return Err(client_failed(status));
    }
    fed
}

fn feed(
    tools: &Located,
    steps: &[Step],
    writer: &mut io::PipeWriter,
    work: &Path,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), ReplayError> {
    writer
        .write_all(b"FLUSH PRIVILEGES;\n")
        .map_err(io_err("write to the mariadb client"))?;
    for (i, step) in steps.iter().enumerate() {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ReplayError::Interrupted);
        }
        let log = work.join(format!("mariadb-binlog.{i}.err"));
        let err = File::create(&log).map_err(io_err("create mariadb-binlog's log"))?;
        let out = writer
            .try_clone()
            .map_err(io_err("duplicate the pipe to the mariadb client"))?;
        let status = Command::new(&tools.mariadb_binlog)
            .args(binlog_args(step))
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .map_err(io_err("run mariadb-binlog"))?;
        if !status.success() {
            let mut text = String::new();
            let _ = File::open(&log).and_then(|mut f| f.read_to_string(&mut text));
            return Err(ReplayError::Failed {
                what: format!("mariadb-binlog {}", step.file.display()),
                status: status.to_string(),
                log: text,
            });
        }
        tracing::info!("replayed {}", step.file.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binlog_arguments() {
        let s = Step {
            file: "/w/mariadb-bin.000002".into(),
            start: Some(568),
            stop: Some(9000),
        };
        assert_eq!(
            binlog_args(&s),
            [
                "--no-defaults",
                "--start-position=568",
                "--stop-position=9000",
                "/w/mariadb-bin.000002"
            ]
            .map(OsString::from)
        );
        let s = Step {
            start: None,
            stop: None,
            ..s
        };
        assert_eq!(binlog_args(&s).len(), 2);
    }

    #[test]
    fn missing_tools_are_named() {
        let e = locate(&"no-such-tool-xbagent".into()).unwrap_err();
        assert!(e.to_string().contains("no-such-tool-xbagent"), "{e}");
    }
}
