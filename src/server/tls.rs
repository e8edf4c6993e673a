//! TLS for the `Server` preset: a certificate chain and key, optionally a client CA for mutual
//! TLS, HTTP/2 and HTTP/1.1 by ALPN, on the same connections (timeouts, cap, drain) as
//! cleartext.
//!
//! The handshake counts against the header-read timeout (a caller that stalls it holds a
//! connection like one that stalls its request head), and the drain or the cap end a connection
//! still in its handshake. With client certificates, each request carries the verified chain as
//! a [`PeerCertificates`] extension, so a handler can tell who called.
//!
//! rustls runs with the `ring` provider, named rather than taken from the process default.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS settings of a `Server`: see [`ServerBuilder::tls`](super::ServerBuilder::tls).
#[derive(Clone)]
pub struct ServerTls {
    pub(super) config: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("alpn", &self.config.alpn_protocols)
            .finish_non_exhaustive()
    }
}

/// A TLS setting the server cannot use: a PEM with no certificate, a key that does not fit it,
/// a client CA that is not a CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidServerTls(String);

impl fmt::Display for InvalidServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid server TLS setting: {}", self.0)
    }
}

impl std::error::Error for InvalidServerTls {}

fn invalid(what: impl fmt::Display) -> InvalidServerTls {
    InvalidServerTls(what.to_string())
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, InvalidServerTls> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("{what}: {e}")))?;
    if certificates.is_empty() {
        return Err(invalid(format!("{what}: no certificate in the PEM")));
    }
    Ok(certificates)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The protocols offered by ALPN: HTTP/2 first, HTTP/1.1 for the rest.
fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

impl ServerTls {
    /// Serves `certificate_chain` (PEM, the server's certificate first) with `private_key`
    /// (PEM: PKCS#8, PKCS#1 or SEC1).
    pub fn builder(
        certificate_chain: impl AsRef<[u8]>,
        private_key: impl AsRef<[u8]>,
    ) -> ServerTlsBuilder {
        ServerTlsBuilder {
            chain: certificate_chain.as_ref().to_vec(),
            key: private_key.as_ref().to_vec(),
            client_ca: None,
            client_certificate_optional: false,
        }
    }

    /// A whole rustls configuration (a custom client verifier, SPIFFE, session tickets). Its ALPN
    /// protocols are kept if it has any, else `h2` and `http/1.1` are offered.
    pub fn from_config(mut config: rustls::ServerConfig) -> Self {
        if config.alpn_protocols.is_empty() {
            config.alpn_protocols = alpn();
        }
        ServerTls {
            config: Arc::new(config),
        }
    }
}

/// Builds a [`ServerTls`]; see [`ServerTls::builder`].
#[derive(Debug, Clone)]
pub struct ServerTlsBuilder {
    chain: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
    client_certificate_optional: bool,
}

impl ServerTlsBuilder {
    /// Mutual TLS: callers must present a certificate issued by a CA in `pem`, or the handshake
    /// fails.
    pub fn client_ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.client_ca = Some(pem.as_ref().to_vec());
        self
    }

    /// With [`client_ca_pem`](Self::client_ca_pem): a caller without a certificate is let in
    /// (with no [`PeerCertificates`]); one with a certificate must still present a valid one.
    pub fn client_certificate_optional(mut self, optional: bool) -> Self {
        self.client_certificate_optional = optional;
        self
    }

    /// The settings, or what is wrong with them.
    pub fn build(self) -> Result<ServerTls, InvalidServerTls> {
        let chain = certificates(&self.chain, "certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(&self.key)
            .map_err(|e| invalid(format!("private key: {e}")))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(invalid)?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in certificates(pem, "client CA")? {
                    roots
                        .add(certificate)
                        .map_err(|e| invalid(format!("client CA: {e}")))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                );
                let verifier = if self.client_certificate_optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|e| invalid(format!("client CA: {e}")))?,
                )
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| invalid(format!("certificate and key: {e}")))?;
        config.alpn_protocols = alpn();
        Ok(ServerTls {
            config: Arc::new(config),
        })
    }
}

/// The certificate chain a caller presented and the server verified (mutual TLS), in each
/// request's extensions; absent on cleartext connections and for callers without one.
///
/// ```no_run
/// use axum::{routing::get, Extension};
/// use tower_lifeline::server::PeerCertificates;
///
/// let app: axum::Router = axum::Router::new().route(
///     "/whoami",
///     get(|peer: Option<Extension<PeerCertificates>>| async move {
///         peer.map(|Extension(peer)| peer.dns_names().join(",")).unwrap_or_default()
///     }),
/// );
/// ```
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub(super) Arc<[CertificateDer<'static>]>);

impl PeerCertificates {
    /// The chain, the caller's own certificate first (DER).
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.0
    }

    /// The DNS names in the caller's certificate (its subject alternative names), the usual way
    /// a service names itself in a company's PKI.
    pub fn dns_names(&self) -> Vec<String> {
        let Some(leaf) = self.0.first() else {
            return Vec::new();
        };
        match webpki::EndEntityCert::try_from(leaf) {
            Ok(certificate) => certificate.valid_dns_names().map(str::to_owned).collect(),
            Err(_) => Vec::new(),
        }
    }
}
