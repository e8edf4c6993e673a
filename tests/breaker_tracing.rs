//! The circuit breaker's transitions as tracing events.
//!
//! In a test binary of its own, with a global subscriber: tracing caches each callsite's interest
//! process-wide, so a thread-local subscriber in a binary whose other tests run in parallel can
//! miss an event that another thread registered first (this test was flaky that way in the unit
//! tests).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::{Layer, ServiceExt};
use tower_lifeline::circuit_breaker::{CircuitBreakerLayer, CircuitBreakerSettings, CircuitState};

/// Collects the fields of every tracing event, as `name=value` text.
#[derive(Clone, Default)]
struct EventLog(Arc<Mutex<Vec<String>>>);

impl tracing::Subscriber for EventLog {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={:?} ", field.name(), value));
            }
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

const HOST: &str = "http://backend:8080";

#[tokio::test(start_paused = true)]
async fn every_transition_is_a_tracing_event_with_scope_states_ratio_and_requests() {
    let log = EventLog::default();
    tracing::subscriber::set_global_default(log.clone()).unwrap();
    let settings = CircuitBreakerSettings::builder()
        .failure_threshold(0.5)
        .minimum_throughput(4)
        .sampling_duration(Duration::from_secs(10))
        .windows_count(10)
        .break_duration(Duration::from_secs(5))
        .build()
        .unwrap();
    let layer = CircuitBreakerLayer::new(settings).respond_502();
    let registry = layer.registry();
    // Answers 500 to a request carrying `x-fail`, 200 otherwise.
    let backend = tower::service_fn(|req: Request<()>| async move {
        let mut response = Response::new(());
        if req.headers().contains_key("x-fail") {
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        Ok::<_, std::convert::Infallible>(response)
    });
    for fail in [true, false, true, true] {
        let mut request = Request::get(format!("{HOST}/")).body(()).unwrap();
        if fail {
            request.headers_mut().insert("x-fail", "1".parse().unwrap());
        }
        layer.layer(backend).oneshot(request).await.unwrap();
    }
    assert_eq!(registry.state(HOST), Some(CircuitState::Open));
    let events = log.0.lock().unwrap();
    let transitions: Vec<&String> = events
        .iter()
        .filter(|e| e.contains("circuit breaker changed state"))
        .collect();
    assert_eq!(transitions.len(), 1, "{events:?}");
    let event = transitions[0];
    for field in [
        "scope=http://backend:8080",
        "from=\"closed\"",
        "to=\"open\"",
        "failure_ratio=0.75",
        "requests_in_window=4",
    ] {
        assert!(event.contains(field), "{field} in {event}");
    }
}
