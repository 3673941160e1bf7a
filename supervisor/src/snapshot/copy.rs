//! The native snapshotter's tree copy: a faithful duplicate of a snapshot's files.
//!
//! Kept: contents (holes stay holes), owners, modes with setuid/setgid/sticky, xattrs
//! (file capabilities, ACLs, overlay markers), symlinks as symlinks, hardlinks as hardlinks
//! within the copy, device nodes, fifos, sockets, and access/modification times (a
//! directory's are set after its contents, which would otherwise bump them).

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, SeekFrom, Stat, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use super::tree::{file_type, fs_err, inode, linked, open_dir, walk, Node, Visitor};
use crate::error::{Error, Result};

/// Copies the directory `src` to `dst`, which must not exist yet.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let src_fd = open_dir(src)?;
    let st = rustix::fs::fstat(&src_fd).map_err(|e| fs_err(src, "inspecting", e))?;
    // Private until its metadata is copied last, like every directory below it.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dst)
        .map_err(|e| Error::io(format!("creating {}", dst.display()), e))?;
    let dst_fd = open_dir(dst)?;
    let mut copier = Copier {
        links: HashMap::new(),
    };
    let root = Dest {
        fd: dst_fd,
        path: dst.to_path_buf(),
    };
    let root = walk(src_fd, root, src, &mut copier)?;
    let src_fd = open_dir(src)?;
    copy_meta_fd(src_fd.as_fd(), root.fd.as_fd(), &st, src, dst)
}

/// A destination directory.
struct Dest {
    fd: OwnedFd,
    path: PathBuf,
}

struct Copier {
    /// Source (device, inode) of files with several links -> the first copy's path.
    links: HashMap<(u64, u64), PathBuf>,
}

impl Visitor for Copier {
    type Ctx = Dest;

    fn entry(&mut self, to: &Dest, node: &Node<'_>) -> Result<()> {
        let Node {
            dir,
            name,
            st,
            path,
        } = *node;
        let dst_path = to.path.join(OsStr::from_bytes(name.to_bytes()));
        if linked(st) {
            if let Some(first) = self.links.get(&inode(st)) {
                return rustix::fs::linkat(rustix::fs::CWD, first, &to.fd, name, AtFlags::empty())
                    .map_err(|e| fs_err(&dst_path, "linking", e));
            }
        }
        match file_type(st) {
            FileType::RegularFile => copy_file(node, to.fd.as_fd(), &dst_path)?,
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(dir, name, Vec::new())
                    .map_err(|e| fs_err(path, "reading", e))?;
                rustix::fs::symlinkat(target.as_c_str(), &to.fd, name)
                    .map_err(|e| fs_err(&dst_path, "creating", e))?;
                copy_meta_at(node, to.fd.as_fd(), &dst_path)?;
            }
            kind @ (FileType::CharacterDevice
            | FileType::BlockDevice
            | FileType::Fifo
            | FileType::Socket) => {
                let mode = Mode::from_raw_mode(st.st_mode);
                rustix::fs::mknodat(&to.fd, name, kind, mode, device(st))
                    .map_err(|e| fs_err(&dst_path, "creating", e))?;
                copy_meta_at(node, to.fd.as_fd(), &dst_path)?;
            }
            other => {
                return Err(Error::invalid(format!(
                    "{}: cannot copy a file of type {other:?}",
                    path.display()
                )));
            }
        }
        if linked(st) {
            self.links.insert(inode(st), dst_path);
        }
        Ok(())
    }

    fn enter(&mut self, to: &Dest, node: &Node<'_>, _: BorrowedFd<'_>) -> Result<Dest> {
        let path = to.path.join(OsStr::from_bytes(node.name.to_bytes()));
        rustix::fs::mkdirat(&to.fd, node.name, Mode::from_raw_mode(0o700))
            .map_err(|e| fs_err(&path, "creating", e))?;
        let fd = rustix::fs::openat(
            &to.fd,
            node.name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fs_err(&path, "opening", e))?;
        Ok(Dest { fd, path })
    }

    fn leave(&mut self, _: &Dest, node: &Node<'_>, fd: BorrowedFd<'_>, inner: Dest) -> Result<()> {
        copy_meta_fd(fd, inner.fd.as_fd(), node.st, node.path, &inner.path)
    }
}

/// The device number of a device node.
// The field's type differs between architectures.
#[allow(clippy::useless_conversion)]
fn device(st: &Stat) -> u64 {
    u64::from(st.st_rdev)
}

/// Copies the regular file `node` into the directory `to`.
fn copy_file(node: &Node<'_>, to: BorrowedFd<'_>, dst_path: &Path) -> Result<()> {
    let Node {
        dir,
        name,
        st,
        path,
    } = *node;
    let src = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fs_err(path, "opening", e))?;
    let dst = rustix::fs::openat(
        to,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| fs_err(dst_path, "creating", e))?;
    let (src, dst) = (File::from(src), File::from(dst));
    let size = u64::try_from(st.st_size).unwrap_or(0);
    copy_data(&src, &dst, size).map_err(|e| {
        Error::io(
            format!("copying {} to {}", path.display(), dst_path.display()),
            e,
        )
    })?;
    copy_meta_fd(src.as_fd(), dst.as_fd(), st, path, dst_path)
}

/// Copies `size` bytes, skipping the holes of a sparse source.
fn copy_data(src: &File, dst: &File, size: u64) -> io::Result<()> {
    let mut pos = 0;
    while pos < size {
        let start = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(start) => start,
            // No data past `pos`: the rest is a hole.
            Err(Errno::NXIO) => break,
            // No hole support: treat the file as dense.
            Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => pos,
            Err(e) => return Err(e.into()),
        };
        let end = match rustix::fs::seek(src, SeekFrom::Hole(start)) {
            Ok(end) => end.min(size),
            Err(_) => size,
        };
        copy_range(src, dst, start, end)?;
        pos = end.max(start + 1);
    }
    rustix::fs::ftruncate(dst, size)?;
    Ok(())
}

fn copy_range(src: &File, dst: &File, mut from: u64, to: u64) -> io::Result<()> {
    while from < to {
        let len = usize::try_from(to - from)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        let (mut off_in, mut off_out) = (from, from);
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), len) {
            // The source shrank under us; what is left is zeros after the truncate.
            Ok(0) => return Ok(()),
            Ok(n) => from += n as u64,
            Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                return copy_range_by_hand(src, dst, from, to);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_range_by_hand(src: &File, dst: &File, mut from: u64, to: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 128 * 1024];
    while from < to {
        let want = usize::try_from(to - from)
            .unwrap_or(buf.len())
            .min(buf.len());
        let n = src.read_at(&mut buf[..want], from)?;
        if n == 0 {
            return Ok(());
        }
        dst.write_all_at(&buf[..n], from)?;
        from += n as u64;
    }
    Ok(())
}

/// Owner, mode, xattrs and times of a file or directory, through descriptors. The owner
/// goes first, since changing it clears setuid bits and file capabilities.
fn copy_meta_fd(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    st: &Stat,
    path: &Path,
    dst_path: &Path,
) -> Result<()> {
    rustix::fs::fchown(dst, Some(uid(st)), Some(gid(st)))
        .map_err(|e| fs_err(dst_path, "changing the owner of", e))?;
    rustix::fs::fchmod(dst, Mode::from_raw_mode(st.st_mode))
        .map_err(|e| fs_err(dst_path, "changing the mode of", e))?;
    let names = xattr_list(|buf| rustix::fs::flistxattr(src, buf))
        .map_err(|e| fs_err(path, "listing the xattrs of", e))?;
    for name in names {
        let value = match xattr_value(|buf| rustix::fs::fgetxattr(src, name.as_c_str(), buf)) {
            Ok(v) => v,
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(fs_err(path, &format!("reading xattr {name:?} of"), e)),
        };
        set_xattr_result(
            rustix::fs::fsetxattr(dst, name.as_c_str(), &value, XattrFlags::empty()),
            &name,
            dst_path,
        )?;
    }
    rustix::fs::futimens(dst, &times(st)).map_err(|e| fs_err(dst_path, "setting the times of", e))
}

/// The same for symlinks and special files, which cannot be opened safely, by name.
fn copy_meta_at(node: &Node<'_>, to: BorrowedFd<'_>, dst_path: &Path) -> Result<()> {
    let Node { name, st, path, .. } = *node;
    rustix::fs::chownat(
        to,
        name,
        Some(uid(st)),
        Some(gid(st)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| fs_err(dst_path, "changing the owner of", e))?;
    if file_type(st) != FileType::Symlink {
        rustix::fs::chmodat(to, name, Mode::from_raw_mode(st.st_mode), AtFlags::empty())
            .map_err(|e| fs_err(dst_path, "changing the mode of", e))?;
    }
    let names = xattr_list(|buf| rustix::fs::llistxattr(path, buf))
        .map_err(|e| fs_err(path, "listing the xattrs of", e))?;
    for xname in names {
        let value = match xattr_value(|buf| rustix::fs::lgetxattr(path, xname.as_c_str(), buf)) {
            Ok(v) => v,
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(fs_err(path, &format!("reading xattr {xname:?} of"), e)),
        };
        set_xattr_result(
            rustix::fs::lsetxattr(dst_path, xname.as_c_str(), &value, XattrFlags::empty()),
            &xname,
            dst_path,
        )?;
    }
    rustix::fs::utimensat(to, name, &times(st), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| fs_err(dst_path, "setting the times of", e))
}

/// A filesystem that cannot hold some xattr namespace (no ACLs, say) loses just that one.
fn set_xattr_result(r: rustix::io::Result<()>, name: &CStr, dst_path: &Path) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(Errno::OPNOTSUPP) => {
            tracing::warn!(path = %dst_path.display(), xattr = ?name, "xattr not supported here; not copied");
            Ok(())
        }
        Err(e) => Err(fs_err(dst_path, &format!("setting xattr {name:?} on"), e)),
    }
}

/// Calls a list/get xattr function with a buffer that grows until the answer fits.
fn xattr_buf(
    mut call: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    loop {
        match call(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e),
        }
    }
}

fn xattr_list(
    call: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<CString>> {
    let raw = xattr_buf(call)?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .filter_map(|n| CString::new(n).ok())
        .collect())
}

fn xattr_value(
    call: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<u8>> {
    xattr_buf(call)
}

fn uid(st: &Stat) -> Uid {
    Uid::from_raw(st.st_uid)
}

fn gid(st: &Stat) -> Gid {
    Gid::from_raw(st.st_gid)
}

fn times(st: &Stat) -> Timestamps {
    let ts = |sec: i64, nsec| Timespec {
        tv_sec: sec,
        tv_nsec: i64::try_from(nsec).unwrap_or(0),
    };
    Timestamps {
        last_access: ts(st.st_atime, st.st_atime_nsec),
        last_modification: ts(st.st_mtime, st.st_mtime_nsec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn snapshot_copy_keeps_holes_and_hardlinked_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let sparse = File::create(src.join("sparse")).unwrap();
        sparse.set_len(64 << 20).unwrap();
        sparse.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        sparse.write_all_at(b"head", 0).unwrap();
        drop(sparse);
        std::os::unix::fs::symlink("sparse", src.join("link")).unwrap();
        std::fs::hard_link(src.join("link"), src.join("link2")).unwrap();

        let dst = dir.path().join("dst");
        copy_tree(&src, &dst).unwrap();
        let copy = std::fs::metadata(dst.join("sparse")).unwrap();
        assert_eq!(copy.len(), 64 << 20);
        assert!(copy.blocks() * 512 < 1 << 20, "holes were filled: {copy:?}");
        let data = std::fs::read(dst.join("sparse")).unwrap();
        assert_eq!(
            (&data[..4], &data[data.len() - 4..]),
            (&b"head"[..], &b"tail"[..])
        );
        let (a, b) = (
            std::fs::symlink_metadata(dst.join("link")).unwrap(),
            std::fs::symlink_metadata(dst.join("link2")).unwrap(),
        );
        assert!(a.file_type().is_symlink());
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    }
}
