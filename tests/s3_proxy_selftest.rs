//! Self-test of the fault-injecting proxy in `tests/support/s3_fault_proxy.rs`, against a tiny
//! in-process HTTP/1.1 upstream (no S3 server needed): forwarding on a kept-alive client
//! connection, injected statuses, dropped connections, responses cut halfway, large bodies
//! byte-exact, chunked bodies in both directions, and `Expect: 100-continue`.

#[path = "support/s3_fault_proxy.rs"]
mod s3_fault_proxy;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use s3_fault_proxy::{Fault, FaultProxy};

// ---------------------------------------------------------------------------------------------
// Minimal HTTP/1.1 message reading, shared by the upstream and the client.

type Headers = Vec<(String, String)>;

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Reads a head; `None` on EOF before the first byte.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<(String, Headers)>> {
    let mut first = String::new();
    if r.read_line(&mut first)? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':').expect("header line");
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    Ok(Some((first.trim_end().to_string(), headers)))
}

/// Reads a body by Content-Length or chunked framing (de-chunked), or to EOF when `to_eof`.
fn read_body(r: &mut impl BufRead, headers: &Headers, to_eof: bool) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if header(headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16)
                .expect("chunk size");
            if size == 0 {
                loop {
                    let mut t = String::new();
                    r.read_line(&mut t)?;
                    if t.trim_end().is_empty() {
                        return Ok(body);
                    }
                }
            }
            let at = body.len();
            body.resize(at + size, 0);
            r.read_exact(&mut body[at..])?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
            assert_eq!(&crlf, b"\r\n");
        }
    } else if let Some(n) = header(headers, "content-length") {
        body.resize(n.parse().expect("content-length"), 0);
        r.read_exact(&mut body)?;
    } else if to_eof {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

// ---------------------------------------------------------------------------------------------
// The upstream: a tiny object store plus a few fixed routes.
//
//   GET  /hello        200, echoes what it saw in X-Seen-Host / X-Seen-Connection / X-Seen-Custom
//   PUT  /store/KEY    stores the (de-chunked) body; sends 100 Continue first when asked
//   GET  /store/KEY    the stored body, with Content-Length (HEAD: the length only)
//   GET  /chunked      a chunked body
//   GET  /eof          a body delimited by closing the connection

struct Upstream {
    url: String,
    requests: Arc<AtomicU64>,
    objects: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

const CHUNKED_PARTS: [&str; 3] = ["first part, ", "second part, ", "and the last one"];
const EOF_BODY: &str = "this body ends when the connection does";

fn start_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicU64::new(0));
    let objects: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let (req2, obj2) = (Arc::clone(&requests), Arc::clone(&objects));
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (req, obj) = (Arc::clone(&req2), Arc::clone(&obj2));
            thread::spawn(move || {
                let _ = serve_upstream(conn, &req, &obj);
            });
        }
    });
    Upstream {
        url,
        requests,
        objects,
    }
}

fn serve_upstream(
    conn: TcpStream,
    requests: &AtomicU64,
    objects: &Mutex<HashMap<String, Vec<u8>>>,
) -> std::io::Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    while let Some((line, headers)) = read_head(&mut r)? {
        requests.fetch_add(1, Ordering::SeqCst);
        let mut parts = line.split(' ');
        let (method, target) = (
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
        );
        if header(&headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = read_body(&mut r, &headers, false)?;
        let close = header(&headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let conn_hdr = if close { "Connection: close\r\n" } else { "" };
        match (method.as_str(), target.as_str()) {
            ("GET", "/hello") => {
                let b = "hello from upstream\n";
                write!(
                    w,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Seen-Host: {}\r\nX-Seen-Connection: {}\r\nX-Seen-Custom: {}\r\n{conn_hdr}\r\n{b}",
                    b.len(),
                    header(&headers, "host").unwrap_or("-"),
                    header(&headers, "connection").unwrap_or("-"),
                    header(&headers, "x-custom").unwrap_or("-"),
                )?;
            }
            ("PUT", t) if t.starts_with("/store/") => {
                let n = body.len();
                objects.lock().unwrap().insert(t.to_string(), body);
                write!(
                    w,
                    "HTTP/1.1 200 OK\r\nETag: \"{n}\"\r\nContent-Length: 0\r\n{conn_hdr}\r\n"
                )?;
            }
            (m @ ("GET" | "HEAD"), t) if t.starts_with("/store/") => {
                let objects = objects.lock().unwrap();
                match objects.get(t) {
                    Some(data) => {
                        write!(
                            w,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{conn_hdr}\r\n",
                            data.len()
                        )?;
                        if m == "GET" {
                            w.write_all(data)?;
                        }
                    }
                    None => write!(
                        w,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n{conn_hdr}\r\n"
                    )?,
                }
            }
            ("GET", "/chunked") => {
                write!(
                    w,
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n{conn_hdr}\r\n"
                )?;
                for p in CHUNKED_PARTS {
                    write!(w, "{:x}\r\n{p}\r\n", p.len())?;
                }
                w.write_all(b"0\r\n\r\n")?;
            }
            ("GET", "/eof") => {
                write!(w, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{EOF_BODY}")?;
                return Ok(());
            }
            _ => write!(
                w,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n{conn_hdr}\r\n"
            )?,
        }
        w.flush()?;
        if close {
            return Ok(());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A keep-alive client.

struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
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
        let s = TcpStream::connect(&host).unwrap();
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
        let (line, headers) = read_head(&mut self.r)?.ok_or(ErrorKind::UnexpectedEof)?;
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            read_body(&mut self.r, &headers, true)?
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
        let mut b = [0u8; 1];
        match self.r.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ),
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a corruption cannot hide in a pattern.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
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
    let proxy_host = proxy.endpoint.strip_prefix("http://").unwrap();
    assert_eq!(r.header("x-seen-host"), Some(proxy_host));
    assert_eq!(r.header("x-seen-custom"), Some("Keep  Me"));
    assert_eq!(r.header("x-seen-connection"), Some("close"));
    assert_eq!(
        r.header("connection"),
        None,
        "the client connection stays open"
    );

    let r = c.request("PUT", "/store/a?partNumber=1&uploadId=u", b"some bytes");
    assert_eq!((r.status, r.header("etag")), (200, Some("\"10\"")));
    let r = c.request("HEAD", "/store/a?partNumber=1&uploadId=u", b"");
    assert_eq!(
        (r.status, r.header("content-length"), r.body.len()),
        (200, Some("10"), 0)
    );
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
}

#[test]
fn status_faults_answer_with_s3_errors_and_keep_the_connection() {
    let up = start_upstream();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let proxy = FaultProxy::start(&up.url, move |i, head| {
        seen2.lock().unwrap().push((
            i,
            head.method.clone(),
            head.path().to_string(),
            head.query_param("partNumber").map(str::to_string),
        ));
        match i {
            0 => Some(Fault::Status(503)),
            1 => Some(Fault::Status(500)),
            3 => Some(Fault::Status(503)),
            _ => None,
        }
    });
    let mut c = Client::connect(&proxy.endpoint);

    let r = c.request("PUT", "/store/k?partNumber=7&uploadId=u", &data(100_000, 1));
    assert_eq!(r.status, 503);
    let body = String::from_utf8(r.body.clone()).unwrap();
    assert!(body.contains("<Code>SlowDown</Code>"), "{body}");
    assert_eq!(r.header("content-type"), Some("application/xml"));

    let r = c.request("PUT", "/store/k", b"x");
    assert_eq!(r.status, 500);
    assert!(String::from_utf8_lossy(&r.body).contains("<Code>InternalError</Code>"));

    // Same connection, next request forwarded: the faulted bodies were consumed.
    let r = c.request("GET", "/hello", b"");
    assert_eq!(r.status, 200);
    // A HEAD gets the status without a body.
    let r = c.request("HEAD", "/store/k", b"");
    assert_eq!((r.status, r.body.len()), (503, 0));
    let r = c.request("GET", "/store/k", b"");
    assert_eq!(r.status, 404, "the faulted PUTs never reached the upstream");

    assert_eq!((proxy.requests(), proxy.faults()), (5, 3));
    assert_eq!(up.requests.load(Ordering::SeqCst), 2);
    let log = proxy.log();
    assert_eq!(log[0], "PUT /store/k?partNumber=7&uploadId=u -> fault 503");
    assert_eq!(log[1], "PUT /store/k -> fault 500");
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen[0],
        (0, "PUT".into(), "/store/k".into(), Some("7".into()))
    );
    assert_eq!(seen[4].0, 4);
}

#[test]
fn drop_reads_the_request_and_closes_without_answering() {
    let up = start_upstream();
    let proxy = FaultProxy::start(&up.url, |i, _| (i == 0).then_some(Fault::Drop));
    let mut c = Client::connect(&proxy.endpoint);
    c.send_head("PUT", "/store/d", &[], Some(200_000));
    c.w.write_all(&data(200_000, 2)).unwrap();
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
        (head.method == "GET" && head.path() == "/store/m").then_some(Fault::DropMidResponse)
    });
    let payload = data(1 << 20, 3);
    let mut c = Client::connect(&proxy.endpoint);
    assert_eq!(c.request("PUT", "/store/m", &payload).status, 200);

    c.send_head("GET", "/store/m", &[], None);
    let (line, headers) = read_head(&mut c.r).unwrap().unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    assert_eq!(header(&headers, "content-length"), Some("1048576"));
    let mut got = Vec::new();
    let _ = c.r.read_to_end(&mut got); // EOF (or reset) after half
    assert_eq!(got.len(), 1 << 19);
    assert_eq!(got, payload[..1 << 19]);

    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        2,
        "the GET did reach the upstream"
    );
    assert_eq!((proxy.requests(), proxy.faults()), (2, 1));
    assert!(
        proxy.log()[1].starts_with("GET /store/m -> fault drop-mid-response 200"),
        "{}",
        proxy.log_text()
    );
}

#[test]
fn large_bodies_pass_through_byte_exact() {
    let up = start_upstream();
    let proxy = FaultProxy::passthrough(&up.url);
    let mut c = Client::connect(&proxy.endpoint);

    let big = data(16 << 20, 4);
    let r = c.request("PUT", "/store/big", &big);
    assert_eq!((r.status, r.header("etag")), (200, Some("\"16777216\"")));
    assert!(
        up.objects.lock().unwrap()["/store/big"] == big,
        "upstream received different bytes"
    );
    let r = c.request("GET", "/store/big", b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), big.len());
    assert!(r.body == big, "downloaded bytes differ");

    // A chunked request body (forwarded with its framing; the upstream de-chunks it).
    let chunked = data(3 << 20, 5);
    c.send_head(
        "PUT",
        "/store/chunked",
        &[("Transfer-Encoding", "chunked")],
        None,
    );
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

    // Expect: 100-continue: the proxy says 100 itself; the upstream's own 100 is not repeated.
    let body = data(50_000, 6);
    c.send_head(
        "PUT",
        "/store/e",
        &[("Expect", "100-continue")],
        Some(body.len()),
    );
    let (line, _) = read_head(&mut c.r).unwrap().unwrap();
    assert!(line.starts_with("HTTP/1.1 100"), "{line}");
    c.w.write_all(&body).unwrap();
    let r = c.read_response("PUT").unwrap();
    assert_eq!(r.status, 200);
    assert!(up.objects.lock().unwrap()["/store/e"] == body);

    // Chunked response: forwarded as chunked, connection kept.
    let r = c.request("GET", "/chunked", b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, CHUNKED_PARTS.concat().as_bytes());
    assert_eq!(c.request("GET", "/hello", b"").status, 200);

    // EOF-delimited response: passed through, then the client connection is closed.
    let r = c.request("GET", "/eof", b"");
    assert_eq!((r.status, r.body.as_slice()), (200, EOF_BODY.as_bytes()));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed());
    assert_eq!(proxy.requests(), 4);
}

#[test]
fn upstream_down_gives_502() {
    // A port nobody listens on: bind, take the port, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = FaultProxy::passthrough(&format!("http://127.0.0.1:{port}"));
    let mut c = Client::connect(&proxy.endpoint);
    let r = c.request("PUT", "/store/x", b"abc");
    assert_eq!(r.status, 502);
    assert_eq!(proxy.requests(), 1);
}
