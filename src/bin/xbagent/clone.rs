//! The clone commands: serve on the donor, receive in the new pod.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::exit;
use crate::exit::{Failure, TokenError};
use xbagent::clone::gate::HandshakeLimits;
use xbagent::clone::protocol::Token;
use xbagent::clone::receive::{ReceiveOptions, Received};
use xbagent::clone::serve::ServeOptions;
use xbagent::clone::tls;
use xbagent::progress::Progress;
use xbagent::stream::source::Source;

use crate::cli::{default_writers, ReceiveArgs, ServeArgs};
use crate::metrics_http::{self, Watched};
use crate::signals::Stop;
use crate::{say, shutdown_flag, Display};

/// Most bytes a token file may hold: a token is a line, so anything larger is a mistake (a
/// device such as /dev/zero, a wrong path), refused before it is read whole.
const TOKEN_CAP: u64 = 4096;
/// Fewest token bytes (after trimming whitespace) accepted without `--allow-weak-token`: 32
/// random characters are far beyond offline guessing; a short or chosen phrase is not.
const TOKEN_MIN: usize = 32;

/// The token, or `None` for `--insecure` without a token file.
///
/// The file is refused (unless `allow_weak`) when group or others may read it, or when it holds
/// fewer than [`TOKEN_MIN`] bytes. The mode is that of the file opened, so a symlink (a mounted
/// Kubernetes Secret is `..data/token` behind one) is judged by the file it leads to.
fn read_token(
    path: Option<&Path>,
    insecure: bool,
    allow_weak: bool,
) -> Result<Option<Token>, Failure> {
    let Some(p) = path else {
        return if insecure {
            Ok(None)
        } else {
            Err(TokenError::Missing.into())
        };
    };
    let t = read_token_file(p, allow_weak)?;
    Ok(Some(Token::new(&t)))
}

/// The token file's bytes, checked as [`read_token`] says.
fn read_token_file(p: &Path, allow_weak: bool) -> Result<Vec<u8>, TokenError> {
    let path = || p.to_path_buf();
    let read_err = |source| TokenError::Read {
        path: path(),
        source,
    };
    let f = std::fs::File::open(p).map_err(read_err)?;
    let meta = f.metadata().map_err(read_err)?;
    // Only a regular file's mode says who else can read it; a pipe (`<(...)`) has no readers
    // but us.
    let mode = meta.permissions().mode() & 0o7777;
    if meta.is_file() && mode & 0o077 != 0 && !allow_weak {
        return Err(TokenError::Exposed { path: path(), mode });
    }
    let mut t = Vec::new();
    f.take(TOKEN_CAP + 1)
        .read_to_end(&mut t)
        .map_err(read_err)?;
    if t.len() as u64 > TOKEN_CAP {
        return Err(TokenError::TooLarge {
            path: path(),
            cap: TOKEN_CAP,
        });
    }
    let len = t.trim_ascii().len();
    if len == 0 {
        return Err(TokenError::Empty { path: path() });
    }
    if len < TOKEN_MIN && !allow_weak {
        return Err(TokenError::Short {
            path: path(),
            len,
            min: TOKEN_MIN,
        });
    }
    Ok(t)
}

/// `xbagent token new`: a fresh 256-bit token, as 64 hex digits and a newline, on standard
/// output. When standard output is a regular file (`> FILE`), its mode is set to 0600 before
/// the token is written, so the file never holds the token readable by others.
pub fn token_new() -> Result<i32, Failure> {
    let mut raw = [0u8; 32];
    let mut filled = 0;
    while filled < raw.len() {
        let n = rustix::rand::getrandom(&mut raw[filled..], rustix::rand::GetRandomFlags::empty())
            .map_err(|e| TokenError::Write(e.into()))?;
        filled += n;
    }
    let mut line = String::with_capacity(65);
    for b in raw {
        line.push_str(&format!("{b:02x}"));
    }
    line.push('\n');
    let stdout = std::io::stdout();
    let fd = stdout.as_fd();
    let is_file = rustix::fs::fstat(fd)
        .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file())
        .map_err(|e| TokenError::Write(e.into()))?;
    if is_file {
        rustix::fs::fchmod(fd, rustix::fs::Mode::from_raw_mode(0o600))
            .map_err(|e| TokenError::Write(e.into()))?;
    }
    let mut out = stdout.lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .map_err(TokenError::Write)?;
    Ok(exit::OK)
}

pub fn serve(a: ServeArgs) -> Result<i32, Failure> {
    let token = if a.raw {
        None
    } else {
        read_token(a.token_file.as_deref(), a.insecure, a.allow_weak_token)?
    };
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(tls::server_config(&tls::ServerTls {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: a.tls_client_ca.clone(),
        })?),
        _ => None,
    };
    let source = match (a.exec, a.dir) {
        (Some(cmd), _) => Source::Exec(cmd),
        (None, Some(d)) => Source::Dir(d),
        (None, None) => return Ok(exit::USAGE),
    };
    let opts = ServeOptions {
        listen: a.listen,
        source,
        max_conns: a.max_conns.max(1),
        token,
        tls,
        raw: a.raw,
        heartbeat: a.heartbeat.max(std::time::Duration::from_millis(100)),
        parallel: a.parallel,
        handshakes: HandshakeLimits {
            in_flight: a.max_handshakes.max(1),
            per_address: a.max_handshakes_per_address.max(1),
            deadline: a
                .handshake_timeout
                .max(std::time::Duration::from_millis(100)),
        },
        rate_limit: a.rate_limit,
        metrics: Default::default(),
    };
    if let Some(r) = opts.rate_limit {
        tracing::info!("rate limit: {} bytes/s per clone", r.bytes_per_second());
    }
    let stop = shutdown_flag()?;
    if let Some(addr) = &a.metrics_listen {
        metrics_http::start(addr, Watched::Serve(opts.metrics.clone()))?;
    }
    xbagent::clone::serve::serve(opts, stop.clone())?;
    // serve returns only once a signal asked it to stop.
    if stop.load(std::sync::atomic::Ordering::SeqCst) {
        say(
            "WARN",
            "serve stopped by a signal; clones in flight were aborted and their receivers told",
        );
        return Ok(exit::INTERRUPTED);
    }
    Ok(exit::OK)
}

pub fn receive(a: ReceiveArgs, d: Display) -> Result<i32, Failure> {
    // A restarted initContainer must succeed at once, even if its token is gone by now.
    if a.dir.join(xbagent::clone::COMPLETE_MARKER).exists() {
        say(
            "INFO",
            &format!(
                "{} already holds a complete clone; nothing to do",
                a.dir.display()
            ),
        );
        return Ok(exit::OK);
    }
    let _span = tracing::info_span!("receive", from = %a.from).entered();
    let token = if a.raw {
        None
    } else {
        read_token(a.token_file.as_deref(), a.insecure, a.allow_weak_token)?
    };
    if token.is_none() && !a.raw {
        tracing::warn!(
            "receiving from {} WITHOUT authentication (--insecure): whoever answers at that address can fill {} with data of its choosing",
            a.from,
            a.dir.display()
        );
    }
    let stop = Stop::install(format!(
        "no completion marker was written; a partial clone in {} stays marked in progress ({}) and the next receive clears it",
        a.dir.display(),
        xbagent::clone::PARTIAL_MARKER
    ))?;
    let tls = match &a.tls_ca {
        Some(ca) => {
            let host = a
                .tls_server_name
                .clone()
                .unwrap_or_else(|| host_of(&a.from).to_string());
            let cfg = tls::client_config(&tls::ClientTls {
                ca: ca.clone(),
                cert: a.tls_cert.clone().zip(a.tls_key.clone()),
            })?;
            Some((cfg, tls::server_name(&host)?))
        }
        None => None,
    };
    let opts = ReceiveOptions {
        from: a.from,
        dir: a.dir,
        token,
        tls,
        retry_for: a.retry_for,
        stall_timeout: a.stall_timeout,
        keep_partial: a.keep_partial,
        raw: a.raw,
        parallel: a.parallel.unwrap_or_else(default_writers).max(1),
        buffered: a.buffered,
        allow_empty: a.allow_empty,
    };
    let progress = Progress::new("receive", None, d.show, d.verbose);
    let res = xbagent::clone::receive::receive(&opts, &progress, &stop.flag());
    progress.finish();
    match stop.settle(res)? {
        Received::Interrupted => Err(stop.interrupted()),
        r => {
            report(r, &opts.dir);
            Ok(exit::OK)
        }
    }
}

/// The receive's last word.
fn report(r: Received, dir: &Path) {
    match r {
        Received::Interrupted => {}
        Received::AlreadyComplete => say(
            "INFO",
            &format!(
                "{} already holds a complete clone; nothing to do",
                dir.display()
            ),
        ),
        Received::Complete(t) => say(
            "INFO",
            &format!(
                "clone complete: {} files, {} chunks, {} bytes, digest {}",
                t.files,
                t.chunks,
                t.bytes,
                blake3::Hash::from(t.digest).to_hex()
            ),
        ),
        Received::RawUnproven { files, bytes } => say(
            "WARN",
            &format!("raw stream received ({files} files, {bytes} bytes); raw mode cannot prove the stream was whole, so no completion marker was written"),
        ),
    }
}

/// Host part of HOST:PORT (brackets of an IPv6 literal removed).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    host.trim_start_matches('[').trim_end_matches(']')
}
