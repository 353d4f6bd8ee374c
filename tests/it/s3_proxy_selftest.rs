//! Self-test of the fault-injecting proxy in `tests/support/s3_fault_proxy.rs`, against a tiny
//! in-process hyper upstream (no S3 server needed), through a raw HTTP/1.1 client that sees
//! every byte: forwarding on a kept-alive client connection, injected statuses, dropped
//! connections, responses cut halfway, large bodies byte-exact, chunked bodies both ways,
//! `Expect: 100-continue`, an upstream that delimits by closing, and one that is down.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::noise;
use crate::support::s3_fault_proxy::{Fault, FaultProxy};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

// ---------------------------------------------------------------------------------------------
// The upstream, on its own runtime:
//
//   GET  /hello        200, echoes what it saw in X-Seen-Host / X-Seen-Connection / X-Seen-Custom
//   PUT  /store/KEY    stores the body (hyper de-chunks it and answers Expect: 100-continue)
//   GET  /store/KEY    the stored body, with Content-Length (HEAD: the length only)
//   GET  /chunked      a chunked body

type Objects = Mutex<HashMap<String, Vec<u8>>>;

struct Upstream {
    url: String,
    requests: Arc<AtomicU64>,
    objects: Arc<Objects>,
    _rt: tokio::runtime::Runtime,
}

const CHUNKED_BODY: &str = "a body sent with chunked framing";
const EOF_BODY: &str = "this body ends when the connection does";

fn start_upstream() -> Upstream {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicU64::new(0));
    let objects: Arc<Objects> = Arc::default();
    let (req2, obj2) = (Arc::clone(&requests), Arc::clone(&objects));
    rt.spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (req, obj) = (Arc::clone(&req2), Arc::clone(&obj2));
            let service = hyper::service::service_fn(move |r| {
                let (req, obj) = (Arc::clone(&req), Arc::clone(&obj));
                async move { upstream(r, &req, &obj).await }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(conn), service),
            );
        }
    });
    Upstream {
        url,
        requests,
        objects,
        _rt: rt,
    }
}

async fn upstream(
    req: Request<Incoming>,
    requests: &AtomicU64,
    objects: &Objects,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    requests.fetch_add(1, Ordering::SeqCst);
    let seen = |name: &str| {
        req.headers()
            .get(name)
            .map_or("-".to_string(), |v| v.to_str().unwrap().to_string())
    };
    let resp = Response::builder();
    let target = req.uri().to_string();
    let resp = match (req.method().as_str(), target.as_str()) {
        ("GET", "/hello") => resp
            .header("x-seen-host", seen("host"))
            .header("x-seen-connection", seen("connection"))
            .header("x-seen-custom", seen("x-custom"))
            .body(Full::from("hello from upstream\n")),
        ("PUT", t) if t.starts_with("/store/") => {
            let body = req.into_body().collect().await?.to_bytes().to_vec();
            let etag = format!("\"{}\"", body.len());
            objects.lock().unwrap().insert(target, body);
            resp.header("etag", etag).body(Full::default())
        }
        ("GET" | "HEAD", t) if t.starts_with("/store/") => match objects.lock().unwrap().get(t) {
            Some(data) => resp.body(Full::from(data.clone())),
            None => resp.status(404).body(Full::default()),
        },
        ("GET", "/chunked") => resp
            .header("transfer-encoding", "chunked")
            .body(Full::from(CHUNKED_BODY)),
        _ => resp.status(404).body(Full::default()),
    };
    Ok(resp.unwrap())
}

/// An upstream that answers one request with a body delimited by closing the connection
/// (which a hyper server never does).
fn start_eof_upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut r = BufReader::new(conn.try_clone().unwrap());
        read_head(&mut r).unwrap();
        write!(&conn, "HTTP/1.1 200\r\nConnection: close\r\n\r\n{EOF_BODY}").unwrap();
    });
    url
}

// ---------------------------------------------------------------------------------------------
// A raw keep-alive client, to see exactly what the proxy sends.

type Headers = Vec<(String, String)>;

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Reads a head; EOF before its first byte is `UnexpectedEof`.
fn read_head(r: &mut impl BufRead) -> std::io::Result<(String, Headers)> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        if line.trim_end().is_empty() {
            break;
        }
        lines.push(line.trim_end().to_string());
    }
    let first = lines.remove(0);
    let headers = lines.iter().map(|l| l.split_once(':').unwrap());
    let headers = headers.map(|(n, v)| (n.trim().to_string(), v.trim().to_string()));
    Ok((first, headers.collect()))
}

/// Reads a body by Content-Length or chunked framing (de-chunked), else to EOF.
fn read_body(r: &mut impl BufRead, headers: &Headers) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if header(headers, "transfer-encoding") == Some("chunked") {
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let size =
                usize::from_str_radix(line.trim(), 16).map_err(|_| ErrorKind::InvalidData)?;
            let at = body.len();
            body.resize(at + size + 2, 0);
            r.read_exact(&mut body[at..])?;
            assert_eq!(body.split_off(at + size), b"\r\n");
            if size == 0 {
                return Ok(body);
            }
        }
    } else if let Some(n) = header(headers, "content-length") {
        body.resize(n.parse().expect("content-length"), 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

struct Client {
    r: BufReader<std::net::TcpStream>,
    w: std::net::TcpStream,
    host: String,
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Headers,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

impl Client {
    fn connect(endpoint: &str) -> Client {
        let host = endpoint.strip_prefix("http://").unwrap().to_string();
        let s = std::net::TcpStream::connect(&host).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            host,
        }
    }

    fn send_head(&mut self, method: &str, path: &str, extra: &[(&str, &str)], len: Option<usize>) {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nX-Custom: Keep  Me\r\n",
            self.host
        );
        if let Some(n) = len {
            head.push_str(&format!("Content-Length: {n}\r\n"));
        }
        for (n, v) in extra {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.w.write_all(head.as_bytes()).unwrap();
    }

    fn read_response(&mut self, method: &str) -> std::io::Result<Resp> {
        let (line, headers) = read_head(&mut self.r)?;
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        let body = match method {
            "HEAD" => Vec::new(),
            _ => read_body(&mut self.r, &headers)?,
        };
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Resp {
        let len = (method == "PUT" || !body.is_empty()).then_some(body.len());
        self.send_head(method, path, &[], len);
        self.w.write_all(body).unwrap();
        self.read_response(method).unwrap()
    }

    /// True when the peer has closed the connection (EOF or reset on the next read).
    fn is_closed(&mut self) -> bool {
        match self.r.read(&mut [0u8; 1]) {
            Ok(n) => n == 0,
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
        }
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn forwards_verbatim_on_a_kept_alive_connection() {
    let up = start_upstream();
    let proxy = FaultProxy::passthrough(&up.url);
    let mut c = Client::connect(&proxy.endpoint);

    let r = c.request("GET", "/hello", b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello from upstream\n");
    // Host untouched (the client's, i.e. the proxy's address), headers verbatim, and the
    // upstream connection is one-shot.
    let proxy_host = proxy.endpoint().strip_prefix("http://").unwrap();
    assert_eq!(r.header("x-seen-host"), Some(proxy_host));
    assert_eq!(r.header("x-seen-custom"), Some("Keep  Me"));
    assert_eq!(r.header("x-seen-connection"), Some("close"));
    assert_eq!(r.header("connection"), None, "the client connection stays");

    let r = c.request("PUT", "/store/a?partNumber=1&uploadId=u", b"some bytes");
    assert_eq!((r.status, r.header("etag")), (200, Some("\"10\"")));
    let r = c.request("HEAD", "/store/a?partNumber=1&uploadId=u", b"");
    let got = (r.status, r.header("content-length"), r.body.len());
    assert_eq!(got, (200, Some("10"), 0));
    let r = c.request("GET", "/store/a?partNumber=1&uploadId=u", b"");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"some bytes"[..]));
    let r = c.request("GET", "/store/missing", b"");
    assert_eq!(r.status, 404);

    assert_eq!(proxy.requests(), 5);
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.faults(), 0);
    assert_eq!(up.requests.load(Ordering::SeqCst), 5);
    assert_eq!(
        proxy.log(),
        [
            "GET /hello -> forwarded 200",
            "PUT /store/a?partNumber=1&uploadId=u -> forwarded 200",
            "HEAD /store/a?partNumber=1&uploadId=u -> forwarded 200",
            "GET /store/a?partNumber=1&uploadId=u -> forwarded 200",
            "GET /store/missing -> forwarded 404",
        ]
    );

    // Dropping the proxy closes the connections it holds.
    drop(proxy);
    assert!(c.is_closed());
}

#[test]
fn status_faults_answer_with_s3_errors_and_keep_the_connection() {
    let up = start_upstream();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let proxy = FaultProxy::start(&up.url, move |i, head| {
        let part = head.query_param("partNumber").map(str::to_string);
        let path = head.path().to_string();
        seen2
            .lock()
            .unwrap()
            .push((i, head.method.clone(), path, part));
        match i {
            0 | 3 => Some(Fault::Status(503)),
            1 => Some(Fault::Status(500)),
            _ => None,
        }
    });
    let mut c = Client::connect(&proxy.endpoint);

    let r = c.request(
        "PUT",
        "/store/k?partNumber=7&uploadId=u",
        &noise(1, 100_000),
    );
    assert_eq!(r.status, 503);
    let body = String::from_utf8(r.body.clone()).unwrap();
    assert!(body.contains("<Code>SlowDown</Code>"), "{body}");
    assert!(body.contains("<Resource>/store/k</Resource>"), "{body}");
    assert_eq!(r.header("content-type"), Some("application/xml"));
    assert_eq!(r.header("x-amz-request-id"), Some("faultproxy-0"));

    let r = c.request("PUT", "/store/k", b"x");
    assert_eq!(r.status, 500);
    assert!(String::from_utf8_lossy(&r.body).contains("<Code>InternalError</Code>"));

    // Same connection, next request forwarded: the faulted bodies were consumed.
    assert_eq!(c.request("GET", "/hello", b"").status, 200);
    // A HEAD gets the status without a body.
    let r = c.request("HEAD", "/store/k", b"");
    assert_eq!((r.status, r.body.len()), (503, 0));
    let r = c.request("GET", "/store/k", b"");
    assert_eq!(r.status, 404, "the faulted PUTs never reached the upstream");

    assert_eq!((proxy.requests(), proxy.faults()), (5, 3));
    assert_eq!(proxy.connections(), 1);
    assert_eq!(up.requests.load(Ordering::SeqCst), 2);
    let log = proxy.log();
    assert_eq!(log[0], "PUT /store/k?partNumber=7&uploadId=u -> fault 503");
    assert_eq!(log[1], "PUT /store/k -> fault 500");
    let seen = seen.lock().unwrap();
    let first = (0, "PUT".into(), "/store/k".into(), Some("7".into()));
    assert_eq!(seen[0], first);
    assert_eq!(seen[4].0, 4);
}

#[test]
fn drop_reads_the_request_and_closes_without_answering() {
    let up = start_upstream();
    let proxy = FaultProxy::start(&up.url, |i, _| (i == 0).then_some(Fault::Drop));
    let mut c = Client::connect(&proxy.endpoint);
    c.send_head("PUT", "/store/d", &[], Some(200_000));
    c.w.write_all(&noise(2, 200_000)).unwrap();
    match c.read_response("PUT") {
        Err(e) => assert!(
            matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ),
            "unexpected error {e:?}"
        ),
        Ok(r) => panic!("expected no answer, got {r:?}"),
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);

    // The proxy itself is still fine.
    let mut c = Client::connect(&proxy.endpoint);
    assert_eq!(c.request("GET", "/store/d", b"").status, 404);
    assert_eq!((proxy.requests(), proxy.faults()), (2, 1));
    assert_eq!(proxy.log()[0], "PUT /store/d -> fault drop");
}

#[test]
fn drop_mid_response_forwards_then_cuts_the_body() {
    let up = start_upstream();
    let proxy = FaultProxy::start(&up.url, |_, head| {
        (head.method != "PUT").then_some(Fault::DropMidResponse)
    });
    let payload = noise(3, 1 << 20);
    let mut c = Client::connect(&proxy.endpoint);
    assert_eq!(c.request("PUT", "/store/m", &payload).status, 200);

    // Known length: the head, then half the body, then EOF (or reset).
    c.send_head("GET", "/store/m", &[], None);
    let (line, headers) = read_head(&mut c.r).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    assert_eq!(header(&headers, "content-length"), Some("1048576"));
    let mut got = Vec::new();
    let _ = c.r.read_to_end(&mut got);
    assert!(got == payload[..1 << 19], "got {} bytes", got.len());

    // Chunked: the head, then part of the body, never its end.
    let mut c = Client::connect(&proxy.endpoint);
    c.send_head("GET", "/chunked", &[], None);
    let (line, headers) = read_head(&mut c.r).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    assert!(read_body(&mut c.r, &headers).is_err());

    // No body to cut (HEAD): the upstream acted, the client gets nothing.
    let mut c = Client::connect(&proxy.endpoint);
    c.send_head("HEAD", "/store/m", &[], None);
    assert!(c.read_response("HEAD").is_err());

    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        4,
        "all reached the upstream"
    );
    assert_eq!((proxy.requests(), proxy.faults()), (4, 3));
    let log = proxy.log();
    let text = proxy.log_text();
    assert_eq!(
        log[1],
        "GET /store/m -> fault drop-mid-response 200 (cut after 524288 of 1048576 body bytes)",
        "{text}"
    );
    assert!(
        log[2].starts_with("GET /chunked -> fault drop-mid-response 200"),
        "{text}"
    );
    assert!(
        log[3].contains("(no body: closed before the head)"),
        "{text}"
    );
}

#[test]
fn large_bodies_pass_through_byte_exact() {
    let up = start_upstream();
    let proxy = FaultProxy::passthrough(&up.url);
    let mut c = Client::connect(&proxy.endpoint);

    let big = noise(4, 16 << 20);
    let r = c.request("PUT", "/store/big", &big);
    assert_eq!((r.status, r.header("etag")), (200, Some("\"16777216\"")));
    let stored = up.objects.lock().unwrap()["/store/big"] == big;
    assert!(stored, "upstream received different bytes");
    let r = c.request("GET", "/store/big", b"");
    assert_eq!((r.status, r.body.len()), (200, big.len()));
    assert!(r.body == big, "downloaded bytes differ");

    // A chunked request body.
    let chunked = noise(5, 3 << 20);
    let te = [("Transfer-Encoding", "chunked")];
    c.send_head("PUT", "/store/chunked", &te, None);
    for piece in chunked.chunks(100_000) {
        write!(c.w, "{:x}\r\n", piece.len()).unwrap();
        c.w.write_all(piece).unwrap();
        c.w.write_all(b"\r\n").unwrap();
    }
    c.w.write_all(b"0\r\n\r\n").unwrap();
    assert_eq!(c.read_response("PUT").unwrap().status, 200);
    assert!(up.objects.lock().unwrap()["/store/chunked"] == chunked);
    assert_eq!(proxy.log().len(), 3);
}

#[test]
fn expect_continue_chunked_and_eof_delimited_responses() {
    let up = start_upstream();
    let proxy = FaultProxy::passthrough(&up.url);
    let mut c = Client::connect(&proxy.endpoint);

    // Expect: 100-continue: one 100 comes back before the body is sent.
    let body = noise(6, 50_000);
    let expect = [("Expect", "100-continue")];
    c.send_head("PUT", "/store/e", &expect, Some(body.len()));
    let (line, _) = read_head(&mut c.r).unwrap();
    assert!(line.starts_with("HTTP/1.1 100"), "{line}");
    c.w.write_all(&body).unwrap();
    assert_eq!(c.read_response("PUT").unwrap().status, 200);
    assert!(up.objects.lock().unwrap()["/store/e"] == body);

    // Chunked response: forwarded chunked, connection kept.
    let r = c.request("GET", "/chunked", b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, CHUNKED_BODY.as_bytes());
    assert_eq!(c.request("GET", "/hello", b"").status, 200);
    assert_eq!((proxy.requests(), proxy.connections()), (3, 1));

    // A body the upstream delimits by closing arrives whole (re-framed by hyper).
    let proxy = FaultProxy::passthrough(&start_eof_upstream());
    let mut c = Client::connect(&proxy.endpoint);
    let r = c.request("GET", "/eof", b"");
    assert_eq!((r.status, r.body.as_slice()), (200, EOF_BODY.as_bytes()));
}

#[test]
fn upstream_down_gives_502() {
    // A port nobody listens on: bind, take the port, close.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let proxy = FaultProxy::passthrough(&format!("http://127.0.0.1:{port}"));
    let mut c = Client::connect(&proxy.endpoint);
    let r = c.request("PUT", "/store/x", b"abc");
    assert_eq!(r.status, 502);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(proxy.requests(), 1);
    assert!(proxy.log()[0].starts_with("PUT /store/x -> upstream unreachable, answered 502 ("));
}
