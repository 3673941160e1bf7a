//! The container: its runtime, its init, its exec'd processes, and the operations that apply
//! to any of them by exec id.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::exit::Exit;
use super::state::Status;
use super::{signal_number, Context, Process};
use crate::error::{Error, Result};
use crate::io::{ProcessIo, ResizeError};
use crate::runc::Runc;
use crate::stats::CgroupStats;

/// What Create asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateSpec {
    pub bundle: PathBuf,
    pub runtime: String,
    pub stdin: bool,
    pub terminal: bool,
    pub cri_log_path: Option<PathBuf>,
    pub systemd_cgroup: bool,
}

/// A process as State reports it.
#[derive(Debug, Clone)]
pub struct ProcessSummary {
    pub exec_id: String,
    pub pid: u32,
    pub status: Status,
    pub terminal: bool,
    pub stdin: bool,
    pub exit: Option<Exit>,
}

pub struct Container {
    pub ctx: Arc<Context>,
    slot: Mutex<Slot>,
}

#[derive(Default)]
pub(super) struct Slot {
    pub(super) runc: Option<Arc<Runc>>,
    pub(super) init: Option<Arc<Process>>,
    pub(super) creating: bool,
    pub(super) execs: HashMap<String, Arc<Process>>,
    /// Where the container's statistics are read from, found at Create; `None`: the runtime
    /// is asked.
    pub(super) cgroup_stats: Option<Arc<CgroupStats>>,
    /// Reading them has failed once already (it is logged once, as a warning).
    pub(super) stats_failed: bool,
    /// The container's systemd scope, under the runtime's systemd cgroup driver.
    pub(super) scope: Option<String>,
}

impl Container {
    pub fn new(ctx: Arc<Context>) -> Container {
        Container {
            ctx,
            slot: Mutex::new(Slot::default()),
        }
    }

    pub(super) fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn not_created(&self) -> Error {
        Error::NotFound(format!("{}: no task created", self.ctx.name()))
    }

    /// The runtime and the init, once created.
    pub(super) fn init(&self) -> Result<(Arc<Runc>, Arc<Process>)> {
        let slot = self.slot();
        match (&slot.runc, &slot.init) {
            (Some(r), Some(i)) => Ok((r.clone(), i.clone())),
            _ => Err(self.not_created()),
        }
    }

    /// The process named by `exec_id` (empty: the init).
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return self.init().map(|(_, i)| i);
        }
        self.slot().execs.get(exec_id).cloned().ok_or_else(|| {
            Error::NotFound(format!(
                "process {exec_id:?} of {}: not found",
                self.ctx.name()
            ))
        })
    }

    /// The init's pid, 0 before Create.
    pub fn task_pid(&self) -> u32 {
        self.slot().init.as_ref().map_or(0, |i| i.pid())
    }

    pub fn summary(&self, p: &Process) -> ProcessSummary {
        let init_paused = self
            .slot()
            .init
            .as_ref()
            .is_some_and(|i| i.status() == Status::Paused);
        let mut status = p.status();
        // An exec'd process is frozen with its container.
        if !p.is_init() && init_paused && status == Status::Running {
            status = Status::Paused;
        }
        ProcessSummary {
            exec_id: p.exec_id.clone(),
            pid: p.pid(),
            status,
            terminal: p.terminal,
            stdin: p.stdin,
            exit: p.exit(),
        }
    }

    /// Every process the shim knows, the init first.
    pub fn summaries(&self) -> Vec<ProcessSummary> {
        let procs: Vec<Arc<Process>> = {
            let slot = self.slot();
            let mut execs: Vec<_> = slot.execs.values().cloned().collect();
            execs.sort_by(|a, b| a.exec_id.cmp(&b.exec_id));
            slot.init.iter().cloned().chain(execs).collect()
        };
        procs.iter().map(|p| self.summary(p)).collect()
    }

    pub async fn start(self: &Arc<Self>, exec_id: &str) -> Result<u32> {
        if exec_id.is_empty() {
            self.start_init().await
        } else {
            self.start_exec(exec_id).await
        }
    }

    pub async fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let signal = signal_number(signal)?;
        if exec_id.is_empty() {
            self.kill_init(signal, all).await
        } else {
            self.kill_exec(exec_id, signal)
        }
    }

    pub async fn delete(&self, exec_id: &str) -> Result<Exit> {
        if exec_id.is_empty() {
            self.delete_init().await
        } else {
            self.delete_exec(exec_id)
        }
    }

    pub async fn wait(&self, exec_id: &str) -> Result<Exit> {
        let p = self.process(exec_id)?;
        p.wait().await.ok_or_else(|| {
            Error::NotFound(format!("{}: deleted before it ran", p.describe(&self.ctx)))
        })
    }

    /// The process's IO: it exists from Create (the init) or Exec on.
    pub fn io(&self, exec_id: &str) -> Result<(Arc<Process>, Arc<ProcessIo>)> {
        let p = self.process(exec_id)?;
        match p.io() {
            Some(io) => Ok((p, io)),
            None => Err(Error::FailedPrecondition(format!(
                "{}: has no stdio",
                p.describe(&self.ctx)
            ))),
        }
    }

    pub fn resize_pty(&self, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let (w, h) = match (u16::try_from(width), u16::try_from(height)) {
            (Ok(w), Ok(h)) => (w, h),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "terminal size {width}x{height} is out of range"
                )))
            }
        };
        let (p, io) = self.io(exec_id)?;
        io.resize(w, h).map_err(|e| match e {
            ResizeError::NoTerminal | ResizeError::NotStarted => {
                Error::FailedPrecondition(format!("{}: {e}", p.describe(&self.ctx)))
            }
            ResizeError::Io(source) => Error::io(p.describe(&self.ctx), source),
        })
    }

    pub async fn close_io(&self, exec_id: &str) -> Result<()> {
        let (_, io) = self.io(exec_id)?;
        io.close_stdin().await;
        Ok(())
    }

    /// Whether the shim may end: its container deleted, or never created.
    pub fn check_shutdown(&self) -> Result<()> {
        let slot = self.slot();
        if slot.creating {
            return Err(Error::FailedPrecondition(format!(
                "{}: a create is under way",
                self.ctx.name()
            )));
        }
        match &slot.init {
            Some(init) if init.status() != Status::Deleted => {
                Err(Error::FailedPrecondition(format!(
                    "{}: delete the task before shutting its shim down",
                    self.ctx.name()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Stops what the shim runs on its own (the OOM watcher); called when it ends.
    pub fn stop_watchers(&self) {
        self.ctx.oom.stop();
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.ctx.task_dir.join(name)
    }

    pub(super) fn log_path(&self, stem: &str) -> PathBuf {
        self.ctx.task_dir.join("log").join(format!("{stem}.log"))
    }
}

/// Reads the pid a runtime wrote to its pid file.
pub(super) fn read_pid(path: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading the pid file {}", path.display()), e))?;
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| {
            Error::Internal(format!(
                "pid file {} holds no pid: {:?}",
                path.display(),
                text.trim()
            ))
        })
}
