use std::fmt;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use tower_layer::Layer;

use super::registry::{BreakerRegistry, OnTransition};
use super::table::Table;
use super::{CircuitBreaker, CircuitBreakerSettings, CircuitOpen};
use crate::classify::{Classify, DefaultClassifier};
use crate::error::BoxError;
use crate::headers;

/// What [`CircuitBreaker`] gives its caller when it refuses a call.
pub trait OnOpen<B>: Clone {
    /// Turns the refusal into the call's outcome.
    fn on_open(&self, open: CircuitOpen) -> Result<Response<B>, BoxError>;
}

/// Answer a synthetic `502 Bad Gateway` carrying `X-Circuit-Breaker: 1` and `X-Do-Not-Retry: 1`,
/// as aio-request does, so the strategy layer above does not retry it
/// ([`respond_502`](CircuitBreakerLayer::respond_502)). Needs a body type with a `Default`
/// (axum's `Body`, `Full<Bytes>`, `BoxBody`...).
#[derive(Debug, Clone, Copy, Default)]
pub struct Respond502;

impl<B: Default> OnOpen<B> for Respond502 {
    fn on_open(&self, open: CircuitOpen) -> Result<Response<B>, BoxError> {
        tracing::debug!(%open, "answering 502 for an open circuit");
        let mut response = Response::new(B::default());
        *response.status_mut() = StatusCode::BAD_GATEWAY;
        let headers = response.headers_mut();
        headers.insert(headers::X_CIRCUIT_BREAKER, headers::FLAG_SET);
        headers.insert(headers::X_DO_NOT_RETRY, headers::FLAG_SET);
        Ok(response)
    }
}

/// Fail with a [`CircuitOpen`] error naming the scope and when the next probe may go (the
/// default).
///
/// Every refusal in this crate is a typed error by default, as tower's own are (`Elapsed`,
/// `Overloaded`): the caller matches on what happened, and the wire answer aio-request gives
/// is one call away ([`respond_502`](CircuitBreakerLayer::respond_502) here,
/// [`respond_408`](crate::deadline::ClientDeadlineLayer::respond_408) for the deadline).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReturnCircuitOpen;

impl<B> OnOpen<B> for ReturnCircuitOpen {
    fn on_open(&self, open: CircuitOpen) -> Result<Response<B>, BoxError> {
        tracing::debug!(%open, "refusing a call");
        Err(Box::new(open))
    }
}

/// Chooses the scope of a request: requests with the same scope share one breaker.
///
/// The scope is written into a buffer reused by every call on the thread, so choosing it does
/// not allocate.
///
/// Any `Fn(&Request<B>, &mut String) + Clone` closure is a `ScopeBy`:
///
/// ```
/// use http::Request;
/// use tower_lifeline::circuit_breaker::CircuitBreakerLayer;
///
/// // One breaker per destination and method.
/// let layer = CircuitBreakerLayer::default().scope_by(|req: &Request<()>, scope: &mut String| {
///     scope.push_str(req.method().as_str());
///     scope.push(' ');
///     if let Some(authority) = req.uri().authority() {
///         scope.push_str(authority.as_str());
///     }
/// });
/// # let _ = layer;
/// ```
///
/// Keep the number of distinct scopes small: the table is bounded and evicts to stay so.
pub trait ScopeBy<B>: Clone {
    /// Writes the scope of `request` into `scope`, which is empty on entry.
    fn scope(&self, request: &Request<B>, scope: &mut String);
}

impl<B, F> ScopeBy<B> for F
where
    F: Fn(&Request<B>, &mut String) + Clone,
{
    fn scope(&self, request: &Request<B>, scope: &mut String) {
        self(request, scope)
    }
}

/// The default scope: the destination, `scheme://authority` of the request URI (`http` when the
/// URI names no scheme). A URI without authority falls back to the `Host` header, then to the
/// empty scope shared by all such requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByDestination;

impl<B> ScopeBy<B> for ByDestination {
    fn scope(&self, request: &Request<B>, scope: &mut String) {
        crate::destination::write_destination(request.uri(), request.headers(), scope);
    }
}

/// Opens a circuit per destination after too many failures, refuses calls while open, and lets
/// one probe through after the break. See the [module docs](super).
///
/// Every service this layer makes shares one table of scopes: cloning the layer or the services
/// shares it too.
#[derive(Clone)]
pub struct CircuitBreakerLayer<C = DefaultClassifier, K = ByDestination, M = ReturnCircuitOpen> {
    pub(super) table: Arc<Table>,
    pub(super) settings: CircuitBreakerSettings,
    pub(super) classifier: Arc<C>,
    pub(super) scope_by: K,
    pub(super) on_open: M,
}

impl CircuitBreakerLayer {
    /// A breaker with these settings, the [`DefaultClassifier`], one scope per destination and
    /// a [`CircuitOpen`] error when open.
    pub fn new(settings: CircuitBreakerSettings) -> Self {
        CircuitBreakerLayer {
            table: Arc::new(Table::new(&settings)),
            settings,
            classifier: Arc::new(DefaultClassifier::new()),
            scope_by: ByDestination,
            on_open: ReturnCircuitOpen,
        }
    }
}

impl Default for CircuitBreakerLayer {
    /// [`CircuitBreakerSettings::default`] (Polly v8's defaults).
    fn default() -> Self {
        Self::new(CircuitBreakerSettings::default())
    }
}

impl<C, K, M> CircuitBreakerLayer<C, K, M> {
    /// Decides what counts as a failure; the same classifier as the strategies, so that both
    /// agree.
    pub fn classifier<C2: Classify>(self, classifier: C2) -> CircuitBreakerLayer<C2, K, M> {
        CircuitBreakerLayer {
            table: self.table,
            settings: self.settings,
            classifier: Arc::new(classifier),
            scope_by: self.scope_by,
            on_open: self.on_open,
        }
    }

    /// Chooses the scope of each request (default: [`ByDestination`]).
    pub fn scope_by<K2>(self, scope_by: K2) -> CircuitBreakerLayer<C, K2, M> {
        CircuitBreakerLayer {
            table: self.table,
            settings: self.settings,
            classifier: self.classifier,
            scope_by,
            on_open: self.on_open,
        }
    }

    /// Fail refused calls with a [`CircuitOpen`] error (the default).
    pub fn return_error(self) -> CircuitBreakerLayer<C, K, ReturnCircuitOpen> {
        self.on_open(ReturnCircuitOpen)
    }

    /// Answer refused calls with aio-request's synthetic 502 ([`Respond502`]) instead of an
    /// error: for code that handles responses only.
    pub fn respond_502(self) -> CircuitBreakerLayer<C, K, Respond502> {
        self.on_open(Respond502)
    }

    /// Chooses what a refused call gives its caller (default: [`ReturnCircuitOpen`]).
    pub fn on_open<M2>(self, on_open: M2) -> CircuitBreakerLayer<C, K, M2> {
        CircuitBreakerLayer {
            table: self.table,
            settings: self.settings,
            classifier: self.classifier,
            scope_by: self.scope_by,
            on_open,
        }
    }

    /// Adds a listener for state changes (see [`BreakerRegistry::on_transition`]).
    pub fn on_transition(self, listener: impl OnTransition) -> Self {
        self.registry().on_transition(listener);
        self
    }

    /// The states of the scopes, shared by every service made by this layer.
    pub fn registry(&self) -> BreakerRegistry {
        BreakerRegistry {
            table: self.table.clone(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &CircuitBreakerSettings {
        &self.settings
    }
}

impl<S, C, K: Clone, M: Clone> Layer<S> for CircuitBreakerLayer<C, K, M> {
    type Service = CircuitBreaker<S, C, K, M>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_layer(inner, self)
    }
}

impl<C, K, M: fmt::Debug> fmt::Debug for CircuitBreakerLayer<C, K, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("settings", &self.settings)
            .field("on_open", &self.on_open)
            .finish_non_exhaustive()
    }
}
