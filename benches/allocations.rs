//! Heap allocations per call: each layer's happy path over a no-op service, the full stacks and
//! the peers (the same cases as the `overhead` bench), counted by a global allocator.
//!
//! `cargo bench --bench allocations` prints two tables. In the first, the bare row is the
//! request's own allocations (its URI and two headers); a layer's own figure is its row minus
//! the bare row. The second counts whole requests on loopback sockets, one at a time: the
//! `Client` preset against bare hyper-util, and over reqwest against bare reqwest, each sending
//! `GET /hello` to the same bare axum server in the same process (the server's allocations are
//! in every row alike).

mod common;
mod loopback;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use std::future::Future;

use common::{check_once, each_case, request, Req, Visitor};
use http::Response;
use hyper_util::rt::TokioExecutor;
use loopback::AnyClient;
use tower::{Service, ServiceExt};
use tower_lifeline::client::Client;
use tower_lifeline::strategy::{Strategy, StrategyLayer};

/// Counts every allocation and reallocation, then hands it to the system allocator.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds `GlobalAlloc`'s contract.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CALLS: u64 = 10_000;

struct Count {
    runtime: tokio::runtime::Runtime,
    bare: Option<f64>,
}

impl Visitor for Count {
    fn visit<S, B>(&mut self, group: &str, name: &str, mut service: S)
    where
        S: Service<Req, Response = Response<B>> + 'static,
        S::Error: std::fmt::Debug,
    {
        let (allocations, bytes) = self.runtime.block_on(async {
            // Warm up: first calls fill lazily built tables (label sets, histograms).
            for _ in 0..100 {
                check_once(group, name, &mut service).await;
            }
            let (a0, b0) = (
                ALLOCATIONS.load(Ordering::Relaxed),
                BYTES.load(Ordering::Relaxed),
            );
            for _ in 0..CALLS {
                let ready = service.ready().await.expect("ready");
                drop(ready.call(request()).await);
            }
            (
                ALLOCATIONS.load(Ordering::Relaxed) - a0,
                BYTES.load(Ordering::Relaxed) - b0,
            )
        });
        let per_call = allocations as f64 / CALLS as f64;
        let bare = *self.bare.get_or_insert(per_call);
        println!(
            "| {group} | {name} | {per_call:.2} | {:+.2} | {:.0} |",
            per_call - bare,
            bytes as f64 / CALLS as f64
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would too: nothing else to parse.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    println!("| group | case | allocations per call | over bare | bytes per call |");
    println!("|---|---|---:|---:|---:|");
    let mut count = Count {
        runtime,
        bare: None,
    };
    each_case(&mut count);
    on_sockets(&count.runtime);
}

const REQUESTS: u64 = 2_000;

/// Allocations of `REQUESTS` calls of `call`, one at a time, after a warm-up.
async fn count_requests<F: Future<Output = bool>>(mut call: impl FnMut() -> F) -> (f64, f64) {
    for _ in 0..50 {
        assert!(call().await, "the warm-up request failed");
    }
    let (a0, b0) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    for _ in 0..REQUESTS {
        assert!(call().await, "a request failed");
    }
    (
        (ALLOCATIONS.load(Ordering::Relaxed) - a0) as f64 / REQUESTS as f64,
        (BYTES.load(Ordering::Relaxed) - b0) as f64 / REQUESTS as f64,
    )
}

/// The second table: whole requests on loopback, each variant beside its bare peer.
fn on_sockets(runtime: &tokio::runtime::Runtime) {
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(async move { axum::serve(listener, loopback::app()).await });
        let url = format!("http://{addr}/hello");

        let count = |client: AnyClient| {
            let url = url.clone();
            async move { count_requests(|| client.get(&url)).await }
        };
        let bare_hyper = count(AnyClient::Bare(
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http(),
        ))
        .await;
        let preset = count(AnyClient::Lifeline(
            Client::builder().build().expect("client"),
        ))
        .await;
        let minimal = count(AnyClient::Lifeline(
            Client::builder()
                .strategy(StrategyLayer::new().strategy(Strategy::single()))
                .circuit_breaker(None)
                .build()
                .expect("client"),
        ))
        .await;
        let reqwest = reqwest::Client::new();
        let bare_reqwest = count(AnyClient::Reqwest(reqwest.clone())).await;
        let over_reqwest = count(AnyClient::Lifeline(
            Client::builder().reqwest(reqwest).build().expect("client"),
        ))
        .await;

        println!("\n| on loopback (whole process, server included) | allocations per request | over its bare peer | bytes per request |");
        println!("|---|---:|---:|---:|");
        for (name, (allocations, bytes), peer) in [
            ("bare hyper-util client", bare_hyper, bare_hyper),
            ("tower-lifeline `Client` (defaults)", preset, bare_hyper),
            ("`Client`, single attempt, no breaker", minimal, bare_hyper),
            ("bare reqwest client", bare_reqwest, bare_reqwest),
            ("`Client` over that reqwest client", over_reqwest, bare_reqwest),
        ] {
            println!(
                "| {name} | {allocations:.2} | {:+.2} | {bytes:.0} |",
                allocations - peer.0
            );
        }
    });
}
