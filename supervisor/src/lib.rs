//! supd as a library: the daemon's services and the stores behind them.
//!
//! Layers, top to bottom: `server` (thin gRPC adaptors) calls `service` (the logic, in
//! proto-free types), which uses the stores: `store` (sled metadata), `content` (blobs),
//! `snapshot` (filesystem trees) and `image` (references, archives, unpacking).

#![forbid(unsafe_code)]

pub mod config;
pub mod content;
pub mod cri;
pub mod daemon;
pub mod error;
pub mod events;
pub mod filters;
pub mod image;
pub mod labels;
pub mod mount;
pub mod registry;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod spec;
pub mod status;
pub mod store;
pub mod timestamps;
