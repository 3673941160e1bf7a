//! sup-shim as a library: one shim process owns one container's runtime calls, stdio, logs and
//! exit status, and serves them to supd over a unix socket (`sup.shim.v1`).
//!
//! `unsafe` is denied everywhere but in `sys`, which wraps the few calls that need it.
#![deny(unsafe_code)]

pub mod cgroup;
pub mod detach;
pub mod error;
pub mod io;
pub mod oom;
pub mod options;
pub mod process;
pub mod reaper;
pub mod runc;
pub mod server;
pub mod service;
pub mod stats;
mod sys;
pub mod systemd;
