//! What tasks leave on the host, checked against the tasks that should exist: processes in a
//! container's cgroup, cgroup dirs, mounts, task state dirs, shims, shim sockets and runtime
//! commands that outlive a call.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub use crate::task::host::{proc_state, start_time};
use crate::task::World;

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

pub fn exe_name(pid: u32) -> Option<String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    Some(exe.file_name()?.to_string_lossy().into_owned())
}

/// sup-shim processes started for the daemon whose directory is `dir`.
pub fn shims_of(dir: &Path) -> Vec<u32> {
    let dir = dir.to_string_lossy().into_owned();
    pids()
        .into_iter()
        .filter(|&pid| {
            exe_name(pid).is_some_and(|n| n.starts_with("sup-shim")) && cmdline(pid).contains(&dir)
        })
        .collect()
}

/// The container cgroup dirs of namespace `ns`, in every hierarchy
/// (`/sys/fs/cgroup[/CONTROLLER]/sup/NS/ID`).
pub fn container_cgroups(ns: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut hierarchies = vec![root.to_path_buf()];
    hierarchies.extend(
        std::fs::read_dir(root)
            .map(|rd| rd.filter_map(|e| Some(e.ok()?.path())).collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    hierarchies
        .into_iter()
        .map(|h| h.join("sup").join(ns))
        .flat_map(|d| entries(&d).into_iter().map(move |id| d.join(id)))
        .filter(|d| d.is_dir())
        .collect()
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The container of namespace `ns` whose cgroup holds `pid`, read from /proc/PID/cgroup
/// (`N:controllers:/sup/NS/ID[/...]`).
fn container_of(pid: u32, ns: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let prefix = format!("/sup/{ns}/");
    text.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        let rest = path.strip_prefix(&prefix)?;
        // A cgroup removed while a (zombie) process still counts in it reads "ID (deleted)".
        let rest = rest.strip_suffix(" (deleted)").unwrap_or(rest);
        rest.split('/')
            .next()
            .filter(|id| !id.is_empty())
            .map(str::to_string)
    })
}

/// Processes in the cgroup of a container of namespace `ns`: (pid, container id).
pub fn namespace_processes(ns: &str) -> Vec<(u32, String)> {
    pids()
        .into_iter()
        .filter_map(|pid| container_of(pid, ns).map(|id| (pid, id)))
        .collect()
}

/// Runtime commands (runc create, kill, delete...) working on the daemon's state dir.
pub fn runtime_processes(state: &Path) -> Vec<u32> {
    let state = state.to_string_lossy().into_owned();
    pids()
        .into_iter()
        .filter(|&pid| exe_name(pid).is_some_and(|n| n == "runc") && cmdline(pid).contains(&state))
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Everything on the host that belongs to a task of the world's namespace that is not in
/// `live`, one line each; empty when the host matches the task list. A snapshot: processes
/// just killed may still await their reaper, see [`host_settles`].
pub fn host_leftovers(world: &World, live: &BTreeSet<String>) -> Vec<String> {
    let daemon = &world.daemon;
    let state = daemon.state();
    let tasks_dir = state.join("tasks").join(&world.ns);
    let mut left = Vec::new();
    for (pid, id) in namespace_processes(&world.ns) {
        if !live.contains(&id) {
            left.push(format!(
                "process {pid} ({:?}, state {}) in the cgroup of {id:?}, which has no task",
                cmdline(pid),
                proc_state(pid).unwrap_or_default()
            ));
        }
    }
    for group in container_cgroups(&world.ns) {
        let id = group
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !live.contains(&id) {
            left.push(format!("cgroup {}", group.display()));
        }
    }
    let rootfs: BTreeSet<_> = live
        .iter()
        .map(|id| tasks_dir.join(id).join("bundle/rootfs"))
        .collect();
    for m in crate::mounts::mounts_under(daemon.dir()).unwrap_or_default() {
        if !rootfs.contains(&m) {
            left.push(format!("mount {}", m.display()));
        }
    }
    for id in entries(&tasks_dir) {
        if !live.contains(&id) {
            left.push(format!("task state dir {}", tasks_dir.join(&id).display()));
        }
    }
    let shims_of_live: BTreeSet<u32> = live
        .iter()
        .filter_map(|id| super::shim_pid(daemon, &world.ns, id))
        .collect();
    for pid in shims_of(daemon.dir()) {
        if !shims_of_live.contains(&pid) {
            left.push(format!("sup-shim {pid} ({}) of no live task", cmdline(pid)));
        }
    }
    let sockets = entries(&state.join("s"));
    if sockets.len() > live.len() {
        left.push(format!(
            "{} shim sockets for {} tasks: {sockets:?}",
            sockets.len(),
            live.len()
        ));
    }
    for pid in runtime_processes(&state) {
        left.push(format!("runtime command {pid} ({})", cmdline(pid)));
    }
    left
}

/// Polls [`host_leftovers`] until it is empty or `timeout` passes; returns the last findings.
pub async fn host_settles(
    world: &World,
    live: &BTreeSet<String>,
    timeout: std::time::Duration,
) -> Result<(), Vec<String>> {
    crate::rpc::eventually(timeout, || async {
        let left = host_leftovers(world, live);
        left.is_empty().then_some(()).ok_or(left)
    })
    .await
}
