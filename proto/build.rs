//! Compiles the contracts with protox (pure Rust, no system `protoc`) into tonic/prost code,
//! writes the encoded descriptor set that server reflection serves, and writes the table of
//! every RPC with the access its `(lianyu.common.v1.access)` option declares — the one source
//! the kit's auth layer derives scopes from. An RPC without the option fails the build.

use std::{collections::BTreeSet, env, fmt::Write as _, fs, path::PathBuf};

use prost_reflect::Value;

const FILES: &[&str] = &[
    "lianyu/common/v1/access.proto",
    "lianyu/common/v1/common.proto",
    "lianyu/identity/v1/identity.proto",
    "lianyu/identity/internal/v1/internal.proto",
    "lianyu/entitlements/v1/entitlements.proto",
    "lianyu/entitlements/internal/v1/internal.proto",
    "lianyu/live/v1/live.proto",
    "lianyu/live/internal/v1/internal.proto",
    "lianyu/comarketing/v1/comarketing.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(FILES)?;
    // Encoded by the compiler itself so that method options (the access extension) survive
    // for reflection clients; `compile_fds` ignores `file_descriptor_set_path`.
    fs::write(
        out.join("lianyu_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    fs::write(out.join("lianyu_access.rs"), access_table(&compiler)?)?;
    tonic_prost_build::configure()
        // RPCs a service has not implemented yet answer UNIMPLEMENTED (after authentication).
        .generate_default_stubs(true)
        .compile_fds(compiler.file_descriptor_set())?;
    println!("cargo:rerun-if-changed=lianyu");
    Ok(())
}

/// `METHODS` (every `/package.Service/Method` path with its access, sorted for binary search)
/// `SCOPES` (every partner scope some method needs) and `INTERNAL_SCOPES` (the scopes only
/// mesh services' tokens carry).
fn access_table(compiler: &protox::Compiler) -> Result<String, Box<dyn std::error::Error>> {
    let pool = compiler.descriptor_pool();
    let option = pool
        .get_extension_by_name("lianyu.common.v1.access")
        .ok_or("lianyu.common.v1.access is not defined")?;
    let mut methods = Vec::new();
    let mut scopes = BTreeSet::new();
    let mut internal = BTreeSet::new();
    let mut services = BTreeSet::new();
    for service in pool.services() {
        let package = service.package_name();
        let Some(short) = package
            .strip_prefix("lianyu.")
            .and_then(|rest| rest.split('.').next())
        else {
            continue;
        };
        if short != "common" {
            services.insert(short.to_owned());
        }
        for method in service.methods() {
            let options = method.options();
            let access = match options.get_extension(&option).as_ref() {
                Value::EnumNumber(1) => "Read",
                Value::EnumNumber(2) => "Write",
                Value::EnumNumber(3) => "Public",
                Value::EnumNumber(4) => "Internal",
                _ => {
                    return Err(format!(
                        "{} declares no (lianyu.common.v1.access) option: every RPC must say \
                         ACCESS_READ, ACCESS_WRITE, ACCESS_PUBLIC or ACCESS_INTERNAL",
                        method.full_name()
                    )
                    .into());
                }
            };
            match access {
                "Public" => {}
                "Internal" => {
                    internal.insert(format!("{short}.internal"));
                }
                _ => {
                    scopes.insert(format!("{short}.{}", access.to_lowercase()));
                }
            }
            methods.push((
                format!("/{}/{}", service.full_name(), method.name()),
                access,
            ));
        }
    }
    methods.sort();
    let mut code = String::new();
    writeln!(
        code,
        "/// Every Lianyu RPC by its HTTP/2 path, with its declared access; sorted by path.\n\
         pub const METHODS: &[(&str, Access)] = &["
    )?;
    for (path, access) in &methods {
        writeln!(code, "    ({path:?}, Access::{access}),")?;
    }
    writeln!(
        code,
        "];\n\n/// Every scope a partner's or the operator's token can carry (`<service>.read`, \
         `<service>.write`), sorted.\npub const SCOPES: &[&str] = &["
    )?;
    for scope in &scopes {
        writeln!(code, "    {scope:?},")?;
    }
    writeln!(
        code,
        "];\n\n/// Every internal scope (`<service>.internal`): carried only by mesh services' \
         tokens, sorted.\npub const INTERNAL_SCOPES: &[&str] = &["
    )?;
    for scope in &internal {
        writeln!(code, "    {scope:?},")?;
    }
    writeln!(
        code,
        "];\n\n/// Every mesh service with a contract (`identity`, `live`, …), sorted.\n\
         pub const SERVICES: &[&str] = &["
    )?;
    for service in &services {
        writeln!(code, "    {service:?},")?;
    }
    writeln!(code, "];")?;
    Ok(code)
}
