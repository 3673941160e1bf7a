//! The sup API as Rust types: `sup.v1` (the public services) and `sup.shim.v1` (the protocol
//! between supd and its shims), generated from `proto/`.
#![forbid(unsafe_code)]
#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// Modules nest as the protobuf packages do, so generated cross-package paths resolve.
pub mod sup {
    pub mod v1 {
        tonic::include_proto!("sup.v1");
    }
    pub mod shim {
        pub mod v1 {
            tonic::include_proto!("sup.shim.v1");
        }
    }
}

/// The public API, package `sup.v1`.
pub use sup::v1;

/// The supd-shim protocol, package `sup.shim.v1`.
pub use sup::shim::v1 as shim;

/// Encoded file descriptor set of every package, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sup_descriptor");

pub use prost_types;
