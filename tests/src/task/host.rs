//! The host's view of containers, read from /proc and /sys/fs/cgroup: process identity and
//! ancestry, shims of one daemon, a namespace's cgroups, and memory use.

use std::path::{Path, PathBuf};

pub(super) fn list_dir(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Field `n` of /proc/PID/stat, counted from 1 as proc(5) does (n >= 3).
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split(' ').nth(n.checked_sub(3)?).map(str::to_string)
}

/// The process's state letter (R, S, Z...).
pub fn proc_state(pid: u32) -> Option<String> {
    stat_field(pid, 3)
}

/// When the process started (clock ticks since boot): a pid's identity over time.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_field(pid, 22)?.parse().ok()
}

pub fn parent_pid(pid: u32) -> Option<u32> {
    stat_field(pid, 4)?.parse().ok()
}

/// `pid`, its parent, and so on up to pid 1.
pub fn ancestry(pid: u32) -> Vec<u32> {
    let mut chain = vec![pid];
    let mut current = pid;
    while current > 1 {
        match parent_pid(current) {
            Some(parent) if parent != current && chain.len() < 4096 => {
                chain.push(parent);
                current = parent;
            }
            _ => break,
        }
    }
    chain
}

pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// The file name of the process's executable.
pub fn exe_name(pid: u32) -> Option<String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    Some(exe.file_name()?.to_string_lossy().into_owned())
}

fn all_pids() -> Vec<u32> {
    list_dir(Path::new("/proc"))
        .iter()
        .filter_map(|p| p.file_name()?.to_str()?.parse().ok())
        .collect()
}

/// Shims serving the daemon whose directory is `dir`: a sup-shim executable whose command
/// line or working directory names a path inside `dir`.
pub fn shim_pids(dir: &Path) -> Vec<u32> {
    let dir_text = dir.to_string_lossy().into_owned();
    all_pids()
        .into_iter()
        .filter(|&pid| {
            exe_name(pid).is_some_and(|n| n.starts_with("sup-shim"))
                && (cmdline(pid).contains(&dir_text)
                    || std::fs::read_link(format!("/proc/{pid}/cwd"))
                        .is_ok_and(|cwd| cwd.starts_with(dir)))
        })
        .collect()
}

/// The namespace's cgroup directory in every hierarchy (v2: /sys/fs/cgroup/sup/NS; v1:
/// /sys/fs/cgroup/CONTROLLER/sup/NS), those that exist.
pub fn cgroup_ns_dirs(ns: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join("sup").join(ns)];
    dirs.extend(
        list_dir(root)
            .into_iter()
            .filter(|d| d.is_dir())
            .map(|d| d.join("sup").join(ns)),
    );
    dirs.retain(|d| d.is_dir());
    dirs
}

/// Containers' cgroups under the namespace's directories (each a leak once a test ends).
pub fn cgroup_children(ns: &str) -> Vec<PathBuf> {
    cgroup_ns_dirs(ns)
        .iter()
        .flat_map(|d| list_dir(d))
        .filter(|d| d.is_dir())
        .collect()
}

/// Pids in a cgroup and its descendants.
pub(super) fn cgroup_pids(group: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_to_string(group.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for child in list_dir(group).into_iter().filter(|p| p.is_dir()) {
        pids.extend(cgroup_pids(&child));
    }
    pids
}

/// Lets a frozen cgroup run again, so that SIGKILL is delivered.
pub(super) fn thaw(group: &Path) {
    let _ = std::fs::write(group.join("freezer.state"), "THAWED");
    let _ = std::fs::write(group.join("cgroup.freeze"), "0");
}

/// Removes the namespace's (empty) cgroup directories, deepest first.
pub(super) fn remove_cgroups(ns: &str) {
    fn remove(dir: &Path) {
        for child in list_dir(dir).into_iter().filter(|p| p.is_dir()) {
            remove(&child);
        }
        let _ = std::fs::remove_dir(dir);
    }
    for dir in cgroup_ns_dirs(ns) {
        remove(&dir);
    }
}

/// Resident and proportional set size of a process, in KiB, from /proc/PID/smaps_rollup.
pub fn rss_pss_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((field("Rss:")?, field("Pss:")?))
}
