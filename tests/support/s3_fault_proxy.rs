//! A fault-injecting HTTP/1.1 proxy for the S3 integration tests, built on hyper; it runs its
//! own tokio runtime, so blocking tests use it as they would a server.
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
//!   goes upstream on a fresh connection with `Connection: close`;
//! * request and response heads are forwarded as received, header case included (only
//!   `Connection`, `Keep-Alive` and `Proxy-Connection` are dropped). The Host header in
//!   particular is never rewritten: the client signs (SigV4) for the proxy's host:port and the
//!   server checks the signature against the Host header it receives, which is that same value;
//! * bodies are streamed frame by frame, never held whole. hyper re-frames them: a response
//!   the upstream delimits by closing reaches the client chunked;
//! * `Expect: 100-continue`: hyper answers `100 Continue` when the body is first read
//!   (forwarded or drained), and drops the interim 1xx responses of the upstream.
//!
//! Faults:
//! * [`Fault::Status`]: the request (body included) is read, not forwarded, and answered with
//!   that status and an S3-style XML error (503 → `SlowDown`, 500 → `InternalError`, ...); the
//!   connection stays usable;
//! * [`Fault::Drop`]: the request (body included) is read, not forwarded, and the connection is
//!   closed without an answer;
//! * [`Fault::DropMidResponse`]: the request is forwarded (so the server did act on it), the
//!   response head and half of its body are sent back, and the connection is closed. A
//!   response without a body is not sent at all.
//!
//! It must never hold a body in memory nor touch the Host header: both would hide bugs of the
//! client (memory use, signatures) that the real server would reveal.
#![allow(dead_code)]

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A poisoned lock only means a test thread panicked; the data is still fine to read.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bound on reaching the upstream and on waiting for its response head.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);

/// Concrete error types (not boxed trait objects) keep the connection future `Send` as far as
/// the compiler can tell: the service fails with an `io::Error`, a body with a `hyper::Error`.
type RespBody = UnsyncBoxBody<Bytes, hyper::Error>;

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
    /// Headers in order, names lowercase, values as sent (trimmed).
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    fn of(req: &Request<Incoming>) -> RequestHead {
        let uri = req.uri();
        RequestHead {
            method: req.method().to_string(),
            target: uri
                .path_and_query()
                .map_or_else(|| uri.to_string(), |pq| pq.to_string()),
            headers: req
                .headers()
                .iter()
                .map(|(n, v)| {
                    let v = String::from_utf8_lossy(v.as_bytes()).trim().to_string();
                    (n.to_string(), v)
                })
                .collect(),
        }
    }

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
}

type Plan = dyn Fn(u64, &RequestHead) -> Option<Fault> + Send + Sync;

struct Shared {
    /// `host:port`.
    upstream: String,
    plan: Box<Plan>,
    requests: AtomicU64,
    faults: AtomicU64,
    connections: AtomicU64,
    log: Mutex<Vec<String>>,
}

impl Shared {
    /// Adds a log line; returns its position (for [`Shared::amend`]). Every line is added
    /// before the client can see the outcome, so a test that got its answer finds the line.
    fn note(&self, line: String) -> usize {
        let mut log = lock(&self.log);
        log.push(line);
        log.len() - 1
    }

    fn amend(&self, at: usize, more: &str) {
        let mut log = lock(&self.log);
        if let Some(line) = log.get_mut(at) {
            line.push_str(more);
        }
    }

    fn fault(&self, line: String) {
        self.faults.fetch_add(1, Ordering::SeqCst);
        self.note(line);
    }
}

/// A running proxy; it stops (and closes every client connection) when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, to give the S3 client as its endpoint.
    pub endpoint: String,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 (free port) in front of `upstream` (`http://host:port`).
    /// `plan` is asked once per request, with the request's 0-based index (over all
    /// connections, in arrival order) and head; `None` forwards the request.
    pub fn start(
        upstream: &str,
        plan: impl Fn(u64, &RequestHead) -> Option<Fault> + Send + Sync + 'static,
    ) -> FaultProxy {
        let shared = Arc::new(Shared {
            upstream: parse_upstream(upstream),
            plan: Box::new(plan),
            requests: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("FaultProxy: tokio runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("FaultProxy: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("FaultProxy: local_addr");
        runtime.spawn(accept_loop(listener, Arc::clone(&shared)));
        FaultProxy {
            endpoint: format!("http://{addr}"),
            shared,
            runtime: Some(runtime),
        }
    }

    /// A proxy that forwards everything.
    pub fn passthrough(upstream: &str) -> FaultProxy {
        FaultProxy::start(upstream, |_, _| None)
    }

    /// `http://127.0.0.1:PORT`, as [`FaultProxy::endpoint`] the field.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Requests received so far (faulted or not).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Client connections accepted so far (with keep-alive, fewer than requests).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Faults injected so far.
    pub fn faults(&self) -> u64 {
        self.shared.faults.load(Ordering::SeqCst)
    }

    /// One line per request: `METHOD target -> what happened`, e.g.
    /// `PUT /b/k?partNumber=1&uploadId=x -> fault 503`, `GET /b/k -> forwarded 200`,
    /// `GET /b/k -> fault drop-mid-response 200 (cut after 1048576 of 2097152 body bytes)`.
    pub fn log(&self) -> Vec<String> {
        lock(&self.shared.log).clone()
    }

    /// The log, one request a line, for assertion messages.
    pub fn log_text(&self) -> String {
        self.log().join("\n")
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Dropping the runtime drops every task, hence every socket. Waiting for that is not
        // allowed from async code (a `#[tokio::test]`); there the sockets close a moment later.
        if let Some(rt) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_secs(5));
            }
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

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(serve_client(stream, Arc::clone(&shared)));
    }
}

/// Per client connection: the cut flag its [`CutIo`] watches, and the log line of the last
/// forwarded response, to amend if sending it fails.
#[derive(Default)]
struct ConnState {
    cut: AtomicBool,
    sending: Mutex<Option<usize>>,
}

async fn serve_client(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let state = Arc::new(ConnState::default());
    let io = TokioIo::new(CutIo {
        inner: stream,
        state: Arc::clone(&state),
    });
    let (shared2, state2) = (Arc::clone(&shared), Arc::clone(&state));
    let service = hyper::service::service_fn(move |req| {
        let (shared, state) = (Arc::clone(&shared2), Arc::clone(&state2));
        async move { handle(&shared, &state, req).await }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .preserve_header_case(true)
        .serve_connection(io, service)
        .await;
    let sending = lock(&state.sending).take();
    if let (Err(e), Some(at)) = (served, sending) {
        shared.amend(
            at,
            &format!(", then failed while sending the response: {e}"),
        );
    }
}

/// One request: asks the plan, then answers, forwards or drops. An `Err` makes hyper close
/// the client connection without answering.
async fn handle(
    shared: &Shared,
    state: &Arc<ConnState>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, io::Error> {
    // The previous response on this connection was sent whole, or this request would not be.
    *lock(&state.sending) = None;
    let head = RequestHead::of(&req);
    let index = shared.requests.fetch_add(1, Ordering::SeqCst);
    let label = format!("{} {}", head.method, head.target);
    match (shared.plan)(index, &head) {
        Some(Fault::Status(code)) => {
            drain(req.into_body()).await.map_err(io::Error::other)?;
            shared.fault(format!("{label} -> fault {code}"));
            Ok(s3_error(&head, code, index))
        }
        Some(Fault::Drop) => {
            drain(req.into_body()).await.map_err(io::Error::other)?;
            shared.fault(format!("{label} -> fault drop"));
            Err(io::Error::other("fault: drop"))
        }
        Some(Fault::DropMidResponse) => {
            let what = format!("{label} -> fault drop-mid-response");
            match forward(shared, req).await {
                Ok(Ok(resp)) => cut(shared, &head, resp, &what, state),
                Ok(Err(e)) | Err(e) => {
                    shared.fault(format!("{what}, error: {e}"));
                    Err(e)
                }
            }
        }
        None => match forward(shared, req).await {
            Ok(Ok(resp)) => {
                let at = shared.note(format!("{label} -> forwarded {}", resp.status().as_u16()));
                *lock(&state.sending) = Some(at);
                Ok(resp.map(|b| b.boxed_unsync()))
            }
            Ok(Err(e)) => {
                shared.note(format!(
                    "{label} -> upstream unreachable, answered 502 ({e})"
                ));
                let body = format!(
                    "FaultProxy: cannot connect to upstream {}: {e}\n",
                    shared.upstream
                );
                let mut resp = Response::new(full(body));
                *resp.status_mut() = StatusCode::BAD_GATEWAY;
                let h = resp.headers_mut();
                h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                h.insert(CONNECTION, HeaderValue::from_static("close"));
                Ok(resp)
            }
            Err(e) => {
                shared.note(format!("{label} -> error: {e}"));
                Err(e)
            }
        },
    }
}

/// Reads a request body to its end, keeping nothing (the connection stays in sync).
async fn drain(mut body: Incoming) -> Result<(), hyper::Error> {
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(())
}

fn full(body: impl Into<Bytes>) -> RespBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Headers that belong to one connection and are not forwarded.
fn strip_hop_headers(h: &mut hyper::HeaderMap) {
    for name in ["connection", "keep-alive", "proxy-connection"] {
        h.remove(name);
    }
}

/// Sends the request upstream on a fresh connection and returns the response head, its body
/// still streaming. `Ok(Err(_))`: the upstream cannot be reached (the request body was drained).
async fn forward(
    shared: &Shared,
    mut req: Request<Incoming>,
) -> io::Result<io::Result<Response<Incoming>>> {
    let connect = tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(&shared.upstream));
    let stream = match connect
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    {
        Ok(stream) => stream,
        Err(e) => {
            drain(req.into_body()).await.map_err(io::Error::other)?;
            return Ok(Err(e));
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut send, conn) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    // Drives the upstream connection until the response body has been read (or dropped).
    tokio::spawn(conn);
    strip_hop_headers(req.headers_mut());
    req.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    let mut resp = tokio::time::timeout(UPSTREAM_TIMEOUT, send.send_request(req))
        .await
        .map_err(|_| io::Error::other("no response head from the upstream in time"))?
        .map_err(io::Error::other)?;
    strip_hop_headers(resp.headers_mut());
    Ok(Ok(resp))
}

/// The response of a [`Fault::DropMidResponse`]: its head and half its body, then the
/// connection closes. Without a body, nothing is sent and the connection closes.
fn cut(
    shared: &Shared,
    head: &RequestHead,
    resp: Response<Incoming>,
    what: &str,
    state: &Arc<ConnState>,
) -> Result<Response<RespBody>, io::Error> {
    let status = resp.status().as_u16();
    let length = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let no_body = head.method == "HEAD"
        || status == 204
        || status == 304
        || length == Some(0)
        || resp.body().is_end_stream();
    let left = match length {
        _ if no_body => {
            shared.fault(format!("{what} {status} (no body: closed before the head)"));
            return Err(io::Error::other("fault: drop-mid-response without a body"));
        }
        Some(n) => {
            shared.fault(format!(
                "{what} {status} (cut after {} of {n} body bytes)",
                n / 2
            ));
            Some(n / 2)
        }
        None => {
            shared.fault(format!(
                "{what} {status} (length unknown: cut after half of the first body frame)"
            ));
            None
        }
    };
    let state = Arc::clone(state);
    Ok(resp.map(|inner| CutBody { inner, left, state }.boxed_unsync()))
}

/// A response body that passes `left` bytes (`None`: half of the first frame), then raises the
/// connection's cut flag and never ends: [`CutIo`] closes the connection once hyper has
/// flushed what was passed.
struct CutBody {
    inner: Incoming,
    left: Option<u64>,
    state: Arc<ConnState>,
}

impl Body for CutBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        loop {
            if this.left == Some(0) {
                this.state.cut.store(true, Ordering::SeqCst);
                return Poll::Pending;
            }
            let frame = match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    // Ended early (or no data frame at all): cut here.
                    this.left = Some(0);
                    continue;
                }
            };
            let Ok(mut data) = frame.into_data() else {
                continue; // trailers: never reached, the cut comes first
            };
            let left = *this.left.get_or_insert(data.len() as u64 / 2);
            let take = usize::try_from(left).map_or(data.len(), |l| l.min(data.len()));
            data.truncate(take);
            this.left = Some(left - take as u64);
            if !data.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
        }
    }
}

/// The client socket. When the connection's cut flag is up, the flush that follows hyper's
/// last write fails, which makes hyper drop (close) the connection with everything before it
/// sent.
struct CutIo {
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for CutIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CutIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.cut.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "fault: response cut",
            )));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A [`Fault::Status`] answer: S3's error document for that status.
fn s3_error(head: &RequestHead, code: u16, index: u64) -> Response<RespBody> {
    let (s3code, message) = match code {
        503 | 429 => ("SlowDown", "Please reduce your request rate."),
        500 => (
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
        502 => ("BadGateway", "Bad gateway."),
        504 => ("GatewayTimeout", "Gateway timeout."),
        400 => ("BadRequest", "Bad request."),
        403 => ("AccessDenied", "Access Denied"),
        404 => ("NoSuchKey", "The specified key does not exist."),
        408 => ("RequestTimeout", "Request timeout."),
        _ => ("InternalError", "Injected error."),
    };
    let request_id = format!("faultproxy-{index}");
    let resource = head
        .path()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{s3code}</Code><Message>{message} \
         (injected by FaultProxy)</Message><Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>"
    );
    // hyper sets Content-Length, and leaves the body out for a HEAD.
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-amz-request-id", v);
    }
    resp
}
