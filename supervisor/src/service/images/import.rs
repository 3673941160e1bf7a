//! Import of image archives, streamed: OCI image layouts and `docker save` archives, plain or
//! gzip-compressed. Blobs are verified and written to the content store as they stream by;
//! names, manifests and unpacking follow once the whole archive has been read. A failure at
//! any point rolls back everything the import made: content records, blobs and snapshots.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;

use crate::content::{digest, Hold};
use crate::error::{Error, Result};
use crate::events::topic;
use crate::image::oci::{self, JsonDescriptor, Manifest, MAX_DOCUMENT};
use crate::image::{compression, reference};
use crate::labels::{self, Labels};
use crate::service::Services;
use crate::snapshot::Snapshotter;
use crate::store::{self, Descriptor, ImageRecord, Platform};

use super::unpack::Unpacked;
use super::Image;

/// Most bytes of small files (index, manifests, configs) an archive may hold in all.
const MAX_SMALL_TOTAL: u64 = 64 << 20;

#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub name: Option<String>,
    pub snapshotter: String,
    pub platform: Option<Platform>,
    pub unpack: bool,
    pub labels: Labels,
}

#[derive(Debug, Clone)]
pub enum ImportEvent {
    Unpacking {
        layer: String,
        index: usize,
        count: usize,
    },
}

/// What an import made, for the caller to report and to release what it replaced.
pub struct Imported {
    pub images: Vec<Image>,
    pub replaced: Vec<Descriptor>,
}

/// Everything an import has made so far, to undo on failure.
#[derive(Default)]
struct Undo {
    holds: Vec<Hold>,
    created_blobs: Vec<String>,
    recorded: Vec<String>,
    unpacked: Vec<(Arc<dyn Snapshotter>, Unpacked)>,
}

/// What was read from the archive.
#[derive(Default)]
struct Archive {
    /// Small files by path: oci-layout, index.json, manifest.json, configs.
    small: HashMap<String, Vec<u8>>,
    small_total: u64,
    /// Files written to the content store, by path.
    blobs: HashMap<String, String>,
    /// Links by path: target path.
    links: HashMap<String, String>,
}

impl Archive {
    fn resolve<'a>(&'a self, mut path: &'a str) -> Result<&'a str> {
        for _ in 0..16 {
            match self.links.get(path) {
                Some(t) => path = t,
                None => return Ok(path),
            }
        }
        Err(Error::invalid(format!("archive: link loop at {path:?}")))
    }

    fn blob_of(&self, path: &str) -> Result<Option<&String>> {
        Ok(self.blobs.get(self.resolve(path)?))
    }
}

fn clean_path(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out.join("/")
}

fn is_small_name(name: &str) -> bool {
    matches!(
        name,
        "oci-layout" | "index.json" | "manifest.json" | "repositories"
    ) || name.ends_with(".json")
        || name.ends_with("/json")
        || name.ends_with("/VERSION")
}

fn bad(msg: impl std::fmt::Display) -> Error {
    Error::invalid(format!(
        "archive: {}",
        crate::error::printable(&msg.to_string())
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl Services {
    /// Imports an archive read from `input`, the way every caller must: under the GC lock
    /// (held for reading, so a collection cannot sweep blobs and snapshots the import has
    /// written but no image names yet), on a blocking thread, and releasing afterwards the
    /// content of the images it replaced. Progress is reported through `progress`, on that
    /// thread.
    pub async fn image_import<R, P>(
        self: &Arc<Self>,
        ns: &str,
        opts: ImportOptions,
        mut input: R,
        progress: P,
    ) -> Result<Vec<Image>>
    where
        R: Read + Send + 'static,
        P: Fn(ImportEvent) + Send + Sync + 'static,
    {
        let _importing = self.gc_lock.read().await;
        let (this, n) = (self.clone(), ns.to_string());
        let imported = tokio::task::spawn_blocking(move || {
            this.import_blocking(&n, &opts, &mut input, &progress)
        })
        .await??;
        if let Err(e) = self.release(ns, &imported.replaced).await {
            tracing::warn!(error = %e, "cannot release replaced image content");
        }
        Ok(imported.images)
    }

    /// Imports an archive read from `input` (blocking), with the GC lock already held by the
    /// caller. Progress is reported through `progress`.
    fn import_blocking(
        &self,
        ns: &str,
        opts: &ImportOptions,
        input: &mut dyn Read,
        progress: &(dyn Fn(ImportEvent) + Sync),
    ) -> Result<Imported> {
        crate::service::namespaces::validate(ns)?;
        labels::validate(&opts.labels)?;
        let name = opts.name.as_deref().map(reference::normalize).transpose()?;
        let snapshotter = self.snapshotter(&opts.snapshotter)?;
        let mut undo = Undo::default();
        let result = self.import_inner(ns, opts, name, &snapshotter, input, progress, &mut undo);
        match result {
            Ok(imported) => {
                self.finish_undo(ns, undo, false);
                Ok(imported)
            }
            Err(e) => {
                tracing::info!(namespace = ns, error = %e, "import failed; rolling back");
                self.finish_undo(ns, undo, true);
                Err(e)
            }
        }
    }

    fn finish_undo(&self, ns: &str, undo: Undo, failed: bool) {
        if failed {
            for (s, done) in undo.unpacked.iter().rev() {
                self.undo_unpack(ns, s, done);
            }
            for key in &undo.recorded {
                if let Err(e) = self.store.content.remove(key.as_bytes()) {
                    tracing::warn!(error = %e, "cannot remove content record of failed import");
                }
            }
            if let Err(e) = self.store.flush_blocking() {
                tracing::warn!(error = %e, "cannot flush rollback of failed import");
            }
        }
        drop(undo.holds);
        for d in &undo.created_blobs {
            if let Err(e) = self.content.remove_if_unreferenced(d) {
                tracing::warn!(digest = %d, error = %e, "cannot remove blob of failed import");
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn import_inner(
        &self,
        ns: &str,
        opts: &ImportOptions,
        name: Option<String>,
        snapshotter: &Arc<dyn Snapshotter>,
        input: &mut dyn Read,
        progress: &(dyn Fn(ImportEvent) + Sync),
        undo: &mut Undo,
    ) -> Result<Imported> {
        let archive = self.read_archive(input, undo)?;
        let mut named = if archive.small.contains_key("index.json") {
            self.oci_images(&archive)?
        } else if archive.small.contains_key("manifest.json") {
            self.docker_images(&archive, undo)?
        } else {
            return Err(bad(
                "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
            ));
        };
        if named.is_empty() {
            return Err(bad("holds no image"));
        }
        if let Some(n) = name {
            if named.len() != 1 {
                return Err(Error::invalid(format!(
                    "archive holds {} images; a name can only be given to one",
                    named.len()
                )));
            }
            named[0].0 = Some(n);
        }
        let mut images: BTreeMap<String, Descriptor> = BTreeMap::new();
        for (n, target) in named {
            let n = n.ok_or_else(|| {
                Error::invalid(format!(
                    "archive: image {} has no name; give it one",
                    target.digest
                ))
            })?;
            images.insert(n, target);
        }

        // Everything the images reach must be in the archive (or already on disk).
        let on_disk = |d: &str| self.content.blob_exists(d);
        let mut reached = std::collections::BTreeSet::new();
        for target in images.values() {
            let walk = self.walk(target, &on_disk, &|what| {
                bad(format!("{what} is missing from the archive"))
            })?;
            reached.extend(walk.blobs);
        }
        for d in &reached {
            undo.holds.push(self.content.hold(d));
        }

        // Resolve the platform to unpack before recording anything.
        let mut to_unpack = Vec::new();
        if opts.unpack {
            let mut seen = std::collections::HashSet::new();
            for (n, target) in &images {
                let r = self
                    .resolve(target, opts.platform.as_ref(), &on_disk)
                    .map_err(|e| match e {
                        Error::NotFound(m) => Error::invalid(format!("image {n:?}: {m}")),
                        other => other,
                    })?;
                if seen.insert(r.manifest.digest.clone()) {
                    to_unpack.push(r);
                }
            }
        }

        for r in &to_unpack {
            let report = |index: usize, count: usize, layer: &str| {
                progress(ImportEvent::Unpacking {
                    layer: layer.to_string(),
                    index,
                    count,
                })
            };
            let done = self.unpack_blocking(ns, snapshotter, r, &report)?;
            undo.unpacked.push((snapshotter.clone(), done));
        }

        // Content records and image records become durable together, after the unpack: a
        // crash before this point leaves nothing visible, only garbage to collect.
        self.namespace_ensure(ns)?;
        for d in &reached {
            if !self.content.has(ns, d)? {
                self.content.record(ns, d, &Labels::new())?;
                undo.recorded
                    .push(String::from_utf8_lossy(&store::key(ns, d)).into_owned());
            }
        }
        let now = SystemTime::now();
        let mut out = Vec::new();
        let mut replaced = Vec::new();
        let mut published = Vec::new();
        for (n, target) in images {
            let key = store::key(ns, &n);
            let prev: Option<ImageRecord> = store::get(&self.store.images, &key)?;
            let rec = match prev {
                Some(mut p) => {
                    if p.target.digest != target.digest {
                        replaced.push(p.target.clone());
                    }
                    p.target = target;
                    p.labels.extend(opts.labels.clone());
                    p.updated_at = now;
                    published.push((topic::IMAGE_UPDATE, n.clone(), p.clone()));
                    p
                }
                None => {
                    let r = ImageRecord {
                        target,
                        labels: opts.labels.clone(),
                        created_at: now,
                        updated_at: now,
                    };
                    published.push((topic::IMAGE_CREATE, n.clone(), r.clone()));
                    r
                }
            };
            self.store.images.insert(key, store::encode(&rec)?)?;
            self.images_written();
            out.push(Image::from_record(n, rec));
        }
        self.store.flush_blocking()?;
        for (t, n, rec) in &published {
            self.publish_image(ns, t, n, rec);
        }
        Ok(Imported {
            images: out,
            replaced,
        })
    }

    fn read_archive(&self, input: &mut dyn Read, undo: &mut Undo) -> Result<Archive> {
        let mut buffered = BufReader::with_capacity(1 << 20, input);
        let head = buffered
            .fill_buf()
            .map_err(|e| bad(format!("reading: {e}")))?;
        let gz = head.starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn Read + '_> = if gz {
            Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
        } else {
            Box::new(buffered)
        };
        let mut tar = tar::Archive::new(reader);
        let mut archive = Archive::default();
        let entries = tar
            .entries()
            .map_err(|e| bad(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(format!("reading the tar stream: {e}")))?;
            let raw = entry
                .path()
                .map_err(|e| bad(format!("entry name: {e}")))?
                .to_string_lossy()
                .into_owned();
            let path = clean_path(&raw);
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name()
                    .map_err(|e| bad(format!("link {raw:?}: {e}")))?
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let resolved = if kind.is_symlink() && !target.starts_with('/') {
                    let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    clean_path(&format!("{dir}/{target}"))
                } else {
                    clean_path(&target)
                };
                archive.links.insert(path, resolved);
                continue;
            }
            if !(kind.is_file() || kind == tar::EntryType::Continuous) {
                continue;
            }
            let size = entry.size();
            if let Some(rest) = path.strip_prefix("blobs/") {
                let (alg, hex) = rest
                    .split_once('/')
                    .ok_or_else(|| bad(format!("unexpected file {raw:?}")))?;
                let expected = format!("{alg}:{hex}");
                digest::validate(&expected)
                    .map_err(|e| e.context(format!("archive file {raw:?}")))?;
                self.take_blob(&mut entry, Some(&expected), size, undo)
                    .map_err(|e| e.context(format!("archive file {raw:?}")))?;
                archive.blobs.insert(path, expected);
            } else if is_small_name(&path) && size <= MAX_DOCUMENT {
                archive.small_total += size;
                if archive.small_total > MAX_SMALL_TOTAL {
                    return Err(bad("too many small files"));
                }
                let mut data = Vec::with_capacity(size as usize);
                entry
                    .read_to_end(&mut data)
                    .map_err(|e| bad(format!("reading {raw:?}: {e}")))?;
                archive.small.insert(path, data);
            } else {
                let d = self
                    .take_blob(&mut entry, None, size, undo)
                    .map_err(|e| e.context(format!("archive file {raw:?}")))?;
                archive.blobs.insert(path, d);
            }
        }
        Ok(archive)
    }

    fn take_blob(
        &self,
        entry: &mut dyn Read,
        expected: Option<&str>,
        size: u64,
        undo: &mut Undo,
    ) -> Result<String> {
        let (d, _, created, hold) = self
            .content
            .write_blob(entry, expected, Some(size as i64))?;
        undo.holds.push(hold);
        if created {
            undo.created_blobs.push(d.clone());
        }
        Ok(d)
    }

    fn oci_images(&self, archive: &Archive) -> Result<Vec<(Option<String>, Descriptor)>> {
        if let Some(layout) = archive.small.get("oci-layout") {
            #[derive(Deserialize)]
            struct Layout {
                #[serde(rename = "imageLayoutVersion")]
                version: String,
            }
            let l: Layout = oci::parse("oci-layout", layout)?;
            if !l.version.starts_with("1.") {
                return Err(bad(format!(
                    "image layout version {:?} is not supported",
                    l.version
                )));
            }
        }
        let data = archive
            .small
            .get("index.json")
            .map(Vec::as_slice)
            .unwrap_or_default();
        let index: oci::Index = oci::parse("archive index.json", data)?;
        let mut out = Vec::new();
        for d in &index.manifests {
            digest::validate(&d.digest)?;
            let mut desc = d.to_store();
            if desc.media_type.is_empty() {
                desc.media_type = self.sniff_blob_type(&desc.digest)?;
            }
            if !oci::is_index(&desc.media_type) && !oci::is_manifest(&desc.media_type) {
                continue;
            }
            let name = oci_name(d)?;
            // The naming annotations belong to the archive, not to the image.
            desc.annotations.remove(oci::ANNOTATION_IMAGE_NAME);
            desc.annotations.remove(oci::ANNOTATION_REF_NAME);
            out.push((name, desc));
        }
        Ok(out)
    }

    fn sniff_blob_type(&self, d: &str) -> Result<String> {
        let data = self.content.read_small(d, MAX_DOCUMENT)?;
        oci::sniff_media_type(&data).ok_or_else(|| bad(format!("{d}: not a manifest or index")))
    }

    fn docker_images(
        &self,
        archive: &Archive,
        undo: &mut Undo,
    ) -> Result<Vec<(Option<String>, Descriptor)>> {
        let data = archive
            .small
            .get("manifest.json")
            .map(Vec::as_slice)
            .unwrap_or_default();
        let entries: Vec<DockerEntry> = oci::parse("archive manifest.json", data)?;
        let mut out = Vec::new();
        for e in entries {
            let config_path = clean_path(&e.config);
            let config_digest = match archive.blob_of(&config_path)? {
                Some(d) => d.clone(),
                None => {
                    let bytes = archive
                        .small
                        .get(archive.resolve(&config_path)?)
                        .ok_or_else(|| bad(format!("config {:?} is missing", e.config)))?;
                    let d = self.take_blob(&mut &bytes[..], None, bytes.len() as u64, undo)?;
                    let stem = config_path
                        .rsplit('/')
                        .next()
                        .unwrap_or_default()
                        .trim_end_matches(".json");
                    if stem.len() == 64 && format!("sha256:{stem}") != d {
                        return Err(bad(format!("config {:?} has digest {d}", e.config)));
                    }
                    d
                }
            };
            let config_size = self
                .content
                .open_blob(&config_digest)?
                .metadata()
                .map_err(|e| Error::io("config", e))?
                .len() as i64;
            let mut layers = Vec::new();
            for l in &e.layers {
                let p = clean_path(l);
                let d = archive
                    .blob_of(&p)?
                    .ok_or_else(|| bad(format!("layer {l:?} is missing")))?
                    .clone();
                let mut head = [0u8; 4];
                let mut f = self.content.open_blob(&d)?;
                let n = read_up_to(&mut f, &mut head)?;
                let size = f.metadata().map_err(|e| Error::io("layer", e))?.len() as i64;
                let media_type = match compression::sniff(&head[..n]) {
                    compression::Compression::Gzip => oci::DOCKER_LAYER_GZIP,
                    compression::Compression::Zstd => oci::OCI_LAYER_ZSTD,
                    compression::Compression::None => oci::DOCKER_LAYER_TAR,
                };
                layers.push(JsonDescriptor {
                    media_type: media_type.to_string(),
                    digest: d,
                    size,
                    annotations: Labels::new(),
                    platform: None,
                    urls: Vec::new(),
                });
            }
            let manifest = Manifest {
                schema_version: 2,
                media_type: oci::DOCKER_MANIFEST.to_string(),
                config: JsonDescriptor {
                    media_type: oci::DOCKER_CONFIG.to_string(),
                    digest: config_digest,
                    size: config_size,
                    annotations: Labels::new(),
                    platform: None,
                    urls: Vec::new(),
                },
                layers,
                annotations: Labels::new(),
            };
            let bytes = serde_json::to_vec(&manifest)?;
            let d = self.take_blob(&mut &bytes[..], None, bytes.len() as u64, undo)?;
            let target = Descriptor {
                media_type: oci::DOCKER_MANIFEST.to_string(),
                digest: d,
                size: bytes.len() as i64,
                annotations: Labels::new(),
                platform: None,
            };
            let tags = e.repo_tags.unwrap_or_default();
            if tags.is_empty() {
                out.push((None, target));
            } else {
                for t in tags {
                    out.push((Some(reference::normalize(&t)?), target.clone()));
                }
            }
        }
        Ok(out)
    }
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading blob", e)),
        }
    }
    Ok(n)
}

/// The name an OCI index entry gives its image: the full name annotation, else a reference
/// name that is a whole reference (a bare tag names no repository).
fn oci_name(d: &JsonDescriptor) -> Result<Option<String>> {
    if let Some(n) = d.annotations.get(oci::ANNOTATION_IMAGE_NAME) {
        return reference::normalize(n).map(Some);
    }
    if let Some(r) = d.annotations.get(oci::ANNOTATION_REF_NAME) {
        if r.contains('/') || r.contains(':') || r.contains('@') {
            return reference::normalize(r).map(Some);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned() {
        assert_eq!(clean_path("./blobs/sha256/x"), "blobs/sha256/x");
        assert_eq!(clean_path("a/../b"), "b");
        assert_eq!(clean_path("/../../manifest.json"), "manifest.json");
    }
}
