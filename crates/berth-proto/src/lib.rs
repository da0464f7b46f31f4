//! The gRPC contract of berth, generated from `proto/berth/v1/*.proto`.
#![allow(clippy::all, clippy::unwrap_used)]

pub mod v1 {
    tonic::include_proto!("berth.v1");
}

/// The encoded `FileDescriptorSet` of every berth proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth_descriptor.bin"));
