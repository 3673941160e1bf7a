//! The daemon's logic, in proto-free types. The gRPC adaptors in `server` and in-process
//! callers (the CRI layer) share these paths.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::content::ContentStore;
use crate::error::{Error, Result};
use crate::events::Exchange;
use crate::snapshot::Snapshotter;
use crate::store::Store;

pub mod containers;
pub mod content;
pub mod gc;
pub mod images;
pub mod leases;
pub mod namespaces;
pub mod snapshots;
pub mod tasks;

/// Everything the services share. One per daemon, behind an `Arc`.
pub struct Services {
    pub root: PathBuf,
    pub state: PathBuf,
    pub store: Store,
    pub content: ContentStore,
    pub snapshotters: BTreeMap<String, Arc<dyn Snapshotter>>,
    pub default_snapshotter: String,
    pub events: Exchange,
    pub tasks: tasks::Tasks,
    /// Held for reading by work that creates objects, for writing by garbage collection.
    pub gc_lock: tokio::sync::RwLock<()>,
    /// Registry settings and HTTP clients, for pulls and pushes.
    pub registry: crate::registry::Registry,
    /// Bumped by every write to the images tree, so that readers may keep what they derive
    /// from the list (the CRI's image groups) until it changes.
    pub images_generation: std::sync::atomic::AtomicU64,
    /// Bumped by every update or removal of a container record, for the same reason (the
    /// CRI's resources read from each spec).
    pub containers_generation: std::sync::atomic::AtomicU64,
}

impl Services {
    /// Called right after each update or removal of a container record.
    pub(crate) fn containers_written(&self) {
        self.containers_generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Called right after each write to the images tree.
    pub(crate) fn images_written(&self) {
        self.images_generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The named snapshotter, or the default one for an empty name.
    pub fn snapshotter(&self, name: &str) -> Result<Arc<dyn Snapshotter>> {
        let name = if name.is_empty() {
            self.default_snapshotter.as_str()
        } else {
            name
        };
        self.snapshotters.get(name).cloned().ok_or_else(|| {
            Error::invalid(format!(
                "snapshotter {name:?}: not available (have: {})",
                self.snapshotters
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }
}
