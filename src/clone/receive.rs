//! `xbagent receive`: the new pod's side of a clone.
//!
//! Order of work, each step a guard for the next:
//! 1. DIR holds the completion marker: done already (initContainers restart), exit 0.
//! 2. DIR holds a partial clone (our in-progress marker): cleared, or refused with
//!    `--keep-partial`. DIR holding anything else: refused (it is not ours to delete).
//! 3. Connect, retrying with backoff (DNS failures too) until `--retry-for` runs out.
//! 4. Authenticate both ways; wait while the donor is busy.
//! 5. Extract with the one extractor; a silence longer than `--stall-timeout` (no data, no
//!    heartbeat) fails the clone. Then one `syncfs` puts every file and directory on disk
//!    (one call instead of an fsync per file: 10,000 small files took 7 s with fsyncs).
//! 6. Check the trailer: producer exit status 0, digest, byte, file and chunk counts.
//! 7. Only then write the completion marker (and fsync it).

use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use super::protocol::{self, FrameType, Trailer, FLAG_NO_AUTH, NONCE_LEN};
use super::transport::{read_frame, read_header, read_payload, write_frame, Conn, FrameError};
use super::{CloneError, COMPLETE_MARKER, PARTIAL_MARKER};
use crate::error::{Error, Result};
use crate::extract::{extract_reader, ExtractOptions, WriterOptions};
use crate::format::DecodeOptions;
use crate::progress::Progress;

/// Settings of `receive`.
#[derive(Clone)]
pub struct ReceiveOptions {
    pub from: String,
    pub dir: PathBuf,
    /// Key derived from the token file; `None` only with `--insecure`.
    pub key: Option<[u8; 32]>,
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    pub retry_for: Duration,
    pub stall_timeout: Duration,
    pub keep_partial: bool,
    /// Plain xbstream from an ncat-style donor: no handshake, no trailer, no marker.
    pub raw: bool,
    pub parallel: usize,
    /// No O_DIRECT writes (see [`crate::extract::WriterOptions::direct`]).
    pub buffered: bool,
}

/// How a `receive` run ended well.
#[derive(Debug)]
pub enum Received {
    /// The marker was already there.
    AlreadyComplete,
    /// A clone was received, checked against the trailer, and marked complete.
    Complete(Trailer),
    /// Raw mode: the stream ended with every file complete, but nothing proves it was whole;
    /// no marker was written.
    RawUnproven { files: u64, bytes: u64 },
}

fn refused(msg: String) -> Error {
    Error::Refused(msg)
}

/// Make DIR ready for a clone (steps 1 and 2). `Ok(false)`: already complete.
fn prepare_dir(opts: &ReceiveOptions) -> Result<bool> {
    let dir = &opts.dir;
    let tdir = |e| Error::TargetDir {
        dir: dir.clone(),
        source: e,
    };
    fs::create_dir_all(dir).map_err(tdir)?;
    if dir.join(COMPLETE_MARKER).exists() {
        return Ok(false);
    }
    let entries: Vec<_> = fs::read_dir(dir)
        .map_err(tdir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    if !entries.is_empty() {
        if !dir.join(PARTIAL_MARKER).exists() {
            return Err(refused(format!(
                "{} is not empty and holds no xbagent clone (no {PARTIAL_MARKER}); refusing to delete its contents — empty it yourself if it is really disposable",
                dir.display()
            )));
        }
        if opts.keep_partial {
            return Err(refused(format!(
                "{} holds a partial clone and --keep-partial was given; not starting over",
                dir.display()
            )));
        }
        tracing::warn!(
            "{} holds a partial clone from an earlier attempt; clearing it and starting again",
            dir.display()
        );
        clear_dir(dir)?;
    }
    write_synced(
        &dir.join(PARTIAL_MARKER),
        b"xbagent clone in progress\n",
        dir,
    )?;
    Ok(true)
}

/// Remove everything inside `dir` without following symlinks (the D-chunk machinery).
fn clear_dir(dir: &Path) -> Result<()> {
    let target = crate::extract::TargetDir::open(dir)?;
    let mut r = target.resolver();
    for e in fs::read_dir(dir).map_err(|e| Error::TargetDir {
        dir: dir.to_path_buf(),
        source: e,
    })? {
        let e = e.map_err(|e| Error::TargetDir {
            dir: dir.to_path_buf(),
            source: e,
        })?;
        use std::os::unix::ffi::OsStrExt;
        r.remove(e.file_name().as_bytes(), 0)?;
    }
    Ok(())
}

/// Write a small file and make it durable: the file, then its directory.
fn write_synced(path: &Path, data: &[u8], dir: &Path) -> Result<()> {
    let io = |e| Error::TargetDir {
        dir: dir.to_path_buf(),
        source: e,
    };
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

/// Connect, retrying until the deadline: the donor's pod (and its DNS record) may appear late.
fn connect(opts: &ReceiveOptions) -> std::result::Result<TcpStream, CloneError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(500);
    loop {
        let attempt = (|| -> io::Result<TcpStream> {
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
            for addr in opts.from.to_socket_addrs()? {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })();
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) => {
                let waited = start.elapsed();
                if waited >= opts.retry_for {
                    return Err(CloneError::Unreachable {
                        addr: opts.from.clone(),
                        waited: humantime::format_duration(round(waited)).to_string(),
                        last: e.to_string(),
                    });
                }
                let mut jitter = [0u8; 2];
                let _ = rustix::rand::getrandom(&mut jitter, rustix::rand::GetRandomFlags::empty());
                let sleep = (delay
                    + Duration::from_millis(u16::from_le_bytes(jitter) as u64 % 500))
                .min(opts.retry_for.saturating_sub(waited));
                tracing::warn!(
                    "donor {} not reachable yet ({e}); retrying in {}",
                    opts.from,
                    humantime::format_duration(round(sleep))
                );
                std::thread::sleep(sleep);
                delay = (delay * 2).min(Duration::from_secs(15));
            }
        }
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// Receive a clone into `opts.dir`.
pub fn receive(opts: &ReceiveOptions, progress: &Progress) -> Result<Received> {
    if !prepare_dir(opts)? {
        return Ok(Received::AlreadyComplete);
    }
    let tdir = |e: io::Error| Error::TargetDir {
        dir: opts.dir.clone(),
        source: e,
    };
    // Opened before anything is written: syncfs on it reports write-back errors from then on.
    let dir_fd = fs::File::open(&opts.dir).map_err(tdir)?;
    let peer = opts.from.clone();
    let ioerr = |e: io::Error| CloneError::Io {
        peer: peer.clone(),
        source: e,
    };
    let sock = connect(opts)?;
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
    let failure = Arc::new(Mutex::new(None));
    let reader = FrameReader {
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
        dir: opts.dir.clone(),
        decode: DecodeOptions::default(),
        writer: WriterOptions {
            threads: opts.parallel.max(1),
            direct: !opts.buffered,
            reserved: [COMPLETE_MARKER, PARTIAL_MARKER]
                .iter()
                .flat_map(|m| [m.to_string(), format!("{m}.tmp")])
                .map(bytes::Bytes::from)
                .collect(),
            ..WriterOptions::default()
        },
    };
    let mut reader = reader;
    let res = extract_reader(
        &mut reader,
        &format!("the stream from {peer}"),
        &xopts,
        progress,
    );
    // A network failure inside the extractor's reads surfaces as a read error: report the
    // real cause.
    let (_, totals) = match res {
        Ok(v) => v,
        Err(e @ Error::Read { .. }) => {
            let cause = failure.lock().ok().and_then(|mut f| f.take());
            return Err(cause.map(Error::Clone).unwrap_or(e));
        }
        Err(e) => return Err(e),
    };
    rustix::fs::syncfs(&dir_fd).map_err(|e| tdir(e.into()))?;
    if opts.raw {
        return Ok(Received::RawUnproven {
            files: totals.files,
            bytes: totals.bytes,
        });
    }
    let Some(trailer) = reader.trailer.take() else {
        return Err(CloneError::Cut { peer }.into());
    };
    if trailer.exit_status != 0 {
        return Err(CloneError::ProducerFailed(trailer.exit_status).into());
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
        return Err(CloneError::TrailerMismatch(bad.join("; ")).into());
    }
    let marker = serde_json::json!({
        "from": peer,
        "completed_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "trailer": trailer,
        "xbagent": env!("CARGO_PKG_VERSION"),
    });
    write_synced(
        &opts.dir.join(COMPLETE_MARKER),
        format!("{marker:#}\n").as_bytes(),
        &opts.dir,
    )?;
    let _ = fs::remove_file(opts.dir.join(PARTIAL_MARKER));
    dir_fd.sync_all().map_err(tdir)?;
    Ok(Received::Complete(trailer))
}

fn handshake(conn: &mut Conn, opts: &ReceiveOptions) -> std::result::Result<(), CloneError> {
    let peer = opts.from.clone();
    let io = |e: io::Error| CloneError::Io {
        peer: peer.clone(),
        source: e,
    };
    let proto = |e| CloneError::Protocol {
        peer: peer.clone(),
        source: e,
    };
    let frame_err = |e: FrameError| match e {
        FrameError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            CloneError::Cut { peer: peer.clone() }
        }
        FrameError::Io(e) => io(e),
        // A raw donor sends xbstream at once: its first byte is the 'X' of "XBSTCK01".
        FrameError::Protocol(protocol::ProtocolError::UnknownFrame(b'X')) => {
            proto(protocol::ProtocolError::BadMagic)
        }
        // 0x15/0x16: a TLS alert or handshake record.
        FrameError::Protocol(protocol::ProtocolError::UnknownFrame(0x15 | 0x16)) => {
            proto(protocol::ProtocolError::TlsPeer)
        }
        FrameError::Protocol(p) => proto(p),
    };
    let mut nonce = [0u8; NONCE_LEN];
    rustix::rand::getrandom(&mut nonce, rustix::rand::GetRandomFlags::empty())
        .map_err(|e| CloneError::Setup(format!("no randomness: {e}")))?;
    write_frame(conn, FrameType::Hello, &protocol::hello(&nonce))
        .and_then(|()| conn.flush())
        .map_err(io)?;
    let mut buf = Vec::new();
    let ty = read_frame(conn, &mut buf).map_err(frame_err)?;
    if ty == FrameType::Error {
        return Err(CloneError::Donor(
            String::from_utf8_lossy(&buf).into_owned(),
        ));
    }
    if ty != FrameType::Challenge {
        return Err(proto(protocol::ProtocolError::Unexpected {
            expected: "CHALLENGE",
            got: ty,
        }));
    }
    let c = protocol::parse_challenge(&buf).map_err(proto)?;
    let reply = if c.flags & FLAG_NO_AUTH != 0 {
        if opts.key.is_some() {
            let msg = "the donor does not authenticate (serve --insecure) but a token was given; refusing";
            let _ = write_frame(conn, FrameType::Error, msg.as_bytes());
            return Err(proto(protocol::ProtocolError::AuthFailed(
                "donor runs without authentication",
            )));
        }
        [0u8; 32]
    } else {
        let Some(key) = &opts.key else {
            return Err(proto(protocol::ProtocolError::AuthFailed(
                "the donor requires a token (--token-file)",
            )));
        };
        if !protocol::proof_matches(&protocol::server_proof(key, &nonce, &c.nonce), &c.proof) {
            let _ = write_frame(
                conn,
                FrameType::Error,
                b"authentication failed: wrong token",
            );
            return Err(proto(protocol::ProtocolError::AuthFailed(
                "the donor does not know the token",
            )));
        }
        protocol::client_proof(key, &nonce, &c.nonce)
    };
    write_frame(conn, FrameType::Proof, &reply)
        .and_then(|()| conn.flush())
        .map_err(io)?;
    loop {
        let ty = read_frame(conn, &mut buf).map_err(frame_err)?;
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
                return Err(proto(protocol::ProtocolError::Unexpected {
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
            let (ty, len) = match read_header(&mut self.conn) {
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
