//! Where a stream comes from: a producer command (e.g. `mariabackup --backup
//! --stream=xbstream`), a directory streamed by `create`, a file, or standard input.
//!
//! A [`Running`] source delivers its bytes as [`Piece`]s on a bounded channel, read into
//! buffers from a fixed pool (so memory is bounded whatever the stream's size), and can be
//! stopped: a command runs in its own process group, and stopping it stops everything it started.
//!
//! A source only delivers bytes: it never parses them (the pump's checker does) and never
//! decides what its failure means (the exit status goes to the caller).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::create::{create, CreateOptions};
use crate::progress::Progress;
use crate::stream::error::StreamError;
use crate::stream::stdio;

/// Where a stream comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A command run through `sh -c`, its standard output being the stream.
    Exec(String),
    /// A directory streamed as `create -C DIR .` would.
    Dir(PathBuf),
    /// A file holding a stream.
    File(PathBuf),
    /// Standard input.
    Stdin,
}

impl Source {
    /// `exec: CMD`, `dir: DIR`, `file: PATH` or `stdin`: for logs, frames and manifests.
    pub fn describe(&self) -> String {
        match self {
            Source::Exec(cmd) => format!("exec: {cmd}"),
            Source::Dir(d) => format!("dir: {}", d.display()),
            Source::File(f) => format!("file: {}", f.display()),
            Source::Stdin => "stdin".to_string(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Source::Exec(_) => "exec",
            Source::Dir(_) => "dir",
            Source::File(_) => "file",
            Source::Stdin => "stdin",
        }
    }
}

/// Why a source could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot start the source command: {0}")]
    Command(#[source] std::io::Error),
    #[error("cannot make a pipe: {0}")]
    Pipe(#[source] std::io::Error),
    /// The file or standard input could not be opened.
    #[error(transparent)]
    Open(#[from] StreamError),
}

/// What the source delivered next.
pub enum Piece {
    /// A buffer whose bytes `headroom..headroom + len` are stream data.
    Data(Vec<u8>, usize),
    End,
    Failed(std::io::Error),
}

/// A running source: its bytes arrive on [`Running::rx`]; give each buffer back with
/// [`Running::recycle`]; [`Running::stop`] ends it and everything it started.
pub struct Running {
    pub rx: Receiver<Piece>,
    /// Buffers go back to the reader thread after use: allocated once.
    pool: Sender<Vec<u8>>,
    child: Option<Child>,
    thread_status: Option<thread::JoinHandle<i32>>,
}

/// Buffers in the pool: enough to keep the reader busy while the consumer works.
const POOL: usize = 10;

impl Running {
    /// Start `source`. Each buffer has `headroom` spare bytes before the data (room for a
    /// frame header) and reads up to `piece` bytes. `parallel`: readers for a directory.
    pub fn start(
        source: &Source,
        parallel: usize,
        headroom: usize,
        piece: usize,
    ) -> Result<Self, SourceError> {
        let (tx, rx) = bounded::<Piece>(POOL - 2);
        let (pool, pool_rx) = bounded::<Vec<u8>>(POOL);
        for _ in 0..POOL {
            let _ = pool.send(vec![0u8; headroom + piece]);
        }
        let mut running = Running {
            rx,
            pool,
            child: None,
            thread_status: None,
        };
        let reader = PieceReader {
            tx,
            pool: pool_rx,
            headroom,
        };
        match source {
            Source::Exec(cmd) => running.child = Some(start_command(cmd, reader, piece)?),
            Source::Dir(dir) => {
                running.thread_status = Some(start_dir(dir, parallel, reader, piece)?)
            }
            Source::File(path) => {
                let (f, _) = stdio::open_input(Some(path))?;
                reader.spawn(f);
            }
            Source::Stdin => reader.spawn(stdio::stdin()?),
        }
        Ok(running)
    }

    /// Give a buffer back to the reader.
    pub fn recycle(&self, buf: Vec<u8>) {
        let _ = self.pool.send(buf);
    }

    /// Stop the source (SIGTERM to its process group, SIGKILL after 5 s) and reap it.
    pub fn stop(&mut self) {
        if let Some(child) = &mut self.child {
            if let Ok(None) = child.try_wait() {
                let pgid = rustix::process::Pid::from_raw(child.id() as i32);
                if let Some(pgid) = pgid {
                    let _ =
                        rustix::process::kill_process_group(pgid, rustix::process::Signal::TERM);
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while Instant::now() < deadline {
                        if let Ok(Some(_)) = child.try_wait() {
                            break;
                        }
                        thread::sleep(Duration::from_millis(50));
                    }
                    let _ =
                        rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
                }
                let _ = child.wait();
                tracing::info!("source stopped");
            }
        }
        // A directory source stops when its pipe's reader is gone.
        while self.rx.try_recv().is_ok() {}
    }

    /// Exit status of a source that has finished sending (0 for a file or stdin; a negative
    /// number for a command killed by a signal).
    pub fn status(&mut self) -> i32 {
        if let Some(child) = &mut self.child {
            return match child.wait() {
                Ok(s) => s.code().unwrap_or_else(|| -s.signal().unwrap_or(1)),
                Err(_) => -1,
            };
        }
        match self.thread_status.take() {
            Some(h) => h.join().unwrap_or(1),
            None => 0,
        }
    }
}

/// Run `sh -c cmd` in its own process group, its stderr logged line by line.
fn start_command(cmd: &str, reader: PieceReader, piece: usize) -> Result<Child, SourceError> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so stopping it stops what it started.
        .process_group(0)
        .spawn()
        .map_err(SourceError::Command)?;
    tracing::info!(pid = child.id(), "source started: {cmd}");
    if let Some(err) = child.stderr.take() {
        let span = tracing::Span::current();
        thread::spawn(move || {
            let _g = span.enter();
            for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                tracing::info!(target: "source", "{line}");
            }
        });
    }
    if let Some(out) = child.stdout.take() {
        // A larger pipe lets each read carry up to a piece, not 64 KiB.
        let _ = rustix::pipe::fcntl_setpipe_size(&out, piece.min(1 << 20));
        reader.spawn(out);
    }
    Ok(child)
}

/// Stream `dir` with `create` on a thread, through a pipe; the thread returns the exit status.
fn start_dir(
    dir: &Path,
    parallel: usize,
    reader: PieceReader,
    piece: usize,
) -> Result<thread::JoinHandle<i32>, SourceError> {
    let (r, w) = std::io::pipe().map_err(SourceError::Pipe)?;
    let mut copts = CreateOptions::new(dir.to_path_buf(), vec![PathBuf::from(".")]);
    copts.parallel = parallel.max(1);
    let h = thread::spawn(move || match create(&copts, w, &Progress::hidden()) {
        Ok(_) => 0,
        Err(e) => {
            tracing::warn!("streaming the directory failed: {e}");
            1
        }
    });
    let _ = rustix::pipe::fcntl_setpipe_size(&r, piece.min(1 << 20));
    reader.spawn(r);
    Ok(h)
}

/// The thread that reads a source into pooled buffers and sends them on as [`Piece`]s.
struct PieceReader {
    tx: Sender<Piece>,
    pool: Receiver<Vec<u8>>,
    headroom: usize,
}

impl PieceReader {
    fn spawn(self, r: impl Read + Send + 'static) {
        thread::spawn(move || self.run(r));
    }

    /// Read into each free buffer until the end, an error, or the receiver is gone.
    fn run(self, mut r: impl Read) {
        for mut buf in self.pool {
            match r.read(&mut buf[self.headroom..]) {
                Ok(0) => {
                    let _ = self.tx.send(Piece::End);
                    return;
                }
                Ok(n) => {
                    if self.tx.send(Piece::Data(buf, n)).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    let _ = self.tx.send(Piece::Data(buf, 0));
                }
                Err(e) => {
                    let _ = self.tx.send(Piece::Failed(e));
                    return;
                }
            }
        }
    }
}
