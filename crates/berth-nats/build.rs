//! Compiles proto/berth/v1/broker.proto with protox (pure Rust, no system protoc), as
//! crates/berth-proto does for the gRPC contract; only messages, so no tonic.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = "berth/v1/broker.proto";
    println!("cargo:rerun-if-changed={}", root.join(file).display());
    let fds = protox::Compiler::new([&root])?.include_imports(true).open_files([file])?.file_descriptor_set();
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
