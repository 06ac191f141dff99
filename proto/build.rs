//! Compiles the contracts with protox (pure Rust, no system `protoc`) into tonic/prost code,
//! and writes the encoded descriptor set that server reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message;

const FILES: &[&str] = &[
    "lianyu/common/v1/common.proto",
    "lianyu/identity/v1/identity.proto",
    "lianyu/entitlements/v1/entitlements.proto",
    "lianyu/live/v1/live.proto",
    "lianyu/comarketing/v1/comarketing.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let fds = protox::compile(FILES, [&root])?;
    // `compile_fds` ignores `file_descriptor_set_path`, so the reflection descriptor is written here.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("lianyu_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // RPCs a service has not implemented yet answer UNIMPLEMENTED (after authentication).
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=lianyu");
    Ok(())
}
