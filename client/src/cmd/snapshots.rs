//! `supctl snapshots`: list, remove and measure the snapshots of a snapshotter.

use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use sup_client::api::{
    ListSnapshotsRequest, RemoveSnapshotRequest, SnapshotInfo, SnapshotKind, UsageRequest,
    UsageResponse,
};
use sup_client::Client;

use super::output::{human_size, labels_json, print_json, print_text, time_json, Format};
use super::output::{OutputArg, Table};
use super::Context;

/// How many Usage calls run at once: each walks a directory tree on the daemon's side.
const USAGE_CONCURRENCY: usize = 4;

#[derive(Debug, clap::Args)]
pub struct SnapshotterArg {
    /// Snapshotter to use (overlayfs, native); the daemon's default when not given
    #[arg(long, value_name = "NAME")]
    pub snapshotter: Option<String>,
}

impl SnapshotterArg {
    fn name(&self) -> String {
        self.snapshotter.clone().unwrap_or_default()
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum SnapshotsCommand {
    /// List snapshots
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        snapshotter: SnapshotterArg,
        /// Only snapshots matching the filter (e.g. kind==committed, parent==KEY);
        /// repeat to match any
        #[arg(long = "filter", value_name = "FILTER")]
        filters: Vec<String>,
        /// Print the keys only
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Remove snapshots
    #[command(visible_alias = "remove", visible_alias = "delete")]
    Rm {
        #[command(flatten)]
        snapshotter: SnapshotterArg,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Disk space and inodes a snapshot uses on its own (every snapshot when no key is given)
    Usage {
        #[command(flatten)]
        snapshotter: SnapshotterArg,
        key: Option<String>,
        #[command(flatten)]
        out: OutputArg,
    },
}

pub async fn run(ctx: &Context, cmd: SnapshotsCommand) -> anyhow::Result<()> {
    match cmd {
        SnapshotsCommand::Ls {
            snapshotter,
            filters,
            quiet,
            out,
        } => {
            let infos = list_all(ctx.client().await?, snapshotter.name(), filters).await?;
            if quiet {
                let keys: String = infos.iter().map(|i| format!("{}\n", i.name)).collect();
                return print_text(&keys);
            }
            print_list(&infos, ctx.format(&out))
        }
        SnapshotsCommand::Rm { snapshotter, keys } => remove(ctx, &snapshotter.name(), &keys).await,
        SnapshotsCommand::Usage {
            snapshotter,
            key,
            out,
        } => usage(ctx, snapshotter.name(), key, ctx.format(&out)).await,
    }
}

/// Every snapshot of the snapshotter matching the filters, in key order.
pub async fn list_all(
    client: &Client,
    snapshotter: String,
    filters: Vec<String>,
) -> anyhow::Result<Vec<SnapshotInfo>> {
    let request = ListSnapshotsRequest {
        snapshotter,
        filters,
    };
    let mut stream = client.snapshots().list(request).await?.into_inner();
    let mut infos = Vec::new();
    while let Some(batch) = stream.message().await? {
        infos.extend(batch.info);
    }
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(infos)
}

pub fn kind_name(kind: i32) -> &'static str {
    match SnapshotKind::try_from(kind) {
        Ok(SnapshotKind::View) => "view",
        Ok(SnapshotKind::Active) => "active",
        Ok(SnapshotKind::Committed) => "committed",
        Ok(SnapshotKind::Unknown) | Err(_) => "unknown",
    }
}

fn print_list(infos: &[SnapshotInfo], format: Format) -> anyhow::Result<()> {
    match format {
        Format::Table => {
            let mut table = Table::new(&["KEY", "PARENT", "KIND"]);
            for info in infos {
                table.row(vec![
                    info.name.clone(),
                    info.parent.clone(),
                    kind_name(info.kind).to_string(),
                ]);
            }
            table.print()
        }
        Format::Json => {
            let items = infos
                .iter()
                .map(|info| {
                    json!({
                        "name": info.name,
                        "parent": info.parent,
                        "kind": kind_name(info.kind),
                        "labels": labels_json(&info.labels),
                        "created_at": time_json(info.created_at.as_ref()),
                        "updated_at": time_json(info.updated_at.as_ref()),
                    })
                })
                .collect();
            print_json(&Value::Array(items))
        }
    }
}

async fn remove(ctx: &Context, snapshotter: &str, keys: &[String]) -> anyhow::Result<()> {
    let client = ctx.client().await?.snapshots();
    super::remove_each(keys, |key| {
        let mut c = client.clone();
        let snapshotter = snapshotter.to_string();
        async move {
            c.remove(RemoveSnapshotRequest { snapshotter, key })
                .await
                .map(|_| ())
        }
    })
    .await
}

async fn usage(
    ctx: &Context,
    snapshotter: String,
    key: Option<String>,
    format: Format,
) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let rows: Vec<(String, Option<UsageResponse>)> = match key {
        Some(key) => {
            let request = UsageRequest {
                snapshotter,
                key: key.clone(),
            };
            let usage = client.snapshots().usage(request).await?.into_inner();
            vec![(key, Some(usage))]
        }
        None => {
            let infos = list_all(client, snapshotter.clone(), Vec::new()).await?;
            futures::stream::iter(infos)
                .map(|info| {
                    let mut snapshots = client.snapshots();
                    let request = UsageRequest {
                        snapshotter: snapshotter.clone(),
                        key: info.name.clone(),
                    };
                    async move {
                        // A snapshot removed since the listing is shown without numbers.
                        let usage = snapshots.usage(request).await.ok();
                        Ok::<_, anyhow::Error>((info.name, usage.map(|r| r.into_inner())))
                    }
                })
                .buffered(USAGE_CONCURRENCY)
                .try_collect()
                .await?
        }
    };
    match format {
        Format::Table => {
            let mut table = Table::new(&["KEY", "SIZE", "INODES"]);
            for (key, usage) in &rows {
                let (size, inodes) = match usage {
                    Some(u) => (human_size(u.size), u.inodes.to_string()),
                    None => ("-".to_string(), "-".to_string()),
                };
                table.row(vec![key.clone(), size, inodes]);
            }
            table.print()
        }
        Format::Json => {
            let items = rows
                .iter()
                .map(|(key, usage)| {
                    json!({
                        "name": key,
                        "size": usage.as_ref().map(|u| u.size),
                        "inodes": usage.as_ref().map(|u| u.inodes),
                    })
                })
                .collect();
            print_json(&Value::Array(items))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(kind_name(SnapshotKind::Committed as i32), "committed");
        assert_eq!(kind_name(SnapshotKind::View as i32), "view");
        assert_eq!(kind_name(42), "unknown");
    }
}
