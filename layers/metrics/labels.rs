use http::Method;

/// The value a label takes once its metric has used up its label sets.
pub(crate) const OTHER: &str = "other";

/// The method as a label: the standard ones by name, anything else `_OTHER`, as OpenTelemetry
/// does, so that a caller cannot mint label values by inventing methods.
pub(crate) fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// Normalises a path into a bounded label when the caller gave no route template: each segment
/// that looks like an identifier (digits, a UUID, a long hex or mixed token) becomes `{id}`, and
/// paths deeper than six segments are cut with `/...`.
pub(crate) fn normalize_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len().min(128));
    for (depth, segment) in path.split('/').filter(|s| !s.is_empty()).enumerate() {
        if depth == 6 {
            out.push_str("/...");
            break;
        }
        out.push('/');
        if looks_like_id(segment) {
            out.push_str("{id}");
        } else if segment.len() > 40 {
            out.push_str("{long}");
        } else {
            out.push_str(segment);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn looks_like_id(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    if digits == bytes.len() {
        return true;
    }
    let hex_or_dash = bytes.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-');
    // UUIDs and hashes; and tokens that mix many digits into letters (`user8812a`).
    (hex_or_dash && bytes.len() >= 16) || (bytes.len() >= 8 && digits * 3 >= bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_to_bounded_templates() {
        for (path, expected) in [
            ("/", "/"),
            ("", "/"),
            ("/users/42", "/users/{id}"),
            ("/users/42/orders/7", "/users/{id}/orders/{id}"),
            ("/items/550e8400-e29b-41d4-a716-446655440000", "/items/{id}"),
            ("/blobs/d41d8cd98f00b204e9800998ecf8427e", "/blobs/{id}"),
            ("/search", "/search"),
            ("/a/b/c/d/e/f/g/h", "/a/b/c/d/e/f/..."),
            ("/health", "/health"),
        ] {
            assert_eq!(normalize_path(path), expected, "{path}");
        }
    }

    #[test]
    fn methods_outside_the_standard_fold() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"PURGE").unwrap()),
            "_OTHER"
        );
    }
}
