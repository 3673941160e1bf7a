//! Images and image archives made in code: an [`ImageBuilder`] turns layers into a config and
//! a manifest; [`OciArchive`] writes OCI image layouts (single manifests or multi-platform
//! indexes) and [`DockerArchive`] writes `docker save` archives.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::digest::{chain_ids, hex_part, sha256};
use crate::layer::Layer;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Annotation containerd reads the full image name from.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI layout's reference annotation.
pub const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OS/architecture pair, GOARCH spelling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: String,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: &str) -> Platform {
        Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: variant.into(),
        }
    }

    /// The platform of the machine running the tests.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        let variant = if arch == "arm64" { "v8" } else { "" };
        Platform::new("linux", arch, variant)
    }

    /// A platform that is surely not the host's.
    pub fn foreign() -> Platform {
        if Platform::host().architecture == "s390x" {
            Platform::new("linux", "riscv64", "")
        } else {
            Platform::new("linux", "s390x", "")
        }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({"os": self.os, "architecture": self.architecture});
        if !self.variant.is_empty() {
            v["variant"] = json!(self.variant);
        }
        v
    }
}

/// Builds one image (one platform): config and manifest over a list of layers.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    layers: Vec<Layer>,
    platform: Platform,
    config: Value,
    docker_media_types: bool,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageBuilder {
    pub fn new() -> ImageBuilder {
        ImageBuilder {
            layers: Vec::new(),
            platform: Platform::host(),
            config: json!({
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
            }),
            docker_media_types: false,
        }
    }

    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    pub fn platform(mut self, platform: Platform) -> Self {
        self.platform = platform;
        self
    }

    /// The image config's `config` object (Env, Cmd, User, WorkingDir...).
    pub fn runtime_config(mut self, config: Value) -> Self {
        self.config = config;
        self
    }

    /// Use Docker's schema 2 media types instead of OCI's.
    pub fn docker_media_types(mut self) -> Self {
        self.docker_media_types = true;
        self
    }

    pub fn build(self) -> Image {
        let diff_ids: Vec<String> = self.layers.iter().map(|l| l.diff_id.clone()).collect();
        let history: Vec<Value> = self
            .layers
            .iter()
            .map(|_| json!({"created": "2023-11-14T22:13:20Z", "created_by": "sup-tests"}))
            .collect();
        let mut config = json!({
            "created": "2023-11-14T22:13:20Z",
            "os": self.platform.os,
            "architecture": self.platform.architecture,
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        if !self.platform.variant.is_empty() {
            config["variant"] = json!(self.platform.variant);
        }
        let config = serde_json::to_vec(&config).expect("json");
        let (manifest_type, config_type) = if self.docker_media_types {
            (DOCKER_MANIFEST, DOCKER_CONFIG)
        } else {
            (OCI_MANIFEST, OCI_CONFIG)
        };
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| {
                let media_type = if self.docker_media_types {
                    l.compression.docker_media_type()
                } else {
                    l.media_type()
                };
                json!({"mediaType": media_type, "digest": l.digest, "size": l.blob.len()})
            })
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": sha256(&config), "size": config.len()},
            "layers": layers,
        });
        let manifest = serde_json::to_vec(&manifest).expect("json");
        Image {
            manifest_media_type: manifest_type.to_string(),
            config_digest: sha256(&config),
            manifest_digest: sha256(&manifest),
            config,
            manifest,
            layers: self.layers,
            platform: self.platform,
        }
    }
}

/// One built image: its blobs and their digests.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<Layer>,
    pub platform: Platform,
}

impl Image {
    /// What the config claims.
    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }

    /// Chain IDs of every layer, bottom first.
    pub fn chain_ids(&self) -> Vec<String> {
        chain_ids(&self.diff_ids())
    }

    /// Chain ID of the top layer: the snapshot the image unpacks to.
    pub fn chain_id(&self) -> String {
        self.chain_ids().last().cloned().unwrap_or_default()
    }

    /// Every blob of the image, digest -> bytes.
    fn blobs(&self, into: &mut BTreeMap<String, Vec<u8>>) {
        into.insert(self.manifest_digest.clone(), self.manifest.clone());
        into.insert(self.config_digest.clone(), self.config.clone());
        for l in &self.layers {
            into.insert(l.digest.clone(), l.blob.clone());
        }
    }

    fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.manifest_media_type,
            "digest": self.manifest_digest,
            "size": self.manifest.len(),
        })
    }
}

/// Annotations naming an image the way containerd's export does: the full name in
/// `io.containerd.image.name`, the tag in `org.opencontainers.image.ref.name`.
pub fn name_annotations(name: &str) -> BTreeMap<String, String> {
    let tag = name
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map(|(_, t)| t.to_string())
        .unwrap_or_else(|| "latest".to_string());
    BTreeMap::from([
        (CONTAINERD_NAME.to_string(), name.to_string()),
        (OCI_REF_NAME.to_string(), tag),
    ])
}

/// An OCI image layout, written as a tar.
#[derive(Clone, Debug, Default)]
pub struct OciArchive {
    blobs: BTreeMap<String, Vec<u8>>,
    index: Vec<Value>,
}

impl OciArchive {
    pub fn new() -> OciArchive {
        OciArchive::default()
    }

    /// Adds a single-manifest image under `annotations` (see [`name_annotations`]).
    pub fn image(mut self, image: &Image, annotations: BTreeMap<String, String>) -> Self {
        image.blobs(&mut self.blobs);
        let mut desc = image.descriptor();
        desc["annotations"] = json!(annotations);
        self.index.push(desc);
        self
    }

    /// Adds a multi-platform image: an index blob listing `images` with their platforms.
    pub fn multi_platform(
        mut self,
        images: &[Image],
        annotations: BTreeMap<String, String>,
    ) -> Self {
        let manifests: Vec<Value> = images
            .iter()
            .map(|img| {
                img.blobs(&mut self.blobs);
                let mut d = img.descriptor();
                d["platform"] = img.platform.to_json();
                d
            })
            .collect();
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        }))
        .expect("json");
        let digest = sha256(&index);
        self.index.push(json!({
            "mediaType": OCI_INDEX,
            "digest": digest,
            "size": index.len(),
            "annotations": annotations,
        }));
        self.blobs.insert(digest, index);
        self
    }

    /// Digest of the last index blob added by [`OciArchive::multi_platform`].
    pub fn last_target_digest(&self) -> String {
        self.index
            .last()
            .and_then(|d| d["digest"].as_str())
            .unwrap_or_default()
            .to_string()
    }

    /// The archive as an uncompressed tar.
    pub fn build(&self) -> Vec<u8> {
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": self.index,
        }))
        .expect("json");
        let mut files: Vec<(String, Vec<u8>)> = vec![
            (
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".into(), index),
        ];
        for (digest, bytes) in &self.blobs {
            files.push((format!("blobs/sha256/{}", hex_part(digest)), bytes.clone()));
        }
        write_archive(&["blobs", "blobs/sha256"], &files)
    }
}

/// A `docker save` archive: `manifest.json`, `<config>.json`, `<layer>/layer.tar`.
#[derive(Clone, Debug, Default)]
pub struct DockerArchive {
    files: BTreeMap<String, Vec<u8>>,
    dirs: Vec<String>,
    manifest: Vec<Value>,
}

impl DockerArchive {
    pub fn new() -> DockerArchive {
        DockerArchive::default()
    }

    /// Adds `image` with the given RepoTags. Layers are stored uncompressed, as docker does;
    /// a layer's file is named by the digest of what is stored, so a lying diff ID stays a lie.
    pub fn image(mut self, image: &Image, repo_tags: &[&str]) -> Self {
        let config_name = format!("{}.json", hex_part(&image.config_digest));
        self.files.insert(config_name.clone(), image.config.clone());
        let mut layers = Vec::new();
        for layer in &image.layers {
            let dir = hex_part(&sha256(&layer.tar)).to_string();
            let name = format!("{dir}/layer.tar");
            if !self.files.contains_key(&name) {
                self.dirs.push(dir);
                self.files.insert(name.clone(), layer.tar.clone());
            }
            layers.push(name);
        }
        self.manifest.push(json!({
            "Config": config_name,
            "RepoTags": repo_tags,
            "Layers": layers,
        }));
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut files: Vec<(String, Vec<u8>)> = self
            .files
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        files.push((
            "manifest.json".into(),
            serde_json::to_vec(&self.manifest).expect("json"),
        ));
        let dirs: Vec<&str> = self.dirs.iter().map(String::as_str).collect();
        write_archive(&dirs, &files)
    }
}

/// A plain tar of directories then files, root-owned, fixed mtime.
fn write_archive(dirs: &[&str], files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for dir in dirs {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(crate::layer::DEFAULT_MTIME);
        h.set_size(0);
        builder
            .append_data(&mut h, format!("{dir}/"), std::io::empty())
            .expect("tar into memory");
    }
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(crate::layer::DEFAULT_MTIME);
        h.set_size(data.len() as u64);
        builder
            .append_data(&mut h, name, data.as_slice())
            .expect("tar into memory");
    }
    builder.into_inner().expect("tar into memory")
}

/// The regular files of a tar archive, name -> bytes (names without a leading "./").
pub fn read_archive(bytes: &[u8]) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    use std::io::Read;
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = entry.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        out.insert(name.trim_start_matches("./").to_string(), data);
    }
    Ok(out)
}

/// `archive` compressed with gzip (Import accepts both).
pub fn gzip(archive: &[u8]) -> Vec<u8> {
    crate::layer::Compression::Gzip.compress(archive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Compression, LayerBuilder};
    use std::io::Read;

    fn two_layer_image() -> Image {
        let mut a = LayerBuilder::new();
        a.file("etc/hostname", "sup\n");
        let mut b = LayerBuilder::new();
        b.whiteout("etc/hostname");
        ImageBuilder::new()
            .layer(a.build(Compression::Gzip))
            .layer(b.build(Compression::Zstd))
            .build()
    }

    #[test]
    fn oci_layout_blobs_match_their_names_and_config_matches_layers() {
        let image = two_layer_image();
        let files = read_archive(
            &OciArchive::new()
                .image(&image, name_annotations("docker.io/library/x:1"))
                .build(),
        )
        .unwrap();
        assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
        for (name, data) in &files {
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                if !hex.is_empty() {
                    assert_eq!(sha256(data), format!("sha256:{hex}"), "{name}");
                }
            }
        }
        let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let desc = &index["manifests"][0];
        assert_eq!(desc["digest"], json!(image.manifest_digest));
        assert_eq!(
            desc["annotations"][CONTAINERD_NAME],
            json!("docker.io/library/x:1")
        );
        assert_eq!(desc["annotations"][OCI_REF_NAME], json!("1"));
        let config: Value = serde_json::from_slice(&image.config).unwrap();
        let diff_ids: Vec<String> = image.layers.iter().map(|l| sha256(&l.tar)).collect();
        assert_eq!(config["rootfs"]["diff_ids"], json!(diff_ids));
        let mut gz = Vec::new();
        flate2::read::GzDecoder::new(image.layers[0].blob.as_slice())
            .read_to_end(&mut gz)
            .unwrap();
        assert_eq!(sha256(&gz), diff_ids[0]);
    }

    #[test]
    fn docker_archive_lists_config_tags_and_layer_tars() {
        let image = two_layer_image();
        let files = read_archive(&DockerArchive::new().image(&image, &["x:1"]).build()).unwrap();
        let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        let entry = &manifest[0];
        assert_eq!(entry["RepoTags"], json!(["x:1"]));
        let config = entry["Config"].as_str().unwrap();
        assert_eq!(files[config], image.config);
        for (i, layer) in entry["Layers"].as_array().unwrap().iter().enumerate() {
            let data = &files[layer.as_str().unwrap()];
            assert_eq!(sha256(data), image.layers[i].diff_id);
        }
    }

    #[test]
    fn index_lists_each_platform() {
        let mut l = LayerBuilder::new();
        l.file("arch", "host");
        let host = ImageBuilder::new()
            .layer(l.build(Compression::Gzip))
            .build();
        let foreign = ImageBuilder::new()
            .platform(Platform::foreign())
            .layer(l.build(Compression::None))
            .build();
        let oci =
            OciArchive::new().multi_platform(&[host.clone(), foreign], name_annotations("a/b:c"));
        let files = read_archive(&oci.build()).unwrap();
        let index_blob = &files[&format!("blobs/sha256/{}", hex_part(&oci.last_target_digest()))];
        let index: Value = serde_json::from_slice(index_blob).unwrap();
        assert_eq!(index["manifests"][0]["digest"], json!(host.manifest_digest));
        assert_eq!(
            index["manifests"][0]["platform"]["architecture"],
            json!(Platform::host().architecture)
        );
        assert_eq!(
            index["manifests"][1]["platform"]["architecture"],
            json!(Platform::foreign().architecture)
        );
    }
}
