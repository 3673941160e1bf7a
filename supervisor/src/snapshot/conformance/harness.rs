//! The conformance suite's harness: the implementations under test, a snapshotter on a
//! temporary root, and mount points that unmount themselves however a test ends.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::labels::Labels;
use crate::mount::{mount_all, unmount_all};
use crate::snapshot::{Mount, Snapshotter, WhiteoutMode};
use crate::store::Store;

/// How to make one implementation, and what it documents about itself.
pub(super) struct Impl {
    pub name: &'static str,
    pub open: fn(&Path, Store) -> crate::error::Result<Box<dyn Snapshotter>>,
    pub whiteouts: WhiteoutMode,
}

pub(super) const OVERLAY: Impl = Impl {
    name: "overlayfs",
    open: |root, store| {
        Ok(Box::new(crate::snapshot::overlay::OverlaySnapshotter::new(
            root, store,
        )?))
    },
    whiteouts: WhiteoutMode::Overlay,
};

pub(super) const NATIVE: Impl = Impl {
    name: "native",
    open: |root, store| {
        Ok(Box::new(crate::snapshot::native::NativeSnapshotter::new(
            root, store,
        )?))
    },
    whiteouts: WhiteoutMode::Delete,
};

/// A snapshotter on its own temporary root and store. Dropping it unmounts anything a
/// failed test left mounted below the root before the directory goes.
pub(super) struct Env {
    imp: &'static Impl,
    sn: Option<Box<dyn Snapshotter>>,
    pub store: Option<Store>,
    mounts: AtomicUsize,
    dir: tempfile::TempDir,
}

impl Env {
    pub fn new(imp: &'static Impl) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mut env = Env {
            imp,
            sn: None,
            store: None,
            mounts: AtomicUsize::new(0),
            dir,
        };
        env.reopen();
        env
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("snapshots").join(self.imp.name)
    }

    pub fn sn(&self) -> &dyn Snapshotter {
        self.sn.as_deref().unwrap()
    }

    /// Drops the snapshotter and the database, then opens both again, as a restart would.
    pub fn reopen(&mut self) {
        self.sn = None;
        self.store = None;
        let store = Store::open(&self.dir.path().join("meta.db")).unwrap();
        self.sn = Some((self.imp.open)(&self.root(), store.clone()).unwrap());
        self.store = Some(store);
    }

    /// Mounts `mounts` on a fresh directory, unmounted when the guard drops.
    pub fn mount(&self, mounts: &[Mount]) -> Mounted<'_> {
        let n = self.mounts.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join("mnt").join(n.to_string());
        fs::create_dir_all(&path).unwrap();
        let guard = Mounted { path, _env: self };
        mount_all(mounts, &guard.path).unwrap();
        guard
    }

    pub fn mount_key(&self, ns: &str, key: &str) -> Mounted<'_> {
        self.mount(&self.sn().mounts(ns, key).unwrap())
    }

    pub fn data_dirs(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.root().join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = unmount_all(self.dir.path());
    }
}

pub(super) struct Mounted<'a> {
    pub path: PathBuf,
    _env: &'a Env,
}

impl Mounted<'_> {
    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn read(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.p(rel)).ok()
    }
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let result = unmount_all(&self.path);
        // A second panic while unwinding would abort; `Env` retries then anyway.
        if !std::thread::panicking() {
            result.unwrap();
        }
    }
}

pub(super) const NS: &str = "default";

pub(super) fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Makes a committed snapshot `name` over `parent` whose mount got `files` written.
pub(super) fn layer(env: &Env, name: &str, parent: Option<&str>, files: &[(&str, &str)]) {
    let key = format!("{name}-active");
    let mounts = env.sn().prepare(NS, &key, parent, Labels::new()).unwrap();
    {
        let m = env.mount(&mounts);
        for (path, content) in files {
            if let Some(dir) = m.p(path).parent() {
                fs::create_dir_all(dir).unwrap();
            }
            fs::write(m.p(path), content).unwrap();
        }
    }
    env.sn().commit(NS, name, &key, Labels::new()).unwrap();
}
