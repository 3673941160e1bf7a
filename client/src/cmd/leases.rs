//! `supctl leases` and `supctl gc`: what protects work in progress from garbage collection,
//! and a collection on request.

use serde_json::{json, Value};
use sup_client::api::{
    CollectRequest, CreateLeaseRequest, DeleteLeaseRequest, Lease, ListLeasesRequest,
};

use super::args::{label_map, parse_label};
use super::output::{labels_json, labels_text, print_json, print_text, time_json, Format};
use super::output::{OutputArg, Table};
use super::Context;

#[derive(Debug, clap::Subcommand)]
pub enum LeasesCommand {
    /// List leases
    #[command(visible_alias = "list")]
    Ls {
        #[arg(long = "filter", value_name = "FILTER")]
        filters: Vec<String>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Create a lease (prints its id)
    Create {
        /// The lease's id; generated when omitted
        #[arg(long)]
        id: Option<String>,
        /// Seconds until the lease expires (never when omitted)
        #[arg(long, value_name = "SECONDS")]
        ttl: Option<u64>,
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Remove leases
    #[command(visible_alias = "remove", visible_alias = "delete")]
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    #[command(flatten)]
    out: OutputArg,
}

pub async fn run(ctx: &Context, cmd: LeasesCommand) -> anyhow::Result<()> {
    match cmd {
        LeasesCommand::Ls { filters, out } => list(ctx, filters, ctx.format(&out)).await,
        LeasesCommand::Create { id, ttl, labels } => create(ctx, id, ttl, &labels).await,
        LeasesCommand::Rm { ids } => remove(ctx, &ids).await,
    }
}

fn lease_json(l: &Lease) -> Value {
    json!({
        "id": l.id,
        "labels": labels_json(&l.labels),
        "created_at": time_json(l.created_at.as_ref()),
        "expires_at": time_json(l.expires_at.as_ref()),
    })
}

async fn list(ctx: &Context, filters: Vec<String>, format: Format) -> anyhow::Result<()> {
    let mut leases = ctx
        .client()
        .await?
        .leases()
        .list(ListLeasesRequest { filters })
        .await?
        .into_inner()
        .leases;
    leases.sort_by(|a, b| a.id.cmp(&b.id));
    match format {
        Format::Table => {
            let mut table = Table::new(&["ID", "EXPIRES", "LABELS"]);
            for l in &leases {
                let expires = time_json(l.expires_at.as_ref());
                let expires = expires.as_str().unwrap_or("never").to_string();
                table.row(vec![l.id.clone(), expires, labels_text(&l.labels)]);
            }
            table.print()
        }
        Format::Json => print_json(&Value::Array(leases.iter().map(lease_json).collect())),
    }
}

async fn create(
    ctx: &Context,
    id: Option<String>,
    ttl: Option<u64>,
    labels: &[(String, String)],
) -> anyhow::Result<()> {
    let lease = ctx
        .client()
        .await?
        .leases()
        .create(CreateLeaseRequest {
            id: id.unwrap_or_default(),
            labels: label_map(labels),
            ttl_seconds: ttl.unwrap_or(0).min(i64::MAX as u64) as i64,
        })
        .await?
        .into_inner()
        .lease
        .unwrap_or_default();
    print_text(&format!("{}\n", lease.id))
}

async fn remove(ctx: &Context, ids: &[String]) -> anyhow::Result<()> {
    let client = ctx.client().await?.leases();
    super::remove_each(ids, |id| {
        let mut c = client.clone();
        async move { c.delete(DeleteLeaseRequest { id }).await.map(|_| ()) }
    })
    .await
}

/// `supctl gc`: collects now and says what went.
pub async fn gc(ctx: &Context, args: GcArgs) -> anyhow::Result<()> {
    let r = ctx
        .client()
        .await?
        .gc()
        .collect(CollectRequest {})
        .await?
        .into_inner();
    match ctx.format(&args.out) {
        Format::Table => print_text(&format!(
            "removed {} content records, {} blobs ({}), {} snapshots; {} leases expired\n",
            r.content_removed,
            r.blobs_removed,
            super::output::human_size(r.bytes_freed),
            r.snapshots_removed,
            r.leases_expired
        )),
        Format::Json => print_json(&json!({
            "content_removed": r.content_removed,
            "blobs_removed": r.blobs_removed,
            "bytes_freed": r.bytes_freed,
            "snapshots_removed": r.snapshots_removed,
            "leases_expired": r.leases_expired,
        })),
    }
}
