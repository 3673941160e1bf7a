//! Push to OCI distribution registries: the blobs of every platform the namespace holds for
//! the image (those the registry already has are skipped), several at a time, then the
//! platforms' manifests by digest, then the image's target (manifest or index) by tag.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::image::oci;
use crate::image::{platform, reference};
use crate::registry::progress::{
    bounded, unless_cancelled, BlobProgress, BlobStatus, Cancel, ProgressFn, Tracker,
};
use crate::registry::upload::SentFn;
use crate::registry::{Access, Intent, Repository};
use crate::service::Services;
use crate::store::{Descriptor, Platform};

use super::{parse_doc, Doc};

#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// The local image.
    pub name: String,
    /// Where to push; the image's own name when None.
    pub target: Option<String>,
    pub access: Access,
    /// Push only this platform's manifest (under the tag); every platform held when None.
    pub platform: Option<Platform>,
}

/// What a push left in the registry.
pub struct Pushed {
    /// Digest of the manifest or index the tag now names.
    pub digest: String,
    pub blobs: Vec<BlobProgress>,
}

/// What goes to the registry, in the order it must go.
struct Plan {
    /// Configs and layers.
    blobs: Vec<Descriptor>,
    /// Manifests an index refers to, pushed by digest before it.
    children: Vec<(Descriptor, Vec<u8>)>,
    /// What the tag names.
    root: (Descriptor, Vec<u8>),
}

impl Services {
    /// Pushes image `opts.name` of namespace `ns`, reporting progress, until done or
    /// `cancel` fires.
    pub async fn image_push(
        self: &Arc<Self>,
        ns: &str,
        opts: PushOptions,
        progress: ProgressFn,
        mut cancel: Cancel,
    ) -> Result<Pushed> {
        let image = self.image_get(ns, &opts.name)?;
        let dest = reference::parse_normalized(opts.target.as_deref().unwrap_or(&image.name))?;
        let what = format!("push {:?}", dest.to_string());
        let this = self.clone();
        let (ns2, target, want) = (ns.to_string(), image.target.clone(), opts.platform.clone());
        let plan =
            tokio::task::spawn_blocking(move || this.push_plan(&ns2, &target, want.as_ref()))
                .await?
                .map_err(|e| e.context(format!("image {:?}", image.name)).context(&what))?;
        // The blobs stay on disk while they are being sent, whatever happens to the image.
        let _holds: Vec<_> = plan
            .blobs
            .iter()
            .map(|b| self.content.hold(&b.digest))
            .collect();
        let repo = self
            .registry
            .repository(&dest, &opts.access, Intent::Push)
            .map_err(|e| e.context(&what))?;
        let tracker = Tracker::new(progress);
        let tag = match (&dest.tag, &dest.digest) {
            (Some(t), _) => t.clone(),
            (None, Some(d)) if *d == plan.root.0.digest => d.clone(),
            (None, Some(d)) => {
                return Err(Error::invalid(format!(
                    "{what}: the image is {}, not {d}",
                    plan.root.0.digest
                )))
            }
            (None, None) => reference::DEFAULT_TAG.to_string(),
        };
        tracing::info!(namespace = ns, image = %image.name, destination = %dest, "pushing");
        let run = self.push_run(&repo, &plan, &tag, &tracker);
        unless_cancelled(&mut cancel, run)
            .await
            .map_err(|e| e.context(&what))?;
        Ok(Pushed {
            digest: plan.root.0.digest.clone(),
            blobs: tracker.snapshot(),
        })
    }

    async fn push_run(
        &self,
        repo: &Repository,
        plan: &Plan,
        tag: &str,
        tracker: &Arc<Tracker>,
    ) -> Result<()> {
        for b in &plan.blobs {
            tracker.add(b, BlobStatus::Waiting);
        }
        for (d, _) in plan.children.iter().chain(std::iter::once(&plan.root)) {
            tracker.add(d, BlobStatus::Waiting);
        }
        let cfg = self.registry.config();
        let (parallel, chunk) = (cfg.max_concurrent_uploads, cfg.upload_chunk_size);
        let jobs: Vec<_> = plan
            .blobs
            .iter()
            .map(|b| async move {
                self.push_blob(repo, b, chunk, tracker)
                    .await
                    .map_err(|e| e.context(format!("blob {}", b.digest)))
            })
            .collect();
        let results = bounded(jobs, parallel).await;
        results.into_iter().collect::<Result<Vec<()>>>()?;
        for (d, data) in plan.children.iter() {
            tracker.status(&d.digest, BlobStatus::Uploading);
            repo.put_manifest(&d.digest, &d.media_type, data)
                .await
                .map_err(|e| e.context(format!("manifest {}", d.digest)))?;
            tracker.status(&d.digest, BlobStatus::Done);
        }
        let (root, data) = &plan.root;
        tracker.status(&root.digest, BlobStatus::Uploading);
        repo.put_manifest(tag, &root.media_type, data)
            .await
            .map_err(|e| e.context(format!("{} {}", kind(&root.media_type), root.digest)))?;
        tracker.status(&root.digest, BlobStatus::Done);
        Ok(())
    }

    async fn push_blob(
        &self,
        repo: &Repository,
        b: &Descriptor,
        chunk: u64,
        tracker: &Arc<Tracker>,
    ) -> Result<()> {
        if repo.has_blob(&b.digest).await? {
            tracker.status(&b.digest, BlobStatus::Exists);
            return Ok(());
        }
        tracker.status(&b.digest, BlobStatus::Uploading);
        let t = tracker.clone();
        let d = b.digest.clone();
        let sent: SentFn = Arc::new(move |n| t.add_offset(&d, n));
        let path = self.content.blob_path(&b.digest)?;
        repo.upload_blob(&b.digest, b.size as u64, path, chunk, sent)
            .await?;
        tracker.status(&b.digest, BlobStatus::Done);
        Ok(())
    }

    /// Works out what to send for `target`, reading only what the namespace holds.
    fn push_plan(&self, ns: &str, target: &Descriptor, want: Option<&Platform>) -> Result<Plan> {
        let present = |d: &str| self.content.has(ns, d);
        let data = self.read_document(target)?;
        let mut blobs: Vec<Descriptor> = Vec::new();
        let mut seen = BTreeSet::new();
        let mut add_blobs = |this: &Services, desc: &Descriptor, data: &[u8]| -> Result<()> {
            let Doc::Manifest(m) = parse_doc(desc, data)? else {
                return Err(Error::invalid(format!(
                    "{}: an index inside an index cannot be pushed",
                    desc.digest
                )));
            };
            for l in std::iter::once(&m.config).chain(m.layers.iter()) {
                crate::content::digest::validate(&l.digest)?;
                if !present(&l.digest)? {
                    return Err(Error::precondition(format!(
                        "manifest {} refers to {}, which is not in the content store",
                        desc.digest, l.digest
                    )));
                }
                let size = this.content.open_blob(&l.digest)?.metadata()?.len() as i64;
                if size != l.size {
                    return Err(Error::precondition(format!(
                        "blob {}: {size} bytes held, the manifest says {}",
                        l.digest, l.size
                    )));
                }
                if seen.insert(l.digest.clone()) {
                    blobs.push(l.to_store());
                }
            }
            Ok(())
        };
        let ix = match parse_doc(target, &data)? {
            Doc::Manifest(_) => {
                add_blobs(self, target, &data)?;
                return Ok(Plan {
                    blobs,
                    children: Vec::new(),
                    root: (target.clone(), data),
                });
            }
            Doc::Index(ix) => ix,
        };
        let children: Vec<Descriptor> = ix.manifests.iter().map(|m| m.to_store()).collect();
        for c in &children {
            crate::content::digest::validate(&c.digest)?;
        }
        let held: Vec<&Descriptor> = children
            .iter()
            .filter(|c| present(&c.digest).unwrap_or(false))
            .collect();
        if let Some(w) = want {
            // One platform alone: its manifest goes under the tag, the index stays home.
            let pick = platform::select(w, held.iter().copied())
                .cloned()
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "no manifest for platform {} is held",
                        platform::format(w)
                    ))
                })?;
            let mut pick = pick;
            let data = self.read_document(&pick)?;
            if pick.media_type.is_empty() {
                pick.media_type = oci::sniff_media_type(&data).unwrap_or_default();
            }
            add_blobs(self, &pick, &data)?;
            pick.platform = None;
            pick.annotations.clear();
            return Ok(Plan {
                blobs,
                children: Vec::new(),
                root: (pick, data),
            });
        }
        if held.len() != children.len() {
            let missing: Vec<String> = children
                .iter()
                .filter(|c| !present(&c.digest).unwrap_or(false))
                .map(|c| {
                    c.platform
                        .as_ref()
                        .map(platform::format)
                        .unwrap_or_else(|| c.digest.clone())
                })
                .collect();
            return Err(Error::precondition(format!(
                "the index names platforms this namespace does not hold ({}): push one \
                 platform, or pull the others first",
                missing.join(", ")
            )));
        }
        let mut out = Vec::new();
        for mut c in children {
            let data = self.read_document(&c)?;
            if c.media_type.is_empty() {
                c.media_type = oci::sniff_media_type(&data).unwrap_or_default();
            }
            add_blobs(self, &c, &data)?;
            out.push((c, data));
        }
        Ok(Plan {
            blobs,
            children: out,
            root: (target.clone(), data),
        })
    }
}

fn kind(media_type: &str) -> &'static str {
    if oci::is_index(media_type) {
        "index"
    } else {
        "manifest"
    }
}
