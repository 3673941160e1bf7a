//! The native snapshotter: each snapshot is a complete tree in `<root>/snapshots/<id>/fs`,
//! made by copying its parent, so it works on any filesystem, at the cost of space and of a
//! copy per `prepare`.
//!
//! Mounts are binds: read-write for an active snapshot, read-only for a view. A view shares
//! its (committed, hence unchanging) parent's tree instead of copying it.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::common::{Common, Resolved};
use super::copy::copy_tree;
use super::{ApplyTarget, Info, Kind, Mount, Snapshotter, Usage, WhiteoutMode};
use crate::error::{Error, Result};
use crate::labels::Labels;
use crate::store::Store;

const NAME: &str = "native";

pub struct NativeSnapshotter {
    common: Common,
}

impl NativeSnapshotter {
    /// Opens the snapshotter whose data lives under `root` (`<supd root>/snapshots/native`).
    pub fn new(root: &Path, store: Store) -> Result<Self> {
        Ok(NativeSnapshotter {
            common: Common::open(NAME, root, store)?,
        })
    }

    fn mounts_of(&self, r: &Resolved) -> Vec<Mount> {
        let own = self.common.dir(r.record.id).join("fs");
        match (r.record.kind, r.parents.first()) {
            (Kind::Active, _) => vec![bind(&own, "rw")],
            (_, Some(parent)) => vec![bind(&parent.join("fs"), "ro")],
            (_, None) => vec![bind(&own, "ro")],
        }
    }
}

fn bind(dir: &Path, mode: &str) -> Mount {
    Mount {
        kind: "bind".into(),
        source: dir.to_string_lossy().into_owned(),
        target: String::new(),
        options: vec!["rbind".into(), mode.into()],
    }
}

/// An active snapshot starts as a copy of its parent; anything else as an empty directory.
fn populate(kind: Kind, dir: &Path, parents: &[PathBuf]) -> Result<()> {
    let fs_dir = dir.join("fs");
    match (kind, parents.first()) {
        (Kind::Active, Some(parent)) => copy_tree(&parent.join("fs"), &fs_dir),
        _ => fs::DirBuilder::new()
            .mode(0o755)
            .create(&fs_dir)
            .map_err(|e| Error::io(format!("creating {}", fs_dir.display()), e)),
    }
}

impl Snapshotter for NativeSnapshotter {
    fn name(&self) -> &'static str {
        NAME
    }

    fn prepare(
        &self,
        ns: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        let fill = |dir: &Path, parents: &[PathBuf]| populate(Kind::Active, dir, parents);
        let r = self
            .common
            .create(ns, key, parent, labels, Kind::Active, &fill)?;
        Ok(self.mounts_of(&r))
    }

    fn view(
        &self,
        ns: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        let fill = |dir: &Path, parents: &[PathBuf]| populate(Kind::View, dir, parents);
        let r = self
            .common
            .create(ns, key, parent, labels, Kind::View, &fill)?;
        Ok(self.mounts_of(&r))
    }

    fn mounts(&self, ns: &str, key: &str) -> Result<Vec<Mount>> {
        Ok(self.mounts_of(&self.common.resolve_mountable(ns, key)?))
    }

    fn commit(&self, ns: &str, name: &str, key: &str, labels: Labels) -> Result<Info> {
        self.common.commit(ns, name, key, labels)
    }

    fn remove(&self, ns: &str, key: &str) -> Result<()> {
        self.common.remove(ns, key)
    }

    fn stat(&self, ns: &str, key: &str) -> Result<Info> {
        self.common.stat(ns, key)
    }

    fn update(&self, ns: &str, key: &str, labels: Labels, paths: &[String]) -> Result<Info> {
        self.common.update(ns, key, labels, paths)
    }

    fn list(&self, ns: &str) -> Result<Vec<Info>> {
        self.common.list(ns)
    }

    fn usage(&self, ns: &str, key: &str) -> Result<Usage> {
        self.common.usage(ns, key, "fs")
    }

    fn apply_target(&self, ns: &str, key: &str) -> Result<ApplyTarget> {
        let r = self.common.resolve_active(ns, key)?;
        Ok(ApplyTarget {
            root: self.common.dir(r.record.id).join("fs"),
            lowers: Vec::new(),
            whiteouts: WhiteoutMode::Delete,
        })
    }
}
