//! `supctl attach`: connects to a running process's stdio (with a raw terminal when the
//! process has one) until it exits, and ends with its exit status.

use sup_client::api::{GetTaskRequest, TaskStatus};

use super::stdio::{self, Signals, StdioOptions};
use super::Context;

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// Attach to an exec'd process instead of the container's init
    #[arg(long, value_name = "ID")]
    exec_id: Option<String>,
    /// Do not connect our stdin (only watch the output)
    #[arg(long)]
    no_stdin: bool,
    /// Close the process's stdin when ours ends (so that `cat` and the like finish)
    #[arg(long, conflicts_with = "no_stdin")]
    close_stdin: bool,
    /// Container to attach to
    id: String,
}

pub async fn run(ctx: &Context, args: AttachArgs) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let exec_id = args.exec_id.unwrap_or_default();
    let process = client
        .tasks()
        .get(GetTaskRequest {
            container_id: args.id.clone(),
            exec_id: exec_id.clone(),
        })
        .await?
        .into_inner()
        .process
        .ok_or_else(|| anyhow::anyhow!("supd sent no process for {}", args.id))?;
    let name = if exec_id.is_empty() {
        format!("container {}", args.id)
    } else {
        format!("process {exec_id} of {}", args.id)
    };
    if process.status == TaskStatus::Created as i32 {
        anyhow::bail!("{name} has not started (supctl tasks start {})", args.id);
    }
    let opts = StdioOptions {
        container_id: args.id.clone(),
        exec_id,
        stdin: !args.no_stdin,
        close_stdin: args.close_stdin,
        tty: process.terminal,
    };
    let signals = Signals::catch()?;
    let relayed = stdio::attach(client, opts).await?.relay(signals).await?;
    stdio::conclude(&name, &relayed)
}
