//! `xbagent serve`: the donor side of a clone.
//!
//! An async accept loop (tokio) admits connections through a [`Gate`]: a bounded number of
//! handshakes in flight, in total and per address; past the bound a connection is closed at
//! once. Each admitted connection is a task, not a thread: its TLS and SPAKE2 handshake
//! (framed with [`FrameCodec`], every pre-authentication frame capped at its real size) must
//! finish within one total deadline. An authenticated peer then waits for a free slot
//! (`--max-conns`, with QUEUED frames so it knows why), and only then gets a thread: the stream
//! layer's checked pump ([`crate::stream::pump`]) runs the source, its bytes checked by the one
//! decoder as they pass, framed and sent; heartbeats fill silences; a trailer ends a good stream.
//! A peer that goes away, a defect in the stream, or SIGTERM stops the source's whole process
//! group: no orphaned backups. Nothing a peer sends can stop the donor.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::codec::{Frame, FrameCodec};
use super::gate::{Gate, HandshakeLimits, RateLimited, Refused, Ticket};
use super::protocol::{self, DonorPake, FrameType, Token, Trailer};
use super::transport::{write_frame, Conn, FrameError};
use super::CloneError;
type Result<T, E = CloneError> = std::result::Result<T, E>;
use crate::format::DecodeOptions;
use crate::metrics::{ServeMetrics, SessionEnd};
use crate::stream::check::StreamChecker;
use crate::stream::pump::{pump, CheckedPiece, Forward, PumpError, PumpSettings};
use crate::stream::source::Source;
use crate::throttle::RateLimit;

/// Settings of `serve`.
#[derive(Clone)]
pub struct ServeOptions {
    pub listen: String,
    pub source: Source,
    pub max_conns: usize,
    /// The shared token; `None` only with `--insecure`.
    pub token: Option<Token>,
    pub tls: Option<Arc<ServerConfig>>,
    /// Plain xbstream, no handshake (for `ncat --recv-only | xbstream -x` receivers).
    pub raw: bool,
    pub heartbeat: Duration,
    /// Parallel readers for `--dir`.
    pub parallel: usize,
    /// Bounds on connections that have not authenticated.
    pub handshakes: HandshakeLimits,
    /// Stream bytes sent to each receiver, per second at most (`--rate-limit`).
    pub rate_limit: Option<RateLimit>,
    /// Counters and readiness, read by whoever exports them.
    pub metrics: Arc<ServeMetrics>,
}

const DATA_FRAME: usize = 1 << 20;
const QUEUE_NOTICE: Duration = Duration::from_secs(5);
/// A write to an authenticated peer that has not drained for this long ends its session.
const WRITE_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the accept loop looks at the shutdown flag (set by the signal handler).
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);
/// After a shutdown signal, a clone still blocked on its receiver this long gets its socket
/// shut down (so that serve stops within a second).
const FORCE_CLOSE_AFTER: Duration = Duration::from_millis(400);
/// Sent, best effort, to a connection closed at the gate (plain TCP only).
const BUSY: &str = "donor busy: too many connections are authenticating; retry shortly";

/// What every connection task shares.
struct Ctx {
    opts: ServeOptions,
    gate: Arc<Gate>,
    slots: Arc<Semaphore>,
    shutdown: Arc<AtomicBool>,
    cancel: CancellationToken,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Run the donor until `shutdown` is set (SIGTERM). In-flight clones are then aborted: their
/// sources stopped, their peers told.
pub fn serve(opts: ServeOptions, shutdown: Arc<AtomicBool>) -> Result<()> {
    // Two workers: the tasks only wait on sockets; the clones themselves run on their own
    // threads, one per slot.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("xbagent-serve")
        .enable_all()
        .build()
        .map_err(|e| CloneError::Setup(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(accept_loop(opts, shutdown))
}

async fn bind(opts: &ServeOptions) -> Result<TcpListener> {
    let listener = TcpListener::bind(&opts.listen)
        .await
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
    } else if opts.token.is_none() {
        tracing::warn!("serving on {local} WITHOUT authentication (--insecure): anyone who reaches this port gets the whole database");
    }
    let l = opts.handshakes;
    tracing::info!(
        "listening on {local} (max {} concurrent clones; at most {} handshakes in flight, {} per address, each within {})",
        opts.max_conns,
        l.in_flight,
        l.per_address,
        humantime::format_duration(l.deadline)
    );
    opts.metrics.set_ready(true);
    Ok(listener)
}

async fn accept_loop(opts: ServeOptions, shutdown: Arc<AtomicBool>) -> Result<()> {
    let listener = bind(&opts).await?;
    let ctx = Arc::new(Ctx {
        gate: Gate::new(opts.handshakes),
        slots: Arc::new(Semaphore::new(opts.max_conns.max(1))),
        tls: opts.tls.clone().map(tokio_rustls::TlsAcceptor::from),
        opts,
        shutdown,
        cancel: CancellationToken::new(),
    });
    let refusals = RateLimited::new(Duration::from_secs(10));
    let accept_errors = RateLimited::new(Duration::from_secs(10));
    let ids = AtomicU64::new(1);
    let mut tasks = tokio::task::JoinSet::new();
    let mut poll = tokio::time::interval(SHUTDOWN_POLL);
    while !ctx.shutdown.load(Ordering::SeqCst) {
        ctx.opts.metrics.heartbeat.beat();
        tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, peer)) => match ctx.gate.admit(peer.ip()) {
                    Ok(ticket) => {
                        let id = ids.fetch_add(1, Ordering::Relaxed);
                        tasks.spawn(connection(ctx.clone(), sock, peer, id, ticket));
                    }
                    Err(why) => refuse(&ctx, &sock, peer, why, &refusals),
                },
                // Out of file descriptors, say: keep serving what is open, try again soon.
                Err(e) => {
                    if let Some(held) = accept_errors.due(Instant::now()) {
                        tracing::warn!("accept failed: {e} ({held} more since the last report)");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = poll.tick() => {}
        }
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    ctx.opts.metrics.set_ready(false);
    ctx.cancel.cancel();
    tracing::info!(
        "shutting down: no new connections; aborting {} connection(s) in flight",
        tasks.len()
    );
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Close a connection the gate did not admit: one non-blocking write of an ERROR frame (plain
/// TCP only), then close; logged at most once per 10 s.
fn refuse(ctx: &Ctx, sock: &TcpStream, peer: SocketAddr, why: Refused, log: &RateLimited) {
    ctx.opts.metrics.ended(SessionEnd::HandshakeFailed);
    if ctx.tls.is_none() && !ctx.opts.raw {
        let mut frame = protocol::frame_header(FrameType::Error, BUSY.len()).to_vec();
        frame.extend_from_slice(BUSY.as_bytes());
        let _ = sock.try_write(&frame);
    }
    if let Some(held) = log.due(Instant::now()) {
        tracing::warn!(
            "refused a connection from {peer}: {why} ({held} more refused since the last report)"
        );
    }
}

async fn connection(ctx: Arc<Ctx>, sock: TcpStream, peer: SocketAddr, id: u64, ticket: Ticket) {
    use tracing::Instrument;
    let span = tracing::info_span!("conn", id, %peer);
    async move {
        tracing::info!("connected");
        let _open = ctx.opts.metrics.open();
        let _ = sock.set_nodelay(true);
        // One deadline for the whole handshake, TLS included.
        let until = tokio::time::Instant::now() + ctx.gate.limits().deadline;
        let ended = match &ctx.tls {
            Some(acc) => tls_session(&ctx, acc, sock, peer.ip(), ticket, until).await,
            None => session(&ctx, sock, peer.ip(), ticket, until).await,
        };
        count(&ctx.opts.metrics, &ended);
        match ended {
            Ok(t) if t.exit_status == 0 && t.files == 0 => tracing::warn!(
                "clone failed: the source wrote no files; the receiver refuses an empty clone unless receive --allow-empty"
            ),
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
            Err(e @ (SessionError::Timeout(_) | SessionError::Handshake(_) | SessionError::Evicted)) => {
                tracing::info!("closed: {e}")
            }
            Err(e) => tracing::warn!("clone aborted: {e}"),
        }
    }
    .instrument(span)
    .await
}

/// Count how a connection ended (the last clone's duration is set by [`run_clone`]).
fn count(m: &ServeMetrics, ended: &std::result::Result<Trailer, SessionError>) {
    use SessionError as E;
    let how = match ended {
        Ok(t) if served(t) => return,
        Ok(_) => SessionEnd::Failed,
        Err(E::WrongToken | E::PeerRefused(_) | E::SlowedDown) => SessionEnd::Refused,
        Err(E::Hello(protocol::ProtocolError::AuthFailed(_))) => SessionEnd::Refused,
        Err(
            E::Tls(_)
            | E::Evicted
            | E::Timeout(_)
            | E::Handshake(_)
            | E::Closed
            | E::Unexpected { .. }
            | E::Hello(_),
        ) => SessionEnd::HandshakeFailed,
        Err(E::ShuttingDown) => SessionEnd::NotStarted,
        Err(
            E::Socket(_)
            | E::LeftWhileQueued(_)
            | E::TalkedWhileQueued
            | E::Thread(_)
            | E::SourceStart(_)
            | E::Interrupted
            | E::SourceRead(_)
            | E::Defective(_)
            | E::ReceiverGone(_),
        ) => SessionEnd::Failed,
    };
    m.ended(how);
}

/// A clone the receiver will mark complete: the source exited 0 and wrote files.
fn served(t: &Trailer) -> bool {
    t.exit_status == 0 && t.files > 0
}

/// [`session`] over TLS: the TLS handshake first, within the same deadline.
async fn tls_session(
    ctx: &Arc<Ctx>,
    acc: &tokio_rustls::TlsAcceptor,
    sock: TcpStream,
    ip: IpAddr,
    ticket: Ticket,
    until: tokio::time::Instant,
) -> std::result::Result<Trailer, SessionError> {
    let accepted = tokio::select! {
        r = tokio::time::timeout_at(until, acc.accept(sock).into_fallible()) => r,
        _ = ticket.evicted().cancelled() => return Err(SessionError::Evicted),
    };
    match accepted {
        Ok(Ok(tls)) => session(ctx, tls, ip, ticket, until).await,
        Ok(Err((e, sock))) => {
            linger_close(sock).await;
            Err(SessionError::Tls(e))
        }
        Err(_) => Err(SessionError::Timeout(ctx.gate.limits().deadline)),
    }
}

/// Close a connection whose TLS set-up failed so that its peer reads our alert (say, "client
/// certificate required") rather than a reset: shut our side, then drain what the peer already
/// sent (its first frame) for a bounded time and size.
async fn linger_close(mut sock: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = sock.shutdown().await;
    let mut buf = [0u8; 4096];
    let drain = async {
        let mut n = 0;
        while n < 64 * 1024 {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Why one connection's session ended without a clone. Sent to the peer (an ERROR frame)
/// where it still listens, and logged; it never stops the donor.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Socket(#[source] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[source] std::io::Error),
    #[error("closed to make room: every handshake place was taken, most of them by one address")]
    Evicted,
    #[error("handshake not done within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("handshake: {0}")]
    Handshake(#[source] FrameError),
    #[error("handshake: the peer closed the connection")]
    Closed,
    #[error("handshake: expected {expected}, got {got:?}")]
    Unexpected {
        expected: &'static str,
        got: FrameType,
    },
    #[error("{0}")]
    Hello(#[source] protocol::ProtocolError),
    #[error("peer refused: {0}")]
    PeerRefused(String),
    #[error("authentication failed: wrong token")]
    WrongToken,
    #[error("this address failed to authenticate too often; closing until its wait is over")]
    SlowedDown,
    #[error("shutting down before the clone started")]
    ShuttingDown,
    #[error("peer left while waiting: {0}")]
    LeftWhileQueued(#[source] FrameError),
    #[error("peer sent data after authenticating")]
    TalkedWhileQueued,
    #[error("cannot start the clone's thread: {0}")]
    Thread(#[source] std::io::Error),
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

/// A connection the handshake ran on, turned back into a blocking one for the clone's thread.
trait IntoConn {
    fn into_conn(self) -> std::io::Result<Conn>;
}

fn blocking(s: TcpStream) -> std::io::Result<std::net::TcpStream> {
    let s = s.into_std()?;
    s.set_nonblocking(false)?;
    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
    Ok(s)
}

impl IntoConn for TcpStream {
    fn into_conn(self) -> std::io::Result<Conn> {
        Ok(Conn::Plain(blocking(self)?))
    }
}

impl IntoConn for tokio_rustls::server::TlsStream<TcpStream> {
    fn into_conn(self) -> std::io::Result<Conn> {
        let (sock, tls) = self.into_inner();
        Ok(Conn::TlsServer(Box::new(rustls::StreamOwned::new(
            tls,
            blocking(sock)?,
        ))))
    }
}

/// One admitted connection: handshake within the deadline (holding the gate's ticket), wait
/// for a slot, then the clone on its own thread.
async fn session<S>(
    ctx: &Arc<Ctx>,
    io: S,
    ip: IpAddr,
    ticket: Ticket,
    until: tokio::time::Instant,
) -> std::result::Result<Trailer, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + IntoConn,
{
    if ctx.opts.raw {
        // No handshake: the connection keeps its place at the gate until a slot is free.
        let permit = tokio::select! {
            p = ctx.slots.clone().acquire_owned() => p.map_err(|_| SessionError::ShuttingDown)?,
            _ = ticket.evicted().cancelled() => return Err(SessionError::Evicted),
            _ = ctx.cancel.cancelled() => return Err(SessionError::ShuttingDown),
        };
        drop(ticket);
        let conn = io.into_conn().map_err(SessionError::Socket)?;
        return run_clone(ctx, conn, permit).await;
    }
    let mut framed = Framed::new(io, FrameCodec::new(protocol::HELLO_LEN as u32));
    let deadline = ctx.gate.limits().deadline;
    let shook = tokio::select! {
        r = tokio::time::timeout_at(until, handshake(ctx, &mut framed, ip)) => {
            r.unwrap_or(Err(SessionError::Timeout(deadline)))
        }
        _ = ticket.evicted().cancelled() => Err(SessionError::Evicted),
        _ = ctx.cancel.cancelled() => Err(SessionError::ShuttingDown),
    };
    if let Err(e) = shook {
        // Best effort, and bounded: the peer may be the one not reading.
        let msg = error_frame(&e.to_string());
        let _ = tokio::time::timeout(Duration::from_secs(1), framed.send(msg)).await;
        return Err(e);
    }
    drop(ticket);
    tracing::info!("peer authenticated");
    let permit = wait_for_slot(ctx, &mut framed).await?;
    let parts = framed.into_parts();
    if !parts.read_buf.is_empty() {
        return Err(SessionError::TalkedWhileQueued);
    }
    let conn = parts.io.into_conn().map_err(SessionError::Socket)?;
    run_clone(ctx, conn, permit).await
}

/// An ERROR frame for a peer that may not have authenticated: its text fits the cap the peer
/// applies at that point.
fn error_frame(msg: &str) -> Frame {
    let cap = protocol::MAX_PREAUTH_FRAME as usize;
    let mut end = msg.len().min(cap);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    Frame::new(FrameType::Error, msg[..end].to_string())
}

async fn next_frame<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, FrameCodec>,
) -> std::result::Result<Frame, SessionError> {
    match framed.next().await {
        Some(Ok(f)) => Ok(f),
        Some(Err(e)) => Err(SessionError::Handshake(e)),
        None => Err(SessionError::Closed),
    }
}

/// HELLO, our CHALLENGE (after the wait an address that keeps failing must sit out), PROOF.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Ctx,
    framed: &mut Framed<S, FrameCodec>,
    ip: IpAddr,
) -> std::result::Result<(), SessionError> {
    let f = next_frame(framed).await?;
    if f.ty != FrameType::Hello {
        return Err(SessionError::Unexpected {
            expected: "HELLO",
            got: f.ty,
        });
    }
    let hello = protocol::parse_hello(&f.payload).map_err(SessionError::Hello)?;
    // The guess in this HELLO is answered only when this address's turn comes.
    match ctx.gate.turn(ip, Instant::now()) {
        None => return Err(SessionError::SlowedDown),
        Some(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
        Some(_) => {}
    }
    // From here the peer has had its guess: a failure unless its PROOF shows it was right.
    ctx.gate.charge(ip, Instant::now());
    let pake = DonorPake::answer(ctx.opts.token.as_ref(), &hello).map_err(SessionError::Hello)?;
    let reply = Frame::new(FrameType::Challenge, protocol::challenge(&pake.challenge));
    framed.send(reply).await.map_err(SessionError::Handshake)?;
    framed.codec_mut().set_max(protocol::MAX_PREAUTH_FRAME);
    let f = next_frame(framed).await?;
    match f.ty {
        FrameType::Error => Err(SessionError::PeerRefused(
            String::from_utf8_lossy(&f.payload).into_owned(),
        )),
        FrameType::Proof if pake.accepts(&f.payload) => {
            ctx.gate.refund(ip);
            Ok(())
        }
        FrameType::Proof => Err(SessionError::WrongToken),
        other => Err(SessionError::Unexpected {
            expected: "PROOF",
            got: other,
        }),
    }
}

/// Wait for a slot, telling the peer why it waits every few seconds; a peer that leaves or
/// speaks out of turn is noticed here.
async fn wait_for_slot<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Ctx,
    framed: &mut Framed<S, FrameCodec>,
) -> std::result::Result<OwnedSemaphorePermit, SessionError> {
    loop {
        tokio::select! {
            p = ctx.slots.clone().acquire_owned() => {
                return p.map_err(|_| SessionError::ShuttingDown);
            }
            _ = tokio::time::sleep(QUEUE_NOTICE) => {
                let running = ctx.opts.max_conns.saturating_sub(ctx.slots.available_permits());
                let msg = format!(
                    "waiting: {running} clone(s) already running (--max-conns {})",
                    ctx.opts.max_conns
                );
                tracing::info!("{msg}");
                let sent = tokio::time::timeout(
                    Duration::from_secs(30),
                    framed.send(Frame::new(FrameType::Queued, msg)),
                )
                .await;
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(SessionError::LeftWhileQueued(e)),
                    Err(_) => return Err(SessionError::LeftWhileQueued(FrameError::Io(
                        std::io::ErrorKind::TimedOut.into(),
                    ))),
                }
            }
            f = framed.next() => {
                return Err(match f {
                    None => SessionError::LeftWhileQueued(FrameError::Io(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    )),
                    Some(Err(e)) => SessionError::LeftWhileQueued(e),
                    Some(Ok(_)) => SessionError::TalkedWhileQueued,
                });
            }
            _ = ctx.cancel.cancelled() => {
                let msg = error_frame("donor is shutting down");
                let _ = tokio::time::timeout(Duration::from_secs(1), framed.send(msg)).await;
                return Err(SessionError::ShuttingDown);
            }
        }
    }
}

/// The clone itself, on a thread of its own (the pump and the source are blocking); the slot
/// is held until it ends. A thread that cannot be started ends this session only. On
/// shutdown the thread stops at its next piece; one blocked writing to a receiver that reads
/// nothing is unblocked by shutting the socket down.
async fn run_clone(
    ctx: &Arc<Ctx>,
    mut conn: Conn,
    permit: OwnedSemaphorePermit,
) -> std::result::Result<Trailer, SessionError> {
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let sock = conn.tcp().try_clone().map_err(SessionError::Socket)?;
    let _running = ctx.opts.metrics.running();
    let began = Instant::now();
    let (opts, shutdown) = (ctx.opts.clone(), ctx.shutdown.clone());
    let span = tracing::Span::current();
    let spawned = std::thread::Builder::new()
        .name("xbagent-clone".into())
        .spawn(move || {
            let _g = span.enter();
            let result = stream(&mut conn, &opts, &shutdown);
            conn.finish();
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        return Err(SessionError::Thread(e));
    }
    let result = tokio::select! {
        r = &mut rx => r,
        _ = async {
            ctx.cancel.cancelled().await;
            tokio::time::sleep(FORCE_CLOSE_AFTER).await;
        } => {
            let _ = sock.shutdown(std::net::Shutdown::Both);
            rx.await
        }
    };
    drop(permit);
    let result = result.unwrap_or(Err(SessionError::Interrupted));
    if let Ok(t) = &result {
        if served(t) {
            ctx.opts.metrics.ended(SessionEnd::Served(began.elapsed()));
        }
    }
    result
}

fn send_error(conn: &mut Conn, opts: &ServeOptions, msg: &str) -> std::io::Result<()> {
    if !opts.raw {
        write_frame(conn, FrameType::Error, msg.as_bytes())?;
        conn.flush()?;
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
        rate_limit: opts.rate_limit,
    };
    let checker = StreamChecker::new(DecodeOptions::default());
    let mut to_peer = ToPeer {
        conn: &mut *conn,
        raw: opts.raw,
        source: &opts.source,
        metrics: &opts.metrics,
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
    metrics: &'a ServeMetrics,
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
        self.metrics.sent(n as u64);
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
