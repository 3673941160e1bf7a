//! Walking snapshot directories by file descriptor: the walker the copy, the usage count and
//! the removal share, and the last two themselves.
//!
//! A snapshot's tree is written by containers and layers, so it is hostile: the walk never
//! follows a symlink, never leaves the tree, never crosses into another mount (a mount inside
//! a snapshot being removed must not have its contents deleted), and recurses on the heap so
//! that a deep tree cannot overflow the stack.

use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, IFlags, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::snapshot::Usage;

/// Wraps a system error with the path it happened on.
pub(crate) fn fs_err(path: &Path, what: &str, err: Errno) -> Error {
    Error::io(format!("{what} {}", path.display()), io::Error::from(err))
}

pub(crate) fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Opens a directory the caller names by full path (the snapshotter's own directories),
/// refusing a symlink in the last component.
pub(crate) fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fs_err(path, "opening", e))
}

/// Opens the directory `name` inside `parent`, failing with EXDEV if it is a mount point and
/// ELOOP/ENOTDIR if it is a symlink.
pub(crate) fn open_subdir(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV;
    match rustix::fs::openat2(parent, name, flags, Mode::empty(), resolve) {
        Err(Errno::NOSYS) => {
            // Kernels before 5.6: the same checks by hand.
            let fd = rustix::fs::openat(parent, name, flags, Mode::empty())?;
            if rustix::fs::fstat(&fd)?.st_dev != rustix::fs::fstat(parent)?.st_dev {
                return Err(Errno::XDEV.into());
            }
            Ok(fd)
        }
        other => Ok(other?),
    }
}

/// The names in a directory, without `.` and `..`, read before anything is changed in it.
pub(crate) fn list_names(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// One entry met by a walk: `dir` holds it as `name`.
pub(crate) struct Node<'a> {
    pub dir: BorrowedFd<'a>,
    pub name: &'a CStr,
    pub st: &'a Stat,
    pub path: &'a Path,
}

/// What a walk does at each entry. `Ctx` is what it carries per directory (the copy's
/// destination directory, say).
pub(crate) trait Visitor {
    type Ctx;

    /// Any entry that is not a directory.
    fn entry(&mut self, ctx: &Self::Ctx, node: &Node<'_>) -> Result<()>;

    /// A directory, opened as `fd`, before its contents; returns its context.
    fn enter(&mut self, ctx: &Self::Ctx, node: &Node<'_>, fd: BorrowedFd<'_>) -> Result<Self::Ctx>;

    /// The same directory, after its contents.
    fn leave(
        &mut self,
        ctx: &Self::Ctx,
        node: &Node<'_>,
        fd: BorrowedFd<'_>,
        inner: Self::Ctx,
    ) -> Result<()>;
}

struct Frame<C> {
    fd: OwnedFd,
    ctx: C,
    names: Vec<CString>,
    next: usize,
    path: PathBuf,
    /// How the parent frame names this directory, and its stat (None for the root).
    name: CString,
    st: Option<Stat>,
}

/// Visits everything below the directory `root` (not `root` itself), depth first.
pub(crate) fn walk<V: Visitor>(
    root: OwnedFd,
    ctx: V::Ctx,
    path: &Path,
    v: &mut V,
) -> Result<V::Ctx> {
    let reading = |path: &Path, e| Error::io(format!("reading {}", path.display()), e);
    let names = list_names(root.as_fd()).map_err(|e| reading(path, e))?;
    let mut stack = vec![Frame {
        fd: root,
        ctx,
        names,
        next: 0,
        path: path.to_path_buf(),
        name: CString::default(),
        st: None,
    }];
    loop {
        let Some(top) = stack.last_mut() else {
            return Err(Error::internal("tree walk: empty stack"));
        };
        if top.next == top.names.len() {
            let Some(done) = stack.pop() else { continue };
            let (Some(parent), Some(st)) = (stack.last(), done.st) else {
                return Ok(done.ctx);
            };
            let node = Node {
                dir: parent.fd.as_fd(),
                name: &done.name,
                st: &st,
                path: &done.path,
            };
            v.leave(&parent.ctx, &node, done.fd.as_fd(), done.ctx)?;
            continue;
        }
        let name = top.names[top.next].clone();
        top.next += 1;
        let path = top.path.join(OsStr::from_bytes(name.to_bytes()));
        let st = match rustix::fs::statat(&top.fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Gone since the listing: nothing left to visit.
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(fs_err(&path, "inspecting", e)),
        };
        let node = Node {
            dir: top.fd.as_fd(),
            name: &name,
            st: &st,
            path: &path,
        };
        if file_type(&st) != FileType::Directory {
            v.entry(&top.ctx, &node)?;
            continue;
        }
        let fd = open_subdir(top.fd.as_fd(), &name).map_err(|e| match e.raw_os_error() {
            Some(libc::EXDEV) => {
                Error::precondition(format!("{}: is a mount point", path.display()))
            }
            _ => Error::io(format!("opening {}", path.display()), e),
        })?;
        let ctx = v.enter(&top.ctx, &node, fd.as_fd())?;
        let names = list_names(fd.as_fd()).map_err(|e| reading(&path, e))?;
        stack.push(Frame {
            fd,
            ctx,
            names,
            next: 0,
            path,
            name,
            st: Some(st),
        });
    }
}

/// The same inode: device and inode number.
// The field types differ between architectures, so the conversions are not always no-ops.
#[allow(clippy::useless_conversion)]
pub(crate) fn inode(st: &Stat) -> (u64, u64) {
    (u64::from(st.st_dev), u64::from(st.st_ino))
}

/// Whether other names share this inode.
#[allow(clippy::useless_conversion)]
pub(crate) fn linked(st: &Stat) -> bool {
    file_type(st) != FileType::Directory && u64::from(st.st_nlink) > 1
}

#[allow(clippy::useless_conversion)]
fn bytes_used(st: &Stat) -> i64 {
    i64::try_from(st.st_blocks)
        .unwrap_or(i64::MAX)
        .saturating_mul(512)
}

/// Space and inodes under `root`, `root` included; a hardlinked inode counts once.
pub(crate) fn disk_usage(root: &Path) -> Result<Usage> {
    struct Count {
        usage: Usage,
        seen: HashSet<(u64, u64)>,
    }
    impl Count {
        fn add(&mut self, st: &Stat) {
            if linked(st) && !self.seen.insert(inode(st)) {
                return;
            }
            self.usage.inodes += 1;
            self.usage.size = self.usage.size.saturating_add(bytes_used(st));
        }
    }
    impl Visitor for Count {
        type Ctx = ();
        fn entry(&mut self, _: &(), node: &Node<'_>) -> Result<()> {
            self.add(node.st);
            Ok(())
        }
        fn enter(&mut self, _: &(), node: &Node<'_>, _: BorrowedFd<'_>) -> Result<()> {
            self.add(node.st);
            Ok(())
        }
        fn leave(&mut self, _: &(), _: &Node<'_>, _: BorrowedFd<'_>, _: ()) -> Result<()> {
            Ok(())
        }
    }
    let fd = open_dir(root)?;
    let st = rustix::fs::fstat(&fd).map_err(|e| fs_err(root, "inspecting", e))?;
    let mut count = Count {
        usage: Usage::default(),
        seen: HashSet::new(),
    };
    count.add(&st);
    walk(fd, (), root, &mut count)?;
    Ok(count.usage)
}

/// Deletes `path` and everything below it, even files marked immutable or append-only. It
/// stops, with an error, at a mount point found inside rather than delete what is mounted.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    struct Remove;
    impl Visitor for Remove {
        type Ctx = ();
        fn entry(&mut self, _: &(), node: &Node<'_>) -> Result<()> {
            unlink(node.dir, node.name, node.st, node.path)
        }
        fn enter(&mut self, _: &(), _: &Node<'_>, fd: BorrowedFd<'_>) -> Result<()> {
            // An immutable or append-only directory refuses both its own removal and that
            // of its entries.
            clear_flags(fd);
            Ok(())
        }
        fn leave(&mut self, _: &(), node: &Node<'_>, _: BorrowedFd<'_>, _: ()) -> Result<()> {
            rustix::fs::unlinkat(node.dir, node.name, AtFlags::REMOVEDIR)
                .map_err(|e| fs_err(node.path, "removing", e))
        }
    }

    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::invalid(format!(
            "{}: not a removable path",
            path.display()
        )));
    };
    let name = CString::new(name.as_bytes())
        .map_err(|_| Error::invalid(format!("{}: bad path", path.display())))?;
    let parent_fd = open_dir(parent)?;
    let st = match rustix::fs::statat(&parent_fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(fs_err(path, "inspecting", e)),
    };
    if file_type(&st) != FileType::Directory {
        return unlink(parent_fd.as_fd(), &name, &st, path);
    }
    let fd = open_subdir(parent_fd.as_fd(), &name)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    clear_flags(fd.as_fd());
    walk(fd, (), path, &mut Remove)?;
    rustix::fs::unlinkat(&parent_fd, &name, AtFlags::REMOVEDIR)
        .map_err(|e| fs_err(path, "removing", e))
}

fn unlink(dir: BorrowedFd<'_>, name: &CStr, st: &Stat, path: &Path) -> Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        // Only regular files carry inode flags that can be cleared through an fd opened
        // without side effects (opening a device node might have some).
        Err(Errno::PERM) if file_type(st) == FileType::RegularFile => {
            let flags = OFlags::RDONLY
                | OFlags::NOFOLLOW
                | OFlags::NONBLOCK
                | OFlags::CLOEXEC
                | OFlags::NOCTTY;
            let fd = rustix::fs::openat(dir, name, flags, Mode::empty())
                .map_err(|e| fs_err(path, "opening", e))?;
            clear_flags(fd.as_fd());
            rustix::fs::unlinkat(dir, name, AtFlags::empty())
                .map_err(|e| fs_err(path, "removing", e))
        }
        Err(e) => Err(fs_err(path, "removing", e)),
    }
}

/// Drops the immutable and append-only flags, if the filesystem has such flags at all.
fn clear_flags(fd: BorrowedFd<'_>) {
    let sticky = IFlags::IMMUTABLE | IFlags::APPEND;
    if let Ok(flags) = rustix::fs::ioctl_getflags(fd) {
        if flags.intersects(sticky) {
            // A failure shows up as the unlink's own error, which names the path.
            let _ = rustix::fs::ioctl_setflags(fd, flags - sticky);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn snapshot_tree_removal_spares_symlink_targets_and_clears_immutable() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"x").unwrap();

        let doomed = dir.path().join("doomed");
        fs::create_dir_all(doomed.join("a/b/c")).unwrap();
        fs::write(doomed.join("a/b/c/f"), b"data").unwrap();
        symlink(&outside, doomed.join("a/link")).unwrap();
        fs::set_permissions(
            doomed.join("a/b"),
            std::os::unix::fs::PermissionsExt::from_mode(0o000),
        )
        .unwrap();
        let f = rustix::fs::open(doomed.join("a/b/c/f"), OFlags::RDONLY, Mode::empty()).unwrap();
        // Not every filesystem has inode flags; the removal must work either way.
        let _ = rustix::fs::ioctl_setflags(&f, IFlags::IMMUTABLE);
        drop(f);

        let usage = disk_usage(&doomed).unwrap();
        assert_eq!(usage.inodes, 6);

        remove_tree(&doomed).unwrap();
        assert!(!doomed.exists());
        assert!(outside.join("keep").exists());
        remove_tree(&doomed).unwrap();
    }

    #[test]
    fn snapshot_usage_counts_hardlinks_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), vec![1u8; 64 * 1024]).unwrap();
        fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        let usage = disk_usage(dir.path()).unwrap();
        assert_eq!(usage.inodes, 2);
        assert!(
            usage.size >= 64 * 1024 && usage.size < 128 * 1024,
            "{usage:?}"
        );
    }
}
