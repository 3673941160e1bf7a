//! Small filesystem helpers on directory descriptors: lookups that never follow the last
//! component, and recursive removal written with `*at` calls.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// Wraps a failed system call with what was being done. A name longer than the filesystem
/// allows is the layer's fault, not ours.
pub(super) fn fail(what: impl std::fmt::Display, err: Errno) -> Error {
    match err {
        Errno::NAMETOOLONG => Error::invalid(format!("{what}: name too long")),
        _ => Error::io(what, err.into()),
    }
}

/// Quotes a name for messages.
pub(super) fn quoted(name: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(name))
}

/// `name` as a path for `*at` calls: the empty name means the directory itself.
pub(super) fn dot(name: &[u8]) -> &[u8] {
    if name.is_empty() {
        b"."
    } else {
        name
    }
}

/// Opens the directory `name` in `dir` for reading, refusing to follow a symlink.
pub(super) fn open_dir(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        dot(name),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// `lstat` of `name` in `dir`; `None` if it does not exist.
pub(super) fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(err) => Err(fail(format_args!("inspecting {}", quoted(name)), err)),
    }
}

pub(super) fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// An overlayfs whiteout: a character device numbered 0:0.
pub(super) fn is_whiteout(st: &Stat) -> bool {
    file_type(st) == FileType::CharacterDevice && st.st_rdev == 0
}

/// Removes `name` from `dir`, recursively if it is a directory, never following symlinks.
///
/// With `keep`, inodes in the set survive, and so do the directories leading to them: this
/// is how a whiteout in a copied tree spares what the same layer wrote.
pub(super) fn remove_tree(
    dir: BorrowedFd<'_>,
    name: &[u8],
    keep: Option<&HashSet<u64>>,
) -> Result<()> {
    let Some(st) = stat_at(dir, name)? else {
        return Ok(());
    };
    let kept = |ino: u64| keep.is_some_and(|k| k.contains(&ino));
    if file_type(&st) != FileType::Directory {
        if !kept(st.st_ino) {
            unlink(dir, name, AtFlags::empty())?;
        }
        return Ok(());
    }
    let top = open_dir(dir, name).map_err(|e| fail(format_args!("opening {}", quoted(name)), e))?;
    let emptied = empty_dir(top, keep)?;
    if emptied && !kept(st.st_ino) {
        unlink(dir, name, AtFlags::REMOVEDIR)?;
    }
    Ok(())
}

/// Removes the children of the directory `name` in `dir` (kept inodes excepted), leaving the
/// directory itself.
pub(super) fn remove_children(
    dir: BorrowedFd<'_>,
    name: &[u8],
    keep: Option<&HashSet<u64>>,
) -> Result<()> {
    let top = open_dir(dir, name).map_err(|e| fail(format_args!("opening {}", quoted(name)), e))?;
    empty_dir(top, keep).map(|_| ())
}

fn unlink(dir: BorrowedFd<'_>, name: &[u8], flags: AtFlags) -> Result<()> {
    match rustix::fs::unlinkat(dir, name, flags) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(err) => Err(fail(format_args!("removing {}", quoted(name)), err)),
    }
}

/// Empties the directory `top` (kept inodes and their ancestors excepted) and says whether
/// nothing is left. Walks down and back up through `..` holding one directory open at a time,
/// so a hostile depth can exhaust neither the stack nor the descriptor table; it never climbs
/// above `top`, where it started.
fn empty_dir(top: OwnedFd, keep: Option<&HashSet<u64>>) -> Result<bool> {
    let kept = |ino: u64| keep.is_some_and(|k| k.contains(&ino));
    let mut cur = top;
    // Names from `top` down to `cur`.
    let mut trail: Vec<CString> = Vec::new();
    // Directories finished but left in place (kept, or holding something kept).
    let mut spared: HashSet<u64> = HashSet::new();
    loop {
        let mut descend = None;
        let mut left_something = false;
        let listing = Dir::read_from(cur.as_fd()).map_err(|e| fail("listing a directory", e))?;
        for entry in listing {
            let entry = entry.map_err(|e| fail("listing a directory", e))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let is_dir = match entry.file_type() {
                FileType::Directory => true,
                FileType::Unknown => stat_at(cur.as_fd(), name.to_bytes())?
                    .is_some_and(|st| file_type(&st) == FileType::Directory),
                _ => false,
            };
            if is_dir {
                if spared.contains(&entry.ino()) {
                    left_something = true;
                    continue;
                }
                descend = Some(name.to_owned());
                break;
            }
            if kept(entry.ino()) {
                left_something = true;
                continue;
            }
            unlink(cur.as_fd(), name.to_bytes(), AtFlags::empty())?;
        }
        if let Some(child) = descend {
            let next = open_dir(cur.as_fd(), child.to_bytes())
                .map_err(|e| fail(format_args!("opening {:?}", child), e))?;
            trail.push(child);
            cur = next;
            continue;
        }
        // Every entry of `cur` has been dealt with.
        let Some(name) = trail.pop() else {
            return Ok(!left_something);
        };
        let ino = rustix::fs::fstat(&cur)
            .map_err(|e| fail("inspecting a directory", e))?
            .st_ino;
        let up = open_dir(cur.as_fd(), b"..").map_err(|e| fail("opening a parent", e))?;
        if left_something || kept(ino) {
            spared.insert(ino);
        } else {
            match rustix::fs::unlinkat(&up, name.as_c_str(), AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::NOTEMPTY | Errno::EXIST) => {
                    spared.insert(ino);
                }
                Err(err) => return Err(fail(format_args!("removing {:?}", name), err)),
            }
        }
        cur = up;
    }
}
