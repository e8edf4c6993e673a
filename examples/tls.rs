//! TLS as services inside a company use it: a private CA made here, the `Server` preset serving
//! over mutual TLS, and the `Client` preset trusting that CA and presenting its own certificate.
//! Prints what each side saw, and checks it.
//!
//! ```sh
//! cargo run --example tls
//! ```

use std::time::Duration;

use axum::{extract::Request, routing::get, Extension, Router};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tower_lifeline::client::Client;
use tower_lifeline::server::{PeerCertificates, Server, ServerTls};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A certificate for `names` signed by `ca`, and its key, both PEM.
fn issue(ca: &CertifiedIssuer<'_, KeyPair>, names: &[&str]) -> Result<(String, String), Error> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let key = KeyPair::generate()?;
    let certificate = CertificateParams::new(names)?.signed_by(&key, ca)?;
    Ok((certificate.pem(), key.serialize_pem()))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // The company's CA, made for this run (nothing on disk, nothing to expire).
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let (server_cert, server_key) = issue(&ca, &["inventory.internal", "127.0.0.1"])?;
    let (client_cert, client_key) = issue(&ca, &["checkout.internal"])?;

    // The server: the whole server stack, over TLS, demanding a certificate of the CA.
    let app = Router::new().route(
        "/stock",
        get(
            |peer: Option<Extension<PeerCertificates>>, req: Request| async move {
                let caller = peer.map_or_else(
                    || "nobody".to_owned(),
                    |Extension(peer)| peer.dns_names().join(","),
                );
                println!(
                    "server: {:?} request from {caller}, deadline {:?}",
                    req.version(),
                    req.headers().get("x-request-timeout")
                );
                format!("42 in stock, for {caller}")
            },
        ),
    );
    let tls = ServerTls::builder(&server_cert, &server_key)
        .client_ca_pem(ca.pem())
        .build()?;
    let server = Server::builder().tls(tls).build(app)?;
    let shutdown = server.shutdown().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving = tokio::spawn(server.serve(listener));

    // The client: the whole client stack, trusting only the company's CA, with its identity.
    let client = Client::builder()
        .tls_webpki_roots(false)
        .tls_root_certificates_pem(ca.pem())
        .tls_client_identity_pem(&client_cert, &client_key)
        .service_name("checkout")
        .build()?;
    let url = format!("https://127.0.0.1:{}/stock", addr.port());
    let response = client
        .get(&url)
        .timeout(Duration::from_secs(2))
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    println!("client: {status}: {body}");
    assert_eq!(body, "42 in stock, for checkout.internal");

    // A client without a certificate does not get in.
    let anonymous = Client::builder()
        .tls_webpki_roots(false)
        .tls_root_certificates_pem(ca.pem())
        .build()?;
    let refused = anonymous.get(&url).send().await;
    match &refused {
        Ok(response) => println!("client without a certificate: {}", response.status()),
        Err(error) => {
            // The crate's errors display their causes on one line. Under TLS 1.3 the client's
            // side of the handshake is done before the server checks it for a certificate, so
            // the refusal arrives as the server closing the connection.
            let chain = error.to_string();
            println!("client without a certificate: refused: {chain}");
        }
    }
    assert!(refused.is_err());

    shutdown.trigger();
    println!("server: {:?}", serving.await??);
    Ok(())
}
