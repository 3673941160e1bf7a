//! Test harness: a busybox bundle, a shim started the way supd starts it, a client on its
//! socket, and a guard that removes everything (container, shim, cgroups, files) even when a
//! test fails.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sup_proto::shim::shim_client::ShimClient;
use sup_proto::shim::{CreateRequest, StartRequest, WaitRequest};
use sup_proto::v1::{LogsRequest, StdStream};
use tonic::transport::{Channel, Endpoint, Uri};

pub type Client = ShimClient<Channel>;

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "true", "false", "tty", "stty", "seq",
];
const CGROUP_PARENT: &str = "sup-shim-test";

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub id: String,
    pub task_dir: PathBuf,
    pub bundle: PathBuf,
    pub socket: PathBuf,
    pub runtime_root: PathBuf,
    pub shim_pid: Option<i32>,
    cgroup_leaf: String,
}

impl Fixture {
    /// A bundle whose init runs `args`.
    pub fn new(name: &str, args: &[&str], terminal: bool) -> Fixture {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{name}-{}-{n}", std::process::id());
        let tmp = tempfile::Builder::new()
            .prefix("sup-shim-")
            .tempdir()
            .unwrap();
        let task_dir = tmp.path().join("task");
        let bundle = task_dir.join("bundle");
        let bin = bundle.join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(a)).unwrap();
        }
        let out = Command::new("runc")
            .arg("spec")
            .current_dir(&bundle)
            .output()
            .unwrap();
        assert!(out.status.success(), "runc spec: {out:?}");
        let f = Fixture {
            id: id.clone(),
            socket: tmp.path().join("s.sock"),
            runtime_root: tmp.path().join("runc"),
            task_dir,
            bundle,
            tmp,
            shim_pid: None,
            cgroup_leaf: id,
        };
        f.edit_config(|c| {
            c["process"]["args"] = json!(args);
            c["process"]["terminal"] = json!(terminal);
            c["root"]["path"] = json!("rootfs");
            c["root"]["readonly"] = json!(false);
            c["linux"]["cgroupsPath"] = json!(format!("/{CGROUP_PARENT}/{}", f.cgroup_leaf));
        });
        f
    }

    pub fn edit_config(&self, f: impl FnOnce(&mut Value)) {
        let path = self.bundle.join("config.json");
        let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f(&mut c);
        std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    }

    /// Starts the shim as supd does; returns the launcher's readiness line.
    pub fn start_shim(&mut self, extra: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_sup-shim"))
            .arg("--namespace")
            .arg("test")
            .arg("--id")
            .arg(&self.id)
            .arg("--task-dir")
            .arg(&self.task_dir)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--runtime-root")
            .arg(&self.runtime_root)
            .arg("--debug")
            .args(extra)
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if let Ok(pid) = std::fs::read_to_string(self.task_dir.join("shim.pid")) {
            self.shim_pid = pid.trim().parse().ok();
        }
        (out.status.success(), line)
    }

    /// Starts the shim and connects to it.
    pub async fn shim(&mut self, extra: &[&str]) -> Client {
        let (ok, line) = self.start_shim(extra);
        assert!(ok && line == "ready", "shim did not start: {line}");
        self.connect().await
    }

    pub async fn connect(&self) -> Client {
        let path = self.socket.clone();
        let channel = Endpoint::from_static("http://shim.local")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(s))
                }
            }))
            .await
            .unwrap();
        ShimClient::new(channel)
    }

    pub fn create_request(&self, stdin: bool, terminal: bool) -> CreateRequest {
        CreateRequest {
            bundle: self.bundle.display().to_string(),
            runtime: "runc".into(),
            stdin,
            terminal,
            cri_log_path: String::new(),
            systemd_cgroup: false,
        }
    }

    /// Creates and starts the init; returns its pid.
    pub async fn run(&self, c: &mut Client, stdin: bool, terminal: bool) -> u32 {
        c.create(self.create_request(stdin, terminal))
            .await
            .unwrap();
        c.start(StartRequest {
            exec_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pid
    }

    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in entries.flatten() {
                let p = e.path().join(CGROUP_PARENT).join(&self.cgroup_leaf);
                if p.exists() {
                    found.push(p);
                }
            }
        }
        // cgroup v2: the path sits right under the root.
        let v2 = Path::new("/sys/fs/cgroup")
            .join(CGROUP_PARENT)
            .join(&self.cgroup_leaf);
        if v2.exists() && !found.contains(&v2) {
            found.push(v2);
        }
        found
    }

    pub fn runtime_state_exists(&self) -> bool {
        self.runtime_root.join(&self.id).exists()
    }

    pub fn shim_alive(&self) -> bool {
        self.shim_pid.is_some_and(process_alive)
    }
}

/// Alive and not a zombie waiting for its parent to reap it.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let runc = |args: &[&str]| {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&self.runtime_root)
                .args(args)
                .output();
        };
        if self.runtime_state_exists() {
            runc(&["kill", "--all", &self.id, "KILL"]);
            runc(&["delete", "--force", &self.id]);
        }
        if let Some(pid) = self.shim_pid {
            // Only if that pid is still our shim: its command line names our socket.
            let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c).contains(&*self.socket.to_string_lossy())
            });
            if ours {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for dir in self.cgroup_dirs() {
            let _ = std::fs::remove_dir(&dir);
        }
        // The shared parent goes once no test uses it (EBUSY until then).
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir(e.path().join(CGROUP_PARENT));
            }
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(CGROUP_PARENT));
    }
}

pub async fn wait(c: &mut Client, exec_id: &str) -> u32 {
    tokio::time::timeout(
        Duration::from_secs(30),
        c.wait(WaitRequest {
            exec_id: exec_id.into(),
        }),
    )
    .await
    .expect("wait timed out")
    .unwrap()
    .into_inner()
    .exit_status
}

/// The logged output of a process: (stdout, stderr).
pub async fn logs(c: &mut Client, req: LogsRequest) -> (String, String) {
    let mut stream = c.logs(req).await.unwrap().into_inner();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let read = async {
        while let Some(m) = stream.message().await.unwrap() {
            if m.stream == StdStream::Stderr as i32 {
                err.extend(m.data);
            } else {
                out.extend(m.data);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("logs timed out");
    (
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

pub fn logs_request(exec_id: &str) -> LogsRequest {
    LogsRequest {
        exec_id: exec_id.into(),
        ..Default::default()
    }
}

/// Polls until `f` holds or the deadline passes.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An OCI process spec for an exec.
pub fn process_spec(args: &[&str], terminal: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "args": args,
        "cwd": "/",
        "terminal": terminal,
        "env": ["PATH=/bin"],
        "user": {"uid": 0, "gid": 0},
    }))
    .unwrap()
}
