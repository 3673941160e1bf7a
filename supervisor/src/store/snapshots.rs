//! Snapshot records in the `snapshots` tree (see the schema in `store`).
//!
//! ```text
//! tree "snapshots"
//!   <snapshotter>/<ns>/<key>   -> SnapshotRecord   (JSON)
//!   "\0next_id"                -> u64 (big endian)  last data-directory id handed out
//! ```
//!
//! The counter key starts with NUL, which no snapshotter name holds, so it never shows up
//! under a `<snapshotter>/` prefix. Every function that changes the tree flushes before it
//! returns, so a returned `Ok` is durable.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::error::{Error, Result};
use crate::labels::Labels;
use crate::store::{decode, encode, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    View,
    Active,
    Committed,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        })
    }
}

/// What callers see of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub parent: Option<String>,
    pub kind: Kind,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub labels: Labels,
}

const NEXT_ID: &[u8] = b"\0next_id";

/// One snapshot as stored. `id` names its data directory, so a commit (which changes the
/// key) never moves data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: u64,
    pub kind: Kind,
    /// Key of the parent, in the same snapshotter and namespace.
    pub parent: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl SnapshotRecord {
    /// What callers see of the record stored under `key`.
    pub fn info(&self, key: &str) -> Info {
        Info {
            name: key.to_string(),
            parent: self.parent.clone(),
            kind: self.kind,
            created_at: self.created_at,
            updated_at: self.updated_at,
            labels: self.labels.clone(),
        }
    }
}

/// `<snapshotter>/<ns>/<key>`.
pub fn record_key(snapshotter: &str, ns: &str, key: &str) -> Vec<u8> {
    let mut k = ns_prefix(snapshotter, ns);
    k.extend_from_slice(key.as_bytes());
    k
}

/// `<snapshotter>/<ns>/`: the prefix of every key of a namespace.
pub fn ns_prefix(snapshotter: &str, ns: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(snapshotter.len() + ns.len() + 2);
    k.extend_from_slice(snapshotter.as_bytes());
    k.push(b'/');
    k.extend_from_slice(ns.as_bytes());
    k.push(b'/');
    k
}

/// The record of `key`, if there is one.
pub fn get(
    store: &Store,
    snapshotter: &str,
    ns: &str,
    key: &str,
) -> Result<Option<SnapshotRecord>> {
    crate::store::get(&store.snapshots, &record_key(snapshotter, ns, key))
}

/// Stores a record under a key that must be free (AlreadyExists otherwise).
pub fn insert_new(
    store: &Store,
    snapshotter: &str,
    ns: &str,
    key: &str,
    record: &SnapshotRecord,
) -> Result<()> {
    let value = encode(record)?;
    let swapped = store.snapshots.compare_and_swap(
        record_key(snapshotter, ns, key),
        None::<&[u8]>,
        Some(value),
    )?;
    if swapped.is_err() {
        return Err(Error::already_exists(describe(ns, key)));
    }
    store.flush_blocking()
}

/// Replaces the record of an existing key (NotFound if it is gone).
pub fn replace(
    store: &Store,
    snapshotter: &str,
    ns: &str,
    key: &str,
    record: &SnapshotRecord,
) -> Result<()> {
    let k = record_key(snapshotter, ns, key);
    let value = encode(record)?;
    let mut missing = false;
    // The closure may run more than once, if another writer races it.
    store.snapshots.update_and_fetch(&k, |old| {
        missing = old.is_none();
        old.map(|_| value.clone())
    })?;
    if missing {
        return Err(Error::not_found(describe(ns, key)));
    }
    store.flush_blocking()
}

/// Deletes a record, returning it (None if there was none).
pub fn remove(
    store: &Store,
    snapshotter: &str,
    ns: &str,
    key: &str,
) -> Result<Option<SnapshotRecord>> {
    let old = store.snapshots.remove(record_key(snapshotter, ns, key))?;
    let old = old.map(|v| decode(&v)).transpose()?;
    if old.is_some() {
        store.flush_blocking()?;
    }
    Ok(old)
}

/// Moves the record at `key` to `name`, replacing it with `record`, in one transaction:
/// NotFound if `key` is gone, AlreadyExists if `name` is taken.
pub fn rename(
    store: &Store,
    snapshotter: &str,
    ns: &str,
    key: &str,
    name: &str,
    record: &SnapshotRecord,
) -> Result<()> {
    let from = record_key(snapshotter, ns, key);
    let to = record_key(snapshotter, ns, name);
    let value = encode(record)?;
    let outcome = store.snapshots.transaction(|tx| {
        if tx.get(&to)?.is_some() {
            return Err(ConflictableTransactionError::Abort(Error::already_exists(
                describe(ns, name),
            )));
        }
        if tx.remove(from.as_slice())?.is_none() {
            return Err(ConflictableTransactionError::Abort(Error::not_found(
                describe(ns, key),
            )));
        }
        tx.insert(to.as_slice(), value.as_slice())?;
        Ok(())
    });
    match outcome {
        Ok(()) => store.flush_blocking(),
        Err(TransactionError::Abort(e)) => Err(e),
        Err(TransactionError::Storage(e)) => Err(e.into()),
    }
}

/// Every record of a namespace, with its key, in key order.
pub fn list(store: &Store, snapshotter: &str, ns: &str) -> Result<Vec<(String, SnapshotRecord)>> {
    crate::store::scan(&store.snapshots, &ns_prefix(snapshotter, ns))
}

/// Every record of a snapshotter, as (namespace, key, record).
pub fn list_all(store: &Store, snapshotter: &str) -> Result<Vec<(String, String, SnapshotRecord)>> {
    let prefix = {
        let mut p = snapshotter.as_bytes().to_vec();
        p.push(b'/');
        p
    };
    let mut out = Vec::new();
    for (tail, record) in crate::store::scan::<SnapshotRecord>(&store.snapshots, &prefix)? {
        let (ns, key) = tail.split_once('/').ok_or_else(|| {
            Error::internal(format!(
                "metadata store: malformed snapshot key {snapshotter}/{tail}"
            ))
        })?;
        out.push((ns.to_string(), key.to_string(), record));
    }
    Ok(out)
}

/// Keys of the snapshots whose parent is `key`.
pub fn children(store: &Store, snapshotter: &str, ns: &str, key: &str) -> Result<Vec<String>> {
    Ok(list(store, snapshotter, ns)?
        .into_iter()
        .filter(|(_, r)| r.parent.as_deref() == Some(key))
        .map(|(k, _)| k)
        .collect())
}

/// Hands out a fresh id, never returned before by this database (durably so once the
/// record that uses it is flushed).
pub fn next_id(store: &Store) -> Result<u64> {
    let bumped = store.snapshots.update_and_fetch(NEXT_ID, |old| {
        Some(counter(old).saturating_add(1).to_be_bytes().to_vec())
    })?;
    let id = counter(bumped.as_deref());
    if id == u64::MAX {
        return Err(Error::ResourceExhausted("snapshot ids exhausted".into()));
    }
    Ok(id)
}

/// Makes sure the counter is at least `floor`, so that no later id collides with one in use
/// (the counter could lag behind after a restore of an older database).
pub fn raise_next_id(store: &Store, floor: u64) -> Result<()> {
    let before = store.snapshots.fetch_and_update(NEXT_ID, |old| {
        Some(counter(old).max(floor).to_be_bytes().to_vec())
    })?;
    if counter(before.as_deref()) < floor {
        store.flush_blocking()?;
    }
    Ok(())
}

fn counter(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// How messages name a snapshot.
pub fn describe(ns: &str, key: &str) -> String {
    format!("snapshot {key:?} in namespace {ns:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, parent: Option<&str>) -> SnapshotRecord {
        let now = SystemTime::now();
        SnapshotRecord {
            id,
            kind: Kind::Committed,
            parent: parent.map(str::to_string),
            labels: Labels::new(),
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn snapshot_records_round_trip_and_stay_in_their_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("meta.db")).unwrap();
        insert_new(&store, "native", "a", "x/y", &record(1, None)).unwrap();
        insert_new(&store, "native", "a", "z", &record(2, Some("x/y"))).unwrap();
        insert_new(&store, "native", "b", "x/y", &record(3, None)).unwrap();
        insert_new(&store, "overlayfs", "a", "x/y", &record(4, None)).unwrap();

        let err = insert_new(&store, "native", "a", "x/y", &record(5, None)).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err}");

        let keys: Vec<_> = list(&store, "native", "a")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["x/y", "z"]);
        assert_eq!(children(&store, "native", "a", "x/y").unwrap(), ["z"]);
        assert!(children(&store, "native", "b", "x/y").unwrap().is_empty());
        assert_eq!(list_all(&store, "native").unwrap().len(), 3);

        rename(&store, "native", "a", "z", "w", &record(2, Some("x/y"))).unwrap();
        assert!(get(&store, "native", "a", "z").unwrap().is_none());
        assert_eq!(get(&store, "native", "a", "w").unwrap().unwrap().id, 2);
        let err = rename(&store, "native", "a", "w", "x/y", &record(2, None)).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
        let err = rename(&store, "native", "a", "gone", "v", &record(2, None)).unwrap_err();
        assert!(err.is_not_found(), "{err}");

        assert_eq!(remove(&store, "native", "a", "w").unwrap().unwrap().id, 2);
        assert!(remove(&store, "native", "a", "w").unwrap().is_none());
    }

    #[test]
    fn snapshot_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("meta.db")).unwrap();
        let a = next_id(&store).unwrap();
        let b = next_id(&store).unwrap();
        assert!(b > a && a > 0);
        raise_next_id(&store, 100).unwrap();
        assert_eq!(next_id(&store).unwrap(), 101);
        raise_next_id(&store, 5).unwrap();
        assert_eq!(next_id(&store).unwrap(), 102);
        assert!(list_all(&store, "native").unwrap().is_empty());
    }
}
