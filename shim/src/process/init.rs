//! The container's init: `create`, `start`, `kill`, `delete`, and what applies to the whole
//! container (pause, resume, pids, update, stats, the OOM watch).

use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use super::container::{read_pid, CreateSpec};
use super::exit::Exit;
use super::state::Status;
use super::{Container, Event, Process};
use crate::cgroup::Cgroups;
use crate::error::{Error, Result};
use crate::io::console::ConsoleSocket;
use crate::io::log::{CriLog, LogFile};
use crate::io::output::Output;
use crate::io::ProcessIo;
use crate::runc::{ChildStdio, Runc, RuncError};
use crate::stats::{CgroupStats, StatsError};

/// How long the runtime may take to pass a terminal on once it has returned.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a created init may take to die once the runtime deleted it.
const DELETE_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

impl Container {
    pub async fn create(self: &Arc<Self>, spec: CreateSpec) -> Result<u32> {
        self.check_create(&spec)?;
        {
            let mut slot = self.slot();
            if slot.init.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "{}: task already created",
                    self.ctx.name()
                )));
            }
            if slot.creating {
                return Err(Error::FailedPrecondition(format!(
                    "{}: a create is under way",
                    self.ctx.name()
                )));
            }
            slot.creating = true;
        }
        let created = self.run_create(&spec).await;
        // The container's cgroups, found once for the OOM watch and the statistics alike: its
        // init's, now that the runtime has put it in them and before the program runs (and,
        // if it is a systemd, moves itself into a child cgroup).
        let cgroups = created.as_ref().ok().and_then(|(_, init)| {
            Cgroups::of_pid(init.pid())
                .map_err(|e| {
                    tracing::warn!(
                        error = %e,
                        "container cgroups not found: no OOM kill reports, statistics from \
                         the runtime"
                    )
                })
                .ok()
        });
        let mut slot = self.slot();
        slot.creating = false;
        let (runc, init) = created?;
        let pid = init.pid();
        slot.runc = Some(runc);
        slot.init = Some(init);
        slot.cgroup_stats = cgroups.as_ref().map(|c| Arc::new(CgroupStats::new(c)));
        slot.scope = spec
            .systemd_cgroup
            .then(|| crate::systemd::scope_unit(&spec.bundle))
            .flatten();
        drop(slot);
        // Watching from before the program starts: an OOM kill right at its start counts too.
        if let Some(cgroups) = &cgroups {
            tracing::debug!(cgroups = ?cgroups, "container cgroups");
            self.watch_oom(cgroups);
        }
        Ok(pid)
    }

    fn check_create(&self, spec: &CreateSpec) -> Result<()> {
        if !spec.bundle.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "bundle {:?} must be an absolute path",
                spec.bundle
            )));
        }
        if !spec.runtime.is_empty() && !Runc::valid_binary(&spec.runtime) {
            return Err(Error::InvalidArgument(format!(
                "runtime {:?} must be a command name or an absolute path",
                spec.runtime
            )));
        }
        if let Some(p) = &spec.cri_log_path {
            if !p.is_absolute() {
                return Err(Error::InvalidArgument(format!(
                    "CRI log path {p:?} must be absolute"
                )));
            }
        }
        // A mismatch would otherwise surface as a puzzling runtime error (or a container
        // whose terminal nobody reads).
        let config = spec.bundle.join("config.json");
        if let Ok(bytes) = std::fs::read(&config) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                let wants = v
                    .pointer("/process/terminal")
                    .and_then(|t| t.as_bool())
                    .unwrap_or(false);
                if wants != spec.terminal {
                    return Err(Error::InvalidArgument(format!(
                        "terminal is {} but the bundle's process.terminal is {wants}",
                        spec.terminal
                    )));
                }
            }
        }
        Ok(())
    }

    async fn run_create(&self, spec: &CreateSpec) -> Result<(Arc<Runc>, Arc<Process>)> {
        let ctx = &self.ctx;
        let runtime = if spec.runtime.is_empty() {
            "runc"
        } else {
            spec.runtime.as_str()
        };
        let runc = Arc::new(Runc::new(
            runtime,
            &ctx.runtime_root,
            &ctx.task_dir,
            spec.systemd_cgroup,
            ctx.reaper.clone(),
        ));
        let log_path = self.log_path("init");
        let log = LogFile::create(&log_path, ctx.log_max_size, ctx.log_max_files)
            .map_err(|e| Error::io(format!("creating the log {}", log_path.display()), e))?;
        let cri = match &spec.cri_log_path {
            Some(p) => Some(
                CriLog::open(p)
                    .map_err(|e| Error::io(format!("opening the CRI log {}", p.display()), e))?,
            ),
            None => None,
        };
        let output = Output::new(log, cri, if spec.terminal { 1 } else { 2 });
        let pid_file = self.path("init.pid");
        let _ = std::fs::remove_file(&pid_file);

        let (io, stdio) = if spec.terminal {
            (ProcessIo::terminal(spec.stdin, output), None)
        } else {
            let (io, stdio) = ProcessIo::pipes(spec.stdin, output)
                .map_err(|e| Error::io("creating the stdio pipes", e))?;
            (io, Some(stdio))
        };
        let io = Arc::new(io);
        let since = ctx.reaper.token();
        let created = match stdio {
            Some(stdio) => runc
                .create(&ctx.id, &spec.bundle, &pid_file, None, stdio)
                .await
                .map_err(Error::from),
            None => self.create_with_terminal(&runc, spec, &pid_file, &io).await,
        };
        self.undo_create_on_error(&runc, spec, created).await?;
        let pid = self
            .undo_create_on_error(&runc, spec, read_pid(&pid_file))
            .await?;
        let init = Process::new("", spec.terminal, spec.stdin);
        init.set_io(io, None);
        init.track(ctx, pid, since);
        tracing::info!(pid, "container created");
        Ok((runc, init))
    }

    async fn create_with_terminal(
        &self,
        runc: &Runc,
        spec: &CreateSpec,
        pid_file: &std::path::Path,
        io: &ProcessIo,
    ) -> Result<()> {
        let console =
            ConsoleSocket::bind().map_err(|e| Error::io("binding the console socket", e))?;
        let created = runc.create(
            &self.ctx.id,
            &spec.bundle,
            pid_file,
            Some(console.path()),
            ChildStdio::default(),
        );
        let master = with_console(&console, created).await?;
        io.attach_master(master)
            .await
            .map_err(|e| Error::io("setting up the terminal", e))
    }

    /// Removes what a failed create may have left in the runtime.
    async fn undo_create_on_error<T>(
        &self,
        runc: &Runc,
        spec: &CreateSpec,
        r: Result<T>,
    ) -> Result<T> {
        if r.is_err() {
            if let Err(e) = runc.delete(&self.ctx.id, true).await {
                tracing::warn!(error = %e, "cleaning up after a failed create");
            }
            if spec.systemd_cgroup {
                if let Some(unit) = crate::systemd::scope_unit(&spec.bundle) {
                    crate::systemd::forget(&self.ctx.reaper, &unit).await;
                }
            }
        }
        r
    }

    pub(super) async fn start_init(self: &Arc<Self>) -> Result<u32> {
        let (runc, init) = self.init()?;
        init.begin(&self.ctx, Status::start)?;
        let started = runc.start(&self.ctx.id).await;
        init.end();
        started?;
        // The program may have run and exited already; its exit is then on its way.
        if init.status() == Status::Created {
            init.transition(&self.ctx, Status::start)?;
        }
        tracing::info!(pid = init.pid(), "container started");
        Ok(init.pid())
    }

    pub(super) async fn kill_init(&self, signal: u32, all: bool) -> Result<()> {
        let (runc, init) = self.init()?;
        init.check_signallable(&self.ctx)?;
        match runc.kill(&self.ctx.id, signal, all).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // It may have exited while the runtime was at it.
                init.check_signallable(&self.ctx)?;
                Err(e.into())
            }
        }
    }

    pub(super) async fn delete_init(&self) -> Result<Exit> {
        let (runc, init) = self.init()?;
        if init.status() == Status::Deleted {
            return init.exit().ok_or_else(|| {
                Error::Internal(format!(
                    "{}: deleted without an exit",
                    init.describe(&self.ctx)
                ))
            });
        }
        init.begin(&self.ctx, Status::delete)?;
        let deleted = self.delete_runtime(&runc, &init).await;
        init.end();
        let exit = deleted?;
        init.transition(&self.ctx, Status::delete)?;
        self.stop_watchers();
        let execs: Vec<Arc<Process>> = self.slot().execs.drain().map(|(_, p)| p).collect();
        for p in execs {
            self.forget(&p);
        }
        let _ = std::fs::remove_file(self.path("init.pid"));
        tracing::info!("container deleted");
        Ok(exit)
    }

    async fn delete_runtime(&self, runc: &Runc, init: &Process) -> Result<Exit> {
        runc.delete(&self.ctx.id, true).await?;
        let scope = self.slot().scope.clone();
        if let Some(unit) = scope {
            crate::systemd::forget(&self.ctx.reaper, &unit).await;
        }
        // A created init dies of the runtime's delete; its exit still comes through the reaper.
        let exit = tokio::time::timeout(DELETE_EXIT_TIMEOUT, init.wait()).await;
        exit.ok().flatten().ok_or_else(|| {
            Error::Internal(format!(
                "{}: still not exited after the runtime deleted it",
                init.describe(&self.ctx)
            ))
        })
    }

    pub async fn pause(&self) -> Result<()> {
        let (runc, init) = self.init()?;
        init.check(&self.ctx, Status::pause)?;
        runc.pause(&self.ctx.id).await?;
        if init.status() == Status::Running {
            init.transition(&self.ctx, Status::pause)?;
        }
        Ok(())
    }

    pub async fn resume(&self) -> Result<()> {
        let (runc, init) = self.init()?;
        init.check(&self.ctx, Status::resume)?;
        runc.resume(&self.ctx.id).await?;
        if init.status() == Status::Paused {
            init.transition(&self.ctx, Status::resume)?;
        }
        Ok(())
    }

    /// The container's processes, with the exec id of those that are exec'd processes.
    pub async fn pids(&self) -> Result<Vec<(u32, String)>> {
        let (runc, init) = self.init()?;
        self.check_alive(&init)?;
        let pids = runc.ps(&self.ctx.id).await?;
        let slot = self.slot();
        Ok(pids
            .into_iter()
            .map(|pid| {
                let exec_id = slot
                    .execs
                    .values()
                    .find(|p| p.pid() == pid)
                    .map(|p| p.exec_id.clone())
                    .unwrap_or_default();
                (pid, exec_id)
            })
            .collect())
    }

    pub async fn update(&self, resources: &[u8]) -> Result<()> {
        match serde_json::from_slice::<serde_json::Value>(resources) {
            Ok(v) if v.is_object() => {}
            Ok(_) => {
                return Err(Error::InvalidArgument(
                    "resources must be a JSON object (OCI LinuxResources)".to_string(),
                ))
            }
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "resources are not valid JSON: {e}"
                )))
            }
        }
        let (runc, init) = self.init()?;
        self.check_alive(&init)?;
        runc.update(&self.ctx.id, resources).await?;
        Ok(())
    }

    /// runc's `events --stats` document, read from the cgroup files; from the runtime itself
    /// when they cannot be read.
    pub async fn stats(&self) -> Result<Vec<u8>> {
        let (runc, init) = self.init()?;
        self.check_alive(&init)?;
        let cgroup_stats = self.slot().cgroup_stats.clone();
        if let Some(cgroup_stats) = cgroup_stats {
            match cgroup_stats.document(&self.ctx.id) {
                Ok(document) => return Ok(document),
                // Gone: the container is on its way out, and the runtime will say so.
                Err(e @ StatsError::Nothing) => {
                    tracing::debug!(error = %e, "asking the runtime for statistics")
                }
                Err(e) => {
                    let first = !std::mem::replace(&mut self.slot().stats_failed, true);
                    if first {
                        tracing::warn!(error = %e, "asking the runtime for statistics");
                    } else {
                        tracing::debug!(error = %e, "asking the runtime for statistics");
                    }
                }
            }
        }
        Ok(runc.stats(&self.ctx.id).await?)
    }

    fn check_alive(&self, init: &Process) -> Result<()> {
        let status = init.status();
        if status.is_alive() {
            Ok(())
        } else {
            Err(Error::FailedPrecondition(format!(
                "{}: the task is {status}",
                self.ctx.name()
            )))
        }
    }

    fn watch_oom(&self, cgroups: &Cgroups) {
        let memory = match cgroups.memory() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "OOM kills will not be reported");
                return;
            }
        };
        let events = self.ctx.events.clone();
        self.ctx.oom.start(&memory, move || {
            let _ = events.send(Event::Oom {
                at: chrono::Utc::now(),
            });
        });
    }
}

/// Runs the runtime while accepting on the console socket, then returns the pty master.
pub(super) async fn with_console(
    console: &ConsoleSocket,
    run: impl Future<Output = std::result::Result<(), RuncError>>,
) -> Result<OwnedFd> {
    let receive = console.receive();
    tokio::pin!(run, receive);
    let mut master = None;
    let ran = loop {
        tokio::select! {
            r = &mut run => break r,
            m = &mut receive, if master.is_none() => master = Some(m),
        }
    };
    ran?;
    let master = match master {
        Some(m) => m,
        None => tokio::time::timeout(CONSOLE_TIMEOUT, receive)
            .await
            .map_err(|_| {
                Error::Internal("the runtime passed no terminal on the console socket".into())
            })?,
    };
    master.map_err(|e| Error::io("receiving the terminal from the runtime", e))
}
