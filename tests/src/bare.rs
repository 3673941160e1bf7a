//! Bare runc, the baseline benchmarks measure sup against: a busybox bundle, timed commands,
//! and the cleanup of the cgroups runc made for it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

/// Longest a timed command may run.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A runc bundle in `dir` running `args` in the test image's root filesystem, its cgroups
/// under `/<cgroup_parent>/<container id>` (runc's `cgroupsPath` takes the id from the
/// caller: the bundle names the parent only through `cgroup_parent`).
pub fn make_bundle(dir: &Path, cgroup_parent: &str, args: &[&str]) -> PathBuf {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).expect("bundle dir");
    let tar = crate::task::rootfs_layer().tar();
    let mut archive = tar::Archive::new(tar.as_slice());
    archive.set_preserve_permissions(true);
    archive.unpack(&rootfs).expect("unpack the busybox layer");
    let out = Command::new("runc")
        .arg("spec")
        .current_dir(&bundle)
        .output()
        .expect("run `runc spec` (is runc installed?)");
    assert!(out.status.success(), "runc spec: {out:?}");
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("config.json")).expect("json");
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(args);
    spec["linux"]["cgroupsPath"] = json!(format!("/{cgroup_parent}/bare"));
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).expect("json")).expect("write spec");
    bundle
}

/// Runs `cmd` with no stdio and returns how long it took; fails on a non-zero exit.
pub fn timed(mut cmd: Command) -> Result<Duration, String> {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("{shown}: {e}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(RUN_TIMEOUT)
        .map_err(|_| format!("{shown}: still running after {RUN_TIMEOUT:?}"))?
        .map_err(|e| format!("{shown}: {e}"))?;
    let took = started.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{shown}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(took)
}

/// As [`timed`], for a command that leaves a process holding its stdio (a detached `runc
/// run` hands its own stdio to the container): nothing is read, only the exit status.
pub fn timed_detached(mut cmd: Command) -> Result<Duration, String> {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("{shown}: {e}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx
        .recv_timeout(RUN_TIMEOUT)
        .map_err(|_| format!("{shown}: still running after {RUN_TIMEOUT:?}"))?
        .map_err(|e| format!("{shown}: {e}"))?;
    let took = started.elapsed();
    if !status.success() {
        return Err(format!("{shown}: {status}"));
    }
    Ok(took)
}

/// Containers started under one runc root; whatever is still there when this goes is
/// force-deleted (a benchmark that fails halfway leaves nothing running).
pub struct BareRoot {
    pub root: PathBuf,
}

impl BareRoot {
    pub fn remove(&self, id: &str) {
        let _ = timed(runc(&self.root, &["kill", id, "KILL"]));
        timed(runc(&self.root, &["delete", "-f", id]))
            .unwrap_or_else(|e| panic!("runc delete: {e}"));
    }
}

impl Drop for BareRoot {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let _ = timed(runc(&self.root, &["delete", "-f", &id]));
        }
    }
}

/// `runc --root <root> <args>`.
pub fn runc(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("runc");
    cmd.arg("--root").arg(root).args(args);
    cmd
}

/// Removes the (empty) cgroup `/<name>/bare` and `/<name>` from every hierarchy.
pub fn remove_cgroup_parent(name: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(name)];
    if let Ok(rd) = std::fs::read_dir(root) {
        dirs.extend(rd.filter_map(|e| e.ok()).map(|e| e.path().join(name)));
    }
    for dir in dirs.into_iter().filter(|d| d.is_dir()) {
        let _ = std::fs::remove_dir(dir.join("bare"));
        let _ = std::fs::remove_dir(&dir);
    }
}

/// The median; the mean of the middle two for an even count.
pub fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    match samples.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => samples[n / 2],
        n => (samples[n / 2 - 1] + samples[n / 2]) / 2,
    }
}
