//! Images: names pointing at content, with what they reach; import, export and unpacking.

use std::collections::{BTreeSet, HashSet};
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::events::{topic, Payload};
use crate::filters::{Filter, Filterable};
use crate::image::oci::{self, ImageConfig, Index, Manifest, MAX_DOCUMENT};
use crate::image::{platform, reference};
use crate::labels::{self, Labels};
use crate::store::{self, Descriptor, ImageRecord, Platform};

use super::Services;

pub mod export;
pub mod import;
pub mod pull;
pub mod push;
pub mod unpack;

/// Label on committed layer snapshots made by unpacking: the layer's uncompressed digest.
pub const LABEL_DIFF_ID: &str = "sup.io/diff-id";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub labels: Labels,
    pub target: Descriptor,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl Image {
    fn from_record(name: String, rec: ImageRecord) -> Image {
        Image {
            name,
            labels: rec.labels,
            target: rec.target,
            created_at: rec.created_at,
            updated_at: rec.updated_at,
        }
    }
}

impl Filterable for Image {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["name"] => Some(self.name.clone()),
            ["target", "digest"] => Some(self.target.digest.clone()),
            ["target", "media_type"] | ["target", "mediatype"] => {
                Some(self.target.media_type.clone())
            }
            ["labels", k] => self.labels.get(*k).cloned(),
            _ => None,
        }
    }
}

/// One platform of an image, resolved down to its layers.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    pub diff_ids: Vec<String>,
    pub chain_ids: Vec<String>,
    pub config_json: Vec<u8>,
    pub platform: Platform,
}

impl Resolved {
    pub fn chain_id(&self) -> Option<&str> {
        self.chain_ids.last().map(String::as_str)
    }
}

/// An image resolved for one platform, with what it offers and where it is unpacked.
#[derive(Debug, Clone)]
pub struct Inspected {
    pub image: Image,
    pub resolved: Resolved,
    /// Platforms the target offers.
    pub platforms: Vec<Platform>,
    /// Bytes of content the resolved platform uses.
    pub size: i64,
    /// Snapshotters holding the unpacked image.
    pub unpacked: Vec<String>,
}

/// What an image target reaches among the blobs present.
#[derive(Debug, Default)]
pub struct Walk {
    /// Every blob reached: indexes, manifests, configs, layers.
    pub blobs: BTreeSet<String>,
    /// Manifests reached, with their descriptor (carrying the index's platform, if any).
    pub manifests: Vec<(Descriptor, Manifest)>,
}

pub(crate) enum Doc {
    Index(Index),
    Manifest(Manifest),
}

pub(crate) fn parse_doc(desc: &Descriptor, data: &[u8]) -> Result<Doc> {
    let what = format!("{} {}", kind_name(&desc.media_type), desc.digest);
    let mt = if oci::is_index(&desc.media_type) || oci::is_manifest(&desc.media_type) {
        desc.media_type.clone()
    } else {
        oci::sniff_media_type(data).unwrap_or_default()
    };
    if oci::is_index(&mt) {
        Ok(Doc::Index(oci::parse(&what, data)?))
    } else if oci::is_manifest(&mt) {
        Ok(Doc::Manifest(oci::parse(&what, data)?))
    } else {
        Err(Error::invalid(format!(
            "{}: media type {:?} is neither an image index nor a manifest",
            desc.digest, desc.media_type
        )))
    }
}

fn kind_name(mt: &str) -> &'static str {
    if oci::is_index(mt) {
        "index"
    } else if oci::is_manifest(mt) {
        "manifest"
    } else {
        "blob"
    }
}

impl Services {
    fn image_key(ns: &str, name: &str) -> Vec<u8> {
        store::key(ns, name)
    }

    /// Reads a manifest, index or config blob, checking its size against the descriptor.
    pub(crate) fn read_document(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        if desc.size < 0 || desc.size as u64 > MAX_DOCUMENT {
            return Err(Error::invalid(format!(
                "{}: size {} is not a valid document size",
                desc.digest, desc.size
            )));
        }
        let data = self.content.read_small(&desc.digest, MAX_DOCUMENT)?;
        if data.len() as i64 != desc.size {
            return Err(Error::invalid(format!(
                "{}: descriptor says {} bytes, the blob has {}",
                desc.digest,
                desc.size,
                data.len()
            )));
        }
        Ok(data)
    }

    /// Walks what `target` reaches. `present` tells whether a blob can be used. Entries of an
    /// index that are not present are skipped (an index may be kept whole while only some
    /// platforms' content is held); anything else missing is an error made by `missing`.
    pub(crate) fn walk(
        &self,
        target: &Descriptor,
        present: &dyn Fn(&str) -> Result<bool>,
        missing: &dyn Fn(String) -> Error,
    ) -> Result<Walk> {
        let mut walk = Walk::default();
        if !present(&target.digest)? {
            return Err(missing(format!(
                "{} {}",
                kind_name(&target.media_type),
                target.digest
            )));
        }
        let mut todo = vec![(target.clone(), 0usize)];
        while let Some((desc, depth)) = todo.pop() {
            if depth > 4 {
                return Err(Error::invalid(format!(
                    "{}: indexes nested too deep",
                    desc.digest
                )));
            }
            if !walk.blobs.insert(desc.digest.clone()) {
                continue;
            }
            let data = self.read_document(&desc)?;
            match parse_doc(&desc, &data)? {
                Doc::Index(ix) => {
                    for child in &ix.manifests {
                        crate::content::digest::validate(&child.digest)?;
                        if present(&child.digest)? {
                            todo.push((child.to_store(), depth + 1));
                        }
                    }
                }
                Doc::Manifest(m) => {
                    for d in std::iter::once(&m.config).chain(m.layers.iter()) {
                        crate::content::digest::validate(&d.digest)?;
                        if !present(&d.digest)? {
                            return Err(missing(format!(
                                "manifest {} refers to {} which",
                                desc.digest, d.digest
                            )));
                        }
                        walk.blobs.insert(d.digest.clone());
                    }
                    walk.manifests.push((desc, m));
                }
            }
        }
        Ok(walk)
    }

    /// Resolves one platform (the host's when `want` is None) of an image's target.
    pub(crate) fn resolve(
        &self,
        target: &Descriptor,
        want: Option<&Platform>,
        present: &dyn Fn(&str) -> Result<bool>,
    ) -> Result<Resolved> {
        let walk = self.walk(target, present, &|what| {
            Error::precondition(format!("{what} is missing from the content store"))
        })?;
        let explicit = want.is_some();
        let want = want.cloned().unwrap_or_else(platform::host);
        let chosen = if oci::is_index(&target.media_type)
            || walk.manifests.len() != 1
            || walk.manifests[0].0.digest != target.digest
        {
            let descs: Vec<Descriptor> = walk.manifests.iter().map(|(d, _)| d.clone()).collect();
            let lone = (descs.len() == 1 && descs[0].platform.is_none()).then(|| &descs[0]);
            let pick = platform::select(&want, descs.iter())
                .or(lone)
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "image {}: no manifest for platform {}",
                        target.digest,
                        platform::format(&want)
                    ))
                })?;
            walk.manifests
                .iter()
                .find(|(d, _)| d.digest == pick.digest)
                .cloned()
                .ok_or_else(|| Error::internal("selected manifest vanished"))?
        } else {
            walk.manifests[0].clone()
        };
        let (mdesc, manifest) = chosen;
        let config = manifest.config.to_store();
        let config_json = self.read_document(&config)?;
        let cfg: ImageConfig = oci::parse(&format!("config {}", config.digest), &config_json)?;
        let have = Platform {
            os: cfg.os.clone(),
            architecture: cfg.architecture.clone(),
            variant: cfg.variant.clone(),
            os_version: String::new(),
        };
        // A lone manifest names its platform only in its config: check it when one was asked.
        if explicit && !cfg.os.is_empty() && !platform::matches(&want, &have) {
            return Err(Error::NotFound(format!(
                "image {}: it is for {}, not {}",
                target.digest,
                platform::format(&have),
                platform::format(&want)
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
        for d in &cfg.rootfs.diff_ids {
            crate::content::digest::validate(d)
                .map_err(|e| e.context(format!("image config {}", config.digest)))?;
        }
        let chain_ids = oci::chain_ids(&cfg.rootfs.diff_ids);
        Ok(Resolved {
            platform: have,
            manifest: mdesc,
            config,
            layers: manifest.layers.iter().map(|l| l.to_store()).collect(),
            diff_ids: cfg.rootfs.diff_ids,
            chain_ids,
            config_json,
        })
    }

    fn in_namespace<'a>(&'a self, ns: &'a str) -> impl Fn(&str) -> Result<bool> + 'a {
        move |d: &str| self.content.has(ns, d)
    }

    pub fn image_get(&self, ns: &str, name: &str) -> Result<Image> {
        let name = reference::normalize(name)?;
        let rec: ImageRecord = store::get(&self.store.images, &Self::image_key(ns, &name))?
            .ok_or_else(|| Error::not_found(format!("image {name:?} in namespace {ns:?}")))?;
        Ok(Image::from_record(name, rec))
    }

    pub fn image_list(&self, ns: &str, filters: &[String]) -> Result<Vec<Image>> {
        let filter = Filter::parse(filters)?;
        Ok(
            store::scan::<ImageRecord>(&self.store.images, &store::ns_prefix(ns))?
                .into_iter()
                .map(|(n, r)| Image::from_record(n, r))
                .filter(|i| filter.matches(i))
                .collect(),
        )
    }

    fn check_target(&self, ns: &str, target: &Descriptor) -> Result<()> {
        crate::content::digest::validate(&target.digest)?;
        if !oci::is_index(&target.media_type) && !oci::is_manifest(&target.media_type) {
            return Err(Error::invalid(format!(
                "image target {}: media type {:?} is neither an index nor a manifest",
                target.digest, target.media_type
            )));
        }
        self.walk(target, &self.in_namespace(ns), &|what| {
            Error::precondition(format!(
                "{what} is not in the content store of namespace {ns:?}"
            ))
        })?;
        Ok(())
    }

    pub async fn image_create(&self, ns: &str, image: Image) -> Result<Image> {
        let name = reference::normalize(&image.name)?;
        labels::validate(&image.labels)?;
        self.namespace_ensure(ns)?;
        self.check_target(ns, &image.target)?;
        let now = SystemTime::now();
        let rec = ImageRecord {
            target: image.target,
            labels: image.labels,
            created_at: now,
            updated_at: now,
        };
        let swapped = self.store.images.compare_and_swap(
            Self::image_key(ns, &name),
            None as Option<&[u8]>,
            Some(store::encode(&rec)?),
        )?;
        self.images_written();
        if swapped.is_err() {
            return Err(Error::already_exists(format!(
                "image {name:?} in namespace {ns:?}"
            )));
        }
        self.store.flush().await?;
        self.publish_image(ns, topic::IMAGE_CREATE, &name, &rec);
        Ok(Image::from_record(name, rec))
    }

    pub async fn image_update(&self, ns: &str, image: Image, paths: &[String]) -> Result<Image> {
        let name = reference::normalize(&image.name)?;
        labels::validate(&image.labels)?;
        let key = Self::image_key(ns, &name);
        let mut rec: ImageRecord = store::get(&self.store.images, &key)?
            .ok_or_else(|| Error::not_found(format!("image {name:?} in namespace {ns:?}")))?;
        let old_target = rec.target.clone();
        let others = if paths.is_empty() {
            rec.labels = image.labels.clone();
            vec!["target"]
        } else {
            labels::apply_mask(&mut rec.labels, &image.labels, paths)
        };
        for p in others {
            match p {
                "target" => {
                    self.check_target(ns, &image.target)?;
                    rec.target = image.target.clone();
                }
                other => {
                    return Err(Error::invalid(format!(
                        "image {name:?}: field {other:?} cannot be updated"
                    )))
                }
            }
        }
        labels::validate(&rec.labels)?;
        rec.updated_at = SystemTime::now();
        self.store.images.insert(key, store::encode(&rec)?)?;
        self.images_written();
        self.store.flush().await?;
        self.publish_image(ns, topic::IMAGE_UPDATE, &name, &rec);
        if old_target.digest != rec.target.digest {
            self.release(ns, &[old_target]).await?;
        }
        Ok(Image::from_record(name, rec))
    }

    pub async fn image_delete(&self, ns: &str, name: &str) -> Result<()> {
        let name = reference::normalize(name)?;
        let key = Self::image_key(ns, &name);
        let rec: ImageRecord = store::get(&self.store.images, &key)?
            .ok_or_else(|| Error::not_found(format!("image {name:?} in namespace {ns:?}")))?;
        self.store.images.remove(&key)?;
        self.images_written();
        self.store.flush().await?;
        self.publish_image(ns, topic::IMAGE_DELETE, &name, &rec);
        self.release(ns, &[rec.target]).await
    }

    pub(crate) fn publish_image(
        &self,
        ns: &str,
        topic: &'static str,
        name: &str,
        rec: &ImageRecord,
    ) {
        self.events.publish(
            ns,
            topic,
            Payload::Image {
                name: name.to_string(),
                digest: rec.target.digest.clone(),
                labels: rec.labels.clone(),
            },
        );
    }

    /// Everything the images of a namespace reach: blobs and layer chain IDs.
    fn namespace_roots(&self, ns: &str) -> Result<(HashSet<String>, HashSet<String>)> {
        let mut blobs = HashSet::new();
        let mut chains = HashSet::new();
        for img in self.image_list(ns, &[])? {
            let present = self.in_namespace(ns);
            let Ok(walk) = self.walk(&img.target, &present, &|w| Error::precondition(w)) else {
                continue;
            };
            blobs.extend(walk.blobs.iter().cloned());
            for (_, m) in &walk.manifests {
                if let Some(ids) = self.diff_ids_of(m) {
                    chains.extend(oci::chain_ids(&ids));
                }
            }
        }
        Ok((blobs, chains))
    }

    fn diff_ids_of(&self, m: &Manifest) -> Option<Vec<String>> {
        let data = self.read_document(&m.config.to_store()).ok()?;
        let cfg: ImageConfig = serde_json::from_slice(&data).ok()?;
        Some(cfg.rootfs.diff_ids)
    }

    /// Releases what the given targets reached and nothing else in the namespace still
    /// needs: content records (and blobs no namespace holds) and unpacked layer snapshots
    /// that have no children.
    pub(crate) async fn release(&self, ns: &str, targets: &[Descriptor]) -> Result<()> {
        let (keep_blobs, keep_chains) = self.namespace_roots(ns)?;
        let mut drop_blobs = BTreeSet::new();
        let mut drop_chains: Vec<Vec<String>> = Vec::new();
        for t in targets {
            let present = self.in_namespace(ns);
            let Ok(walk) = self.walk(t, &present, &|w| Error::precondition(w)) else {
                continue;
            };
            for (_, m) in &walk.manifests {
                if let Some(ids) = self.diff_ids_of(m) {
                    drop_chains.push(oci::chain_ids(&ids));
                }
            }
            drop_blobs.extend(walk.blobs.into_iter().filter(|b| !keep_blobs.contains(b)));
        }
        for chain in drop_chains {
            for s in self.snapshotters.values() {
                for id in chain.iter().rev() {
                    if keep_chains.contains(id) {
                        break;
                    }
                    let (s2, n, k) = (s.clone(), ns.to_string(), id.clone());
                    let removed = tokio::task::spawn_blocking(move || s2.remove(&n, &k)).await?;
                    match removed {
                        Ok(()) => self.events.publish(
                            ns,
                            topic::SNAPSHOT_REMOVE,
                            Payload::Snapshot {
                                snapshotter: s.name().to_string(),
                                key: id.clone(),
                                parent: String::new(),
                                name: String::new(),
                            },
                        ),
                        Err(Error::NotFound(_)) => continue,
                        // Still a parent of something (a container, another image): stop here.
                        Err(Error::FailedPrecondition(_)) => break,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        for d in &drop_blobs {
            match self.content.delete(ns, d) {
                Ok(()) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.store.flush().await?;
        Ok(())
    }

    /// Whether any image of the namespace reaches the blob.
    pub fn blob_in_use(&self, ns: &str, digest: &str) -> Result<Option<String>> {
        for img in self.image_list(ns, &[])? {
            let present = self.in_namespace(ns);
            if let Ok(walk) = self.walk(&img.target, &present, &|w| Error::precondition(w)) {
                if walk.blobs.contains(digest) {
                    return Ok(Some(img.name));
                }
            }
        }
        Ok(None)
    }

    /// Resolved view of one platform of an image, and where it is unpacked.
    pub fn image_inspect(
        &self,
        ns: &str,
        name: &str,
        want: Option<&Platform>,
    ) -> Result<Inspected> {
        let image = self.image_get(ns, name)?;
        let present = self.in_namespace(ns);
        let resolved = self.resolve(&image.target, want, &present)?;
        let walk = self.walk(&image.target, &present, &|w| Error::precondition(w))?;
        let platforms: Vec<Platform> = walk
            .manifests
            .iter()
            .filter_map(|(d, _)| d.platform.clone())
            .collect();
        let platforms = if platforms.is_empty() {
            vec![resolved.platform.clone()]
        } else {
            platforms
        };
        let size = resolved.manifest.size
            + resolved.config.size
            + resolved.layers.iter().map(|l| l.size).sum::<i64>();
        let mut unpacked = Vec::new();
        if let Some(top) = resolved.chain_id() {
            for (name, s) in &self.snapshotters {
                if s.stat(ns, top).is_ok() {
                    unpacked.push(name.clone());
                }
            }
        }
        Ok(Inspected {
            image,
            resolved,
            platforms,
            size,
            unpacked,
        })
    }
}

impl Services {
    /// Unpacks one platform of an image into a snapshotter (a no-op for layers already
    /// there) and returns the chain ID of its top layer.
    pub async fn image_unpack(
        self: &std::sync::Arc<Self>,
        ns: &str,
        name: &str,
        snapshotter: &str,
        want: Option<Platform>,
    ) -> Result<String> {
        let _unpacking = self.gc_lock.read().await;
        self.unpack_locked(ns, name, snapshotter, want).await
    }

    /// `image_unpack` for a caller that already holds the GC lock for reading.
    pub(crate) async fn unpack_locked(
        self: &std::sync::Arc<Self>,
        ns: &str,
        name: &str,
        snapshotter: &str,
        want: Option<Platform>,
    ) -> Result<String> {
        let image = self.image_get(ns, name)?;
        let s = self.snapshotter(snapshotter)?;
        let this = self.clone();
        let ns = ns.to_string();
        tokio::task::spawn_blocking(move || {
            let present = this.in_namespace(&ns);
            let r = this.resolve(&image.target, want.as_ref(), &present)?;
            let top = r
                .chain_id()
                .ok_or_else(|| Error::invalid(format!("image {:?} has no layers", image.name)))?
                .to_string();
            this.unpack_blocking(&ns, &s, &r, &|_, _, _| {})?;
            Ok(top)
        })
        .await?
    }
}
