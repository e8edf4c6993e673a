//! The client's errors: a configuration the builder refused, a request that could not be built,
//! and a transport that failed.

use std::error::Error;
use std::fmt;

/// A client configuration the builder refused.
#[non_exhaustive]
#[derive(Debug)]
pub enum ClientBuildError {
    /// The base URL is not an absolute `http` or `https` URL.
    InvalidBaseUrl(String),
    /// A default header's name or value is not valid in HTTP.
    InvalidHeader(String),
    /// The service name cannot be sent (see [`PropagateLayer::service_name`](crate::propagation::PropagateLayer::service_name)).
    InvalidServiceName(String),
    /// `https` needs the `tls` feature.
    TlsUnavailable,
    /// A TLS setting cannot be used: a PEM that holds no certificate, a key that does not fit
    /// its certificate, no trusted roots at all.
    InvalidTls(String),
}

impl fmt::Display for ClientBuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientBuildError::InvalidBaseUrl(url) => {
                write!(
                    f,
                    "invalid base URL {url:?}: expected an absolute http or https URL"
                )
            }
            ClientBuildError::InvalidHeader(header) => write!(f, "invalid default header {header}"),
            ClientBuildError::InvalidServiceName(reason) => f.write_str(reason),
            ClientBuildError::TlsUnavailable => {
                f.write_str("https needs tower-lifeline's `tls` feature")
            }
            ClientBuildError::InvalidTls(reason) => write!(f, "invalid TLS setting: {reason}"),
        }
    }
}

impl Error for ClientBuildError {}

/// A request the client could not even build: a bad URL or header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRequest(pub(super) String);

impl fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid request: {}", self.0)
    }
}

impl Error for InvalidRequest {}

/// The hyper-util transport failed: the connection could not be made (refused, DNS, connect
/// timeout, TLS) or broke while the request or its answer was on it.
///
/// hyper-util's own error displays only its kind (`client error (Connect)`) and keeps the cause
/// in its sources; this one displays the whole chain on one line, as a log line or a command
/// line needs it (`client error (Connect): tcp connect error: Connection refused (os error
/// 111)`). Its [`source`](Error::source) is hyper-util's error, so
/// [`find_source`](crate::error::find_source) still reaches it and the I/O error beneath.
#[derive(Debug)]
pub struct TransportError(pub(super) hyper_util::client::legacy::Error);

impl TransportError {
    /// hyper-util's error.
    pub fn get_ref(&self) -> &hyper_util::client::legacy::Error {
        &self.0
    }

    /// Whether the connection could not be made, so the request never left.
    pub fn is_connect(&self) -> bool {
        self.0.is_connect()
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

impl Error for TransportError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}
