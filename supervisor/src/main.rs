//! supd: the sup daemon. Parses flags, sets up logging, and runs the server until SIGTERM or
//! SIGINT.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

use sup_supervisor::config::Config;
use sup_supervisor::{daemon, server};

#[derive(Parser, Debug)]
#[command(name = "supd", version, about = "The sup container supervisor daemon")]
struct Flags {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Persistent data directory [default: /var/lib/sup].
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Runtime state directory [default: /run/sup].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Unix socket to serve the API on [default: /run/sup/sup.sock].
    #[arg(long, value_name = "PATH")]
    address: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Log filter, e.g. "debug" (also SUP_LOG).
    #[arg(long, value_name = "FILTER", env = "SUP_LOG")]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let mut cfg = match &flags.config {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("supd: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    if let Some(r) = flags.root {
        cfg.root = r;
    }
    if let Some(s) = flags.state {
        cfg.state = s;
    }
    if let Some(a) = flags.address {
        cfg.address = a;
    }
    if let Some(f) = flags.log_format {
        cfg.log.format = f;
    }
    if let Some(l) = flags.log_level {
        cfg.log.level = l;
    }
    if let Err(e) = init_logging(&cfg) {
        eprintln!("supd: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("supd")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("supd: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "supd failed");
            eprintln!("supd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cfg: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&cfg.log.level)
        .map_err(|e| anyhow::anyhow!("log level {:?}: {e}", cfg.log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cfg.log.format.as_str() {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => anyhow::bail!("log format {other:?}: must be text or json"),
    }
    Ok(())
}

/// How long calls in flight may take to finish once a stop is asked.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

async fn run(cfg: Config) -> anyhow::Result<()> {
    let _lock = daemon::prepare(&cfg)?;
    let services = Arc::new(daemon::open_services(&cfg)?);
    if let Err(e) = daemon::clear_scratch(&cfg.state) {
        tracing::warn!(error = %e, "cannot clear the scratch directory");
    }
    let (reconnected, cleaned) = services.recover_tasks().await;
    if reconnected + cleaned > 0 {
        tracing::info!(reconnected, cleaned, "tasks recovered");
    }
    // What a crash left half-made is garbage now: nothing can be working on it, and no
    // grace either: multi-step client work survives a restart only under a lease.
    match services.gc(std::time::Duration::ZERO).await {
        Ok(stats) => tracing::debug!(?stats, "start-up collection"),
        Err(e) => tracing::warn!(error = %e, "start-up garbage collection failed"),
    }
    if cfg.gc.interval_seconds > 0 {
        services.gc_background(
            std::time::Duration::from_secs(cfg.gc.interval_seconds),
            std::time::Duration::from_secs(cfg.gc.grace_seconds),
        );
    }
    let listener = daemon::bind(&cfg.address)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        root = %cfg.root.display(),
        state = %cfg.state.display(),
        address = %cfg.address.display(),
        snapshotters = ?services.snapshotters.keys().collect::<Vec<_>>(),
        "supd serving"
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(server::serve_with(
        services.clone(),
        cfg.cri.clone(),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let result = tokio::select! {
        r = &mut server => Some(r),
        _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); None }
        _ = int.recv() => { tracing::info!("SIGINT: shutting down"); None }
    };
    let result = match result {
        Some(r) => r,
        None => {
            // Streams that never end on their own (event subscriptions) are closed; calls
            // still running get a bounded time to finish.
            services.events.close();
            let _ = stop.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("calls still running after the grace period; stopping anyway");
                    server.abort();
                    Ok(Ok(()))
                }
            }
        }
    };
    let _ = std::fs::remove_file(&cfg.address);
    services.store.flush().await?;
    result??;
    tracing::info!("supd stopped");
    Ok(())
}
