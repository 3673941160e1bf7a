//! The supctl command tree: global flags, the context every command group runs with, and the
//! rules for turning failures (daemon statuses above all) into one readable line.
//!
//! Adding a command group: a module with a `#[derive(Subcommand)]` enum and an
//! `async fn run(ctx: &Context, cmd) -> anyhow::Result<()>`, one variant in [`Command`], and a
//! `#[command(flatten)] out: OutputArg` in every leaf that prints objects.

pub mod args;
mod attach;
mod containers;
mod events;
mod exec;
mod images;
mod leases;
mod logs;
mod namespaces;
pub mod output;
pub mod progress;
mod run;
mod snapshots;
pub mod stdio;
mod tasks;
mod version;

use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use sup_client::{Client, ConnectError};
use tokio::sync::OnceCell;

use output::{Format, OutputArg};

/// Command-line client of supd, the sup container supervisor.
#[derive(Debug, Parser)]
#[command(name = "supctl", version, propagate_version = true)]
pub struct Cli {
    /// supd's API socket (or unix://PATH, or http://HOST:PORT)
    #[arg(
        long,
        env = "SUP_ADDRESS",
        default_value = sup_client::DEFAULT_ADDRESS,
        global = true,
        value_name = "PATH"
    )]
    pub address: String,

    /// Namespace to act in
    #[arg(
        short = 'n',
        long,
        env = "SUP_NAMESPACE",
        default_value = sup_client::DEFAULT_NAMESPACE,
        global = true,
        value_name = "NS"
    )]
    pub namespace: String,

    // Not `global`: `images export -o FILE` gives `-o` another meaning, so each printing
    // command takes its own `-o/--output` (see `OutputArg`) and this one is the fallback.
    /// Output format
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the versions of supctl and supd
    Version(version::VersionArgs),
    /// Import, export, list, inspect, remove and mount images
    #[command(subcommand, visible_alias = "image", visible_alias = "i")]
    Images(images::ImagesCommand),
    /// List, remove and measure snapshots
    #[command(subcommand, visible_alias = "snapshot")]
    Snapshots(snapshots::SnapshotsCommand),
    /// List, create and remove namespaces
    #[command(
        subcommand,
        name = "ns",
        visible_alias = "namespaces",
        alias = "namespace"
    )]
    Namespaces(namespaces::NamespacesCommand),
    /// List, inspect and remove containers
    #[command(subcommand, visible_alias = "container", visible_alias = "c")]
    Containers(containers::ContainersCommand),
    /// List, start, signal, wait for, pause, measure and remove tasks
    #[command(subcommand, visible_alias = "task", visible_alias = "t")]
    Tasks(tasks::TasksCommand),
    /// Create a container from an image and run it
    Run(run::RunArgs),
    /// Run another process in a running container
    Exec(exec::ExecArgs),
    /// Print a container's logged output
    Logs(logs::LogsArgs),
    /// Connect to a running container's stdio (with a terminal, Ctrl-P Ctrl-Q detaches)
    Attach(attach::AttachArgs),
    /// Print the daemon's events as they happen
    Events(events::EventsArgs),
    /// List, create and remove leases (they protect work from garbage collection)
    #[command(subcommand, visible_alias = "lease")]
    Leases(leases::LeasesCommand),
    /// Collect garbage now: content, blobs and layer snapshots nothing uses
    Gc(leases::GcArgs),
}

/// Removes each named object with `delete`, printing each name removed and reporting each
/// failure; fails (exit 1) at the end if any did, so one bad name does not stop the rest.
pub async fn remove_each<F, Fut>(names: &[String], mut delete: F) -> anyhow::Result<()>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut failed = false;
    for name in names {
        match delete(name.clone()).await {
            Ok(()) => output::print_text(&format!("{name}\n"))?,
            Err(status) => {
                failed = true;
                report(&status.into());
            }
        }
    }
    if failed {
        return Err(Exit(1).into());
    }
    Ok(())
}

/// Runs the command the user asked for.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Context::new(cli.address, cli.namespace, cli.output);
    match cli.command {
        Command::Version(args) => version::run(&ctx, args).await,
        Command::Images(cmd) => images::run(&ctx, cmd).await,
        Command::Snapshots(cmd) => snapshots::run(&ctx, cmd).await,
        Command::Namespaces(cmd) => namespaces::run(&ctx, cmd).await,
        Command::Containers(cmd) => containers::run(&ctx, cmd).await,
        Command::Tasks(cmd) => tasks::run(&ctx, cmd).await,
        Command::Run(args) => run::run(&ctx, args).await,
        Command::Exec(args) => exec::run(&ctx, args).await,
        Command::Logs(args) => logs::run(&ctx, args).await,
        Command::Attach(args) => attach::run(&ctx, args).await,
        Command::Events(args) => events::run(&ctx, args).await,
        Command::Leases(cmd) => leases::run(&ctx, cmd).await,
        Command::Gc(args) => leases::gc(&ctx, args).await,
    }
}

/// What every command needs: the connection (made on first use, so that argument errors are
/// reported without a daemon and `version` can still print the client's half), the namespace
/// and the output mode.
pub struct Context {
    address: String,
    namespace: String,
    format: Format,
    client: OnceCell<Client>,
}

impl Context {
    pub fn new(address: String, namespace: String, format: Format) -> Context {
        Context {
            address,
            namespace,
            format,
            client: OnceCell::new(),
        }
    }

    /// The connection to supd, scoped to the selected namespace.
    pub async fn client(&self) -> anyhow::Result<&Client> {
        self.client
            .get_or_try_init(|| async {
                let client = Client::connect(&self.address)
                    .await
                    .map_err(|err| connect_error(&self.address, err))?;
                client
                    .with_namespace(&self.namespace)
                    .map_err(|err| connect_error(&self.address, err))
            })
            .await
    }

    /// The format asked for on the command itself, else the one given before it.
    pub fn format(&self, out: &OutputArg) -> Format {
        out.output.unwrap_or(self.format)
    }

    /// Progress bars are for a person watching: only when stderr is a terminal.
    pub fn show_progress(&self) -> bool {
        std::io::stderr().is_terminal()
    }
}

/// A failure already reported to the user: exit with this code and print nothing more.
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
pub struct Exit(pub u8);

fn connect_error(address: &str, err: ConnectError) -> anyhow::Error {
    match err {
        ConnectError::Namespace(ns) => anyhow::anyhow!("invalid namespace {ns:?}"),
        ConnectError::Transport { source, .. } => anyhow::anyhow!(
            "cannot connect to supd at {address}: {}",
            root_cause(&source)
        ),
    }
}

/// The innermost error: the transport's own wrappers ("transport error", "client error")
/// say nothing a user can act on, the OS error underneath does.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The text of a daemon status: its message, which names the object and the problem. A
/// status made on this side (the connection dropped) gets its cause appended.
pub fn status_message(status: &tonic::Status) -> String {
    let message = status.message().trim();
    let mut text = if message.is_empty() {
        status.code().description().to_string()
    } else {
        message.to_string()
    };
    // Only statuses made on this side carry a source: the transport failed, not supd.
    if let Some(source) = std::error::Error::source(status) {
        let cause = root_cause(source);
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
        text = format!("lost the connection to supd: {text}");
    }
    printable(&text)
}

/// Escapes control characters, so that a message quoting hostile input (a name, bytes of a
/// bad archive) cannot move the cursor or recolour the user's terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// One line for an error chain, with any daemon status shown by its message, never as a
/// debug dump.
pub fn describe(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            parts.push(status_message(status));
            break;
        }
        let text = cause.to_string();
        // Some errors repeat their source in their own text; say it once.
        if parts.last().is_some_and(|last| last.ends_with(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Reports a failure of one item of a multi-item command (`rm A B C`) and lets it go on.
pub fn report(err: &anyhow::Error) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "supctl: {}", describe(err));
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn status_shows_message_only() {
        let status = tonic::Status::not_found("image \"x\" in namespace \"default\": not found");
        let err = anyhow::Error::from(status);
        assert_eq!(
            describe(&err),
            "image \"x\" in namespace \"default\": not found"
        );
    }

    #[test]
    fn status_inside_context_keeps_context() {
        let status = tonic::Status::invalid_argument("bad reference");
        let err = anyhow::Error::from(status).context("importing a.tar");
        assert_eq!(describe(&err), "importing a.tar: bad reference");
    }

    #[test]
    fn control_characters_are_escaped() {
        let status = tonic::Status::invalid_argument("bad\nname \"\u{1b}[31mred\"");
        let err = anyhow::Error::from(status);
        assert_eq!(describe(&err), "bad\\nname \"\\u{1b}[31mred\"");
    }

    #[test]
    fn empty_status_message_uses_code() {
        let err = anyhow::Error::from(tonic::Status::unavailable(""));
        assert_eq!(describe(&err), "The service is currently unavailable");
    }

    #[test]
    fn global_output_and_export_file_coexist() {
        let cli = Cli::try_parse_from(["supctl", "-o", "json", "images", "export", "a", "-o", "f"]);
        assert!(cli.is_ok());
        let cli = Cli::try_parse_from(["supctl", "images", "ls", "-o", "json", "-n", "k8s.io"]);
        let cli = cli.expect("parses");
        assert_eq!(cli.namespace, "k8s.io");
    }
}
