//! `supctl ns`: list, create and remove namespaces.

use serde_json::{json, Value};
use sup_client::api::{
    CreateNamespaceRequest, DeleteNamespaceRequest, ListNamespacesRequest, Namespace,
};

use super::args::{label_map, parse_label};
use super::output::{labels_json, labels_text, print_json, print_text, time_json, Format};
use super::output::{OutputArg, Table};
use super::Context;

#[derive(Debug, clap::Subcommand)]
pub enum NamespacesCommand {
    /// List namespaces
    #[command(visible_alias = "list")]
    Ls {
        /// Only namespaces matching the filter (e.g. name~=^team-, labels.owner==ops);
        /// repeat to match any
        #[arg(long = "filter", value_name = "FILTER")]
        filters: Vec<String>,
        /// Print the names only
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Create a namespace
    Create {
        name: String,
        /// Label the namespace (repeatable)
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Remove empty namespaces
    #[command(visible_alias = "remove", visible_alias = "delete")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub async fn run(ctx: &Context, cmd: NamespacesCommand) -> anyhow::Result<()> {
    match cmd {
        NamespacesCommand::Ls {
            filters,
            quiet,
            out,
        } => list(ctx, filters, quiet, ctx.format(&out)).await,
        NamespacesCommand::Create { name, labels } => create(ctx, name, &labels).await,
        NamespacesCommand::Rm { names } => remove(ctx, &names).await,
    }
}

async fn list(
    ctx: &Context,
    filters: Vec<String>,
    quiet: bool,
    format: Format,
) -> anyhow::Result<()> {
    let mut namespaces = ctx
        .client()
        .await?
        .namespaces()
        .list(ListNamespacesRequest { filters })
        .await?
        .into_inner()
        .namespaces;
    namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    if quiet {
        let names: String = namespaces
            .iter()
            .map(|ns| format!("{}\n", ns.name))
            .collect();
        return print_text(&names);
    }
    match format {
        Format::Table => {
            let mut table = Table::new(&["NAME", "LABELS"]);
            for ns in &namespaces {
                table.row(vec![ns.name.clone(), labels_text(&ns.labels)]);
            }
            table.print()
        }
        Format::Json => print_json(&Value::Array(
            namespaces.iter().map(namespace_json).collect(),
        )),
    }
}

fn namespace_json(ns: &Namespace) -> Value {
    json!({
        "name": ns.name,
        "labels": labels_json(&ns.labels),
        "created_at": time_json(ns.created_at.as_ref()),
        "updated_at": time_json(ns.updated_at.as_ref()),
    })
}

async fn create(ctx: &Context, name: String, labels: &[(String, String)]) -> anyhow::Result<()> {
    let namespace = Namespace {
        name,
        labels: label_map(labels),
        ..Default::default()
    };
    let created = ctx
        .client()
        .await?
        .namespaces()
        .create(CreateNamespaceRequest {
            namespace: Some(namespace.clone()),
        })
        .await?
        .into_inner()
        .namespace
        .unwrap_or(namespace);
    print_text(&format!("{}\n", created.name))
}

async fn remove(ctx: &Context, names: &[String]) -> anyhow::Result<()> {
    let client = ctx.client().await?.namespaces();
    super::remove_each(names, |name| {
        let mut c = client.clone();
        async move { c.delete(DeleteNamespaceRequest { name }).await.map(|_| ()) }
    })
    .await
}
