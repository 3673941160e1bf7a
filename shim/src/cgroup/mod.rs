//! A process's cgroups: its lines in /proc/<pid>/cgroup (one per v1 hierarchy, or the `0::`
//! line of the v2 unified hierarchy), each mapped onto the mount of its hierarchy listed in
//! /proc/self/mountinfo. The OOM watch and the statistics both start from here.

mod mountinfo;

use std::path::{Component, Path, PathBuf};

use mountinfo::Mount;

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

/// One v1 hierarchy a process belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Its controllers (both, for a co-mounted `cpu,cpuacct`), or its name (`name=systemd`).
    pub controllers: Vec<String>,
    /// The process's cgroup in it, as /proc/<pid>/cgroup writes it.
    pub path: String,
    /// That cgroup's directory, when a mount of the hierarchy here holds it.
    pub dir: Option<PathBuf>,
}

impl Hierarchy {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// The cgroups of a process, as mounted in the shim's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    /// cgroup v1, a hybrid host's included (its unified hierarchy then holds no controller).
    V1(Vec<Hierarchy>),
    /// cgroup v2: the process's directory in the unified hierarchy.
    V2(PathBuf),
}

impl Cgroups {
    /// The cgroups of `pid`. A process's cgroups are fixed unless something moves it, so a
    /// container's (its init's) are looked up once.
    pub fn of_pid(pid: u32) -> Result<Cgroups, CgroupError> {
        let read = |path: PathBuf| {
            std::fs::read_to_string(&path).map_err(|e| CgroupError::io("reading", &path, e))
        };
        let cgroups = read(PathBuf::from(format!("/proc/{pid}/cgroup")))?;
        let mountinfo = read(PathBuf::from("/proc/self/mountinfo"))?;
        Cgroups::parse(&cgroups, &mountinfo)
            .map_err(|e| CgroupError::NotFound(format!("the cgroups of pid {pid}: {e}")))
    }

    /// Maps a /proc/<pid>/cgroup text onto the mounts of a mountinfo text. A process with a
    /// v1 controller is on v1: on a hybrid host, the unified hierarchy has no controller.
    pub fn parse(cgroups: &str, mountinfo: &str) -> Result<Cgroups, String> {
        let memberships: Vec<(&str, &str, &str)> = cgroups
            .lines()
            .filter_map(|line| {
                let mut fields = line.splitn(3, ':');
                Some((fields.next()?, fields.next()?, fields.next()?))
            })
            .collect();
        let mounts: Vec<Mount> = mountinfo.lines().filter_map(Mount::parse).collect();
        let is_controller = |c: &str| !c.is_empty() && !c.starts_with("name=");
        let v1 = memberships
            .iter()
            .any(|(_, controllers, _)| controllers.split(',').any(is_controller));
        if v1 {
            let hierarchies: Vec<Hierarchy> = memberships
                .iter()
                .filter(|(_, controllers, _)| !controllers.is_empty())
                .map(|(_, controllers, path)| {
                    let controllers: Vec<String> =
                        controllers.split(',').map(str::to_string).collect();
                    let dir = locate(path, &mounts, |m| {
                        m.fstype == "cgroup" && controllers.iter().all(|c| m.has_option(c))
                    });
                    Hierarchy {
                        controllers,
                        path: path.to_string(),
                        dir,
                    }
                })
                .collect();
            if hierarchies.iter().all(|h| h.dir.is_none()) {
                return Err("no mount of its v1 hierarchies holds its cgroups".to_string());
            }
            return Ok(Cgroups::V1(hierarchies));
        }
        let unified = memberships
            .iter()
            .find(|(id, controllers, _)| *id == "0" && controllers.is_empty());
        if let Some((_, _, path)) = unified {
            return locate(path, &mounts, |m| m.fstype == "cgroup2")
                .map(Cgroups::V2)
                .ok_or_else(|| format!("no cgroup2 mount holds {path:?}"));
        }
        Err("neither a v1 controller nor the v2 hierarchy is listed".to_string())
    }

    /// The directory of a v1 `controller` (`cpuacct`, `memory`...), if the process is in its
    /// hierarchy and that is mounted here; always `None` on v2.
    pub fn v1_dir(&self, controller: &str) -> Option<&Path> {
        match self {
            Cgroups::V1(hierarchies) => hierarchies
                .iter()
                .find(|h| h.has(controller))
                .and_then(|h| h.dir.as_deref()),
            Cgroups::V2(_) => None,
        }
    }

    /// Where the process's memory is accounted.
    pub fn memory(&self) -> Result<MemoryCgroup, String> {
        let hierarchies = match self {
            Cgroups::V2(dir) => return Ok(MemoryCgroup::V2(dir.clone())),
            Cgroups::V1(hierarchies) => hierarchies,
        };
        match hierarchies.iter().find(|h| h.has("memory")) {
            Some(Hierarchy { dir: Some(dir), .. }) => Ok(MemoryCgroup::V1(dir.clone())),
            Some(h) => Err(format!(
                "no mount of the v1 memory hierarchy holds {:?}",
                h.path
            )),
            None => Err("no v1 memory controller is listed".to_string()),
        }
    }
}

/// The directory of cgroup `path` under the first mount that `wanted` accepts and whose root
/// contains it.
fn locate(path: &str, mounts: &[Mount], wanted: impl Fn(&Mount) -> bool) -> Option<PathBuf> {
    let path = Path::new(path);
    // A cgroup outside the shim's cgroup namespace shows as `/..`; it has no directory here.
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    mounts.iter().filter(|m| wanted(m)).find_map(|m| {
        let rest = path.strip_prefix(&m.root).ok()?;
        Some(if rest.as_os_str().is_empty() {
            m.point.clone()
        } else {
            m.point.join(rest)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime shared:10 - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:12 - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const V2_MOUNTS: &str = "\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw
27 22 0:24 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
30 27 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    fn memory(cgroups: &str, mounts: &str) -> Result<MemoryCgroup, String> {
        Cgroups::parse(cgroups, mounts).and_then(|c| c.memory())
    }

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
            memory(cgroups, HYBRID_MOUNTS),
            Ok(MemoryCgroup::V1("/sys/fs/cgroup/memory/sup/web".into()))
        );
    }

    #[test]
    fn v1_controllers_each_in_their_hierarchy() {
        let cgroups = "\
9:name=systemd:/system.slice/x
8:pids:/sup/web
4:memory:/sup/web
2:cpuacct:/sup/web
1:cpu:/sup/web
0::/
";
        let c = Cgroups::parse(cgroups, HYBRID_MOUNTS).unwrap();
        let dir = |name| c.v1_dir(name).map(Path::to_path_buf);
        assert_eq!(dir("cpu"), Some("/sys/fs/cgroup/cpu/sup/web".into()));
        assert_eq!(
            dir("cpuacct"),
            Some("/sys/fs/cgroup/cpuacct/sup/web".into())
        );
        assert_eq!(dir("memory"), Some("/sys/fs/cgroup/memory/sup/web".into()));
        assert_eq!(
            dir("name=systemd"),
            Some("/sys/fs/cgroup/systemd/system.slice/x".into())
        );
        // Listed but not mounted here; not listed at all.
        assert_eq!(dir("pids"), None);
        assert_eq!(dir("blkio"), None);
    }

    #[test]
    fn v1_co_mounted() {
        let cgroups = "5:cpu,cpuacct:/a/b\n4:memory:/a/b\n";
        let mounts = "\
50 31 0:40 / /cg/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
51 31 0:41 / /cg/memory rw - cgroup cgroup rw,memory
";
        let c = Cgroups::parse(cgroups, mounts).unwrap();
        assert_eq!(c.v1_dir("cpu"), Some(Path::new("/cg/cpu,cpuacct/a/b")));
        assert_eq!(c.v1_dir("cpuacct"), Some(Path::new("/cg/cpu,cpuacct/a/b")));
        assert_eq!(c.memory(), Ok(MemoryCgroup::V1("/cg/memory/a/b".into())));

        let cgroups = "5:cpu,memory:/a/b\n";
        let mounts = "50 31 0:40 / /cg/cpu,memory rw - cgroup cgroup rw,cpu,memory\n";
        assert_eq!(
            memory(cgroups, mounts),
            Ok(MemoryCgroup::V1("/cg/cpu,memory/a/b".into()))
        );
        // `memory` must be a whole option, not part of one.
        let other = "50 31 0:40 / /cg/x rw - cgroup cgroup rw,cpu,memory_x\n";
        assert!(memory(cgroups, other).is_err());
    }

    #[test]
    fn v1_mount_of_a_subtree() {
        let cgroups = "4:memory:/kubepods/pod1/c1\n";
        let mounts = "\
35 31 0:32 /other /mnt/other rw - cgroup cgroup rw,memory
36 31 0:32 /kubepods /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        assert_eq!(
            memory(cgroups, mounts),
            Ok(MemoryCgroup::V1("/sys/fs/cgroup/memory/pod1/c1".into()))
        );
        // A root is a prefix by whole components only.
        let mounts = "36 31 0:32 /kube /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert!(memory(cgroups, mounts).is_err());
        // The cgroup that is the mount's root is the mount point itself.
        let cgroups = "4:memory:/kubepods\n";
        let mounts = "36 31 0:32 /kubepods /m rw - cgroup cgroup rw,memory\n";
        assert_eq!(memory(cgroups, mounts), Ok(MemoryCgroup::V1("/m".into())));
    }

    #[test]
    fn v1_without_its_mount_is_not_v2() {
        let cgroups = "4:memory:/sup/web\n0::/\n";
        let mounts = "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert!(Cgroups::parse(cgroups, mounts).is_err());
        // Another controller mounted: v1 all the same, without a memory directory.
        let cgroups = "4:memory:/sup/web\n1:cpu:/sup/web\n0::/\n";
        let c = Cgroups::parse(cgroups, HYBRID_MOUNTS.replace("rw,memory", "rw,x").as_str());
        assert!(c.as_ref().is_ok_and(|c| matches!(c, Cgroups::V1(_))));
        assert!(c.unwrap().memory().is_err());
    }

    #[test]
    fn v2_unified_line() {
        let cgroups = "0::/system.slice/sup-web.scope\n";
        assert_eq!(
            memory(cgroups, V2_MOUNTS),
            Ok(MemoryCgroup::V2(
                "/sys/fs/cgroup/system.slice/sup-web.scope".into()
            ))
        );
        assert_eq!(
            Cgroups::parse(cgroups, V2_MOUNTS),
            Ok(Cgroups::V2(
                "/sys/fs/cgroup/system.slice/sup-web.scope".into()
            ))
        );
        assert!(memory(cgroups, HYBRID_MOUNTS)
            .is_ok_and(|c| c
                == MemoryCgroup::V2("/sys/fs/cgroup/unified/system.slice/sup-web.scope".into())));
        // A named v1 hierarchy beside it holds no controller: still v2.
        let cgroups = "1:name=systemd:/x\n0::/x\n";
        assert_eq!(
            Cgroups::parse(cgroups, V2_MOUNTS),
            Ok(Cgroups::V2("/sys/fs/cgroup/x".into()))
        );
        assert_eq!(
            Cgroups::parse(cgroups, V2_MOUNTS).unwrap().v1_dir("cpu"),
            None
        );
    }

    #[test]
    fn v2_outside_the_namespace() {
        assert!(Cgroups::parse("0::/../../other\n", V2_MOUNTS).is_err());
        assert!(Cgroups::parse("0::relative\n", V2_MOUNTS).is_err());
    }

    #[test]
    fn nothing_to_find() {
        assert!(Cgroups::parse("", V2_MOUNTS).is_err());
        assert!(memory("1:cpu:/a\n", HYBRID_MOUNTS).is_err());
        assert!(Cgroups::parse("0::/a\n", "").is_err());
    }

    #[test]
    fn escaped_mount_points() {
        let mounts = "30 27 0:26 / /run/my\\040cgroups\\134x rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            memory("0::/a\n", mounts),
            Ok(MemoryCgroup::V2("/run/my cgroups\\x/a".into()))
        );
    }
}
