//! `supctl version`: the client's version and the daemon's.

use serde_json::json;

use super::output::{print_json, print_text, Format, OutputArg};
use super::Context;

#[derive(Debug, clap::Args)]
pub struct VersionArgs {
    #[command(flatten)]
    out: OutputArg,
}

const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

pub async fn run(ctx: &Context, args: VersionArgs) -> anyhow::Result<()> {
    let format = ctx.format(&args.out);
    if format == Format::Table {
        // The client's half is worth showing even when the daemon cannot be reached.
        print_text(&format!("Client:\n  Version:   {CLIENT_VERSION}\n"))?;
    }
    let server = ctx
        .client()
        .await?
        .version()
        .version(())
        .await?
        .into_inner();
    match format {
        Format::Table => {
            let mut text = format!("Server:\n  Version:   {}\n", server.version);
            if !server.revision.is_empty() {
                text.push_str(&format!("  Revision:  {}\n", server.revision));
            }
            if !server.api_versions.is_empty() {
                text.push_str(&format!(
                    "  API:       {}\n",
                    server.api_versions.join(", ")
                ));
            }
            print_text(&text)
        }
        Format::Json => print_json(&json!({
            "client": { "version": CLIENT_VERSION },
            "server": {
                "version": server.version,
                "revision": server.revision,
                "api_versions": server.api_versions,
            },
        })),
    }
}
