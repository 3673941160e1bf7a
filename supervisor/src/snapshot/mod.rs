//! Snapshotters: the filesystem trees images unpack into and containers run on.
//!
//! One trait, two implementations: `overlayfs` (the default: each snapshot is a directory,
//! active snapshots mount as overlay over their parents) and `native` (each snapshot is a full
//! copy of its parent; works on any filesystem). Both keep their metadata in the `snapshots`
//! tree of the metadata store (see `store::snapshots`) and their data under
//! `<root>/snapshots/<name>/`. Both must pass the shared conformance suite in `conformance`.
//!
//! Keys are scoped by namespace. The methods are blocking (they touch the filesystem); async
//! callers run them on the blocking pool.

use std::path::PathBuf;

use crate::error::Result;
use crate::labels::Labels;

mod common;
mod copy;
pub mod native;
pub mod overlay;
mod tree;

#[cfg(test)]
mod conformance;

pub use crate::mount::Mount;
pub use crate::store::snapshots::{Info, Kind};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

/// How a layer's whiteouts are written into an active snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// As overlayfs whiteouts: a 0:0 character device per deleted name, and the
    /// `trusted.overlay.opaque` xattr on opaque directories.
    Overlay,
    /// By deleting the names from the directory (the directory is a full copy of the parent).
    Delete,
}

/// Where a layer is applied for an active snapshot, without mounting anything.
#[derive(Debug, Clone)]
pub struct ApplyTarget {
    /// The directory that receives the layer's changes.
    pub root: PathBuf,
    /// The parents' directories, nearest first (empty for `native`, whose root holds
    /// everything already).
    pub lowers: Vec<PathBuf>,
    pub whiteouts: WhiteoutMode,
}

/// A snapshotter. Every method takes the namespace the key lives in.
///
/// Errors: NotFound for a missing key or parent; AlreadyExists for a taken key or name;
/// InvalidArgument for a bad key or a parent that is not committed; FailedPrecondition for
/// removing a snapshot that has children or committing one that is not active.
pub trait Snapshotter: Send + Sync {
    fn name(&self) -> &'static str;

    /// Makes an active snapshot `key` over the committed `parent`, and returns its mounts.
    fn prepare(
        &self,
        ns: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>>;

    /// Makes a read-only view `key` of the committed `parent`, and returns its mounts.
    fn view(&self, ns: &str, key: &str, parent: Option<&str>, labels: Labels)
        -> Result<Vec<Mount>>;

    /// Mounts of an active snapshot or view. InvalidArgument for a committed snapshot.
    fn mounts(&self, ns: &str, key: &str) -> Result<Vec<Mount>>;

    /// Turns the active snapshot `key` into the committed snapshot `name`.
    fn commit(&self, ns: &str, name: &str, key: &str, labels: Labels) -> Result<Info>;

    /// Removes a snapshot that no other snapshot has as parent, data included.
    fn remove(&self, ns: &str, key: &str) -> Result<()>;

    fn stat(&self, ns: &str, key: &str) -> Result<Info>;

    /// Updates labels under a field mask (see `labels::apply_mask`); other paths are
    /// InvalidArgument.
    fn update(&self, ns: &str, key: &str, labels: Labels, paths: &[String]) -> Result<Info>;

    /// Every snapshot of the namespace.
    fn list(&self, ns: &str) -> Result<Vec<Info>>;

    /// Space and inodes the snapshot's own directory uses.
    fn usage(&self, ns: &str, key: &str) -> Result<Usage>;

    /// Where to write a layer into the active snapshot `key`.
    fn apply_target(&self, ns: &str, key: &str) -> Result<ApplyTarget>;
}
