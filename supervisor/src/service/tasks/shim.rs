//! Starting and reaching shims: the spawn handshake, the connection over the shim's socket,
//! and stopping a shim that must go.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use sup_proto::shim::shim_client::ShimClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{Error, Result};

pub type Shim = ShimClient<Channel>;

/// How long a shim may take to come up or answer a connection.
const SHIM_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The shim binary: beside supd's own binary, else looked up in PATH.
pub fn shim_binary() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let p = dir.join("sup-shim");
            if p.exists() {
                return p;
            }
        }
    }
    PathBuf::from("sup-shim")
}

/// A short socket path under the state dir, bounded whatever the namespace and id.
pub fn socket_path(state: &Path, ns: &str, id: &str) -> PathBuf {
    let d = crate::content::digest::of_bytes(format!("{ns}/{id}").as_bytes());
    state
        .join("s")
        .join(format!("{}.sock", &d["sha256:".len()..][..16]))
}

/// Starts a shim for a task and waits for its readiness line. The process started here
/// exits once the real shim (its grandchild, detached) is serving, so supd is never the
/// shim's parent.
pub async fn spawn(
    ns: &str,
    id: &str,
    task_dir: &Path,
    socket: &Path,
    runtime_root: &Path,
) -> Result<()> {
    let bin = shim_binary();
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("--namespace")
        .arg(ns)
        .arg("--id")
        .arg(id)
        .arg("--task-dir")
        .arg(task_dir)
        .arg("--socket")
        .arg(socket)
        .arg("--runtime-root")
        .arg(runtime_root)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("starting shim {}", bin.display()), e))?;
    let out = tokio::time::timeout(SHIM_START_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| Error::Unavailable(format!("shim for {id:?} did not start in time")))?
        .map_err(|e| Error::io("waiting for the shim to start", e))?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && line == "ready" {
        return Ok(());
    }
    let why = if let Some(msg) = line.strip_prefix("error: ") {
        msg.to_string()
    } else {
        format!("{} {}", line, String::from_utf8_lossy(&out.stderr).trim())
    };
    Err(Error::internal(format!(
        "shim for {id:?} failed to start: {}",
        why.trim()
    )))
}

/// Connects to a shim's socket.
pub async fn connect(socket: &Path) -> Result<Shim> {
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://shim.local")
        .connect_timeout(SHIM_START_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }
        }))
        .await
        .map_err(|e| {
            Error::Unavailable(format!("connecting to shim at {}: {e}", socket.display()))
        })?;
    Ok(ShimClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// A shim error as ours: its status code maps to our kind, its message is kept.
pub fn from_status(what: &str, s: tonic::Status) -> Error {
    let msg = format!("{what}: {}", s.message());
    match s.code() {
        tonic::Code::NotFound => Error::NotFound(msg),
        tonic::Code::AlreadyExists => Error::AlreadyExists(msg),
        tonic::Code::InvalidArgument => Error::InvalidArgument(msg),
        tonic::Code::FailedPrecondition => Error::FailedPrecondition(msg),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            Error::Unavailable(msg)
        }
        _ => Error::Internal(msg),
    }
}

impl super::TaskStatus {
    /// A status as the shim's protocol numbers it (sup.v1's TaskStatus).
    pub fn from_shim(code: i32) -> Self {
        use super::TaskStatus as S;
        use sup_proto::v1::TaskStatus as Wire;
        match Wire::try_from(code) {
            Ok(Wire::Created) => S::Created,
            Ok(Wire::Running) => S::Running,
            Ok(Wire::Stopped) => S::Stopped,
            Ok(Wire::Paused) => S::Paused,
            Ok(Wire::Pausing) => S::Pausing,
            Ok(Wire::Unknown) | Err(_) => S::Unknown,
        }
    }
}
