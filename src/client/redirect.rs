//! Following redirects, as aio-request's transport does with aiohttp's `allow_redirects` (on by
//! default, at most 10).
//!
//! Each hop is a call of its own through the whole stack, within the first call's deadline: the
//! breaker and the metrics see the destination the hop goes to, and the propagation headers go
//! only where [`propagate_only_to_hosts`](super::ClientBuilder::propagate_only_to_hosts) allows
//! (by default everywhere: set it, and a redirect to a third party learns nothing of this
//! service). As browsers, aiohttp and tower-http's `FollowRedirect` do: `303` becomes a `GET`
//! without a body, so do `301` and `302` after a `POST`; `307` and `308` repeat the method and
//! the body. Once a hop leaves the first request's origin, credentials (`Authorization`,
//! `Cookie`, `Proxy-Authorization`) and `Host` are dropped and the
//! [`on_attempt`](super::ClientBuilder::on_attempt) hook no longer runs, so that it cannot put a
//! token back on a request to someone else. A redirect from `https` to `http` is not followed:
//! the caller gets the redirect itself, rather than its body and headers going out in
//! cleartext.

use std::fmt;

use http::header::{
    AUTHORIZATION, CONTENT_ENCODING, CONTENT_LANGUAGE, CONTENT_LENGTH, CONTENT_LOCATION,
    CONTENT_TYPE, COOKIE, HOST, PROXY_AUTHORIZATION, TRANSFER_ENCODING,
};
use http::{HeaderMap, Method, Request, StatusCode, Uri};

use super::ClientBody;
use crate::context::Deadline;

/// In a hop's extensions once the redirects have left the first request's origin: the
/// `on_attempt` hook does not run for it.
#[derive(Debug, Clone, Copy)]
pub(super) struct LeftOrigin;

/// aio-request's `MAX_REDIRECTS`.
pub const DEFAULT_MAX_REDIRECTS: u32 = 10;

/// A call was redirected more times than allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyRedirects {
    max: u32,
    last: String,
}

impl TooManyRedirects {
    /// The most redirects allowed.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Where the last redirect pointed.
    pub fn location(&self) -> &str {
        &self.last
    }
}

impl fmt::Display for TooManyRedirects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "more than {} redirects (the last to {})",
            self.max, self.last
        )
    }
}

impl std::error::Error for TooManyRedirects {}

/// What is kept of a request to send it again elsewhere: the body is `Full<Bytes>`, so keeping
/// it costs a reference count.
pub(super) struct Resend {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    extensions: http::Extensions,
    body: ClientBody,
    deadline: Deadline,
}

impl Resend {
    /// Kept before the call's deadline is added to `request`: most requests carry no extensions
    /// of their own, and copying none costs nothing, where copying the deadline's map would
    /// cost three allocations on every call for the rare one that is redirected.
    pub(super) fn of(request: &Request<ClientBody>, deadline: Deadline) -> Self {
        Resend {
            method: request.method().clone(),
            uri: request.uri().clone(),
            headers: request.headers().clone(),
            extensions: request.extensions().clone(),
            body: request.body().clone(),
            deadline,
        }
    }

    /// The next hop's request, if `status` and `location` make one; `hops` counts those made.
    pub(super) fn follow(
        &mut self,
        status: StatusCode,
        location: Option<&http::HeaderValue>,
        hops: u32,
        max: u32,
    ) -> Result<Option<Request<ClientBody>>, TooManyRedirects> {
        let Some(keeps_method) = redirect_kind(status) else {
            return Ok(None);
        };
        let Some(next) = location
            .and_then(|l| l.to_str().ok())
            .and_then(|l| resolve(&self.uri, l))
        else {
            // A redirect with no usable Location: the caller gets it as it is.
            return Ok(None);
        };
        if self.uri.scheme_str() == Some("https") && next.scheme_str() != Some("https") {
            tracing::debug!(to = %next, "not following a redirect from https to cleartext");
            return Ok(None);
        }
        if next.scheme_str() == Some("https") && !cfg!(feature = "tls") {
            tracing::debug!(to = %next, "not following a redirect to https without the tls feature");
            return Ok(None);
        }
        if hops >= max {
            return Err(TooManyRedirects {
                max,
                last: next.to_string(),
            });
        }
        if !keeps_method && (status == StatusCode::SEE_OTHER || self.method == Method::POST) {
            if self.method != Method::HEAD {
                self.method = Method::GET;
            }
            self.body = ClientBody::default();
            // RFC 9110 15.4: the content went with the method.
            for name in [
                CONTENT_LENGTH,
                CONTENT_TYPE,
                CONTENT_ENCODING,
                CONTENT_LANGUAGE,
                CONTENT_LOCATION,
                TRANSFER_ENCODING,
            ] {
                self.headers.remove(name);
            }
        }
        if next.path() != self.uri.path() {
            // The template named the first path; the metrics of a hop elsewhere normalise its own.
            self.extensions.remove::<crate::context::RouteTemplate>();
        }
        if !same_origin(&self.uri, &next) {
            for name in [AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION, HOST] {
                self.headers.remove(name);
            }
            // Sticky: a hop that comes back to the first origin has passed through another.
            self.extensions.insert(LeftOrigin);
        }
        self.uri = next;
        let mut request = Request::new(self.body.clone());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        *request.extensions_mut() = self.extensions.clone();
        request.extensions_mut().insert(self.deadline);
        Ok(Some(request))
    }
}

/// `Some(keeps the method and body)` for a redirect status.
fn redirect_kind(status: StatusCode) -> Option<bool> {
    match status {
        StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND | StatusCode::SEE_OTHER => Some(false),
        StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT => Some(true),
        _ => None,
    }
}

fn same_origin(a: &Uri, b: &Uri) -> bool {
    a.scheme() == b.scheme() && a.authority() == b.authority()
}

/// Whether `reference` starts with a URI scheme (RFC 3986 3.1: a letter, then letters, digits,
/// `+`, `-` or `.`, then `:`), so that `/login?next=http://x` is not taken for an absolute URL.
pub(super) fn has_scheme(reference: &str) -> bool {
    let Some((scheme, _)) = reference.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// `reference` resolved against `base` (RFC 3986 5.2: absolute, scheme-relative `//host/x`,
/// absolute-path `/x`, query-only `?q`, or path-relative `x` and `../x`, dot segments removed,
/// the fragment dropped). Only `http` and `https` results are given.
pub(super) fn resolve(base: &Uri, reference: &str) -> Option<Uri> {
    let reference = reference.split('#').next().unwrap_or_default();
    let scheme = base.scheme_str().unwrap_or("http");
    let uri: Uri = if has_scheme(reference) {
        reference.parse().ok()?
    } else if let Some(rest) = reference.strip_prefix("//") {
        format!("{scheme}://{rest}").parse().ok()?
    } else {
        let authority = base.authority()?;
        let (path, query) = match reference.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (reference, None),
        };
        let path = if path.is_empty() {
            // `?q`, or nothing at all: the base's own path.
            base.path().to_owned()
        } else if path.starts_with('/') {
            remove_dot_segments(path)
        } else {
            let base_path = base.path();
            let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
            remove_dot_segments(&format!("{dir}{path}"))
        };
        // An empty reference keeps the base's query too (RFC 3986 5.2.2).
        let query = query.or_else(|| reference.is_empty().then(|| base.query()).flatten());
        match query {
            Some(query) => format!("{scheme}://{authority}{path}?{query}"),
            None => format!("{scheme}://{authority}{path}"),
        }
        .parse()
        .ok()?
    };
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Some(uri),
        _ => None,
    }
}

/// RFC 3986 5.2.4 on an absolute path: `.` segments go, `..` takes the one before it away.
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    out.pop();
                }
                // A path that ends in a dot segment names a directory.
                if last {
                    out.push("");
                }
            }
            other => out.push(other),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_request() {
        let base: Uri = "http://a:8080/api/v1/items?x=1".parse().unwrap();
        for (location, expected) in [
            ("http://b/x", "http://b/x"),
            ("//c:9/y", "http://c:9/y"),
            ("/root", "http://a:8080/root"),
            ("other?q=2", "http://a:8080/api/v1/other?q=2"),
            ("?page=2", "http://a:8080/api/v1/items?page=2"),
            ("../v2/items", "http://a:8080/api/v2/items"),
            ("./x/../y", "http://a:8080/api/v1/y"),
            (
                "/login?next=http://x/y",
                "http://a:8080/login?next=http://x/y",
            ),
            ("/a#fragment", "http://a:8080/a"),
            ("HTTPS://Secure:1/z", "https://Secure:1/z"),
        ] {
            assert_eq!(
                resolve(&base, location).unwrap().to_string(),
                expected,
                "{location}"
            );
        }
        assert_eq!(resolve(&base, "ftp://files/x"), None);
        assert_eq!(resolve(&base, "bad url"), None);
    }

    fn post() -> Request<ClientBody> {
        let mut request = Request::post("http://a/orders")
            .header(AUTHORIZATION, "Bearer secret")
            .header(CONTENT_TYPE, "application/json")
            .body(ClientBody::from("{}"))
            .unwrap();
        request.extensions_mut().insert(7u32);
        request
    }

    #[test]
    fn a_303_becomes_a_get_without_body_and_a_307_keeps_both() {
        let location = http::HeaderValue::from_static("/done");
        let deadline = Deadline::after(std::time::Duration::from_secs(3));
        let mut resend = Resend::of(&post(), deadline);
        let next = resend
            .follow(StatusCode::SEE_OTHER, Some(&location), 0, 10)
            .unwrap()
            .unwrap();
        assert_eq!(next.method(), Method::GET);
        assert!(next.headers().get(CONTENT_TYPE).is_none());
        assert_eq!(next.extensions().get::<u32>(), Some(&7));
        // Each hop works to the first call's deadline, kept beside the copy rather than in it.
        assert_eq!(next.extensions().get::<Deadline>(), Some(&deadline));
        let mut resend = Resend::of(&post(), deadline);
        let next = resend
            .follow(StatusCode::TEMPORARY_REDIRECT, Some(&location), 0, 10)
            .unwrap()
            .unwrap();
        assert_eq!(next.method(), Method::POST);
        assert_eq!(next.headers()[AUTHORIZATION], "Bearer secret");
    }

    #[test]
    fn a_redirect_from_https_to_cleartext_is_not_followed() {
        let request = Request::get("https://a/x")
            .body(ClientBody::default())
            .unwrap();
        let mut resend = Resend::of(&request, Deadline::after(std::time::Duration::from_secs(3)));
        let cleartext = http::HeaderValue::from_static("http://a/x");
        assert!(resend
            .follow(StatusCode::FOUND, Some(&cleartext), 0, 10)
            .unwrap()
            .is_none());
    }

    #[test]
    fn credentials_do_not_follow_to_another_origin_and_the_count_is_bounded() {
        let elsewhere = http::HeaderValue::from_static("http://third-party/x");
        let mut resend = Resend::of(&post(), Deadline::after(std::time::Duration::from_secs(3)));
        let next = resend
            .follow(StatusCode::PERMANENT_REDIRECT, Some(&elsewhere), 0, 10)
            .unwrap()
            .unwrap();
        assert!(next.headers().get(AUTHORIZATION).is_none());
        assert!(next.extensions().get::<LeftOrigin>().is_some());
        let err = resend
            .follow(StatusCode::FOUND, Some(&elsewhere), 10, 10)
            .unwrap_err();
        assert_eq!(err.max(), 10);
        assert!(resend
            .follow(StatusCode::OK, Some(&elsewhere), 0, 10)
            .unwrap()
            .is_none());
    }
}
