//! Looking at an unpacked image the way a runtime would: Images.Unpack gives the chain ID,
//! Snapshots.View makes a read-only snapshot of it, and its mounts are mounted here, under the
//! test's directory, so that the tree can be scanned.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use sup_client::{api, Client};

use crate::tree::Tree;
use crate::Daemon;

static NEXT_VIEW: AtomicUsize = AtomicUsize::new(0);

/// A view snapshot mounted at `path`; unmounted on drop.
pub struct MountedView {
    pub path: PathBuf,
    pub key: String,
    pub snapshotter: String,
    pub mounts: Vec<api::Mount>,
}

impl MountedView {
    /// The mounted tree, entry by entry.
    pub fn tree(&self) -> Tree {
        Tree::scan(&self.path).unwrap_or_else(|e| panic!("scanning {}: {e}", self.path.display()))
    }

    /// Directories that hold the snapshot's layers on disk.
    pub fn layer_dirs(&self) -> Vec<PathBuf> {
        crate::mounts::layer_dirs(&self.mounts)
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// Unmounts and removes the view snapshot, so that it no longer holds its parent.
    pub async fn release(self, client: &Client) {
        unmount_view(&self.path);
        client
            .snapshots()
            .remove(api::RemoveSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: self.key.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("Snapshots.Remove {}: {}", self.key, s.message()));
    }
}

fn unmount_view(path: &Path) {
    crate::mounts::unmount_all_under(path);
    let _ = std::fs::remove_dir(path);
}

impl Drop for MountedView {
    fn drop(&mut self) {
        if self.path.exists() {
            unmount_view(&self.path);
        }
    }
}

/// Unpacks `name` into `snapshotter` and returns the chain ID of its top layer.
pub async fn unpack(client: &Client, name: &str, snapshotter: &str) -> String {
    client
        .images()
        .unpack(api::UnpackImageRequest {
            name: name.to_string(),
            snapshotter: snapshotter.to_string(),
            platform: None,
        })
        .await
        .unwrap_or_else(|s| panic!("Images.Unpack {name} into {snapshotter}: {s:?}"))
        .into_inner()
        .chain_id
}

/// Mounts a read-only view of the committed snapshot `parent`.
pub async fn view_snapshot(
    daemon: &Daemon,
    client: &Client,
    snapshotter: &str,
    parent: &str,
) -> MountedView {
    let key = format!(
        "test-view-{}-{}",
        std::process::id(),
        NEXT_VIEW.fetch_add(1, Ordering::Relaxed)
    );
    let mounts = client
        .snapshots()
        .view(api::ViewSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.clone(),
            parent: parent.to_string(),
            labels: Default::default(),
        })
        .await
        .unwrap_or_else(|s| panic!("Snapshots.View of {parent} in {snapshotter}: {s:?}"))
        .into_inner()
        .mounts;
    let path = daemon.dir().join("mnt").join(&key);
    std::fs::create_dir_all(&path).expect("create mount point");
    if let Err(e) = crate::mounts::mount_all(&mounts, &path) {
        panic!("mounting {mounts:?} at {}: {e}", path.display());
    }
    MountedView {
        path,
        key,
        snapshotter: snapshotter.to_string(),
        mounts,
    }
}

/// Unpacks `name` into `snapshotter` and mounts a read-only view of it.
pub async fn view_image(
    daemon: &Daemon,
    client: &Client,
    name: &str,
    snapshotter: &str,
) -> MountedView {
    let chain_id = unpack(client, name, snapshotter).await;
    view_snapshot(daemon, client, snapshotter, &chain_id).await
}
