//! Reading small files (such as /etc/passwd) out of a container's root filesystem, which is
//! untrusted: an image, or a running container, controls every path and file inside it.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// Enough for any real account database; a bigger file is an attack on supd's memory.
pub const MAX_FILE: u64 = 4 << 20;

/// Reads `rel` (e.g. "etc/passwd") inside `rootfs` as if `rootfs` were "/": symlinks, even
/// absolute ones and `..`, cannot leave it. `Ok(None)` when the file does not exist.
///
/// The file is first opened with O_PATH, which performs no I/O on it, and read only once it is
/// known to be a regular file: a container could otherwise plant a FIFO (supd would block) or
/// a device node (supd, outside the container's device cgroup, would read the host's device).
pub fn read_file(rootfs: &Path, rel: &str) -> Result<Option<Vec<u8>>> {
    let shown = format!("/{rel} in the container's root filesystem");
    let root = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(format!("root filesystem {}", rootfs.display()), e.into()))?;
    let handle = match open_in_root(&root, rel) {
        Ok(fd) => fd,
        Err(Errno::NOENT) | Err(Errno::NOTDIR) => return Ok(None),
        Err(Errno::LOOP) => {
            return Err(Error::invalid(format!(
                "{shown}: symbolic link loop (links resolve inside the root filesystem)"
            )))
        }
        Err(e) => return Err(Error::io(&shown, e.into())),
    };
    let st = rustix::fs::fstat(&handle).map_err(|e| Error::io(&shown, e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(Error::invalid(format!("{shown}: not a regular file")));
    }
    if u64::try_from(st.st_size).unwrap_or(u64::MAX) > MAX_FILE {
        return Err(Error::invalid(format!(
            "{shown}: larger than {MAX_FILE} bytes"
        )));
    }
    // Re-opening through /proc reaches exactly the inode checked above, whatever the
    // container has renamed since.
    let file = std::fs::File::open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
        .map_err(|e| Error::io(&shown, e))?;
    let mut data = Vec::new();
    // The size was checked, but the file can grow between fstat and read.
    file.take(MAX_FILE + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::io(&shown, e))?;
    if data.len() as u64 > MAX_FILE {
        return Err(Error::invalid(format!(
            "{shown}: larger than {MAX_FILE} bytes"
        )));
    }
    Ok(Some(data))
}

fn open_in_root(root: &OwnedFd, rel: &str) -> std::result::Result<OwnedFd, Errno> {
    let flags = OFlags::PATH | OFlags::CLOEXEC;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(root, rel, flags, Mode::empty(), resolve) {
        // Kernels before 5.6, or a seccomp filter that hides openat2.
        Err(Errno::NOSYS) | Err(Errno::PERM) => open_no_symlinks(root, rel),
        other => other,
    }
}

/// The fallback: walk the path one component at a time and refuse every symlink, even one
/// that would stay inside the root filesystem.
fn open_no_symlinks(root: &OwnedFd, rel: &str) -> std::result::Result<OwnedFd, Errno> {
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let Some((last, dirs)) = parts.split_last() else {
        return Err(Errno::INVAL);
    };
    let mut dir: Option<OwnedFd> = None;
    for part in dirs {
        if *part == ".." || *part == "." {
            return Err(Errno::INVAL);
        }
        let at = dir.as_ref().unwrap_or(root);
        let next = rustix::fs::openat(
            at,
            *part,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        dir = Some(next);
    }
    if *last == ".." || *last == "." {
        return Err(Errno::INVAL);
    }
    let at = dir.as_ref().unwrap_or(root);
    let fd = rustix::fs::openat(
        at,
        *last,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // O_PATH|O_NOFOLLOW opens the link itself rather than failing: refuse it here.
    if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) == FileType::Symlink {
        return Err(Errno::LOOP);
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        dir
    }

    #[test]
    fn reads_a_regular_file() {
        let root = rootfs();
        std::fs::write(
            root.path().join("etc/passwd"),
            b"root:x:0:0::/root:/bin/sh\n",
        )
        .unwrap();
        let data = read_file(root.path(), "etc/passwd").unwrap().unwrap();
        assert_eq!(data, b"root:x:0:0::/root:/bin/sh\n");
        assert!(read_file(root.path(), "etc/group").unwrap().is_none());
    }

    #[test]
    fn absolute_symlink_stays_in_the_root() {
        let root = rootfs();
        // Resolved inside the root: /etc/shadow of the root filesystem, absent here.
        symlink("/etc/shadow", root.path().join("etc/passwd")).unwrap();
        assert!(read_file(root.path(), "etc/passwd").unwrap().is_none());
        std::fs::write(root.path().join("etc/shadow"), b"inside\n").unwrap();
        assert_eq!(
            read_file(root.path(), "etc/passwd").unwrap().unwrap(),
            b"inside\n"
        );
    }

    #[test]
    fn dotdot_symlink_stays_in_the_root() {
        let outer = tempfile::tempdir().unwrap();
        std::fs::write(outer.path().join("secret"), b"host secret\n").unwrap();
        let root = outer.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink("../../../../../secret", root.join("etc/passwd")).unwrap();
        symlink("../..", root.join("etc/up")).unwrap();
        assert!(read_file(&root, "etc/passwd").unwrap().is_none());
        assert!(read_file(&root, "etc/up/secret").unwrap().is_none());
    }

    #[test]
    fn refuses_fifos_and_directories() {
        let root = rootfs();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.path().join("etc/passwd"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let err = read_file(root.path(), "etc/passwd").unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        std::fs::create_dir(root.path().join("etc/group")).unwrap();
        assert!(read_file(root.path(), "etc/group").is_err());
    }

    #[test]
    fn refuses_huge_files() {
        let root = rootfs();
        let f = std::fs::File::create(root.path().join("etc/passwd")).unwrap();
        f.set_len(MAX_FILE + 1).unwrap();
        let err = read_file(root.path(), "etc/passwd").unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn fallback_refuses_every_symlink() {
        let root = rootfs();
        std::fs::write(root.path().join("etc/real"), b"x\n").unwrap();
        symlink("real", root.path().join("etc/passwd")).unwrap();
        let fd =
            rustix::fs::open(root.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        assert_eq!(
            open_no_symlinks(&fd, "etc/passwd").unwrap_err(),
            Errno::LOOP
        );
        assert!(open_no_symlinks(&fd, "etc/real").is_ok());
        assert_eq!(open_no_symlinks(&fd, "../x").unwrap_err(), Errno::INVAL);
    }
}
