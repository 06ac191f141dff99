//! The comarketing service as a standalone process (its own binary and container).

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    lianyu_kit::server::run_standalone(
        "comarketing",
        lianyu_comarketing::run,
        lianyu_comarketing::migrate,
    )
    .await
}
