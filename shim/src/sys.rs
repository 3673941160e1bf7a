//! The crate's only `unsafe` code: the calls whose safety rests on an invariant the compiler
//! cannot check, each wrapped in a safe function that upholds it.
#![allow(unsafe_code)]

use std::os::fd::OwnedFd;

use nix::sys::signal::{signal, SigHandler, Signal};
use nix::unistd::{fork, ForkResult};
use tokio::io::unix::AsyncFd;

/// Forks. The caller promises the process is single-threaded: that is what makes it safe
/// for the child to run arbitrary code (no lock can be held by a thread that does not
/// exist in the child).
pub fn fork_single_threaded() -> nix::Result<ForkResult> {
    // SAFETY: only called from `detach`, which runs first thing in main, before any thread,
    // runtime or child exists.
    unsafe { fork() }
}

/// Ignores SIGPIPE so a write to a closed pipe or socket is an EPIPE error, not a death.
/// Children get the default disposition back (the standard library resets it on spawn).
pub fn ignore_sigpipe() -> nix::Result<()> {
    // SAFETY: SIG_IGN installs no handler code, so nothing runs in signal context.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) }.map(drop)
}

/// Registers a descriptor with the tokio reactor (which must be running on this thread).
pub fn async_fd(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is a valid open descriptor that it alone closes, and its raw fd
    // never changes, for as long as the AsyncFd owns it.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}
