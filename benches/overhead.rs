//! Per-call overhead of each layer's happy path over a no-op service, the full client and server
//! stacks, and the peers (`tower::retry`, `tower::timeout`, `tower::hedge`, tower-resilience's
//! retry and circuit breaker), all in one run.
//!
//! `cargo bench --bench overhead` (add `-- --quick` for a shorter run). Each iteration waits for
//! readiness, calls with the same request (built before the clock runs: a GET with a URI and two
//! headers), and drops the response: the bare no-op row is that cost alone, so a layer's
//! overhead is its row minus the bare row.

mod common;

use std::hint::black_box;

use common::{check_once, each_case, request, Req, Visitor};
use criterion::{criterion_group, criterion_main, Criterion};
use http::Response;
use tower::{Service, ServiceExt};

/// Requests built ahead of each timed stretch.
const CHUNK: u64 = 1_000;

struct Bench<'a> {
    criterion: &'a mut Criterion,
    runtime: tokio::runtime::Runtime,
}

impl Visitor for Bench<'_> {
    fn visit<S, B>(&mut self, group: &str, name: &str, mut service: S)
    where
        S: Service<Req, Response = Response<B>> + 'static,
        S::Error: std::fmt::Debug,
    {
        self.runtime.block_on(check_once(group, name, &mut service));
        let runtime = &self.runtime;
        self.criterion
            .benchmark_group(group)
            .bench_function(name, |b| {
                // One block_on per batch: the runtime's cost is outside the per-call figure,
                // and so is building the requests (in chunks, before the clock runs).
                b.iter_custom(|iters| {
                    runtime.block_on(async {
                        let mut elapsed = std::time::Duration::ZERO;
                        let mut left = iters;
                        while left > 0 {
                            let chunk = left.min(CHUNK);
                            let requests: Vec<Req> = (0..chunk).map(|_| request()).collect();
                            let start = tokio::time::Instant::now();
                            for request in requests {
                                let ready = service.ready().await.expect("ready");
                                let response = ready.call(request).await;
                                black_box(response.is_ok());
                                drop(black_box(response));
                            }
                            elapsed += start.elapsed();
                            left -= chunk;
                        }
                        elapsed
                    })
                })
            });
    }
}

fn overhead(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    each_case(&mut Bench { criterion, runtime });
}

criterion_group!(benches, overhead);
criterion_main!(benches);
