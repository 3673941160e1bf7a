//! Applying snapshot mounts to a directory and taking them down again: the one place supd
//! calls mount(2) and umount(2) for rootfs trees.
//!
//! Options follow mount(8): flag words ("ro", "nosuid", "rbind", "private", ...) become mount
//! flags and the rest is filesystem data. A read-only bind needs a second, remounting call,
//! since the kernel ignores MS_RDONLY on the bind itself. Overlay data too long for one page
//! (many layers) goes through the new mount API, one `lowerdir+` per layer (Linux 6.8+).

use std::ffi::CString;
use std::io;
use std::path::{Component, Path, PathBuf};

use rustix::io::Errno;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MountPropagationFlags, MoveMountFlags,
    UnmountFlags,
};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One mount(2) call; `target` is relative to the caller's mount point (empty: the point itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub target: String,
    pub options: Vec<String>,
}

/// mount(2) data must fit in a page, its terminating NUL included.
const MAX_DATA: usize = 4095;

/// Upper bound on unmount calls for one target, against something remounting behind us.
const MAX_UNMOUNTS: usize = 1024;

/// Applies `mounts` in order at `target` (each at its own `target` below it). On failure,
/// whatever was mounted is unmounted again and the error names the failing mount.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    let mut done: Vec<PathBuf> = Vec::new();
    for m in mounts {
        let result = destination(target, &m.target).and_then(|dest| {
            mount_one(m, &dest)?;
            Ok(dest)
        });
        match result {
            Ok(dest) => done.push(dest),
            Err(e) => {
                for dest in done.iter().rev() {
                    if let Err(undo) = unmount_top(dest) {
                        tracing::warn!(target = %dest.display(), error = %undo, "undoing a mount");
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Unmounts everything mounted at or below `target`, deepest first and each stacked mount in
/// turn, until nothing is. A target that does not exist or is not mounted is fine.
pub fn unmount_all(target: &Path) -> Result<()> {
    let target = match std::fs::canonicalize(target) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("resolving {}", target.display()), e)),
    };
    for _ in 0..MAX_UNMOUNTS {
        let points = match mount_points_under(&target) {
            Ok(points) => points,
            // Without /proc, fall back to the target itself.
            Err(_) => vec![target.clone()],
        };
        if points.is_empty() {
            return Ok(());
        }
        let mut any = false;
        for p in &points {
            any |= unmount_top(p)?;
        }
        if !any {
            return Ok(());
        }
    }
    Err(Error::Unavailable(format!(
        "{}: still mounted after {MAX_UNMOUNTS} unmounts",
        target.display()
    )))
}

/// Removes the topmost mount at `path`: true if there was one. A busy mount is detached
/// (it goes away once its last user does) rather than left behind.
fn unmount_top(path: &Path) -> Result<bool> {
    match rustix::mount::unmount(path, UnmountFlags::NOFOLLOW) {
        Ok(()) => Ok(true),
        Err(Errno::INVAL | Errno::NOENT) => Ok(false),
        Err(Errno::BUSY) => {
            tracing::warn!(target = %path.display(), "mount busy; detaching it");
            match rustix::mount::unmount(path, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH) {
                Ok(()) => Ok(true),
                Err(Errno::INVAL | Errno::NOENT) => Ok(false),
                Err(e) => Err(Error::io(
                    format!("unmounting {}", path.display()),
                    e.into(),
                )),
            }
        }
        Err(e) => Err(Error::io(
            format!("unmounting {}", path.display()),
            e.into(),
        )),
    }
}

/// Mount points at or below `target` from /proc/self/mountinfo, deepest first.
fn mount_points_under(target: &Path) -> io::Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(target))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    Ok(points)
}

/// How mounts below a mount point propagate: its peer group (`shared:N`) and master
/// (`master:N`) in /proc/self/mountinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Propagation {
    pub shared: bool,
    pub slave: bool,
}

/// The propagation of the mount that holds `path` (the deepest mount point above it; the
/// last one mounted there when several are).
pub fn propagation_of(path: &Path) -> io::Result<Propagation> {
    let path = std::fs::canonicalize(path)?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    propagation_in(&info, &path).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no mount holds {}", path.display()),
        )
    })
}

fn propagation_in(mountinfo: &str, path: &Path) -> Option<Propagation> {
    let mut best: Option<(usize, Propagation)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4).map(|p| PathBuf::from(unescape(p))) else {
            continue;
        };
        if !path.starts_with(&point) {
            continue;
        }
        // Optional fields run from the seventh to the "-" separator.
        let optional = fields.iter().skip(6).take_while(|f| **f != "-");
        let mut prop = Propagation {
            shared: false,
            slave: false,
        };
        for f in optional {
            prop.shared |= f.starts_with("shared:");
            prop.slave |= f.starts_with("master:");
        }
        let depth = point.components().count();
        if best.is_none_or(|(d, _)| depth >= d) {
            best = Some((depth, prop));
        }
    }
    best.map(|(_, p)| p)
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a mount with relative target `rel` goes; it may not climb out of `target`.
fn destination(target: &Path, rel: &str) -> Result<PathBuf> {
    let rel = Path::new(rel.trim_start_matches('/'));
    if rel.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(Error::invalid(format!(
            "mount target {rel:?}: may not contain \"..\""
        )));
    }
    let dest = target.join(rel);
    if rel.as_os_str().is_empty() {
        return Ok(dest);
    }
    // A symlink inside an already mounted tree must not send the mount elsewhere.
    let (base, resolved) = (std::fs::canonicalize(target), std::fs::canonicalize(&dest));
    match (base, resolved) {
        (Ok(base), Ok(resolved)) if resolved.starts_with(&base) => Ok(resolved),
        (Ok(_), Ok(resolved)) => Err(Error::invalid(format!(
            "mount target {}: resolves to {}, outside {}",
            dest.display(),
            resolved.display(),
            target.display()
        ))),
        (Err(e), _) | (_, Err(e)) => Err(Error::io(format!("resolving {}", dest.display()), e)),
    }
}

/// Flags and data parsed from a mount's options.
#[derive(Debug, PartialEq)]
struct Options {
    flags: MountFlags,
    propagation: MountPropagationFlags,
    bind: bool,
    data: Vec<String>,
}

fn parse_options(options: &[String]) -> Options {
    let mut o = Options {
        flags: MountFlags::empty(),
        propagation: MountPropagationFlags::empty(),
        bind: false,
        data: Vec::new(),
    };
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" => (MountFlags::RDONLY, MountFlags::empty()),
            "rw" => (MountFlags::empty(), MountFlags::RDONLY),
            "nosuid" => (MountFlags::NOSUID, MountFlags::empty()),
            "suid" => (MountFlags::empty(), MountFlags::NOSUID),
            "nodev" => (MountFlags::NODEV, MountFlags::empty()),
            "dev" => (MountFlags::empty(), MountFlags::NODEV),
            "noexec" => (MountFlags::NOEXEC, MountFlags::empty()),
            "exec" => (MountFlags::empty(), MountFlags::NOEXEC),
            "noatime" => (MountFlags::NOATIME, MountFlags::empty()),
            "nodiratime" => (MountFlags::NODIRATIME, MountFlags::empty()),
            "relatime" => (MountFlags::RELATIME, MountFlags::empty()),
            "strictatime" => (MountFlags::STRICTATIME, MountFlags::empty()),
            "sync" => (MountFlags::SYNCHRONOUS, MountFlags::empty()),
            "async" => (MountFlags::empty(), MountFlags::SYNCHRONOUS),
            "dirsync" => (MountFlags::DIRSYNC, MountFlags::empty()),
            "bind" => {
                o.bind = true;
                continue;
            }
            "rbind" => {
                o.bind = true;
                (MountFlags::REC, MountFlags::empty())
            }
            "defaults" => continue,
            other => {
                let propagation = match other {
                    "private" => MountPropagationFlags::PRIVATE,
                    "rprivate" => MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
                    "shared" => MountPropagationFlags::SHARED,
                    "rshared" => MountPropagationFlags::SHARED | MountPropagationFlags::REC,
                    "slave" => MountPropagationFlags::DOWNSTREAM,
                    "rslave" => MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
                    "unbindable" => MountPropagationFlags::UNBINDABLE,
                    "runbindable" => MountPropagationFlags::UNBINDABLE | MountPropagationFlags::REC,
                    _ => {
                        o.data.push(other.to_string());
                        continue;
                    }
                };
                o.propagation = propagation;
                continue;
            }
        };
        o.flags = (o.flags | set) - clear;
    }
    o
}

fn mount_one(m: &Mount, dest: &Path) -> Result<()> {
    let o = parse_options(&m.options);
    let what = || format!("mounting {} {:?} on {}", m.kind, m.source, dest.display());
    if o.bind || m.kind == "bind" {
        let bound = if o.flags.contains(MountFlags::REC) {
            rustix::mount::mount_bind_recursive(m.source.as_str(), dest)
        } else {
            rustix::mount::mount_bind(m.source.as_str(), dest)
        };
        bound.map_err(|e| Error::io(what(), e.into()))?;
        let extra = o.flags - MountFlags::REC;
        if !extra.is_empty() {
            let remounted = rustix::mount::mount_remount(dest, extra | MountFlags::BIND, "");
            if let Err(e) = remounted {
                let _ = unmount_top(dest);
                return Err(Error::io(
                    format!("{}: making it {:?}", what(), m.options),
                    e.into(),
                ));
            }
        }
    } else {
        let data = o.data.join(",");
        if data.len() <= MAX_DATA {
            let data = CString::new(data)
                .map_err(|_| Error::invalid(format!("{}: NUL in options", what())))?;
            rustix::mount::mount(
                m.source.as_str(),
                dest,
                m.kind.as_str(),
                o.flags,
                data.as_c_str(),
            )
            .map_err(|e| Error::io(what(), e.into()))?;
        } else {
            mount_with_fsconfig(m, &o, dest).map_err(|e| Error::io(what(), e.into()))?;
        }
    }
    if !o.propagation.is_empty() {
        if let Err(e) = rustix::mount::mount_change(dest, o.propagation) {
            let _ = unmount_top(dest);
            return Err(Error::io(
                format!("{}: setting propagation", what()),
                e.into(),
            ));
        }
    }
    Ok(())
}

/// The new mount API, which takes options one by one and so has no page limit.
fn mount_with_fsconfig(m: &Mount, o: &Options, dest: &Path) -> rustix::io::Result<()> {
    use rustix::mount::{
        fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    };

    let fs = fsopen(m.kind.as_str(), FsOpenFlags::FSOPEN_CLOEXEC)?;
    fsconfig_set_string(&fs, "source", m.source.as_str())?;
    for opt in &o.data {
        match opt.split_once('=') {
            Some(("lowerdir", dirs)) if m.kind == "overlay" => {
                for dir in dirs.split(':') {
                    fsconfig_set_string(&fs, "lowerdir+", dir)?;
                }
            }
            Some((key, value)) => fsconfig_set_string(&fs, key, value)?,
            None => fsconfig_set_flag(&fs, opt.as_str())?,
        }
    }
    fsconfig_create(&fs)?;
    let mut attrs = MountAttrFlags::empty();
    for (flag, attr) in [
        (MountFlags::RDONLY, MountAttrFlags::MOUNT_ATTR_RDONLY),
        (MountFlags::NOSUID, MountAttrFlags::MOUNT_ATTR_NOSUID),
        (MountFlags::NODEV, MountAttrFlags::MOUNT_ATTR_NODEV),
        (MountFlags::NOEXEC, MountAttrFlags::MOUNT_ATTR_NOEXEC),
        (MountFlags::NOATIME, MountAttrFlags::MOUNT_ATTR_NOATIME),
        (
            MountFlags::NODIRATIME,
            MountAttrFlags::MOUNT_ATTR_NODIRATIME,
        ),
    ] {
        if o.flags.contains(flag) {
            attrs |= attr;
        }
    }
    let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)?;
    move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        dest,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Unmounts whatever a test left mounted, even when it fails halfway.
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = unmount_all(self.0);
        }
    }

    #[test]
    fn propagation_from_mountinfo() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /mnt/shared rw shared:7 - tmpfs none rw
31 22 0:41 / /mnt/slave rw master:7 - tmpfs none rw
32 22 0:42 / /mnt/private rw - tmpfs none rw
33 22 0:43 / /mnt/both\\040x rw shared:9 master:7 - tmpfs none rw
";
        let at = |p: &str| propagation_in(info, Path::new(p)).unwrap();
        let p = |shared, slave| Propagation { shared, slave };
        assert_eq!(at("/srv/data"), p(true, false));
        assert_eq!(at("/mnt/shared/a/b"), p(true, false));
        assert_eq!(at("/mnt/slave"), p(false, true));
        assert_eq!(at("/mnt/private/x"), p(false, false));
        assert_eq!(at("/mnt/both x/y"), p(true, true));
    }

    fn opts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn mount_options_split_into_flags_and_data() {
        let o = parse_options(&opts(&[
            "rbind",
            "ro",
            "nosuid",
            "rprivate",
            "lowerdir=/a:/b",
            "index=off",
        ]));
        assert!(o.bind);
        assert_eq!(
            o.flags,
            MountFlags::REC | MountFlags::RDONLY | MountFlags::NOSUID
        );
        assert_eq!(
            o.propagation,
            MountPropagationFlags::PRIVATE | MountPropagationFlags::REC
        );
        assert_eq!(o.data, opts(&["lowerdir=/a:/b", "index=off"]));
        assert_eq!(
            parse_options(&opts(&["ro", "rw"])).flags,
            MountFlags::empty()
        );
        assert_eq!(unescape(r"/a\040b\134c"), r"/a b\c");
    }

    #[test]
    fn mount_read_only_bind_then_unmount_everything() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::create_dir(&dst).unwrap();
        fs::write(src.join("f"), b"hello").unwrap();
        let _guard = Unmount(&dst);

        let bind = |o: &[&str]| Mount {
            kind: "bind".into(),
            source: src.to_string_lossy().into_owned(),
            target: String::new(),
            options: opts(o),
        };
        mount_all(&[bind(&["rbind", "ro"]), bind(&["rbind", "rw"])], &dst).unwrap();
        assert_eq!(fs::read(dst.join("f")).unwrap(), b"hello");
        unmount_all(&dst).unwrap();
        assert!(!dst.join("f").exists());

        mount_all(&[bind(&["rbind", "ro"])], &dst).unwrap();
        let err = fs::write(dst.join("g"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        unmount_all(&dst).unwrap();
        unmount_all(&dst).unwrap();

        // A failing mount undoes the ones before it.
        let bad = Mount {
            kind: "bind".into(),
            source: "/nonexistent/src".into(),
            target: String::new(),
            options: opts(&["rbind"]),
        };
        let climb = Mount {
            target: "../x".into(),
            ..bind(&["rbind"])
        };
        assert!(mount_all(&[bind(&["rbind"]), bad], &dst).is_err());
        assert!(!dst.join("f").exists());
        assert!(matches!(
            mount_all(&[climb], &dst),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn mount_overlay_with_more_layers_than_a_page_holds() {
        let dir = tempfile::tempdir().unwrap();
        let long = "l".repeat(60);
        let lowers: Vec<PathBuf> = (0..100)
            .map(|i| dir.path().join(format!("{long}{i:03}")))
            .collect();
        for (i, l) in lowers.iter().enumerate() {
            fs::create_dir(l).unwrap();
            fs::write(l.join(format!("f{i}")), i.to_string()).unwrap();
        }
        let merged = dir.path().join("merged");
        fs::create_dir(&merged).unwrap();
        let _guard = Unmount(&merged);
        let joined: Vec<String> = lowers
            .iter()
            .map(|l| l.to_string_lossy().into_owned())
            .collect();
        let m = Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![format!("lowerdir={}", joined.join(":")), "ro".into()],
        };
        assert!(m.options[0].len() > MAX_DATA);
        mount_all(&[m], &merged).unwrap();
        assert_eq!(fs::read_to_string(merged.join("f0")).unwrap(), "0");
        assert_eq!(fs::read_to_string(merged.join("f99")).unwrap(), "99");
        unmount_all(&merged).unwrap();
        assert!(!merged.join("f0").exists());
    }
}
