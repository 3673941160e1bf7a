//! The container's systemd scope, when the runtime runs with its systemd cgroup driver: its
//! unit name, and forgetting it once the container is deleted. A scope that ends in failure
//! (its processes killed while systemd stopped it, say) stays listed, failed, until its
//! failure is reset. (systemd removes the scope's cgroup as soon as its last process is gone:
//! the OOM watch allows for that, see `crate::oom`.)

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use tokio::io::AsyncReadExt;

use crate::reaper::Reaper;

/// Longest `systemctl` answer read.
const MAX_OUTPUT: u64 = 64 * 1024;

/// The scope unit the runtime asks systemd for, from the bundle's `slice:prefix:name`
/// cgroups path: `prefix-name.scope` (`name.scope` without a prefix).
pub fn scope_unit(bundle: &Path) -> Option<String> {
    let bytes = std::fs::read(bundle.join("config.json")).ok()?;
    let spec: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    unit_of(spec.pointer("/linux/cgroupsPath")?.as_str()?)
}

fn unit_of(path: &str) -> Option<String> {
    let mut parts = path.split(':');
    let (_slice, prefix, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || name.is_empty() || name.ends_with(".slice") {
        return None;
    }
    Some(if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    })
}

/// Runs `systemctl ARGS...` to its end through the shim's reaper (which reaps every child);
/// its exit code and stdout, or None if it could not be run.
async fn systemctl(reaper: &Arc<Reaper>, args: &[&str]) -> Option<(u32, String)> {
    let mut cmd = Command::new("systemctl");
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let token = reaper.token();
    let mut child = cmd.spawn().ok()?;
    let pid = i32::try_from(child.id()).ok()?;
    let exit = reaper.wait(pid, token);
    let stdout = child.stdout.take();
    drop(child);
    let mut out = Vec::new();
    if let Some(stdout) = stdout {
        let fd = std::os::fd::OwnedFd::from(stdout);
        if let Ok(rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
            let _ = rx.take(MAX_OUTPUT).read_to_end(&mut out).await;
        }
    }
    let code = exit.await.ok()?;
    Some((code.0, String::from_utf8_lossy(&out).into_owned()))
}

/// Makes systemd forget the scope if it ended in failure (a killed or OOM-killed container),
/// so that no unit outlives the container.
pub async fn forget(reaper: &Arc<Reaper>, unit: &str) {
    // Fails, harmlessly, when the unit is already gone.
    let _ = systemctl(reaper, &["reset-failed", "--", unit]).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_from_cgroups_paths() {
        assert_eq!(
            unit_of("kubepods-pod1.slice:sup:abc").as_deref(),
            Some("sup-abc.scope")
        );
        assert_eq!(unit_of("system.slice::abc").as_deref(), Some("abc.scope"));
        assert_eq!(unit_of("/sup/default/abc"), None);
        assert_eq!(unit_of("a.slice:sup:"), None);
        assert_eq!(unit_of("a.slice:sup:b:c"), None);
    }
}
