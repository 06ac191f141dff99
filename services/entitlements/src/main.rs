//! The entitlements service as a standalone process (its own binary and container).

/// jemalloc, as in `lianyu` (BENCHMARKS.md, "The allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    lianyu_kit::server::run_standalone(
        "entitlements",
        lianyu_entitlements::run,
        lianyu_entitlements::migrate,
    )
    .await
}
