//! The CRI's own records in the `cri` tree: `sandbox/<id>` and `container/<id>`, JSON. The sup
//! containers and tasks underneath live in namespace `k8s.io`; these records add what only
//! the CRI knows (the pod's config, its pinned namespaces and IP, log paths, exit details).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_cri::v1 as cri;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::{self, Store};

/// A pod sandbox. Its pause container is the sup container with the same id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub config: cri::PodSandboxConfig,
    pub runtime_handler: String,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// The pinned network namespace; None for host networking.
    pub netns: Option<PathBuf>,
    /// The pinned IPC namespace; None for host IPC (and for records of an older supd, whose
    /// containers join the pause's own).
    #[serde(default)]
    pub ipcns: Option<PathBuf>,
    /// The pinned UTS namespace, holding the pod's host name; None for host networking
    /// (the pod then has the host's UTS namespace) and for records of an older supd.
    #[serde(default)]
    pub utsns: Option<PathBuf>,
    /// The pod's IP, once its network is set up.
    #[serde(default)]
    pub ip: String,
    /// Stopped by StopPodSandbox: the network is torn down, the pause is gone.
    #[serde(default)]
    pub stopped: bool,
    /// The network was set up and not yet torn down.
    #[serde(default)]
    pub network_up: bool,
}

/// A CRI container. Its sup container has the same id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub config: cri::ContainerConfig,
    /// The normalized image name the container was made from.
    pub image: String,
    /// The image's manifest digest.
    #[serde(default)]
    pub image_ref: String,
    /// Absolute; empty when the kubelet asked for no log.
    #[serde(default)]
    pub log_path: String,
    /// Nanoseconds since the epoch; 0 for not yet.
    pub created_at: i64,
    #[serde(default)]
    pub started_at: i64,
    #[serde(default)]
    pub finished_at: i64,
    /// Kept when the task is deleted, so the status outlives it.
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub reason: String,
}

fn sandbox_key(id: &str) -> Vec<u8> {
    store::key("sandbox", id)
}

fn container_key(id: &str) -> Vec<u8> {
    store::key("container", id)
}

fn put<T: Serialize>(tree: &sled::Tree, key: &[u8], v: &T) -> Result<()> {
    tree.insert(key, store::encode(v)?)?;
    Ok(())
}

fn all<T: DeserializeOwned>(tree: &sled::Tree, prefix: &str) -> Result<Vec<T>> {
    Ok(store::scan::<T>(tree, &store::key(prefix, ""))?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

/// Reads and writes the records; every write is flushed before it returns. Reads come from
/// a copy in memory, loaded on first use and changed with every write: the kubelet reads
/// every record many times a minute, and decoding them each time was most of a List call.
#[derive(Clone)]
pub struct Records {
    store: Store,
    cache: Arc<Mutex<Option<Cached>>>,
}

#[derive(Default)]
struct Cached {
    sandboxes: BTreeMap<String, SandboxRecord>,
    containers: BTreeMap<String, ContainerRecord>,
}

impl Records {
    pub fn new(store: Store) -> Records {
        Records {
            store,
            cache: Arc::new(Mutex::new(None)),
        }
    }

    /// The records in memory, read from the store if this is the first use.
    fn cached(&self) -> Result<MutexGuard<'_, Option<Cached>>> {
        let mut guard = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let sandboxes: Vec<SandboxRecord> = all(&self.store.cri, "sandbox")?;
            let containers: Vec<ContainerRecord> = all(&self.store.cri, "container")?;
            *guard = Some(Cached {
                sandboxes: sandboxes.into_iter().map(|r| (r.id.clone(), r)).collect(),
                containers: containers.into_iter().map(|r| (r.id.clone(), r)).collect(),
            });
        }
        Ok(guard)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Cached) -> T) -> Result<T> {
        let mut guard = self.cached()?;
        match guard.as_mut() {
            Some(c) => Ok(f(c)),
            None => Err(Error::internal("CRI records not loaded")),
        }
    }

    pub fn sandbox(&self, id: &str) -> Result<SandboxRecord> {
        self.with(|c| c.sandboxes.get(id).cloned())?.ok_or_else(|| {
            Error::not_found(format!("pod sandbox {:?}", crate::error::printable(id)))
        })
    }

    pub fn sandboxes(&self) -> Result<Vec<SandboxRecord>> {
        self.with(|c| c.sandboxes.values().cloned().collect())
    }

    pub fn sandbox_ids(&self) -> Result<Vec<String>> {
        self.with(|c| c.sandboxes.keys().cloned().collect())
    }

    pub async fn put_sandbox(&self, r: &SandboxRecord) -> Result<()> {
        {
            let mut guard = self.cached()?;
            put(&self.store.cri, &sandbox_key(&r.id), r)?;
            if let Some(c) = guard.as_mut() {
                c.sandboxes.insert(r.id.clone(), r.clone());
            }
        }
        self.store.flush().await
    }

    pub async fn delete_sandbox(&self, id: &str) -> Result<()> {
        {
            let mut guard = self.cached()?;
            self.store.cri.remove(sandbox_key(id))?;
            if let Some(c) = guard.as_mut() {
                c.sandboxes.remove(id);
            }
        }
        self.store.flush().await
    }

    pub fn container(&self, id: &str) -> Result<ContainerRecord> {
        self.with(|c| c.containers.get(id).cloned())?
            .ok_or_else(|| Error::not_found(format!("container {:?}", crate::error::printable(id))))
    }

    pub fn containers(&self) -> Result<Vec<ContainerRecord>> {
        self.with(|c| c.containers.values().cloned().collect())
    }

    pub fn container_ids(&self) -> Result<Vec<String>> {
        self.with(|c| c.containers.keys().cloned().collect())
    }

    pub async fn put_container(&self, r: &ContainerRecord) -> Result<()> {
        {
            let mut guard = self.cached()?;
            put(&self.store.cri, &container_key(&r.id), r)?;
            if let Some(c) = guard.as_mut() {
                c.containers.insert(r.id.clone(), r.clone());
            }
        }
        self.store.flush().await
    }

    pub async fn delete_container(&self, id: &str) -> Result<()> {
        {
            let mut guard = self.cached()?;
            self.store.cri.remove(container_key(id))?;
            if let Some(c) = guard.as_mut() {
                c.containers.remove(id);
            }
        }
        self.store.flush().await
    }
}

/// Resolves a full id or a unique prefix of one (crictl passes prefixes).
pub fn resolve<'a>(ids: impl Iterator<Item = &'a str>, wanted: &str, what: &str) -> Result<String> {
    if wanted.is_empty() {
        return Err(Error::invalid(format!("{what} id: empty")));
    }
    let found: Vec<&str> = ids.filter(|i| i.starts_with(wanted)).collect();
    if let Some(exact) = found.iter().find(|i| **i == wanted) {
        return Ok(exact.to_string());
    }
    match found.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(Error::not_found(format!(
            "{what} {:?}",
            crate::error::printable(wanted)
        ))),
        _ => Err(Error::invalid(format!(
            "{what} id prefix {:?}: matches more than one",
            crate::error::printable(wanted)
        ))),
    }
}
