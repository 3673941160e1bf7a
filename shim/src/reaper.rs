//! The one place that calls waitpid. As a child subreaper the shim inherits the container's
//! init and exec'd processes once runc lets go of them, besides its own runc children; every
//! exit is dispatched to whoever registered for its pid, or kept until somebody does, since a
//! process can exit before the pid file naming it has been read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::Signal;
use tokio::sync::oneshot;

/// Exits nobody claimed are kept up to this many (the oldest are dropped), so orphans
/// reparented to the shim cannot grow its memory without bound.
const MAX_UNCLAIMED: usize = 1024;

/// How a process ended, as the shell reports it: its exit code, or 128 + the signal number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitCode(pub u32);

/// A point in the sequence of exits: a registration made with it ignores earlier exits, so a
/// stale exit of a recycled pid is never taken for a new process's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Token(u64);

type Callback = Box<dyn FnOnce(ExitCode) + Send>;

#[derive(Default)]
struct State {
    seq: u64,
    waiting: HashMap<i32, (Token, Callback)>,
    unclaimed: HashMap<i32, (Token, ExitCode)>,
}

#[derive(Default)]
pub struct Reaper {
    state: Mutex<State>,
}

impl Reaper {
    pub fn new() -> Arc<Reaper> {
        Arc::new(Reaper::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a callback panicked elsewhere; the map is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a token before starting a process, and register with it once its pid is known.
    pub fn token(&self) -> Token {
        Token(self.lock().seq)
    }

    /// Calls `f` with the exit of `pid`, once it happens, or at once (before this returns)
    /// if it happened after `since`. `f` runs on the reaper's path: it must be quick and
    /// must not take locks the caller holds while registering.
    pub fn on_exit(&self, pid: i32, since: Token, f: impl FnOnce(ExitCode) + Send + 'static) {
        let mut state = self.lock();
        if let Some((at, code)) = state.unclaimed.remove(&pid) {
            if at > since {
                drop(state);
                f(code);
                return;
            }
        }
        state.waiting.insert(pid, (since, Box::new(f)));
    }

    /// The exit of `pid` as a future (see `on_exit`).
    pub fn wait(&self, pid: i32, since: Token) -> oneshot::Receiver<ExitCode> {
        let (tx, rx) = oneshot::channel();
        self.on_exit(pid, since, move |code| {
            let _ = tx.send(code);
        });
        rx
    }

    /// Forgets a registration whose process will not be waited for after all.
    pub fn forget(&self, pid: i32) {
        self.lock().waiting.remove(&pid);
    }

    /// Reaps every child that has exited, without blocking.
    pub fn reap(&self) {
        loop {
            let (pid, code) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitCode(code as u32)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitCode(128 + sig as u32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return;
                }
            };
            self.dispatch(pid.as_raw(), code);
        }
    }

    fn dispatch(&self, pid: i32, code: ExitCode) {
        let mut state = self.lock();
        state.seq += 1;
        let now = Token(state.seq);
        if let Some((_, f)) = state.waiting.remove(&pid) {
            drop(state);
            tracing::debug!(pid, exit_status = code.0, "child exited");
            f(code);
            return;
        }
        tracing::debug!(pid, exit_status = code.0, "unclaimed child exit");
        state.unclaimed.insert(pid, (now, code));
        if state.unclaimed.len() > MAX_UNCLAIMED {
            if let Some(oldest) = state
                .unclaimed
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(pid, _)| *pid)
            {
                state.unclaimed.remove(&oldest);
            }
        }
    }

    /// Reaps on every SIGCHLD until the signal stream ends. The handler must have been
    /// installed (`signal(SignalKind::child())`) before any child was started.
    pub async fn run(self: Arc<Self>, mut sigchld: Signal) {
        loop {
            self.reap();
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn exit_before_registration_is_kept() {
        let r = Reaper::new();
        let t = r.token();
        r.dispatch(42, ExitCode(3));
        let got = Arc::new(AtomicU32::new(0));
        let g = got.clone();
        r.on_exit(42, t, move |c| g.store(c.0 + 1, Ordering::SeqCst));
        assert_eq!(got.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn stale_exit_of_recycled_pid_is_ignored() {
        let r = Reaper::new();
        r.dispatch(42, ExitCode(1));
        let t = r.token();
        let got = Arc::new(AtomicU32::new(0));
        let g = got.clone();
        r.on_exit(42, t, move |c| g.store(c.0 + 1, Ordering::SeqCst));
        assert_eq!(got.load(Ordering::SeqCst), 0);
        r.dispatch(42, ExitCode(137));
        assert_eq!(got.load(Ordering::SeqCst), 138);
    }

    #[test]
    fn unclaimed_exits_are_bounded() {
        let r = Reaper::new();
        for pid in 0..(MAX_UNCLAIMED as i32 + 10) {
            r.dispatch(pid, ExitCode(0));
        }
        let state = r.lock();
        assert_eq!(state.unclaimed.len(), MAX_UNCLAIMED);
        assert!(!state.unclaimed.contains_key(&0));
    }
}
