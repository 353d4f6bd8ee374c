//! A fault-injecting HTTP/1.1 proxy for the S3 integration tests (std only: threads and
//! blocking sockets).
//!
//! The test points the S3 client at [`FaultProxy::endpoint`]; the proxy forwards every request
//! to the real server (s3s-fs, Garage) unless the plan says otherwise for that request:
//!
//! ```ignore
//! let proxy = FaultProxy::start(&upstream, |i, head| {
//!     (head.method == "PUT" && head.query_param("partNumber") == Some("2") && i < 10)
//!         .then_some(Fault::Status(503))
//! });
//! ```
//!
//! How it forwards:
//! * client connections are kept alive (hyper, which the AWS SDK uses, pools them); each request
//!   goes upstream on a fresh connection with `Connection: close`, and the response comes back
//!   on the client's connection, which stays open when the response is self-delimiting
//!   (Content-Length or chunked) and the client did not ask to close;
//! * request and response heads are forwarded verbatim (only `Connection`, `Keep-Alive` and
//!   `Proxy-Connection` are replaced). The Host header in particular is not rewritten: the
//!   client signs (SigV4) for the proxy's host:port and the server checks the signature against
//!   the Host header it receives, which is that same value;
//! * bodies are streamed through a 64 KiB buffer, never held whole: by Content-Length, or
//!   `Transfer-Encoding: chunked` forwarded verbatim (chunk framing included), or (responses
//!   only) until the upstream closes, in which case the client connection is closed as well;
//! * `Expect: 100-continue`: the proxy answers `100 Continue` itself, forwards the header, and
//!   drops the interim 1xx responses the upstream sends.
//!
//! Faults:
//! * [`Fault::Status`]: the request (body included) is read, not forwarded, and answered with
//!   that status and an S3-style XML error (503 → `SlowDown`, 500 → `InternalError`, ...); the
//!   connection stays usable;
//! * [`Fault::Drop`]: the request (body included) is read, not forwarded, and the connection is
//!   closed without an answer;
//! * [`Fault::DropMidResponse`]: the request is forwarded (so the server did act on it), the
//!   response head and half of its body are sent back, and the connection is closed.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Longest request or response head accepted (request line / status line plus headers).
const MAX_HEAD: usize = 64 * 1024;
/// Copy buffer size for bodies.
const BUF: usize = 64 * 1024;
/// Bound on waiting for the upstream (connect, and each read/write on its socket).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);

/// What to do with one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and an S3-style XML error body instead of forwarding.
    Status(u16),
    /// Read the request, then close the connection without answering.
    Drop,
    /// Forward the request, then cut the response body halfway and close the connection.
    DropMidResponse,
}

/// The request line and headers of one request, as the client sent them.
#[derive(Clone, Debug)]
pub struct RequestHead {
    pub method: String,
    /// The request target: path and query, e.g. `/bucket/key?partNumber=2&uploadId=...`.
    pub target: String,
    /// Headers in order, names and values as sent (values trimmed).
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target.as_str(), |(p, _)| p)
    }

    /// The query part of the target (after `?`), empty when there is none.
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    /// The raw (not percent-decoded) value of a query parameter; `Some("")` for a bare `?uploads`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query().split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }

    fn content_length(&self) -> io::Result<Option<u64>> {
        content_length(&self.headers)
    }

    fn is_chunked(&self) -> bool {
        is_chunked(&self.headers)
    }

    fn wants_close(&self) -> bool {
        has_token(&self.headers, "connection", "close")
    }

    fn expects_continue(&self) -> bool {
        self.header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    }
}

type Plan = dyn Fn(u64, &RequestHead) -> Option<Fault> + Send + Sync;

struct Shared {
    upstream: String,
    plan: Box<Plan>,
    requests: AtomicU64,
    faults: AtomicU64,
    log: Mutex<Vec<String>>,
    stopping: AtomicBool,
    /// Open client connections, to shut them down when the proxy is dropped.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
}

impl Shared {
    /// Adds a log line; returns its position (for [`Shared::amend`]). Every line is added
    /// before the client can see the outcome, so a test that got its answer finds the line.
    fn note(&self, line: String) -> usize {
        let mut log = self.log.lock().unwrap();
        log.push(line);
        log.len() - 1
    }

    fn amend(&self, at: usize, more: &str) {
        if let Some(line) = self.log.lock().unwrap().get_mut(at) {
            line.push_str(more);
        }
    }
}

/// A running proxy; it stops (and closes every client connection) when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, to give the S3 client as its endpoint.
    pub endpoint: String,
    shared: Arc<Shared>,
    addr: std::net::SocketAddr,
    accept: Option<thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 (free port) in front of `upstream` (`http://host:port`).
    /// `plan` is asked once per request, with the request's 0-based index (over all
    /// connections, in arrival order) and head; `None` forwards the request.
    pub fn start(
        upstream: &str,
        plan: impl Fn(u64, &RequestHead) -> Option<Fault> + Send + Sync + 'static,
    ) -> FaultProxy {
        let upstream = parse_upstream(upstream);
        let listener = TcpListener::bind("127.0.0.1:0").expect("FaultProxy: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("FaultProxy: local_addr");
        let shared = Arc::new(Shared {
            upstream,
            plan: Box::new(plan),
            requests: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("fault-proxy-accept".into())
                .spawn(move || accept_loop(listener, shared))
                .expect("FaultProxy: spawn accept thread")
        };
        FaultProxy {
            endpoint: format!("http://{addr}"),
            shared,
            addr,
            accept: Some(accept),
        }
    }

    /// A proxy that forwards everything (faults can still be counted as zero).
    pub fn passthrough(upstream: &str) -> FaultProxy {
        FaultProxy::start(upstream, |_, _| None)
    }

    /// Requests received so far (faulted or not).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Client connections accepted so far (with keep-alive, fewer than requests).
    pub fn connections(&self) -> u64 {
        self.shared.next_conn.load(Ordering::SeqCst)
    }

    /// Faults injected so far.
    pub fn faults(&self) -> u64 {
        self.shared.faults.load(Ordering::SeqCst)
    }

    /// One line per finished request: `METHOD target -> what happened`, e.g.
    /// `PUT /b/k?partNumber=1&uploadId=x -> fault 503`, `GET /b/k -> forwarded 200`,
    /// `GET /b/k -> fault drop-mid-response 200 (cut after 1048576 of 2097152 body bytes)`.
    pub fn log(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().clone()
    }

    /// The log, one request a line, for assertion messages.
    pub fn log_text(&self) -> String {
        self.log().join("\n")
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for (_, s) in self.shared.conns.lock().unwrap().drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn parse_upstream(upstream: &str) -> String {
    let rest = upstream.strip_prefix("http://").unwrap_or_else(|| {
        panic!("FaultProxy: upstream must be http://host:port, got {upstream:?}")
    });
    let hostport = rest.split('/').next().unwrap_or(rest);
    assert!(
        !hostport.is_empty(),
        "FaultProxy: no host in upstream {upstream:?}"
    );
    if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else { continue };
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        if let Ok(c) = stream.try_clone() {
            shared.conns.lock().unwrap().insert(id, c);
        }
        let shared2 = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name(format!("fault-proxy-conn-{id}"))
            .spawn(move || {
                let _ = serve_client(stream, &shared2);
                shared2.conns.lock().unwrap().remove(&id);
            });
        if spawned.is_err() {
            shared.conns.lock().unwrap().remove(&id);
        }
    }
}

/// What to do with the client connection after a request.
enum Next {
    KeepAlive,
    Close,
}

fn serve_client(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut out = stream.try_clone()?;
    let mut inp = BufReader::with_capacity(BUF, stream);
    loop {
        let Some(raw) = read_head(&mut inp)? else {
            return Ok(());
        };
        let head = parse_request_head(&raw)?;
        let index = shared.requests.fetch_add(1, Ordering::SeqCst);
        let fault = (shared.plan)(index, &head);
        let label = format!("{} {}", head.method, head.target);
        if head.expects_continue() {
            out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            out.flush()?;
        }
        let next = match fault {
            Some(Fault::Status(code)) => {
                shared.faults.fetch_add(1, Ordering::SeqCst);
                copy_request_body(&head, &mut inp, &mut io::sink())?;
                let close = head.wants_close();
                shared.note(format!("{label} -> fault {code}"));
                write_error_response(&mut out, &head, code, index, close)?;
                if close {
                    Next::Close
                } else {
                    Next::KeepAlive
                }
            }
            Some(Fault::Drop) => {
                shared.faults.fetch_add(1, Ordering::SeqCst);
                copy_request_body(&head, &mut inp, &mut io::sink())?;
                shared.note(format!("{label} -> fault drop"));
                Next::Close
            }
            Some(Fault::DropMidResponse) => {
                shared.faults.fetch_add(1, Ordering::SeqCst);
                if let Err(e) = forward(shared, &head, &raw, &mut inp, &mut out, true, &label) {
                    shared.note(format!("{label} -> fault drop-mid-response, error: {e}"));
                }
                Next::Close
            }
            None => match forward(shared, &head, &raw, &mut inp, &mut out, false, &label) {
                Ok(next) => next,
                Err(e) => {
                    shared.note(format!("{label} -> error: {e}"));
                    Next::Close
                }
            },
        };
        out.flush()?;
        if let Next::Close = next {
            let _ = out.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}

/// Forwards one request upstream and its response back (when `cut`, only half of the response
/// body), logging the outcome under `label`. An error means nothing was logged and nothing
/// (or not all) of the response was sent: the caller logs it and closes the connection.
fn forward(
    shared: &Shared,
    head: &RequestHead,
    raw: &[u8],
    inp: &mut BufReader<TcpStream>,
    out: &mut TcpStream,
    cut: bool,
    label: &str,
) -> io::Result<Next> {
    let up = match connect_upstream(&shared.upstream) {
        Ok(s) => s,
        Err(e) => {
            // Keep the client connection in sync, then say what went wrong.
            copy_request_body(head, inp, &mut io::sink())?;
            let body = format!(
                "FaultProxy: cannot connect to upstream {}: {e}\n",
                shared.upstream
            );
            shared.note(format!(
                "{label} -> upstream unreachable, answered 502 ({e})"
            ));
            write!(
                out,
                "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            return Ok(Next::Close);
        }
    };
    let mut up_w = up.try_clone()?;
    let mut up_r = BufReader::with_capacity(BUF, up);

    // Request head: verbatim, with our own Connection header.
    let mut head_out = Vec::with_capacity(raw.len() + 32);
    let text = std::str::from_utf8(raw).map_err(|_| bad("request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    head_out.extend_from_slice(lines.next().unwrap_or("").as_bytes());
    head_out.extend_from_slice(b"\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or("").trim();
        if is_hop_header(name) {
            continue;
        }
        head_out.extend_from_slice(line.as_bytes());
        head_out.extend_from_slice(b"\r\n");
    }
    head_out.extend_from_slice(b"Connection: close\r\n\r\n");

    // Send head and body. If the upstream stops reading (it may answer early and close), keep
    // draining the client's body so the client connection stays in sync, then read the answer.
    let mut upstream_ok = up_w.write_all(&head_out).is_ok();
    {
        let mut sink = FallibleSink {
            inner: &mut up_w,
            ok: &mut upstream_ok,
        };
        copy_request_body(head, inp, &mut sink)?;
    }
    if upstream_ok {
        let _ = up_w.flush();
    }

    // Response head, skipping interim 1xx responses.
    let (status, resp_raw, resp_headers) = loop {
        let raw = read_head(&mut up_r)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upstream closed without a response",
            )
        })?;
        let (status, headers) = parse_response_head(&raw)?;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        break (status, raw, headers);
    };
    let no_body = head.method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304;
    let framing = if no_body {
        Framing::None
    } else if is_chunked(&resp_headers) {
        Framing::Chunked
    } else if let Some(n) = content_length(&resp_headers)? {
        Framing::Length(n)
    } else {
        Framing::UntilEof
    };
    let keep = matches!(
        framing,
        Framing::None | Framing::Chunked | Framing::Length(_)
    );
    let close_client = cut || !keep || head.wants_close();

    // Response head back to the client: verbatim, with our own Connection header.
    let text = std::str::from_utf8(&resp_raw).map_err(|_| bad("response head is not UTF-8"))?;
    let mut back = Vec::with_capacity(resp_raw.len() + 32);
    let mut lines = text.split("\r\n");
    back.extend_from_slice(lines.next().unwrap_or("").as_bytes());
    back.extend_from_slice(b"\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or("").trim();
        if is_hop_header(name) {
            continue;
        }
        back.extend_from_slice(line.as_bytes());
        back.extend_from_slice(b"\r\n");
    }
    back.extend_from_slice(if close_client {
        b"Connection: close\r\n\r\n"
    } else {
        b"\r\n"
    });

    if cut {
        cut_response(
            shared,
            &mut up_r,
            out,
            &back,
            &framing,
            &format!("{label} -> fault drop-mid-response {status}"),
        )?;
        return Ok(Next::Close);
    }
    let at = shared.note(format!("{label} -> forwarded {status}"));
    let sent = out.write_all(&back).and_then(|()| match framing {
        Framing::None => Ok(()),
        Framing::Length(n) => copy_exact(&mut up_r, out, n),
        Framing::Chunked => copy_chunked(&mut up_r, out),
        Framing::UntilEof => io::copy(&mut up_r, out).map(drop),
    });
    if let Err(e) = sent {
        shared.amend(
            at,
            &format!(", then failed while sending the response: {e}"),
        );
        return Ok(Next::Close);
    }
    Ok(if close_client {
        Next::Close
    } else {
        Next::KeepAlive
    })
}

/// Sends the response head and half of the body, then stops (the caller closes).
fn cut_response(
    shared: &Shared,
    up_r: &mut BufReader<TcpStream>,
    out: &mut TcpStream,
    back: &[u8],
    framing: &Framing,
    what: &str,
) -> io::Result<()> {
    match *framing {
        Framing::Length(n) if n > 0 => {
            shared.note(format!("{what} (cut after {} of {n} body bytes)", n / 2));
            out.write_all(back)?;
            copy_exact(up_r, out, n / 2)
        }
        Framing::Chunked | Framing::UntilEof => {
            // Unknown length: half of whatever the upstream has sent first.
            let buf = up_r.fill_buf()?;
            let half = buf.len() / 2;
            shared.note(format!("{what} (cut after {half} raw body bytes)"));
            out.write_all(back)?;
            out.write_all(&buf[..half])
        }
        _ => {
            // No body to cut: cut the head itself.
            let half = back.len() / 2;
            shared.note(format!(
                "{what} (no body: cut the head after {half} of {} bytes)",
                back.len()
            ));
            out.write_all(&back[..half])
        }
    }
}

enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilEof,
}

fn connect_upstream(hostport: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in hostport.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, UPSTREAM_TIMEOUT) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                s.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
                s.set_write_timeout(Some(UPSTREAM_TIMEOUT))?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Headers that belong to one connection and are not forwarded.
fn is_hop_header(name: &str) -> bool {
    ["connection", "keep-alive", "proxy-connection"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// Reads one message head up to and including the blank line. `None` on a clean EOF before the
/// first byte (the peer closed an idle connection).
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut raw = Vec::with_capacity(1024);
    loop {
        let before = raw.len();
        let n = r
            .take((MAX_HEAD + 1 - raw.len()) as u64)
            .read_until(b'\n', &mut raw)?;
        if n == 0 {
            if raw.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "EOF inside a message head",
            ));
        }
        if raw.len() > MAX_HEAD {
            return Err(bad("message head too long"));
        }
        let line = &raw[before..];
        if line == b"\r\n" || line == b"\n" {
            if before == 0 {
                // Stray empty line between messages (allowed by RFC 9112): skip it.
                raw.clear();
                continue;
            }
            return Ok(Some(raw));
        }
    }
}

fn parse_headers<'a>(lines: impl Iterator<Item = &'a str>) -> io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (n, v) = line
            .split_once(':')
            .ok_or_else(|| bad(&format!("bad header line {line:?}")))?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    Ok(headers)
}

fn parse_request_head(raw: &[u8]) -> io::Result<RequestHead> {
    let text = std::str::from_utf8(raw).map_err(|_| bad("request head is not UTF-8"))?;
    let mut lines = text.split("\r\n").flat_map(|l| l.split('\n'));
    let first = lines.next().unwrap_or("");
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(&format!("bad request line {first:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad(&format!("not HTTP/1.x: {first:?}")));
    }
    Ok(RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        headers: parse_headers(lines)?,
    })
}

fn parse_response_head(raw: &[u8]) -> io::Result<(u16, Vec<(String, String)>)> {
    let text = std::str::from_utf8(raw).map_err(|_| bad("response head is not UTF-8"))?;
    let mut lines = text.split("\r\n").flat_map(|l| l.split('\n'));
    let first = lines.next().unwrap_or("");
    let status = first
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(&format!("bad status line {first:?}")))?;
    Ok((status, parse_headers(lines)?))
}

fn content_length(headers: &[(String, String)]) -> io::Result<Option<u64>> {
    match headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        None => Ok(None),
        Some((_, v)) => v
            .parse()
            .map(Some)
            .map_err(|_| bad(&format!("bad Content-Length {v:?}"))),
    }
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    has_token(headers, "transfer-encoding", "chunked")
}

fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Copies the request body (by Content-Length, or chunked framing verbatim) to `w`.
fn copy_request_body(
    head: &RequestHead,
    r: &mut impl BufRead,
    w: &mut impl Write,
) -> io::Result<()> {
    if head.is_chunked() {
        copy_chunked(r, w)
    } else {
        copy_exact(r, w, head.content_length()?.unwrap_or(0))
    }
}

/// Copies exactly `n` bytes; EOF before that is an error.
fn copy_exact(r: &mut impl BufRead, w: &mut impl Write, mut n: u64) -> io::Result<()> {
    while n > 0 {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("EOF with {n} body bytes to go"),
            ));
        }
        let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        w.write_all(&buf[..take])?;
        r.consume(take);
        n -= take as u64;
    }
    Ok(())
}

/// Copies a chunked body verbatim (size lines, data, trailers, final CRLF).
fn copy_chunked(r: &mut impl BufRead, w: &mut impl Write) -> io::Result<()> {
    loop {
        let line = read_line(r)?;
        w.write_all(&line)?;
        let text = std::str::from_utf8(&line).map_err(|_| bad("chunk size line is not UTF-8"))?;
        let size_hex = text.trim().split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_hex, 16)
            .map_err(|_| bad(&format!("bad chunk size line {text:?}")))?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let t = read_line(r)?;
                w.write_all(&t)?;
                if t == b"\r\n" || t == b"\n" {
                    return Ok(());
                }
            }
        }
        copy_exact(r, w, size)?;
        let crlf = read_line(r)?;
        if crlf != b"\r\n" && crlf != b"\n" {
            return Err(bad("chunk data not followed by CRLF"));
        }
        w.write_all(&crlf)?;
    }
}

fn read_line(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(32);
    let n = r.take(MAX_HEAD as u64).read_until(b'\n', &mut line)?;
    if n == 0 || !line.ends_with(b"\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "EOF inside chunked framing",
        ));
    }
    Ok(line)
}

fn write_error_response(
    out: &mut TcpStream,
    head: &RequestHead,
    code: u16,
    index: u64,
    close: bool,
) -> io::Result<()> {
    let (reason, s3code, message) = match code {
        503 => (
            "Service Unavailable",
            "SlowDown",
            "Please reduce your request rate.",
        ),
        500 => (
            "Internal Server Error",
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
        502 => ("Bad Gateway", "BadGateway", "Bad gateway."),
        504 => ("Gateway Timeout", "GatewayTimeout", "Gateway timeout."),
        400 => ("Bad Request", "BadRequest", "Bad request."),
        403 => ("Forbidden", "AccessDenied", "Access Denied"),
        404 => (
            "Not Found",
            "NoSuchKey",
            "The specified key does not exist.",
        ),
        408 => ("Request Timeout", "RequestTimeout", "Request timeout."),
        429 => (
            "Too Many Requests",
            "SlowDown",
            "Please reduce your request rate.",
        ),
        _ => ("Error", "InternalError", "Injected error."),
    };
    let request_id = format!("faultproxy-{index}");
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{s3code}</Code><Message>{message} \
         (injected by FaultProxy)</Message><Resource>{}</Resource><RequestId>{request_id}</RequestId></Error>",
        xml_escape(head.path())
    );
    let mut resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nx-amz-request-id: {request_id}\r\n",
        body.len()
    );
    if close {
        resp.push_str("Connection: close\r\n");
    }
    resp.push_str("\r\n");
    if !head.method.eq_ignore_ascii_case("HEAD") {
        resp.push_str(&body);
    }
    out.write_all(resp.as_bytes())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// A writer that turns write errors into "stop writing" and remembers that it happened.
struct FallibleSink<'a> {
    inner: &'a mut TcpStream,
    ok: &'a mut bool,
}

impl Write for FallibleSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if *self.ok && self.inner.write_all(buf).is_err() {
            *self.ok = false;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
