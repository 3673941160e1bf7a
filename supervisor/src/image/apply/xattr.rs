//! Extended attributes of entries, set and copied without following symlinks.
//!
//! Files and directories are reached through an open descriptor. Symlinks and device nodes
//! cannot be opened for that, and Linux has no portable `*xattrat` call before 6.13, so they
//! are named as `/proc/self/fd/<parent>/<name>` with the `l*xattr` calls: the parent is a
//! descriptor already confined to the root and the last component is not followed.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::fs::XattrFlags;
use rustix::io::Errno;

use crate::error::{Error, Result};

/// The overlayfs xattr marking a directory whose lower contents are hidden.
pub(super) const OPAQUE: &CStr = c"trusted.overlay.opaque";

/// A filesystem object xattrs are read from or written to.
#[derive(Clone, Copy)]
pub(super) enum Node<'a> {
    /// An open file or directory (not an `O_PATH` descriptor).
    Fd(BorrowedFd<'a>),
    /// `name` inside the directory `dir`, not followed if it is a symlink.
    At(BorrowedFd<'a>, &'a [u8]),
}

fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> Vec<u8> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    path
}

fn set(node: Node<'_>, name: &CStr, value: &[u8]) -> Result<(), Errno> {
    match node {
        Node::Fd(fd) => rustix::fs::fsetxattr(fd, name, value, XattrFlags::empty()),
        Node::At(dir, leaf) => {
            rustix::fs::lsetxattr(proc_path(dir, leaf), name, value, XattrFlags::empty())
        }
    }
}

fn get(node: Node<'_>, name: &CStr, buf: &mut [u8]) -> Result<usize, Errno> {
    match node {
        Node::Fd(fd) => rustix::fs::fgetxattr(fd, name, buf),
        Node::At(dir, leaf) => rustix::fs::lgetxattr(proc_path(dir, leaf), name, buf),
    }
}

fn get_len(node: Node<'_>, name: &CStr) -> Result<usize, Errno> {
    match node {
        Node::Fd(fd) => rustix::fs::fgetxattr_query(fd, name),
        Node::At(dir, leaf) => rustix::fs::lgetxattr_query(proc_path(dir, leaf), name),
    }
}

fn list_raw(node: Node<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    match node {
        Node::Fd(fd) => rustix::fs::flistxattr(fd, buf),
        Node::At(dir, leaf) => rustix::fs::llistxattr(proc_path(dir, leaf), buf),
    }
}

fn list_len(node: Node<'_>) -> Result<usize, Errno> {
    match node {
        Node::Fd(fd) => rustix::fs::flistxattr_query(fd),
        Node::At(dir, leaf) => rustix::fs::llistxattr_query(proc_path(dir, leaf)),
    }
}

fn io_err(what: impl std::fmt::Display, err: Errno) -> Error {
    Error::io(what, err.into())
}

/// Names overlayfs interprets: a layer must not forge them (a redirect or an opaque flag
/// would change what the merged view shows), and copies from lowers drop them.
fn overlay_private(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// Whether a failure to set `name` means "this filesystem or object cannot hold it" rather
/// than a fault: privileged namespaces may be unsupported, and the kernel refuses `user.*`
/// on symlinks and device nodes.
fn unsupported(name: &[u8], err: Errno, node: Node<'_>) -> bool {
    let privileged = name.starts_with(b"trusted.") || name.starts_with(b"security.");
    let special = matches!(node, Node::At(..));
    match err {
        Errno::OPNOTSUPP | Errno::PERM if privileged => true,
        Errno::PERM if special && name.starts_with(b"user.") => true,
        _ => false,
    }
}

/// Sets the xattrs a layer entry carries.
pub(super) fn apply(node: Node<'_>, xattrs: &[(CString, Vec<u8>)]) -> Result<()> {
    for (name, value) in xattrs {
        let bytes = name.as_bytes();
        if overlay_private(bytes) {
            tracing::debug!(xattr = %name.to_string_lossy(), "dropping overlay xattr from layer");
            continue;
        }
        match set(node, name, value) {
            Ok(()) => {}
            Err(err) if unsupported(bytes, err, node) => {
                tracing::debug!(xattr = %name.to_string_lossy(), %err, "xattr not supported here");
            }
            Err(err) => {
                return Err(io_err(
                    format_args!("setting xattr {:?}", name.to_string_lossy()),
                    err,
                ))
            }
        }
    }
    Ok(())
}

/// Copies every xattr of `from` to `to`, except overlayfs' own.
pub(super) fn copy(from: Node<'_>, to: Node<'_>) -> Result<()> {
    let names = match list(from) {
        Ok(names) => names,
        Err(Errno::OPNOTSUPP) => return Ok(()),
        Err(err) => return Err(io_err("listing xattrs", err)),
    };
    let mut value = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if overlay_private(name) {
            continue;
        }
        let Ok(name) = CString::new(name) else {
            continue;
        };
        loop {
            let len = match get_len(from, &name) {
                Ok(len) => len,
                Err(Errno::NODATA) => break,
                Err(err) => return Err(io_err("reading xattr", err)),
            };
            value.resize(len, 0);
            match get(from, &name, &mut value) {
                Ok(n) => {
                    value.truncate(n);
                    match set(to, &name, &value) {
                        Ok(()) => {}
                        Err(err) if unsupported(name.as_bytes(), err, to) => {}
                        Err(err) => {
                            return Err(io_err(
                                format_args!("copying xattr {:?}", name.to_string_lossy()),
                                err,
                            ))
                        }
                    }
                    break;
                }
                // The value grew between the two calls: ask again.
                Err(Errno::RANGE) => continue,
                Err(Errno::NODATA) => break,
                Err(err) => return Err(io_err("reading xattr", err)),
            }
        }
    }
    Ok(())
}

/// The NUL-separated list of xattr names of `node`.
fn list(node: Node<'_>) -> Result<Vec<u8>, Errno> {
    loop {
        let len = list_len(node)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; len];
        match list_raw(node, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Removes from the directory open as `dir` every xattr the layer's entry does not carry:
/// an entry declares its whole metadata, so a directory that is kept across layers must not
/// keep xattrs the new entry dropped. The overlay's own markers stay.
pub(super) fn retain_only(dir: BorrowedFd<'_>, keep: &[(CString, Vec<u8>)]) -> Result<()> {
    let names = match list(Node::Fd(dir)) {
        Ok(n) => n,
        Err(Errno::OPNOTSUPP) => return Ok(()),
        Err(err) => return Err(io_err("listing xattrs", err)),
    };
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if overlay_private(name) || keep.iter().any(|(k, _)| k.as_bytes() == name) {
            continue;
        }
        let Ok(cname) = CString::new(name) else {
            continue;
        };
        match rustix::fs::fremovexattr(dir, &cname) {
            Ok(()) | Err(Errno::NODATA) => {}
            Err(err) => return Err(io_err("removing an xattr the layer dropped", err)),
        }
    }
    Ok(())
}

/// Whether the directory open as `dir` is an overlayfs opaque directory.
pub(super) fn is_opaque(dir: BorrowedFd<'_>) -> Result<bool> {
    let mut buf = [0u8; 2];
    match rustix::fs::fgetxattr(dir, OPAQUE, &mut buf) {
        Ok(n) => Ok(&buf[..n] == b"y"),
        Err(Errno::NODATA | Errno::OPNOTSUPP | Errno::RANGE) => Ok(false),
        Err(err) => Err(io_err("reading the opaque xattr", err)),
    }
}

/// Marks the directory open as `dir` opaque for overlayfs.
pub(super) fn set_opaque(dir: BorrowedFd<'_>) -> Result<()> {
    rustix::fs::fsetxattr(dir, OPAQUE, b"y", XattrFlags::empty())
        .map_err(|err| io_err("marking the directory opaque", err))
}
