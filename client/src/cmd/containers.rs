//! `supctl containers`: list, inspect and remove container records.

use chrono::Utc;
use serde_json::{json, Map, Value};
use sup_client::api::{
    Container, DeleteContainerRequest, GetContainerRequest, ListContainersRequest,
};

use super::output::{labels_json, print_json, print_text, relative_time, time_json, Format};
use super::output::{OutputArg, Table};
use super::Context;

#[derive(Debug, clap::Subcommand)]
pub enum ContainersCommand {
    /// List containers
    #[command(visible_alias = "list")]
    Ls {
        /// Only containers matching the filter (e.g. image~=busybox, labels.app==web);
        /// repeat to match any
        #[arg(long = "filter", value_name = "FILTER")]
        filters: Vec<String>,
        /// Print the ids only
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Show a container's record, with its OCI spec, as JSON
    #[command(visible_alias = "info")]
    Inspect { id: String },
    /// Remove containers that have no task
    #[command(visible_alias = "remove", visible_alias = "delete")]
    Rm {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
        /// Keep the container's root filesystem snapshot
        #[arg(long)]
        keep_snapshot: bool,
    },
}

pub async fn run(ctx: &Context, cmd: ContainersCommand) -> anyhow::Result<()> {
    match cmd {
        ContainersCommand::Ls {
            filters,
            quiet,
            out,
        } => list(ctx, filters, quiet, ctx.format(&out)).await,
        ContainersCommand::Inspect { id } => inspect(ctx, id).await,
        ContainersCommand::Rm { ids, keep_snapshot } => remove(ctx, &ids, keep_snapshot).await,
    }
}

async fn list(
    ctx: &Context,
    filters: Vec<String>,
    quiet: bool,
    format: Format,
) -> anyhow::Result<()> {
    let mut containers = ctx
        .client()
        .await?
        .containers()
        .list(ListContainersRequest { filters })
        .await?
        .into_inner()
        .containers;
    containers.sort_by(|a, b| a.id.cmp(&b.id));
    if quiet {
        let ids: String = containers.iter().map(|c| format!("{}\n", c.id)).collect();
        return print_text(&ids);
    }
    match format {
        Format::Table => print_text(&table(&containers, Utc::now())),
        Format::Json => print_json(&Value::Array(
            containers.iter().map(container_json).collect(),
        )),
    }
}

fn table(containers: &[Container], now: chrono::DateTime<Utc>) -> String {
    let mut table = Table::new(&["ID", "IMAGE", "RUNTIME", "CREATED"]);
    for c in containers {
        let runtime = c
            .runtime
            .as_ref()
            .map(|r| r.name.as_str())
            .filter(|name| !name.is_empty())
            .unwrap_or("-");
        table.row(vec![
            c.id.clone(),
            if c.image.is_empty() {
                "-".to_string()
            } else {
                c.image.clone()
            },
            runtime.to_string(),
            relative_time(c.created_at.as_ref(), now),
        ]);
    }
    table.render()
}

async fn inspect(ctx: &Context, id: String) -> anyhow::Result<()> {
    let container = ctx
        .client()
        .await?
        .containers()
        .get(GetContainerRequest { id: id.clone() })
        .await?
        .into_inner()
        .container
        .ok_or_else(|| anyhow::anyhow!("supd sent no record for container {id}"))?;
    print_json(&container_json(&container))
}

/// Bytes that hold JSON as that JSON, anything else as text; null when empty.
fn embedded_json(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

pub fn container_json(c: &Container) -> Value {
    let runtime = c.runtime.as_ref().map_or(
        Value::Null,
        |r| json!({ "name": r.name, "options": labels_json(&r.options) }),
    );
    let extensions: Map<String, Value> = c
        .extensions
        .iter()
        .map(|(key, bytes)| (key.clone(), embedded_json(bytes)))
        .collect();
    json!({
        "id": c.id,
        "image": c.image,
        "runtime": runtime,
        "snapshotter": c.snapshotter,
        "snapshot_key": c.snapshot_key,
        "labels": labels_json(&c.labels),
        "created_at": time_json(c.created_at.as_ref()),
        "updated_at": time_json(c.updated_at.as_ref()),
        "spec": embedded_json(&c.spec),
        "extensions": Value::Object(extensions),
    })
}

async fn remove(ctx: &Context, ids: &[String], keep_snapshot: bool) -> anyhow::Result<()> {
    let client = ctx.client().await?.containers();
    super::remove_each(ids, |id| {
        let mut c = client.clone();
        async move {
            c.delete(DeleteContainerRequest { id, keep_snapshot })
                .await
                .map(|_| ())
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sup_client::api::ContainerRuntime;

    fn sample() -> Container {
        Container {
            id: "web".into(),
            image: "docker.io/library/busybox:latest".into(),
            runtime: Some(ContainerRuntime {
                name: "runc".into(),
                options: Default::default(),
            }),
            spec: br#"{"ociVersion":"1.0.2","process":{"args":["sh"]}}"#.to_vec(),
            snapshotter: "overlayfs".into(),
            snapshot_key: "web".into(),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 - 120,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn json_decodes_the_spec() {
        let value = container_json(&sample());
        assert_eq!(value["spec"]["process"]["args"][0], "sh");
        assert_eq!(value["runtime"]["name"], "runc");
        assert_eq!(value["snapshot_key"], "web");
        let mut odd = sample();
        odd.spec = b"not json".to_vec();
        assert_eq!(container_json(&odd)["spec"], "not json");
        odd.spec.clear();
        odd.runtime = None;
        assert_eq!(container_json(&odd)["spec"], Value::Null);
        assert_eq!(container_json(&odd)["runtime"], Value::Null);
    }

    #[test]
    fn table_rows() {
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("valid");
        let mut bare = sample();
        bare.id = "x".into();
        bare.runtime = None;
        assert_eq!(
            table(&[sample(), bare], now),
            "ID    IMAGE                              RUNTIME   CREATED\n\
             web   docker.io/library/busybox:latest   runc      2 minutes ago\n\
             x     docker.io/library/busybox:latest   -         2 minutes ago\n"
        );
    }
}
