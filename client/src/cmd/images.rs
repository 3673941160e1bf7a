//! `supctl images`: list, inspect and remove images; importing and exporting archives live in
//! `transfer`, read-only mounts of an image's tree in `mount`.

mod mount;
mod registry;
mod transfer;

use chrono::{SecondsFormat, Utc};
use futures::StreamExt;
use serde_json::{json, Value};
use sup_client::api::{
    DeleteImageRequest, InspectImageRequest, InspectImageResponse, ListImagesRequest, Platform,
};

use super::args::{parse_platform, platform_string};
use super::output::{descriptor_json, human_size, image_json, labels_text, platform_json};
use super::output::{print_json, print_text, relative_time, to_datetime, Format, OutputArg, Table};
use super::Context;

/// How many Inspect calls `images ls` makes at once for the SIZE column.
const INSPECT_CONCURRENCY: usize = 8;

#[derive(Debug, clap::Subcommand)]
pub enum ImagesCommand {
    /// Import an OCI image layout or `docker save` archive (tar, plain or gzip)
    Import(transfer::ImportArgs),
    /// Export images as an OCI image layout archive
    Export(transfer::ExportArgs),
    /// Pull an image from a registry
    Pull(registry::PullArgs),
    /// Push an image (every platform held) to a registry
    Push(registry::PushArgs),
    /// List images
    #[command(visible_alias = "list")]
    Ls {
        /// Only images matching the filter (e.g. name~=busybox, labels.env==prod);
        /// repeat to match any
        #[arg(long = "filter", value_name = "FILTER")]
        filters: Vec<String>,
        /// Print the names only
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Show an image's manifest, config, layers and where it is unpacked
    Inspect {
        /// Image reference
        reference: String,
        /// Platform to resolve an index to (OS/ARCH[/VARIANT]); the host's by default
        #[arg(long, value_parser = parse_platform)]
        platform: Option<Platform>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Remove images
    #[command(visible_alias = "remove", visible_alias = "delete")]
    Rm {
        #[arg(required = true, value_name = "REF")]
        references: Vec<String>,
    },
    /// Mount an image's tree read-only at a directory, for inspection
    Mount(mount::MountArgs),
    /// Undo `images mount`
    #[command(visible_alias = "umount")]
    Unmount(mount::UnmountArgs),
}

pub async fn run(ctx: &Context, cmd: ImagesCommand) -> anyhow::Result<()> {
    match cmd {
        ImagesCommand::Import(args) => transfer::import(ctx, args).await,
        ImagesCommand::Export(args) => transfer::export(ctx, args).await,
        ImagesCommand::Pull(args) => registry::pull(ctx, args).await,
        ImagesCommand::Push(args) => registry::push(ctx, args).await,
        ImagesCommand::Ls {
            filters,
            quiet,
            out,
        } => list(ctx, filters, quiet, ctx.format(&out)).await,
        ImagesCommand::Inspect {
            reference,
            platform,
            out,
        } => inspect(ctx, reference, platform, ctx.format(&out)).await,
        ImagesCommand::Rm { references } => remove(ctx, &references).await,
        ImagesCommand::Mount(args) => mount::mount(ctx, args).await,
        ImagesCommand::Unmount(args) => mount::unmount(ctx, args).await,
    }
}

/// "index" or "manifest" for the media types of both the OCI and the Docker spelling.
pub fn target_type(media_type: &str) -> &str {
    match media_type {
        "application/vnd.oci.image.index.v1+json"
        | "application/vnd.docker.distribution.manifest.list.v2+json" => "index",
        "application/vnd.oci.image.manifest.v1+json"
        | "application/vnd.docker.distribution.manifest.v2+json"
        | "application/vnd.docker.distribution.manifest.v1+json" => "manifest",
        other => other,
    }
}

async fn list(
    ctx: &Context,
    filters: Vec<String>,
    quiet: bool,
    format: Format,
) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let images = client
        .images()
        .list(ListImagesRequest { filters })
        .await?
        .into_inner()
        .images;
    if quiet {
        let names: String = images.iter().map(|i| format!("{}\n", i.name)).collect();
        return print_text(&names);
    }
    if format == Format::Json {
        return print_json(&Value::Array(images.iter().map(image_json).collect()));
    }
    // Sizes come from Inspect; an image it cannot resolve (say, a platform the namespace has
    // no content for) still gets its row.
    let sizes: Vec<Option<i64>> = futures::stream::iter(&images)
        .map(|image| {
            let mut images = client.images();
            let request = InspectImageRequest {
                name: image.name.clone(),
                platform: None,
            };
            async move {
                let response = images.inspect(request).await.ok()?;
                Some(response.into_inner().size)
            }
        })
        .buffered(INSPECT_CONCURRENCY)
        .collect()
        .await;
    let now = Utc::now();
    let mut table = Table::new(&["REF", "TYPE", "DIGEST", "SIZE", "CREATED"]);
    for (image, size) in images.iter().zip(sizes) {
        let (kind, digest) = match &image.target {
            Some(target) => (target_type(&target.media_type), target.digest.as_str()),
            None => ("-", "-"),
        };
        table.row(vec![
            image.name.clone(),
            kind.to_string(),
            digest.to_string(),
            size.map_or_else(|| "-".to_string(), human_size),
            relative_time(image.created_at.as_ref(), now),
        ]);
    }
    table.print()
}

async fn inspect(
    ctx: &Context,
    name: String,
    platform: Option<Platform>,
    format: Format,
) -> anyhow::Result<()> {
    let response = ctx
        .client()
        .await?
        .images()
        .inspect(InspectImageRequest { name, platform })
        .await?
        .into_inner();
    match format {
        Format::Table => print_text(&inspect_text(&response)),
        Format::Json => print_json(&inspect_json(&response)),
    }
}

fn inspect_json(r: &InspectImageResponse) -> Value {
    // The config is JSON already: embed it as such, or as text if the daemon kept something
    // that does not parse.
    let config_json = if r.config_json.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&r.config_json)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.config_json).into()))
    };
    json!({
        "image": r.image.as_ref().map(image_json),
        "manifest": descriptor_json(r.manifest.as_ref()),
        "config": descriptor_json(r.config.as_ref()),
        "layers": r.layers.iter().map(|l| descriptor_json(Some(l))).collect::<Vec<_>>(),
        "diff_ids": r.diff_ids,
        "chain_id": r.chain_id,
        "config_json": config_json,
        "size": r.size,
        "platforms": r.platforms.iter().map(platform_json).collect::<Vec<_>>(),
        "unpacked": r.unpacked,
    })
}

fn inspect_text(r: &InspectImageResponse) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut field = |name: &str, value: String| lines.push(format!("{:<13}{value}", name));
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    if let Some(image) = &r.image {
        field("Name:", image.name.clone());
        if let Some(target) = &image.target {
            field("Digest:", target.digest.clone());
            field("Media type:", target.media_type.clone());
        }
        if !image.labels.is_empty() {
            field("Labels:", labels_text(&image.labels));
        }
        if let Some(created) = to_datetime(image.created_at.as_ref()) {
            field(
                "Created:",
                created.to_rfc3339_opts(SecondsFormat::Secs, true),
            );
        }
    }
    let platforms: Vec<String> = r.platforms.iter().map(platform_string).collect();
    field("Platforms:", dash(&platforms.join(", ")));
    if let Some(manifest) = &r.manifest {
        field("Manifest:", manifest.digest.clone());
    }
    if let Some(config) = &r.config {
        field("Config:", config.digest.clone());
    }
    field("Chain ID:", dash(&r.chain_id));
    field("Unpacked in:", dash(&r.unpacked.join(", ")));
    field("Size:", human_size(r.size));

    let mut text = lines.join("\n");
    text.push('\n');
    if !r.layers.is_empty() {
        text.push_str("Layers:\n");
        let mut table = Table::new(&["  DIGEST", "SIZE", "MEDIA TYPE"]);
        for layer in &r.layers {
            table.row(vec![
                format!("  {}", layer.digest),
                human_size(layer.size),
                layer.media_type.clone(),
            ]);
        }
        text.push_str(&table.render());
    }
    if !r.diff_ids.is_empty() {
        text.push_str("Diff IDs:\n");
        for diff_id in &r.diff_ids {
            text.push_str(&format!("  {diff_id}\n"));
        }
    }
    text
}

async fn remove(ctx: &Context, references: &[String]) -> anyhow::Result<()> {
    let client = ctx.client().await?.images();
    super::remove_each(references, |name| {
        let mut c = client.clone();
        async move { c.delete(DeleteImageRequest { name }).await.map(|_| ()) }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sup_client::api::{Descriptor, Image};

    #[test]
    fn target_types() {
        assert_eq!(
            target_type("application/vnd.oci.image.index.v1+json"),
            "index"
        );
        assert_eq!(
            target_type("application/vnd.docker.distribution.manifest.v2+json"),
            "manifest"
        );
        assert_eq!(target_type("text/plain"), "text/plain");
    }

    fn sample() -> InspectImageResponse {
        let layer = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: "sha256:aa".into(),
            size: 2048,
            ..Default::default()
        };
        InspectImageResponse {
            image: Some(Image {
                name: "docker.io/library/busybox:latest".into(),
                target: Some(Descriptor {
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    digest: "sha256:mm".into(),
                    size: 400,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            layers: vec![layer],
            diff_ids: vec!["sha256:dd".into()],
            chain_id: "sha256:dd".into(),
            config_json: br#"{"architecture":"amd64"}"#.to_vec(),
            size: 3000,
            platforms: vec![Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn inspect_summary() {
        let text = inspect_text(&sample());
        assert!(text.contains("Name:        docker.io/library/busybox:latest\n"));
        assert!(text.contains("Platforms:   linux/amd64\n"));
        assert!(text.contains("Unpacked in: -\n"));
        assert!(text.contains("  sha256:aa   2.0 KiB   application/vnd.oci.image.layer.v1.tar\n"));
        assert!(text.contains("Diff IDs:\n  sha256:dd\n"));
    }

    #[test]
    fn inspect_embeds_config() {
        let value = inspect_json(&sample());
        assert_eq!(value["config_json"]["architecture"], "amd64");
        assert_eq!(value["image"]["target"]["size"], 400);
        assert_eq!(value["platforms"][0]["os"], "linux");
        let mut broken = sample();
        broken.config_json = b"{not json".to_vec();
        assert_eq!(inspect_json(&broken)["config_json"], "{not json");
    }
}
