//! Processes exec'd in the running container: added with their OCI process spec, started with
//! `runtime exec --detach`, signalled directly, and forgotten on delete.

use std::sync::Arc;

use super::container::read_pid;
use super::exit::{self, Exit};
use super::init::with_console;
use super::state::Status;
use super::{valid_exec_id, Container, Process};
use crate::error::{Error, Result};
use crate::io::console::ConsoleSocket;
use crate::io::log::LogFile;
use crate::io::output::Output;
use crate::io::ProcessIo;
use crate::runc::{ChildStdio, Runc};

/// Largest OCI process spec accepted.
const MAX_PROCESS_SPEC: usize = 1 << 20;
/// Most exec'd processes a container holds at once (deleted ones do not count).
const MAX_EXECS: usize = 1024;

impl Container {
    /// Adds a process to the running container; `start` runs it.
    pub fn add_exec(&self, exec_id: &str, process: &[u8], stdin: bool) -> Result<()> {
        if !valid_exec_id(exec_id) {
            return Err(Error::InvalidArgument(format!(
                "invalid exec id {exec_id:?}: 1 to 76 characters of [A-Za-z0-9_.-]"
            )));
        }
        let terminal = check_process_spec(process)?;
        let (_, init) = self.init()?;
        init.check(&self.ctx, |s| match s {
            Status::Running => Ok(s),
            _ => Err(super::state::BadTransition {
                from: s,
                action: "exec in",
            }),
        })?;
        let p = Process::new(exec_id, terminal, stdin);
        {
            let mut slot = self.slot();
            if slot.execs.contains_key(exec_id) {
                return Err(Error::AlreadyExists(format!(
                    "process {exec_id:?} of {}: already exists",
                    self.ctx.name()
                )));
            }
            if slot.execs.len() >= MAX_EXECS {
                return Err(Error::FailedPrecondition(format!(
                    "{}: already {MAX_EXECS} exec'd processes; delete some first",
                    self.ctx.name()
                )));
            }
            // Reserved before the spec file is written, so a concurrent Exec with the same
            // id cannot overwrite it.
            slot.execs.insert(exec_id.to_string(), p.clone());
        }
        if let Err(e) = self.prepare_exec(&p, process) {
            self.slot().execs.remove(exec_id);
            p.finish();
            return Err(e);
        }
        Ok(())
    }

    /// Writes the spec for the runtime and sets up the stdio, so that an attacher can connect
    /// before Start and miss nothing.
    fn prepare_exec(&self, p: &Process, process: &[u8]) -> Result<()> {
        let ctx = &self.ctx;
        let stem = p.stem();
        let path = self.path(&format!("{stem}.json"));
        write_atomic(&path, process)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        let log_path = self.log_path(&stem);
        let log = LogFile::create(&log_path, ctx.log_max_size, ctx.log_max_files)
            .map_err(|e| Error::io(format!("creating the log {}", log_path.display()), e))?;
        let output = Output::new(log, None, if p.terminal { 1 } else { 2 });
        if p.terminal {
            p.set_io(Arc::new(ProcessIo::terminal(p.stdin, output)), None);
        } else {
            let (io, stdio) = ProcessIo::pipes(p.stdin, output)
                .map_err(|e| Error::io("creating the stdio pipes", e))?;
            p.set_io(Arc::new(io), Some(stdio));
        }
        Ok(())
    }

    pub(super) async fn start_exec(self: &Arc<Self>, exec_id: &str) -> Result<u32> {
        let p = self.process(exec_id)?;
        let (runc, init) = self.init()?;
        p.begin(&self.ctx, Status::start)?;
        let started = self.run_exec(&runc, &init, &p).await;
        p.end();
        started
    }

    async fn run_exec(&self, runc: &Runc, init: &Process, p: &Arc<Process>) -> Result<u32> {
        let ctx = &self.ctx;
        if init.status() != Status::Running {
            return Err(Error::FailedPrecondition(format!(
                "{}: the container is {}",
                p.describe(ctx),
                init.status()
            )));
        }
        let stem = p.stem();
        let spec = self.path(&format!("{stem}.json"));
        let pid_file = self.path(&format!("{stem}.pid"));
        let _ = std::fs::remove_file(&pid_file);
        let io = p
            .io()
            .ok_or_else(|| Error::Internal(format!("{}: no stdio", p.describe(ctx))))?;

        let since = ctx.reaper.token();
        if p.terminal {
            let console =
                ConsoleSocket::bind().map_err(|e| Error::io("binding the console socket", e))?;
            let run = runc.exec(
                &ctx.id,
                &spec,
                &pid_file,
                Some(console.path()),
                ChildStdio::default(),
            );
            let master = with_console(&console, run).await?;
            io.attach_master(master)
                .await
                .map_err(|e| Error::io("setting up the terminal", e))?;
        } else {
            // The runtime takes the process's pipe ends; a failed start cannot be retried.
            let stdio = p.take_pending_stdio().ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "{}: an earlier start failed; delete it and exec again",
                    p.describe(ctx)
                ))
            })?;
            runc.exec(&ctx.id, &spec, &pid_file, None, stdio).await?;
        }
        let pid = read_pid(&pid_file)?;
        p.transition(ctx, Status::start)?;
        p.track(ctx, pid, since);
        tracing::info!(exec_id = %p.exec_id, pid, "process started");
        Ok(pid)
    }

    pub(super) fn kill_exec(&self, exec_id: &str, signal: u32) -> Result<()> {
        self.process(exec_id)?.signal(&self.ctx, signal)
    }

    pub(super) fn delete_exec(&self, exec_id: &str) -> Result<Exit> {
        let p = self.process(exec_id)?;
        p.delete_now(&self.ctx)?;
        self.slot().execs.remove(exec_id);
        self.forget(&p);
        Ok(p.exit().unwrap_or(Exit {
            pid: p.pid(),
            status: 0,
            at: chrono::Utc::now(),
        }))
    }

    /// Drops an exec'd process and its files.
    pub(super) fn forget(&self, p: &Process) {
        let stem = p.stem();
        if let Some(io) = p.io() {
            io.abort();
            io.output.remove_log();
        }
        p.finish();
        let _ = std::fs::remove_file(self.path(&format!("{stem}.json")));
        let _ = std::fs::remove_file(self.path(&format!("{stem}.pid")));
        exit::remove(&self.ctx.task_dir, &stem);
    }
}

/// Checks an OCI process spec enough to give a clear error; returns whether it asks for a
/// terminal.
fn check_process_spec(json: &[u8]) -> Result<bool> {
    if json.len() > MAX_PROCESS_SPEC {
        return Err(Error::InvalidArgument(format!(
            "process spec is larger than {MAX_PROCESS_SPEC} bytes"
        )));
    }
    let bad = |why: &str| Error::InvalidArgument(format!("process spec: {why}"));
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| bad(&format!("not valid JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| bad("not a JSON object"))?;
    let args_ok = obj
        .get("args")
        .and_then(|a| a.as_array())
        .is_some_and(|a| !a.is_empty() && a.iter().all(|x| x.is_string()));
    if !args_ok {
        return Err(bad("args must be a non-empty list of strings"));
    }
    let cwd_ok = obj
        .get("cwd")
        .and_then(|c| c.as_str())
        .is_some_and(|c| c.starts_with('/'));
    if !cwd_ok {
        return Err(bad("cwd must be an absolute path"));
    }
    match obj.get("terminal") {
        None | Some(serde_json::Value::Null) => Ok(false),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad("terminal must be a boolean")),
    }
}

fn write_atomic(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::check_process_spec;

    #[test]
    fn process_specs() {
        assert!(!check_process_spec(br#"{"args":["sh"],"cwd":"/"}"#).unwrap());
        assert!(check_process_spec(br#"{"args":["sh"],"cwd":"/","terminal":true}"#).unwrap());
        assert!(check_process_spec(br#"{"args":[],"cwd":"/"}"#).is_err());
        assert!(check_process_spec(br#"{"args":["sh"],"cwd":"tmp"}"#).is_err());
        assert!(check_process_spec(br#"["sh"]"#).is_err());
        assert!(check_process_spec(b"{").is_err());
        assert!(check_process_spec(br#"{"args":["sh"],"cwd":"/","terminal":"yes"}"#).is_err());
    }
}
