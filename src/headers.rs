//! The wire codec: header names and the strict parsers and formatters for their values.
//!
//! The format is aio-request's (0.2.x), so a tower-lifeline service and an aio-request service
//! understand each other:
//!
//! | header | value |
//! |---|---|
//! | `X-Request-Timeout` | remaining seconds, decimal (`4.997`) |
//! | `X-Request-Priority` | `high`, `normal`, `low`, any case |
//! | `X-Service-Name` | the calling service's name |
//! | `X-Do-Not-Retry` | `1` on a response the caller must not retry |
//! | `X-Circuit-Breaker` | `1` on a response an open breaker made up |
//! | `grpc-timeout` | 1 to 8 digits and a unit `H M S m u n`; written on gRPC calls only |
//!
//! Every parser returns `None` for a malformed value (empty, negative, NaN, infinite, too large,
//! not UTF-8, letters where digits belong) and logs it at trace level. Callers ignore what they
//! cannot read: a malformed header never becomes an error response and never panics.
//!
//! ```
//! use std::time::Duration;
//! use http::HeaderValue;
//! use tower_lifeline::headers;
//!
//! let value = headers::format_timeout(Duration::from_millis(4_997));
//! assert_eq!(value, "4.997");
//! assert_eq!(headers::parse_timeout(&value), Some(Duration::from_millis(4_997)));
//! assert_eq!(headers::parse_timeout(&HeaderValue::from_static("NaN")), None);
//! assert_eq!(
//!     headers::parse_grpc_timeout(&HeaderValue::from_static("250m")),
//!     Some(Duration::from_millis(250)),
//! );
//! ```

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::context::{Deadline, Priority};

/// `X-Request-Timeout`: the caller's remaining time in seconds.
pub const X_REQUEST_TIMEOUT: HeaderName = HeaderName::from_static("x-request-timeout");
/// `X-Request-Priority`: `high`, `normal` or `low`.
pub const X_REQUEST_PRIORITY: HeaderName = HeaderName::from_static("x-request-priority");
/// `X-Service-Name`: the calling service's name.
pub const X_SERVICE_NAME: HeaderName = HeaderName::from_static("x-service-name");
/// `X-Do-Not-Retry`: set on a response that the caller must not retry.
pub const X_DO_NOT_RETRY: HeaderName = HeaderName::from_static("x-do-not-retry");
/// `X-Circuit-Breaker`: set on a response that an open circuit breaker made up.
pub const X_CIRCUIT_BREAKER: HeaderName = HeaderName::from_static("x-circuit-breaker");
/// `grpc-timeout`: a gRPC deadline, accepted as a deadline source.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// `Idempotency-Key`: marks a request with an unsafe method as safe to retry.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// `Retry-After`: how long the server asks the caller to wait (delta-seconds or HTTP-date).
pub const RETRY_AFTER: HeaderName = http::header::RETRY_AFTER;

/// The value `1` used by `X-Do-Not-Retry` and `X-Circuit-Breaker`.
pub const FLAG_SET: HeaderValue = HeaderValue::from_static("1");

/// Longest `X-Request-Timeout` value read; anything longer is malformed. Python's `repr` of a
/// float is at most 24 characters, so real senders fit.
const MAX_TIMEOUT_LEN: usize = 32;

/// Longest accepted `X-Service-Name`; the name ends up as a metric label.
pub const MAX_SERVICE_NAME_LEN: usize = 64;

fn malformed(header: &HeaderName, value: &HeaderValue) {
    tracing::trace!(header = %header, value = ?value, "ignoring malformed header");
}

/// Parses an `X-Request-Timeout` value: non-negative decimal seconds, as Python's `str(float)`
/// writes them (`4.997`, `20`, `1e-05`). Returns `None` for anything else, including values too
/// large for a `Duration`.
pub fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let parsed = parse_seconds(value.as_bytes());
    if parsed.is_none() {
        malformed(&X_REQUEST_TIMEOUT, value);
    }
    parsed
}

fn parse_seconds(bytes: &[u8]) -> Option<Duration> {
    let bytes = bytes.trim_ascii();
    if bytes.is_empty() || bytes.len() > MAX_TIMEOUT_LEN {
        return None;
    }
    // Digits, one optional fraction and one optional exponent. Checking the characters first
    // keeps out what Rust's float parser would otherwise accept: `inf`, `NaN`, a leading `-`.
    let first = bytes[0];
    if !(first.is_ascii_digit() || first == b'.') {
        return None;
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    if bytes.iter().any(|b| matches!(b, b'e' | b'E')) {
        // Exponent form (`1e-05`, as Python writes small floats): go through f64. Infinity
        // (`1e309`) and anything too large for a Duration are refused by `try_from_secs_f64`.
        let text = std::str::from_utf8(bytes).ok()?;
        let seconds: f64 = text.parse().ok()?;
        return Duration::try_from_secs_f64(seconds).ok();
    }
    // Plain decimal: exact, with no float rounding. Digits past nanoseconds are dropped, which
    // rounds down: the receiver never thinks it has more time than the sender gave.
    let (whole, fraction) = match bytes.iter().position(|&b| b == b'.') {
        Some(dot) => (&bytes[..dot], &bytes[dot + 1..]),
        None => (bytes, &b""[..]),
    };
    let digits = |part: &[u8]| part.iter().all(u8::is_ascii_digit);
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return None;
    }
    let mut secs: u64 = 0;
    for d in whole {
        secs = secs.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    let mut nanos: u32 = 0;
    for i in 0..9 {
        nanos = nanos * 10 + fraction.get(i).map_or(0, |d| u32::from(d - b'0'));
    }
    Some(Duration::new(secs, nanos))
}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits then a unit, `H` hours, `M` minutes,
/// `S` seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds.
pub fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let parsed = parse_grpc(value.as_bytes());
    if parsed.is_none() {
        malformed(&GRPC_TIMEOUT, value);
    }
    parsed
}

fn parse_grpc(bytes: &[u8]) -> Option<Duration> {
    let (unit, digits) = bytes.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Eight digits fit in a u64 with room to spare, and so do hours of them in seconds.
    let amount = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Parses an `X-Request-Priority` value.
pub fn parse_priority(value: &HeaderValue) -> Option<Priority> {
    let parsed = Priority::from_bytes(value.as_bytes());
    if parsed.is_none() {
        malformed(&X_REQUEST_PRIORITY, value);
    }
    parsed
}

/// Parses an `X-Service-Name` value: 1 to 64 characters of letters, digits, `-`, `_`, `.`.
/// Anything else is refused so that a caller cannot put arbitrary text into a metric label.
pub fn parse_service_name(value: &HeaderValue) -> Option<&str> {
    let bytes = value.as_bytes();
    if !is_service_name(bytes) {
        malformed(&X_SERVICE_NAME, value);
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

/// Whether `bytes` is a service name a server reads: 1 to 64 letters, digits, `-`, `_`, `.`.
pub(crate) fn is_service_name(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len() <= MAX_SERVICE_NAME_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The longest wait [`parse_retry_after`] returns: ten digits of delta-seconds (317 years). A
/// date further ahead is cut to it, so every form of the header has the same bound.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(9_999_999_999);

/// Parses a `Retry-After` value: delta-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, counted from the system clock; a date in the past is zero).
/// The wait is at most [`MAX_RETRY_AFTER`]; callers cap it further (the strategy layer at 30 s).
pub fn parse_retry_after(value: &HeaderValue) -> Option<Duration> {
    let bytes = value.as_bytes().trim_ascii();
    let parsed = if !bytes.is_empty() && bytes.len() <= 10 && bytes.iter().all(u8::is_ascii_digit) {
        // At most ten digits: fits a u64, and longer waits than 300 years are not meant.
        Some(Duration::from_secs(
            bytes.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
        ))
    } else {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| httpdate::parse_http_date(text).ok())
            .map(|date| {
                date.duration_since(std::time::SystemTime::now())
                    .unwrap_or(Duration::ZERO)
                    .min(MAX_RETRY_AFTER)
            })
    };
    if parsed.is_none() {
        malformed(&RETRY_AFTER, value);
    }
    parsed
}

/// The incoming timeout of a request: `X-Request-Timeout` if present and well formed, else
/// `grpc-timeout`, else `None`.
pub fn incoming_timeout(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(X_REQUEST_TIMEOUT)
        .and_then(parse_timeout)
        .or_else(|| headers.get(GRPC_TIMEOUT).and_then(parse_grpc_timeout))
}

/// Formats a remaining time as `X-Request-Timeout` writes it: seconds with three decimals
/// (`4.997`), rounded down so that the receiver never believes it has more time than it has.
///
/// It writes into a stack buffer: the only allocation is the one `HeaderValue` itself makes.
pub fn format_timeout(remaining: Duration) -> HeaderValue {
    // u64 seconds need at most 20 digits, then '.', then 3 digits.
    let mut buf = [0u8; 24];
    let mut end = buf.len();
    let millis = remaining.subsec_millis();
    for digit in [millis % 10, millis / 10 % 10, millis / 100] {
        end -= 1;
        buf[end] = b'0' + digit as u8;
    }
    end -= 1;
    buf[end] = b'.';
    let mut secs = remaining.as_secs();
    loop {
        end -= 1;
        buf[end] = b'0' + (secs % 10) as u8;
        secs /= 10;
        if secs == 0 {
            break;
        }
    }
    HeaderValue::from_bytes(&buf[end..]).expect("digits and a dot are a valid header value")
}

/// Formats the time remaining before `deadline`, at this moment.
pub fn format_deadline(deadline: Deadline) -> HeaderValue {
    format_timeout(deadline.remaining())
}

/// The wire form of a priority; static, so writing it never allocates.
pub fn priority_value(priority: Priority) -> HeaderValue {
    HeaderValue::from_static(priority.as_str())
}

/// Whether a response carries `X-Do-Not-Retry` (any value but empty counts, as aio-request
/// only checks for presence).
pub fn is_do_not_retry(headers: &HeaderMap) -> bool {
    headers.contains_key(X_DO_NOT_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value(bytes: &[u8]) -> HeaderValue {
        HeaderValue::from_bytes(bytes).unwrap()
    }

    #[test]
    fn timeout_accepts_what_aio_request_writes() {
        let table: &[(&[u8], Duration)] = &[
            (b"4.997", Duration::from_millis(4_997)),
            (b"20", Duration::from_secs(20)),
            (b"20.0", Duration::from_secs(20)),
            (b"0", Duration::ZERO),
            (b"0.5", Duration::from_millis(500)),
            (b".5", Duration::from_millis(500)),
            (b"1e-05", Duration::from_micros(10)),
            (b"1E2", Duration::from_secs(100)),
            (b" 3 ", Duration::from_secs(3)),
        ];
        for (raw, expected) in table {
            assert_eq!(parse_timeout(&value(raw)), Some(*expected), "{raw:?}");
        }
    }

    #[test]
    fn timeout_rejects_malformed_values() {
        let table: &[&[u8]] = &[
            b"",
            b" ",
            b"-1",
            b"-0.5",
            b"NaN",
            b"nan",
            b"inf",
            b"+inf",
            b"infinity",
            b"1e309",
            b"1e30",
            b"abc",
            b"1.2.3",
            b"1,5",
            b"5s",
            b"0x10",
            b"e5",
            b"1e",
            b"99999999999999999999999999999999999",
            b"\xff\xfe",
            b"4.997\xc3\xa9",
        ];
        for raw in table {
            let parsed = HeaderValue::from_bytes(raw)
                .ok()
                .and_then(|v| parse_timeout(&v));
            assert_eq!(parsed, None, "{raw:?}");
        }
    }

    #[test]
    fn grpc_timeout_units() {
        let table: &[(&[u8], Option<Duration>)] = &[
            (b"1H", Some(Duration::from_secs(3600))),
            (b"2M", Some(Duration::from_secs(120))),
            (b"3S", Some(Duration::from_secs(3))),
            (b"250m", Some(Duration::from_millis(250))),
            (b"7u", Some(Duration::from_micros(7))),
            (b"9n", Some(Duration::from_nanos(9))),
            (b"99999999H", Some(Duration::from_secs(99_999_999 * 3600))),
            (b"00000001S", Some(Duration::from_secs(1))),
            (b"123456789S", None),
            (b"S", None),
            (b"", None),
            (b"10", None),
            (b"10s", None),
            (b"10 S", None),
            (b"-1S", None),
            (b"1.5S", None),
            (b"\xff1S", None),
        ];
        for (raw, expected) in table {
            let parsed = HeaderValue::from_bytes(raw)
                .ok()
                .and_then(|v| parse_grpc_timeout(&v));
            assert_eq!(parsed, *expected, "{raw:?}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(
            parse_retry_after(&value(b"120")),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(&value(b" 0 ")), Some(Duration::ZERO));
        // A date long past means no wait.
        assert_eq!(
            parse_retry_after(&value(b"Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::ZERO)
        );
        let future =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
        let wait = parse_retry_after(&HeaderValue::from_str(&future).unwrap()).unwrap();
        assert!(
            wait > Duration::from_secs(3500) && wait <= Duration::from_secs(3600),
            "{wait:?}"
        );
        // A date in year 9862 (found by the fuzzer) is cut to the same bound as delta-seconds.
        assert_eq!(
            parse_retry_after(&value(b"Wed, 22 Oct 9862 07:28:00 GMT")),
            Some(MAX_RETRY_AFTER)
        );
        for bad in [&b""[..], b"-1", b"1.5", b"soon", b"99999999999", b"\xff"] {
            assert_eq!(parse_retry_after(&value(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn service_name_is_restricted_to_label_safe_text() {
        assert_eq!(
            parse_service_name(&value(b"billing-api")),
            Some("billing-api")
        );
        assert_eq!(parse_service_name(&value(b"a.b_c-1")), Some("a.b_c-1"));
        for bad in [
            &b""[..],
            b"has space",
            b"quote\"",
            b"brace{",
            b"\xc3\xa9",
            &[b'a'; 65][..],
        ] {
            assert_eq!(parse_service_name(&value(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn incoming_timeout_prefers_x_request_timeout_then_grpc() {
        let mut headers = HeaderMap::new();
        assert_eq!(incoming_timeout(&headers), None);
        headers.insert(GRPC_TIMEOUT, value(b"2S"));
        assert_eq!(incoming_timeout(&headers), Some(Duration::from_secs(2)));
        headers.insert(X_REQUEST_TIMEOUT, value(b"1.5"));
        assert_eq!(
            incoming_timeout(&headers),
            Some(Duration::from_millis(1500))
        );
        // A malformed X-Request-Timeout falls back to grpc-timeout rather than to nothing.
        headers.insert(X_REQUEST_TIMEOUT, value(b"soon"));
        assert_eq!(incoming_timeout(&headers), Some(Duration::from_secs(2)));
    }

    #[test]
    fn format_timeout_writes_three_decimals_rounded_down() {
        let table = [
            (Duration::from_millis(4_997), "4.997"),
            (Duration::from_secs(20), "20.000"),
            (Duration::ZERO, "0.000"),
            (Duration::from_micros(1_999), "0.001"),
            (Duration::from_nanos(999_999), "0.000"),
            (Duration::from_secs(u64::MAX), "18446744073709551615.000"),
        ];
        for (remaining, expected) in table {
            assert_eq!(format_timeout(remaining), expected);
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                let _ = parse_timeout(&v);
                let _ = parse_grpc_timeout(&v);
                let _ = parse_priority(&v);
                let _ = parse_service_name(&v);
                let _ = parse_retry_after(&v);
            }
            // The inner parsers see bytes a HeaderValue would refuse too.
            let _ = parse_seconds(&bytes);
            let _ = parse_grpc(&bytes);
            let _ = Priority::from_bytes(&bytes);
        }

        #[test]
        fn parsers_never_panic_on_number_like_text(text in "[0-9.eE+-]{0,40}[HMSmun]?") {
            let v = HeaderValue::from_str(&text).unwrap();
            if let Some(d) = parse_timeout(&v) {
                // Whatever parses can become a deadline without overflowing the clock.
                let _ = d.as_secs_f64();
            }
            let _ = parse_grpc_timeout(&v);
        }

        #[test]
        fn what_parses_is_what_the_grammar_allows(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
            let Ok(v) = HeaderValue::from_bytes(&bytes) else { return Ok(()) };
            let trimmed = bytes.trim_ascii();
            if parse_timeout(&v).is_some() {
                prop_assert!(trimmed.len() <= MAX_TIMEOUT_LEN);
                prop_assert!(trimmed.iter().all(|b| b.is_ascii_digit() || b".eE+-".contains(b)));
            }
            if let Some(d) = parse_grpc_timeout(&v) {
                prop_assert!(bytes.len() >= 2 && bytes.len() <= 9);
                prop_assert!(d <= Duration::from_secs(99_999_999 * 3600));
            }
            if let Some(p) = parse_priority(&v) {
                prop_assert!(bytes.eq_ignore_ascii_case(p.as_str().as_bytes()));
            }
            if let Some(name) = parse_service_name(&v) {
                // Label-safe: short, and nothing that could break out of a Prometheus label.
                prop_assert!(!name.is_empty() && name.len() <= MAX_SERVICE_NAME_LEN);
                prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
            }
            if let Some(wait) = parse_retry_after(&v) {
                prop_assert!(wait <= MAX_RETRY_AFTER);
            }
        }

        #[test]
        fn retry_after_reads_any_delta_seconds_up_to_ten_digits(n in 0u64..10_000_000_000) {
            let v = HeaderValue::from_str(&n.to_string()).unwrap();
            prop_assert_eq!(parse_retry_after(&v), Some(Duration::from_secs(n)));
        }

        #[test]
        fn grpc_timeout_reads_every_well_formed_value(n in 0u64..100_000_000, unit in "[HMSmun]") {
            let v = HeaderValue::from_str(&format!("{n}{unit}")).unwrap();
            let expected = match unit.as_str() {
                "H" => Duration::from_secs(n * 3600),
                "M" => Duration::from_secs(n * 60),
                "S" => Duration::from_secs(n),
                "m" => Duration::from_millis(n),
                "u" => Duration::from_micros(n),
                _ => Duration::from_nanos(n),
            };
            prop_assert_eq!(parse_grpc_timeout(&v), Some(expected));
        }

        #[test]
        fn format_then_parse_round_trips_to_the_millisecond(millis in 0u64..10_000_000_000) {
            let d = Duration::from_millis(millis);
            prop_assert_eq!(parse_timeout(&format_timeout(d)), Some(d));
        }
    }
}
