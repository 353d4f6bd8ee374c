//! TLS set-up (rustls with the ring provider): server and client configurations from PEM files,
//! with certificate verification always on and optional client certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::CloneError;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: String) -> CloneError {
    CloneError::Tls(what)
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CloneError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            tls_err(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(tls_err(format!("no certificate in {}", path.display())));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, CloneError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        tls_err(format!(
            "cannot read a private key from {}: {e}",
            path.display()
        ))
    })
}

fn roots(path: &Path) -> Result<RootCertStore, CloneError> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store
            .add(c)
            .map_err(|e| tls_err(format!("bad CA certificate in {}: {e}", path.display())))?;
    }
    Ok(store)
}

/// TLS settings of `serve`.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require client certificates signed by this CA.
    pub client_ca: Option<PathBuf>,
}

pub fn server_config(t: &ServerTls) -> Result<Arc<ServerConfig>, CloneError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?;
    let builder = match &t.client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|e| tls_err(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let cfg = builder
        .with_single_cert(certs(&t.cert)?, key(&t.key)?)
        .map_err(|e| tls_err(format!("certificate and key do not fit: {e}")))?;
    Ok(Arc::new(cfg))
}

/// TLS settings of `receive`.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// CA that signed the donor's certificate.
    pub ca: PathBuf,
    /// Client certificate and key, for donors that require one.
    pub cert: Option<(PathBuf, PathBuf)>,
}

pub fn client_config(t: &ClientTls) -> Result<Arc<ClientConfig>, CloneError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_root_certificates(roots(&t.ca)?);
    let cfg = match &t.cert {
        Some((c, k)) => builder
            .with_client_auth_cert(certs(c)?, key(k)?)
            .map_err(|e| tls_err(format!("client certificate and key do not fit: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

pub fn server_name(name: &str) -> Result<ServerName<'static>, CloneError> {
    ServerName::try_from(name.to_string())
        .map_err(|e| tls_err(format!("'{name}' is not a valid TLS server name: {e}")))
}
