//! The shim's life after detaching: set the process up (task dir, stdio, subreaper, socket)
//! while it is still single-threaded, then serve the shim API on a current-thread runtime
//! until Shutdown.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::stat::{umask, Mode};
use sup_proto::shim::shim_server::ShimServer;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::UnixListenerStream;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::detach::Readiness;
use crate::oom::OomMonitor;
use crate::options::Options;
use crate::process::{Container, Context};
use crate::reaper::Reaper;
use crate::service::ShimService;
use crate::sys::ignore_sigpipe;

/// How long in-flight calls get to finish once Shutdown has answered.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Events buffered for a subscriber that is slow to read them.
const EVENT_BUFFER: usize = 64;

#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SetupError {
    let what = what.into();
    move |source| SetupError::Io { what, source }
}

fn nix_err(what: &str) -> impl FnOnce(nix::Error) -> SetupError + '_ {
    move |e| SetupError::Io {
        what: what.to_string(),
        source: e.into(),
    }
}

/// Runs the detached shim to its end.
pub fn run(options: Options, readiness: Readiness) -> ExitCode {
    let listener = match prepare(&options) {
        Ok(l) => l,
        Err(e) => {
            readiness.failed(&e.to_string());
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            readiness.failed(&format!("starting the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(serve(&options, listener, readiness));
    let _ = std::fs::remove_file(&options.socket);
    let _ = std::fs::remove_file(options.task_dir.join("shim.pid"));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "the shim failed");
            ExitCode::FAILURE
        }
    }
}

/// Everything that must happen before a thread exists.
fn prepare(options: &Options) -> Result<StdUnixListener, SetupError> {
    options.validate().map_err(SetupError::Invalid)?;
    let dir = &options.task_dir;
    std::env::set_current_dir(dir).map_err(io_err(format!("entering {}", dir.display())))?;

    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(io_err("opening /dev/null"))?;
    let log_path = dir.join("shim.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err(format!("opening {}", log_path.display())))?;
    // supd reads the launcher's stdout and stderr to their end: the shim must not hold them.
    rustix::stdio::dup2_stdin(&null).map_err(|e| io_err("redirecting stdin")(e.into()))?;
    rustix::stdio::dup2_stdout(&null).map_err(|e| io_err("redirecting stdout")(e.into()))?;
    rustix::stdio::dup2_stderr(&log).map_err(|e| io_err("redirecting stderr")(e.into()))?;

    nix::sys::prctl::set_child_subreaper(true).map_err(nix_err("becoming a child subreaper"))?;
    ignore_sigpipe().map_err(nix_err("ignoring SIGPIPE"))?;

    // --debug is about the shim's own doings, not the HTTP/2 frames under them.
    let ours = if options.debug {
        LevelFilter::DEBUG
    } else {
        LevelFilter::INFO
    };
    let filter = Targets::new()
        .with_default(LevelFilter::WARN)
        .with_target("sup_shim", ours);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::io::stderr),
        )
        .with(filter)
        .init();

    let listener = bind(&options.socket)?;
    std::fs::write(dir.join("shim.pid"), std::process::id().to_string())
        .map_err(io_err("writing shim.pid"))?;
    Ok(listener)
}

/// Binds the socket, mode 0600 from the start (the umask is process-wide, which is safe only
/// while single-threaded).
fn bind(path: &Path) -> Result<StdUnixListener, SetupError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(io_err(format!("creating {}", parent.display())))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SetupError::Invalid(format!(
                "socket {} is in use by a live shim",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(io_err(format!(
            "removing the stale socket {}",
            path.display()
        )))?;
    }
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = StdUnixListener::bind(path);
    umask(old);
    let listener = bound.map_err(io_err(format!("binding {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("setting the mode of {}", path.display())))?;
    listener
        .set_nonblocking(true)
        .map_err(io_err("setting the socket non-blocking"))?;
    Ok(listener)
}

async fn serve(
    options: &Options,
    listener: StdUnixListener,
    readiness: Readiness,
) -> Result<(), String> {
    // The SIGCHLD handler must exist before the first child does.
    let sigchld = match signal(SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("handling SIGCHLD: {e}");
            readiness.failed(&msg);
            return Err(msg);
        }
    };
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            let msg = format!("registering the socket: {e}");
            readiness.failed(&msg);
            return Err(msg);
        }
    };
    let reaper = Reaper::new();
    tokio::spawn(reaper.clone().run(sigchld));

    let ctx = Arc::new(Context {
        namespace: options.namespace.clone(),
        id: options.id.clone(),
        task_dir: options.task_dir.clone(),
        runtime_root: options.runtime_root(),
        log_max_size: options.log_max_size,
        log_max_files: options.log_max_files,
        reaper,
        events: broadcast::channel(EVENT_BUFFER).0,
        oom: OomMonitor::default(),
    });
    let container = Arc::new(Container::new(ctx));
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let service = ShimService::new(container.clone(), shutdown_tx);

    tracing::info!(
        namespace = %options.namespace,
        id = %options.id,
        socket = %options.socket.display(),
        pid = std::process::id(),
        "shim serving"
    );
    readiness.ready();

    let mut stop = shutdown_rx.clone();
    let server = tonic::transport::Server::builder()
        .add_service(ShimServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            let _ = stop.wait_for(|s| *s).await;
        });
    let grace = async {
        let _ = shutdown_rx.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let result = tokio::select! {
        r = server => r.map_err(|e| format!("serving: {e}")),
        _ = grace => Ok(()),
    };
    container.stop_watchers();
    tracing::info!("shim exiting");
    result
}
