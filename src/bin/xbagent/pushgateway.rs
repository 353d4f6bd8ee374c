//! `--pushgateway URL`: the summary's figures, pushed to a Prometheus Pushgateway in the text
//! exposition format (README, "Summary line and Pushgateway", names every metric).
//!
//! The group is `job=xbagent_upload` (or `xbagent_restore`), plus `instance=NAME` if given. A
//! good run replaces the whole group (PUT); a failed run only replaces the metrics it sends
//! (POST), so that `xbagent_backup_last_success_timestamp_seconds` keeps the last success for
//! an alert on "no good backup for a day".
//!
//! One plain HTTP/1.1 request (hyper, over a tokio runtime of its own), bounded by
//! [`TIMEOUT`] in all. A failure is the caller's warning, never the job's failure.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Uri};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::summary::Summary;

/// The whole push, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("not a URL: {0}")]
    Url(String),
    #[error("only http:// is supported (got {0}://); use a plain-HTTP address inside the cluster")]
    Scheme(String),
    #[error("--pushgateway-instance may hold only letters, digits, '.', '_' and '-'")]
    Instance,
    #[error("no answer within {}s", TIMEOUT.as_secs())]
    Timeout,
    #[error("cannot start the HTTP client: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("cannot build the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("the Pushgateway answered {status}: {body}")]
    Status { status: u16, body: String },
}

/// Where and how to push.
struct Target {
    host: String,
    port: u16,
    authority: String,
    path: String,
}

fn target(url: &str, job: &str, instance: Option<&str>) -> Result<Target, PushError> {
    let uri: Uri = url.parse().map_err(|_| PushError::Url(url.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(PushError::Scheme(other.to_string())),
        None => return Err(PushError::Url(url.to_string())),
    }
    let auth = uri
        .authority()
        .ok_or_else(|| PushError::Url(url.to_string()))?;
    let mut path = format!(
        "{}/metrics/job/xbagent_{job}",
        uri.path().trim_end_matches('/')
    );
    if let Some(name) = instance {
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if name.is_empty() || !name.chars().all(plain) {
            return Err(PushError::Instance);
        }
        path.push_str("/instance/");
        path.push_str(name);
    }
    Ok(Target {
        host: auth.host().trim_matches(['[', ']']).to_string(),
        port: auth.port_u16().unwrap_or(80),
        authority: auth.as_str().to_string(),
        path,
    })
}

/// `--pushgateway URL`, checked before the job starts (a wrong URL is a usage error, not a
/// warning an hour later).
pub fn check_url(url: &str) -> Result<String, String> {
    target(url, "upload", None)
        .map(|_| url.to_string())
        .map_err(|e| e.to_string())
}

/// `--pushgateway-instance NAME`, checked before the job starts.
pub fn check_instance(name: &str) -> Result<String, String> {
    target("http://localhost", "upload", Some(name))
        .map(|_| name.to_string())
        .map_err(|e| e.to_string())
}

/// A gauge's samples: label values (none, or one label `key`) and values.
type Samples<'a> = (Option<&'a str>, Vec<(String, f64)>);

/// The figures in the text exposition format (version 0.0.4), encoded by prometheus-client
/// (the crate `--metrics-listen` uses), which also escapes label values and help.
pub fn exposition(s: &Summary) -> String {
    let ended = s
        .ended
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let one = |v: f64| -> Samples { (None, vec![(String::new(), v)]) };
    let mut bytes = vec![("stream".to_string(), s.bytes as f64)];
    if let Some(stored) = s.stored {
        bytes.push(("stored".to_string(), stored as f64));
    }
    let mut gauges: Vec<(&str, &str, Samples)> = vec![
        (
            "xbagent_backup_result",
            "1 if the last run succeeded, 0 if it failed",
            one(if s.ok() { 1.0 } else { 0.0 }),
        ),
        (
            "xbagent_backup_exit_code",
            "Exit code of the last run",
            one(f64::from(s.exit)),
        ),
        (
            "xbagent_backup_bytes",
            "Bytes of the last run: stream bytes read or restored, bytes stored",
            (Some("kind"), bytes),
        ),
        (
            "xbagent_backup_duration_seconds",
            "Duration of the last run",
            one(s.duration.as_secs_f64()),
        ),
        (
            "xbagent_backup_rate_bytes_per_second",
            "Average stream bytes per second of the last run",
            one(s.rate()),
        ),
    ];
    if let Some(r) = s.rate_limit {
        gauges.push((
            "xbagent_backup_rate_limit_bytes_per_second",
            "The --rate-limit of the last run",
            one(r.bytes_per_second() as f64),
        ));
    }
    gauges.push((
        "xbagent_backup_last_run_timestamp_seconds",
        "When the last run ended (Unix time)",
        one(ended),
    ));
    if s.ok() {
        gauges.push((
            "xbagent_backup_last_success_timestamp_seconds",
            "When the last good run ended (Unix time)",
            one(ended),
        ));
    }
    if let Some(id) = &s.id {
        gauges.push((
            "xbagent_backup_info",
            "The backup of the last run, as the label id",
            (Some("id"), vec![(id.clone(), 1.0)]),
        ));
    }
    encode(gauges)
}

/// The gauges through a prometheus-client registry and its 0.0.4 text encoder.
fn encode(gauges: Vec<(&str, &str, Samples)>) -> String {
    let mut registry = Registry::default();
    for (name, help, (key, samples)) in gauges {
        match key {
            None => {
                let g = Gauge::<f64, AtomicU64>::default();
                g.set(samples.first().map_or(0.0, |(_, v)| *v));
                registry.register(name, help, g);
            }
            Some(key) => {
                let family = Family::<Vec<(String, String)>, Gauge<f64, AtomicU64>>::default();
                for (value, v) in samples {
                    family.get_or_create(&vec![(key.to_string(), value)]).set(v);
                }
                registry.register(name, help, family);
            }
        }
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &registry);
    out
}

/// Push `s` to the Pushgateway at `url`, within [`TIMEOUT`].
pub fn push(url: &str, instance: Option<&str>, s: &Summary) -> Result<(), PushError> {
    let t = target(url, s.job.name(), instance)?;
    // PUT replaces the group; POST (a failure) keeps the metrics it does not send.
    let method = if s.ok() { Method::PUT } else { Method::POST };
    let body = exposition(s);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PushError::Runtime)?;
    rt.block_on(async {
        tokio::time::timeout(TIMEOUT, send(&t, method, body))
            .await
            .unwrap_or(Err(PushError::Timeout))
    })
}

async fn send(t: &Target, method: Method, body: String) -> Result<(), PushError> {
    let sock = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(PushError::Connect)?;
    let io = hyper_util::rt::TokioIo::new(sock);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    // The connection is driven by its own task until the answer is read.
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(t.path.as_str())
        .header(hyper::header::HOST, t.authority.as_str())
        .header(hyper::header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = resp.into_body().collect().await?.to_bytes();
    let mut body = String::from_utf8_lossy(&text).trim().to_string();
    body.truncate(body.floor_char_boundary(300));
    Err(PushError::Status {
        status: status.as_u16(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_path_names_the_job_and_the_instance() {
        let t = target("http://pg:9091/", "upload", Some("db-1")).expect("target");
        assert_eq!(t.path, "/metrics/job/xbagent_upload/instance/db-1");
        assert_eq!((t.host.as_str(), t.port), ("pg", 9091));
        let t = target("http://127.0.0.1:9091/prefix", "restore", None).expect("target");
        assert_eq!(t.path, "/prefix/metrics/job/xbagent_restore");
    }

    #[test]
    fn https_and_odd_instance_names_are_refused() {
        assert!(matches!(
            target("https://pg:9091", "upload", None),
            Err(PushError::Scheme(_))
        ));
        assert!(matches!(
            target("http://pg:9091", "upload", Some("a/b")),
            Err(PushError::Instance)
        ));
    }

    #[test]
    fn label_values_are_escaped() {
        let s = Summary {
            job: crate::summary::Job::Upload,
            id: Some("a\"b\\c\nd".into()),
            bytes: 10,
            stored: Some(4),
            duration: Duration::from_secs(2),
            exit: 0,
            rate_limit: None,
            ended: UNIX_EPOCH,
        };
        let text = exposition(&s);
        assert!(text.contains("{id=\"a\\\"b\\\\c\\nd\"}"), "{text}");
        assert!(
            text.contains("xbagent_backup_bytes{kind=\"stored\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("xbagent_backup_last_success_timestamp_seconds 0"),
            "{text}"
        );
    }
}
