//! Mounting snapshot mounts for inspection, and finding and undoing mounts left under a test's
//! directory (read from /proc/self/mountinfo).

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use sup_client::api;

/// Mount points listed in /proc/self/mountinfo, in mount order.
pub fn mount_points() -> io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .collect())
}

/// Mount points at or below `dir`, deepest (most recent) last.
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    Ok(mount_points()?
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts one mount point; a busy one is detached so that cleanup never hangs.
pub fn unmount(target: &Path) -> io::Result<()> {
    match nix::mount::umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            nix::mount::umount2(target, MntFlags::MNT_DETACH).map_err(io::Error::from)
        }
        Err(e) => Err(e.into()),
    }
}

/// Unmounts everything mounted at or below `dir`, most recent first, and returns what it
/// unmounted.
pub fn unmount_all_under(dir: &Path) -> Vec<PathBuf> {
    let mut done = Vec::new();
    // Stacked mounts show up once per layer: repeat until nothing is left or nothing moves.
    for _ in 0..16 {
        let Ok(points) = mounts_under(dir) else {
            break;
        };
        if points.is_empty() {
            break;
        }
        let mut progressed = false;
        for point in points.iter().rev() {
            if unmount(point).is_ok() {
                done.push(point.clone());
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    done
}

/// Flags mount(8) understands as words in `-o`; the rest is filesystem data.
fn flag(option: &str) -> Option<(MsFlags, bool)> {
    let f = match option {
        "ro" => MsFlags::MS_RDONLY,
        "rw" => return Some((MsFlags::MS_RDONLY, false)),
        "bind" => MsFlags::MS_BIND,
        "rbind" => MsFlags::MS_BIND | MsFlags::MS_REC,
        "nosuid" => MsFlags::MS_NOSUID,
        "nodev" => MsFlags::MS_NODEV,
        "noexec" => MsFlags::MS_NOEXEC,
        "relatime" => MsFlags::MS_RELATIME,
        "noatime" => MsFlags::MS_NOATIME,
        "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => {
            return Some((MsFlags::empty(), true))
        }
        _ => return None,
    };
    Some((f, true))
}

/// Applies `mounts` in order at `target`, as a runtime would. A read-only bind mount is made
/// in two steps, because the kernel ignores MS_RDONLY on the first bind.
pub fn mount_all(mounts: &[api::Mount], target: &Path) -> io::Result<()> {
    for m in mounts {
        let at = if m.target.is_empty() {
            target.to_path_buf()
        } else {
            target.join(m.target.trim_start_matches('/'))
        };
        let mut flags = MsFlags::empty();
        let mut data = Vec::new();
        for option in &m.options {
            match flag(option) {
                Some((f, true)) => flags |= f,
                Some((f, false)) => flags &= !f,
                None => data.push(option.as_str()),
            }
        }
        let is_bind = m.r#type == "bind" || flags.contains(MsFlags::MS_BIND);
        if is_bind {
            flags |= MsFlags::MS_BIND;
            nix::mount::mount(
                Some(m.source.as_str()),
                &at,
                None::<&str>,
                flags & (MsFlags::MS_BIND | MsFlags::MS_REC),
                None::<&str>,
            )?;
            if flags.contains(MsFlags::MS_RDONLY) {
                nix::mount::mount(
                    None::<&str>,
                    &at,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                )?;
            }
        } else {
            let joined = data.join(",");
            nix::mount::mount(
                Some(m.source.as_str()),
                &at,
                Some(m.r#type.as_str()),
                flags,
                Some(joined.as_str()),
            )?;
        }
    }
    Ok(())
}

/// Directories the mounts read from: bind sources and overlay lower/upper dirs.
pub fn layer_dirs(mounts: &[api::Mount]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for m in mounts {
        if m.r#type == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind") {
            dirs.push(PathBuf::from(&m.source));
            continue;
        }
        for option in &m.options {
            if let Some(list) = option.strip_prefix("lowerdir=") {
                dirs.extend(list.split(':').map(PathBuf::from));
            } else if let Some(dir) = option.strip_prefix("upperdir=") {
                dirs.push(PathBuf::from(dir));
            }
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal_sequences() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape(r"/tmp/x\134y"), r"/tmp/x\y");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    #[test]
    fn layer_dirs_of_overlay_and_bind() {
        let overlay = api::Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                "lowerdir=/a:/b".into(),
                "upperdir=/u".into(),
                "workdir=/w".into(),
            ],
        };
        let bind = api::Mount {
            r#type: "bind".into(),
            source: "/s".into(),
            target: String::new(),
            options: vec!["ro".into(), "rbind".into()],
        };
        let dirs = layer_dirs(&[overlay, bind]);
        let expect: Vec<PathBuf> = ["/a", "/b", "/u", "/s"].iter().map(PathBuf::from).collect();
        assert_eq!(dirs, expect);
    }
}
