//! The live service as a standalone process (its own binary and container).

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    lianyu_kit::server::run_standalone("live", lianyu_live::run, lianyu_live::migrate).await
}
