//! The sup API as Rust types: `sup.v1` (the public services) generated from `proto/`.
#![forbid(unsafe_code)]
#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// The public API, package `sup.v1`.
pub mod v1 {
    tonic::include_proto!("sup.v1");
}

/// Encoded file descriptor set of every package, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sup_descriptor");

pub use prost_types;
