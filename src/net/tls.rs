//! TLS client configuration for every APNs connection (HTTP/2, legacy gateway, feedback):
//! Mozilla's roots plus an optional extra CA, an optional client certificate, the ring provider.

use super::apns::auth::ClientIdentity;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("CA file {path} holds no usable certificate")]
    NoCa { path: String },
    #[error("the client certificate or key was refused: {0}")]
    Identity(rustls::Error),
}

/// The process-wide crypto provider: ring, as the gateway build has no C toolchain for aws-lc.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
pub fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = crate::domain::files::read_bounded(path, crate::domain::files::MAX_SMALL_FILE)
        .map_err(|e| TlsError::CaFile { path: path.display().to_string(), reason: e.to_string() })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&data).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::NoCa { path: path.display().to_string() });
    }
    Ok(certs)
}

/// Builds a client config. `alpn` is `["h2"]` for the HTTP/2 API, empty for the legacy ports.
pub fn client_config(
    ca_file: Option<&Path>,
    identity: Option<&ClientIdentity>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = ca_file {
        for cert in read_pem_certs(ca)? {
            roots.add(cert).map_err(|_| TlsError::NoCa { path: ca.display().to_string() })?;
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key()).map_err(TlsError::Identity)?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}
