//! `--metrics-listen ADDR` (serve, binlogs push --follow): the Prometheus text format at
//! `/metrics`, liveness at `/healthz`, readiness at `/readyz`; any other path is 404.
//!
//! The library keeps plain atomic counters ([`xbagent::metrics`]); this module owns the
//! registry, whose one collector reads them at each scrape, and the HTTP server (hyper 1).
//! The server runs on a thread and a single-threaded runtime of its own, so that no client of
//! this port can take time from the clone port or the push loop. What a client can hold is
//! bounded: [`MAX_CONNS`] connections at once (more are closed on accept), one request per
//! connection, [`MAX_HEADER`] bytes of request head, and [`DEADLINE`] for the whole exchange.
//! It must never panic or wait on what a client sends.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use xbagent::metrics::{unix_now, PushMetrics, ServeMetrics};

use crate::exit::Failure;

/// Connections served at once; past it a new one is closed at once. A scraper and two probes
/// need three; the rest is room for a few stray clients.
const MAX_CONNS: usize = 32;
/// The whole exchange, request head to last response byte.
const DEADLINE: Duration = Duration::from_secs(5);
/// Request line and headers; a scraper sends a few hundred bytes.
const MAX_HEADER: usize = 8 << 10;
/// How long the serve accept loop may go without a beat before `/healthz` fails: it beats
/// every 50 ms, and never waits on a peer.
pub const SERVE_STALE: Duration = Duration::from_secs(10);

/// Whose figures are served.
#[derive(Debug, Clone)]
pub enum Watched {
    Serve(Arc<ServeMetrics>),
    /// `stale`: how long the push loop may go without a beat before `/healthz` fails (a round
    /// may wait for a repository write and its retries).
    Push {
        metrics: Arc<PushMetrics>,
        stale: Duration,
    },
}

impl Watched {
    fn alive(&self) -> bool {
        match self {
            Watched::Serve(m) => m.heartbeat.age() < SERVE_STALE,
            Watched::Push { metrics, stale } => metrics.heartbeat.age() < *stale,
        }
    }

    fn ready(&self) -> bool {
        match self {
            Watched::Serve(m) => m.figures().ready,
            Watched::Push { metrics, .. } => metrics.figures().ready,
        }
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge<N>(e: &mut DescriptorEncoder, name: &str, help: &str, v: N) -> fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for Watched {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        match self {
            Watched::Serve(m) => serve_figures(&mut e, m),
            Watched::Push { metrics, .. } => push_figures(&mut e, metrics),
        }?;
        let ready = i64::from(self.ready());
        gauge(&mut e, "xbagent_ready", "1 when /readyz answers 200", ready)
    }
}

/// Counter names are given without `_total`: the encoder appends it.
fn serve_figures(e: &mut DescriptorEncoder, m: &ServeMetrics) -> fmt::Result {
    let f = m.figures();
    counter(
        e,
        "xbagent_clones_served",
        "Clones completed: the source exited 0 and wrote files, the trailer was sent",
        f.served,
    )?;
    counter(e, "xbagent_clones_failed", "Clones that authenticated but did not complete (source failed, defective stream, receiver gone, shutdown)", f.failed)?;
    counter(e, "xbagent_clones_refused", "Peers refused at authentication (wrong or missing token, or an address sitting out its wait)", f.refused)?;
    counter(e, "xbagent_handshakes_failed", "Connections closed before authentication for any other reason (timeout, junk, TLS, eviction, turned away at accept)", f.handshakes_failed)?;
    counter(
        e,
        "xbagent_clone_bytes_sent",
        "Stream bytes sent to receivers, without framing",
        f.bytes_sent,
    )?;
    gauge(
        e,
        "xbagent_last_clone_duration_seconds",
        "Duration of the last clone completed, from its slot to its trailer (0 before the first)",
        f.last_clone_seconds,
    )?;
    gauge(
        e,
        "xbagent_connections_queued",
        "Connections in their handshake or waiting for a slot (--max-conns)",
        f.queued,
    )?;
    gauge(
        e,
        "xbagent_clones_running",
        "Clones streaming now",
        f.running,
    )
}

fn push_figures(e: &mut DescriptorEncoder, m: &PushMetrics) -> fmt::Result {
    let f = m.figures();
    gauge(
        e,
        "xbagent_binlog_last_event_timestamp_seconds",
        "Commit time (unix seconds) of the newest transaction archived (0 before any)",
        f.last_event_time.unwrap_or(0),
    )?;
    gauge(e, "xbagent_binlog_lag_seconds", "Now minus the commit time of the oldest transaction read from the server and not yet archived; 0 when caught up", f.lag_seconds(unix_now()))?;
    counter(
        e,
        "xbagent_binlog_bytes_archived",
        "Bytes of binlog segments stored by this process (sealed size when sealed)",
        f.bytes,
    )?;
    counter(
        e,
        "xbagent_binlog_segments_archived",
        "Binlog segments stored by this process",
        f.segments,
    )
}

struct Exporter {
    watched: Watched,
    registry: Registry,
}

impl Exporter {
    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        match req.uri().path() {
            "/metrics" => {
                let mut text = String::new();
                match prometheus_text::encode(&mut text, &self.registry) {
                    Ok(()) => {
                        let mut r = reply(StatusCode::OK, text);
                        r.headers_mut().insert(
                            CONTENT_TYPE,
                            HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
                        );
                        r
                    }
                    Err(_) => reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "encoding failed\n".into(),
                    ),
                }
            }
            "/healthz" if self.watched.alive() => reply(StatusCode::OK, "ok\n".into()),
            "/healthz" => reply(StatusCode::SERVICE_UNAVAILABLE, "stalled\n".into()),
            "/readyz" if self.watched.ready() => reply(StatusCode::OK, "ready\n".into()),
            "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
            _ => reply(
                StatusCode::NOT_FOUND,
                "not found: /metrics, /healthz, /readyz\n".into(),
            ),
        }
    }
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// Bind `addr` now (an error is the command's), then serve on a thread of its own until the
/// process ends. Returns the bound address.
pub fn start(addr: &str, watched: Watched) -> Result<SocketAddr, Failure> {
    let failed = |source| Failure::MetricsListen {
        addr: addr.to_string(),
        source,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(failed)?;
    listener.set_nonblocking(true).map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(failed)?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(watched.clone()));
    let exporter = Arc::new(Exporter { watched, registry });
    std::thread::Builder::new()
        .name("xbagent-metrics".into())
        .spawn(move || rt.block_on(accept(listener, exporter)))
        .map_err(failed)?;
    tracing::info!("metrics at http://{local}/metrics; probes /healthz and /readyz");
    Ok(local)
}

async fn accept(listener: std::net::TcpListener, exporter: Arc<Exporter>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("metrics listener: {e}; /metrics and the probes are not served");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNS));
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            // Out of descriptors, say: wait rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let exporter = exporter.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let r = exporter.answer(&req);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(DEADLINE)
                .max_header_size(MAX_HEADER)
                .max_headers(64)
                .keep_alive(false)
                .serve_connection(TokioIo::new(sock), svc);
            // Whatever the client does (or does not), the connection is gone after DEADLINE.
            let _ = tokio::time::timeout(DEADLINE, conn).await;
            drop(permit);
        });
    }
}
