//! The overlayfs snapshotter: each snapshot holds only its own changes, in
//! `<root>/snapshots/<id>/fs`, and is mounted as an overlay over its parents' directories.
//!
//! Mounts: an active snapshot without parent is a read-write bind of its `fs`; with parents
//! it is an overlay whose upper directory is its `fs` (`work` beside it is overlayfs's
//! scratch space). A view of one layer is a read-only bind of that layer; of several, an
//! overlay of lower directories only, which overlayfs makes read-only.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Gid, Mode, Uid};

use super::common::{Common, Resolved};
use super::{ApplyTarget, Info, Kind, Mount, Snapshotter, Usage, WhiteoutMode};
use crate::error::{Error, Result};
use crate::labels::Labels;
use crate::store::Store;

const NAME: &str = "overlayfs";

pub struct OverlaySnapshotter {
    common: Common,
}

impl OverlaySnapshotter {
    /// Opens the snapshotter whose data lives under `root` (`<supd root>/snapshots/overlayfs`).
    pub fn new(root: &Path, store: Store) -> Result<Self> {
        let common = Common::open(NAME, root, store)?;
        let shown = common.root().to_string_lossy();
        // They separate overlay options and lower directories in mount data.
        if shown.contains([',', ':']) {
            return Err(Error::invalid(format!(
                "overlayfs root {shown}: may not contain ',' or ':'"
            )));
        }
        Ok(OverlaySnapshotter { common })
    }

    /// Checks that overlayfs works on the filesystem of `root`, by mounting a small overlay
    /// there (and taking it down again).
    pub fn supported(root: &Path) -> Result<()> {
        let scratch = root.join("tmp");
        fs::create_dir_all(&scratch)
            .map_err(|e| Error::io(format!("creating {}", scratch.display()), e))?;
        let probe = tempfile::Builder::new()
            .prefix("probe-")
            .tempdir_in(&scratch)
            .map_err(|e| Error::io(format!("creating a directory in {}", scratch.display()), e))?;
        let dir = |name: &str| -> Result<PathBuf> {
            let p = probe.path().join(name);
            fs::create_dir(&p).map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
            Ok(p)
        };
        let (lower, upper, work, merged) =
            (dir("lower")?, dir("upper")?, dir("work")?, dir("merged")?);
        fs::write(lower.join("f"), b"probe")
            .map_err(|e| Error::io(format!("writing in {}", lower.display()), e))?;

        let unsupported = |why: String| {
            Error::precondition(format!(
                "overlayfs does not work on {}: {why}",
                root.display()
            ))
        };
        let _unmount = UnmountOnDrop(&merged);
        let mount = overlay(&[lower], Some((&upper, &work)));
        crate::mount::mount_all(&[mount], &merged).map_err(|e| unsupported(e.to_string()))?;
        let seen = fs::read(merged.join("f"))
            .map_err(|e| unsupported(format!("reading through it: {e}")))?;
        fs::write(merged.join("g"), b"up")
            .map_err(|e| unsupported(format!("writing through it: {e}")))?;
        if seen != b"probe" || !upper.join("g").exists() {
            return Err(unsupported("the overlay does not show its layers".into()));
        }
        crate::mount::unmount_all(&merged)
    }

    fn mounts_of(&self, r: &Resolved) -> Vec<Mount> {
        let own = self.common.dir(r.record.id);
        let lowers: Vec<PathBuf> = r.parents.iter().map(|p| p.join("fs")).collect();
        match (r.record.kind, lowers.as_slice()) {
            (Kind::Active, []) => vec![bind(&own.join("fs"), "rw")],
            (Kind::Active, _) => vec![overlay(&lowers, Some((&own.join("fs"), &own.join("work"))))],
            (_, []) => vec![bind(&own.join("fs"), "ro")],
            (_, [only]) => vec![bind(only, "ro")],
            (_, _) => vec![overlay(&lowers, None)],
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

/// An overlay of `lowers` (nearest first), writable if given an upper and a work directory.
fn overlay(lowers: &[PathBuf], upper: Option<(&Path, &Path)>) -> Mount {
    let joined: Vec<String> = lowers
        .iter()
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    let mut options = vec![format!("lowerdir={}", joined.join(":"))];
    match upper {
        Some((upper, work)) => {
            options.push(format!("upperdir={}", upper.display()));
            options.push(format!("workdir={}", work.display()));
            // Snapshots share lower directories under different uppers, which the inode
            // index would refuse.
            options.push("index=off".into());
        }
        None => options.insert(0, "ro".into()),
    }
    Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options,
    }
}

/// Makes `fs` and `work`; `fs` takes the owner and mode of the nearest parent's root, since
/// overlayfs shows the upper directory's for the merged root.
fn populate(dir: &Path, parents: &[PathBuf]) -> Result<()> {
    let fs_dir = dir.join("fs");
    let work = dir.join("work");
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&fs_dir)
        .map_err(|e| Error::io(format!("creating {}", fs_dir.display()), e))?;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&work)
        .map_err(|e| Error::io(format!("creating {}", work.display()), e))?;
    if let Some(parent) = parents.first() {
        let parent_fs = parent.join("fs");
        let st = rustix::fs::stat(&parent_fs)
            .map_err(|e| Error::io(format!("inspecting {}", parent_fs.display()), e.into()))?;
        let fail =
            |e: rustix::io::Errno| Error::io(format!("setting up {}", fs_dir.display()), e.into());
        rustix::fs::chownat(
            rustix::fs::CWD,
            &fs_dir,
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(fail)?;
        rustix::fs::chmod(&fs_dir, Mode::from_raw_mode(st.st_mode)).map_err(fail)?;
    }
    Ok(())
}

/// Unmounts the probe overlay however `supported` ends.
struct UnmountOnDrop<'a>(&'a Path);

impl Drop for UnmountOnDrop<'_> {
    fn drop(&mut self) {
        if let Err(e) = crate::mount::unmount_all(self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "unmounting the overlayfs probe");
        }
    }
}

impl Snapshotter for OverlaySnapshotter {
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
        let r = self
            .common
            .create(ns, key, parent, labels, Kind::Active, &populate)?;
        Ok(self.mounts_of(&r))
    }

    fn view(
        &self,
        ns: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        let r = self
            .common
            .create(ns, key, parent, labels, Kind::View, &populate)?;
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
            lowers: r.parents.iter().map(|p| p.join("fs")).collect(),
            whiteouts: WhiteoutMode::Overlay,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_snapshot_support_probe_works_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        OverlaySnapshotter::supported(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);

        let store = Store::open(&dir.path().join("meta.db")).unwrap();
        let bad = dir.path().join("a,b");
        let err = OverlaySnapshotter::new(&bad, store).err().unwrap();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }
}
