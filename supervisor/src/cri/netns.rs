//! Pinned network namespaces: a pod's network namespace outlives every process in it because
//! it is bind-mounted onto a file. CNI plugins and the OCI runtime reach it by that path.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::error::{Error, Result};

/// Creates a new network namespace and pins it at `path` (which must not exist yet).
///
/// The namespace is made by a short-lived thread of its own: `unshare` changes only the
/// calling thread, so no other thread of supd ever runs inside the new namespace.
pub fn create(path: &Path) -> Result<()> {
    let what = || format!("network namespace {}", path.display());
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("{}: creating its directory", what()), e))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(format!("{}: creating its file", what()), e))?;
    let target: PathBuf = path.to_path_buf();
    let pinned = std::thread::Builder::new()
        .name("sup-netns".into())
        .spawn(move || pin_new_namespace(&target))
        .map_err(|e| Error::io(format!("{}: starting its thread", what()), e))?
        .join()
        .map_err(|_| Error::internal(format!("{}: its thread panicked", what())));
    match pinned.and_then(|r| r) {
        Ok(()) => Ok(()),
        Err(e) => {
            if let Err(rm) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %rm, "cannot remove netns file");
            }
            Err(e.context(what()))
        }
    }
}

/// Runs on a thread that is discarded afterwards: it leaves the host's network namespace.
fn pin_new_namespace(target: &Path) -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::from(e).context("unshare(CLONE_NEWNET)"))?;
    let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
    mount(
        Some(own.as_str()),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| Error::from(e).context(format!("bind-mounting {own}")))
}

/// Unpins and removes the namespace file at `path`. A missing file or one that is no
/// longer a mount point is fine: removal is idempotent.
pub fn remove(path: &Path) -> Result<()> {
    let what = || format!("network namespace {}", path.display());
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(Error::from(e).context(format!("{}: unmounting", what()))),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("{}: removing its file", what()), e)),
    }
}

/// Whether `path` holds a pinned namespace (a bind mount of an `nsfs` inode).
pub fn is_pinned(path: &Path) -> bool {
    // nsfs's magic number: the mounted file is a namespace, not the empty file under it.
    match nix::sys::statfs::statfs(path) {
        Ok(s) => s.filesystem_type().0 == 0x6e73_6673,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_remove_twice() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("ns").join("pod1");
        create(&p).expect("create");
        assert!(is_pinned(&p));
        assert!(create(&p).is_err(), "a second create must fail");
        remove(&p).expect("remove");
        assert!(!p.exists());
        remove(&p).expect("remove again");
    }
}
