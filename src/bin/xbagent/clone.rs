//! The clone commands: serve on the donor, receive in the new pod.

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
use crate::{shutdown_flag, Display};

fn read_token(path: Option<&Path>, insecure: bool) -> Result<Option<Token>, Failure> {
    match path {
        Some(p) => {
            let t = std::fs::read(p).map_err(|source| TokenError::Read {
                path: p.to_path_buf(),
                source,
            })?;
            if t.trim_ascii().is_empty() {
                return Err(TokenError::Empty {
                    path: p.to_path_buf(),
                }
                .into());
            }
            Ok(Some(Token::new(&t)))
        }
        None if insecure => Ok(None),
        None => Err(TokenError::Missing.into()),
    }
}

pub fn serve(a: ServeArgs) -> Result<i32, Failure> {
    let token = if a.raw {
        None
    } else {
        read_token(a.token_file.as_deref(), a.insecure)?
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
    };
    let stop = shutdown_flag()?;
    xbagent::clone::serve::serve(opts, stop.clone())?;
    // serve returns only once a signal asked it to stop.
    if stop.load(std::sync::atomic::Ordering::SeqCst) {
        eprintln!("xbagent: serve stopped by a signal; clones in flight were aborted and their receivers told");
        return Ok(exit::INTERRUPTED);
    }
    Ok(exit::OK)
}

pub fn receive(a: ReceiveArgs, d: Display) -> Result<i32, Failure> {
    // A restarted initContainer must succeed at once, even if its token is gone by now.
    if a.dir.join(xbagent::clone::COMPLETE_MARKER).exists() {
        eprintln!(
            "xbagent: {} already holds a complete clone; nothing to do",
            a.dir.display()
        );
        return Ok(exit::OK);
    }
    let token = if a.raw {
        None
    } else {
        read_token(a.token_file.as_deref(), a.insecure)?
    };
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
    };
    let progress = Progress::new("receive", None, d.show, d.verbose);
    let res = xbagent::clone::receive::receive(&opts, &progress);
    progress.finish();
    match res? {
        Received::AlreadyComplete => eprintln!(
            "xbagent: {} already holds a complete clone; nothing to do",
            opts.dir.display()
        ),
        Received::Complete(t) => eprintln!(
            "xbagent: clone complete: {} files, {} chunks, {} bytes, digest {}",
            t.files,
            t.chunks,
            t.bytes,
            blake3::Hash::from(t.digest).to_hex()
        ),
        Received::RawUnproven { files, bytes } => eprintln!(
            "xbagent: raw stream received ({files} files, {bytes} bytes); raw mode cannot prove the stream was whole, so no completion marker was written"
        ),
    }
    Ok(exit::OK)
}

/// Host part of HOST:PORT (brackets of an IPv6 literal removed).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    host.trim_start_matches('[').trim_end_matches(']')
}
