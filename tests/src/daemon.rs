//! A real supd for one test: its own temporary directory (root, state, socket, log), readiness
//! checked with a Version call, and a Drop that stops it by PID, unmounts what it left and
//! removes the directory, printing its log when the test failed.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sup_client::Client;

/// How long supd gets to serve its first Version call.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long supd gets to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a supctl run may take.
pub const SUPCTL_TIMEOUT: Duration = Duration::from_secs(120);
/// supd's log filter unless SUP_LOG says otherwise: its own debug lines, not the transport's.
const DEFAULT_LOG: &str =
    "debug,sled=info,h2=info,hyper=info,hyper_util=info,tower=info,tonic=info";
/// How much of the log is printed when a test fails.
const LOG_TAIL: usize = 48 * 1024;

pub struct Daemon {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    config: Option<PathBuf>,
    child: Option<Child>,
}

impl Daemon {
    /// Starts supd in a fresh directory and waits until it answers.
    pub async fn start() -> Daemon {
        Self::start_with_config(None).await
    }

    /// Starts supd with `config` (TOML) written to a file in its directory.
    pub async fn start_with_config(config: Option<&str>) -> Daemon {
        // Under /tmp with a short prefix: the socket path must stay under ~108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("sup")
            .tempdir_in("/tmp")
            .expect("temporary directory for supd");
        let path = dir.path().to_path_buf();
        let config = config.map(|text| {
            let file = path.join("supd.toml");
            std::fs::write(&file, text).expect("write supd config");
            file
        });
        let mut daemon = Daemon {
            dir: Some(dir),
            path,
            config,
            child: None,
        };
        daemon.launch().await;
        daemon
    }

    /// The test's own directory: root, state, socket and log live here, and so can the
    /// test's scratch files and sentinels (outside `root()`).
    pub fn dir(&self) -> &Path {
        &self.path
    }

    pub fn root(&self) -> PathBuf {
        self.path.join("root")
    }

    pub fn state(&self) -> PathBuf {
        self.path.join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.path.join("sup.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.path.join("supd.log")
    }

    /// Everything supd has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The argument list supd is started with.
    pub fn args(&self) -> Vec<PathBuf> {
        let mut args: Vec<PathBuf> = vec![
            "--root".into(),
            self.root(),
            "--state".into(),
            self.state(),
            "--address".into(),
            self.socket(),
        ];
        if let Some(config) = &self.config {
            args.push("--config".into());
            args.push(config.clone());
        }
        args
    }

    fn spawn(&self) -> Child {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open supd log");
        let mut cmd = Command::new(crate::bins::supd());
        cmd.args(self.args())
            .env(
                "SUP_LOG",
                std::env::var("SUP_LOG").unwrap_or_else(|_| DEFAULT_LOG.into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);
        crate::sys::kill_with_parent(&mut cmd);
        cmd.spawn().expect("spawn supd")
    }

    async fn launch(&mut self) {
        self.child = Some(self.spawn());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "supd exited with {status} before serving; its log:\n{}",
                    self.log()
                );
            }
            if self.socket().exists() {
                let ready = tokio::time::timeout(Duration::from_secs(2), async {
                    let client = Client::connect(&self.address()).await.ok()?;
                    client.version().version(()).await.ok()
                })
                .await;
                if let Ok(Some(_)) = ready {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "supd did not answer Version on {} within {READY_TIMEOUT:?}; its log:\n{}",
                    self.socket().display(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The API address, as given to `--address`.
    pub fn address(&self) -> String {
        self.socket().to_string_lossy().into_owned()
    }

    /// A client in namespace "default".
    pub async fn client(&self) -> Client {
        Client::connect(&self.address())
            .await
            .unwrap_or_else(|e| panic!("connect to supd: {e}\nits log:\n{}", self.log()))
    }

    /// A client in namespace `ns`.
    pub async fn client_ns(&self, ns: &str) -> Client {
        self.client().await.with_namespace(ns).expect("namespace")
    }

    /// Runs `supctl --address SOCK ARGS...`.
    pub fn supctl<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let mut cmd = Command::new(crate::bins::supctl());
        cmd.arg("--address").arg(self.socket()).args(args);
        output_within(cmd, SUPCTL_TIMEOUT)
    }

    /// Sends SIGTERM and waits for the exit; kills it if it does not stop in time.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.child.take().map(terminate)
    }

    /// Starts supd again after [`Daemon::stop`], on the same root and state.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "supd is still running");
        self.launch().await;
    }

    /// Stops supd (SIGTERM) and starts it again on the same root and state.
    pub async fn restart(&mut self) -> Option<ExitStatus> {
        let status = self.stop();
        self.launch().await;
        status
    }
}

/// SIGTERM, then SIGKILL once STOP_TIMEOUT has passed; reaps the child.
fn terminate(mut child: Child) -> ExitStatus {
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(pid, Signal::SIGKILL);
    child.wait().expect("reap supd")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let status = self.child.take().map(terminate);
        let unmounted = crate::mounts::unmount_all_under(&self.path);
        if std::thread::panicking() {
            let log = self.log();
            let tail = &log[floor_char_boundary(&log, log.len().saturating_sub(LOG_TAIL))..];
            eprintln!(
                "---- supd log ({}, exit: {status:?}) ----\n{tail}\n---- end of supd log ----",
                self.log_path().display()
            );
            if !unmounted.is_empty() {
                eprintln!("unmounted leftovers: {unmounted:?}");
            }
        }
        if let Some(dir) = self.dir.take() {
            if let Err(e) = dir.close() {
                eprintln!("removing {}: {e}", self.path.display());
            }
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Runs `cmd` to completion with captured output; kills it and panics after `timeout`.
pub fn output_within(cmd: Command, timeout: Duration) -> Output {
    run_within(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd` to completion with captured output, or kills it after `timeout`.
pub fn run_within(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().map_err(|e| format!("{shown}: {e}"))?;
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .map(|r| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    })
    .collect();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{shown} did not finish within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut outs = readers.into_iter().map(|h| h.join().unwrap_or_default());
    Ok(Output {
        status,
        stdout: outs.next().unwrap_or_default(),
        stderr: outs.next().unwrap_or_default(),
    })
}

/// Runs supd with `args` and returns its exit status and output, or None (after killing it)
/// when it is still running after `timeout`.
pub fn run_supd<S: AsRef<OsStr>>(args: &[S], timeout: Duration) -> Option<Output> {
    let mut cmd = Command::new(crate::bins::supd());
    cmd.args(args);
    crate::sys::kill_with_parent(&mut cmd);
    run_within(cmd, timeout).ok()
}
