//! The bookkeeping every snapshotter shares: checking keys and parents, records in the
//! metadata store, data directories made and removed crash-safely, startup recovery.
//!
//! On disk, under a snapshotter's root:
//!
//! ```text
//! snapshots/<id>/   a snapshot's data (what is inside is the snapshotter's business)
//! tmp/<id>/         data being made, not yet under its final name
//! trash/<id>/       data being removed
//! ```
//!
//! Making a snapshot: data is built in `tmp/<id>`, then the record is stored (flushed), then
//! the directory is renamed to `snapshots/<id>`. Removing: the record is deleted (flushed),
//! then the directory is renamed into `trash/` and deleted. Whatever a crash interrupts is
//! finished or undone by `Common::open`: a record whose data is still in `tmp/` gets it
//! renamed into place, data without a record goes, and `trash/` is emptied.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use super::tree::{disk_usage, remove_tree};
use super::{Info, Kind, Usage};
use crate::error::{Error, Result};
use crate::labels::{self, Labels};
use crate::store::snapshots::{self as records, describe, SnapshotRecord};
use crate::store::Store;

const MAX_KEY: usize = 4096;

/// A snapshot looked up with its parents.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub record: SnapshotRecord,
    /// Data directories (`snapshots/<id>`) of the parent chain, nearest first.
    pub parents: Vec<PathBuf>,
}

pub(crate) struct Common {
    name: &'static str,
    root: PathBuf,
    store: Store,
    /// Serialises the check-then-write steps of mutations. Long work (copying a tree) runs
    /// outside it and is checked again before it becomes visible.
    lock: Mutex<()>,
}

impl Common {
    /// Opens the snapshotter `name` at `root`, creating its directories and finishing or
    /// undoing whatever a crash interrupted. Only one `Common` may use a root at a time.
    pub fn open(name: &'static str, root: &Path, store: Store) -> Result<Common> {
        for dir in ["snapshots", "tmp", "trash"] {
            let path = root.join(dir);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&path)
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        }
        let root = fs::canonicalize(root)
            .map_err(|e| Error::io(format!("resolving {}", root.display()), e))?;
        if root.to_str().is_none() {
            return Err(Error::invalid(format!(
                "snapshotter root {}: must be UTF-8",
                root.display()
            )));
        }
        let common = Common {
            name,
            root,
            store,
            lock: Mutex::new(()),
        };
        common.recover()?;
        Ok(common)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `snapshots/<id>`: the snapshot's data directory.
    pub fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded value is `()`: a panic elsewhere cannot leave it inconsistent.
        self.lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the snapshot `key`. `populate` fills the new data directory (given the parents'
    /// data directories, nearest first); it runs unlocked, and its work is discarded if it
    /// fails or if the key or parent changed meanwhile.
    pub fn create(
        &self,
        ns: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
        kind: Kind,
        populate: &dyn Fn(&Path, &[PathBuf]) -> Result<()>,
    ) -> Result<Resolved> {
        validate_ns(ns)?;
        validate_key(ns, key)?;
        let parent = parent.filter(|p| !p.is_empty());
        if let Some(p) = parent {
            validate_key(ns, p)?;
        }
        labels::validate(&labels).map_err(|e| e.context(describe(ns, key)))?;

        let (id, chain) = {
            let _guard = self.lock();
            if records::get(&self.store, self.name, ns, key)?.is_some() {
                return Err(Error::already_exists(describe(ns, key)));
            }
            let chain = self.chain(ns, parent)?;
            (records::next_id(&self.store)?, chain)
        };
        let tmp = self.root.join("tmp").join(id.to_string());
        let mut cleanup = RemoveOnDrop(Some(tmp.clone()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        let parents: Vec<PathBuf> = chain.iter().map(|id| self.dir(*id)).collect();
        populate(&tmp, &parents).map_err(|e| e.context(describe(ns, key)))?;

        let now = SystemTime::now();
        let record = SnapshotRecord {
            id,
            kind,
            parent: parent.map(str::to_string),
            labels,
            created_at: now,
            updated_at: now,
        };
        let _guard = self.lock();
        if self.chain(ns, parent)? != chain {
            return Err(Error::precondition(format!(
                "{}: its parent changed while it was being made",
                describe(ns, key)
            )));
        }
        records::insert_new(&self.store, self.name, ns, key, &record)?;
        let dir = self.dir(id);
        if let Err(e) = fs::rename(&tmp, &dir) {
            if let Err(undo) = records::remove(&self.store, self.name, ns, key) {
                tracing::error!(ns, key, error = %undo, "removing the record of a snapshot that could not be made");
            }
            return Err(Error::io(
                format!("{}: moving its data into place", describe(ns, key)),
                e,
            ));
        }
        cleanup.0 = None;
        Ok(Resolved { record, parents })
    }

    /// Ids of `parent` and its ancestors, nearest first; `parent` must be committed.
    fn chain(&self, ns: &str, parent: Option<&str>) -> Result<Vec<u64>> {
        let Some(first) = parent else {
            return Ok(Vec::new());
        };
        let record = records::get(&self.store, self.name, ns, first)?
            .ok_or_else(|| Error::not_found(format!("parent {}", describe(ns, first))))?;
        if record.kind != Kind::Committed {
            return Err(Error::invalid(format!(
                "parent {}: is {}, only a committed snapshot can be a parent",
                describe(ns, first),
                record.kind
            )));
        }
        let mut ids = vec![record.id];
        let mut seen = HashSet::from([first.to_string()]);
        let mut next = record.parent;
        while let Some(key) = next {
            if !seen.insert(key.clone()) {
                return Err(Error::internal(format!(
                    "{}: parent cycle in metadata",
                    describe(ns, &key)
                )));
            }
            let record = records::get(&self.store, self.name, ns, &key)?.ok_or_else(|| {
                Error::internal(format!(
                    "{}: missing, yet a parent of {first:?}",
                    describe(ns, &key)
                ))
            })?;
            ids.push(record.id);
            next = record.parent;
        }
        Ok(ids)
    }

    /// The snapshot `key`, with its parents' data directories.
    pub fn resolve(&self, ns: &str, key: &str) -> Result<Resolved> {
        validate_ns(ns)?;
        validate_key(ns, key)?;
        let record = records::get(&self.store, self.name, ns, key)?
            .ok_or_else(|| Error::not_found(describe(ns, key)))?;
        let parents = self
            .chain(ns, record.parent.as_deref())
            .map_err(|e| Error::internal(format!("{}: {e}", describe(ns, key))))?
            .into_iter()
            .map(|id| self.dir(id))
            .collect();
        Ok(Resolved { record, parents })
    }

    /// Like `resolve`, for operations that only make sense on an active snapshot or a view.
    pub fn resolve_mountable(&self, ns: &str, key: &str) -> Result<Resolved> {
        let r = self.resolve(ns, key)?;
        if r.record.kind == Kind::Committed {
            return Err(Error::invalid(format!(
                "{}: is committed; only active snapshots and views have mounts",
                describe(ns, key)
            )));
        }
        Ok(r)
    }

    /// Like `resolve`, for writing a layer, which only an active snapshot takes.
    pub fn resolve_active(&self, ns: &str, key: &str) -> Result<Resolved> {
        let r = self.resolve(ns, key)?;
        if r.record.kind != Kind::Active {
            return Err(Error::invalid(format!(
                "{}: is {}, layers are applied only to active snapshots",
                describe(ns, key),
                r.record.kind
            )));
        }
        Ok(r)
    }

    pub fn commit(&self, ns: &str, name: &str, key: &str, labels: Labels) -> Result<Info> {
        validate_ns(ns)?;
        validate_key(ns, name)?;
        validate_key(ns, key)?;
        let _guard = self.lock();
        let old = records::get(&self.store, self.name, ns, key)?
            .ok_or_else(|| Error::not_found(describe(ns, key)))?;
        if old.kind != Kind::Active {
            return Err(Error::precondition(format!(
                "{}: is {}, only an active snapshot can be committed",
                describe(ns, key),
                old.kind
            )));
        }
        // The committed snapshot keeps the active one's labels, overlaid with the new ones.
        let mut merged = old.labels.clone();
        merged.extend(labels);
        labels::validate(&merged).map_err(|e| e.context(describe(ns, name)))?;
        let now = SystemTime::now();
        let record = SnapshotRecord {
            kind: Kind::Committed,
            labels: merged,
            created_at: now,
            updated_at: now,
            ..old
        };
        records::rename(&self.store, self.name, ns, key, name, &record)?;
        Ok(record.info(name))
    }

    pub fn remove(&self, ns: &str, key: &str) -> Result<()> {
        validate_ns(ns)?;
        validate_key(ns, key)?;
        let id = {
            let _guard = self.lock();
            if records::get(&self.store, self.name, ns, key)?.is_none() {
                return Err(Error::not_found(describe(ns, key)));
            }
            let children = records::children(&self.store, self.name, ns, key)?;
            if !children.is_empty() {
                let shown: Vec<&String> = children.iter().take(5).collect();
                return Err(Error::precondition(format!(
                    "{}: is the parent of {} snapshot(s) ({shown:?}{})",
                    describe(ns, key),
                    children.len(),
                    if children.len() > shown.len() {
                        ", ..."
                    } else {
                        ""
                    }
                )));
            }
            let record = records::remove(&self.store, self.name, ns, key)?
                .ok_or_else(|| Error::not_found(describe(ns, key)))?;
            record.id
        };
        // The snapshot is gone once its record is; data that cannot be deleted now is
        // retried at the next start, so it is not the caller's error.
        if let Err(e) = self.discard(&self.dir(id)) {
            tracing::warn!(ns, key, error = %e, "snapshot removed, its data not yet");
        }
        Ok(())
    }

    /// Moves a data directory out of sight into `trash/`, then deletes it.
    fn discard(&self, dir: &Path) -> Result<()> {
        let Some(name) = dir.file_name() else {
            return Ok(());
        };
        let trash = self.root.join("trash").join(name);
        match fs::rename(dir, &trash) {
            Ok(()) => remove_tree(&trash),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(
                format!("moving {} to {}", dir.display(), trash.display()),
                e,
            )),
        }
    }

    pub fn stat(&self, ns: &str, key: &str) -> Result<Info> {
        validate_ns(ns)?;
        validate_key(ns, key)?;
        records::get(&self.store, self.name, ns, key)?
            .map(|r| r.info(key))
            .ok_or_else(|| Error::not_found(describe(ns, key)))
    }

    pub fn update(&self, ns: &str, key: &str, new: Labels, paths: &[String]) -> Result<Info> {
        validate_ns(ns)?;
        validate_key(ns, key)?;
        let _guard = self.lock();
        let mut record = records::get(&self.store, self.name, ns, key)?
            .ok_or_else(|| Error::not_found(describe(ns, key)))?;
        let others = labels::apply_mask(&mut record.labels, &new, paths);
        if !others.is_empty() {
            return Err(Error::invalid(format!(
                "{}: cannot update {others:?}; only \"labels\" and \"labels.<key>\" can be",
                describe(ns, key)
            )));
        }
        labels::validate(&record.labels).map_err(|e| e.context(describe(ns, key)))?;
        record.updated_at = SystemTime::now();
        records::replace(&self.store, self.name, ns, key, &record)?;
        Ok(record.info(key))
    }

    pub fn list(&self, ns: &str) -> Result<Vec<Info>> {
        validate_ns(ns)?;
        Ok(records::list(&self.store, self.name, ns)?
            .into_iter()
            .map(|(key, r)| r.info(&key))
            .collect())
    }

    /// What `subdir` of the snapshot's data directory uses on disk.
    pub fn usage(&self, ns: &str, key: &str, subdir: &str) -> Result<Usage> {
        let r = self.resolve(ns, key)?;
        disk_usage(&self.dir(r.record.id).join(subdir)).map_err(|e| e.context(describe(ns, key)))
    }

    /// Finishes or undoes what a crash interrupted (see the module comment).
    fn recover(&self) -> Result<()> {
        let records = records::list_all(&self.store, self.name)?;
        let ids: HashSet<u64> = records.iter().map(|(_, _, r)| r.id).collect();
        if let Some(max) = ids.iter().max() {
            records::raise_next_id(&self.store, *max)?;
        }
        for (path, _) in self.entries("trash")? {
            if let Err(e) = remove_tree(&path) {
                tracing::warn!(path = %path.display(), error = %e, "emptying the snapshot trash");
            }
        }
        for (path, id) in self.entries("tmp")? {
            let dir = id.map(|id| self.dir(id));
            let adopt =
                id.is_some_and(|id| ids.contains(&id)) && dir.as_ref().is_some_and(|d| !d.exists());
            let outcome = match dir {
                Some(dir) if adopt => fs::rename(&path, &dir)
                    .map_err(|e| Error::io(format!("moving {} into place", path.display()), e)),
                _ => self.discard(&path),
            };
            if let Err(e) = outcome {
                tracing::warn!(path = %path.display(), error = %e, "recovering an unfinished snapshot");
            }
        }
        for (path, id) in self.entries("snapshots")? {
            if id.is_some_and(|id| !ids.contains(&id)) {
                tracing::info!(path = %path.display(), "removing snapshot data that has no record");
                if let Err(e) = self.discard(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "removing orphaned snapshot data");
                }
            }
        }
        for (ns, key, r) in &records {
            if !self.dir(r.id).exists() {
                tracing::error!(
                    snapshotter = self.name,
                    ns,
                    key,
                    id = r.id,
                    "snapshot data is missing"
                );
            }
        }
        Ok(())
    }

    /// Entries of one of the root's directories, with the id their name holds, if any.
    fn entries(&self, sub: &str) -> Result<Vec<(PathBuf, Option<u64>)>> {
        let dir = self.root.join(sub);
        let read =
            fs::read_dir(&dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let mut out = Vec::new();
        for entry in read {
            let entry = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
            let id = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok());
            out.push((entry.path(), id));
        }
        Ok(out)
    }
}

/// Deletes a half-made data directory unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            if let Err(e) = remove_tree(&path) {
                tracing::warn!(path = %path.display(), error = %e, "removing a half-made snapshot");
            }
        }
    }
}

fn validate_ns(ns: &str) -> Result<()> {
    if ns.is_empty() || ns.contains('/') || ns.contains('\0') {
        return Err(Error::invalid(format!(
            "namespace {ns:?}: must be non-empty, without '/' or NUL"
        )));
    }
    Ok(())
}

/// Keys (and commit names): 1 to 4096 bytes, no NUL.
pub(crate) fn validate_key(ns: &str, key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY || key.contains('\0') {
        let shown: String = key.chars().take(64).collect();
        return Err(Error::invalid(format!(
            "snapshot key {shown:?} in namespace {ns:?}: must be 1 to {MAX_KEY} bytes, without NUL"
        )));
    }
    Ok(())
}
