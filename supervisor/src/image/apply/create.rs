//! Creating the entries of a layer in their parent directory, and copying up a hardlink's
//! target from a lower layer.
//!
//! Metadata order matters: chown clears setuid/setgid and file capabilities, so the owner
//! is set first, then xattrs, then the mode; times go last since every other change
//! touches them.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Stat, Uid};
use rustix::io::Errno;

use super::fsops::{self, fail, file_type, is_whiteout, open_dir, quoted, stat_at};
use super::meta::Meta;
use super::names::CleanPath;
use super::resolve::{self, Parent};
use super::xattr::{self, Node};
use super::{stat_times, Applier, StreamState};
use crate::error::{Error, Result};

fn owner(meta: &Meta) -> (Option<Uid>, Option<Gid>) {
    (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))
}

fn mode(bits: u32) -> Mode {
    Mode::from_raw_mode(bits & 0o7777)
}

/// Owner, xattrs and mode of an open file or directory.
fn set_meta_fd(fd: BorrowedFd<'_>, meta: &Meta, name: &[u8]) -> Result<()> {
    let (uid, gid) = owner(meta);
    rustix::fs::fchown(fd, uid, gid)
        .map_err(|e| fail(format_args!("chown {}", quoted(name)), e))?;
    xattr::apply(Node::Fd(fd), &meta.xattrs)?;
    rustix::fs::fchmod(fd, mode(meta.mode))
        .map_err(|e| fail(format_args!("chmod {}", quoted(name)), e))
}

impl Applier {
    /// Removes whatever is at `name` (recursively, never following symlinks).
    pub(super) fn remove(&mut self, dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        self.generation += 1;
        fsops::remove_tree(dir, name, None)
    }

    /// Runs `make`; if the name is taken, removes what is there and runs it again.
    fn replacing<T>(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        what: &str,
        mut make: impl FnMut() -> Result<T, Errno>,
    ) -> Result<T> {
        let made = match make() {
            Err(Errno::EXIST) => {
                self.remove(dir, name)?;
                make()
            }
            other => other,
        };
        made.map_err(|e| fail(format_args!("creating {what} {}", quoted(name)), e))
    }

    /// The layer's entry for the root directory: its metadata only.
    pub(super) fn root_meta(&mut self, meta: &Meta) -> Result<()> {
        set_meta_fd(self.root.as_fd(), meta, b".")?;
        self.dir_times.push((Vec::new(), meta.times.clone()));
        Ok(())
    }

    pub(super) fn make_dir(&mut self, parent: &Parent, name: &[u8], meta: &Meta) -> Result<()> {
        let dir = parent.fd.as_fd();
        let what = || format!("creating directory {}", quoted(name));
        let mut opaque = false;
        match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = stat_at(dir, name)?;
                // An existing directory is kept, with its contents: layers merge.
                if !st
                    .as_ref()
                    .is_some_and(|st| file_type(st) == FileType::Directory)
                {
                    // Over this layer's own whiteout, the new directory must hide the
                    // lower one rather than merge with it.
                    opaque = self.overlay && st.as_ref().is_some_and(is_whiteout);
                    self.remove(dir, name)?;
                    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))
                        .map_err(|e| fail(what(), e))?;
                }
            }
            Err(e) => return Err(fail(what(), e)),
        }
        let fd = open_dir(dir, name).map_err(|e| fail(what(), e))?;
        xattr::retain_only(fd.as_fd(), &meta.xattrs)?;
        set_meta_fd(fd.as_fd(), meta, name)?;
        if opaque {
            xattr::set_opaque(fd.as_fd())?;
        }
        self.keep_fd(fd.as_fd())?;
        let mut path = parent.path.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        self.dir_times.push((path, meta.times.clone()));
        Ok(())
    }

    pub(super) fn make_file<R: Read>(
        &mut self,
        parent: &Parent,
        name: &[u8],
        meta: &Meta,
        data: &mut tar::Entry<'_, R>,
        stream: &StreamState,
    ) -> Result<()> {
        let dir = parent.fd.as_fd();
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = self.replacing(dir, name, "file", || {
            rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))
        })?;
        let mut file = File::from(fd);
        let expected = data.size();
        let mut copied: u64 = 0;
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(stream.error(e)),
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| Error::io(format_args!("writing {}", quoted(name)), e))?;
            copied += n as u64;
        }
        if copied != expected {
            return Err(Error::invalid(format!(
                "truncated tar: {copied} of {expected} bytes of file data"
            )));
        }
        set_meta_fd(file.as_fd(), meta, name)?;
        rustix::fs::futimens(&file, &meta.times)
            .map_err(|e| fail(format_args!("setting times of {}", quoted(name)), e))?;
        self.keep_fd(file.as_fd())
    }

    pub(super) fn make_symlink(
        &mut self,
        parent: &Parent,
        name: &[u8],
        target: &[u8],
        meta: &Meta,
    ) -> Result<()> {
        let dir = parent.fd.as_fd();
        self.replacing(dir, name, "symlink", || {
            rustix::fs::symlinkat(target, dir, name)
        })?;
        let (uid, gid) = owner(meta);
        rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| fail(format_args!("chown {}", quoted(name)), e))?;
        xattr::apply(Node::At(dir, name), &meta.xattrs)?;
        rustix::fs::utimensat(dir, name, &meta.times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| fail(format_args!("setting times of {}", quoted(name)), e))?;
        self.keep_at(dir, name)
    }

    /// Device nodes and fifos.
    pub(super) fn make_node(
        &mut self,
        parent: &Parent,
        name: &[u8],
        kind: FileType,
        dev: u64,
        meta: &Meta,
    ) -> Result<()> {
        let dir = parent.fd.as_fd();
        self.replacing(dir, name, "device node", || {
            rustix::fs::mknodat(dir, name, kind, Mode::from_raw_mode(0o600), dev)
        })?;
        let (uid, gid) = owner(meta);
        rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| fail(format_args!("chown {}", quoted(name)), e))?;
        xattr::apply(Node::At(dir, name), &meta.xattrs)?;
        // chmodat follows symlinks, but `name` is the node just made in a directory only
        // this applier writes to.
        rustix::fs::chmodat(dir, name, mode(meta.mode), AtFlags::empty())
            .map_err(|e| fail(format_args!("chmod {}", quoted(name)), e))?;
        rustix::fs::utimensat(dir, name, &meta.times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| fail(format_args!("setting times of {}", quoted(name)), e))?;
        self.keep_at(dir, name)
    }

    pub(super) fn make_hardlink(&mut self, parent: &Parent, name: &[u8], raw: &[u8]) -> Result<()> {
        let shown = quoted(raw);
        let target = CleanPath::new(raw)
            .map_err(|why| Error::invalid(format!("hardlink target {shown}: {why}")))?;
        let missing = || Error::invalid(format!("hardlink target {shown} does not exist"));
        if target.is_root() {
            return Err(Error::invalid(format!(
                "hardlink target {shown} is the root"
            )));
        }
        let source = self.link_source(&target)?.ok_or_else(missing)?;
        let st = stat_at(source.as_fd(), target.name())?.ok_or_else(missing)?;
        if file_type(&st) == FileType::Directory {
            return Err(Error::invalid(format!(
                "hardlink target {shown} is a directory"
            )));
        }
        let dir = parent.fd.as_fd();
        if let Some(existing) = stat_at(dir, name)? {
            if existing.st_dev == st.st_dev && existing.st_ino == st.st_ino {
                return Ok(());
            }
            self.remove(dir, name)?;
        }
        rustix::fs::linkat(source.as_fd(), target.name(), dir, name, AtFlags::empty())
            .map_err(|e| fail(format_args!("linking to {shown}"), e))?;
        self.keep_ino(st.st_ino);
        Ok(())
    }

    /// The directory of the root that holds the hardlink target, after copying the target
    /// up from a lower layer if it is only there; `None` if there is no such target.
    fn link_source(&mut self, target: &CleanPath) -> Result<Option<OwnedFd>> {
        let (key, leaf) = (target.parent(), target.name());
        if let Ok(dir) = resolve::open_in_root(self.root.as_fd(), key, OFlags::PATH) {
            if let Some(st) = stat_at(dir.as_fd(), leaf)? {
                return Ok((!(self.overlay && is_whiteout(&st))).then_some(dir));
            }
        }
        if !self.overlay {
            return Ok(None);
        }
        let Some(frame) = self.walk(key, false)? else {
            return Ok(None);
        };
        if let Some(st) = stat_at(frame.fd.as_fd(), leaf)? {
            return Ok((!is_whiteout(&st)).then_some(frame.fd));
        }
        for lower in &frame.lowers {
            let Some(st) = stat_at(lower.as_fd(), leaf)? else {
                continue;
            };
            if is_whiteout(&st) || file_type(&st) == FileType::Directory {
                return Ok(None);
            }
            copy_up(lower.as_fd(), leaf, frame.fd.as_fd(), &st)
                .map_err(|e| e.context(format_args!("copying up {}", quoted(target.as_bytes()))))?;
            return Ok(Some(frame.fd));
        }
        Ok(None)
    }
}

/// Copies the non-directory `name` of a lower directory into the same-named place of the
/// root, with owner, mode, xattrs and times.
fn copy_up(lower: BorrowedFd<'_>, name: &[u8], upper: BorrowedFd<'_>, st: &Stat) -> Result<()> {
    let uid = Some(Uid::from_raw(st.st_uid));
    let gid = Some(Gid::from_raw(st.st_gid));
    let times = stat_times(st);
    let kind = file_type(st);
    let at = |e| fail("copy-up", e);
    if kind == FileType::RegularFile {
        let src = rustix::fs::openat(
            lower,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(at)?;
        let dst = rustix::fs::openat(
            upper,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(at)?;
        let (mut src, mut dst) = (File::from(src), File::from(dst));
        io::copy(&mut src, &mut dst).map_err(|e| Error::io("copy-up", e))?;
        rustix::fs::fchown(&dst, uid, gid).map_err(at)?;
        xattr::copy(Node::Fd(src.as_fd()), Node::Fd(dst.as_fd()))?;
        rustix::fs::fchmod(&dst, mode(st.st_mode)).map_err(at)?;
        return rustix::fs::futimens(&dst, &times).map_err(at);
    }
    if kind == FileType::Symlink {
        let link = resolve::read_link(lower, name)?;
        rustix::fs::symlinkat(link.as_slice(), upper, name).map_err(at)?;
    } else {
        rustix::fs::mknodat(upper, name, kind, Mode::from_raw_mode(0o600), st.st_rdev)
            .map_err(at)?;
    }
    rustix::fs::chownat(upper, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW).map_err(at)?;
    xattr::copy(Node::At(lower, name), Node::At(upper, name))?;
    if kind != FileType::Symlink {
        // Just made by mknodat above: not a symlink.
        rustix::fs::chmodat(upper, name, mode(st.st_mode), AtFlags::empty()).map_err(at)?;
    }
    rustix::fs::utimensat(upper, name, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(at)
}
