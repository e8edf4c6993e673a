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
/// use tower_lifeline::propagation::PropagateLayer;
/// use tower_lifeline::ServiceBuilderExt;
///
/// // The client side: deadline, then propagation closest to the wire.
/// let client_layers = ServiceBuilder::new()
///     .client_deadline(Duration::from_secs(5))
///     .propagate(PropagateLayer::new().service_name("checkout").unwrap());
/// # let _ = client_layers;
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

    /// Client propagation of deadline, priority and service name
    /// ([`PropagateLayer`](crate::propagation::PropagateLayer)).
    #[cfg(feature = "propagation")]
    fn propagate(
        self,
        layer: crate::propagation::PropagateLayer,
    ) -> ServiceBuilder<Stack<crate::propagation::PropagateLayer, L>>;

    /// Client circuit breaker per destination
    /// ([`CircuitBreakerLayer`](crate::circuit_breaker::CircuitBreakerLayer)). Keep the layer,
    /// or its [`registry`](crate::circuit_breaker::CircuitBreakerLayer::registry), to watch the
    /// breakers' states.
    #[cfg(feature = "circuit-breaker")]
    fn circuit_breaker<C, K, M>(
        self,
        layer: crate::circuit_breaker::CircuitBreakerLayer<C, K, M>,
    ) -> ServiceBuilder<Stack<crate::circuit_breaker::CircuitBreakerLayer<C, K, M>, L>>;
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

    #[cfg(feature = "propagation")]
    fn propagate(
        self,
        layer: crate::propagation::PropagateLayer,
    ) -> ServiceBuilder<Stack<crate::propagation::PropagateLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "circuit-breaker")]
    fn circuit_breaker<C, K, M>(
        self,
        layer: crate::circuit_breaker::CircuitBreakerLayer<C, K, M>,
    ) -> ServiceBuilder<Stack<crate::circuit_breaker::CircuitBreakerLayer<C, K, M>, L>> {
        self.layer(layer)
    }
}
