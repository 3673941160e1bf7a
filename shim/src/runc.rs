//! A typed wrapper around the OCI runtime's command line (runc, or any runtime with runc's
//! CLI: crun, youki). Every command runs with a global `--root`, and a JSON log in the task
//! dir from which a failure's own message is recovered. Children are awaited through the
//! reaper, never with `Child::wait`, which would race with it.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::reaper::{Reaper, Token};

/// Most of a command's stdout that is kept (state, ps and stats output are far smaller).
const MAX_STDOUT: u64 = 16 << 20;
/// Most of a command's stderr that is kept for an error message.
const MAX_STDERR: u64 = 64 << 10;
/// Most of the runtime's log read back after a failure.
const MAX_LOG_TAIL: u64 = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("{command}: starting {binary}: {source}")]
    Spawn {
        command: String,
        binary: String,
        source: std::io::Error,
    },
    #[error("{command}: exit status {status}: {message}")]
    Failed {
        command: String,
        status: u32,
        message: String,
    },
    #[error("{command}: {source}")]
    Io {
        command: String,
        source: std::io::Error,
    },
    #[error("{command}: unexpected output: {detail}")]
    Output { command: String, detail: String },
    #[error("{command}: its exit was never reported")]
    Lost { command: String },
}

/// The runtime's own stdio, when it must be the container's (`create` and `exec` pass theirs
/// on to the process they start). A stream left `None` is captured (stdout, stderr) or
/// /dev/null (stdin).
#[derive(Default)]
pub struct ChildStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// What `state` reports.
#[derive(Debug, Clone, Deserialize)]
pub struct RuntimeState {
    pub id: String,
    pub pid: u32,
    pub status: String,
}

pub struct Runc {
    binary: PathBuf,
    name: String,
    root: PathBuf,
    log: PathBuf,
    cwd: PathBuf,
    systemd_cgroup: bool,
    reaper: Arc<Reaper>,
}

impl Runc {
    /// `binary` is a name looked up in PATH or an absolute path; `task_dir` holds the log.
    /// With `systemd_cgroup`, every command runs with the runtime's systemd cgroup driver.
    pub fn new(
        binary: &str,
        root: &Path,
        task_dir: &Path,
        systemd_cgroup: bool,
        reaper: Arc<Reaper>,
    ) -> Runc {
        let name = Path::new(binary)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| binary.to_string());
        Runc {
            binary: PathBuf::from(binary),
            name,
            root: root.to_path_buf(),
            log: task_dir.join("runc.log"),
            cwd: task_dir.to_path_buf(),
            systemd_cgroup,
            reaper,
        }
    }

    /// Checks a runtime name from a request: a bare command name or an absolute path.
    pub fn valid_binary(binary: &str) -> bool {
        if binary.is_empty() || binary.len() > 4096 || binary.contains('\0') {
            return false;
        }
        if binary.contains('/') {
            return Path::new(binary).is_absolute();
        }
        binary
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b))
    }

    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        console_socket: Option<&str>,
        stdio: ChildStdio,
    ) -> Result<(), RuncError> {
        let mut args = os_args(&["create", "--bundle"]);
        args.push(bundle.into());
        args.push("--pid-file".into());
        args.push(pid_file.into());
        if let Some(s) = console_socket {
            args.push("--console-socket".into());
            args.push(s.into());
        }
        args.push(id.into());
        self.run("create", args, None, stdio).await.map(drop)
    }

    pub async fn start(&self, id: &str) -> Result<(), RuncError> {
        self.simple("start", &["start", id]).await
    }

    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), RuncError> {
        let sig = signal.to_string();
        let args: &[&str] = if all {
            &["kill", "--all", id, &sig]
        } else {
            &["kill", id, &sig]
        };
        self.simple("kill", args).await
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<(), RuncError> {
        let args: &[&str] = if force {
            &["delete", "--force", id]
        } else {
            &["delete", id]
        };
        self.simple("delete", args).await
    }

    pub async fn pause(&self, id: &str) -> Result<(), RuncError> {
        self.simple("pause", &["pause", id]).await
    }

    pub async fn resume(&self, id: &str) -> Result<(), RuncError> {
        self.simple("resume", &["resume", id]).await
    }

    pub async fn state(&self, id: &str) -> Result<RuntimeState, RuncError> {
        let out = self
            .run(
                "state",
                os_args(&["state", id]),
                None,
                ChildStdio::default(),
            )
            .await?;
        serde_json::from_slice(&out).map_err(|e| self.bad_output("state", e))
    }

    /// Pids of the container's processes, as seen from the host.
    pub async fn ps(&self, id: &str) -> Result<Vec<u32>, RuncError> {
        let out = self
            .run(
                "ps",
                os_args(&["ps", "--format", "json", id]),
                None,
                ChildStdio::default(),
            )
            .await?;
        // runc prints `null` for a container without processes.
        let pids: Option<Vec<u32>> =
            serde_json::from_slice(&out).map_err(|e| self.bad_output("ps", e))?;
        Ok(pids.unwrap_or_default())
    }

    /// Applies an OCI LinuxResources document.
    pub async fn update(&self, id: &str, resources: &[u8]) -> Result<(), RuncError> {
        self.run(
            "update",
            os_args(&["update", "--resources", "-", id]),
            Some(resources.to_vec()),
            ChildStdio::default(),
        )
        .await
        .map(drop)
    }

    /// One statistics event: `{"type":"stats","id":..,"data":{..}}`.
    pub async fn stats(&self, id: &str) -> Result<Vec<u8>, RuncError> {
        let out = self
            .run(
                "events",
                os_args(&["events", "--stats", id]),
                None,
                ChildStdio::default(),
            )
            .await?;
        let trimmed = out.trim_ascii();
        serde_json::from_slice::<serde_json::Value>(trimmed)
            .map_err(|e| self.bad_output("events --stats", e))?;
        Ok(trimmed.to_vec())
    }

    pub async fn exec(
        &self,
        id: &str,
        process_file: &Path,
        pid_file: &Path,
        console_socket: Option<&str>,
        stdio: ChildStdio,
    ) -> Result<(), RuncError> {
        let mut args = os_args(&["exec", "--detach", "--process"]);
        args.push(process_file.into());
        args.push("--pid-file".into());
        args.push(pid_file.into());
        if let Some(s) = console_socket {
            args.push("--console-socket".into());
            args.push(s.into());
        }
        args.push(id.into());
        self.run("exec", args, None, stdio).await.map(drop)
    }

    async fn simple(&self, what: &'static str, args: &[&str]) -> Result<(), RuncError> {
        self.run(what, os_args(args), None, ChildStdio::default())
            .await
            .map(drop)
    }

    fn command_name(&self, what: &str) -> String {
        format!("{} {what}", self.name)
    }

    fn bad_output(&self, what: &str, detail: impl std::fmt::Display) -> RuncError {
        RuncError::Output {
            command: self.command_name(what),
            detail: detail.to_string(),
        }
    }

    fn command(&self, args: Vec<OsString>) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&self.log)
            .arg("--log-format")
            .arg("json");
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd.args(args).current_dir(&self.cwd);
        cmd
    }

    fn spawn(
        &self,
        command: &str,
        mut cmd: Command,
    ) -> Result<(i32, std::process::Child), RuncError> {
        let child = cmd.spawn().map_err(|source| RuncError::Spawn {
            command: command.to_string(),
            binary: self.binary.display().to_string(),
            source,
        })?;
        let pid = i32::try_from(child.id()).map_err(|_| RuncError::Lost {
            command: command.to_string(),
        })?;
        Ok((pid, child))
    }

    /// Runs one command to its end; returns its stdout, or its failure with the runtime's own
    /// error message.
    async fn run(
        &self,
        what: &'static str,
        args: Vec<OsString>,
        input: Option<Vec<u8>>,
        stdio: ChildStdio,
    ) -> Result<Vec<u8>, RuncError> {
        let command = self.command_name(what);
        let io_err = |source| RuncError::Io {
            command: command.clone(),
            source,
        };
        let mut cmd = self.command(args);
        cmd.stdin(match (stdio.stdin, input.is_some()) {
            (Some(fd), _) => Stdio::from(fd),
            (None, true) => Stdio::piped(),
            (None, false) => Stdio::null(),
        });
        cmd.stdout(stdio.stdout.map_or_else(Stdio::piped, Stdio::from));
        cmd.stderr(stdio.stderr.map_or_else(Stdio::piped, Stdio::from));
        let log_start = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);

        let token: Token = self.reaper.token();
        let (pid, mut child) = self.spawn(&command, cmd)?;
        let exit = self.reaper.wait(pid, token);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        // `cmd` and `child` hold no more descriptors: the container-side ends given as
        // stdio were moved into the spawned process's table and closed here on drop.
        drop(child);

        let feed = async {
            if let (Some(stdin), Some(data)) = (stdin, input) {
                let mut tx = pipe::Sender::from_owned_fd(OwnedFd::from(stdin))?;
                tx.write_all(&data).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let out = read_capped(stdout.map(OwnedFd::from), MAX_STDOUT);
        let err = read_capped(stderr.map(OwnedFd::from), MAX_STDERR);
        let (fed, out, err, code) = tokio::join!(feed, out, err, exit);
        let code = code.map_err(|_| RuncError::Lost {
            command: command.clone(),
        })?;
        if code.0 != 0 {
            let message = self
                .error_since(log_start)
                .or_else(|| last_line(&err.unwrap_or_default()))
                .unwrap_or_else(|| "no error message".to_string());
            return Err(RuncError::Failed {
                command,
                status: code.0,
                message,
            });
        }
        fed.map_err(io_err)?;
        out.map_err(io_err)
    }

    /// The last error the runtime logged after `offset` in its log.
    fn error_since(&self, offset: u64) -> Option<String> {
        let mut file = std::fs::File::open(&self.log).ok()?;
        let len = file.metadata().ok()?.len();
        let start = offset.max(len.saturating_sub(MAX_LOG_TAIL));
        file.seek(SeekFrom::Start(start)).ok()?;
        let mut tail = Vec::new();
        file.take(MAX_LOG_TAIL).read_to_end(&mut tail).ok()?;
        last_logged_error(&tail)
    }
}

fn os_args(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

async fn read_capped(fd: Option<OwnedFd>, cap: u64) -> std::io::Result<Vec<u8>> {
    let Some(fd) = fd else {
        return Ok(Vec::new());
    };
    let rx = pipe::Receiver::from_owned_fd(fd)?;
    let mut out = Vec::new();
    let mut limited = rx.take(cap);
    limited.read_to_end(&mut out).await?;
    // Drain what is past the cap so the child never blocks on a full pipe.
    let mut rest = limited.into_inner();
    let mut sink = [0u8; 4096];
    while rest.read(&mut sink).await? > 0 {}
    Ok(out)
}

#[derive(Deserialize)]
struct LogEntry {
    #[serde(default)]
    level: String,
    #[serde(default)]
    msg: String,
}

/// The message of the last error-level entry of a JSON log.
pub fn last_logged_error(log: &[u8]) -> Option<String> {
    log.split(|&b| b == b'\n')
        .rev()
        .filter_map(|line| serde_json::from_slice::<LogEntry>(line).ok())
        .find(|e| matches!(e.level.as_str(), "error" | "fatal" | "panic") && !e.msg.is_empty())
        .map(|e| e.msg)
}

fn last_line(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_error() {
        let log = br#"{"level":"warning","msg":"meh","time":"t"}
{"level":"error","msg":"runc create failed: first","time":"t"}
not json
{"level":"error","msg":"container does not exist","time":"t"}
{"level":"info","msg":"later","time":"t"}
"#;
        assert_eq!(
            last_logged_error(log).as_deref(),
            Some("container does not exist")
        );
        assert_eq!(
            last_logged_error(b"{\"level\":\"info\",\"msg\":\"x\"}"),
            None
        );
    }

    #[test]
    fn stderr_fallback_takes_the_last_line() {
        assert_eq!(
            last_line(b"noise\nruntime failed: boom\n\n").as_deref(),
            Some("runtime failed: boom")
        );
        assert_eq!(last_line(b"  \n"), None);
    }

    #[test]
    fn failure_message_keeps_status_and_words() {
        let e = RuncError::Failed {
            command: "runc create".into(),
            status: 1,
            message: "runc create failed: no rootfs".into(),
        };
        assert_eq!(
            e.to_string(),
            "runc create: exit status 1: runc create failed: no rootfs"
        );
    }

    #[test]
    fn runtime_names() {
        assert!(Runc::valid_binary("runc"));
        assert!(Runc::valid_binary("/usr/sbin/runc"));
        assert!(!Runc::valid_binary("bin/runc"));
        assert!(!Runc::valid_binary(""));
        assert!(!Runc::valid_binary("runc --root /"));
    }
}
