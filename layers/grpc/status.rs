//! gRPC's status codes on the wire: reading `grpc-status`, naming codes for labels, the outcome
//! of a code, and the code that answers an HTTP refusal.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use tonic::Code;

use crate::outcome::Outcome;

/// `grpc-status`: the call's status code, in the trailers (or in the headers of a trailers-only
/// answer).
pub const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
/// `grpc-message`: the status message, percent-encoded.
pub const GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");
/// `grpc-retry-pushback-ms`: how long the server asks the client to wait before a retry (gRFC A6).
pub const GRPC_RETRY_PUSHBACK_MS: http::HeaderName =
    http::HeaderName::from_static("grpc-retry-pushback-ms");

/// Whether a request or response is gRPC: its content type is `application/grpc`, alone or
/// with a `+format` or `;parameters` after it.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| {
            let bytes = value.as_bytes();
            bytes.len() >= 16
                && bytes[..16].eq_ignore_ascii_case(b"application/grpc")
                && matches!(bytes.get(16), None | Some(b'+' | b';'))
        })
}

/// The code in a `grpc-status` header, if there is one. A value that is not a code gRPC defines
/// is [`Code::Unknown`], as gRPC's own clients read it.
pub fn status_in(headers: &HeaderMap) -> Option<Code> {
    headers
        .get(GRPC_STATUS)
        .map(|value| Code::from_bytes(value.as_bytes()))
}

/// The name of a code as gRPC's specification writes it (`UNAVAILABLE`): the metrics' `status`
/// label for a gRPC call, never mistaken for an HTTP status.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What a call that ended with `code` says about its destination, for the circuit breaker: the
/// codes that mean the server failed or could not serve (`UNKNOWN`, `DEADLINE_EXCEEDED`,
/// `RESOURCE_EXHAUSTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`, the gRPC twins of the HTTP
/// 5xx, 408 and 429 that count for HTTP) are a [`Failure`](Outcome::Failure); `CANCELLED` says
/// nothing about it; every other code is an answer, a [`Success`](Outcome::Success).
/// `UNIMPLEMENTED` is an answer too: a caller asking for a method the server does not have is
/// the caller's mistake, not the server's failure.
pub fn destination_outcome(code: Code) -> Outcome {
    match code {
        Code::Unknown
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Internal
        | Code::Unavailable
        | Code::DataLoss => Outcome::Failure,
        Code::Cancelled => Outcome::Cancelled,
        _ => Outcome::Success,
    }
}

/// The gRPC code that answers a gRPC request the stack refused with an HTTP status: gRPC's own
/// HTTP-to-gRPC mapping, except where the stack knows better what its refusal meant.
///
/// | HTTP | gRPC | why |
/// |---|---|---|
/// | 408, 504 | `DEADLINE_EXCEEDED` (4) | the deadline cannot be met, or a timeout cut the call |
/// | 503, 502, 429 | `UNAVAILABLE` (14) | shed, draining or overloaded: retryable by gRPC's policy |
/// | 413 | `RESOURCE_EXHAUSTED` (8) | a message over the size limit, as gRPC says it |
/// | 400 | `INTERNAL` (13) | gRPC's mapping |
/// | 401 | `UNAUTHENTICATED` (16) | gRPC's mapping |
/// | 403 | `PERMISSION_DENIED` (7) | gRPC's mapping |
/// | 404 | `UNIMPLEMENTED` (12) | gRPC's mapping |
/// | any other | `UNKNOWN` (2) | gRPC's mapping |
pub fn code_for_http(status: StatusCode) -> Code {
    match status.as_u16() {
        408 | 504 => Code::DeadlineExceeded,
        429 | 502 | 503 => Code::Unavailable,
        413 => Code::ResourceExhausted,
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        _ => Code::Unknown,
    }
}

/// Formats a remaining time as `grpc-timeout`: at most 8 digits and the finest unit they fit
/// (microseconds up to 100 s, then milliseconds, seconds, minutes, hours), rounded down so that
/// the receiver never believes it has more time than it has.
pub fn format_grpc_timeout(remaining: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let micros = remaining.as_micros();
    let (value, unit) = if micros <= MAX {
        (micros, 'u')
    } else if micros / 1_000 <= MAX {
        (micros / 1_000, 'm')
    } else if micros / 1_000_000 <= MAX {
        (micros / 1_000_000, 'S')
    } else if micros / 60_000_000 <= MAX {
        (micros / 60_000_000, 'M')
    } else {
        ((micros / 3_600_000_000).min(MAX), 'H')
    };
    // Digits and one letter: always a valid header value. Rare enough (one per gRPC attempt) that
    // the `String` is not worth a stack buffer.
    HeaderValue::try_from(format!("{value}{unit}")).expect("digits and a unit letter")
}

/// Percent-encodes a `grpc-message` as gRPC's specification asks: printable ASCII but `%` as is,
/// every other byte as `%XX`.
pub(crate) fn encode_message(message: &str) -> HeaderValue {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::try_from(out).expect("printable ASCII is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::parse_grpc_timeout;

    fn content_type(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn grpc_content_types() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;charset=utf-8",
        ] {
            assert!(is_grpc(&content_type(yes)), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/json",
            "application/grp",
        ] {
            assert!(!is_grpc(&content_type(no)), "{no}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn status_values_grpc_does_not_define_are_unknown() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_in(&headers), None);
        headers.insert(GRPC_STATUS, HeaderValue::from_static("14"));
        assert_eq!(status_in(&headers), Some(Code::Unavailable));
        headers.insert(GRPC_STATUS, HeaderValue::from_static("99"));
        assert_eq!(status_in(&headers), Some(Code::Unknown));
        headers.insert(GRPC_STATUS, HeaderValue::from_static("x"));
        assert_eq!(status_in(&headers), Some(Code::Unknown));
    }

    #[test]
    fn grpc_timeout_round_trips_rounded_down_in_eight_digits() {
        for (remaining, wire) in [
            (Duration::from_millis(250), "250000u"),
            (Duration::from_secs(99), "99000000u"),
            (Duration::from_secs(100), "100000m"),
            (Duration::from_nanos(1_999), "1u"),
            (Duration::from_secs(200_000), "200000S"),
            (Duration::from_secs(u64::MAX), "99999999H"),
        ] {
            let value = format_grpc_timeout(remaining);
            assert_eq!(value, wire);
            let back = parse_grpc_timeout(&value).expect("parses");
            assert!(back <= remaining, "{wire}");
        }
    }

    #[test]
    fn refusals_map_to_the_codes_the_table_gives() {
        assert_eq!(
            code_for_http(StatusCode::REQUEST_TIMEOUT),
            Code::DeadlineExceeded
        );
        assert_eq!(
            code_for_http(StatusCode::GATEWAY_TIMEOUT),
            Code::DeadlineExceeded
        );
        assert_eq!(
            code_for_http(StatusCode::SERVICE_UNAVAILABLE),
            Code::Unavailable
        );
        assert_eq!(code_for_http(StatusCode::NOT_FOUND), Code::Unimplemented);
        assert_eq!(code_for_http(StatusCode::IM_A_TEAPOT), Code::Unknown);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("shed: 100% busy"), "shed: 100%25 busy");
        assert_eq!(encode_message("é\n"), "%C3%A9%0A");
    }

    #[test]
    fn only_server_failures_count_against_the_destination() {
        assert_eq!(destination_outcome(Code::Unavailable), Outcome::Failure);
        assert_eq!(destination_outcome(Code::Internal), Outcome::Failure);
        assert_eq!(destination_outcome(Code::Ok), Outcome::Success);
        assert_eq!(destination_outcome(Code::NotFound), Outcome::Success);
        assert_eq!(destination_outcome(Code::Unimplemented), Outcome::Success);
        assert_eq!(destination_outcome(Code::Cancelled), Outcome::Cancelled);
    }
}
