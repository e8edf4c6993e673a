use std::fmt;
use std::time::Duration;

use http::Method;

use super::Delays;

/// How many attempts a request gets, and how they are spaced: the heart of aio-request.
///
/// Put one in a request's extensions to override the layer's choice for that request
/// (requests with a non-idempotent method and no `Idempotency-Key` still get one attempt).
///
/// Made by its constructors ([`single`](Self::single), [`sequential`](Self::sequential),
/// [`parallel`](Self::parallel), [`until_deadline`](Self::until_deadline)), which hold its
/// rules (at least one attempt); the variants can be matched (with `..`) but not built outside
/// the crate, so that nothing skips those rules.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Strategy {
    /// One attempt (aio-request's `single_attempt_strategy`).
    Single,
    /// After a rejected response or a transport error, wait the delay, then try again; stop at
    /// `attempts`, at an accepted response, or when the next delay would pass the deadline. The
    /// caller gets the last outcome (aio-request's `sequential_strategy`).
    #[non_exhaustive]
    Sequential {
        /// Attempts in all, the first included.
        attempts: u32,
        /// The pause before each retry.
        delays: Delays,
    },
    /// Hedging: attempt `k` starts `delays(k)` after the first unless an accepted response has
    /// arrived; the first accepted response wins and the others are cancelled. A rejected
    /// response does not end the race while others are in flight, and when every attempt in
    /// flight has been rejected the next one starts at once (aio-request's `parallel_strategy`,
    /// gRPC's hedging policy).
    #[non_exhaustive]
    Parallel {
        /// Attempts in all, the first included.
        attempts: u32,
        /// When each attempt starts, counted from the first.
        delays: Delays,
    },
    /// Repeats `inner` until an accepted response or the deadline, waiting `delays` between
    /// rounds (aio-request's `retry_until_deadline_expired`). Without a deadline, one round.
    #[non_exhaustive]
    UntilDeadline {
        /// The strategy of each round.
        inner: Box<Strategy>,
        /// The pause before each new round.
        delays: Delays,
    },
}

impl Strategy {
    /// One attempt.
    pub fn single() -> Self {
        Strategy::Single
    }

    /// Sequential retries: `attempts` in all (at least one).
    pub fn sequential(attempts: u32, delays: Delays) -> Self {
        Strategy::Sequential {
            attempts: attempts.max(1),
            delays,
        }
    }

    /// Hedged attempts: `attempts` in all (at least one).
    pub fn parallel(attempts: u32, delays: Delays) -> Self {
        Strategy::Parallel {
            attempts: attempts.max(1),
            delays,
        }
    }

    /// Rounds of `inner` until accepted or out of time.
    pub fn until_deadline(inner: Strategy, delays: Delays) -> Self {
        Strategy::UntilDeadline {
            inner: Box::new(inner),
            delays,
        }
    }

    /// Whether this strategy can ever send more than one attempt.
    pub fn may_repeat(&self) -> bool {
        match self {
            Strategy::Single => false,
            Strategy::Sequential { attempts, .. } | Strategy::Parallel { attempts, .. } => {
                *attempts > 1
            }
            Strategy::UntilDeadline { .. } => true,
        }
    }

    /// aio-request's default for safe methods: three sequential attempts with its
    /// `linear_backoff_delays()`: `0 + k * 50 ms`, ±20%.
    pub fn default_retries() -> Self {
        Strategy::sequential(3, Delays::linear(Duration::ZERO, Duration::from_millis(50)))
    }
}

/// Chooses a strategy by the request's method: aio-request's `MethodBasedStrategy`.
///
/// By default `GET`, `HEAD`, `OPTIONS` and `TRACE` get [`Strategy::default_retries`]; `PUT` and
/// `DELETE` (idempotent by RFC 9110, but often not in practice), `POST`, `PATCH` and any other
/// method get one attempt, unless the request carries `Idempotency-Key`, which makes it safe to
/// retry: then it gets [`idempotent`](Self::idempotent) (default retries).
///
/// `POST`, `PATCH` and unknown methods without `Idempotency-Key` never get more than one
/// attempt from the configuration here, whatever it says: a non-idempotent request is not sent
/// twice on the client's own initiative. A [`Strategy`] in a request's extensions is the
/// caller's word for that request and is honoured for every method, as aio-request honours the
/// strategy passed to a call. (An attempt that never reached the server may be sent again for
/// any method: see [`StrategyLayer::connection_attempts`](super::StrategyLayer::connection_attempts).)
#[derive(Clone)]
pub struct MethodStrategies {
    safe: Strategy,
    idempotent: Strategy,
    overrides: Vec<(Method, Strategy)>,
}

impl fmt::Debug for MethodStrategies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MethodStrategies")
            .field("safe", &self.safe)
            .field("idempotent", &self.idempotent)
            .field("overrides", &self.overrides)
            .finish()
    }
}

impl Default for MethodStrategies {
    fn default() -> Self {
        MethodStrategies {
            safe: Strategy::default_retries(),
            idempotent: Strategy::default_retries(),
            overrides: Vec::new(),
        }
    }
}

impl MethodStrategies {
    /// The defaults described above.
    pub fn new() -> Self {
        Self::default()
    }

    /// The strategy of `GET`, `HEAD`, `OPTIONS`, `TRACE`.
    pub fn safe(mut self, strategy: Strategy) -> Self {
        self.safe = strategy;
        self
    }

    /// The strategy of requests of other methods that carry `Idempotency-Key`.
    pub fn idempotent(mut self, strategy: Strategy) -> Self {
        self.idempotent = strategy;
        self
    }

    /// The strategy of one method, in place of the defaults above.
    pub fn method(mut self, method: Method, strategy: Strategy) -> Self {
        self.overrides.retain(|(m, _)| *m != method);
        self.overrides.push((method, strategy));
        self
    }

    /// The strategy for a request: a per-request override first, then the method's.
    pub(crate) fn choose<'a>(
        &'a self,
        method: &Method,
        has_idempotency_key: bool,
        per_request: Option<&'a Strategy>,
    ) -> &'a Strategy {
        const SINGLE: &Strategy = &Strategy::Single;
        let idempotent = is_safe(method) || *method == Method::PUT || *method == Method::DELETE;
        let never_twice = !(has_idempotency_key || idempotent);
        if let Some(asked) = per_request {
            // The caller's explicit word for this one request.
            return asked;
        }
        let chosen = self
            .overrides
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, s)| s)
            .unwrap_or_else(|| {
                if is_safe(method) {
                    &self.safe
                } else if has_idempotency_key {
                    &self.idempotent
                } else {
                    SINGLE
                }
            });
        if never_twice && chosen.may_repeat() {
            tracing::trace!(%method, "non-idempotent request without Idempotency-Key: one attempt");
            return SINGLE;
        }
        chosen
    }
}

fn is_safe(method: &Method) -> bool {
    *method == Method::GET
        || *method == Method::HEAD
        || *method == Method::OPTIONS
        || *method == Method::TRACE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempts(s: &Strategy) -> u32 {
        match s {
            Strategy::Single => 1,
            Strategy::Sequential { attempts, .. } | Strategy::Parallel { attempts, .. } => {
                *attempts
            }
            Strategy::UntilDeadline { .. } => u32::MAX,
        }
    }

    #[test]
    fn defaults_by_method() {
        let m = MethodStrategies::new();
        for (method, key, expected) in [
            (Method::GET, false, 3),
            (Method::HEAD, false, 3),
            (Method::OPTIONS, false, 3),
            (Method::POST, false, 1),
            (Method::PUT, false, 1),
            (Method::PATCH, false, 1),
            (Method::DELETE, false, 1),
            (Method::POST, true, 3),
            (Method::PATCH, true, 3),
            (Method::DELETE, true, 3),
        ] {
            assert_eq!(
                attempts(m.choose(&method, key, None)),
                expected,
                "{method} key={key}"
            );
        }
    }

    #[test]
    fn post_without_key_is_never_repeated_by_configuration_but_a_request_strategy_is_honoured() {
        let hedge = Strategy::parallel(3, Delays::constant(Duration::from_millis(10)));
        let m = MethodStrategies::new()
            .method(Method::POST, hedge.clone())
            .method(Method::PATCH, hedge.clone());
        let custom = Method::from_bytes(b"PURGE").unwrap();
        for method in [Method::POST, Method::PATCH, custom] {
            assert_eq!(attempts(m.choose(&method, false, None)), 1, "{method}");
            // The caller's explicit word for one request.
            assert_eq!(
                attempts(m.choose(&method, false, Some(&hedge))),
                3,
                "{method} override"
            );
            assert_eq!(
                attempts(m.choose(&method, true, Some(&hedge))),
                3,
                "{method} with key"
            );
        }
    }

    #[test]
    fn per_request_override_wins_for_idempotent_methods() {
        let m = MethodStrategies::new();
        assert_eq!(
            attempts(m.choose(&Method::GET, false, Some(&Strategy::Single))),
            1
        );
        let put = m.clone().method(Method::PUT, Strategy::default_retries());
        assert_eq!(attempts(put.choose(&Method::PUT, false, None)), 3);
    }
}
