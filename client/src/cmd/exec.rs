//! `supctl exec`: runs another process in a running container, relays its stdio, removes it
//! once it has exited and ends with its exit status.

use std::hash::{BuildHasher, Hasher};

use sup_client::api::{
    DeleteProcessRequest, ExecProcessRequest, ProcessSpec, StartRequest, WaitRequest,
};
use sup_client::Client;

use super::args::{env_list, parse_env};
use super::stdio::{self, Relayed, Signals, StdioOptions};
use super::{report, Context};

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Give the process a terminal
    #[arg(short, long)]
    tty: bool,
    /// Connect our stdin to the process's
    #[arg(short, long)]
    interactive: bool,
    /// Name of the process in the task; generated when not given
    #[arg(long, value_name = "ID")]
    exec_id: Option<String>,
    /// Set an environment variable; KEY alone passes on supctl's own value (repeatable)
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<String>,
    /// Working directory; the container's when not given
    #[arg(short = 'w', long, value_name = "DIR")]
    cwd: Option<String>,
    /// User to run as; the container's when not given
    #[arg(short, long, value_name = "USER")]
    user: Option<String>,
    /// Container whose task to run in
    id: String,
    /// Command and arguments; everything after the id belongs to it
    #[arg(
        value_name = "CMD",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<String>,
}

pub async fn run(ctx: &Context, args: ExecArgs) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let exec_id = args.exec_id.clone().unwrap_or_else(random_exec_id);
    // Caught before the process exists: an interrupt during set-up removes it again.
    let mut signals = Signals::catch()?;
    client.tasks().exec(exec_request(&args, &exec_id)).await?;

    let opts = StdioOptions {
        container_id: args.id.clone(),
        exec_id: exec_id.clone(),
        stdin: args.interactive,
        close_stdin: true,
        tty: args.tty,
    };
    let attached = match stdio::attach(client, opts).await {
        Ok(attached) => attached,
        Err(err) => {
            discard(client, &args.id, &exec_id, false).await;
            return Err(err);
        }
    };
    if let Some(signal) = signals.received() {
        drop(attached);
        discard(client, &args.id, &exec_id, false).await;
        return Err(stdio::interrupted(signal));
    }
    let start = StartRequest {
        container_id: args.id.clone(),
        exec_id: exec_id.clone(),
    };
    if let Err(status) = client.tasks().start(start).await {
        drop(attached);
        discard(client, &args.id, &exec_id, false).await;
        return Err(status.into());
    }
    let relayed = attached.relay(signals).await?;
    if matches!(relayed, Relayed::Exited(_)) {
        discard(client, &args.id, &exec_id, true).await;
    }
    stdio::conclude(&format!("process {exec_id} of {}", args.id), &relayed)
}

fn exec_request(args: &ExecArgs, exec_id: &str) -> ExecProcessRequest {
    ExecProcessRequest {
        container_id: args.id.clone(),
        exec_id: exec_id.to_string(),
        spec: Some(ProcessSpec {
            args: args.command.clone(),
            env: env_list(&args.env),
            cwd: args.cwd.clone().unwrap_or_default(),
            user: args.user.clone().unwrap_or_default(),
            terminal: args.tty,
        }),
        stdin: args.interactive,
    }
}

/// `exec-` and 8 hex digits. std's hasher keys are random per process, which is all the
/// randomness a name that only has to differ from its neighbours needs.
fn random_exec_id() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    format!("exec-{:08x}", hasher.finish() as u32)
}

/// Removes the process from the task. `exited`: it ran and the stream told us it exited; the
/// daemon may record that a moment later, so wait for it first.
async fn discard(client: &Client, id: &str, exec_id: &str, exited: bool) {
    let mut tasks = client.tasks();
    if exited {
        let wait = WaitRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        };
        let _ = tasks.wait(wait).await;
    }
    let request = DeleteProcessRequest {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
    };
    if let Err(status) = tasks.delete_process(request).await {
        if status.code() != tonic::Code::NotFound {
            let context = format!("removing process {exec_id} of {id}");
            report(&anyhow::Error::from(status).context(context));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        exec: ExecArgs,
    }

    fn parse(args: &[&str]) -> Result<ExecArgs, clap::Error> {
        let argv = std::iter::once("exec").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.exec)
    }

    #[test]
    fn request() {
        let args = parse(&[
            "-ti", "-e", "A=1", "--cwd", "/tmp", "-u", "nobody", "t1", "ls", "-l", "-t",
        ])
        .expect("parses");
        let request = exec_request(&args, "e1");
        assert_eq!(request.container_id, "t1");
        assert_eq!(request.exec_id, "e1");
        assert!(request.stdin);
        let spec = request.spec.expect("spec");
        assert_eq!(spec.args, ["ls", "-l", "-t"]);
        assert_eq!(spec.env, ["A=1"]);
        assert_eq!(spec.cwd, "/tmp");
        assert_eq!(spec.user, "nobody");
        assert!(spec.terminal);
    }

    #[test]
    fn command_is_required() {
        assert!(parse(&["t1"]).is_err());
        assert!(parse(&["--exec-id", "x", "t1", "true"]).is_ok());
    }

    #[test]
    fn exec_ids_are_valid_and_differ() {
        let a = random_exec_id();
        let b = random_exec_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), "exec-".len() + 8);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'));
    }
}
