//! The CRI ImageService over sup's own image services, in namespace "k8s.io".
//!
//! A CRI image is one target (index or manifest) with every name that points at it: its id
//! is the target's digest, its repo tags are those names, its repo digests are
//! `repository@digest` for each of their repositories.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::{
    FilesystemIdentifier, FilesystemUsage, Image as CriImage, ImageFsInfoRequest,
    ImageFsInfoResponse, ImageSpec, ImageStatusRequest, ImageStatusResponse, Int64Value,
    ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse, UInt64Value,
};
use tonic::{Request, Response, Status};

use crate::error::{printable, Error, Result};
use crate::image::reference;
use crate::service::images::pull::PullOptions;
use crate::service::images::Image;
use crate::service::Services;
use crate::status::status;
use crate::store::Descriptor;

use super::pause::{NAMESPACE as NS, REPOSITORY as PAUSE_REPOSITORY};

/// The CRI ImageService.
pub struct CriImages {
    services: Arc<Services>,
    /// Size and config user per image target digest. Both follow from content the digest
    /// names, so an entry never goes stale; the kubelet asks for them over and over.
    described: std::sync::Mutex<HashMap<String, (u64, String)>>,
    /// The image groups as of an images generation (Services::images_generation).
    grouped: std::sync::Mutex<Option<(u64, Arc<Vec<Group>>)>>,
}

/// Every name of one target.
struct Group {
    target: Descriptor,
    names: Vec<Image>,
}

impl CriImages {
    pub fn new(services: Arc<Services>) -> CriImages {
        CriImages {
            services,
            described: Default::default(),
            grouped: Default::default(),
        }
    }

    /// The images of the CRI namespace grouped by target, read again only after images
    /// have been written.
    fn groups(&self) -> Result<Arc<Vec<Group>>> {
        use std::sync::atomic::Ordering;
        // Read before the list, so that a write racing the read leaves a generation that
        // does not match and the next call reads again.
        let generation = self.services.images_generation.load(Ordering::SeqCst);
        if let Some((g, groups)) = self
            .grouped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if *g == generation {
                return Ok(groups.clone());
            }
        }
        let groups = Arc::new(self.read_groups()?);
        *self.grouped.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((generation, groups.clone()));
        Ok(groups)
    }

    fn read_groups(&self) -> Result<Vec<Group>> {
        let mut by_digest: BTreeMap<String, Group> = BTreeMap::new();
        for img in self.services.image_list(NS, &[])? {
            by_digest
                .entry(img.target.digest.clone())
                .or_insert_with(|| Group {
                    target: img.target.clone(),
                    names: Vec::new(),
                })
                .names
                .push(img);
        }
        Ok(by_digest.into_values().collect())
    }

    /// The image a CRI image string means: an id (`sha256:<hex>` or bare hex, or a unique
    /// prefix of one), a name, or `name@digest`. None when there is none.
    pub fn find(&self, spec: &str) -> Result<Option<(Descriptor, Vec<Image>)>> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(Error::invalid("image: must not be empty"));
        }
        let groups = self.groups()?;
        let take = |g: &Group| Some((g.target.clone(), g.names.clone()));
        if let Some(id) = as_id(spec) {
            let hits: Vec<&Group> = groups
                .iter()
                .filter(|g| g.target.digest.starts_with(&id))
                .collect();
            if hits.len() == 1 {
                return Ok(take(hits[0]));
            }
            if hits.len() > 1 {
                return Err(Error::invalid(format!(
                    "image id {:?} is ambiguous",
                    printable(spec)
                )));
            }
        }
        let r = match reference::parse_normalized(spec) {
            Ok(r) => r,
            Err(e) if as_id(spec).is_some() => {
                tracing::debug!(error = %e, "image spec is neither a known id nor a name");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let name = r.to_string();
        if let Some(g) = groups
            .iter()
            .find(|g| g.names.iter().any(|i| i.name == name))
        {
            return Ok(take(g));
        }
        if let Some(d) = &r.digest {
            let repo = r.name();
            let hit = groups.iter().find(|g| {
                &g.target.digest == d
                    && g.names.iter().any(|i| {
                        reference::parse_normalized(&i.name).is_ok_and(|n| n.name() == repo)
                    })
            });
            if let Some(g) = hit {
                return Ok(take(g));
            }
        }
        Ok(None)
    }

    /// The CRI view of one target and its names.
    fn size_and_user(&self, target: &Descriptor, names: &[Image]) -> (u64, String) {
        let cache = || self.described.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = cache().get(&target.digest) {
            return known.clone();
        }
        let fallback = (u64::try_from(target.size).unwrap_or(0), String::new());
        let Some(first) = names.first() else {
            return fallback;
        };
        match self.services.image_inspect(NS, &first.name, None) {
            Ok(ins) => {
                let found = (
                    u64::try_from(ins.size).unwrap_or(fallback.0),
                    config_user(&ins.resolved.config_json),
                );
                let mut cache = cache();
                // Bounded by the images that exist; dropped wholesale if that is ever huge.
                if cache.len() > 4096 {
                    cache.clear();
                }
                cache.insert(target.digest.clone(), found.clone());
                found
            }
            // Not cached: content still arriving, or a transient read error.
            Err(_) => fallback,
        }
    }

    fn describe(&self, target: &Descriptor, names: &[Image]) -> CriImage {
        let mut tags = Vec::new();
        let mut digests = Vec::new();
        for img in names {
            if let Ok(r) = reference::parse_normalized(&img.name) {
                if r.digest.is_none() {
                    tags.push(img.name.clone());
                }
                let d = format!("{}@{}", r.name(), target.digest);
                if !digests.contains(&d) {
                    digests.push(d);
                }
            }
        }
        let (size, user) = self.size_and_user(target, names);
        let (uid, username) = match user.split(':').next().unwrap_or_default() {
            "" => (None, String::new()),
            u => match u.parse::<i64>() {
                Ok(n) => (Some(Int64Value { value: n }), String::new()),
                Err(_) => (None, u.to_string()),
            },
        };
        CriImage {
            id: target.digest.clone(),
            repo_tags: tags,
            repo_digests: digests,
            size,
            uid,
            username,
            spec: Some(ImageSpec {
                image: target.digest.clone(),
                ..Default::default()
            }),
            pinned: names
                .iter()
                .any(|i| i.name.starts_with(&format!("{PAUSE_REPOSITORY}:"))),
        }
    }

    fn verbose_info(&self, target: &Descriptor, names: &[Image]) -> HashMap<String, String> {
        let mut info = serde_json::json!({
            "id": target.digest,
            "target": {"mediaType": target.media_type, "digest": target.digest, "size": target.size},
            "names": names.iter().map(|i| i.name.clone()).collect::<Vec<_>>(),
        });
        if let Some(first) = names.first() {
            if let Ok(ins) = self.services.image_inspect(NS, &first.name, None) {
                info["manifest"] = serde_json::Value::String(ins.resolved.manifest.digest.clone());
                info["chainID"] =
                    serde_json::Value::String(ins.resolved.chain_id().unwrap_or("").to_string());
                info["unpacked"] = serde_json::json!(ins.unpacked);
                if let Ok(cfg) =
                    serde_json::from_slice::<serde_json::Value>(&ins.resolved.config_json)
                {
                    info["imageConfig"] = cfg;
                }
            }
        }
        HashMap::from([("info".to_string(), info.to_string())])
    }

    async fn pull(&self, req: PullImageRequest) -> Result<String> {
        let spec = req
            .image
            .map(|i| i.image)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::invalid("PullImage: image must be given"))?;
        let credentials = req.auth.map(credentials).transpose()?.flatten();
        let opts = PullOptions {
            reference: spec,
            unpack: true,
            access: crate::registry::Access {
                credentials,
                ..Default::default()
            },
            ..Default::default()
        };
        // The pull runs on its own task so that a caller that gives up cancels it cleanly
        // (the pull rolls back) instead of dropping it halfway.
        let (cancel_tx, cancel) = tokio::sync::watch::channel(false);
        let services = self.services.clone();
        let task = tokio::spawn(async move {
            services
                .image_pull(NS, opts, Arc::new(|_| {}), cancel)
                .await
        });
        let _cancel_on_drop = CancelOnDrop(Some(cancel_tx));
        let pulled = task
            .await
            .map_err(|e| Error::internal(format!("pull task: {e}")))??;
        Ok(pulled.image.target.digest)
    }
}

/// Fires the pull's cancel signal when the request goes away before the pull is done.
struct CancelOnDrop(Option<tokio::sync::watch::Sender<bool>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(true);
        }
    }
}

/// `sha256:<hex...>` or bare hex (at least 12 digits) as a digest prefix.
fn as_id(spec: &str) -> Option<String> {
    let hex = spec.strip_prefix("sha256:").unwrap_or(spec);
    let ok = (12..=64).contains(&hex.len())
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then(|| format!("sha256:{hex}"))
}

/// The `User` of an image config, if any.
fn config_user(config_json: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(config_json)
        .ok()
        .and_then(|v| {
            v.get("config")
                .and_then(|c| c.get("User"))
                .and_then(|u| u.as_str())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Registry credentials from CRI's AuthConfig: user and password, `auth` (base64 of
/// `user:password`), or a token.
fn credentials(a: k8s_cri::v1::AuthConfig) -> Result<Option<crate::registry::Credentials>> {
    let (mut username, mut password) = (a.username, a.password);
    if username.is_empty() && !a.auth.is_empty() {
        let raw = base64_decode(&a.auth)
            .ok_or_else(|| Error::invalid("PullImage: auth is not base64"))?;
        let text =
            String::from_utf8(raw).map_err(|_| Error::invalid("PullImage: auth is not UTF-8"))?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| Error::invalid("PullImage: auth is not user:password"))?;
        username = u.to_string();
        password = p.to_string();
    }
    let token = if a.registry_token.is_empty() {
        a.identity_token
    } else {
        a.registry_token
    };
    let c = crate::registry::Credentials {
        username,
        password,
        token,
    };
    Ok((!c.is_empty()).then_some(c))
}

/// Standard base64 (padding optional); None on any other character.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in s.trim_end_matches('=').bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// Bytes (allocated blocks) and inodes used under `dir`, staying on its filesystem.
fn usage(dir: &Path) -> Result<(u64, u64)> {
    let root = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(Error::io(format!("usage of {}", dir.display()), e)),
    };
    let dev = root.dev();
    let mut seen = std::collections::HashSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue; // removed meanwhile
        };
        if m.dev() != dev || !seen.insert(m.ino()) {
            continue;
        }
        bytes += m.blocks() * 512;
        inodes += 1;
        if m.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
            }
        }
    }
    Ok((bytes, inodes))
}

fn spec_of(image: Option<ImageSpec>, rpc: &str) -> Result<String> {
    image
        .map(|i| i.image)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::invalid(format!("{rpc}: image must be given")))
}

#[tonic::async_trait]
impl ImageService for CriImages {
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> std::result::Result<Response<ListImagesResponse>, Status> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .filter(|s| !s.is_empty());
        let images = match filter {
            Some(spec) => match self.find(&spec) {
                Ok(Some((t, names))) => vec![self.describe(&t, &names)],
                Ok(None) | Err(Error::InvalidArgument(_)) => Vec::new(),
                Err(e) => return Err(status(e)),
            },
            None => self
                .groups()
                .map_err(status)?
                .iter()
                .map(|g| self.describe(&g.target, &g.names))
                .collect(),
        };
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> std::result::Result<Response<ImageStatusResponse>, Status> {
        let req = request.into_inner();
        let spec = spec_of(req.image, "ImageStatus").map_err(status)?;
        let found = self.find(&spec).map_err(status)?;
        let Some((target, names)) = found else {
            return Ok(Response::new(ImageStatusResponse::default()));
        };
        let info = match req.verbose {
            true => self.verbose_info(&target, &names),
            false => HashMap::new(),
        };
        Ok(Response::new(ImageStatusResponse {
            image: Some(self.describe(&target, &names)),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> std::result::Result<Response<PullImageResponse>, Status> {
        let image_ref = self.pull(request.into_inner()).await.map_err(status)?;
        Ok(Response::new(PullImageResponse { image_ref }))
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> std::result::Result<Response<RemoveImageResponse>, Status> {
        let spec = spec_of(request.into_inner().image, "RemoveImage").map_err(status)?;
        if let Some((target, names)) = self.find(&spec).map_err(status)? {
            for img in names {
                match self.services.image_delete(NS, &img.name).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(status(e)),
                }
            }
            tracing::info!(image = %target.digest, "CRI image removed");
        }
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<ImageFsInfoRequest>,
    ) -> std::result::Result<Response<ImageFsInfoResponse>, Status> {
        let dir = self.services.root.join("snapshots");
        let d = dir.clone();
        let (bytes, inodes) = tokio::task::spawn_blocking(move || usage(&d))
            .await
            .map_err(|e| status(Error::internal(format!("usage task: {e}"))))?
            .map_err(status)?;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let fs = FilesystemUsage {
            timestamp,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: dir.display().to_string(),
            }),
            used_bytes: Some(UInt64Value { value: bytes }),
            inodes_used: Some(UInt64Value { value: inodes }),
        };
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![fs.clone()],
            container_filesystems: vec![fs],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_base64() {
        assert!(as_id("busybox").is_none());
        assert_eq!(
            as_id("abcdef012345").as_deref(),
            Some("sha256:abcdef012345")
        );
        assert!(as_id("sha256:xyz").is_none());
        assert_eq!(
            base64_decode("dXNlcjpwYXNz").as_deref(),
            Some(&b"user:pass"[..])
        );
        assert_eq!(base64_decode("YQ==").as_deref(), Some(&b"a"[..]));
        assert!(base64_decode("a b").is_none());
    }

    #[test]
    fn auth_field_gives_user_and_password() {
        let c = credentials(k8s_cri::v1::AuthConfig {
            auth: "dXNlcjpwYXNz".into(),
            ..Default::default()
        })
        .expect("valid")
        .expect("some");
        assert_eq!((c.username.as_str(), c.password.as_str()), ("user", "pass"));
        assert!(credentials(Default::default()).expect("valid").is_none());
    }

    #[test]
    fn user_from_config() {
        assert_eq!(
            config_user(br#"{"config":{"User":"1000:1000"}}"#),
            "1000:1000"
        );
        assert_eq!(config_user(b"{}"), "");
    }
}
