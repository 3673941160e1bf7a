//! Pull from OCI distribution registries: resolve the reference, walk an index down to one
//! platform's manifest (keeping the whole index as the image's target), fetch the config and
//! the layers (several at a time, each verified as it streams into a resumable ingest), and
//! unpack each layer as soon as it and the ones below it are in.
//!
//! Nothing half-pulled is visible: blobs appear under their digest only once verified, and
//! a failed pull removes the content records, snapshots and image record it made. Verified
//! blobs and partial ingests stay on disk (unrecorded), so pulling again resumes where the
//! failed pull stopped; garbage collection takes them if nobody does.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::content::{digest, Hold};
use crate::error::{Error, Result};
use crate::events::topic;
use crate::image::oci::{self, ImageConfig, Manifest, MAX_DOCUMENT};
use crate::image::platform;
use crate::image::reference::{self, Reference};
use crate::labels::{self, Labels};
use crate::registry::fetch::BlobFetch;
use crate::registry::progress::{
    bounded, unless_cancelled, BlobProgress, BlobStatus, Cancel, ProgressFn, Tracker,
};
use crate::registry::{Access, Intent, Repository};
use crate::service::Services;
use crate::snapshot::Snapshotter;
use crate::store::{self, Descriptor, ImageRecord, Platform};

use super::unpack::Unpacked;
use super::{parse_doc, Doc, Image, Resolved};

/// Most layers an image may have: far above what any builder makes.
const MAX_LAYERS: usize = 1000;

#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    pub reference: String,
    /// Platform to pick from an index and unpack; the host's when None.
    pub platform: Option<Platform>,
    pub snapshotter: String,
    pub unpack: bool,
    pub access: Access,
    pub labels: Labels,
}

/// The image a pull made, and the last state of its blobs.
pub struct Pulled {
    pub image: Image,
    pub blobs: Vec<BlobProgress>,
}

/// What a pull made, to undo on failure.
#[derive(Default)]
struct Undo {
    holds: Vec<Hold>,
    /// Content records of the namespace this pull created.
    recorded: Vec<String>,
    unpacked: Vec<Unpacked>,
}

/// Where a pull is.
struct Ctx<'a> {
    ns: &'a str,
    repo: Arc<Repository>,
    tracker: Arc<Tracker>,
}

impl Services {
    /// Pulls `opts.reference` into namespace `ns`, reporting progress to `progress`, until
    /// done or `cancel` fires.
    pub async fn image_pull(
        self: &Arc<Self>,
        ns: &str,
        opts: PullOptions,
        progress: ProgressFn,
        cancel: Cancel,
    ) -> Result<Pulled> {
        crate::service::namespaces::validate(ns)?;
        labels::validate(&opts.labels)?;
        let r = reference::parse_normalized(&opts.reference)?;
        let name = r.to_string();
        let what = format!("pull {name:?}");
        let snapshotter = match opts.unpack {
            true => Some(self.snapshotter(&opts.snapshotter)?),
            false => None,
        };
        let repo = self
            .registry
            .repository(&r, &opts.access, Intent::Pull)
            .map_err(|e| e.context(&what))?;
        let _creating = self.gc_lock.read().await;
        let ctx = Ctx {
            ns,
            repo: Arc::new(repo),
            tracker: Tracker::new(progress),
        };
        let mut undo = Undo::default();
        tracing::info!(namespace = ns, reference = %name, "pulling");
        let result = self
            .pull_inner(
                &ctx,
                &opts,
                &r,
                &name,
                snapshotter.as_ref(),
                cancel,
                &mut undo,
            )
            .await;
        match result {
            Ok(image) => Ok(Pulled {
                image,
                blobs: ctx.tracker.snapshot(),
            }),
            Err(e) => {
                tracing::info!(namespace = ns, reference = %name, error = %e, "pull failed; rolling back");
                let this = self.clone();
                let ns = ns.to_string();
                let rollback =
                    tokio::task::spawn_blocking(move || this.pull_rollback(&ns, snapshotter, undo));
                if let Err(j) = rollback.await {
                    tracing::warn!(error = %j, "pull rollback did not finish");
                }
                Err(e.context(what))
            }
        }
    }

    fn pull_rollback(&self, ns: &str, snapshotter: Option<Arc<dyn Snapshotter>>, undo: Undo) {
        if let Some(s) = &snapshotter {
            for done in undo.unpacked.iter().rev() {
                self.undo_unpack(ns, s, done);
            }
        }
        for d in &undo.recorded {
            if let Err(e) = self.store.content.remove(store::key(ns, d)) {
                tracing::warn!(digest = %d, error = %e, "cannot remove content record of failed pull");
            }
        }
        if let Err(e) = self.store.flush_blocking() {
            tracing::warn!(error = %e, "cannot flush rollback of failed pull");
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn pull_inner(
        self: &Arc<Self>,
        ctx: &Ctx<'_>,
        opts: &PullOptions,
        r: &Reference,
        name: &str,
        snapshotter: Option<&Arc<dyn Snapshotter>>,
        mut cancel: Cancel,
        undo: &mut Undo,
    ) -> Result<Image> {
        let wanted = r
            .digest
            .clone()
            .or_else(|| r.tag.clone())
            .unwrap_or_else(|| reference::DEFAULT_TAG.to_string());
        let root = unless_cancelled(&mut cancel, ctx.repo.manifest(&wanted)).await?;
        let target = Descriptor {
            media_type: root.media_type.clone(),
            digest: root.digest.clone(),
            size: root.data.len() as i64,
            annotations: Labels::new(),
            platform: None,
        };
        let mut blobs = vec![target.digest.clone()];
        self.keep_document(ctx, &target, root.data.clone(), undo)
            .await?;

        // Down the indexes to the manifest of the platform wanted.
        let want = opts.platform.clone().unwrap_or_else(platform::host);
        let (mut desc, mut data) = (target.clone(), root.data);
        let mut depth = 0;
        let manifest: Manifest = loop {
            let ix = match parse_doc(&desc, &data)? {
                Doc::Manifest(m) => break m,
                Doc::Index(ix) => ix,
            };
            depth += 1;
            if depth > 4 {
                return Err(Error::invalid(format!(
                    "index {}: indexes nested too deep",
                    desc.digest
                )));
            }
            let children: Vec<Descriptor> = ix.manifests.iter().map(|m| m.to_store()).collect();
            for c in &children {
                digest::validate(&c.digest)?;
            }
            let lone =
                (children.len() == 1 && children[0].platform.is_none()).then(|| &children[0]);
            let pick = platform::select(&want, children.iter())
                .or(lone)
                .cloned()
                .ok_or_else(|| {
                    let offered: Vec<String> = children
                        .iter()
                        .filter_map(|c| c.platform.as_ref().map(platform::format))
                        .collect();
                    Error::NotFound(format!(
                        "no manifest for platform {} (the index offers: {})",
                        platform::format(&want),
                        offered.join(", ")
                    ))
                })?;
            check_document_size(&pick)?;
            let f = unless_cancelled(&mut cancel, ctx.repo.manifest(&pick.digest)).await?;
            if f.data.len() as i64 != pick.size {
                return Err(Error::DataLoss(format!(
                    "manifest {}: {} bytes served, the index says {}",
                    pick.digest,
                    f.data.len(),
                    pick.size
                )));
            }
            let mut child = pick;
            if child.media_type.is_empty() {
                child.media_type = f.media_type.clone();
            }
            self.keep_document(ctx, &child, f.data.clone(), undo)
                .await?;
            blobs.push(child.digest.clone());
            desc = child;
            data = f.data;
        };

        let config = manifest.config.to_store();
        digest::validate(&config.digest)?;
        check_document_size(&config)?;
        ctx.tracker.add(&config, BlobStatus::Waiting);
        let config_json = match self.held_blob(&config.digest, undo)? {
            true => {
                ctx.tracker.status(&config.digest, BlobStatus::Exists);
                self.read_document(&config)?
            }
            false => {
                let data = unless_cancelled(
                    &mut cancel,
                    ctx.repo.small_blob(&config.digest, config.size),
                )
                .await?;
                self.keep_document(ctx, &config, data.clone(), undo).await?;
                data
            }
        };
        blobs.push(config.digest.clone());
        let resolved = resolved(desc, &manifest, config, config_json, opts.platform.as_ref())?;
        blobs.extend(resolved.layers.iter().map(|l| l.digest.clone()));

        self.fetch_layers(ctx, &resolved, snapshotter, cancel, undo)
            .await?;

        let this = self.clone();
        let (ns, name, labels) = (ctx.ns.to_string(), name.to_string(), opts.labels.clone());
        let (recorded, done) = tokio::task::spawn_blocking(move || {
            let mut recorded = Vec::new();
            let done = this.pull_record(&ns, &name, target, &blobs, labels, &mut recorded);
            (recorded, done)
        })
        .await?;
        undo.recorded.extend(recorded);
        let (image, replaced) = done?;
        if let Some(old) = replaced {
            if let Err(e) = self.release(ctx.ns, &[old]).await {
                tracing::warn!(error = %e, "cannot release the content the pulled image replaced");
            }
        }
        Ok(image)
    }

    /// Holds `digest` for the pull and tells whether it is already on disk.
    fn held_blob(&self, digest: &str, undo: &mut Undo) -> Result<bool> {
        undo.holds.push(self.content.hold(digest));
        self.content.blob_exists(digest)
    }

    /// Stores a manifest, index or config that was fetched and verified whole.
    async fn keep_document(
        self: &Arc<Self>,
        ctx: &Ctx<'_>,
        desc: &Descriptor,
        data: Vec<u8>,
        undo: &mut Undo,
    ) -> Result<()> {
        ctx.tracker.add(desc, BlobStatus::Downloading);
        if self.held_blob(&desc.digest, undo)? {
            ctx.tracker.status(&desc.digest, BlobStatus::Exists);
            return Ok(());
        }
        let this = self.clone();
        let (d, size) = (desc.digest.clone(), desc.size);
        let hold = tokio::task::spawn_blocking(move || {
            this.content
                .write_blob(&mut &data[..], Some(&d), Some(size))
                .map(|(_, _, _, hold)| hold)
        })
        .await?
        .map_err(|e| match e {
            Error::InvalidArgument(m) => Error::DataLoss(m),
            other => other,
        })?;
        undo.holds.push(hold);
        ctx.tracker.status(&desc.digest, BlobStatus::Done);
        Ok(())
    }

    /// Downloads the layers, a few at a time, and unpacks each as soon as the layers below
    /// it are in. The first failure stops the rest.
    async fn fetch_layers(
        self: &Arc<Self>,
        ctx: &Ctx<'_>,
        r: &Resolved,
        snapshotter: Option<&Arc<dyn Snapshotter>>,
        mut cancel: Cancel,
        undo: &mut Undo,
    ) -> Result<()> {
        for l in &r.layers {
            ctx.tracker.add(l, BlobStatus::Waiting);
            undo.holds.push(self.content.hold(&l.digest));
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let forward = {
            let stop = stop_tx.clone();
            tokio::spawn(async move {
                crate::registry::progress::cancelled(&mut cancel).await;
                let _ = stop.send(true);
            })
        };
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let jobs: Vec<_> = r
            .layers
            .iter()
            .enumerate()
            .map(|(i, layer)| {
                let (mut stop, stop_tx, ready) =
                    (stop_rx.clone(), stop_tx.clone(), ready_tx.clone());
                async move {
                    let fetch = BlobFetch {
                        content: &self.content,
                        ns: ctx.ns,
                        repo: &ctx.repo,
                        tracker: &ctx.tracker,
                    };
                    let res = fetch.fetch(layer, &mut stop).await;
                    match &res {
                        Ok(_) => {
                            let _ = ready.send(i);
                        }
                        Err(_) => {
                            let _ = stop_tx.send(true);
                        }
                    }
                    (layer.digest.clone(), res)
                }
            })
            .collect();
        // Each job holds a sender: the unpacker learns the downloads are over when all drop.
        drop(ready_tx);
        let downloads = bounded(jobs, self.registry.config().max_concurrent_downloads);
        let unpacks = self.unpack_as_ready(ctx, r, snapshotter, &mut ready_rx, stop_rx.clone());
        let ((results, ()), (unpacked, unpack_result)) = tokio::join!(
            async {
                let out = downloads.await;
                (out, ())
            },
            async {
                let out = unpacks.await;
                if out.1.is_err() {
                    let _ = stop_tx.send(true);
                }
                out
            }
        );
        forward.abort();
        undo.unpacked.extend(unpacked);
        let mut first_err = None;
        for (d, res) in results {
            match res {
                Ok(true) => undo.recorded.push(d),
                Ok(false) => {}
                Err(e) => {
                    // A stop caused by another failure is not the story to tell.
                    let better = matches!(first_err, None | Some(Error::Cancelled(_)));
                    if better {
                        first_err = Some(e.context(format!("layer {d}")));
                    }
                }
            }
        }
        match (first_err, unpack_result) {
            (Some(e), _) if !matches!(e, Error::Cancelled(_)) => Err(e),
            (_, Err(e)) => Err(e),
            (Some(e), Ok(())) => Err(e),
            (None, Ok(())) => Ok(()),
        }
    }

    /// Unpacks layer after layer as `ready` announces them; returns what it made.
    async fn unpack_as_ready(
        self: &Arc<Self>,
        ctx: &Ctx<'_>,
        r: &Resolved,
        snapshotter: Option<&Arc<dyn Snapshotter>>,
        ready: &mut tokio::sync::mpsc::UnboundedReceiver<usize>,
        stop: watch::Receiver<bool>,
    ) -> (Vec<Unpacked>, Result<()>) {
        let mut made = Vec::new();
        let Some(s) = snapshotter else {
            return (made, Ok(()));
        };
        let n = r.layers.len();
        let mut have = vec![false; n];
        let mut next = 0;
        while next < n {
            match ready.recv().await {
                Some(i) if i < n => have[i] = true,
                Some(_) => continue,
                // Downloads ended without this layer: their error tells why.
                None => return (made, Err(stopped())),
            }
            while next < n && have[next] {
                if *stop.borrow() {
                    return (made, Err(stopped()));
                }
                let digest = r.layers[next].digest.clone();
                ctx.tracker.status(&digest, BlobStatus::Unpacking);
                let mut prefix = r.clone();
                prefix.layers.truncate(next + 1);
                prefix.diff_ids.truncate(next + 1);
                prefix.chain_ids.truncate(next + 1);
                let (this, s, ns) = (self.clone(), s.clone(), ctx.ns.to_string());
                let job = tokio::task::spawn_blocking(move || {
                    this.unpack_blocking(&ns, &s, &prefix, &|_, _, _| {})
                })
                .await;
                match job {
                    Ok(Ok(done)) => made.push(done),
                    Ok(Err(e)) => {
                        return (made, Err(e.context(format!("unpacking layer {digest}"))))
                    }
                    Err(e) => return (made, Err(e.into())),
                }
                ctx.tracker.status(&digest, BlobStatus::Unpacked);
                next += 1;
            }
        }
        (made, Ok(()))
    }

    /// Records every blob of the pulled image in the namespace and names the image.
    /// Returns the image and the target it replaced, if any; `recorded` collects the records
    /// made, for a rollback.
    fn pull_record(
        &self,
        ns: &str,
        name: &str,
        target: Descriptor,
        blobs: &[String],
        labels: Labels,
        recorded: &mut Vec<String>,
    ) -> Result<(Image, Option<Descriptor>)> {
        self.namespace_ensure(ns)?;
        for d in blobs {
            if !self.content.has(ns, d)? {
                self.content.record(ns, d, &Labels::new())?;
                recorded.push(d.clone());
            }
        }
        let now = SystemTime::now();
        let key = store::key(ns, name);
        let prev: Option<ImageRecord> = store::get(&self.store.images, &key)?;
        let (rec, replaced, event) = match prev {
            Some(mut p) => {
                let replaced = (p.target.digest != target.digest).then(|| p.target.clone());
                p.target = target;
                p.labels.extend(labels);
                p.updated_at = now;
                (p, replaced, topic::IMAGE_UPDATE)
            }
            None => (
                ImageRecord {
                    target,
                    labels,
                    created_at: now,
                    updated_at: now,
                },
                None,
                topic::IMAGE_CREATE,
            ),
        };
        self.store.images.insert(key, store::encode(&rec)?)?;
        self.images_written();
        self.store.flush_blocking()?;
        self.publish_image(ns, event, name, &rec);
        Ok((Image::from_record(name.to_string(), rec), replaced))
    }
}

/// Why work stopped when another part of the pull failed or the caller went away.
fn stopped() -> Error {
    Error::Cancelled("stopped before unpacking finished".into())
}

fn check_document_size(d: &Descriptor) -> Result<()> {
    if d.size <= 0 || d.size as u64 > MAX_DOCUMENT {
        return Err(Error::invalid(format!(
            "{} {}: size {} is not a valid document size",
            d.media_type, d.digest, d.size
        )));
    }
    Ok(())
}

/// One platform of the pulled image, checked as `Services::resolve` checks a stored one.
fn resolved(
    manifest_desc: Descriptor,
    manifest: &Manifest,
    config: Descriptor,
    config_json: Vec<u8>,
    want: Option<&Platform>,
) -> Result<Resolved> {
    let cfg: ImageConfig = oci::parse(&format!("config {}", config.digest), &config_json)?;
    let have = Platform {
        os: cfg.os.clone(),
        architecture: cfg.architecture.clone(),
        variant: cfg.variant.clone(),
        os_version: String::new(),
    };
    if let Some(w) = want {
        if !cfg.os.is_empty() && !platform::matches(w, &have) {
            return Err(Error::NotFound(format!(
                "the image is for {}, not {}",
                platform::format(&have),
                platform::format(w)
            )));
        }
    }
    if manifest.layers.len() > MAX_LAYERS {
        return Err(Error::invalid(format!(
            "manifest {}: {} layers, more than the {MAX_LAYERS} allowed",
            manifest_desc.digest,
            manifest.layers.len()
        )));
    }
    if cfg.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(Error::invalid(format!(
            "image config {}: {} diff_ids for {} layers",
            config.digest,
            cfg.rootfs.diff_ids.len(),
            manifest.layers.len()
        )));
    }
    for d in cfg.rootfs.diff_ids.iter() {
        digest::validate(d).map_err(|e| e.context(format!("image config {}", config.digest)))?;
    }
    for l in &manifest.layers {
        digest::validate(&l.digest)
            .map_err(|e| e.context(format!("manifest {}", manifest_desc.digest)))?;
    }
    let chain_ids = oci::chain_ids(&cfg.rootfs.diff_ids);
    Ok(Resolved {
        platform: have,
        manifest: manifest_desc,
        config,
        layers: manifest.layers.iter().map(|l| l.to_store()).collect(),
        diff_ids: cfg.rootfs.diff_ids,
        chain_ids,
        config_json,
    })
}
