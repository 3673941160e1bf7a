//! Tasks: running containers. Each task is owned by its own sup-shim; the daemon prepares the
//! bundle (config.json and the mounted root filesystem), starts the shim, and relays calls and
//! events. Everything a task holds is released on delete, and on any failure halfway.
//!
//! State dir layout: `<state>/tasks/<ns>/<id>/` holds `bundle/` (config.json, rootfs),
//! `task.json` (what a restarted daemon needs to find the shim) and the shim's own files (exit
//! statuses, logs); `<state>/s/<hash>.sock` is the shim's socket.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sup_proto::shim as sp;

use crate::error::{Error, Result};
use crate::events::{topic, Payload};
use crate::service::Services;

pub mod attach;
pub mod recover;
pub mod shim;

use shim::{from_status, Shim};

/// What a restarted daemon needs to find a task's shim.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    pub namespace: String,
    pub id: String,
    pub socket: PathBuf,
    pub runtime: String,
    pub created_at: SystemTime,
}

/// A live task.
pub struct Task {
    pub ns: String,
    pub id: String,
    pub dir: PathBuf,
    pub pid: u32,
    pub terminal: bool,
    pub shim: Shim,
    /// An OOM kill was reported for this task.
    pub oom: AtomicBool,
    /// The daemon is deleting the task: its shim going away is expected.
    pub closing: AtomicBool,
    /// Held by a start from the call to the shim until its event is published, and by the
    /// event forwarder before it publishes an exit: a process that exits at once must not be
    /// reported exited before it is reported started.
    pub event_order: tokio::sync::Mutex<()>,
    /// The init process's status as the daemon last learnt it, so that the status reads the
    /// kubelet repeats need no call to the shim.
    pub init: std::sync::Mutex<InitState>,
}

/// What the daemon knows of a task's init process: learnt from the calls it made (create,
/// start, pause, resume, wait) and from the shim's exit events, and asked of the shim whenever
/// its event stream is (re)opened. An exit is final: nothing learnt after it replaces it.
#[derive(Debug, Clone, Copy, Default)]
pub struct InitState {
    /// None: not known, ask the shim.
    pub status: Option<TaskStatus>,
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
}

impl Task {
    fn rootfs(&self) -> PathBuf {
        self.dir.join("bundle/rootfs")
    }

    fn init_state(&self) -> InitState {
        *self.init.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `status` (None: forget) unless the init has already exited.
    fn learn(&self, status: Option<TaskStatus>) {
        let mut init = self.init.lock().unwrap_or_else(|p| p.into_inner());
        if init.status != Some(TaskStatus::Stopped) {
            init.status = status;
        }
    }

    fn learn_exit(&self, exit_status: u32, exited_at: Option<SystemTime>) {
        let mut init = self.init.lock().unwrap_or_else(|p| p.into_inner());
        *init = InitState {
            status: Some(TaskStatus::Stopped),
            exit_status,
            exited_at,
        };
    }

    /// Records what the shim answered to a State call for the init.
    fn learn_state(&self, st: &sp::StateResponse) {
        match TaskStatus::from_shim(st.status) {
            TaskStatus::Stopped => self.learn_exit(st.exit_status, ts(st.exited_at)),
            TaskStatus::Unknown | TaskStatus::Pausing => self.learn(None),
            s => self.learn(Some(s)),
        }
    }

    pub fn client(&self) -> Shim {
        self.shim.clone()
    }
}

enum Slot {
    Creating,
    Ready(Arc<Task>),
}

/// The daemon's table of tasks.
#[derive(Default)]
pub struct Tasks {
    table: Mutex<HashMap<(String, String), Slot>>,
}

/// A process's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TaskStatus {
    #[default]
    Unknown,
    Created,
    Running,
    Stopped,
    Paused,
    Pausing,
}

/// How a process ended.
#[derive(Debug, Clone, Default)]
pub struct Exit {
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
    /// "OOMKilled" when the kernel's OOM killer ended the init.
    pub reason: String,
}

/// What to run in a task: empty `env`, `cwd` and `user` are the container's.
#[derive(Debug, Clone, Default)]
pub struct ExecProcess {
    pub args: Vec<String>,
    /// "KEY=VALUE", laid over the container's.
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub terminal: bool,
}

/// A process of a task; `exec_id` is empty for the init and processes it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub exec_id: String,
}

/// The status of a process as the API reports it.
#[derive(Debug, Clone)]
pub struct ProcessStatus {
    pub exec_id: String,
    pub pid: u32,
    pub status: TaskStatus,
    pub terminal: bool,
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
    pub reason: String,
}

/// The runtime refusing the container's own command (missing, not executable) is the
/// caller's input at fault, not the daemon: say so with the code.
fn runtime_refusal(e: Error) -> Error {
    match e {
        Error::Internal(m)
            if m.contains("executable file not found")
                || m.contains("no such file or directory")
                || m.contains("permission denied") =>
        {
            Error::InvalidArgument(m)
        }
        other => other,
    }
}

fn ts(t: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    t.as_ref().map(crate::timestamps::from_timestamp)
}

impl Services {
    /// Publishes a task event about one process.
    pub(crate) fn publish_task(
        &self,
        ns: &str,
        topic: &'static str,
        id: &str,
        exec_id: &str,
        pid: u32,
        exit: Option<(u32, Option<SystemTime>, String)>,
    ) {
        let (exit_status, exited_at, reason) = exit.unwrap_or((0, None, String::new()));
        self.events.publish(
            ns,
            topic,
            Payload::Task {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid,
                exit_status,
                exited_at,
                reason,
            },
        );
    }

    pub fn task_dir(&self, ns: &str, id: &str) -> PathBuf {
        self.state.join("tasks").join(ns).join(id)
    }

    pub fn task_exists(&self, ns: &str, id: &str) -> bool {
        self.tasks
            .table
            .lock()
            .map(|t| t.contains_key(&(ns.to_string(), id.to_string())))
            .unwrap_or(true)
    }

    pub fn task(&self, ns: &str, id: &str) -> Result<Arc<Task>> {
        let t = self
            .tasks
            .table
            .lock()
            .map_err(|_| Error::internal("task table poisoned"))?;
        match t.get(&(ns.to_string(), id.to_string())) {
            Some(Slot::Ready(task)) => Ok(task.clone()),
            Some(Slot::Creating) => Err(Error::Unavailable(format!(
                "task {id:?} in namespace {ns:?} is being created"
            ))),
            None => Err(Error::not_found(format!("task {id:?} in namespace {ns:?}"))),
        }
    }

    pub fn task_list(&self, ns: &str) -> Vec<Arc<Task>> {
        let Ok(t) = self.tasks.table.lock() else {
            return Vec::new();
        };
        let mut out: Vec<Arc<Task>> = t
            .iter()
            .filter(|((n, _), _)| n == ns)
            .filter_map(|(_, s)| match s {
                Slot::Ready(task) => Some(task.clone()),
                Slot::Creating => None,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    fn slot_remove(&self, ns: &str, id: &str) {
        if let Ok(mut t) = self.tasks.table.lock() {
            t.remove(&(ns.to_string(), id.to_string()));
        }
    }

    /// Creates a task for a container: bundle, rootfs mount, shim, runtime create.
    pub async fn task_create(
        self: &Arc<Self>,
        ns: &str,
        id: &str,
        stdin: bool,
    ) -> Result<Arc<Task>> {
        self.task_create_with(ns, id, stdin, None).await
    }

    /// `task_create`, with the shim also writing the output in the CRI log format to
    /// `cri_log_path` (CRI containers).
    pub async fn task_create_with(
        self: &Arc<Self>,
        ns: &str,
        id: &str,
        stdin: bool,
        cri_log_path: Option<PathBuf>,
    ) -> Result<Arc<Task>> {
        let container = self.container_get(ns, id)?;
        {
            let mut t = self
                .tasks
                .table
                .lock()
                .map_err(|_| Error::internal("task table poisoned"))?;
            let key = (ns.to_string(), id.to_string());
            if t.contains_key(&key) {
                return Err(Error::precondition(format!(
                    "container {id:?} in namespace {ns:?} already has a task"
                )));
            }
            t.insert(key, Slot::Creating);
        }
        let dir = self.task_dir(ns, id);
        let socket = shim::socket_path(&self.state, ns, id);
        match self
            .task_create_inner(ns, id, stdin, &container, &dir, cri_log_path.as_deref())
            .await
        {
            Ok(task) => {
                if let Ok(mut t) = self.tasks.table.lock() {
                    t.insert((ns.to_string(), id.to_string()), Slot::Ready(task.clone()));
                }
                self.watch(task.clone());
                self.publish_task(ns, topic::TASK_CREATE, id, "", task.pid, None);
                Ok(task)
            }
            Err(e) => {
                self.teardown(ns, id, &dir, &socket, None).await;
                self.slot_remove(ns, id);
                Err(e)
            }
        }
    }

    async fn task_create_inner(
        self: &Arc<Self>,
        ns: &str,
        id: &str,
        stdin: bool,
        container: &crate::service::containers::Container,
        dir: &Path,
        cri_log_path: Option<&Path>,
    ) -> Result<Arc<Task>> {
        let socket = &shim::socket_path(&self.state, ns, id);
        let bundle = dir.join("bundle");
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(&rootfs)
            .map_err(|e| Error::io(format!("creating {}", rootfs.display()), e))?;
        if let Some(sdir) = socket.parent() {
            std::fs::create_dir_all(sdir)
                .map_err(|e| Error::io(format!("creating {}", sdir.display()), e))?;
        }
        let mut spec = container.spec.clone();
        // The bundle's layout is ours: the root is always the mounted snapshot beside config.json.
        let readonly = spec
            .pointer("/root/readonly")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        spec["root"] = serde_json::json!({"path": "rootfs", "readonly": readonly});
        let terminal = spec
            .pointer("/process/terminal")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let systemd_cgroup = spec
            .pointer("/linux/cgroupsPath")
            .and_then(|v| v.as_str())
            .is_some_and(crate::spec::is_systemd_cgroups_path);
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)
            .map_err(|e| Error::io("writing config.json", e))?;

        let s = self.snapshotter(&container.snapshotter)?;
        let (n, k, r) = (
            ns.to_string(),
            container.snapshot_key.clone(),
            rootfs.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let mounts = s.mounts(&n, &k)?;
            crate::mount::mount_all(&mounts, &r)
        })
        .await??;

        let record = TaskRecord {
            namespace: ns.to_string(),
            id: id.to_string(),
            socket: socket.to_path_buf(),
            runtime: container.runtime.name.clone(),
            created_at: SystemTime::now(),
        };
        std::fs::write(dir.join("task.json"), serde_json::to_vec(&record)?)
            .map_err(|e| Error::io("writing task.json", e))?;

        let runtime_root = self.state.join("runc").join(ns);
        shim::spawn(ns, id, dir, socket, &runtime_root).await?;
        let mut client = shim::connect(socket).await?;
        let created = client
            .create(sp::CreateRequest {
                bundle: bundle.to_string_lossy().into_owned(),
                runtime: container.runtime.name.clone(),
                stdin,
                terminal,
                cri_log_path: cri_log_path
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                systemd_cgroup,
            })
            .await
            .map_err(|s| runtime_refusal(from_status(&format!("creating task {id:?}"), s)))?
            .into_inner();
        Ok(Arc::new(Task {
            ns: ns.to_string(),
            id: id.to_string(),
            dir: dir.to_path_buf(),
            pid: created.pid,
            terminal,
            shim: client,
            oom: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            event_order: tokio::sync::Mutex::new(()),
            init: std::sync::Mutex::new(InitState {
                status: Some(TaskStatus::Created),
                ..Default::default()
            }),
        }))
    }

    /// Follows a shim's events and publishes them.
    pub(crate) fn watch(self: &Arc<Self>, task: Arc<Task>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut client = task.client();
            let mut stream = match client.events(()).await {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    tracing::warn!(namespace = %task.ns, id = %task.id, error = %e, "cannot follow shim events");
                    task.learn(None);
                    return;
                }
            };
            // Anything that happens from here on comes as an event; what happened before is
            // in the state. Asked in event order, so that no start, pause or resume learnt
            // meanwhile is overwritten by an older answer.
            let order = task.event_order.lock().await;
            match client
                .state(sp::StateRequest {
                    exec_id: String::new(),
                })
                .await
            {
                Ok(st) => task.learn_state(&st.into_inner()),
                Err(_) => task.learn(None),
            }
            drop(order);
            while let Ok(Some(ev)) = stream.message().await {
                match ev.event {
                    Some(sp::shim_event::Event::Exit(x)) => {
                        let _order = task.event_order.lock().await;
                        if x.exec_id.is_empty() {
                            task.learn_exit(x.exit_status, ts(x.exited_at));
                        }
                        let reason = if x.exec_id.is_empty()
                            && task.oom.load(Ordering::Relaxed)
                            && x.exit_status == 137
                        {
                            "OOMKilled".to_string()
                        } else {
                            String::new()
                        };
                        this.events.publish(
                            &task.ns,
                            topic::TASK_EXIT,
                            Payload::Task {
                                container_id: task.id.clone(),
                                exec_id: x.exec_id,
                                pid: x.pid,
                                exit_status: x.exit_status,
                                exited_at: ts(x.exited_at),
                                reason,
                            },
                        );
                    }
                    Some(sp::shim_event::Event::Oom(_)) => {
                        task.oom.store(true, Ordering::Relaxed);
                        this.events.publish(
                            &task.ns,
                            topic::TASK_OOM,
                            Payload::Task {
                                container_id: task.id.clone(),
                                exec_id: String::new(),
                                pid: task.pid,
                                exit_status: 0,
                                exited_at: None,
                                reason: "OOM".into(),
                            },
                        );
                    }
                    None => {}
                }
            }
            // The stream ended: a delete in progress, or a shim that died. Until it is
            // followed again, only the shim knows.
            task.learn(None);
            if task.closing.load(Ordering::Relaxed) {
                return;
            }
            let alive = match task.client().info(()).await {
                Ok(_) => true,
                Err(_) => {
                    match shim::connect(&shim::socket_path(&this.state, &task.ns, &task.id)).await {
                        Ok(mut c) => c.info(()).await.is_ok(),
                        Err(_) => false,
                    }
                }
            };
            if alive {
                // Only the stream broke: follow the shim again.
                this.watch(task);
                return;
            }
            if task.closing.load(Ordering::Relaxed) {
                return;
            }
            tracing::warn!(namespace = %task.ns, id = %task.id, "shim died; cleaning up its task");
            let rec = TaskRecord {
                namespace: task.ns.clone(),
                id: task.id.clone(),
                socket: shim::socket_path(&this.state, &task.ns, &task.id),
                runtime: std::fs::read(task.dir.join("task.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<TaskRecord>(&b).ok())
                    .map(|r| r.runtime)
                    .unwrap_or_default(),
                created_at: SystemTime::now(),
            };
            this.clean_dead(&task.dir, &rec, "shim died").await;
        });
    }

    /// Releases what a task holds: the shim (asked to stop, killed if it will not), the
    /// rootfs mount, the state dir and the socket.
    pub(crate) async fn teardown(
        &self,
        ns: &str,
        id: &str,
        dir: &Path,
        socket: &Path,
        shim: Option<Shim>,
    ) {
        let mut stopped = false;
        if let Some(mut c) = shim {
            stopped = c.shutdown(()).await.is_ok();
        }
        if !stopped {
            if let Ok(mut c) = shim::connect(socket).await {
                if let Ok(info) = c.info(()).await {
                    let pid = info.into_inner().shim_pid;
                    let _ = c.shutdown(()).await;
                    if pid > 1 {
                        // The shim is ours: stop it by its pid if it did not stop itself.
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        let rootfs = dir.join("bundle/rootfs");
        let d = dir.to_path_buf();
        let res = tokio::task::spawn_blocking(move || {
            if rootfs.exists() {
                crate::mount::unmount_all(&rootfs)?;
            }
            match std::fs::remove_dir_all(&d) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io(format!("removing {}", d.display()), e)),
            }
        })
        .await;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(namespace = ns, id, error = %e, "task teardown incomplete")
            }
            Err(e) => tracing::warn!(namespace = ns, id, error = %e, "task teardown failed"),
        }
        let _ = std::fs::remove_file(socket);
    }

    pub async fn process_status(&self, ns: &str, id: &str, exec_id: &str) -> Result<ProcessStatus> {
        let task = self.task(ns, id)?;
        let known = task.init_state();
        if let (true, Some(status)) = (exec_id.is_empty(), known.status) {
            let oom = status == TaskStatus::Stopped
                && known.exit_status == 137
                && task.oom.load(Ordering::Relaxed);
            return Ok(ProcessStatus {
                exec_id: String::new(),
                pid: task.pid,
                status,
                terminal: task.terminal,
                exit_status: known.exit_status,
                exited_at: known.exited_at,
                reason: if oom {
                    "OOMKilled".into()
                } else {
                    String::new()
                },
            });
        }
        let st = task
            .client()
            .state(sp::StateRequest {
                exec_id: exec_id.to_string(),
            })
            .await
            .map_err(|s| from_status(&format!("task {id:?}"), s))?
            .into_inner();
        let status = TaskStatus::from_shim(st.status);
        let reason = if exec_id.is_empty()
            && status == TaskStatus::Stopped
            && st.exit_status == 137
            && task.oom.load(Ordering::Relaxed)
        {
            "OOMKilled".to_string()
        } else {
            String::new()
        };
        Ok(ProcessStatus {
            exec_id: exec_id.to_string(),
            pid: st.pid,
            status,
            terminal: st.terminal,
            exit_status: st.exit_status,
            exited_at: ts(st.exited_at),
            reason,
        })
    }

    pub async fn task_start(&self, ns: &str, id: &str, exec_id: &str) -> Result<u32> {
        let task = self.task(ns, id)?;
        let _order = task.event_order.lock().await;
        let pid = task
            .client()
            .start(sp::StartRequest {
                exec_id: exec_id.to_string(),
            })
            .await
            .map_err(|s| from_status(&format!("starting task {id:?}"), s))?
            .into_inner()
            .pid;
        if exec_id.is_empty() {
            task.learn(Some(TaskStatus::Running));
        }
        let t = if exec_id.is_empty() {
            topic::TASK_START
        } else {
            topic::TASK_EXEC_STARTED
        };
        self.publish_task(ns, t, id, exec_id, pid, None);
        Ok(pid)
    }

    /// Deletes a task whose init has exited (or kills it first with `force`) and returns
    /// the init's final status.
    pub async fn task_delete(&self, ns: &str, id: &str, force: bool) -> Result<ProcessStatus> {
        let task = self.task(ns, id)?;
        let mut client = task.client();
        let st = self.process_status(ns, id, "").await?;
        match st.status {
            TaskStatus::Stopped => {}
            TaskStatus::Created => self.kill_and_wait(ns, id).await?,
            _ if force => {
                if st.status == TaskStatus::Paused {
                    let _ = client.resume(()).await;
                }
                self.kill_and_wait(ns, id).await?;
            }
            _ => {
                return Err(Error::precondition(format!(
                    "task {id:?} in namespace {ns:?} is running: stop it first, or force"
                )))
            }
        }
        let final_status = self.process_status(ns, id, "").await?;
        task.closing.store(true, Ordering::Relaxed);
        let deleted = client
            .delete(sp::DeleteRequest {
                exec_id: String::new(),
            })
            .await
            .map_err(|s| from_status(&format!("deleting task {id:?}"), s))?
            .into_inner();
        let socket = shim::socket_path(&self.state, ns, id);
        self.teardown(ns, id, &task.dir, &socket, Some(client))
            .await;
        self.slot_remove(ns, id);
        let out = ProcessStatus {
            exit_status: deleted.exit_status,
            exited_at: ts(deleted.exited_at).or(final_status.exited_at),
            pid: deleted.pid,
            ..final_status
        };
        self.events.publish(
            ns,
            topic::TASK_DELETE,
            Payload::Task {
                container_id: id.to_string(),
                exec_id: String::new(),
                pid: out.pid,
                exit_status: out.exit_status,
                exited_at: out.exited_at,
                reason: out.reason.clone(),
            },
        );
        let _ = task.rootfs();
        Ok(out)
    }

    /// SIGKILL to every process of the task, then its init's exit.
    async fn kill_and_wait(&self, ns: &str, id: &str) -> Result<()> {
        match self.task_kill(ns, id, "", 9, true).await {
            Ok(()) => {}
            // The status read before was older than the init's exit: there is nothing left
            // to signal, and the wait returns that exit.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        self.task_wait(ns, id, "").await.map(drop)
    }

    pub async fn task_delete_process(
        &self,
        ns: &str,
        id: &str,
        exec_id: &str,
    ) -> Result<ProcessStatus> {
        if exec_id.is_empty() {
            return Err(Error::invalid(
                "delete process: give an exec id (the init is deleted with the task)",
            ));
        }
        let task = self.task(ns, id)?;
        let st = self.process_status(ns, id, exec_id).await?;
        let d = task
            .client()
            .delete(sp::DeleteRequest {
                exec_id: exec_id.to_string(),
            })
            .await
            .map_err(|s| from_status(&format!("deleting process {exec_id:?} of task {id:?}"), s))?
            .into_inner();
        Ok(ProcessStatus {
            pid: d.pid,
            exit_status: d.exit_status,
            exited_at: ts(d.exited_at),
            ..st
        })
    }

    pub async fn task_kill(
        &self,
        ns: &str,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        if signal > 64 {
            return Err(Error::invalid(format!(
                "signal {signal}: not a valid signal number"
            )));
        }
        let task = self.task(ns, id)?;
        task.client()
            .kill(sp::KillRequest {
                exec_id: exec_id.to_string(),
                signal: if signal == 0 { 15 } else { signal },
                all,
            })
            .await
            .map_err(|s| from_status(&format!("signalling task {id:?}"), s))?;
        Ok(())
    }

    pub async fn task_wait(&self, ns: &str, id: &str, exec_id: &str) -> Result<Exit> {
        let task = self.task(ns, id)?;
        let mut w = task
            .client()
            .wait(sp::WaitRequest {
                exec_id: exec_id.to_string(),
            })
            .await
            .map_err(|s| from_status(&format!("waiting for task {id:?}"), s))?
            .into_inner();
        if exec_id.is_empty() {
            // Known from now on, even before the exit event comes: a delete that follows reads
            // the final status without asking the shim.
            task.learn_exit(w.exit_status, ts(w.exited_at));
            if w.exit_status == 137 && task.oom.load(Ordering::Relaxed) {
                w.reason = "OOMKilled".into();
            }
        }
        Ok(Exit {
            exit_status: w.exit_status,
            exited_at: ts(w.exited_at),
            reason: w.reason,
        })
    }

    pub async fn task_exec(
        &self,
        ns: &str,
        id: &str,
        exec_id: &str,
        process: &ExecProcess,
        stdin: bool,
    ) -> Result<()> {
        crate::service::containers::validate_id("exec id", exec_id)?;
        let task = self.task(ns, id)?;
        let container = self.container_get(ns, id)?;
        let base: oci_spec::runtime::Spec = serde_json::from_value(container.spec.clone())
            .map_err(|e| Error::internal(format!("container {id:?}: stored spec: {e}")))?;
        let rootfs = task.rootfs();
        let p = process.clone();
        let proc_spec = tokio::task::spawn_blocking(move || {
            crate::spec::exec_process(&base, p.args, p.env, p.cwd, p.user, p.terminal, &rootfs)
        })
        .await??;
        task.client()
            .exec(sp::ExecRequest {
                exec_id: exec_id.to_string(),
                process: serde_json::to_vec(&proc_spec)?,
                stdin,
            })
            .await
            .map_err(|s| from_status(&format!("exec in task {id:?}"), s))?;
        self.publish_task(ns, topic::TASK_EXEC_ADDED, id, exec_id, 0, None);
        Ok(())
    }

    pub async fn task_pause(&self, ns: &str, id: &str, pause: bool) -> Result<()> {
        let task = self.task(ns, id)?;
        let mut c = task.client();
        let _order = task.event_order.lock().await;
        // Between the call and its answer the state is the shim's to tell.
        task.learn(None);
        let r = if pause {
            c.pause(()).await
        } else {
            c.resume(()).await
        };
        match &r {
            Ok(_) if pause => task.learn(Some(TaskStatus::Paused)),
            Ok(_) => task.learn(Some(TaskStatus::Running)),
            Err(_) => {}
        }
        r.map_err(|s| from_status(&format!("task {id:?}"), s))?;
        let t = if pause {
            topic::TASK_PAUSED
        } else {
            topic::TASK_RESUMED
        };
        self.publish_task(ns, t, id, "", task.pid, None);
        Ok(())
    }

    /// Resizes the pty of a process (the init for an empty `exec_id`).
    pub async fn task_resize(
        &self,
        ns: &str,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<()> {
        let task = self.task(ns, id)?;
        task.client()
            .resize_pty(sup_proto::v1::ResizePtyRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                width,
                height,
            })
            .await
            .map_err(|s| from_status(&format!("resizing the pty of task {id:?}"), s))?;
        Ok(())
    }

    /// Closes a process's stdin (the init's for an empty `exec_id`).
    pub async fn task_close_stdin(&self, ns: &str, id: &str, exec_id: &str) -> Result<()> {
        let task = self.task(ns, id)?;
        task.client()
            .close_io(sp::CloseIoRequest {
                exec_id: exec_id.to_string(),
            })
            .await
            .map_err(|s| from_status(&format!("closing the stdin of task {id:?}"), s))?;
        Ok(())
    }

    pub async fn task_pids(&self, ns: &str, id: &str) -> Result<Vec<ProcessInfo>> {
        let task = self.task(ns, id)?;
        Ok(task
            .client()
            .pids(())
            .await
            .map_err(|s| from_status(&format!("task {id:?}"), s))?
            .into_inner()
            .processes
            .into_iter()
            .map(|p| ProcessInfo {
                pid: p.pid,
                exec_id: p.exec_id,
            })
            .collect())
    }

    /// Sets a running task's resources to `res` (what it leaves unset stays as it is).
    pub async fn task_update_resources(
        &self,
        ns: &str,
        id: &str,
        res: &oci_spec::runtime::LinuxResources,
    ) -> Result<()> {
        let task = self.task(ns, id)?;
        task.client()
            .update(sp::UpdateRequest {
                resources: serde_json::to_vec(&res)?,
            })
            .await
            .map_err(|s| from_status(&format!("updating task {id:?}"), s))?;
        Ok(())
    }

    /// The runtime's stats JSON of a task.
    pub async fn task_stats(&self, ns: &str, id: &str) -> Result<serde_json::Value> {
        let task = self.task(ns, id)?;
        let raw = task
            .client()
            .stats(())
            .await
            .map_err(|s| from_status(&format!("stats of task {id:?}"), s))?
            .into_inner()
            .stats;
        serde_json::from_slice(&raw)
            .map_err(|e| Error::internal(format!("stats of task {id:?}: {e}")))
    }
}
