//! The content store: immutable blobs named by their digest, shared on disk by every
//! namespace, and per-namespace records of which blobs a namespace holds.
//!
//! On disk, under `<root>/content`:
//! ```text
//! blobs/sha256/<hex>          committed blobs (read-only, never rewritten)
//! ingest/<id>/data            bytes of a write in progress
//! ingest/<id>/status.json     its ref, namespace, announced total and digest, times
//! ```
//! A blob becomes visible only by an atomic rename after its size and digest were checked and
//! its bytes synced, so a half-written blob is never seen under its digest.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::labels::{self, Labels};
use crate::store::{self, ContentRecord, Store};

pub mod digest;

use digest::{Hasher, HashingWriter};

/// What a namespace knows of one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub digest: String,
    pub size: i64,
    pub labels: Labels,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// State of a write in progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub namespace: String,
    pub r#ref: String,
    pub offset: i64,
    pub total: i64,
    pub expected: String,
    pub started_at: SystemTime,
    pub updated_at: SystemTime,
}

#[derive(Clone)]
pub struct ContentStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    store: Store,
    /// Ingest ids with a writer open: a ref takes one writer at a time.
    writing: Mutex<HashMap<String, ()>>,
    /// Blobs that work in progress relies on, with a count of holders; never removed while
    /// held even if no namespace records them yet.
    held: Mutex<HashMap<String, usize>>,
}

/// Keeps a blob from being removed while it is alive.
pub struct Hold {
    inner: Arc<Inner>,
    digest: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Ok(mut held) = self.inner.held.lock() {
            if let Some(n) = held.get_mut(&self.digest) {
                *n -= 1;
                if *n == 0 {
                    held.remove(&self.digest);
                }
            }
        }
    }
}

fn ingest_id(ns: &str, r: &str) -> String {
    let mut h = Hasher::new();
    h.update(ns.as_bytes());
    h.update(b"\0");
    h.update(r.as_bytes());
    h.finish()["sha256:".len()..][..32].to_string()
}

fn validate_ref(r: &str) -> Result<()> {
    if r.is_empty() || r.len() > 512 || r.contains('\0') {
        return Err(Error::invalid(format!(
            "ingest ref {r:?}: must be 1 to 512 bytes without NUL"
        )));
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing {}", dir.display()), e))
}

impl ContentStore {
    pub fn new(root: &Path, store: Store) -> Result<ContentStore> {
        let dir = root.join("content");
        for sub in ["blobs/sha256", "ingest"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p)
                .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
        }
        Ok(ContentStore {
            inner: Arc::new(Inner {
                dir,
                store,
                writing: Mutex::new(HashMap::new()),
                held: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Where the blob lives on disk (whether or not it exists).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest::hex_of(digest)?;
        Ok(self.inner.dir.join("blobs/sha256").join(hex))
    }

    pub fn blob_exists(&self, digest: &str) -> Result<bool> {
        Ok(self.blob_path(digest)?.exists())
    }

    fn what(ns: &str, digest: &str) -> String {
        format!("content {digest} in namespace {ns:?}")
    }

    pub fn info(&self, ns: &str, digest: &str) -> Result<Info> {
        digest::validate(digest)?;
        let rec: ContentRecord = store::get(&self.inner.store.content, &store::key(ns, digest))?
            .ok_or_else(|| Error::not_found(Self::what(ns, digest)))?;
        Ok(Info {
            digest: digest.to_string(),
            size: rec.size,
            labels: rec.labels,
            created_at: rec.created_at,
            updated_at: rec.updated_at,
        })
    }

    pub fn has(&self, ns: &str, digest: &str) -> Result<bool> {
        Ok(self
            .inner
            .store
            .content
            .contains_key(store::key(ns, digest))?)
    }

    pub fn list(&self, ns: &str) -> Result<Vec<Info>> {
        let recs: Vec<(String, ContentRecord)> =
            store::scan(&self.inner.store.content, &store::ns_prefix(ns))?;
        Ok(recs
            .into_iter()
            .map(|(digest, rec)| Info {
                digest,
                size: rec.size,
                labels: rec.labels,
                created_at: rec.created_at,
                updated_at: rec.updated_at,
            })
            .collect())
    }

    pub fn update(&self, ns: &str, digest: &str, new: &Labels, paths: &[String]) -> Result<Info> {
        digest::validate(digest)?;
        labels::validate(new)?;
        let key = store::key(ns, digest);
        let mut rec: ContentRecord = store::get(&self.inner.store.content, &key)?
            .ok_or_else(|| Error::not_found(Self::what(ns, digest)))?;
        let others = labels::apply_mask(&mut rec.labels, new, paths);
        if let Some(p) = others.first() {
            return Err(Error::invalid(format!(
                "update of {}: field {p:?} cannot be updated",
                Self::what(ns, digest)
            )));
        }
        labels::validate(&rec.labels)?;
        rec.updated_at = SystemTime::now();
        self.inner.store.content.insert(key, store::encode(&rec)?)?;
        self.inner.store.flush_blocking()?;
        self.info(ns, digest)
    }

    /// Records that `ns` holds the committed blob `digest` (no-op if it already does).
    pub fn record(&self, ns: &str, digest: &str, labels: &Labels) -> Result<()> {
        let path = self.blob_path(digest)?;
        let size = fs::metadata(&path)
            .map_err(|e| Error::io(format!("blob {digest}"), e))?
            .len() as i64;
        let key = store::key(ns, digest);
        if self.inner.store.content.contains_key(&key)? {
            return Ok(());
        }
        let now = SystemTime::now();
        let rec = ContentRecord {
            size,
            labels: labels.clone(),
            created_at: now,
            updated_at: now,
        };
        self.inner.store.content.insert(key, store::encode(&rec)?)?;
        Ok(())
    }

    /// Removes the namespace's record of a blob, and the blob itself when no namespace
    /// records it and nothing holds it. Does not flush.
    pub fn delete(&self, ns: &str, digest: &str) -> Result<()> {
        digest::validate(digest)?;
        let key = store::key(ns, digest);
        if self.inner.store.content.remove(&key)?.is_none() {
            return Err(Error::not_found(Self::what(ns, digest)));
        }
        self.remove_if_unreferenced(digest)
    }

    /// Deletes the blob from disk when no namespace records it and nobody holds it.
    pub fn remove_if_unreferenced(&self, digest: &str) -> Result<()> {
        let held = self
            .inner
            .held
            .lock()
            .map_err(|_| Error::internal("content hold table poisoned"))?;
        if held.contains_key(digest) {
            return Ok(());
        }
        for kv in self.inner.store.content.iter() {
            let (k, _) = kv?;
            if k.ends_with(digest.as_bytes())
                && k.len() > digest.len()
                && k[k.len() - digest.len() - 1] == b'/'
            {
                return Ok(());
            }
        }
        let path = self.blob_path(digest)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing blob {digest}"), e)),
        }
    }

    /// Keeps `digest` on disk while the returned hold lives.
    pub fn hold(&self, digest: &str) -> Hold {
        if let Ok(mut held) = self.inner.held.lock() {
            *held.entry(digest.to_string()).or_insert(0) += 1;
        }
        Hold {
            inner: self.inner.clone(),
            digest: digest.to_string(),
        }
    }

    /// Opens a blob the namespace holds, for reading.
    pub fn open(&self, ns: &str, digest: &str) -> Result<File> {
        self.info(ns, digest)?;
        self.open_blob(digest)
    }

    /// Opens a committed blob whether or not a namespace records it (for work in progress
    /// that holds it).
    pub fn open_blob(&self, digest: &str) -> Result<File> {
        let path = self.blob_path(digest)?;
        File::open(&path).map_err(|e| Error::io(format!("blob {digest}"), e))
    }

    /// Reads a whole blob that is expected to be small (manifests, configs, indexes).
    pub fn read_small(&self, digest: &str, limit: u64) -> Result<Vec<u8>> {
        let f = self.open_blob(digest)?;
        let len = f
            .metadata()
            .map_err(|e| Error::io(format!("blob {digest}"), e))?
            .len();
        if len > limit {
            return Err(Error::invalid(format!(
                "blob {digest}: {len} bytes, more than the {limit} allowed for this kind"
            )));
        }
        let mut buf = Vec::with_capacity(len as usize);
        f.take(limit)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(format!("reading blob {digest}"), e))?;
        Ok(buf)
    }

    /// Writes a blob from a reader in one go, checking the digest and size when given, and
    /// returns (digest, size, newly_created). The blob is held by the returned `Hold` until
    /// the caller records it in a namespace.
    pub fn write_blob(
        &self,
        reader: &mut dyn Read,
        expected: Option<&str>,
        expected_size: Option<i64>,
    ) -> Result<(String, i64, bool, Hold)> {
        if let Some(d) = expected {
            digest::validate(d)?;
        }
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.inner.dir.join("ingest"))
            .map_err(|e| Error::io("creating an ingest file", e))?;
        let mut w =
            HashingWriter::new(io::BufWriter::with_capacity(1 << 20, tmp), Hasher::new(), 0);
        copy_large(reader, &mut w).map_err(|e| e.context("writing blob"))?;
        let (bw, hasher, count) = w.into_parts();
        let tmp = bw
            .into_inner()
            .map_err(|e| Error::io("writing blob", e.into_error()))?;
        let actual = hasher.finish();
        if let Some(d) = expected {
            if d != actual {
                return Err(Error::invalid(format!(
                    "blob {d}: content has digest {actual}"
                )));
            }
        }
        if let Some(s) = expected_size {
            if s != count as i64 {
                return Err(Error::invalid(format!(
                    "blob {actual}: expected {s} bytes, got {count}"
                )));
            }
        }
        let hold = self.hold(&actual);
        let created = self.publish(tmp, &actual)?;
        Ok((actual, count as i64, created, hold))
    }

    /// Moves a fully written and verified temp file into place under its digest.
    fn publish(&self, tmp: tempfile::NamedTempFile, digest: &str) -> Result<bool> {
        let path = self.blob_path(digest)?;
        if path.exists() {
            return Ok(false);
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io(format!("syncing blob {digest}"), e))?;
        let mut perms = tmp
            .as_file()
            .metadata()
            .map_err(|e| Error::io("blob metadata", e))?
            .permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
        fs::set_permissions(tmp.path(), perms).map_err(|e| Error::io("blob permissions", e))?;
        tmp.persist(&path)
            .map_err(|e| Error::io(format!("committing blob {digest}"), e.error))?;
        sync_dir(&self.inner.dir.join("blobs/sha256"))?;
        Ok(true)
    }

    /// Removes temporary files of one-shot blob writes (`write_blob`) that a crash left. Call
    /// only when no such write can be running (garbage collection holds its lock).
    pub fn remove_stale_temp_files(&self) -> Result<()> {
        let dir = self.inner.dir.join("ingest");
        let entries = fs::read_dir(&dir).map_err(|e| Error::io("listing ingests", e))?;
        for e in entries.flatten() {
            let is_temp = e.file_name().to_string_lossy().starts_with("blob-")
                && e.file_type().map(|t| t.is_file()).unwrap_or(false);
            if is_temp {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    // ----- resumable writes by ref -----

    fn ingest_dir(&self, ns: &str, r: &str) -> PathBuf {
        self.inner.dir.join("ingest").join(ingest_id(ns, r))
    }

    fn read_status(dir: &Path) -> Result<Option<Status>> {
        match fs::read(dir.join("status.json")) {
            Ok(b) => Ok(Some(store::decode(&b)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("ingest {}", dir.display()), e)),
        }
    }

    pub fn status(&self, ns: &str, r: &str) -> Result<Status> {
        validate_ref(r)?;
        Self::read_status(&self.ingest_dir(ns, r))?
            .ok_or_else(|| Error::not_found(format!("ingest {r:?} in namespace {ns:?}")))
    }

    pub fn list_statuses(&self, ns: &str) -> Result<Vec<Status>> {
        let mut out = Vec::new();
        let dir = self.inner.dir.join("ingest");
        for e in fs::read_dir(&dir).map_err(|e| Error::io("listing ingests", e))? {
            let e = e.map_err(|e| Error::io("listing ingests", e))?;
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            if let Some(s) = Self::read_status(&e.path())? {
                if s.namespace == ns {
                    out.push(s);
                }
            }
        }
        out.sort_by(|a, b| a.r#ref.cmp(&b.r#ref));
        Ok(out)
    }

    pub fn abort(&self, ns: &str, r: &str) -> Result<()> {
        validate_ref(r)?;
        let id = ingest_id(ns, r);
        self.lock_ref(&id, r)?;
        let dir = self.ingest_dir(ns, r);
        let res = if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| Error::io(format!("aborting ingest {r:?}"), e))
        } else {
            Err(Error::not_found(format!(
                "ingest {r:?} in namespace {ns:?}"
            )))
        };
        self.unlock_ref(&id);
        res
    }

    fn lock_ref(&self, id: &str, r: &str) -> Result<()> {
        let mut w = self
            .inner
            .writing
            .lock()
            .map_err(|_| Error::internal("ingest table poisoned"))?;
        if w.insert(id.to_string(), ()).is_some() {
            return Err(Error::Unavailable(format!(
                "ingest {r:?}: another writer holds it"
            )));
        }
        Ok(())
    }

    fn unlock_ref(&self, id: &str) {
        if let Ok(mut w) = self.inner.writing.lock() {
            w.remove(id);
        }
    }

    /// Opens (or resumes) the write `r` in namespace `ns`. One writer per ref at a time.
    pub fn writer(&self, ns: &str, r: &str, total: i64, expected: &str) -> Result<Writer> {
        validate_ref(r)?;
        if !expected.is_empty() {
            digest::validate(expected)?;
        }
        if total < 0 {
            return Err(Error::invalid(format!("ingest {r:?}: negative total")));
        }
        let id = ingest_id(ns, r);
        self.lock_ref(&id, r)?;
        match self.open_writer(ns, r, total, expected, &id) {
            Ok(w) => Ok(w),
            Err(e) => {
                self.unlock_ref(&id);
                Err(e)
            }
        }
    }

    fn open_writer(
        &self,
        ns: &str,
        r: &str,
        total: i64,
        expected: &str,
        id: &str,
    ) -> Result<Writer> {
        let dir = self.ingest_dir(ns, r);
        let now = SystemTime::now();
        let mut status = match Self::read_status(&dir)? {
            Some(s) => s,
            None => {
                fs::create_dir_all(&dir).map_err(|e| Error::io("creating ingest", e))?;
                Status {
                    namespace: ns.to_string(),
                    r#ref: r.to_string(),
                    offset: 0,
                    total: 0,
                    expected: String::new(),
                    started_at: now,
                    updated_at: now,
                }
            }
        };
        if total > 0 {
            status.total = total;
        }
        if !expected.is_empty() {
            status.expected = expected.to_string();
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(dir.join("data"))
            .map_err(|e| Error::io(format!("ingest {r:?}"), e))?;
        // The hash state is not persisted: a resumed write re-reads what is already there.
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut offset: u64 = 0;
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| Error::io(format!("ingest {r:?}"), e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io(format!("ingest {r:?}"), e))?;
        status.offset = offset as i64;
        let w = Writer {
            store: self.clone(),
            id: id.to_string(),
            dir,
            status,
            out: Some(HashingWriter::new(file, hasher, offset)),
        };
        w.save_status()?;
        Ok(w)
    }
}

/// A write in progress. Dropping it keeps the ingest for a later resume.
pub struct Writer {
    store: ContentStore,
    id: String,
    dir: PathBuf,
    status: Status,
    out: Option<HashingWriter<File>>,
}

impl Writer {
    pub fn status(&self) -> &Status {
        &self.status
    }

    fn save_status(&self) -> Result<()> {
        let tmp = self.dir.join("status.json.tmp");
        fs::write(&tmp, store::encode(&self.status)?)
            .and_then(|_| fs::rename(&tmp, self.dir.join("status.json")))
            .map_err(|e| Error::io(format!("ingest {:?}", self.status.r#ref), e))
    }

    fn out(&mut self) -> Result<&mut HashingWriter<File>> {
        self.out
            .as_mut()
            .ok_or_else(|| Error::precondition("ingest already committed"))
    }

    /// Appends `data`, which must start at the current offset.
    pub fn write_at(&mut self, offset: i64, data: &[u8]) -> Result<()> {
        if offset != self.status.offset {
            return Err(Error::invalid(format!(
                "ingest {:?}: write at offset {offset}, but the ingest is at {}",
                self.status.r#ref, self.status.offset
            )));
        }
        if self.status.total > 0 && self.status.offset + data.len() as i64 > self.status.total {
            return Err(Error::invalid(format!(
                "ingest {:?}: data goes past the announced total of {} bytes",
                self.status.r#ref, self.status.total
            )));
        }
        let r = self.status.r#ref.clone();
        let out = self.out()?;
        out.write_all(data)
            .map_err(|e| Error::io(format!("ingest {r:?}"), e))?;
        self.status.offset += data.len() as i64;
        self.status.updated_at = SystemTime::now();
        Ok(())
    }

    /// Records the current offset so that Status reports it (done at stream ends).
    pub fn checkpoint(&mut self) -> Result<()> {
        self.save_status()
    }

    /// Checks size and digest, makes the blob visible, records it in the namespace, and
    /// removes the ingest. Returns the digest.
    pub fn commit(mut self, total: i64, expected: &str, labels: &Labels) -> Result<String> {
        labels::validate(labels)?;
        let r = self.status.r#ref.clone();
        let expected = if expected.is_empty() {
            self.status.expected.clone()
        } else {
            digest::validate(expected)?;
            expected.to_string()
        };
        if expected.is_empty() {
            return Err(Error::invalid(format!(
                "ingest {r:?}: commit needs the expected digest"
            )));
        }
        let total = if total > 0 { total } else { self.status.total };
        let out = self
            .out
            .take()
            .ok_or_else(|| Error::precondition("ingest already committed"))?;
        let (file, hasher, count) = out.into_parts();
        if total > 0 && count as i64 != total {
            return Err(Error::precondition(format!(
                "ingest {r:?}: {count} bytes written, {total} expected"
            )));
        }
        let actual = hasher.finish();
        if actual != expected {
            return Err(Error::precondition(format!(
                "ingest {r:?}: content has digest {actual}, {expected} expected"
            )));
        }
        file.sync_all()
            .map_err(|e| Error::io(format!("syncing ingest {r:?}"), e))?;
        drop(file);
        let path = self.store.blob_path(&actual)?;
        if !path.exists() {
            let data = self.dir.join("data");
            fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o444))
                .map_err(|e| Error::io("blob permissions", e))?;
            fs::rename(&data, &path).map_err(|e| Error::io(format!("committing {actual}"), e))?;
            sync_dir(&self.store.inner.dir.join("blobs/sha256"))?;
        }
        let ns = self.status.namespace.clone();
        let key = store::key(&ns, &actual);
        let existed = self.store.inner.store.content.contains_key(&key)?;
        if !existed {
            self.store.record(&ns, &actual, labels)?;
        } else if !labels.is_empty() {
            self.store.update(&ns, &actual, labels, &[])?;
        }
        self.store.inner.store.flush_blocking()?;
        let _ = fs::remove_dir_all(&self.dir);
        Ok(actual)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = self.save_status();
        }
        self.store.unlock_ref(&self.id);
    }
}

/// Copies with a large buffer; read errors are the input's fault (InvalidArgument), write
/// errors the disk's.
pub fn copy_large(r: &mut dyn Read, w: &mut dyn Write) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::invalid(format!("reading input: {e}"))),
        };
        w.write_all(&buf[..n])
            .map_err(|e| Error::io("writing", e))?;
        total += n as u64;
    }
    Ok(total)
}

#[cfg(test)]
mod tests;
