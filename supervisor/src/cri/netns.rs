//! Pinned namespaces: a pod's network, IPC and UTS namespaces outlive every process in them
//! because each is bind-mounted onto a file. CNI plugins and the OCI runtime reach them by
//! that path, so the pod keeps its network, shared memory and host name while the pod exists,
//! even if its pause process dies (the CRI requires this).

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::error::{Error, Result};

/// The kinds of namespace a pod pins. All three can be unshared by one thread of a
/// multi-threaded process, which is what makes the thread technique below possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsKind {
    Net,
    Ipc,
    Uts,
}

impl NsKind {
    fn flag(self) -> CloneFlags {
        match self {
            NsKind::Net => CloneFlags::CLONE_NEWNET,
            NsKind::Ipc => CloneFlags::CLONE_NEWIPC,
            NsKind::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }

    /// The name under /proc/<pid>/ns/.
    fn proc_name(self) -> &'static str {
        match self {
            NsKind::Net => "net",
            NsKind::Ipc => "ipc",
            NsKind::Uts => "uts",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            NsKind::Net => "network namespace",
            NsKind::Ipc => "IPC namespace",
            NsKind::Uts => "UTS namespace",
        }
    }
}

/// Creates a new network namespace and pins it at `path` (which must not exist yet).
pub fn create(path: &Path) -> Result<()> {
    create_kind(NsKind::Net, path)
}

/// Creates a new namespace of `kind` and pins it at `path` (which must not exist yet).
///
/// The namespace is made by a short-lived thread of its own: `unshare` changes only the
/// calling thread, so no other thread of supd ever runs inside the new namespace.
pub fn create_kind(kind: NsKind, path: &Path) -> Result<()> {
    let what = || format!("{} {}", kind.describe(), path.display());
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
        .name(format!("sup-{}ns", kind.proc_name()))
        .spawn(move || pin_new_namespace(kind, &target))
        .map_err(|e| Error::io(format!("{}: starting its thread", what()), e))?
        .join()
        .map_err(|_| Error::internal(format!("{}: its thread panicked", what())));
    match pinned.and_then(|r| r) {
        Ok(()) => Ok(()),
        Err(e) => {
            if let Err(rm) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %rm, "cannot remove a namespace file");
            }
            Err(e.context(what()))
        }
    }
}

/// Runs on a thread that is discarded afterwards: it leaves the host's namespace of `kind`.
fn pin_new_namespace(kind: NsKind, target: &Path) -> Result<()> {
    unshare(kind.flag())
        .map_err(|e| Error::from(e).context(format!("unshare({:?})", kind.flag())))?;
    let own = format!(
        "/proc/self/task/{}/ns/{}",
        nix::unistd::gettid(),
        kind.proc_name()
    );
    mount(
        Some(own.as_str()),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| Error::from(e).context(format!("bind-mounting {own}")))
}

/// Unpins and removes the namespace file at `path` (of any kind). A missing file or one that
/// is no longer a mount point is fine: removal is idempotent.
pub fn remove(path: &Path) -> Result<()> {
    let what = || format!("namespace {}", path.display());
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

    #[test]
    fn ipc_and_uts_pins_differ_from_ours() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        for (kind, name) in [(NsKind::Ipc, "ipc"), (NsKind::Uts, "uts")] {
            let p = dir.path().join(name);
            create_kind(kind, &p).expect("create");
            assert!(is_pinned(&p));
            // The pin is a new namespace, not supd's own.
            let ours = std::fs::metadata(format!("/proc/self/ns/{name}")).expect("own ns");
            let pinned = std::fs::metadata(&p).expect("pinned ns");
            assert_ne!(
                std::os::unix::fs::MetadataExt::ino(&ours),
                std::os::unix::fs::MetadataExt::ino(&pinned)
            );
            remove(&p).expect("remove");
            assert!(!p.exists());
        }
    }
}
