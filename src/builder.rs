//! `ServiceBuilderExt`: one method per layer on `tower::ServiceBuilder`.

#[allow(unused_imports)]
use std::time::Duration;

use tower::ServiceBuilder;
#[allow(unused_imports)]
use tower_layer::Stack;

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// Adds a method per tower-lifeline layer to [`tower::ServiceBuilder`], each behind its feature.
///
/// ```
/// use std::time::Duration;
/// use tower::ServiceBuilder;
/// use tower_lifeline::ServiceBuilderExt;
///
/// // The server side: the caller's deadline (20 s if it sent none), then its priority.
/// let server_layers = ServiceBuilder::new()
///     .server_deadline(Duration::from_secs(20))
///     .server_priority();
/// # let _ = server_layers;
/// ```
///
/// This trait is sealed: it is implemented for `ServiceBuilder` only.
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// Server deadline ([`ServerDeadlineLayer`](crate::deadline::ServerDeadlineLayer)) with the
    /// given default timeout and the other settings at their defaults.
    #[cfg(feature = "deadline")]
    fn server_deadline(
        self,
        default_timeout: Duration,
    ) -> ServiceBuilder<Stack<crate::deadline::ServerDeadlineLayer, L>>;

    /// Server priority ([`ServerPriorityLayer`](crate::priority::ServerPriorityLayer)),
    /// trusting the caller's header.
    #[cfg(feature = "priority")]
    fn server_priority(self) -> ServiceBuilder<Stack<crate::priority::ServerPriorityLayer, L>>;

    /// Client deadline ([`ClientDeadlineLayer`](crate::deadline::ClientDeadlineLayer)) with the
    /// given default timeout, failing with a typed error on expiry.
    #[cfg(feature = "deadline")]
    fn client_deadline(
        self,
        default_timeout: Duration,
    ) -> ServiceBuilder<Stack<crate::deadline::ClientDeadlineLayer, L>>;

    /// Request strategies ([`StrategyLayer`](crate::strategy::StrategyLayer)): by method, with
    /// the default retry budget. Put it under `client_deadline` and over `propagate`.
    #[cfg(feature = "strategy")]
    fn strategy(
        self,
        layer: crate::strategy::StrategyLayer,
    ) -> ServiceBuilder<Stack<crate::strategy::StrategyLayer, L>>;

    /// Client propagation of deadline, priority and service name
    /// ([`PropagateLayer`](crate::propagation::PropagateLayer)).
    #[cfg(feature = "propagation")]
    fn propagate(
        self,
        layer: crate::propagation::PropagateLayer,
    ) -> ServiceBuilder<Stack<crate::propagation::PropagateLayer, L>>;

    /// Load shedding by priority and deadline
    /// ([`LoadShedLayer`](crate::load_shed::LoadShedLayer)) with the given capacity and the
    /// other settings at their defaults. Put it inside the deadline and priority layers.
    ///
    /// Named `shed_load`, not `load_shed`, because tower's own `ServiceBuilder::load_shed`
    /// (feature `load-shed`, in tower's `full`) is an inherent method and would shadow it.
    #[cfg(feature = "load-shed")]
    fn shed_load(
        self,
        capacity: usize,
    ) -> ServiceBuilder<Stack<crate::load_shed::LoadShedLayer, L>>;

    /// The graceful-shutdown drain layer of `shutdown`
    /// ([`DrainLayer`](crate::shutdown::DrainLayer)): `Connection: close` while draining.
    #[cfg(feature = "shutdown")]
    fn drain_on(
        self,
        shutdown: &crate::shutdown::Shutdown,
    ) -> ServiceBuilder<Stack<crate::shutdown::DrainLayer, L>>;

    /// A client attempt timeout ([`AttemptTimeoutLayer`](crate::timeout::AttemptTimeoutLayer)):
    /// each attempt gets min(`timeout`, time left before the deadline).
    #[cfg(feature = "timeout")]
    fn attempt_timeout(
        self,
        timeout: Duration,
    ) -> ServiceBuilder<Stack<crate::timeout::AttemptTimeoutLayer, L>>;

    /// A server timeout answering `504` ([`ServerTimeoutLayer`](crate::timeout::ServerTimeoutLayer)).
    #[cfg(feature = "timeout")]
    fn server_timeout(
        self,
        timeout: Duration,
    ) -> ServiceBuilder<Stack<crate::timeout::ServerTimeoutLayer, L>>;

    /// Client circuit breaker per destination
    /// ([`CircuitBreakerLayer`](crate::circuit_breaker::CircuitBreakerLayer)). Keep the layer,
    /// or its [`registry`](crate::circuit_breaker::CircuitBreakerLayer::registry), to watch the
    /// breakers' states.
    #[cfg(feature = "circuit-breaker")]
    fn circuit_breaker<C, K, M>(
        self,
        layer: crate::circuit_breaker::CircuitBreakerLayer<C, K, M>,
    ) -> ServiceBuilder<Stack<crate::circuit_breaker::CircuitBreakerLayer<C, K, M>, L>>;

    /// Reads each response body whole, up to `max` bytes, inside the attempt
    /// ([`ReadBodyLayer`](crate::read_body::ReadBodyLayer)): put it just above the transport, so
    /// that a body that fails is a failed attempt for the layers above.
    #[cfg(feature = "read-body")]
    fn read_body(self, max: usize) -> ServiceBuilder<Stack<crate::read_body::ReadBodyLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    #[cfg(feature = "deadline")]
    fn server_deadline(
        self,
        default_timeout: Duration,
    ) -> ServiceBuilder<Stack<crate::deadline::ServerDeadlineLayer, L>> {
        self.layer(crate::deadline::ServerDeadlineLayer::new().default_timeout(default_timeout))
    }

    #[cfg(feature = "priority")]
    fn server_priority(self) -> ServiceBuilder<Stack<crate::priority::ServerPriorityLayer, L>> {
        self.layer(crate::priority::ServerPriorityLayer::new())
    }

    #[cfg(feature = "deadline")]
    fn client_deadline(
        self,
        default_timeout: Duration,
    ) -> ServiceBuilder<Stack<crate::deadline::ClientDeadlineLayer, L>> {
        self.layer(crate::deadline::ClientDeadlineLayer::new().default_timeout(default_timeout))
    }

    #[cfg(feature = "strategy")]
    fn strategy(
        self,
        layer: crate::strategy::StrategyLayer,
    ) -> ServiceBuilder<Stack<crate::strategy::StrategyLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "propagation")]
    fn propagate(
        self,
        layer: crate::propagation::PropagateLayer,
    ) -> ServiceBuilder<Stack<crate::propagation::PropagateLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "load-shed")]
    fn shed_load(
        self,
        capacity: usize,
    ) -> ServiceBuilder<Stack<crate::load_shed::LoadShedLayer, L>> {
        self.layer(crate::load_shed::LoadShedLayer::new(capacity))
    }

    #[cfg(feature = "shutdown")]
    fn drain_on(
        self,
        shutdown: &crate::shutdown::Shutdown,
    ) -> ServiceBuilder<Stack<crate::shutdown::DrainLayer, L>> {
        self.layer(shutdown.layer())
    }

    #[cfg(feature = "timeout")]
    fn attempt_timeout(
        self,
        timeout: Duration,
    ) -> ServiceBuilder<Stack<crate::timeout::AttemptTimeoutLayer, L>> {
        self.layer(crate::timeout::AttemptTimeoutLayer::new(timeout))
    }

    #[cfg(feature = "timeout")]
    fn server_timeout(
        self,
        timeout: Duration,
    ) -> ServiceBuilder<Stack<crate::timeout::ServerTimeoutLayer, L>> {
        self.layer(crate::timeout::ServerTimeoutLayer::new(timeout))
    }

    #[cfg(feature = "circuit-breaker")]
    fn circuit_breaker<C, K, M>(
        self,
        layer: crate::circuit_breaker::CircuitBreakerLayer<C, K, M>,
    ) -> ServiceBuilder<Stack<crate::circuit_breaker::CircuitBreakerLayer<C, K, M>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "read-body")]
    fn read_body(self, max: usize) -> ServiceBuilder<Stack<crate::read_body::ReadBodyLayer, L>> {
        self.layer(crate::read_body::ReadBodyLayer::new(max))
    }
}
