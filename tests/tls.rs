//! The `Client` preset over TLS as services inside a company use it (issue 20): a CA made here
//! with rcgen (nothing checked in that could expire), a rustls server on loopback, and the
//! client trusting the private CA, refusing a wrong CA, an expired certificate and a name that
//! does not match, presenting a client certificate for mutual TLS, and choosing HTTP/2 by ALPN;
//! retries and propagation behave over TLS as over cleartext.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::{extract::Request, routing::get, Router};
use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tower_lifeline::classify::outcome_of_error;
use tower_lifeline::client::rustls;
use tower_lifeline::client::Client;
use tower_lifeline::error::find_source;
use tower_lifeline::outcome::Outcome;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` and its key, PEM; `expired` puts its validity in the past.
    fn issue(&self, names: &[&str], expired: bool) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        (certificate.pem(), key.serialize_pem())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS server on 127.0.0.1 with `certificate`; with `client_ca`, it demands a client
/// certificate of that CA. Answers `/` with the HTTP version, `/flaky` with 503 once and then
/// the `X-Request-Timeout` it was sent.
async fn tls_server(certificate: (String, String), client_ca: Option<&Ca>) -> SocketAddr {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(certificate.0.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(certificate.1.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.issuer.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let flaky = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/",
            get(|req: Request| async move { format!("{:?}", req.version()) }),
        )
        .route(
            "/flaky",
            get(move |req: Request| {
                let n = flaky.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        return Err(StatusCode::SERVICE_UNAVAILABLE);
                    }
                    let timeout = req.headers()["x-request-timeout"]
                        .to_str()
                        .unwrap()
                        .to_owned();
                    Ok(timeout)
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                // A refused handshake is the point of some tests: nothing to serve then.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    addr
}

fn trusting(ca: &Ca) -> tower_lifeline::client::ClientBuilder {
    Client::builder()
        .tls_webpki_roots(false)
        .tls_root_certificates_pem(ca.pem())
}

/// The rustls error inside a failed call, or the test fails.
fn tls_error(err: &tower_lifeline::BoxError) -> &rustls::Error {
    find_source::<rustls::Error>(err.as_ref()).unwrap_or_else(|| panic!("no TLS error in {err:?}"))
}

#[tokio::test]
async fn https_to_a_private_ca_negotiates_http2_by_alpn() {
    let ca = Ca::new("private ca");
    let addr = tls_server(ca.issue(&["localhost", "127.0.0.1"], false), None).await;
    let client = trusting(&ca).build().unwrap();
    let response = client
        .get(format!("https://127.0.0.1:{}/", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "HTTP/2.0");
}

#[tokio::test]
async fn a_server_of_another_ca_is_refused_and_the_request_never_left() {
    let ca = Ca::new("private ca");
    let other = Ca::new("someone else");
    let err = call_refused(&ca, other.issue(&["127.0.0.1"], false)).await;
    assert_eq!(outcome_of_error(err.as_ref()), Outcome::NotSent, "{err:?}");
    assert!(
        matches!(
            tls_error(&err),
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{err:?}"
    );
}

/// The error of a call, trusting `ca`, to a server presenting `certificate`.
async fn call_refused(ca: &Ca, certificate: (String, String)) -> tower_lifeline::BoxError {
    let addr = tls_server(certificate, None).await;
    trusting(ca)
        .build()
        .unwrap()
        .get(format!("https://127.0.0.1:{}/", addr.port()))
        .send()
        .await
        .unwrap_err()
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let ca = Ca::new("private ca");
    let err = call_refused(&ca, ca.issue(&["127.0.0.1"], true)).await;
    assert!(
        matches!(
            tls_error(&err),
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
            )
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let ca = Ca::new("private ca");
    let err = call_refused(&ca, ca.issue(&["inventory.internal"], false)).await;
    assert!(
        matches!(
            tls_error(&err),
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn mutual_tls_is_accepted_with_a_client_certificate_and_refused_without() {
    let ca = Ca::new("private ca");
    let addr = tls_server(ca.issue(&["127.0.0.1"], false), Some(&ca)).await;
    let url = format!("https://127.0.0.1:{}/", addr.port());
    let (chain, key) = ca.issue(&["checkout"], false);
    let with_identity = trusting(&ca)
        .tls_client_identity_pem(chain, key)
        .build()
        .unwrap();
    let response = with_identity.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let without = trusting(&ca).build().unwrap();
    let err = without.get(&url).send().await.unwrap_err();
    // TLS 1.3 reports the server's refusal after the handshake: an alert, not a certificate
    // error of ours; either way the call fails with the cause in its chain.
    let chain = format!("{err:?}");
    assert!(
        chain.contains("CertificateRequired") || chain.contains("HandshakeFailure"),
        "{chain}"
    );
}

#[tokio::test]
async fn retries_and_propagation_behave_over_tls_as_over_cleartext() {
    let ca = Ca::new("private ca");
    let addr = tls_server(ca.issue(&["127.0.0.1"], false), None).await;
    let client = trusting(&ca).build().unwrap();
    let response = client
        .get(format!("https://127.0.0.1:{}/flaky", addr.port()))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .unwrap();
    assert_eq!(response.attempts(), 2);
    let sent: f64 = response.text().await.unwrap().parse().unwrap();
    assert!(sent > 2.0 && sent <= 3.0, "{sent}");
}

#[test]
fn bad_tls_settings_are_refused_when_the_client_is_built() {
    use tower_lifeline::client::ClientBuildError;
    for builder in [
        Client::builder().tls_root_certificates_pem("not a certificate"),
        Client::builder().tls_webpki_roots(false),
        Client::builder().tls_client_identity_pem("no chain", "no key"),
    ] {
        let err = builder.build().unwrap_err();
        assert!(matches!(err, ClientBuildError::InvalidTls(_)), "{err}");
    }
}

/// An HTTPS server in Python's standard library (`ssl`, `http.server`) that demands a client
/// certificate of `ca` and answers with the subject alternative names it verified.
const PYTHON_MTLS_SERVER: &str = r#"
import http.server, ssl, sys, threading
ca, cert, key = sys.argv[1:4]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        peer = self.connection.getpeercert()
        body = repr(peer.get("subjectAltName")).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
context.load_verify_locations(ca)
context.verify_mode = ssl.CERT_REQUIRED
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
# Bounded: the server stops by itself even if the test never closes it.
threading.Timer(30, server.shutdown).start()
server.serve_forever()
"#;

#[tokio::test]
async fn interoperates_with_pythons_ssl_over_mutual_tls() {
    use tokio::io::AsyncBufReadExt;
    let ca = Ca::new("private ca");
    let (server_cert, server_key) = ca.issue(&["127.0.0.1"], false);
    let dir = std::env::temp_dir().join(format!("lifeline-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca_file = write("ca.pem", &ca.pem());
    let cert_file = write("server.pem", &server_cert);
    let key_file = write("server.key", &server_key);
    let mut python = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(PYTHON_MTLS_SERVER)
        .args([&ca_file, &cert_file, &key_file])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 is on every machine of this kind");
    let mut lines = tokio::io::BufReader::new(python.stdout.take().unwrap()).lines();
    let port: u16 = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("python's server starts")
        .unwrap()
        .expect("it prints its port")
        .parse()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/");

    let (chain, key) = ca.issue(&["checkout"], false);
    let client = trusting(&ca)
        .tls_client_identity_pem(chain, key)
        .build()
        .unwrap();
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Python verified our certificate and saw our name in it.
    assert_eq!(response.text().await.unwrap(), "(('DNS', 'checkout'),)");

    // Without a certificate Python's server refuses the handshake.
    let err = trusting(&ca).build().unwrap().get(&url).send().await;
    assert!(err.is_err(), "{err:?}");
    python.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

mod server_preset {
    //! The `Server` preset over TLS: the same stack and connection limits, HTTP/2 and HTTP/1.1
    //! by ALPN, mutual TLS with the caller's identity in the handler, checked with curl too.

    use super::*;
    use axum::Extension;
    use prometheus::Registry;
    use tower_lifeline::server::{PeerCertificates, Server, ServerTls};
    use tower_lifeline::shutdown::Shutdown;

    /// Serves `/version` and `/whoami` through the `Server` preset over TLS; returns the address
    /// and the server's shutdown handle (dropping it does not stop the server; the test's runtime
    /// does).
    async fn serve(tls: ServerTls, header_read_timeout: Duration) -> (SocketAddr, Shutdown) {
        let app = Router::new()
            .route(
                "/version",
                get(|req: Request| async move { format!("{:?}", req.version()) }),
            )
            .route(
                "/whoami",
                get(|peer: Option<Extension<PeerCertificates>>| async move {
                    match peer {
                        Some(Extension(peer)) => peer.dns_names().join(","),
                        None => "anonymous".to_owned(),
                    }
                }),
            );
        let server = Server::builder()
            .registry(Registry::new())
            .header_read_timeout(header_read_timeout)
            .tls(tls)
            .build(app)
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = server.shutdown().clone();
        tokio::spawn(server.serve(listener));
        (addr, shutdown)
    }

    #[tokio::test]
    async fn the_server_preset_speaks_http2_over_tls_with_the_whole_stack() {
        let ca = Ca::new("private ca");
        let (cert, key) = ca.issue(&["127.0.0.1"], false);
        let (addr, _server) = serve(
            ServerTls::builder(cert, key).build().unwrap(),
            Duration::from_secs(5),
        )
        .await;
        let client = trusting(&ca).build().unwrap();
        let url = format!("https://127.0.0.1:{}", addr.port());
        let response = client.get(format!("{url}/version")).send().await.unwrap();
        assert_eq!(response.text().await.unwrap(), "HTTP/2.0");
        // The server stack is there: /healthz and /metrics answer over TLS too.
        let health = client.get(format!("{url}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        let metrics = client.get(format!("{url}/metrics")).send().await.unwrap();
        assert!(metrics
            .text()
            .await
            .unwrap()
            .contains("http_server_request_duration_seconds"));
    }

    #[tokio::test]
    async fn mutual_tls_gives_the_handler_the_callers_verified_name() {
        let ca = Ca::new("private ca");
        let (cert, key) = ca.issue(&["127.0.0.1"], false);
        let tls = ServerTls::builder(cert, key)
            .client_ca_pem(ca.pem())
            .build()
            .unwrap();
        let (addr, _server) = serve(tls, Duration::from_secs(5)).await;
        let url = format!("https://127.0.0.1:{}/whoami", addr.port());
        let (chain, key) = ca.issue(&["checkout.internal"], false);
        let client = trusting(&ca)
            .tls_client_identity_pem(chain, key)
            .build()
            .unwrap();
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.text().await.unwrap(), "checkout.internal");
        // No certificate, no service.
        assert!(trusting(&ca)
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await
            .is_err());
        // A certificate of another CA, neither.
        let stranger = Ca::new("stranger");
        let (chain, key) = stranger.issue(&["checkout.internal"], false);
        let impostor = trusting(&ca)
            .tls_client_identity_pem(chain, key)
            .build()
            .unwrap();
        assert!(impostor.get(&url).send().await.is_err());
    }

    #[tokio::test]
    async fn a_connection_that_never_completes_its_handshake_is_closed_at_the_header_timeout() {
        use tokio::io::AsyncReadExt;
        let ca = Ca::new("private ca");
        let (cert, key) = ca.issue(&["127.0.0.1"], false);
        let (addr, _server) = serve(
            ServerTls::builder(cert, key).build().unwrap(),
            Duration::from_millis(300),
        )
        .await;
        // Connects and says nothing: no ClientHello.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = tokio::time::Instant::now();
        let mut buffer = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buffer))
            .await
            .expect("the server closes it long before 5 s");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250), "{took:?}");
    }

    #[tokio::test]
    async fn curl_speaks_to_the_server_preset_over_mutual_tls_and_http1() {
        let ca = Ca::new("private ca");
        let (cert, key) = ca.issue(&["127.0.0.1"], false);
        let tls = ServerTls::builder(cert, key)
            .client_ca_pem(ca.pem())
            .build()
            .unwrap();
        let (addr, _server) = serve(tls, Duration::from_secs(5)).await;
        let dir = std::env::temp_dir().join(format!("lifeline-curl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (chain, key) = ca.issue(&["curl.internal"], false);
        for (name, text) in [
            ("ca.pem", ca.pem()),
            ("client.pem", chain),
            ("client.key", key),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let curl = |path: &str, http1: bool| {
            let mut command = tokio::process::Command::new("curl");
            command
                .args(["--silent", "--show-error", "--max-time", "10"])
                .arg("--cacert")
                .arg(dir.join("ca.pem"))
                .arg("--cert")
                .arg(dir.join("client.pem"))
                .arg("--key")
                .arg(dir.join("client.key"));
            if http1 {
                command.arg("--http1.1");
            }
            command.arg(format!("https://127.0.0.1:{}{path}", addr.port()));
            command.output()
        };
        let out = curl("/whoami", true)
            .await
            .expect("curl is on every machine of this kind");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "curl.internal");
        let out = curl("/version", true).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "HTTP/1.1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test]
async fn the_breaker_opens_on_a_destination_whose_handshakes_fail() {
    use tower_lifeline::circuit_breaker::{CircuitBreakerSettings, CircuitState};
    let ca = Ca::new("private ca");
    let stranger = Ca::new("stranger");
    let addr = tls_server(stranger.issue(&["127.0.0.1"], false), None).await;
    let client = trusting(&ca)
        .circuit_breaker(Some(
            CircuitBreakerSettings::builder()
                .consecutive_failures(3)
                .break_duration(Duration::from_secs(60))
                .build()
                .unwrap(),
        ))
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{}/", addr.port());
    // Each failed handshake never left: resent up to three sends, each counted by the breaker.
    let first = client.get(&url).send().await.unwrap_err();
    assert!(
        matches!(
            outcome_of_error(first.as_ref()),
            Outcome::NotSent | Outcome::Refused
        ),
        "{first:?}"
    );
    let scope = format!("https://127.0.0.1:{}", addr.port());
    assert_eq!(
        client.breakers().unwrap().state(&scope),
        Some(CircuitState::Open)
    );
    let refused = client.get(&url).send().await.unwrap_err();
    assert_eq!(
        outcome_of_error(refused.as_ref()),
        Outcome::Refused,
        "{refused:?}"
    );
}
