//! The entitlements service as a standalone process (its own binary and container).

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    lianyu_kit::server::run_standalone(
        "entitlements",
        lianyu_entitlements::run,
        lianyu_entitlements::migrate,
    )
    .await
}
