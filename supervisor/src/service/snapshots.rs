//! Snapshots as the API offers them: the snapshotters' operations on the blocking pool, with
//! namespace bookkeeping and events.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::events::{topic, Payload};
use crate::labels::{self, Labels};
use crate::snapshot::{Info, Mount, Snapshotter, Usage};

use super::Services;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 4096 || key.contains('\0') {
        return Err(Error::invalid(format!(
            "snapshot key {key:?}: must be 1 to 4096 bytes without NUL"
        )));
    }
    Ok(())
}

fn parent_opt(parent: &str) -> Option<String> {
    (!parent.is_empty()).then(|| parent.to_string())
}

impl Services {
    fn snap(&self, name: &str) -> Result<(Arc<dyn Snapshotter>, String)> {
        let s = self.snapshotter(name)?;
        let n = s.name().to_string();
        Ok((s, n))
    }

    pub async fn snapshot_prepare(
        &self,
        ns: &str,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: Labels,
        view: bool,
    ) -> Result<Vec<Mount>> {
        validate_key(key)?;
        labels::validate(&labels)?;
        self.namespace_ensure(ns)?;
        let (s, sname) = self.snap(snapshotter)?;
        let (n, k, p) = (ns.to_string(), key.to_string(), parent_opt(parent));
        let mounts = blocking(move || {
            if view {
                s.view(&n, &k, p.as_deref(), labels)
            } else {
                s.prepare(&n, &k, p.as_deref(), labels)
            }
        })
        .await?;
        self.events.publish(
            ns,
            topic::SNAPSHOT_PREPARE,
            Payload::Snapshot {
                snapshotter: sname,
                key: key.to_string(),
                parent: parent.to_string(),
                name: String::new(),
            },
        );
        Ok(mounts)
    }

    pub async fn snapshot_mounts(
        &self,
        ns: &str,
        snapshotter: &str,
        key: &str,
    ) -> Result<Vec<Mount>> {
        validate_key(key)?;
        let (s, _) = self.snap(snapshotter)?;
        let (n, k) = (ns.to_string(), key.to_string());
        blocking(move || s.mounts(&n, &k)).await
    }

    pub async fn snapshot_commit(
        &self,
        ns: &str,
        snapshotter: &str,
        name: &str,
        key: &str,
        labels: Labels,
    ) -> Result<()> {
        validate_key(key)?;
        validate_key(name)?;
        labels::validate(&labels)?;
        let (s, sname) = self.snap(snapshotter)?;
        let (n, k, nm) = (ns.to_string(), key.to_string(), name.to_string());
        let info = blocking(move || s.commit(&n, &nm, &k, labels)).await?;
        self.events.publish(
            ns,
            topic::SNAPSHOT_COMMIT,
            Payload::Snapshot {
                snapshotter: sname,
                key: key.to_string(),
                parent: info.parent.unwrap_or_default(),
                name: name.to_string(),
            },
        );
        Ok(())
    }

    pub async fn snapshot_remove(&self, ns: &str, snapshotter: &str, key: &str) -> Result<()> {
        validate_key(key)?;
        let (s, sname) = self.snap(snapshotter)?;
        let in_use = self.containers_using_snapshot(ns, &sname, key)?;
        if let Some(id) = in_use {
            return Err(Error::precondition(format!(
                "snapshot {key:?} in namespace {ns:?}: in use by container {id:?}"
            )));
        }
        let (n, k) = (ns.to_string(), key.to_string());
        blocking(move || s.remove(&n, &k)).await?;
        self.events.publish(
            ns,
            topic::SNAPSHOT_REMOVE,
            Payload::Snapshot {
                snapshotter: sname,
                key: key.to_string(),
                parent: String::new(),
                name: String::new(),
            },
        );
        Ok(())
    }

    pub async fn snapshot_stat(&self, ns: &str, snapshotter: &str, key: &str) -> Result<Info> {
        validate_key(key)?;
        let (s, _) = self.snap(snapshotter)?;
        let (n, k) = (ns.to_string(), key.to_string());
        blocking(move || s.stat(&n, &k)).await
    }

    pub async fn snapshot_update(
        &self,
        ns: &str,
        snapshotter: &str,
        key: &str,
        labels: Labels,
        paths: Vec<String>,
    ) -> Result<Info> {
        validate_key(key)?;
        labels::validate(&labels)?;
        let (s, _) = self.snap(snapshotter)?;
        let (n, k) = (ns.to_string(), key.to_string());
        blocking(move || s.update(&n, &k, labels, &paths)).await
    }

    pub async fn snapshot_list(&self, ns: &str, snapshotter: &str) -> Result<Vec<Info>> {
        let (s, _) = self.snap(snapshotter)?;
        let n = ns.to_string();
        blocking(move || s.list(&n)).await
    }

    pub async fn snapshot_usage(&self, ns: &str, snapshotter: &str, key: &str) -> Result<Usage> {
        validate_key(key)?;
        let (s, _) = self.snap(snapshotter)?;
        let (n, k) = (ns.to_string(), key.to_string());
        blocking(move || s.usage(&n, &k)).await
    }

    /// The container whose root filesystem is this snapshot, if any.
    pub fn containers_using_snapshot(
        &self,
        ns: &str,
        snapshotter: &str,
        key: &str,
    ) -> Result<Option<String>> {
        for kv in self
            .store
            .containers
            .scan_prefix(crate::store::ns_prefix(ns))
        {
            let (k, v) = kv?;
            let rec: serde_json::Value = crate::store::decode(&v)?;
            if rec.get("snapshotter").and_then(|v| v.as_str()) == Some(snapshotter)
                && rec.get("snapshot_key").and_then(|v| v.as_str()) == Some(key)
            {
                let id = String::from_utf8_lossy(&k[ns.len() + 1..]).into_owned();
                return Ok(Some(id));
            }
        }
        Ok(None)
    }
}
