//! Compiles proto/berth/v1 with protox (pure Rust): no system protoc is needed. The descriptor
//! set, with the files' comments, is kept for gRPC server reflection.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["berth/v1/functions.proto", "berth/v1/containers.proto", "berth/v1/data.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    // Source info (the .proto comments) stays in the descriptors: gRPC reflection serves them,
    // so a caller with only the server reads each rpc's contract, e.g. Map's first message
    // (crates/berth-server/tests/control_plane.rs: reflection_carries_the_proto_comments).
    let fds = protox::Compiler::new([&root])?
        .include_source_info(true)
        .include_imports(true)
        .open_files(files)?
        .file_descriptor_set();
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("berth_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // Malformed messages are INVALID_ARGUMENT, not INTERNAL (src/codec.rs).
    tonic_prost_build::configure().codec_path("crate::codec::Codec").compile_fds(fds)?;
    Ok(())
}
