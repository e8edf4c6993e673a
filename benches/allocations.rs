//! Heap allocations per call: each layer's happy path over a no-op service, the full stacks and
//! the peers (the same cases as the `overhead` bench), counted by a global allocator.
//!
//! `cargo bench --bench allocations` prints one table. The bare row is the request's own
//! allocations (its URI and two headers); a layer's own figure is its row minus the bare row.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use common::{check_once, each_case, request, Req, Visitor};
use http::Response;
use tower::{Service, ServiceExt};

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
    each_case(&mut Count {
        runtime,
        bare: None,
    });
}
