//! The metadata store: every record supd keeps, in one sled database at `<root>/meta.db`.
//!
//! # Key schema (version 1)
//!
//! Values are JSON. Names in keys are separated by `/`; namespace names, snapshotter names
//! and digests cannot hold `/`, and the last segment of a key may (image names do).
//!
//! ```text
//! tree "meta"
//!   "schema_version"                      -> u32 (big endian)      this layout's version: 1
//! tree "namespaces"
//!   <ns>                                  -> NamespaceRecord      labels, times
//! tree "content"                          blobs a namespace holds (the bytes are in the
//!   <ns>/<digest>                         -> ContentRecord        content store, shared)
//! tree "images"
//!   <ns>/<name>                           -> ImageRecord          name -> target descriptor
//! tree "containers"
//!   <ns>/<id>                             -> ContainerRecord
//! tree "cri"                            owned by `cri`: the CRI's own records
//!   sandbox/<id>                          -> sandbox record (metadata, netns, IP, state)
//!   container/<id>                        -> CRI container record (metadata, log path)
//! tree "leases"
//!   <ns>/<id>                             -> LeaseRecord          labels, expiry, resources
//! tree "snapshots"                        owned by `store::snapshots`
//!   <snapshotter>/<ns>/<key>              -> SnapshotRecord       id, kind, parent key, labels
//!   "\0next_id"                           -> u64 (big endian)      next snapshot data id
//! ```
//!
//! Invariants, kept by the services that write here: an image's target and everything it
//! reaches are in `content` under the same namespace; a snapshot's parent exists in the same
//! snapshotter and namespace; a container's snapshot exists. A write is acknowledged only
//! after `Store::flush` has made it durable.

use std::path::Path;
use std::time::SystemTime;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::labels::Labels;

pub mod snapshots;

pub const SCHEMA_VERSION: u32 = 1;

/// The open database and its trees.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    pub namespaces: sled::Tree,
    pub content: sled::Tree,
    pub images: sled::Tree,
    pub containers: sled::Tree,
    pub leases: sled::Tree,
    pub snapshots: sled::Tree,
    pub cri: sled::Tree,
}

impl Store {
    /// Opens (or creates) the database, checking its schema version.
    pub fn open(path: &Path) -> Result<Store> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| Error::from(e).context(format!("opening {}", path.display())))?;
        let meta = db.open_tree("meta")?;
        match meta.get("schema_version")? {
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| Error::internal("metadata store: corrupt schema version"))?;
                if found != SCHEMA_VERSION {
                    return Err(Error::FailedPrecondition(format!(
                        "metadata store {}: schema version {found}, this supd knows {SCHEMA_VERSION}",
                        path.display()
                    )));
                }
            }
        }
        Ok(Store {
            namespaces: db.open_tree("namespaces")?,
            content: db.open_tree("content")?,
            images: db.open_tree("images")?,
            containers: db.open_tree("containers")?,
            leases: db.open_tree("leases")?,
            cri: db.open_tree("cri")?,
            snapshots: db.open_tree("snapshots")?,
            db,
        })
    }

    /// Makes every write so far durable. Call before acknowledging a mutation.
    ///
    /// sled's own `flush_async` runs the flush on sled's small I/O pool, where concurrent
    /// flushes can take every thread while they wait for the log write that needs one of
    /// them (sled 0.34.7, issue 1308: seen here as supd hanging with twenty containers
    /// created at once). The blocking flush runs on tokio's blocking pool instead.
    pub async fn flush(&self) -> Result<()> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| crate::error::Error::internal(format!("flushing the metadata: {e}")))??;
        Ok(())
    }

    /// Blocking form of `flush`, for code already on the blocking pool.
    pub fn flush_blocking(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

/// `<a>/<b>` keys.
pub fn key(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(b'/');
    k.extend_from_slice(b.as_bytes());
    k
}

/// The prefix under which every `<ns>/...` key of a namespace lies.
pub fn ns_prefix(ns: &str) -> Vec<u8> {
    key(ns, "")
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(v)?)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::internal(format!("metadata store: corrupt record: {e}")))
}

/// Reads and decodes one record.
pub fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>> {
    tree.get(key)?.map(|v| decode(&v)).transpose()
}

/// Decodes every record under a prefix, with the key's tail after the prefix.
pub fn scan<T: DeserializeOwned>(tree: &sled::Tree, prefix: &[u8]) -> Result<Vec<(String, T)>> {
    let mut out = Vec::new();
    for kv in tree.scan_prefix(prefix) {
        let (k, v) = kv?;
        let tail = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        out.push((tail, decode(&v)?));
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub labels: Labels,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContentRecord {
    pub size: i64,
    pub labels: Labels,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// An OCI descriptor as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub annotations: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    pub target: Descriptor,
    pub labels: Labels,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct RuntimeRecord {
    pub name: String,
    #[serde(default)]
    pub options: Labels,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub image: String,
    pub runtime: RuntimeRecord,
    /// The OCI runtime spec.
    pub spec: serde_json::Value,
    pub snapshotter: String,
    pub snapshot_key: String,
    /// The daemon prepared the snapshot and removes it with the container.
    #[serde(default)]
    pub owns_snapshot: bool,
    pub labels: Labels,
    #[serde(default)]
    pub extensions: std::collections::BTreeMap<String, Vec<u8>>,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// A lease: what it protects, until when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub labels: Labels,
    pub created_at: SystemTime,
    #[serde(default)]
    pub expires_at: Option<SystemTime>,
    /// (type, id): ("content", digest) or ("snapshots/<snapshotter>", key).
    #[serde(default)]
    pub resources: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many flushes at once, each after its own write, all complete (with sled's
    /// `flush_async` they could all wait for ever, and the runtime with them, so the wait is
    /// timed from another thread).
    #[test]
    fn concurrent_flushes_complete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("meta.db")).unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .build()
                .unwrap();
            rt.block_on(async {
                for round in 0..20u32 {
                    let mut all = Vec::new();
                    for i in 0..64u32 {
                        let s = store.clone();
                        all.push(tokio::spawn(async move {
                            s.containers
                                .insert(format!("{round}/{i}"), vec![0u8; 512])
                                .unwrap();
                            s.flush().await
                        }));
                    }
                    for t in all {
                        t.await.unwrap().unwrap();
                    }
                }
            });
            let _ = done_tx.send(());
        });
        done_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("concurrent flushes never completed");
    }
}
