//! `xbagent receive`: the new pod's side of a clone.
//!
//! Order of work, each step a guard for the next:
//! 1. Look at DIR, changing nothing. The completion marker: done already (initContainers
//!    restart), exit 0 without connecting. A partial clone (our in-progress marker) with
//!    `--keep-partial`, or anything not ours: refused, the donor never contacted.
//! 2. Connect, retrying with backoff (DNS failures too) until `--retry-for` runs out.
//! 3. Authenticate both ways; wait while the donor is busy.
//! 4. Only now take DIR (the donor has proved it knows the token): create it if missing, clear
//!    a partial clone of ours, write the in-progress marker. A wrong token, an impostor or an
//!    unreachable donor leave DIR exactly as it was.
//! 5. Extract with the one extractor; a silence longer than `--stall-timeout` (no data, no
//!    heartbeat) fails the clone. Then one `syncfs` puts every file and directory on disk.
//! 6. Check the trailer: producer exit status 0, digest, byte, file and chunk counts.
//! 7. Only then, unless the stream held no files (`--allow-empty` accepts that) or a signal
//!    has raised the shutdown flag, write the completion marker (and fsync it).
//!
//! DIR's markers and their durability are [`crate::extract::target`]'s; this module decides
//! what DIR may hold and says so in clone terms.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use super::protocol::{self, FrameType, ReceiverPake, Token, Trailer};
use super::transport::{read_frame, read_header, read_payload, write_frame, Conn, FrameError};
use super::{CloneError, COMPLETE_MARKER, PARTIAL_MARKER};
use crate::extract::ExtractError;
use crate::stream::error::StreamError;
use crate::stream::stop::Stoppable;

type Result<T, E = CloneError> = std::result::Result<T, E>;
use crate::extract::target::{self, Found, Markers, Target};
use crate::extract::{extract_reader, ExtractOptions, WriterOptions};
use crate::format::DecodeOptions;
use crate::progress::Progress;
use crate::retry::{self, Jitter, Schedule};
use crate::stream::sink::StreamTotals;

/// The clone's markers in DIR.
const MARKERS: Markers = Markers {
    in_progress: PARTIAL_MARKER,
    complete: Some(COMPLETE_MARKER),
};

/// Waits between connection attempts: from 0.5 s, doubling to at most 15 s, plus up to 0.5 s
/// (documented in format-spec/clone-protocol.md §12).
const CONNECT_BACKOFF: Schedule = Schedule {
    base: Duration::from_millis(500),
    cap: Duration::from_secs(15),
    jitter: Jitter::Added(Duration::from_millis(500)),
};

/// Settings of `receive`.
#[derive(Clone)]
pub struct ReceiveOptions {
    pub from: String,
    pub dir: PathBuf,
    /// The shared token; `None` only with `--insecure`.
    pub token: Option<Token>,
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    pub retry_for: Duration,
    pub stall_timeout: Duration,
    pub keep_partial: bool,
    /// Plain xbstream from an ncat-style donor: no handshake, no trailer, no marker.
    pub raw: bool,
    pub parallel: usize,
    /// No O_DIRECT writes (see [`crate::extract::WriterOptions::direct`]).
    pub buffered: bool,
    /// Accept a stream of no files (by default an empty clone fails: its producer wrote
    /// nothing).
    pub allow_empty: bool,
}

/// How a `receive` run ended without an error.
#[derive(Debug)]
pub enum Received {
    /// The marker was already there.
    AlreadyComplete,
    /// A clone was received, checked against the trailer, and marked complete.
    Complete(Trailer),
    /// Raw mode: the stream ended with every file complete, but nothing proves it was whole;
    /// no marker was written.
    RawUnproven { files: u64, bytes: u64 },
    /// The shutdown flag was raised (a signal) after the clone was received and checked, but
    /// before the completion marker: no marker was written, the in-progress marker stays.
    Interrupted,
}

/// What to do with DIR, decided from what it holds.
enum Plan {
    AlreadyComplete,
    Fresh,
    ClearPartial,
}

/// Steps 1 and 4: DIR may be empty, missing, complete, or a partial clone of ours (unless
/// `--keep-partial`); anything else is not ours to delete.
fn plan(opts: &ReceiveOptions, found: &Found) -> Result<Plan> {
    let dir = &opts.dir;
    if found.complete {
        return Ok(Plan::AlreadyComplete);
    }
    if found.empty {
        return Ok(Plan::Fresh);
    }
    if !found.in_progress {
        return Err(CloneError::NotOurs { dir: dir.clone() });
    }
    if opts.keep_partial {
        return Err(CloneError::KeepPartial { dir: dir.clone() });
    }
    Ok(Plan::ClearPartial)
}

/// Step 4: take DIR for this clone. It is looked at again, since it may have changed while
/// the donor kept us waiting. `None`: a clone completed meanwhile.
fn claim(opts: &ReceiveOptions) -> Result<Option<Target>> {
    let target = Target::open(&opts.dir, MARKERS)?;
    match plan(opts, &target.found()?)? {
        Plan::AlreadyComplete => return Ok(None),
        Plan::Fresh => {}
        Plan::ClearPartial => {
            tracing::warn!(
                "{} holds a partial clone from an earlier attempt; clearing it and starting again",
                opts.dir.display()
            );
            target.clear()?;
        }
    }
    target.mark(b"xbagent clone in progress\n")?;
    Ok(Some(target))
}

/// Try every address of `from` once.
fn connect_once(from: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in from.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The wait before attempt `attempt + 1`, or `None` once `--retry-for` is used up.
fn next_wait(opts: &ReceiveOptions, start: Instant, attempt: u32) -> Option<Duration> {
    let waited = start.elapsed();
    if waited >= opts.retry_for {
        return None;
    }
    Some(
        CONNECT_BACKOFF
            .delay(attempt, retry::random_u64())
            .min(opts.retry_for.saturating_sub(waited)),
    )
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// Why an attempt to reach the donor is worth another.
enum Retry {
    /// The connection failed: refused, unreachable, DNS not resolving yet (the donor's pod, and
    /// its DNS record, may appear late).
    Unreachable(io::Error),
    /// The donor turned us away before authenticating (its handshake places were full, say
    /// under a flood).
    Busy(String),
}

/// Steps 2 and 3: a connection to a donor that proved it knows the token (or a raw one),
/// retried with backoff until `--retry-for` runs out.
fn reach_donor(opts: &ReceiveOptions) -> Result<Conn> {
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        let retry = match connect_once(&opts.from) {
            Err(e) => Retry::Unreachable(e),
            Ok(sock) => match open_session(opts, sock) {
                Err(CloneError::Busy { why, .. }) => Retry::Busy(why),
                other => return other,
            },
        };
        attempt += 1;
        let Some(sleep) = next_wait(opts, start, attempt) else {
            return Err(match retry {
                Retry::Unreachable(e) => CloneError::Unreachable {
                    addr: opts.from.clone(),
                    waited: humantime::format_duration(round(start.elapsed())).to_string(),
                    last: e.to_string(),
                },
                Retry::Busy(why) => CloneError::Busy {
                    peer: opts.from.clone(),
                    why,
                },
            });
        };
        let wait = humantime::format_duration(round(sleep));
        match &retry {
            Retry::Unreachable(e) => tracing::warn!(
                "donor {} not reachable yet ({e}); retrying in {wait}",
                opts.from
            ),
            Retry::Busy(why) => {
                tracing::warn!("donor {} busy ({why}); retrying in {wait}", opts.from)
            }
        }
        std::thread::sleep(sleep);
    }
}

/// TLS (if configured) and the handshake on a fresh connection.
fn open_session(opts: &ReceiveOptions, sock: TcpStream) -> Result<Conn> {
    let peer = &opts.from;
    let ioerr = |e: io::Error| CloneError::Io {
        peer: peer.clone(),
        source: e,
    };
    sock.set_read_timeout(Some(opts.stall_timeout))
        .map_err(ioerr)?;
    sock.set_write_timeout(Some(Duration::from_secs(60)))
        .map_err(ioerr)?;
    tracing::info!("connected to {peer}");
    let mut conn = match &opts.tls {
        Some((cfg, name)) => {
            let c = rustls::ClientConnection::new(cfg.clone(), name.clone())
                .map_err(|e| CloneError::Tls(e.to_string()))?;
            Conn::TlsClient(Box::new(rustls::StreamOwned::new(c, sock)))
        }
        None => Conn::Plain(sock),
    };
    if opts.raw {
        tracing::warn!("raw mode: the donor sends plain xbstream; a stream cut between two files cannot be told from a complete one, so no completion marker will be written");
    } else {
        handshake(&mut conn, opts)?;
    }
    Ok(conn)
}

/// Receive a clone into `opts.dir`. Raising `shutdown` (a signal) makes the stream's reads
/// fail, and no completion marker is written once it is raised.
pub fn receive(
    opts: &ReceiveOptions,
    progress: &Progress,
    shutdown: &Arc<AtomicBool>,
) -> Result<Received> {
    // Looking only: nothing in DIR changes before the donor has proved itself.
    if let Plan::AlreadyComplete = plan(opts, &target::inspect(&opts.dir, &MARKERS)?)? {
        return Ok(Received::AlreadyComplete);
    }
    let conn = reach_donor(opts)?;
    let Some(target) = claim(opts)? else {
        return Ok(Received::AlreadyComplete);
    };
    let (reader, totals) = extract(opts, conn, &target, progress, shutdown)?;
    target.sync()?;
    if opts.raw {
        refuse_empty(opts, &totals)?;
        return Ok(Received::RawUnproven {
            files: totals.files,
            bytes: totals.bytes,
        });
    }
    let trailer = check_trailer(reader, &totals, &opts.from)?;
    refuse_empty(opts, &totals)?;
    let record = completion_record(&opts.from, &trailer);
    // The last moment a signal can keep the marker from being written: after it, the clone
    // is complete whatever arrives.
    if shutdown.load(Ordering::SeqCst) {
        return Ok(Received::Interrupted);
    }
    // `finish` syncs again (nothing is dirty by now), writes the marker, drops the other one.
    target.finish(Some(format!("{record:#}\n").as_bytes()))?;
    Ok(Received::Complete(trailer))
}

/// A clone of no files is a donor whose backup command wrote nothing (`--exec true`, a
/// wrapper that swallowed mariabackup's failure): never a clone, unless `--allow-empty`.
fn refuse_empty(opts: &ReceiveOptions, totals: &StreamTotals) -> Result<()> {
    if totals.files == 0 && !opts.allow_empty {
        return Err(ExtractError::NoFiles {
            what: format!("the stream from {}", opts.from),
            hint: "no completion marker was written (receive --allow-empty accepts an empty clone)",
        }
        .into());
    }
    Ok(())
}

/// Step 5: run the extractor over the frames. Returns the reader (its trailer, digest and
/// byte count) and the extractor's totals.
fn extract(
    opts: &ReceiveOptions,
    conn: Conn,
    target: &Target,
    progress: &Progress,
    shutdown: &Arc<AtomicBool>,
) -> Result<(FrameReader, StreamTotals)> {
    let peer = opts.from.clone();
    let failure = Arc::new(Mutex::new(None));
    let mut reader = FrameReader {
        conn,
        raw: opts.raw,
        left: 0,
        buf: Vec::new(),
        trailer: None,
        digest: blake3::Hasher::new(),
        bytes: 0,
        peer: peer.clone(),
        stall: opts.stall_timeout,
        failure: failure.clone(),
    };
    let xopts = ExtractOptions {
        dir: target.dir().to_path_buf(),
        decode: DecodeOptions::default(),
        writer: WriterOptions {
            threads: opts.parallel.max(1),
            direct: !opts.buffered,
            reserved: target.reserved(),
            ..WriterOptions::default()
        },
    };
    // Stoppable: a signal ends the clone at the next read, whatever the data.
    let res = extract_reader(
        Stoppable::new(&mut reader, shutdown.clone()),
        &format!("the stream from {peer}"),
        &xopts,
        progress,
    );
    // A network failure inside the extractor's reads surfaces as a read error: report the
    // real cause.
    match res {
        Ok((_, totals)) => Ok((reader, totals)),
        Err(e @ ExtractError::Stream(StreamError::Read { .. })) => {
            let cause = failure.lock().ok().and_then(|mut f| f.take());
            Err(cause.unwrap_or(CloneError::Extract(e)))
        }
        Err(e) => Err(e.into()),
    }
}

/// Step 6: the donor's trailer must report success and match what arrived.
fn check_trailer(mut reader: FrameReader, totals: &StreamTotals, peer: &str) -> Result<Trailer> {
    let Some(trailer) = reader.trailer.take() else {
        return Err(CloneError::Cut { peer: peer.into() });
    };
    if trailer.exit_status != 0 {
        return Err(CloneError::ProducerFailed(trailer.exit_status));
    }
    let ours = *reader.digest.finalize().as_bytes();
    let mut bad = Vec::new();
    if ours != trailer.digest {
        bad.push("stream digest differs".to_string());
    }
    if reader.bytes != trailer.bytes || totals.bytes != trailer.bytes {
        bad.push(format!(
            "{} bytes received, donor sent {}",
            reader.bytes, trailer.bytes
        ));
    }
    if totals.files != trailer.files {
        bad.push(format!(
            "{} files extracted, donor counted {}",
            totals.files, trailer.files
        ));
    }
    if totals.chunks != trailer.chunks {
        bad.push(format!(
            "{} chunks, donor counted {}",
            totals.chunks, trailer.chunks
        ));
    }
    if !bad.is_empty() {
        return Err(CloneError::TrailerMismatch(bad.join("; ")));
    }
    Ok(trailer)
}

/// The completion marker's content (format-spec/clone-protocol.md §10).
fn completion_record(peer: &str, trailer: &Trailer) -> serde_json::Value {
    serde_json::json!({
        "from": peer,
        "completed_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "trailer": trailer,
        "xbagent": env!("CARGO_PKG_VERSION"),
    })
}

/// The handshake's errors, in clone terms, for one peer.
struct Peer<'a>(&'a str);

impl Peer<'_> {
    fn io(&self, e: io::Error) -> CloneError {
        CloneError::Io {
            peer: self.0.into(),
            source: e,
        }
    }

    fn proto(&self, e: protocol::ProtocolError) -> CloneError {
        CloneError::Protocol {
            peer: self.0.into(),
            source: e,
        }
    }

    fn busy(&self, why: String) -> CloneError {
        CloneError::Busy {
            peer: self.0.into(),
            why,
        }
    }

    fn frame(&self, e: FrameError) -> CloneError {
        match e {
            FrameError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => CloneError::Cut {
                peer: self.0.into(),
            },
            FrameError::Io(e) => self.io(e),
            // A raw donor sends xbstream at once: its first byte is the 'X' of "XBSTCK01".
            FrameError::Protocol(protocol::ProtocolError::UnknownFrame(b'X')) => {
                self.proto(protocol::ProtocolError::BadMagic)
            }
            // 0x15/0x16: a TLS alert or handshake record.
            FrameError::Protocol(protocol::ProtocolError::UnknownFrame(0x15 | 0x16)) => {
                self.proto(protocol::ProtocolError::TlsPeer)
            }
            FrameError::Protocol(p) => self.proto(p),
        }
    }
}

/// The donor closed or reset the connection: before it has answered, a sign that it turned us
/// away (too many handshakes in flight) or is restarting, worth another try.
fn closed_early(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Step 3: HELLO, the donor's CHALLENGE (its confirmation checked), our PROOF, then wait for
/// START.
fn handshake(conn: &mut Conn, opts: &ReceiveOptions) -> Result<()> {
    let peer = Peer(&opts.from);
    let pake = ReceiverPake::start(opts.token.as_ref());
    if let Err(e) = write_frame(conn, FrameType::Hello, &protocol::hello(pake.hello()))
        .and_then(|()| conn.flush())
    {
        // A donor that turned us away at its gate may have closed before our HELLO arrived.
        return Err(if closed_early(&e) {
            peer.busy(format!("closed the connection before our greeting ({e})"))
        } else {
            peer.io(e)
        });
    }
    let mut buf = Vec::new();
    // The donor has proved nothing yet: its answer gets no more room than a CHALLENGE or a
    // short ERROR needs.
    let cap = protocol::MAX_PREAUTH_FRAME.max(protocol::CHALLENGE_LEN as u32);
    let ty = match read_frame(conn, &mut buf, cap) {
        Ok(ty) => ty,
        // Closed or reset before any answer: a donor that turned us away at its gate (over
        // TLS it cannot say why), or one restarting.
        Err(FrameError::Io(e)) if closed_early(&e) => {
            return Err(peer.busy(format!("closed the connection before answering ({e})")));
        }
        Err(e) => return Err(peer.frame(e)),
    };
    if ty == FrameType::Error {
        let msg = String::from_utf8_lossy(&buf).into_owned();
        if msg.starts_with("donor busy") {
            return Err(peer.busy(msg));
        }
        return Err(CloneError::Donor(msg));
    }
    if ty != FrameType::Challenge {
        return Err(peer.proto(protocol::ProtocolError::Unexpected {
            expected: "CHALLENGE",
            got: ty,
        }));
    }
    let c = protocol::parse_challenge(&buf).map_err(|e| peer.proto(e))?;
    let reply = match pake.finish(&c) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("receiver refuses: {e}");
            let _ = write_frame(conn, FrameType::Error, msg.as_bytes()).and_then(|()| conn.flush());
            return Err(peer.proto(e));
        }
    };
    write_frame(conn, FrameType::Proof, &reply)
        .and_then(|()| conn.flush())
        .map_err(|e| peer.io(e))?;
    wait_for_start(conn, &peer)
}

/// Wait while the donor is busy (QUEUED, heartbeats) until it sends START.
fn wait_for_start(conn: &mut Conn, peer: &Peer) -> Result<()> {
    let mut buf = Vec::new();
    loop {
        let ty = read_frame(conn, &mut buf, protocol::MAX_FRAME).map_err(|e| peer.frame(e))?;
        match ty {
            FrameType::Start => {
                tracing::info!("clone started: {}", String::from_utf8_lossy(&buf));
                return Ok(());
            }
            FrameType::Queued => tracing::info!("donor busy: {}", String::from_utf8_lossy(&buf)),
            FrameType::Heartbeat => {}
            FrameType::Error => {
                return Err(CloneError::Donor(
                    String::from_utf8_lossy(&buf).into_owned(),
                ))
            }
            other => {
                return Err(peer.proto(protocol::ProtocolError::Unexpected {
                    expected: "START",
                    got: other,
                }))
            }
        }
    }
}

/// The stream inside the frames, as a plain reader for the extractor. Heartbeats are
/// swallowed; the trailer ends the stream; errors are kept for the caller.
struct FrameReader {
    conn: Conn,
    raw: bool,
    /// Bytes left in the DATA frame being read.
    left: usize,
    /// Payload of the last control frame.
    buf: Vec<u8>,
    trailer: Option<Trailer>,
    digest: blake3::Hasher,
    bytes: u64,
    peer: String,
    stall: Duration,
    failure: Arc<Mutex<Option<CloneError>>>,
}

impl FrameReader {
    fn fail(&self, e: CloneError) -> io::Error {
        let msg = e.to_string();
        if let Ok(mut f) = self.failure.lock() {
            *f = Some(e);
        }
        io::Error::other(msg)
    }

    fn net(&self, e: io::Error) -> io::Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.fail(CloneError::Stalled {
                peer: self.peer.clone(),
                after: humantime::format_duration(self.stall).to_string(),
            }),
            io::ErrorKind::UnexpectedEof => self.fail(CloneError::Cut {
                peer: self.peer.clone(),
            }),
            _ => self.fail(CloneError::Io {
                peer: self.peer.clone(),
                source: e,
            }),
        }
    }
}

impl Read for FrameReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.raw {
            let n = self.conn.read(out).map_err(|e| self.net(e))?;
            self.digest.update(&out[..n]);
            self.bytes += n as u64;
            return Ok(n);
        }
        loop {
            if self.trailer.is_some() {
                return Ok(0);
            }
            if self.left > 0 {
                // Inside a DATA frame: read straight into the extractor's buffer, as much as
                // fits (the frame's bytes are already on their way). A TLS read returns one
                // record (16 KiB); filling the buffer instead spares the extractor and the
                // digest thousands of small steps.
                let want = out.len().min(self.left);
                let mut n = 0;
                while n < want {
                    let k = self.conn.read(&mut out[n..want]).map_err(|e| self.net(e))?;
                    if k == 0 {
                        return Err(self.net(io::ErrorKind::UnexpectedEof.into()));
                    }
                    n += k;
                }
                self.digest.update(&out[..n]);
                self.bytes += n as u64;
                self.left -= n;
                return Ok(n);
            }
            let (ty, len) = match read_header(&mut self.conn, protocol::MAX_FRAME) {
                Ok(h) => h,
                Err(FrameError::Io(e)) => return Err(self.net(e)),
                Err(FrameError::Protocol(p)) => {
                    return Err(self.fail(CloneError::Protocol {
                        peer: self.peer.clone(),
                        source: p,
                    }))
                }
            };
            if ty == FrameType::Data {
                self.left = len as usize;
                continue;
            }
            if let Err(e) = read_payload(&mut self.conn, len, &mut self.buf) {
                return Err(self.net(e));
            }
            match ty {
                FrameType::Heartbeat | FrameType::Queued => {}
                FrameType::Trailer => {
                    let t = protocol::parse_trailer(&self.buf).map_err(|p| {
                        self.fail(CloneError::Protocol {
                            peer: self.peer.clone(),
                            source: p,
                        })
                    })?;
                    self.trailer = Some(t);
                }
                FrameType::Error => {
                    let msg = String::from_utf8_lossy(&self.buf).into_owned();
                    return Err(self.fail(CloneError::Donor(msg)));
                }
                other => {
                    return Err(self.fail(CloneError::Protocol {
                        peer: self.peer.clone(),
                        source: protocol::ProtocolError::Unexpected {
                            expected: "DATA",
                            got: other,
                        },
                    }))
                }
            }
        }
    }
}
