//! Containers: records naming an image, a root filesystem snapshot, an OCI spec and a runtime.
//! Create fills in what the caller leaves out (the snapshot and the spec); Delete removes the
//! snapshot the daemon made.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::events::{topic, Payload};
use crate::filters::{Filter, Filterable};
use crate::image::reference;
use crate::labels::{self, Labels};
use crate::spec::{self, Overrides};
use crate::store::{self, ContainerRecord, RuntimeRecord};

use super::Services;

pub const MAX_ID: usize = 76;
pub const DEFAULT_RUNTIME: &str = "runc";

#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub image: String,
    pub runtime: RuntimeRecord,
    pub spec: serde_json::Value,
    pub snapshotter: String,
    pub snapshot_key: String,
    pub labels: Labels,
    pub extensions: BTreeMap<String, Vec<u8>>,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl Container {
    fn from_record(id: String, r: ContainerRecord) -> Container {
        Container {
            id,
            image: r.image,
            runtime: r.runtime,
            spec: r.spec,
            snapshotter: r.snapshotter,
            snapshot_key: r.snapshot_key,
            labels: r.labels,
            extensions: r.extensions,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

impl Filterable for Container {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["id"] => Some(self.id.clone()),
            ["image"] => Some(self.image.clone()),
            ["runtime"] | ["runtime", "name"] => Some(self.runtime.name.clone()),
            ["snapshotter"] => Some(self.snapshotter.clone()),
            ["labels", k] => self.labels.get(*k).cloned(),
            _ => None,
        }
    }
}

/// Container ids (and exec ids): 1 to 76 of `[A-Za-z0-9_.-]`, starting with a letter or digit.
pub fn validate_id(what: &str, id: &str) -> Result<()> {
    let b = id.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_ID
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if !ok {
        return Err(Error::invalid(format!(
            "{what} {id:?}: must be 1 to {MAX_ID} characters of [A-Za-z0-9_.-], starting with a letter or digit"
        )));
    }
    Ok(())
}

fn validate_runtime(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 4096 || name.contains('\0') {
        return Err(Error::invalid(format!(
            "runtime {name:?}: not a valid name or path"
        )));
    }
    if name.contains('/') && !name.starts_with('/') {
        return Err(Error::invalid(format!(
            "runtime {name:?}: give a name to look up in PATH or an absolute path"
        )));
    }
    Ok(())
}

/// A change an in-process caller makes to the generated spec before the container is
/// written (the CRI's namespaces, cgroup, seccomp ...), so that the container is written once
/// with its whole spec.
#[derive(Clone, Default)]
pub struct SpecEdit(Option<Arc<SpecEditFn>>);

type SpecEditFn = dyn Fn(&mut oci_spec::runtime::Spec) -> Result<()> + Send + Sync;

impl SpecEdit {
    pub fn new(
        f: impl Fn(&mut oci_spec::runtime::Spec) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        SpecEdit(Some(Arc::new(f)))
    }

    fn apply(&self, spec: &mut oci_spec::runtime::Spec) -> Result<()> {
        match &self.0 {
            Some(f) => f(spec),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for SpecEdit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "SpecEdit(..)"
        } else {
            "SpecEdit(none)"
        })
    }
}

/// What a caller asks for.
#[derive(Debug, Clone, Default)]
pub struct NewContainer {
    pub id: String,
    pub image: String,
    pub runtime: RuntimeRecord,
    /// Empty: generated from the image config and `overrides`.
    pub spec: Option<serde_json::Value>,
    pub snapshotter: String,
    /// Empty: the daemon prepares an active snapshot named after the container.
    pub snapshot_key: String,
    pub labels: Labels,
    pub extensions: BTreeMap<String, Vec<u8>>,
    pub overrides: Overrides,
    /// Applied to the spec generated from the image config and `overrides`.
    pub edit: SpecEdit,
}

impl Services {
    fn container_key(ns: &str, id: &str) -> Vec<u8> {
        store::key(ns, id)
    }

    pub fn container_get(&self, ns: &str, id: &str) -> Result<Container> {
        validate_id("container", id)?;
        let rec: ContainerRecord =
            store::get(&self.store.containers, &Self::container_key(ns, id))?
                .ok_or_else(|| Error::not_found(format!("container {id:?} in namespace {ns:?}")))?;
        Ok(Container::from_record(id.to_string(), rec))
    }

    /// Whether container `id` exists in `ns`, without reading its record.
    pub fn container_exists(&self, ns: &str, id: &str) -> bool {
        validate_id("container", id).is_ok()
            && self
                .store
                .containers
                .contains_key(Self::container_key(ns, id))
                .unwrap_or(false)
    }

    pub fn container_list(&self, ns: &str, filters: &[String]) -> Result<Vec<Container>> {
        let filter = Filter::parse(filters)?;
        Ok(
            store::scan::<ContainerRecord>(&self.store.containers, &store::ns_prefix(ns))?
                .into_iter()
                .map(|(id, r)| Container::from_record(id, r))
                .filter(|c| filter.matches(c))
                .collect(),
        )
    }

    pub async fn container_create(
        self: &Arc<Self>,
        ns: &str,
        new: NewContainer,
    ) -> Result<Container> {
        let _creating = self.gc_lock.read().await;
        validate_id("container", &new.id)?;
        labels::validate(&new.labels)?;
        let key = Self::container_key(ns, &new.id);
        if self.store.containers.contains_key(&key)? {
            return Err(Error::already_exists(format!(
                "container {:?} in namespace {ns:?}",
                new.id
            )));
        }
        let mut runtime = new.runtime.clone();
        if runtime.name.is_empty() {
            runtime.name = DEFAULT_RUNTIME.to_string();
        }
        validate_runtime(&runtime.name)?;
        let snapshotter = self.snapshotter(&new.snapshotter)?;
        let sname = snapshotter.name().to_string();
        let image = if new.image.is_empty() {
            String::new()
        } else {
            reference::normalize(&new.image)?
        };
        if image.is_empty() && new.snapshot_key.is_empty() {
            return Err(Error::invalid(format!(
                "container {:?}: give an image or a snapshot",
                new.id
            )));
        }
        let mut image_config = b"{}".to_vec();
        let mut chain = None;
        if !image.is_empty() {
            let img = self.image_get(ns, &image)?;
            let present = |d: &str| self.content.has(ns, d);
            let resolved = self.resolve(&img.target, None, &present)?;
            image_config = resolved.config_json.clone();
            chain = Some(self.unpack_locked(ns, &image, &sname, None).await?);
        }

        // The root filesystem: the caller's snapshot, or a new one over the image.
        let (snapshot_key, owns_snapshot) = if new.snapshot_key.is_empty() {
            let (s, n, k, p) = (
                snapshotter.clone(),
                ns.to_string(),
                new.id.clone(),
                chain.clone(),
            );
            let labels = Labels::from([(super::gc::LABEL_CONTAINER.to_string(), k.clone())]);
            tokio::task::spawn_blocking(move || s.prepare(&n, &k, p.as_deref(), labels)).await??;
            self.events.publish(
                ns,
                topic::SNAPSHOT_PREPARE,
                Payload::Snapshot {
                    snapshotter: sname.clone(),
                    key: new.id.clone(),
                    parent: chain.clone().unwrap_or_default(),
                    name: String::new(),
                },
            );
            (new.id.clone(), true)
        } else {
            let (s, n, k) = (
                snapshotter.clone(),
                ns.to_string(),
                new.snapshot_key.clone(),
            );
            tokio::task::spawn_blocking(move || s.stat(&n, &k)).await??;
            (new.snapshot_key.clone(), false)
        };
        let undo = |e: Error| {
            let (s, n, k) = (snapshotter.clone(), ns.to_string(), snapshot_key.clone());
            async move {
                if owns_snapshot {
                    let _ = tokio::task::spawn_blocking(move || s.remove(&n, &k)).await;
                }
                e
            }
        };
        let spec = match new.spec.clone() {
            Some(s) => s,
            None => match self
                .generate_spec(ns, &sname, &snapshot_key, &image_config, &new)
                .await
            {
                Ok(s) => s,
                Err(e) => return Err(undo(e).await),
            },
        };
        let now = SystemTime::now();
        let rec = ContainerRecord {
            image: image.clone(),
            runtime,
            spec,
            snapshotter: sname.clone(),
            snapshot_key: snapshot_key.clone(),
            owns_snapshot,
            labels: new.labels.clone(),
            extensions: new.extensions.clone(),
            created_at: now,
            updated_at: now,
        };
        let stored = (|| -> Result<()> {
            self.namespace_ensure(ns)?;
            let swapped = self.store.containers.compare_and_swap(
                &key,
                None as Option<&[u8]>,
                Some(store::encode(&rec)?),
            )?;
            if swapped.is_err() {
                return Err(Error::already_exists(format!(
                    "container {:?} in namespace {ns:?}",
                    new.id
                )));
            }
            Ok(())
        })();
        if let Err(e) = stored {
            return Err(undo(e).await);
        }
        if let Err(e) = self.store.flush().await {
            let _ = self.store.containers.remove(&key);
            return Err(undo(e).await);
        }
        self.events.publish(
            ns,
            topic::CONTAINER_CREATE,
            Payload::Container {
                id: new.id.clone(),
                image,
                labels: rec.labels.clone(),
            },
        );
        Ok(Container::from_record(new.id, rec))
    }

    /// Generates the spec with the snapshot mounted read-only in a scratch directory, so that
    /// users and groups resolve against the image's own files.
    async fn generate_spec(
        self: &Arc<Self>,
        ns: &str,
        snapshotter: &str,
        key: &str,
        image_config: &[u8],
        new: &NewContainer,
    ) -> Result<serde_json::Value> {
        let s = self.snapshotter(snapshotter)?;
        let scratch = self.state.join("scratch");
        std::fs::create_dir_all(&scratch)
            .map_err(|e| Error::io(format!("creating {}", scratch.display()), e))?;
        let (n, k, i, cfg, o, edit) = (
            ns.to_string(),
            key.to_string(),
            new.id.clone(),
            image_config.to_vec(),
            new.overrides.clone(),
            new.edit.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let dir = tempfile::Builder::new()
                .prefix("spec-")
                .tempdir_in(&scratch)
                .map_err(|e| Error::io("creating a scratch mount point", e))?;
            let mut mounts = s.mounts(&n, &k)?;
            for m in &mut mounts {
                if !m.options.iter().any(|o| o == "ro") {
                    m.options.retain(|o| o != "rw");
                    m.options.push("ro".into());
                }
            }
            crate::mount::mount_all(&mounts, dir.path())?;
            let spec = spec::generate(&n, &i, &cfg, dir.path(), &o);
            let unmounted = crate::mount::unmount_all(dir.path());
            let mut spec = spec?;
            unmounted?;
            edit.apply(&mut spec)?;
            serde_json::to_value(&spec).map_err(Error::from)
        })
        .await?
    }

    pub async fn container_update(
        &self,
        ns: &str,
        c: Container,
        paths: &[String],
    ) -> Result<Container> {
        validate_id("container", &c.id)?;
        labels::validate(&c.labels)?;
        let key = Self::container_key(ns, &c.id);
        let mut rec: ContainerRecord = store::get(&self.store.containers, &key)?
            .ok_or_else(|| Error::not_found(format!("container {:?} in namespace {ns:?}", c.id)))?;
        let others = if paths.is_empty() {
            rec.labels = c.labels.clone();
            Vec::new()
        } else {
            labels::apply_mask(&mut rec.labels, &c.labels, paths)
        };
        for p in others {
            match p {
                "spec" => rec.spec = c.spec.clone(),
                "image" => rec.image = reference::normalize(&c.image)?,
                "extensions" => rec.extensions = c.extensions.clone(),
                other => {
                    return Err(Error::invalid(format!(
                        "container {:?}: field {other:?} cannot be updated",
                        c.id
                    )))
                }
            }
        }
        labels::validate(&rec.labels)?;
        rec.updated_at = SystemTime::now();
        self.store.containers.insert(&key, store::encode(&rec)?)?;
        self.containers_written();
        self.store.flush().await?;
        self.events.publish(
            ns,
            topic::CONTAINER_UPDATE,
            Payload::Container {
                id: c.id.clone(),
                image: rec.image.clone(),
                labels: rec.labels.clone(),
            },
        );
        Ok(Container::from_record(c.id, rec))
    }

    pub async fn container_delete(&self, ns: &str, id: &str, keep_snapshot: bool) -> Result<()> {
        validate_id("container", id)?;
        let key = Self::container_key(ns, id);
        let rec: ContainerRecord = store::get(&self.store.containers, &key)?
            .ok_or_else(|| Error::not_found(format!("container {id:?} in namespace {ns:?}")))?;
        if self.task_exists(ns, id) {
            return Err(Error::precondition(format!(
                "container {id:?} in namespace {ns:?} has a task: delete it first"
            )));
        }
        self.store.containers.remove(&key)?;
        self.containers_written();
        self.store.flush().await?;
        if rec.owns_snapshot && !keep_snapshot {
            if let Ok(s) = self.snapshotter(&rec.snapshotter) {
                let (n, k) = (ns.to_string(), rec.snapshot_key.clone());
                match tokio::task::spawn_blocking(move || s.remove(&n, &k)).await? {
                    Ok(()) => self.events.publish(
                        ns,
                        topic::SNAPSHOT_REMOVE,
                        Payload::Snapshot {
                            snapshotter: rec.snapshotter.clone(),
                            key: rec.snapshot_key.clone(),
                            parent: String::new(),
                            name: String::new(),
                        },
                    ),
                    Err(Error::NotFound(_)) => {}
                    Err(e) => {
                        tracing::warn!(container = id, error = %e, "cannot remove the container's snapshot")
                    }
                }
            }
        }
        self.events.publish(
            ns,
            topic::CONTAINER_DELETE,
            Payload::Container {
                id: id.to_string(),
                image: rec.image,
                labels: rec.labels,
            },
        );
        Ok(())
    }
}
