//! The identity service as a standalone process (its own binary and container).

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    lianyu_kit::server::run_standalone("identity", lianyu_identity::run, lianyu_identity::migrate)
        .await
}
