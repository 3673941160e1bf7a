//! Tests of the layer applier, run as root on real directories: layers are built in code,
//! hostile ones with hand-written headers.

mod bench;
mod entries;
mod hostile;
mod lowers;
mod stream;
mod whiteouts;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::{apply_layer, Applied};
use crate::error::Result;
use crate::snapshot::{ApplyTarget, WhiteoutMode};

/// One entry to write into a test layer.
#[derive(Clone)]
pub(super) struct Spec {
    path: Vec<u8>,
    kind: EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Vec<u8>,
    dev: (u32, u32),
    data: Vec<u8>,
    pax: Vec<(String, Vec<u8>)>,
}

impl Spec {
    fn new(path: &str, kind: EntryType, mode: u32) -> Spec {
        Spec {
            path: path.as_bytes().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            link: Vec::new(),
            dev: (0, 0),
            data: Vec::new(),
            pax: Vec::new(),
        }
    }

    pub(super) fn file(path: &str, data: &[u8]) -> Spec {
        let mut s = Spec::new(path, EntryType::Regular, 0o644);
        s.data = data.to_vec();
        s
    }

    pub(super) fn dir(path: &str) -> Spec {
        Spec::new(path, EntryType::Directory, 0o755)
    }

    pub(super) fn symlink(path: &str, target: &str) -> Spec {
        let mut s = Spec::new(path, EntryType::Symlink, 0o777);
        s.link = target.as_bytes().to_vec();
        s
    }

    pub(super) fn hardlink(path: &str, target: &str) -> Spec {
        let mut s = Spec::new(path, EntryType::Link, 0o644);
        s.link = target.as_bytes().to_vec();
        s
    }

    pub(super) fn node(path: &str, kind: EntryType, major: u32, minor: u32) -> Spec {
        let mut s = Spec::new(path, kind, 0o666);
        s.dev = (major, minor);
        s
    }

    /// A whiteout file (`.wh.<name>` or `.wh..wh..opq`): an empty regular file.
    pub(super) fn whiteout(path: &str) -> Spec {
        Spec::file(path, b"")
    }

    pub(super) fn mode(mut self, mode: u32) -> Spec {
        self.mode = mode;
        self
    }

    pub(super) fn owner(mut self, uid: u64, gid: u64) -> Spec {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub(super) fn mtime(mut self, mtime: u64) -> Spec {
        self.mtime = mtime;
        self
    }

    pub(super) fn pax(mut self, key: &str, value: &[u8]) -> Spec {
        self.pax.push((key.to_string(), value.to_vec()));
        self
    }
}

/// A tar stream under construction. Names are written as raw header bytes (or GNU long-name
/// records past 100 bytes), so nothing is cleaned or refused on the way.
pub(super) struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Layer {
    pub(super) fn new() -> Layer {
        Layer {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    pub(super) fn with(specs: &[Spec]) -> Vec<u8> {
        let mut layer = Layer::new();
        for spec in specs {
            layer.push(spec);
        }
        layer.finish()
    }

    fn long_record(&mut self, kind: EntryType, value: &[u8]) {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(kind);
        h.set_mode(0);
        h.set_size(value.len() as u64 + 1);
        h.set_cksum();
        let mut data = value.to_vec();
        data.push(0);
        self.builder.append(&h, &data[..]).unwrap();
    }

    pub(super) fn push(&mut self, spec: &Spec) {
        if !spec.pax.is_empty() {
            let records = spec.pax.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
            self.builder.append_pax_extensions(records).unwrap();
        }
        if spec.path.len() > 100 {
            self.long_record(EntryType::GNULongName, &spec.path);
        }
        if spec.link.len() > 100 {
            self.long_record(EntryType::GNULongLink, &spec.link);
        }
        let mut h = Header::new_gnu();
        let n = spec.path.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&spec.path[..n]);
        let n = spec.link.len().min(100);
        h.as_old_mut().linkname[..n].copy_from_slice(&spec.link[..n]);
        h.set_entry_type(spec.kind);
        h.set_mode(spec.mode);
        h.set_uid(spec.uid);
        h.set_gid(spec.gid);
        h.set_mtime(spec.mtime);
        h.set_size(spec.data.len() as u64);
        if matches!(spec.kind, EntryType::Char | EntryType::Block) {
            h.set_device_major(spec.dev.0).unwrap();
            h.set_device_minor(spec.dev.1).unwrap();
        }
        h.set_cksum();
        self.builder.append(&h, &spec.data[..]).unwrap();
    }

    /// The stream with its end-of-archive marker.
    pub(super) fn finish(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

/// A temporary base directory holding the root to apply to, lower directories, and an
/// `outside` directory that no layer may touch.
pub(super) struct Env {
    pub(super) base: tempfile::TempDir,
    pub(super) root: PathBuf,
    pub(super) outside: PathBuf,
}

impl Env {
    pub(super) fn new() -> Env {
        Env::new_in(&std::env::temp_dir())
    }

    pub(super) fn new_in(dir: &Path) -> Env {
        let base = tempfile::tempdir_in(dir).unwrap();
        let root = base.path().join("root");
        let outside = base.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir_all(outside.join("sub")).unwrap();
        fs::write(outside.join("secret"), b"s3cret").unwrap();
        fs::write(outside.join("sub/file"), b"keep me").unwrap();
        Env {
            base,
            root,
            outside,
        }
    }

    /// A fresh directory under the base (a lower layer, a work dir).
    pub(super) fn dir(&self, name: &str) -> PathBuf {
        let path = self.base.path().join(name);
        fs::create_dir(&path).unwrap();
        path
    }

    pub(super) fn target(&self, whiteouts: WhiteoutMode) -> ApplyTarget {
        ApplyTarget {
            root: self.root.clone(),
            lowers: Vec::new(),
            whiteouts,
        }
    }

    pub(super) fn apply(&self, layer: &[u8], whiteouts: WhiteoutMode) -> Result<Applied> {
        apply_layer(&mut &layer[..], &self.target(whiteouts))
    }

    /// The absolute path of `outside` without its leading `/`, for names meant to reach it.
    pub(super) fn outside_rel(&self) -> String {
        self.outside
            .to_str()
            .unwrap()
            .trim_start_matches('/')
            .to_string()
    }

    /// Everything about the outside directory and the base's listing, to compare before
    /// and after a hostile layer.
    pub(super) fn sentinel(&self) -> BTreeMap<PathBuf, String> {
        let mut seen = BTreeMap::new();
        for entry in fs::read_dir(self.base.path()).unwrap() {
            let entry = entry.unwrap();
            seen.insert(entry.path(), String::from("(base entry)"));
        }
        snapshot(&self.outside, &mut seen);
        snapshot(Path::new("/etc/passwd"), &mut seen);
        seen
    }
}

fn snapshot(path: &Path, seen: &mut BTreeMap<PathBuf, String>) {
    let md = fs::symlink_metadata(path).unwrap();
    let mut desc = format!(
        "mode={:o} uid={} gid={} nlink={} mtime={}.{} size={}",
        md.mode(),
        md.uid(),
        md.gid(),
        md.nlink(),
        md.mtime(),
        md.mtime_nsec(),
        md.size()
    );
    if md.is_file() {
        desc.push_str(&format!(" data={:?}", fs::read(path).unwrap()));
    }
    seen.insert(path.to_path_buf(), desc);
    if md.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            snapshot(&entry.unwrap().path(), seen);
        }
    }
}

/// The value of xattr `name` of `path` (not following symlinks), if set.
pub(super) fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let name = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    match rustix::fs::lgetxattr(path, &name, &mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => panic!("getxattr {}: {e}", path.display()),
    }
}

pub(super) fn lstat(path: &Path) -> fs::Metadata {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub(super) fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Whether `path` is an overlayfs whiteout (a 0:0 character device).
pub(super) fn is_whiteout(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let md = lstat(path);
    md.file_type().is_char_device() && md.rdev() == 0
}

/// An overlay mount, detached on drop (also when a test fails).
pub(super) struct Overlay(PathBuf);

impl Overlay {
    pub(super) fn mount(env: &Env, lowers: &[&Path], upper: &Path) -> Overlay {
        let n = (0..)
            .find(|n| !env.base.path().join(format!("merged{n}")).exists())
            .unwrap();
        let merged = env.dir(&format!("merged{n}"));
        let work = env.dir(&format!("work{n}"));
        let lowers: Vec<&str> = lowers.iter().map(|p| p.to_str().unwrap()).collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            upper.display(),
            work.display()
        );
        let data = CString::new(data).unwrap();
        rustix::mount::mount(
            "overlay",
            &merged,
            "overlay",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )
        .unwrap();
        Overlay(merged)
    }

    pub(super) fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}
