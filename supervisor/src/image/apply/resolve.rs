//! Finding an entry's parent directory inside the root, confined, and creating it if needed.
//!
//! The fast path is one `openat2(RESOLVE_IN_ROOT)`: the kernel resolves `..` and symlinks
//! (absolute ones included) as if the root were `/`, so nothing outside can be reached. When
//! that fails (a parent is missing, or exists only in a lower layer), the walk below resolves
//! the path one component at a time in the merged view of the root over the lowers, with the
//! same confinement: `..` never leaves the root, absolute symlinks restart at the root, and a
//! directory seen only in a lower is first copied into the root with its metadata, as
//! overlayfs would on a write.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::fsops::{self, dot, fail, file_type, is_whiteout, open_dir, quoted, stat_at};
use super::{xattr, Applier};
use crate::error::{Error, Result};

/// Symlinks followed while resolving one path, as the kernel's own limit.
const MAX_LINKS: usize = 40;

/// A directory of the root an entry is created in.
pub(super) struct Parent {
    /// The entry's directory name, as the layer spelled it (cleaned).
    pub(super) key: Vec<u8>,
    pub(super) fd: OwnedFd,
    /// A path of the same directory that resolves in the root alone (for the end pass).
    pub(super) path: Vec<u8>,
    generation: u64,
}

/// A directory reached by the walk: its copy in the root and the lower directories that
/// merge with it (nearest first).
pub(super) struct Frame {
    pub(super) fd: OwnedFd,
    pub(super) lowers: Vec<OwnedFd>,
    pub(super) path: Vec<u8>,
}

enum Step {
    Dir(Frame),
    Link(Vec<u8>),
    Missing,
}

/// Opens `path` below `root` confined to it; `O_PATH` is enough for `*at` calls.
pub(super) fn open_in_root(
    root: BorrowedFd<'_>,
    path: &[u8],
    flags: OFlags,
) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        root,
        dot(path),
        flags | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
}

fn join(base: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(base.len() + 1 + name.len());
    path.extend_from_slice(base);
    if !base.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

impl Applier {
    /// The directory `key` in the root, created (with missing ancestors) when `create`;
    /// `None` if it does not exist and `create` is false.
    pub(super) fn parent(&mut self, key: &[u8], create: bool) -> Result<Option<Parent>> {
        if let Some(cached) = self.cache.take() {
            if cached.key == key && cached.generation == self.generation {
                return Ok(Some(cached));
            }
        }
        if let Ok(fd) = open_in_root(self.root.as_fd(), key, OFlags::PATH) {
            return Ok(Some(Parent {
                key: key.to_vec(),
                fd,
                path: key.to_vec(),
                generation: self.generation,
            }));
        }
        Ok(self.walk(key, create)?.map(|frame| Parent {
            key: key.to_vec(),
            fd: frame.fd,
            path: frame.path,
            generation: self.generation,
        }))
    }

    /// Gives a parent back for the next entry, unless something was removed meanwhile (a
    /// removal can change what the same name resolves to).
    pub(super) fn release(&mut self, parent: Parent) {
        if parent.generation == self.generation {
            self.cache = Some(parent);
        }
    }

    /// Resolves `path` component by component in the merged view (see the module comment).
    pub(super) fn walk(&mut self, path: &[u8], create: bool) -> Result<Option<Frame>> {
        let mut cur = self.root_frame()?;
        // Components still to resolve, last first.
        let mut pending: Vec<Vec<u8>> = path
            .split(|b| *b == b'/')
            .rev()
            .map(<[u8]>::to_vec)
            .collect();
        let mut links = 0;
        while let Some(comp) = pending.pop() {
            match comp.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    // Reopened rather than kept: a stack of frames would hold a descriptor
                    // per level and per lower.
                    let up = cur.path.iter().rposition(|b| *b == b'/').unwrap_or(0);
                    cur = self.frame_at(&cur.path[..up])?;
                    continue;
                }
                _ => {}
            }
            match self.step(&cur, &comp, create)? {
                Step::Dir(next) => cur = next,
                Step::Link(target) => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(Error::invalid(format!(
                            "too many levels of symbolic links in {}",
                            quoted(path)
                        )));
                    }
                    if target.first() == Some(&b'/') {
                        cur = self.root_frame()?;
                    }
                    pending.extend(target.split(|b| *b == b'/').rev().map(<[u8]>::to_vec));
                }
                Step::Missing => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// The frame of `path`, a path the walk has already been through: every component is a
    /// directory in the root by now (copied up or created as the walk went).
    fn frame_at(&mut self, path: &[u8]) -> Result<Frame> {
        let mut cur = self.root_frame()?;
        for comp in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            match self.step(&cur, comp, false)? {
                Step::Dir(next) => cur = next,
                _ => {
                    return Err(Error::internal(format!(
                        "directory {} vanished during resolution",
                        quoted(path)
                    )))
                }
            }
        }
        Ok(cur)
    }

    fn root_frame(&self) -> Result<Frame> {
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| Error::io("duplicating a descriptor", e))
        };
        Ok(Frame {
            fd: dup(&self.root)?,
            lowers: self.lowers.iter().map(dup).collect::<Result<_>>()?,
            path: Vec::new(),
        })
    }

    /// Looks `name` up in `cur`: the root's copy first, then the lowers.
    fn step(&mut self, cur: &Frame, name: &[u8], create: bool) -> Result<Step> {
        let path = join(&cur.path, name);
        let not_dir = || Error::invalid(format!("{} is not a directory", quoted(&path)));
        if let Some(st) = stat_at(cur.fd.as_fd(), name)? {
            match file_type(&st) {
                FileType::Directory => {
                    let fd = open_dir(cur.fd.as_fd(), name)
                        .map_err(|e| fail(format_args!("opening {}", quoted(&path)), e))?;
                    let lowers = if self.overlay && !xattr::is_opaque(fd.as_fd())? {
                        self.lower_dirs(&cur.lowers, name)?
                    } else {
                        Vec::new()
                    };
                    return Ok(Step::Dir(Frame { fd, lowers, path }));
                }
                FileType::Symlink => return Ok(Step::Link(read_link(cur.fd.as_fd(), name)?)),
                // A whiteout this layer wrote: the name is gone from the merged view.
                _ if self.overlay && is_whiteout(&st) => {
                    if !create {
                        return Ok(Step::Missing);
                    }
                    self.generation += 1;
                    fsops::remove_tree(cur.fd.as_fd(), name, None)?;
                    let fd = self.new_dir(cur.fd.as_fd(), name, &path)?;
                    // Without this the lower directory the whiteout hid would show through.
                    xattr::set_opaque(fd.as_fd())?;
                    return Ok(Step::Dir(Frame {
                        fd,
                        lowers: Vec::new(),
                        path,
                    }));
                }
                _ if create => return Err(not_dir()),
                _ => return Ok(Step::Missing),
            }
        }
        if self.overlay {
            for (i, lower) in cur.lowers.iter().enumerate() {
                let Some(st) = stat_at(lower.as_fd(), name)? else {
                    continue;
                };
                match file_type(&st) {
                    FileType::Directory => {
                        let below = open_dir(lower.as_fd(), name).map_err(|e| {
                            fail(format_args!("opening lower {}", quoted(&path)), e)
                        })?;
                        let fd = self.copy_up_dir(cur.fd.as_fd(), name, below.as_fd(), &path)?;
                        let mut lowers = Vec::new();
                        let hides_rest = xattr::is_opaque(below.as_fd())?;
                        lowers.push(below);
                        if !hides_rest {
                            lowers.extend(self.lower_dirs(&cur.lowers[i + 1..], name)?);
                        }
                        return Ok(Step::Dir(Frame { fd, lowers, path }));
                    }
                    FileType::Symlink => return Ok(Step::Link(read_link(lower.as_fd(), name)?)),
                    _ if is_whiteout(&st) => break,
                    _ if create => return Err(not_dir()),
                    _ => return Ok(Step::Missing),
                }
            }
        }
        if !create {
            return Ok(Step::Missing);
        }
        let fd = self.new_dir(cur.fd.as_fd(), name, &path)?;
        Ok(Step::Dir(Frame {
            fd,
            lowers: Vec::new(),
            path,
        }))
    }

    /// The directories named `name` in `lowers` that merge into one (overlayfs stops at the
    /// first non-directory, whiteout or opaque directory).
    fn lower_dirs(&self, lowers: &[OwnedFd], name: &[u8]) -> Result<Vec<OwnedFd>> {
        let mut found = Vec::new();
        for lower in lowers {
            let Some(st) = stat_at(lower.as_fd(), name)? else {
                continue;
            };
            if file_type(&st) != FileType::Directory {
                break;
            }
            let fd = open_dir(lower.as_fd(), name)
                .map_err(|e| fail(format_args!("opening lower {}", quoted(name)), e))?;
            let opaque = xattr::is_opaque(fd.as_fd())?;
            found.push(fd);
            if opaque {
                break;
            }
        }
        Ok(found)
    }

    /// A parent no layer has: made as `0755 root:root`, as tar does.
    fn new_dir(&mut self, dir: BorrowedFd<'_>, name: &[u8], path: &[u8]) -> Result<OwnedFd> {
        let what = || format!("creating directory {}", quoted(path));
        rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)).map_err(|e| fail(what(), e))?;
        let fd = open_dir(dir, name).map_err(|e| fail(what(), e))?;
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::ROOT),
            Some(rustix::fs::Gid::ROOT),
        )
        .map_err(|e| fail(what(), e))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755)).map_err(|e| fail(what(), e))?;
        self.keep_fd(fd.as_fd())?;
        Ok(fd)
    }

    /// Copies the lower directory `below` into the root as `name`, with its owner, mode,
    /// xattrs and (at the end) times, so the merged view does not change.
    fn copy_up_dir(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        below: BorrowedFd<'_>,
        path: &[u8],
    ) -> Result<OwnedFd> {
        let what = || format!("copying up directory {}", quoted(path));
        let st = rustix::fs::fstat(below).map_err(|e| fail(what(), e))?;
        rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)).map_err(|e| fail(what(), e))?;
        let fd = open_dir(dir, name).map_err(|e| fail(what(), e))?;
        self.unkeep(fd.as_fd())?;
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
        )
        .map_err(|e| fail(what(), e))?;
        xattr::copy(xattr::Node::Fd(below), xattr::Node::Fd(fd.as_fd()))
            .map_err(|e| e.context(what()))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(st.st_mode & 0o7777))
            .map_err(|e| fail(what(), e))?;
        self.dir_times.push((path.to_vec(), super::stat_times(&st)));
        Ok(fd)
    }
}

pub(super) fn read_link(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Vec<u8>> {
    rustix::fs::readlinkat(dir, name, Vec::new())
        .map(|target| target.into_bytes())
        .map_err(|e| fail(format_args!("reading symlink {}", quoted(name)), e))
}
