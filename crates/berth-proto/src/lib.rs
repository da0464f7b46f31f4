//! The contract of berth: the gRPC services, generated from `proto/berth/v1/*.proto`, and the
//! CBOR values they carry ([`values`]).

#[allow(clippy::all, clippy::unwrap_used)]
pub mod v1 {
    tonic::include_proto!("berth.v1");
}

pub mod codec;
pub mod trace;
pub mod values;

/// The encoded `FileDescriptorSet` of every berth proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth_descriptor.bin"));
