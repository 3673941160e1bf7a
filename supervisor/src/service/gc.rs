//! Garbage collection: mark what images, containers and leases reach in each namespace, then
//! sweep the rest: content records, blob files no namespace records, layer snapshots made by
//! unpacking, and what crashed work left (half-made unpack snapshots, container snapshots
//! whose container was never recorded, temporary ingest files).
//!
//! Work that creates objects (imports, pulls, unpacks, container creation) holds the GC lock
//! for reading while it runs, and a collection holds it for writing, so a collection never
//! sees an object that is being made but is not reachable yet.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::events::{topic, Payload};
use crate::image::oci;
use crate::snapshot::Kind;
use crate::store::{self, ContentRecord, LeaseRecord};

use super::images::LABEL_DIFF_ID;
use super::Services;

/// Keeps an object from ever being collected.
pub const LABEL_GC_ROOT: &str = "sup.io/gc.root";
/// On snapshots the daemon prepares for a container: the container's id.
pub const LABEL_CONTAINER: &str = "sup.io/container";
/// Key prefix of the active snapshots unpacking applies layers into.
pub const UNPACK_PREFIX: &str = "unpack-";

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcStats {
    pub content_removed: i64,
    pub blobs_removed: i64,
    pub bytes_freed: i64,
    pub snapshots_removed: i64,
    pub leases_expired: i64,
}

impl Services {
    /// Collects now. Content records younger than `grace` are kept (a client may be about to
    /// name them in an image).
    pub async fn gc(self: &Arc<Self>, grace: Duration) -> Result<GcStats> {
        let _exclusive = self.gc_lock.write().await;
        let this = self.clone();
        let stats = tokio::task::spawn_blocking(move || this.gc_blocking(grace)).await??;
        if stats != GcStats::default() {
            tracing::info!(?stats, "garbage collected");
        }
        Ok(stats)
    }

    /// Collects in the background every `interval`, skipping a round while work that
    /// creates objects is running.
    pub fn gc_background(self: &Arc<Self>, interval: Duration, grace: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = this.gc(grace).await {
                    tracing::warn!(error = %e, "background garbage collection failed");
                }
            }
        });
    }

    fn namespaces_with_data(&self) -> Result<HashSet<String>> {
        let mut out: HashSet<String> = self.namespace_list()?.into_iter().map(|n| n.name).collect();
        for tree in [&self.store.content, &self.store.images, &self.store.leases] {
            for kv in tree.iter() {
                let (k, _) = kv?;
                if let Some(pos) = k.iter().position(|b| *b == b'/') {
                    out.insert(String::from_utf8_lossy(&k[..pos]).into_owned());
                }
            }
        }
        Ok(out)
    }

    fn gc_blocking(&self, grace: Duration) -> Result<GcStats> {
        let mut stats = GcStats::default();
        let now = SystemTime::now();
        for ns in self.namespaces_with_data()? {
            self.gc_namespace(&ns, now, grace, &mut stats)?;
        }
        self.store.flush_blocking()?;
        self.gc_blobs(&mut stats)?;
        Ok(stats)
    }

    fn gc_namespace(
        &self,
        ns: &str,
        now: SystemTime,
        grace: Duration,
        stats: &mut GcStats,
    ) -> Result<()> {
        // Leases: drop the expired ones, keep what the others protect.
        let mut leased: HashSet<(String, String)> = HashSet::new();
        for (id, rec) in store::scan::<LeaseRecord>(&self.store.leases, &store::ns_prefix(ns))? {
            if rec.expires_at.is_some_and(|t| t <= now) {
                self.store.leases.remove(store::key(ns, &id))?;
                stats.leases_expired += 1;
                continue;
            }
            leased.extend(rec.resources);
        }

        // Mark: what images reach.
        let present = |d: &str| self.content.has(ns, d);
        let mut blobs: HashSet<String> = HashSet::new();
        let mut chains: HashSet<String> = HashSet::new();
        for img in self.image_list(ns, &[])? {
            let Ok(walk) = self.walk(&img.target, &present, &|w| Error::precondition(w)) else {
                continue;
            };
            blobs.extend(walk.blobs.iter().cloned());
            for (_, m) in &walk.manifests {
                let Ok(data) = self.read_document(&m.config.to_store()) else {
                    continue;
                };
                if let Ok(cfg) = serde_json::from_slice::<oci::ImageConfig>(&data) {
                    chains.extend(oci::chain_ids(&cfg.rootfs.diff_ids));
                }
            }
        }
        let containers: HashSet<String> = self
            .container_list(ns, &[])?
            .into_iter()
            .map(|c| c.id)
            .collect();

        // Sweep content records.
        for (digest, rec) in
            store::scan::<ContentRecord>(&self.store.content, &store::ns_prefix(ns))?
        {
            let young = now.duration_since(rec.created_at).unwrap_or_default() < grace;
            if blobs.contains(&digest)
                || young
                || rec.labels.contains_key(LABEL_GC_ROOT)
                || leased.contains(&("content".to_string(), digest.clone()))
            {
                continue;
            }
            self.content.delete(ns, &digest)?;
            stats.content_removed += 1;
            self.events
                .publish(ns, topic::CONTENT_DELETE, Payload::Content { digest });
        }

        // Sweep snapshots, leaves first, until nothing more goes.
        for (sname, s) in &self.snapshotters {
            let lease_type = format!("snapshots/{sname}");
            loop {
                let infos = s.list(ns)?;
                let parents: HashSet<String> =
                    infos.iter().filter_map(|i| i.parent.clone()).collect();
                let mut removed = 0;
                for info in &infos {
                    if parents.contains(&info.name)
                        || info.labels.contains_key(LABEL_GC_ROOT)
                        || leased.contains(&(lease_type.clone(), info.name.clone()))
                    {
                        continue;
                    }
                    let garbage = match info.kind {
                        Kind::Committed => {
                            info.labels.contains_key(LABEL_DIFF_ID) && !chains.contains(&info.name)
                        }
                        Kind::Active | Kind::View => {
                            info.name.starts_with(UNPACK_PREFIX)
                                || info
                                    .labels
                                    .get(LABEL_CONTAINER)
                                    .is_some_and(|id| !containers.contains(id))
                        }
                    };
                    if !garbage {
                        continue;
                    }
                    match s.remove(ns, &info.name) {
                        Ok(()) => {
                            removed += 1;
                            stats.snapshots_removed += 1;
                            self.events.publish(
                                ns,
                                topic::SNAPSHOT_REMOVE,
                                Payload::Snapshot {
                                    snapshotter: sname.clone(),
                                    key: info.name.clone(),
                                    parent: info.parent.clone().unwrap_or_default(),
                                    name: String::new(),
                                },
                            );
                        }
                        Err(Error::NotFound(_)) | Err(Error::FailedPrecondition(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                if removed == 0 {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Removes blob files no namespace records and nothing holds, and temporary ingest files
    /// nothing writes to.
    fn gc_blobs(&self, stats: &mut GcStats) -> Result<()> {
        let mut recorded: HashSet<Vec<u8>> = HashSet::new();
        for kv in self.store.content.iter() {
            let (k, _) = kv?;
            if let Some(pos) = k.iter().position(|b| *b == b'/') {
                recorded.insert(k[pos + 1..].to_vec());
            }
        }
        let dir = self.root.join("content/blobs/sha256");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
        };
        let mut sizes: HashMap<String, u64> = HashMap::new();
        for e in entries.flatten() {
            let digest = format!("sha256:{}", e.file_name().to_string_lossy());
            if recorded.contains(digest.as_bytes()) {
                continue;
            }
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            sizes.insert(digest, size);
        }
        for (digest, size) in sizes {
            if self.content.remove_if_unreferenced(&digest).is_ok()
                && !self.content.blob_exists(&digest)?
            {
                stats.blobs_removed += 1;
                stats.bytes_freed += size as i64;
            }
        }
        self.content.remove_stale_temp_files()?;
        Ok(())
    }
}
