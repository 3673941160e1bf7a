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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::{mount_all, unmount_all};

    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = unmount_all(&self.0);
        }
    }

    /// A copy that fails halfway (here: on a mount point inside the parent, which it must
    /// not descend into) leaves neither a record nor data behind.
    #[test]
    fn native_snapshot_failed_copy_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("meta.db")).unwrap();
        let sn = NativeSnapshotter::new(&dir.path().join("native"), store).unwrap();
        sn.prepare("ns", "a", None, Labels::new()).unwrap();
        let base = sn.apply_target("ns", "a").unwrap().root;
        fs::create_dir_all(base.join("sub/mnt")).unwrap();
        fs::write(base.join("sub/file"), "x").unwrap();
        sn.commit("ns", "base", "a", Labels::new()).unwrap();

        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        let target = base.join("sub/mnt");
        let _guard = Unmount(target.clone());
        let bind = Mount {
            kind: "bind".into(),
            source: elsewhere.to_string_lossy().into_owned(),
            target: String::new(),
            options: vec!["rbind".into(), "rw".into()],
        };
        mount_all(&[bind], &target).unwrap();

        let err = sn
            .prepare("ns", "child", Some("base"), Labels::new())
            .unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
        assert!(err.to_string().contains("mount point"), "{err}");
        assert!(sn.stat("ns", "child").unwrap_err().is_not_found());
        let tmp = dir.path().join("native/tmp");
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        assert_eq!(sn.list("ns").unwrap().len(), 1);

        unmount_all(&target).unwrap();
        sn.prepare("ns", "child", Some("base"), Labels::new())
            .unwrap();
        let copied = sn.apply_target("ns", "child").unwrap().root;
        assert_eq!(fs::read_to_string(copied.join("sub/file")).unwrap(), "x");
    }
}
