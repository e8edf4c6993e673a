//! The destination of an outbound request: one rule for every per-destination table, so that a
//! breaker scope, a metrics endpoint and a latency tracker name the same destination alike.

use std::fmt;

use http::{HeaderMap, Uri};

/// Appends `scheme://authority` of an outbound request to `out`. The scheme defaults to `http`;
/// a relative URI takes its authority from `Host`. Returns `false`, writing nothing, when
/// neither gives an authority.
///
/// `out` is any writer that cannot fail: a `String`, or the metrics layer's label text, which
/// keeps short labels inline so that a request does not allocate one.
pub(crate) fn write_destination(uri: &Uri, headers: &HeaderMap, out: &mut impl fmt::Write) -> bool {
    let authority = uri.authority().map(|a| a.as_str()).or_else(|| {
        headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    let Some(authority) = authority else {
        return false;
    };
    // Writers that cannot fail: there is no error to pass on.
    let _ = out
        .write_str(uri.scheme_str().unwrap_or("http"))
        .and_then(|()| out.write_str("://"))
        .and_then(|()| out.write_str(authority));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destination(uri: &str, host: Option<&str>) -> Option<String> {
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(http::header::HOST, host.parse().unwrap());
        }
        let mut out = String::new();
        write_destination(&uri.parse().unwrap(), &headers, &mut out).then_some(out)
    }

    #[test]
    fn scheme_and_authority_with_fallbacks() {
        assert_eq!(
            destination("https://api:8443/x?y", None).as_deref(),
            Some("https://api:8443")
        );
        assert_eq!(
            destination("/x", Some("inventory:8080")).as_deref(),
            Some("http://inventory:8080")
        );
        assert_eq!(
            destination("https://a/x", Some("b")).as_deref(),
            Some("https://a")
        );
        assert_eq!(destination("/x", None), None);
    }
}
