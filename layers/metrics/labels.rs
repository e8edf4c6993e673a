use std::fmt;

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
/// paths deeper than six segments are cut with `/...`. Writes it after what `out` holds.
pub(crate) fn write_normalized_path(path: &str, out: &mut LabelText) {
    let mut empty = true;
    for (depth, segment) in path.split('/').filter(|s| !s.is_empty()).enumerate() {
        empty = false;
        if depth == 6 {
            out.push_str("/...");
            break;
        }
        out.push_str("/");
        if looks_like_id(segment) {
            out.push_str("{id}");
        } else if segment.len() > 40 {
            out.push_str("{long}");
        } else {
            out.push_str(segment);
        }
    }
    if empty {
        out.push_str("/");
    }
}

/// The bytes a [`LabelText`] keeps inline: room for a typical endpoint
/// (`https://inventory.shop.svc.cluster.local:8443`) and a normalised path.
const INLINE_LABEL_BYTES: usize = 120;

/// The text of a client call's labels, built when the call starts and read when it ends. The
/// request is gone by then, so the text must be kept; inline up to [`INLINE_LABEL_BYTES`] rather
/// than in `String`s, so that a call makes none, and on the heap beyond, so labels are never cut.
pub(crate) enum LabelText {
    Inline {
        len: usize,
        bytes: [u8; INLINE_LABEL_BYTES],
    },
    Heap(String),
}

impl LabelText {
    /// Empty, inline.
    pub(crate) const fn new() -> Self {
        LabelText::Inline {
            len: 0,
            bytes: [0; INLINE_LABEL_BYTES],
        }
    }

    /// The text written so far.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Only whole `&str`s are copied in, so the bytes are UTF-8 and this never fails;
            // checking costs a few nanoseconds (labels are short ASCII) and needs no `unsafe`.
            LabelText::Inline { len, bytes } => std::str::from_utf8(&bytes[..*len]).unwrap_or(""),
            LabelText::Heap(text) => text,
        }
    }

    /// The length of the text written so far, in bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            LabelText::Inline { len, .. } => *len,
            LabelText::Heap(text) => text.len(),
        }
    }

    /// Appends `s`, moving the text to the heap if it no longer fits inline.
    pub(crate) fn push_str(&mut self, s: &str) {
        match self {
            LabelText::Inline { len, bytes } => {
                let end = *len + s.len();
                if let Some(room) = bytes.get_mut(*len..end) {
                    room.copy_from_slice(s.as_bytes());
                    *len = end;
                } else {
                    let mut text = String::with_capacity(end);
                    text.push_str(self.as_str());
                    text.push_str(s);
                    *self = LabelText::Heap(text);
                }
            }
            LabelText::Heap(text) => text.push_str(s),
        }
    }
}

/// For `crate::destination::write_destination`, the one rule for naming a destination.
impl fmt::Write for LabelText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_str(s);
        Ok(())
    }
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

    fn normalize_path(path: &str) -> String {
        let mut out = LabelText::new();
        write_normalized_path(path, &mut out);
        out.as_str().to_owned()
    }

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

    #[test]
    fn label_text_keeps_short_text_inline_and_spills_long_text_whole() {
        let mut text = LabelText::new();
        text.push_str("http://");
        text.push_str("api:8080");
        assert!(matches!(text, LabelText::Inline { .. }));
        assert_eq!(text.as_str(), "http://api:8080");
        let long = "a".repeat(INLINE_LABEL_BYTES);
        text.push_str(&long);
        assert!(matches!(text, LabelText::Heap(_)));
        assert_eq!(text.as_str(), format!("http://api:8080{long}"));
        text.push_str("/x");
        assert_eq!(text.len(), 15 + INLINE_LABEL_BYTES + 2);
        assert!(text.as_str().ends_with("a/x"));
    }

    #[test]
    fn a_path_is_normalised_after_the_endpoint_inline_or_not() {
        let segment = "x".repeat(40);
        let deep = format!("/{segment}").repeat(5);
        for (path, expected, inline) in [
            ("/users/42", "/users/{id}".to_owned(), true),
            ("", "/".to_owned(), true),
            (deep.as_str(), deep.clone(), false),
            (
                &format!("/{}/7", "y".repeat(41)),
                "/{long}/{id}".to_owned(),
                true,
            ),
        ] {
            let mut text = LabelText::new();
            text.push_str("http://h");
            write_normalized_path(path, &mut text);
            assert_eq!(text.as_str(), format!("http://h{expected}"), "{path}");
            assert_eq!(matches!(text, LabelText::Inline { .. }), inline, "{path}");
        }
    }
}
