//! `supctl images pull` and `push`: registry transfers run by the daemon, shown with a
//! progress bar per blob on a terminal and a summary line at the end.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sup_client::api::{BlobProgress, Platform, PullRequest, PushRequest, RegistryAuth};

use super::super::args::parse_platform;
use super::super::output::{human_size, image_json, print_json, print_text, Format, OutputArg};
use super::super::Context;

#[derive(Debug, clap::Args)]
pub struct RegistryFlags {
    /// Credentials: USER:PASSWORD (or USER alone, with the password in SUP_REGISTRY_PASSWORD)
    #[arg(long, short = 'u', value_name = "USER[:PASS]")]
    user: Option<String>,
    /// Talk plain HTTP to the registry
    #[arg(long)]
    plain_http: bool,
    /// Do not verify the registry's TLS certificate
    #[arg(long)]
    skip_verify: bool,
    /// Only this platform (os/arch[/variant])
    #[arg(long, value_parser = parse_platform)]
    platform: Option<Platform>,
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// name[:tag][@digest]
    reference: String,
    #[command(flatten)]
    registry: RegistryFlags,
    /// Snapshotter to unpack into (the daemon's default when omitted)
    #[arg(long)]
    snapshotter: Option<String>,
    /// Fetch the content but do not unpack it
    #[arg(long)]
    no_unpack: bool,
    #[command(flatten)]
    out: OutputArg,
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The local image
    name: String,
    /// Where to push it (the image's own name when omitted)
    target: Option<String>,
    #[command(flatten)]
    registry: RegistryFlags,
    #[command(flatten)]
    out: OutputArg,
}

fn auth(user: &Option<String>) -> Option<RegistryAuth> {
    let user = user.as_ref()?;
    let (username, password) = match user.split_once(':') {
        Some((u, p)) => (u.to_string(), p.to_string()),
        None => (
            user.clone(),
            std::env::var("SUP_REGISTRY_PASSWORD").unwrap_or_default(),
        ),
    };
    Some(RegistryAuth {
        username,
        password,
        token: String::new(),
    })
}

/// One bar per blob, created as blobs are first reported.
struct Bars {
    multi: Option<MultiProgress>,
    bars: HashMap<String, ProgressBar>,
    /// Bytes moved per blob, for the summary.
    moved: HashMap<String, i64>,
    existing: usize,
}

impl Bars {
    fn new() -> Bars {
        Bars {
            multi: std::io::stderr().is_terminal().then(MultiProgress::new),
            bars: HashMap::new(),
            moved: HashMap::new(),
            existing: 0,
        }
    }

    fn update(&mut self, blobs: &[BlobProgress]) {
        for b in blobs {
            if b.status == "exists" && !self.moved.contains_key(&b.digest) {
                self.existing += 1;
            }
            self.moved.insert(b.digest.clone(), b.offset);
            let Some(multi) = &self.multi else {
                continue;
            };
            let bar = self.bars.entry(b.digest.clone()).or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(b.size.max(0) as u64));
                let style = ProgressStyle::with_template(
                    "{prefix:.bold} {msg:>11} [{bar:30}] {bytes:>10}/{total_bytes:<10}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                let short = b.digest.trim_start_matches("sha256:");
                bar.set_prefix(short.chars().take(12).collect::<String>());
                bar
            });
            bar.set_position(b.offset.max(0) as u64);
            bar.set_message(b.status.clone());
        }
    }

    fn finish(&self) {
        for bar in self.bars.values() {
            bar.finish();
        }
    }
}

pub async fn pull(ctx: &Context, args: PullArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let req = PullRequest {
        reference: args.reference.clone(),
        platform: args.registry.platform.clone(),
        snapshotter: args.snapshotter.unwrap_or_default(),
        no_unpack: args.no_unpack,
        auth: auth(&args.registry.user),
        plain_http: args.registry.plain_http,
        skip_verify: args.registry.skip_verify,
        labels: Default::default(),
    };
    let mut stream = ctx.client().await?.images().pull(req).await?.into_inner();
    let mut bars = Bars::new();
    let mut image = None;
    while let Some(msg) = stream.message().await? {
        bars.update(&msg.blobs);
        if msg.image.is_some() {
            image = msg.image;
        }
    }
    bars.finish();
    let image = image.ok_or_else(|| anyhow::anyhow!("the pull ended without an image"))?;
    match ctx.format(&args.out) {
        Format::Json => print_json(&image_json(&image)),
        Format::Table => {
            let digest = image
                .target
                .as_ref()
                .map(|t| t.digest.clone())
                .unwrap_or_default();
            let moved: i64 = bars.moved.values().sum();
            print_text(&format!(
                "pulled {} ({digest}) in {:.1}s: {} blobs, {} already present, {} moved\n",
                image.name,
                started.elapsed().as_secs_f64(),
                bars.moved.len(),
                bars.existing,
                human_size(moved)
            ))
        }
    }
}

pub async fn push(ctx: &Context, args: PushArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let req = PushRequest {
        name: args.name.clone(),
        target: args.target.clone().unwrap_or_default(),
        auth: auth(&args.registry.user),
        plain_http: args.registry.plain_http,
        skip_verify: args.registry.skip_verify,
        platform: args.registry.platform.clone(),
    };
    let mut stream = ctx.client().await?.images().push(req).await?.into_inner();
    let mut bars = Bars::new();
    let mut digest = String::new();
    while let Some(msg) = stream.message().await? {
        bars.update(&msg.blobs);
        if !msg.digest.is_empty() {
            digest = msg.digest;
        }
    }
    bars.finish();
    let target = args.target.unwrap_or(args.name);
    match ctx.format(&args.out) {
        Format::Json => print_json(&serde_json::json!({ "target": target, "digest": digest })),
        Format::Table => print_text(&format!(
            "pushed {target} ({digest}) in {:.1}s: {} blobs, {} already in the registry\n",
            started.elapsed().as_secs_f64(),
            bars.moved.len(),
            bars.existing
        )),
    }
}
