//! Finding a process's memory cgroup directory: its line in /proc/<pid>/cgroup (the memory
//! controller's under cgroup v1, the `0::` one under v2), mapped onto the mount of that
//! hierarchy listed in /proc/self/mountinfo.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

/// Where a process's memory is accounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryCgroup {
    /// cgroup v1: a directory of the memory controller's hierarchy.
    V1(PathBuf),
    /// cgroup v2: a directory of the unified hierarchy.
    V2(PathBuf),
}

impl MemoryCgroup {
    pub fn dir(&self) -> &Path {
        match self {
            MemoryCgroup::V1(d) | MemoryCgroup::V2(d) => d,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    NotFound(String),
}

impl CgroupError {
    pub fn io(what: &'static str, path: &Path, source: std::io::Error) -> CgroupError {
        CgroupError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The memory cgroup directory of `pid`, as mounted in the shim's mount namespace.
pub fn memory_cgroup(pid: u32) -> Result<MemoryCgroup, CgroupError> {
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).map_err(|e| CgroupError::io("reading", &path, e))
    };
    let cgroups = read(PathBuf::from(format!("/proc/{pid}/cgroup")))?;
    let mountinfo = read(PathBuf::from("/proc/self/mountinfo"))?;
    resolve(&cgroups, &mountinfo)
        .map_err(|e| CgroupError::NotFound(format!("the memory cgroup of pid {pid}: {e}")))
}

/// Maps a /proc/<pid>/cgroup text onto the mounts of a mountinfo text. A memory controller on
/// a v1 hierarchy wins over the unified one: on a hybrid host, v2 has no memory controller.
pub fn resolve(cgroups: &str, mountinfo: &str) -> Result<MemoryCgroup, String> {
    let memberships: Vec<(&str, &str, &str)> = cgroups
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            Some((fields.next()?, fields.next()?, fields.next()?))
        })
        .collect();
    let v1 = memberships
        .iter()
        .find(|(_, controllers, _)| controllers.split(',').any(|c| c == "memory"));
    if let Some((_, _, path)) = v1 {
        let is_memory =
            |m: &Mount| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "memory");
        return locate(path, mountinfo, is_memory)
            .map(MemoryCgroup::V1)
            .ok_or_else(|| format!("no mount of the v1 memory hierarchy holds {path:?}"));
    }
    let v2 = memberships
        .iter()
        .find(|(id, controllers, _)| *id == "0" && controllers.is_empty());
    if let Some((_, _, path)) = v2 {
        return locate(path, mountinfo, |m| m.fstype == "cgroup2")
            .map(MemoryCgroup::V2)
            .ok_or_else(|| format!("no cgroup2 mount holds {path:?}"));
    }
    Err("neither a v1 memory controller nor a v2 hierarchy is listed".to_string())
}

/// The directory of cgroup `path` under the first mount that `wanted` accepts and whose root
/// contains it.
fn locate(path: &str, mountinfo: &str, wanted: impl Fn(&Mount) -> bool) -> Option<PathBuf> {
    let path = Path::new(path);
    // A cgroup outside the shim's cgroup namespace shows as `/..`; it has no directory here.
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    mountinfo
        .lines()
        .filter_map(Mount::parse)
        .filter(|m| wanted(m))
        .find_map(|m| {
            let rest = path.strip_prefix(&m.root).ok()?;
            Some(if rest.as_os_str().is_empty() {
                m.point.clone()
            } else {
                m.point.join(rest)
            })
        })
}

/// The fields of a mountinfo line that matter here.
#[derive(Debug, PartialEq, Eq)]
struct Mount<'a> {
    /// The directory of the filesystem that is mounted (for a cgroup hierarchy: the cgroup).
    root: PathBuf,
    point: PathBuf,
    fstype: &'a str,
    super_options: &'a str,
}

impl<'a> Mount<'a> {
    /// `id parent major:minor root point options [optional...] - fstype source super_options`
    fn parse(line: &'a str) -> Option<Mount<'a>> {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().skip(6).position(|f| *f == "-")? + 6;
        Some(Mount {
            root: unescape(fields.get(3)?),
            point: unescape(fields.get(4)?),
            fstype: fields.get(separator + 1)?,
            super_options: fields.get(separator + 3).copied().unwrap_or(""),
        })
    }
}

/// Undoes mountinfo's escapes: a space, tab, newline or backslash is written `\ooo` (octal).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let digits = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(digits, 8).ok()
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
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:12 - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const V2_MOUNTS: &str = "\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw
27 22 0:24 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
30 27 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn v1_memory_line() {
        let cgroups = "\
9:name=systemd:/
8:pids:/sup/web
4:memory:/sup/web
1:cpu:/sup/web
0::/
";
        assert_eq!(
            resolve(cgroups, HYBRID_MOUNTS),
            Ok(MemoryCgroup::V1("/sys/fs/cgroup/memory/sup/web".into()))
        );
    }

    #[test]
    fn v1_memory_co_mounted() {
        let cgroups = "5:cpu,memory:/a/b\n";
        let mounts = "50 31 0:40 / /cg/cpu,memory rw - cgroup cgroup rw,cpu,memory\n";
        assert_eq!(
            resolve(cgroups, mounts),
            Ok(MemoryCgroup::V1("/cg/cpu,memory/a/b".into()))
        );
        // `memory` must be a whole option, not part of one.
        let other = "50 31 0:40 / /cg/x rw - cgroup cgroup rw,cpu,memory_x\n";
        assert!(resolve(cgroups, other).is_err());
    }

    #[test]
    fn v1_mount_of_a_subtree() {
        let cgroups = "4:memory:/kubepods/pod1/c1\n";
        let mounts = "\
35 31 0:32 /other /mnt/other rw - cgroup cgroup rw,memory
36 31 0:32 /kubepods /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        assert_eq!(
            resolve(cgroups, mounts),
            Ok(MemoryCgroup::V1("/sys/fs/cgroup/memory/pod1/c1".into()))
        );
        // A root is a prefix by whole components only.
        let mounts = "36 31 0:32 /kube /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert!(resolve(cgroups, mounts).is_err());
        // The cgroup that is the mount's root is the mount point itself.
        let cgroups = "4:memory:/kubepods\n";
        let mounts = "36 31 0:32 /kubepods /m rw - cgroup cgroup rw,memory\n";
        assert_eq!(resolve(cgroups, mounts), Ok(MemoryCgroup::V1("/m".into())));
    }

    #[test]
    fn v1_without_its_mount_is_not_v2() {
        let cgroups = "4:memory:/sup/web\n0::/\n";
        let mounts = "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert!(resolve(cgroups, mounts).is_err());
    }

    #[test]
    fn v2_unified_line() {
        let cgroups = "0::/system.slice/sup-web.scope\n";
        assert_eq!(
            resolve(cgroups, V2_MOUNTS),
            Ok(MemoryCgroup::V2(
                "/sys/fs/cgroup/system.slice/sup-web.scope".into()
            ))
        );
        assert!(resolve(cgroups, HYBRID_MOUNTS)
            .is_ok_and(|c| c
                == MemoryCgroup::V2("/sys/fs/cgroup/unified/system.slice/sup-web.scope".into())));
    }

    #[test]
    fn v2_outside_the_namespace() {
        assert!(resolve("0::/../../other\n", V2_MOUNTS).is_err());
        assert!(resolve("0::relative\n", V2_MOUNTS).is_err());
    }

    #[test]
    fn nothing_to_find() {
        assert!(resolve("", V2_MOUNTS).is_err());
        assert!(resolve("1:cpu:/a\n", HYBRID_MOUNTS).is_err());
        assert!(resolve("0::/a\n", "").is_err());
    }

    #[test]
    fn escaped_mount_points() {
        let mounts = "30 27 0:26 / /run/my\\040cgroups\\134x rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            resolve("0::/a\n", mounts),
            Ok(MemoryCgroup::V2("/run/my cgroups\\x/a".into()))
        );
        assert_eq!(unescape("a\\04"), PathBuf::from("a\\04"));
        assert_eq!(unescape("\\999"), PathBuf::from("\\999"));
    }

    #[test]
    fn mountinfo_fields() {
        let m = Mount::parse("30 27 0:26 / /sys/fs/cgroup rw shared:4 master:1 - cgroup2 none rw");
        assert_eq!(
            m,
            Some(Mount {
                root: "/".into(),
                point: "/sys/fs/cgroup".into(),
                fstype: "cgroup2",
                super_options: "rw",
            })
        );
        assert_eq!(Mount::parse("30 27 0:26 / /x rw"), None);
        assert_eq!(Mount::parse(""), None);
    }
}
