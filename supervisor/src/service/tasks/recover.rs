//! Start-up recovery: a restarted daemon finds every task in the state dir, reconnects to
//! its shim (all in parallel, each within a bounded time), and cleans up after tasks whose
//! shim is gone: the container is removed from the runtime, the rootfs unmounted, the state
//! dir removed, and an exit published with the reason.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::events::{topic, Payload};
use crate::service::Services;

use super::{shim, InitState, Slot, Task, TaskRecord};

/// How long one shim may take to answer at start-up before it is taken for dead.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The exit file a shim writes for the init before it reports the exit.
#[derive(serde::Deserialize)]
struct ExitFile {
    #[serde(default)]
    exit_status: u32,
}

fn task_records(state: &Path) -> Vec<(PathBuf, TaskRecord)> {
    let mut out = Vec::new();
    let Ok(namespaces) = std::fs::read_dir(state.join("tasks")) else {
        return out;
    };
    for ns in namespaces.flatten() {
        let Ok(ids) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        for id in ids.flatten() {
            let dir = id.path();
            match std::fs::read(dir.join("task.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<TaskRecord>(&b).ok())
            {
                Some(rec) => out.push((dir, rec)),
                // A bundle without a record was never handed to a shim: half-made, remove it.
                None => out.push((
                    dir.clone(),
                    TaskRecord {
                        namespace: ns.file_name().to_string_lossy().into_owned(),
                        id: id.file_name().to_string_lossy().into_owned(),
                        socket: PathBuf::new(),
                        runtime: String::new(),
                        created_at: SystemTime::UNIX_EPOCH,
                    },
                )),
            }
        }
    }
    out
}

impl Services {
    /// Reconnects to every shim found in the state dir. Returns (reconnected, cleaned up).
    pub async fn recover_tasks(self: &Arc<Self>) -> (usize, usize) {
        let records = task_records(&self.state);
        let jobs = records.into_iter().map(|(dir, rec)| {
            let this = self.clone();
            async move {
                let r = tokio::time::timeout(RECONNECT_TIMEOUT, this.reconnect(&dir, &rec)).await;
                match r {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        tracing::warn!(namespace = %rec.namespace, id = %rec.id, error = %e, "task's shim is gone; cleaning up");
                        this.clean_dead(&dir, &rec, "shim died").await;
                        false
                    }
                    Err(_) => {
                        tracing::warn!(namespace = %rec.namespace, id = %rec.id, "task's shim did not answer; cleaning up");
                        this.clean_dead(&dir, &rec, "shim did not answer").await;
                        false
                    }
                }
            }
        });
        let results = futures::future::join_all(jobs).await;
        let ok = results.iter().filter(|r| **r).count();
        (ok, results.len() - ok)
    }

    async fn reconnect(self: &Arc<Self>, dir: &Path, rec: &TaskRecord) -> Result<()> {
        if rec.socket.as_os_str().is_empty() {
            return Err(Error::not_found("task record"));
        }
        let mut client = shim::connect(&rec.socket).await?;
        let info = client
            .info(())
            .await
            .map_err(|s| shim::from_status("shim info", s))?
            .into_inner();
        if info.task_pid == 0 {
            return Err(Error::precondition("the shim holds no container"));
        }
        let st = client
            .state(sup_proto::shim::StateRequest {
                exec_id: String::new(),
            })
            .await
            .map_err(|s| shim::from_status("shim state", s))?
            .into_inner();
        let task = Arc::new(Task {
            ns: rec.namespace.clone(),
            id: rec.id.clone(),
            dir: dir.to_path_buf(),
            pid: info.task_pid,
            terminal: st.terminal,
            shim: client,
            oom: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            event_order: tokio::sync::Mutex::new(()),
            // Learnt when its events are followed, below.
            init: std::sync::Mutex::new(InitState::default()),
        });
        if let Ok(mut t) = self.tasks.table.lock() {
            t.insert(
                (rec.namespace.clone(), rec.id.clone()),
                Slot::Ready(task.clone()),
            );
        }
        self.watch(task);
        tracing::info!(namespace = %rec.namespace, id = %rec.id, pid = info.task_pid, "reconnected to task");
        Ok(())
    }

    /// Cleans up after a task whose shim is gone: runtime delete, unmount, state removed,
    /// and its exit published (from the exit file the shim wrote, if it got that far).
    pub(crate) async fn clean_dead(&self, dir: &Path, rec: &TaskRecord, reason: &str) {
        let runtime = if rec.runtime.is_empty() {
            "runc".to_string()
        } else {
            rec.runtime.clone()
        };
        let root = self.state.join("runc").join(&rec.namespace);
        // The container must not outlive its shim: nothing would reap it or hold its stdio.
        let _ = tokio::process::Command::new(&runtime)
            .arg("--root")
            .arg(&root)
            .args(["kill", "--all", &rec.id, "KILL"])
            .output()
            .await;
        let _ = tokio::process::Command::new(&runtime)
            .arg("--root")
            .arg(&root)
            .args(["delete", "--force", &rec.id])
            .output()
            .await;
        let exit_status = std::fs::read(dir.join("exit/init.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<ExitFile>(&b).ok())
            .map(|e| e.exit_status)
            .unwrap_or(137);
        self.teardown(&rec.namespace, &rec.id, dir, &rec.socket, None)
            .await;
        // Gone before its exit is told: whoever acts on the exit (the CRI's exit collector)
        // finds no task to ask, rather than a task whose shim cannot answer.
        self.slot_remove(&rec.namespace, &rec.id);
        self.events.publish(
            &rec.namespace,
            topic::TASK_EXIT,
            Payload::Task {
                container_id: rec.id.clone(),
                exec_id: String::new(),
                pid: 0,
                exit_status,
                exited_at: Some(SystemTime::now()),
                reason: reason.to_string(),
            },
        );
    }
}
