//! Spans that nobody records cost nothing more than their creation.

use tracing::span::Entered;
use tracing::Span;

/// Enters `span` if it is recorded. A span nobody records is not entered: with tracing's `log`
/// feature on (axum's default `tower-log` turns it on) and no subscriber set, entering, leaving
/// and recording on it each go through `log`'s logger, several times per request for nothing.
pub(crate) fn enter_recorded(span: &Span) -> Option<Entered<'_>> {
    (!span.is_disabled()).then(|| span.enter())
}
