//! The hyper-util pool at the bottom of the `Client` preset's stack.

use hyper_util::client::legacy::connect::HttpConnector;
use tower::ServiceExt;

use crate::body::ReplayBody;
use crate::error::BoxError;

use super::{ClientBody, TransportError};

/// The pool at the bottom of the stack, named rather than boxed: the stack is cloned for every
/// call and every retry, and a boxed transport would cost an allocation on each clone. Its
/// errors are boxed, as the layers' optional halves (`Either`) need one error type.
pub(super) type Pooled<C> = tower::util::MapErr<
    hyper_util::client::legacy::Client<C, ReplayBody<ClientBody>>,
    fn(hyper_util::client::legacy::Error) -> BoxError,
>;

pub(super) fn box_error(error: hyper_util::client::legacy::Error) -> BoxError {
    Box::new(TransportError(error))
}

#[cfg(feature = "tls")]
pub(super) fn connect(
    pool: hyper_util::client::legacy::Builder,
    http: HttpConnector,
    http2_only: bool,
    tls: rustls::ClientConfig,
) -> Pooled<hyper_rustls::HttpsConnector<HttpConnector>> {
    // The connector sets the ALPN protocols from the versions enabled below.
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let https = if http2_only {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_all_versions().wrap_connector(http)
    };
    pool.build(https).map_err(box_error as fn(_) -> _)
}

#[cfg(not(feature = "tls"))]
pub(super) fn connect(
    pool: hyper_util::client::legacy::Builder,
    http: HttpConnector,
    _http2_only: bool,
) -> Pooled<HttpConnector> {
    pool.build(http).map_err(box_error as fn(_) -> _)
}
