//! The container and its processes: the init (created by the runtime's `create`) and the
//! processes exec'd beside it, each with its state machine, IO, exit record and waiters.

mod container;
mod exec;
pub mod exit;
mod init;
pub mod state;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{broadcast, watch};

use crate::error::{Error, Result};
use crate::io::ProcessIo;
use crate::oom::OomMonitor;
use crate::reaper::{Reaper, Token};
use crate::runc::ChildStdio;
pub use container::{Container, CreateSpec, ProcessSummary};
use exit::Exit;
use state::Status;

/// How long an exit waits for the process's output to drain before it is reported anyway
/// (a background child may hold the pipes open long after the process itself ended).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What the shim reports on its event stream.
#[derive(Debug, Clone)]
pub enum Event {
    Exit { exec_id: String, exit: Exit },
    Oom { at: chrono::DateTime<Utc> },
}

/// What every part of the container shares.
pub struct Context {
    pub namespace: String,
    pub id: String,
    pub task_dir: PathBuf,
    pub runtime_root: PathBuf,
    pub log_max_size: u64,
    pub log_max_files: u32,
    pub reaper: Arc<Reaper>,
    pub events: broadcast::Sender<Event>,
    /// Watches the container's memory cgroup for OOM kills, from Create to Delete.
    pub oom: OomMonitor,
}

impl Context {
    /// `container "web" in namespace "default"`, for messages.
    pub fn name(&self) -> String {
        format!("container {:?} in namespace {:?}", self.id, self.namespace)
    }
}

/// One process: the init (empty exec id) or an exec'd one.
pub struct Process {
    pub exec_id: String,
    pub terminal: bool,
    pub stdin: bool,
    state: Mutex<ProcState>,
    /// True once the process has exited (and its exit is recorded) or was deleted unstarted:
    /// nothing more will come from it.
    finished: watch::Sender<bool>,
}

struct ProcState {
    status: Status,
    pid: u32,
    /// Set as soon as the reaper has collected the process: from then on its pid may be
    /// another process's, so nothing may signal it.
    reaped: bool,
    /// A start or delete is under way.
    busy: bool,
    io: Option<Arc<ProcessIo>>,
    /// The process-side pipe ends, from Exec until the runtime takes them at Start.
    pending_stdio: Option<ChildStdio>,
    exit: Option<Exit>,
}

impl Process {
    fn new(exec_id: &str, terminal: bool, stdin: bool) -> Arc<Process> {
        Arc::new(Process {
            exec_id: exec_id.to_string(),
            terminal,
            stdin,
            state: Mutex::new(ProcState {
                status: Status::Created,
                pid: 0,
                reaped: false,
                busy: false,
                io: None,
                pending_stdio: None,
                exit: None,
            }),
            finished: watch::channel(false).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, ProcState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_init(&self) -> bool {
        self.exec_id.is_empty()
    }

    /// `init`, or `exec-<id>`: the name of the process's files.
    pub fn stem(&self) -> String {
        if self.is_init() {
            "init".to_string()
        } else {
            format!("exec-{}", self.exec_id)
        }
    }

    /// `process "x" of container ...` or `init of container ...`, for messages.
    pub fn describe(&self, ctx: &Context) -> String {
        if self.is_init() {
            format!("init process of {}", ctx.name())
        } else {
            format!("process {:?} of {}", self.exec_id, ctx.name())
        }
    }

    pub fn status(&self) -> Status {
        self.lock().status
    }

    pub fn pid(&self) -> u32 {
        self.lock().pid
    }

    pub fn io(&self) -> Option<Arc<ProcessIo>> {
        self.lock().io.clone()
    }

    /// The exit, once it has been reported.
    pub fn exit(&self) -> Option<Exit> {
        self.lock().exit
    }

    /// Watches for the process to be finished (see `finished`).
    pub fn finished_watch(&self) -> watch::Receiver<bool> {
        self.finished.subscribe()
    }

    /// Waits for the exit; `None` if the process was deleted without having run.
    pub async fn wait(&self) -> Option<Exit> {
        let mut rx = self.finished.subscribe();
        // The sender lives as long as the process, so this cannot fail while we hold it.
        let _ = rx.wait_for(|f| *f).await;
        self.exit()
    }

    fn set_io(&self, io: Arc<ProcessIo>, pending: Option<ChildStdio>) {
        let mut st = self.lock();
        st.io = Some(io);
        st.pending_stdio = pending;
    }

    fn take_pending_stdio(&self) -> Option<ChildStdio> {
        self.lock().pending_stdio.take()
    }

    /// Ends a process the shim forgets: anyone waiting on it stops waiting.
    fn finish(&self) {
        self.lock().pending_stdio = None;
        self.finished.send_replace(true);
    }

    /// Applies a transition, naming the process in the error.
    fn transition(
        &self,
        ctx: &Context,
        f: impl FnOnce(Status) -> std::result::Result<Status, state::BadTransition>,
    ) -> Result<()> {
        let mut st = self.lock();
        st.status = f(st.status)
            .map_err(|e| Error::FailedPrecondition(format!("{}: {e}", self.describe(ctx))))?;
        Ok(())
    }

    /// Fails unless `f` allows a transition from the current status.
    fn check(
        &self,
        ctx: &Context,
        f: impl FnOnce(Status) -> std::result::Result<Status, state::BadTransition>,
    ) -> Result<()> {
        f(self.status())
            .map(drop)
            .map_err(|e| Error::FailedPrecondition(format!("{}: {e}", self.describe(ctx))))
    }

    /// Marks a start or delete as under way, if `check` allows it from the current status.
    fn begin(
        &self,
        ctx: &Context,
        check: impl FnOnce(Status) -> std::result::Result<Status, state::BadTransition>,
    ) -> Result<()> {
        let mut st = self.lock();
        if st.busy {
            return Err(Error::FailedPrecondition(format!(
                "{}: another start or delete is under way",
                self.describe(ctx)
            )));
        }
        check(st.status)
            .map_err(|e| Error::FailedPrecondition(format!("{}: {e}", self.describe(ctx))))?;
        st.busy = true;
        Ok(())
    }

    fn end(&self) {
        self.lock().busy = false;
    }

    /// Gives a process that now exists its pid, and watches for its exit (which may already
    /// have happened: `since` was taken before the runtime was asked to start it).
    fn track(self: &Arc<Self>, ctx: &Arc<Context>, pid: u32, since: Token) {
        self.lock().pid = pid;
        let process = self.clone();
        let ctx2 = ctx.clone();
        ctx.reaper.on_exit(pid as i32, since, move |code| {
            let exit = Exit {
                pid,
                status: code.0,
                at: Utc::now(),
            };
            process.lock().reaped = true;
            tokio::spawn(process.report_exit(ctx2, exit));
        });
    }

    /// Records the exit on disk, waits for the output to drain, then updates the state and
    /// tells the waiters and the event stream, in that order.
    async fn report_exit(self: Arc<Self>, ctx: Arc<Context>, exit: Exit) {
        let stem = self.stem();
        tracing::info!(exec_id = %self.exec_id, pid = exit.pid, exit_status = exit.status, "process exited");
        if let Err(e) = exit::record(&ctx.task_dir, &stem, &exit) {
            tracing::error!(exec_id = %self.exec_id, error = %e, "recording the exit failed");
        }
        if let Some(io) = self.io() {
            if tokio::time::timeout(DRAIN_TIMEOUT, io.output.drained())
                .await
                .is_err()
            {
                tracing::warn!(exec_id = %self.exec_id, "output still open after the process exited");
            }
            io.release().await;
        }
        {
            let mut st = self.lock();
            match st.status.exit() {
                Ok(s) => st.status = s,
                Err(e) => tracing::warn!(exec_id = %self.exec_id, error = %e, "unexpected exit"),
            }
            st.exit = Some(exit);
        }
        // An OOM kill is counted before its victim dies: reported now, it precedes the exit.
        ctx.oom.catch_up();
        self.finished.send_replace(true);
        let _ = ctx.events.send(Event::Exit {
            exec_id: self.exec_id.clone(),
            exit,
        });
    }

    /// Fails unless the process may still be signalled.
    fn check_signallable(&self, ctx: &Context) -> Result<u32> {
        let st = self.lock();
        if st.reaped || !st.status.is_alive() {
            return Err(Error::NotFound(format!(
                "{}: process already finished",
                self.describe(ctx)
            )));
        }
        Ok(st.pid)
    }
}

impl Process {
    /// Signals an exec'd process directly, unless it has exited (its pid may be another
    /// process's by then). The check and the kill happen under one lock, which the reaper's
    /// callback also takes.
    fn signal(&self, ctx: &Context, signal: u32) -> Result<()> {
        let sig = nix::sys::signal::Signal::try_from(signal as i32).map_err(|_| {
            Error::InvalidArgument(format!(
                "signal {signal} cannot be sent to an exec'd process"
            ))
        })?;
        let st = self.lock();
        if st.status == Status::Created {
            return Err(Error::FailedPrecondition(format!(
                "{}: not started",
                self.describe(ctx)
            )));
        }
        if st.reaped || !st.status.is_alive() {
            return Err(Error::NotFound(format!(
                "{}: process already finished",
                self.describe(ctx)
            )));
        }
        let pid = nix::unistd::Pid::from_raw(st.pid as i32);
        nix::sys::signal::kill(pid, sig).map_err(|e| {
            Error::io(
                format!("signalling {}", self.describe(ctx)),
                std::io::Error::from(e),
            )
        })
    }

    /// Deletes a process that is created or stopped, at once (an exec'd one: nothing to undo
    /// in the runtime).
    fn delete_now(&self, ctx: &Context) -> Result<()> {
        let mut st = self.lock();
        if st.busy {
            return Err(Error::FailedPrecondition(format!(
                "{}: a start is under way",
                self.describe(ctx)
            )));
        }
        st.status = st
            .status
            .delete()
            .map_err(|e| Error::FailedPrecondition(format!("{}: {e}", self.describe(ctx))))?;
        Ok(())
    }
}

/// Validates a signal number from a request; 0 means SIGTERM.
pub fn signal_number(signal: u32) -> Result<u32> {
    match signal {
        0 => Ok(15),
        1..=64 => Ok(signal),
        _ => Err(Error::InvalidArgument(format!("invalid signal {signal}"))),
    }
}

/// Validates an exec id: 1 to 76 characters of [A-Za-z0-9_.-].
pub fn valid_exec_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 76
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_ids() {
        assert!(valid_exec_id("probe-1.a_b"));
        assert!(!valid_exec_id(""));
        assert!(!valid_exec_id("a/b"));
        assert!(!valid_exec_id(".."));
        assert!(!valid_exec_id(&"x".repeat(77)));
    }

    #[test]
    fn signals() {
        assert_eq!(signal_number(0).unwrap(), 15);
        assert_eq!(signal_number(9).unwrap(), 9);
        assert!(signal_number(65).is_err());
    }
}
