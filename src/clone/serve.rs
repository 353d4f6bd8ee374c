//! `xbagent serve`: the donor side of a clone.
//!
//! One thread per connection. A connection is authenticated before anything else happens; only
//! then does it wait for a free slot (`--max-conns`, with QUEUED frames so the peer knows why
//! it waits) and start its source: a shell command (e.g. `mariabackup --backup
//! --stream=xbstream`) or a directory streamed by `create`. The stream layer's checked pump
//! ([`crate::stream::pump`]) runs it: its bytes are checked by the one decoder as they pass,
//! framed, and sent; heartbeats fill silences; a trailer ends a good stream. A peer that goes
//! away, a defect in the stream, or SIGTERM stops the source's whole process group: no
//! orphaned backups.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustls::ServerConfig;

use super::protocol::{self, Challenge, FrameType, Trailer, FLAG_NO_AUTH, NONCE_LEN};
use super::transport::{read_frame, write_frame, Conn, FrameError};
use super::CloneError;
type Result<T, E = CloneError> = std::result::Result<T, E>;
use crate::format::DecodeOptions;
use crate::stream::check::StreamChecker;
use crate::stream::pump::{pump, CheckedPiece, Forward, PumpError, PumpSettings};
use crate::stream::source::Source;

/// Settings of `serve`.
#[derive(Clone)]
pub struct ServeOptions {
    pub listen: String,
    pub source: Source,
    pub max_conns: usize,
    /// Key derived from the token file; `None` only with `--insecure`.
    pub key: Option<[u8; 32]>,
    pub tls: Option<Arc<ServerConfig>>,
    /// Plain xbstream, no handshake (for `ncat --recv-only | xbstream -x` receivers).
    pub raw: bool,
    pub heartbeat: Duration,
    /// Parallel readers for `--dir`.
    pub parallel: usize,
}

const DATA_FRAME: usize = 1 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
const QUEUE_NOTICE: Duration = Duration::from_secs(5);

/// Clone slots: at most `max` sources run at once.
struct Slots {
    max: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    /// Wait up to `wait` for a slot; `Some(running)` if none came free.
    fn try_take(&self, wait: Duration) -> std::result::Result<(), usize> {
        let deadline = Instant::now() + wait;
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used >= self.max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(*used);
            }
            used = self
                .freed
                .wait_timeout(used, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *used += 1;
        Ok(())
    }
    fn give_back(&self) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(1);
        self.freed.notify_one();
    }
}

/// Run the donor until `shutdown` is set (SIGTERM). In-flight clones are then aborted: their
/// sources stopped, their peers told.
pub fn serve(opts: ServeOptions, shutdown: Arc<AtomicBool>) -> Result<()> {
    let listener = TcpListener::bind(&opts.listen).map_err(|e| CloneError::Listen {
        addr: opts.listen.clone(),
        source: e,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| CloneError::Listen {
            addr: opts.listen.clone(),
            source: e,
        })?;
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    if opts.raw {
        tracing::warn!(
            "serving raw xbstream on {local}: no authentication, and receivers cannot tell a cut stream from a complete one"
        );
    } else if opts.key.is_none() {
        tracing::warn!("serving on {local} WITHOUT authentication (--insecure): anyone who reaches this port gets the whole database");
    }
    tracing::info!(
        "listening on {local} (max {} concurrent clones)",
        opts.max_conns
    );
    let slots = Arc::new(Slots {
        max: opts.max_conns.max(1),
        used: Mutex::new(0),
        freed: Condvar::new(),
    });
    let ids = AtomicU64::new(1);
    let mut handles = Vec::new();
    while !shutdown.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((sock, peer)) => {
                let id = ids.fetch_add(1, Ordering::Relaxed);
                let (opts, slots, shutdown) = (opts.clone(), slots.clone(), shutdown.clone());
                handles.push(thread::spawn(move || {
                    handle(id, sock, peer, &opts, &slots, &shutdown)
                }));
                handles.retain(|h| !h.is_finished());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(50))
            }
            Err(e) => tracing::warn!("accept failed: {e}"),
        }
    }
    tracing::info!(
        "shutting down: no new connections; aborting {} in-flight clone(s)",
        handles.len()
    );
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn handle(
    id: u64,
    sock: TcpStream,
    peer: SocketAddr,
    opts: &ServeOptions,
    slots: &Slots,
    shutdown: &AtomicBool,
) {
    let span = tracing::info_span!("conn", id, %peer);
    let _g = span.enter();
    tracing::info!("connected");
    match session(sock, opts, slots, shutdown) {
        Ok(t) if t.exit_status == 0 => tracing::info!(
            "clone sent: {} files, {} chunks, {} bytes",
            t.files,
            t.chunks,
            t.bytes
        ),
        Ok(t) => tracing::warn!(
            "source exited with status {}; the receiver was told (trailer)",
            t.exit_status
        ),
        Err(e) => tracing::warn!("clone aborted: {e}"),
    }
}

/// Why one connection's session ended without a clone. Sent to the peer (an ERROR frame)
/// where it still listens, and logged; it never stops the donor.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Socket(#[source] std::io::Error),
    #[error("{0}")]
    Tls(#[source] rustls::Error),
    #[error("handshake: {0}")]
    Handshake(#[source] FrameError),
    #[error("handshake: {0}")]
    HandshakeSend(#[source] std::io::Error),
    #[error("handshake: expected {expected}, got {got:?}")]
    Unexpected {
        expected: &'static str,
        got: FrameType,
    },
    #[error("{0}")]
    Hello(#[source] protocol::ProtocolError),
    #[error("no randomness: {0}")]
    Randomness(#[source] rustix::io::Errno),
    #[error("peer refused: {0}")]
    PeerRefused(String),
    #[error("authentication failed: wrong token")]
    WrongToken,
    #[error("shutting down before the clone started")]
    ShuttingDown,
    #[error("peer left while waiting: {0}")]
    LeftWhileQueued(#[source] std::io::Error),
    #[error("{0}")]
    SourceStart(#[source] crate::stream::source::SourceError),
    #[error("donor is shutting down (SIGTERM)")]
    Interrupted,
    #[error("reading the source failed: {0}")]
    SourceRead(#[source] std::io::Error),
    #[error("the source's stream is defective: {0}")]
    Defective(#[source] crate::stream::error::StreamError),
    #[error("receiver went away: {0}")]
    ReceiverGone(#[source] std::io::Error),
}

fn session(
    sock: TcpStream,
    opts: &ServeOptions,
    slots: &Slots,
    shutdown: &AtomicBool,
) -> std::result::Result<Trailer, SessionError> {
    let mut conn = open_conn(sock, opts)?;
    let mut buf = Vec::new();
    if !opts.raw {
        if let Err(e) = handshake(&mut conn, opts, &mut buf) {
            let _ = write_frame(&mut conn, FrameType::Error, e.to_string().as_bytes());
            conn.finish();
            return Err(e);
        }
        tracing::info!("peer authenticated");
    }
    wait_for_slot(&mut conn, opts, slots, shutdown)?;
    let result = stream(&mut conn, opts, shutdown);
    slots.give_back();
    conn.finish();
    result
}

/// The connection with its timeouts set, wrapped in TLS if configured.
fn open_conn(sock: TcpStream, opts: &ServeOptions) -> std::result::Result<Conn, SessionError> {
    let _ = sock.set_nonblocking(false);
    sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(SessionError::Socket)?;
    sock.set_write_timeout(Some(Duration::from_secs(300)))
        .map_err(SessionError::Socket)?;
    Ok(match &opts.tls {
        Some(cfg) => {
            let tls = rustls::ServerConnection::new(cfg.clone()).map_err(SessionError::Tls)?;
            Conn::TlsServer(Box::new(rustls::StreamOwned::new(tls, sock)))
        }
        None => Conn::Plain(sock),
    })
}

/// Wait for a slot, telling the peer why it waits; a peer that leaves is noticed here.
fn wait_for_slot(
    conn: &mut Conn,
    opts: &ServeOptions,
    slots: &Slots,
    shutdown: &AtomicBool,
) -> std::result::Result<(), SessionError> {
    loop {
        if shutdown.load(Ordering::SeqCst) {
            let _ = send_error(conn, opts, "donor is shutting down");
            return Err(SessionError::ShuttingDown);
        }
        match slots.try_take(QUEUE_NOTICE) {
            Ok(()) => return Ok(()),
            Err(running) => {
                let msg = format!(
                    "waiting: {running} clone(s) already running (--max-conns {})",
                    slots.max
                );
                tracing::info!("{msg}");
                if !opts.raw {
                    write_frame(conn, FrameType::Queued, msg.as_bytes())
                        .and_then(|()| conn.flush())
                        .map_err(SessionError::LeftWhileQueued)?;
                }
            }
        }
    }
}

fn send_error(conn: &mut Conn, opts: &ServeOptions, msg: &str) -> std::io::Result<()> {
    if !opts.raw {
        write_frame(conn, FrameType::Error, msg.as_bytes())?;
        conn.flush()?;
    }
    Ok(())
}

fn handshake(
    conn: &mut Conn,
    opts: &ServeOptions,
    buf: &mut Vec<u8>,
) -> std::result::Result<(), SessionError> {
    let ty = read_frame(conn, buf).map_err(SessionError::Handshake)?;
    if ty != FrameType::Hello {
        return Err(SessionError::Unexpected {
            expected: "HELLO",
            got: ty,
        });
    }
    let client_nonce = protocol::parse_hello(buf).map_err(SessionError::Hello)?;
    let mut server_nonce = [0u8; NONCE_LEN];
    rustix::rand::getrandom(&mut server_nonce, rustix::rand::GetRandomFlags::empty())
        .map_err(SessionError::Randomness)?;
    let c = match &opts.key {
        Some(k) => Challenge {
            flags: 0,
            nonce: server_nonce,
            proof: protocol::server_proof(k, &client_nonce, &server_nonce),
        },
        None => Challenge {
            flags: FLAG_NO_AUTH,
            nonce: server_nonce,
            proof: [0; 32],
        },
    };
    write_frame(conn, FrameType::Challenge, &protocol::challenge(&c))
        .and_then(|()| conn.flush())
        .map_err(SessionError::HandshakeSend)?;
    let ty = read_frame(conn, buf).map_err(SessionError::Handshake)?;
    if ty == FrameType::Error {
        return Err(SessionError::PeerRefused(
            String::from_utf8_lossy(buf).into_owned(),
        ));
    }
    if ty != FrameType::Proof {
        return Err(SessionError::Unexpected {
            expected: "PROOF",
            got: ty,
        });
    }
    if let Some(k) = &opts.key {
        let want = protocol::client_proof(k, &client_nonce, &server_nonce);
        if !protocol::proof_matches(&want, buf) {
            return Err(SessionError::WrongToken);
        }
    }
    Ok(())
}

/// Room for a frame header in front of the data, so header and payload leave in one write.
const HDR: usize = 5;

/// Stream the source to the peer; on any failure, tell the peer why (the source is stopped).
fn stream(
    conn: &mut Conn,
    opts: &ServeOptions,
    shutdown: &AtomicBool,
) -> std::result::Result<Trailer, SessionError> {
    let result = send_stream(conn, opts, shutdown);
    if let Err(e) = &result {
        let _ = send_error(conn, opts, &e.to_string());
    }
    result
}

fn send_stream(
    conn: &mut Conn,
    opts: &ServeOptions,
    shutdown: &AtomicBool,
) -> std::result::Result<Trailer, SessionError> {
    let settings = PumpSettings {
        parallel: opts.parallel,
        headroom: HDR,
        piece: DATA_FRAME,
        idle: opts.heartbeat,
        digest: true,
    };
    let checker = StreamChecker::new(DecodeOptions::default());
    let mut to_peer = ToPeer {
        conn: &mut *conn,
        raw: opts.raw,
        source: &opts.source,
    };
    let pumped =
        pump(&opts.source, &settings, checker, &mut to_peer, shutdown).map_err(|e| match e {
            PumpError::Start(e) => SessionError::SourceStart(e),
            PumpError::Forward(e) => e,
            PumpError::Interrupted => SessionError::Interrupted,
            PumpError::Read(e) => SessionError::SourceRead(e),
            PumpError::Defective(e) => SessionError::Defective(e),
        })?;
    let totals = match pumped.checked {
        Ok((t, _)) => t,
        Err(e) if pumped.exit_status != 0 => {
            tracing::warn!("stream incomplete after the source failed: {e}");
            Default::default()
        }
        Err(e) => return Err(SessionError::Defective(e)),
    };
    let trailer = Trailer {
        exit_status: pumped.exit_status,
        files: totals.files,
        chunks: totals.chunks,
        bytes: pumped.bytes,
        digest: pumped.digest.map(|d| *d.as_bytes()).unwrap_or_default(),
    };
    if !opts.raw {
        write_frame(conn, FrameType::Trailer, &protocol::trailer(&trailer))
            .and_then(|()| conn.flush())
            .map_err(gone)?;
    } else {
        conn.flush().map_err(gone)?;
    }
    Ok(trailer)
}

fn gone(e: std::io::Error) -> SessionError {
    SessionError::ReceiverGone(e)
}

/// The pump's consumer in serve: frames each piece (or not, with `--raw`) and writes it to the
/// peer; a START frame first, heartbeats in silences.
struct ToPeer<'a> {
    conn: &'a mut Conn,
    raw: bool,
    source: &'a Source,
}

impl Forward for ToPeer<'_> {
    type Error = SessionError;

    fn started(&mut self) -> std::result::Result<(), SessionError> {
        if !self.raw {
            let desc = self.source.describe();
            write_frame(self.conn, FrameType::Start, desc.as_bytes())
                .and_then(|()| self.conn.flush())
                .map_err(gone)?;
        }
        Ok(())
    }

    fn forward(&mut self, mut piece: CheckedPiece<'_>) -> std::result::Result<(), SessionError> {
        let n = piece.data().len();
        if self.raw {
            self.conn.write_all(piece.data()).map_err(gone)?;
        } else if n > 0 {
            let header = protocol::frame_header(FrameType::Data, n);
            self.conn
                .write_all(piece.with_header(&header))
                .map_err(gone)?;
        }
        Ok(())
    }

    fn idle(&mut self, sent: u64) -> std::result::Result<(), SessionError> {
        if !self.raw {
            write_frame(self.conn, FrameType::Heartbeat, &sent.to_le_bytes())
                .and_then(|()| self.conn.flush())
                .map_err(gone)?;
        }
        Ok(())
    }
}
