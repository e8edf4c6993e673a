//! TLS for the `Client` preset, as services inside a company use it: the public web's roots,
//! the platform's trust store, private CAs, mutual TLS, or a whole `rustls::ClientConfig`.
//!
//! The settings are gathered by [`ClientBuilder`](super::ClientBuilder) and turned into one
//! `rustls::ClientConfig` when the client is built, so that a bad certificate is refused at
//! build time with [`ClientBuildError::InvalidTls`](super::ClientBuildError::InvalidTls), not at
//! the first call. rustls runs with the `ring` provider, named explicitly rather than taken from
//! the process default, so that another crate turning on a second provider cannot make the
//! build panic. HTTP/2 and HTTP/1.1 are offered by ALPN (the connector sets it).
//!
//! A handshake that fails (unknown issuer, expired certificate, a name that does not match) is
//! a connect error: the request never left, so the [classifier](crate::classify) calls it
//! [`NotSent`](crate::outcome::Outcome::NotSent). The rustls error is in the error's chain: find
//! it with [`find_source::<rustls::Error>`](crate::error::find_source).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use super::ClientBuildError;

/// What the builder was told about TLS.
#[derive(Debug, Clone)]
pub(super) struct TlsSettings {
    pub(super) webpki_roots: bool,
    pub(super) platform_roots: bool,
    pub(super) extra_roots_pem: Vec<Vec<u8>>,
    /// Certificate chain and private key, PEM.
    pub(super) identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    pub(super) config: Option<Arc<rustls::ClientConfig>>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            webpki_roots: true,
            platform_roots: false,
            extra_roots_pem: Vec::new(),
            identity_pem: None,
            config: None,
        }
    }
}

fn invalid(what: impl std::fmt::Display) -> ClientBuildError {
    ClientBuildError::InvalidTls(what.to_string())
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, ClientBuildError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("{what}: {e}")))?;
    if certificates.is_empty() {
        return Err(invalid(format!("{what}: no certificate in the PEM")));
    }
    Ok(certificates)
}

impl TlsSettings {
    /// The rustls configuration these settings describe.
    pub(super) fn client_config(&self) -> Result<rustls::ClientConfig, ClientBuildError> {
        if let Some(config) = &self.config {
            return Ok((**config).clone());
        }
        let mut roots = RootCertStore::empty();
        if self.webpki_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        if self.platform_roots {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "a certificate of the platform's trust store was skipped");
            }
            // The platform's store holds certificates rustls cannot use; skip those alone.
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "platform trust store loaded");
        }
        for pem in &self.extra_roots_pem {
            for certificate in certificates(pem, "root certificate")? {
                roots
                    .add(certificate)
                    .map_err(|e| invalid(format!("root certificate: {e}")))?;
            }
        }
        if roots.is_empty() {
            return Err(invalid(
                "no trusted roots: every https call would fail; add a root certificate or the \
                 platform's trust store",
            ));
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_root_certificates(roots);
        match &self.identity_pem {
            None => Ok(builder.with_no_client_auth()),
            Some((chain, key)) => {
                let chain = certificates(chain, "client certificate")?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| invalid(format!("client key: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| invalid(format!("client certificate and key: {e}")))
            }
        }
    }
}
