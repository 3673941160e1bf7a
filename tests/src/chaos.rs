//! Faults for the restart, shim-death and chaos tests: supd taken down (SIGKILL or SIGTERM)
//! and brought back on the same directories, a task's shim found and killed by its pid, task
//! events collected in the background, logs with their timestamps, and a seeded RNG so that a
//! chaos run can be replayed.

mod host;
mod meta;
pub mod model;
pub mod workload;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sup_client::{api, Client};
use tokio::task::JoinHandle;
use tonic::Status;

use crate::task::World;
use crate::Daemon;

pub use host::{
    cmdline, container_cgroups, exe_name, host_leftovers, host_settles, namespace_processes,
    proc_state, runtime_processes, shims_of, start_time,
};
pub use meta::{metadata_problems, snapshot_exists};

/// How long a process killed by a test gets to disappear.
pub const GONE_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of supd's log an assertion message carries.
const LOG_TAIL: usize = 6 * 1024;

/// How supd is taken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// SIGKILL: no chance to tidy up.
    Kill,
    /// SIGTERM: a graceful stop, which must not touch a container either.
    Term,
}

/// The end of supd's log, for assertion messages.
pub fn log_tail(daemon: &Daemon) -> String {
    let log = daemon.log();
    let mut from = log.len().saturating_sub(LOG_TAIL);
    while !log.is_char_boundary(from) {
        from += 1;
    }
    log[from..].to_string()
}

/// Sends `signal` to `pid`; false when there is no such process.
pub fn signal_pid(pid: u32, signal: Signal) -> bool {
    i32::try_from(pid)
        .ok()
        .is_some_and(|p| kill(Pid::from_raw(p), signal).is_ok())
}

/// Sends supd the signal for `how` by its pid and returns once it has exited (it stays
/// unreaped, so the pid cannot be reused, until the harness stops or restarts it). Takes no
/// `&mut Daemon`, so that calls in flight can go on borrowing the daemon meanwhile.
pub async fn signal_supd(pid: u32, how: Down) {
    let (signal, timeout) = match how {
        Down::Kill => (Signal::SIGKILL, GONE_TIMEOUT),
        Down::Term => (Signal::SIGTERM, crate::daemon::STOP_TIMEOUT),
    };
    assert!(signal_pid(pid, signal), "{signal} to supd {pid}");
    let deadline = Instant::now() + timeout;
    while proc_state(pid).is_some_and(|s| s != "Z") {
        if Instant::now() >= deadline {
            // The harness's stop (SIGTERM, then SIGKILL) finishes the job; the caller's
            // check of the exit status tells.
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// After [`signal_supd`]: reaps supd when it was asked to stop and checks that it exited by
/// itself, with success. (After SIGKILL the harness reaps it on restart.)
pub fn check_down(daemon: &mut Daemon, how: Down) {
    if how == Down::Term {
        let status = daemon.stop().expect("supd was running");
        assert!(
            status.success(),
            "supd's exit on SIGTERM: {status} (a SIGKILL means it did not stop within \
             {:?}); its log ends with:\n{}",
            crate::daemon::STOP_TIMEOUT,
            log_tail(daemon)
        );
    }
}

/// Takes supd down and returns once it is gone: [`signal_supd`] then [`check_down`].
pub async fn take_down(daemon: &mut Daemon, how: Down) {
    let pid = daemon.pid().expect("supd is running");
    signal_supd(pid, how).await;
    check_down(daemon, how);
}

/// Starts supd again on the same root and state, points the world's client at it, and
/// returns how long it took until supd answered Version.
pub async fn bring_up(world: &mut World) -> Duration {
    let started = Instant::now();
    world.daemon.restart().await;
    let took = started.elapsed();
    world.client = world.daemon.client_ns(&world.ns).await;
    took
}

/// `<state>/tasks/<ns>/<id>`: where a task's bundle, shim pid and logs live.
pub fn task_dir(daemon: &Daemon, ns: &str, id: &str) -> PathBuf {
    daemon.state().join("tasks").join(ns).join(id)
}

/// The pid the task's shim wrote to `shim.pid` in its task dir.
pub fn shim_pid(daemon: &Daemon, ns: &str, id: &str) -> Option<u32> {
    std::fs::read_to_string(task_dir(daemon, ns, id).join("shim.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A process as seen at one moment: a later process reusing the pid is another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub start: u64,
}

impl Proc {
    pub fn of(pid: u32) -> Option<Proc> {
        start_time(pid).map(|start| Proc { pid, start })
    }

    /// Still the same process, and not a zombie.
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start) && proc_state(self.pid).is_some_and(|s| s != "Z")
    }

    /// Waits up to `timeout` for the process to be gone; true if it went.
    pub async fn gone_within(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.alive() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// Tasks.List of the client's namespace.
pub async fn list_tasks(client: &Client) -> Result<Vec<api::Process>, Status> {
    Ok(client
        .tasks()
        .list(api::ListTasksRequest::default())
        .await?
        .into_inner()
        .tasks)
}

/// Tasks.Get of one process.
pub async fn get_task(client: &Client, id: &str, exec_id: &str) -> Result<api::Process, Status> {
    client
        .tasks()
        .get(api::GetTaskRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        })
        .await?
        .into_inner()
        .process
        .ok_or_else(|| Status::unknown("Tasks.Get answered without a process (test harness)"))
}

/// The status a process reports, by name, for messages.
pub fn status_name(p: &api::Process) -> &'static str {
    match api::TaskStatus::try_from(p.status) {
        Ok(api::TaskStatus::Created) => "created",
        Ok(api::TaskStatus::Running) => "running",
        Ok(api::TaskStatus::Stopped) => "stopped",
        Ok(api::TaskStatus::Paused) => "paused",
        Ok(api::TaskStatus::Pausing) => "pausing",
        _ => "unknown",
    }
}

pub fn time_of(ts: &Option<prost_types::Timestamp>) -> Option<SystemTime> {
    (*ts).and_then(|t| SystemTime::try_from(t).ok())
}

/// One line of a process's log and the time the log gives it.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub text: String,
    pub at: Option<SystemTime>,
}

/// Tasks.Logs (no follow) of a process's stdout, as lines, each with the timestamp of the
/// frame that completed it.
pub async fn log_lines(client: &Client, id: &str, exec_id: &str) -> Result<Vec<LogLine>, Status> {
    let req = api::LogsRequest {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
        ..Default::default()
    };
    let read = async {
        let mut stream = client.tasks().logs(req).await?.into_inner();
        let mut lines = Vec::new();
        let mut partial: Vec<u8> = Vec::new();
        while let Some(frame) = stream.message().await? {
            if frame.stream != api::StdStream::Stdout as i32 {
                continue;
            }
            partial.extend_from_slice(&frame.data);
            while let Some(end) = partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = partial.drain(..=end).collect();
                lines.push(LogLine {
                    text: String::from_utf8_lossy(&line[..end]).into_owned(),
                    at: time_of(&frame.timestamp),
                });
            }
        }
        Ok(lines)
    };
    tokio::time::timeout(crate::task::EXIT_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("Tasks.Logs did not end")))
}

/// Task events of a world's namespace, collected in the background from the moment of
/// [`EventLog::open`] on.
pub struct EventLog {
    seen: Arc<Mutex<Vec<api::Envelope>>>,
    reader: JoinHandle<()>,
}

impl EventLog {
    pub async fn open(world: &World) -> EventLog {
        let mut stream = world.subscribe("^/tasks/").await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(env)) = stream.message().await {
                if let Ok(mut v) = into.lock() {
                    v.push(env);
                }
            }
        });
        EventLog { seen, reader }
    }

    fn tasks(&self, topic: &str) -> Vec<api::TaskEvent> {
        let seen = self.seen.lock().map(|v| v.clone()).unwrap_or_default();
        seen.into_iter()
            .filter(|e| e.topic == topic)
            .filter_map(|e| match e.event {
                Some(api::envelope::Event::Task(t)) => Some(t),
                _ => None,
            })
            .collect()
    }

    /// /tasks/exit events of one process: (exit status, reason) each.
    pub fn exits(&self, id: &str, exec_id: &str) -> Vec<(u32, String)> {
        self.tasks("/tasks/exit")
            .into_iter()
            .filter(|t| t.container_id == id && t.exec_id == exec_id)
            .map(|t| (t.exit_status, t.reason))
            .collect()
    }

    /// How many /tasks/delete events a container's task has had.
    pub fn deletes(&self, id: &str) -> usize {
        self.tasks("/tasks/delete")
            .iter()
            .filter(|t| t.container_id == id)
            .count()
    }

    /// Every topic seen, in order, for messages.
    pub fn topics(&self) -> Vec<String> {
        let seen = self.seen.lock().map(|v| v.clone()).unwrap_or_default();
        seen.iter()
            .map(|e| match &e.event {
                Some(api::envelope::Event::Task(t)) => {
                    format!(
                        "{} {}/{:?} status {} reason {:?}",
                        e.topic, t.container_id, t.exec_id, t.exit_status, t.reason
                    )
                }
                _ => e.topic.clone(),
            })
            .collect()
    }

    /// Polls until `done` holds, `timeout` at most; returns whether it did.
    pub async fn until(&self, timeout: Duration, done: impl Fn(&EventLog) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// SplitMix64: small, seedable, and the same sequence on every host.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The seed from `var` when set, else `default`; printed so that a run can be replayed.
    pub fn seed_from_env(var: &str, default: u64) -> u64 {
        let seed = std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default);
        eprintln!("{var}={seed}");
        seed
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with `percent` % chance.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// `len` bytes that do not compress.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// An independent generator for a sub-task.
    pub fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }
}
