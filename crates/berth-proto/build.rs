//! Compiles proto/berth/v1 with protox (pure Rust): no system protoc is needed. The descriptor
//! set is kept for gRPC server reflection.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["berth/v1/functions.proto", "berth/v1/containers.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("berth_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // Malformed messages are INVALID_ARGUMENT, not INTERNAL (src/codec.rs).
    tonic_prost_build::configure().codec_path("crate::codec::Codec").compile_fds(fds)?;
    Ok(())
}
