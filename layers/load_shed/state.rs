//! A load shedder's settings, which each clone of the layer may change, and its state (the
//! limit, the requests in flight, the counters, the route table), which they all share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use http::{HeaderValue, Request};

use super::adaptive::Controller;
use super::route::{RouteEstimate, RouteKey};
use super::stats::{Counters, LoadShedStats};
use crate::context::Priority;

/// What the layer's setters change. A clone of the layer gets a copy: changing it changes that
/// clone's settings only, never the shared limit.
#[derive(Clone)]
pub(super) struct Settings {
    pub(super) capacity: usize,
    pub(super) low_limit: usize,
    pub(super) normal_limit: usize,
    pub(super) retry_after: HeaderValue,
    pub(super) max_routes: usize,
    pub(super) deadline_admission: bool,
    pub(super) route_key: RouteKey,
}

/// A layer's settings and the state it shares with its clones, behind one `Arc` for a service
/// to clone (axum clones a route's service for every request). A setter copies the settings on
/// write and keeps the `Arc<State>`.
#[derive(Clone)]
pub(super) struct Config {
    pub(super) settings: Settings,
    pub(super) state: Arc<State>,
}

/// What every service of a layer and its clones share, so that `Router::layer` (which wraps each
/// route separately) still limits the whole server.
#[derive(Default)]
pub(super) struct State {
    /// The adaptive limit, when there is one; the settings' fixed limits apply otherwise.
    pub(super) adaptive: Option<Controller>,
    pub(super) in_flight: AtomicUsize,
    pub(super) counters: Counters,
    pub(super) routes: RwLock<HashMap<String, Arc<RouteEstimate>>>,
}

impl State {
    pub(super) fn stats(&self, settings: &Settings) -> LoadShedStats {
        let c = &self.counters;
        LoadShedStats {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            limit: self.limit(settings, Priority::High),
            admitted: u64::try_from(c.admitted.sum()).unwrap_or(0),
            shed_overload: [0, 1, 2].map(|i| c.shed_overload[i].load(Ordering::Relaxed)),
            refused_deadline: c.refused_deadline.load(Ordering::Relaxed),
            released_at_deadline: c.released_at_deadline.load(Ordering::Relaxed),
        }
    }

    fn limit(&self, settings: &Settings, priority: Priority) -> usize {
        if let Some(adaptive) = &self.adaptive {
            let limit = adaptive.limit();
            return match priority {
                Priority::Low => (limit / 2).max(1),
                Priority::Normal => limit - (limit / 5).max(usize::from(limit > 1)),
                Priority::High => limit,
            };
        }
        match priority {
            Priority::Low => settings.low_limit,
            Priority::Normal => settings.normal_limit,
            Priority::High => settings.capacity,
        }
    }

    pub(super) fn shed_for_overload(&self) -> u64 {
        let shed = &self.counters.shed_overload;
        shed.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Takes a slot if fewer than the priority's limit are in flight.
    pub(super) fn try_acquire(
        self: &Arc<Self>,
        settings: &Settings,
        priority: Priority,
    ) -> Option<Slot> {
        let limit = self.limit(settings, priority);
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot {
                state: self.clone(),
                held: true,
            })
    }

    /// The estimate of the request's route, creating it if the table has room.
    pub(super) fn route<B>(
        &self,
        settings: &Settings,
        req: &Request<B>,
    ) -> Option<Arc<RouteEstimate>> {
        let key = settings.route_key.of(req)?;
        let key = key.as_ref();
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = routes.get(key) {
            return Some(found.clone());
        }
        let full = routes.len() >= settings.max_routes;
        drop(routes);
        if full {
            return None;
        }
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        if routes.len() >= settings.max_routes && !routes.contains_key(key) {
            return None;
        }
        Some(routes.entry(key.to_owned()).or_default().clone())
    }
}

/// One admitted request's place in the limit, given back on drop or at its deadline.
pub(super) struct Slot {
    pub(super) state: Arc<State>,
    pub(super) held: bool,
}

impl Slot {
    /// Gives the place back now; true if it was still held.
    pub(super) fn release(&mut self) -> bool {
        let held = std::mem::replace(&mut self.held, false);
        if held {
            self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        held
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}
