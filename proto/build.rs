//! Compiles `spean/v1/*.proto` with `protox` (pure Rust), so a fresh machine needs no system `protoc`.
//! The file descriptor set is also written out for gRPC server reflection.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "spean/v1/referral.proto",
        "spean/v1/case_file.proto",
        "spean/v1/sealed.proto",
        "spean/v1/referral_service.proto",
        "spean/v1/delivery_service.proto",
        "spean/v1/directory_service.proto",
        "spean/v1/coordinator_service.proto",
        "spean/v1/audit.proto",
        "spean/v1/audit_service.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("spean_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
