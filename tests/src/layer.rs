//! Layers made in code: a [`LayerBuilder`] collects entries (files, dirs, links, devices,
//! whiteouts, hostile names) and produces the tar and its compressed blob as a [`Layer`],
//! with knobs to make the layer lie about itself.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;

pub use crate::tarfmt::{Entry, EntryKind};

/// mtime given to entries that do not set one (2023-11-14).
pub const DEFAULT_MTIME: u64 = 1_700_000_000;

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Docker media type of a layer compressed this way (Docker has none for zstd).
    pub fn docker_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.docker.image.rootfs.diff.tar",
            Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(tar).expect("gzip into memory");
                enc.finish().expect("gzip into memory")
            }
            Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd into memory"),
        }
    }
}

/// Entries of one layer, in archive order.
#[derive(Clone, Debug)]
pub struct LayerBuilder {
    entries: Vec<Entry>,
    auto_parents: bool,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    /// A layer whose missing parent directories are written before their children (0755,
    /// root-owned), as `docker build` and every real tool do.
    pub fn new() -> Self {
        LayerBuilder {
            entries: Vec::new(),
            auto_parents: true,
        }
    }

    /// A layer written exactly as given: no parent directories added, names untouched.
    pub fn raw() -> Self {
        LayerBuilder {
            entries: Vec::new(),
            auto_parents: false,
        }
    }

    /// Adds an entry and returns it for further settings.
    pub fn push(&mut self, path: &str, kind: EntryKind, mode: u32) -> &mut Entry {
        self.entries.push(Entry {
            path: path.to_string(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            xattrs: Vec::new(),
            pax_path: false,
            ustar_name: None,
        });
        self.entries.last_mut().expect("just pushed")
    }

    pub fn dir(&mut self, path: &str) -> &mut Entry {
        self.push(path, EntryKind::Dir, 0o755)
    }

    pub fn file(&mut self, path: &str, content: impl AsRef<[u8]>) -> &mut Entry {
        self.push(path, EntryKind::File(content.as_ref().to_vec()), 0o644)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Entry {
        self.push(path, EntryKind::Symlink(target.to_string()), 0o777)
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Entry {
        self.push(path, EntryKind::Hardlink(target.to_string()), 0o644)
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> &mut Entry {
        self.push(path, EntryKind::Char(major, minor), 0o666)
    }

    pub fn block_device(&mut self, path: &str, major: u32, minor: u32) -> &mut Entry {
        self.push(path, EntryKind::Block(major, minor), 0o660)
    }

    pub fn fifo(&mut self, path: &str) -> &mut Entry {
        self.push(path, EntryKind::Fifo, 0o644)
    }

    /// Deletes `path` of the layers below: an empty `.wh.<name>` file beside it.
    pub fn whiteout(&mut self, path: &str) -> &mut Entry {
        let (dir, name) = split_parent(path);
        let wh = match dir {
            Some(dir) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{name}"),
        };
        self.file(&wh, [])
    }

    /// Hides everything the layers below have in `dir`: `<dir>/.wh..wh..opq`.
    pub fn opaque(&mut self, dir: &str) -> &mut Entry {
        self.file(&format!("{}/.wh..wh..opq", dir.trim_end_matches('/')), [])
    }

    /// The entries as they will be written, parents included.
    pub fn entries(&self) -> Vec<Entry> {
        if !self.auto_parents {
            return self.entries.clone();
        }
        // An explicit directory entry written later in the list is hoisted in front of its
        // first child, so that its metadata is what the parent gets.
        let explicit: HashMap<&str, usize> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == EntryKind::Dir)
            .map(|(i, e)| (e.path.trim_end_matches('/'), i))
            .collect();
        let mut emitted: BTreeSet<String> = BTreeSet::new();
        let mut used = vec![false; self.entries.len()];
        let mut out = Vec::new();
        for (i, entry) in self.entries.iter().enumerate() {
            if used[i] {
                continue;
            }
            let parts: Vec<&str> = entry
                .path
                .split('/')
                .filter(|p| !p.is_empty() && *p != ".")
                .collect();
            for depth in 1..parts.len() {
                let parent = parts[..depth].join("/");
                if emitted.contains(&parent) {
                    continue;
                }
                match explicit.get(parent.as_str()) {
                    Some(&j) if !used[j] && j > i => {
                        out.push(self.entries[j].clone());
                        used[j] = true;
                    }
                    _ => {
                        let mut lb = LayerBuilder::raw();
                        lb.dir(&parent);
                        out.extend(lb.entries);
                    }
                }
                emitted.insert(parent);
            }
            if entry.kind == EntryKind::Dir {
                emitted.insert(parts.join("/"));
            }
            used[i] = true;
            out.push(entry.clone());
        }
        out
    }

    /// The uncompressed layer tar.
    pub fn tar(&self) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in self.entries() {
            crate::tarfmt::append(&mut builder, &entry).expect("tar into memory");
        }
        builder.into_inner().expect("tar into memory")
    }

    /// The layer as a blob compressed with `compression`.
    pub fn build(&self, compression: Compression) -> Layer {
        Layer::from_tar(self.tar(), compression, self.entries())
    }
}

/// Splits "a/b/c" into (Some("a/b"), "c") and "c" into (None, "c").
fn split_parent(path: &str) -> (Option<&str>, &str) {
    let path = path.trim_end_matches('/');
    match path.rsplit_once('/') {
        Some((dir, name)) => (Some(dir), name),
        None => (None, path),
    }
}

/// A layer as it goes into an image: the tar, the blob, and their digests.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The uncompressed tar stream.
    pub tar: Vec<u8>,
    /// The bytes stored in the archive under `digest`.
    pub blob: Vec<u8>,
    pub compression: Compression,
    /// What the image config claims the uncompressed digest is.
    pub diff_id: String,
    /// What the manifest claims the blob's digest is.
    pub digest: String,
    /// The entries written, for computing the expected tree.
    pub entries: Vec<Entry>,
}

impl Layer {
    pub fn from_tar(tar: Vec<u8>, compression: Compression, entries: Vec<Entry>) -> Layer {
        let blob = compression.compress(&tar);
        Layer {
            diff_id: crate::digest::sha256(&tar),
            digest: crate::digest::sha256(&blob),
            tar,
            blob,
            compression,
            entries,
        }
    }

    pub fn media_type(&self) -> &'static str {
        self.compression.media_type()
    }

    /// The config will claim a diff ID this layer does not have.
    pub fn with_wrong_diff_id(mut self) -> Layer {
        self.diff_id = crate::digest::sha256(b"not this layer");
        self
    }

    /// The blob's bytes change after its digest was computed: the archive stores it under a
    /// name that its content does not hash to.
    pub fn with_lying_digest(mut self) -> Layer {
        let mid = self.blob.len() / 2;
        self.blob[mid] ^= 0x55;
        self
    }

    /// The compressed stream is damaged in the middle, but the digest is computed over the
    /// damaged bytes, so only decompression (or the diff ID check) can tell.
    pub fn with_corrupted_blob(mut self) -> Layer {
        let (mid, len) = (self.blob.len() / 2, self.blob.len());
        for b in &mut self.blob[mid..(mid + 16).min(len)] {
            *b ^= 0xa5;
        }
        self.digest = crate::digest::sha256(&self.blob);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(layer: &LayerBuilder) -> Vec<String> {
        let tar = layer.tar();
        let mut archive = tar::Archive::new(tar.as_slice());
        archive
            .entries()
            .unwrap()
            .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
            .collect()
    }

    #[test]
    fn parents_come_first_and_explicit_ones_are_hoisted() {
        let mut layer = LayerBuilder::new();
        layer.file("a/b/c", "x");
        layer.dir("a").mode(0o700);
        let entries = layer.entries();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "a/b", "a/b/c"]);
        assert_eq!(entries[0].mode, 0o700);
        assert_eq!(names(&layer), ["a/", "a/b/", "a/b/c"]);
    }

    #[test]
    fn whiteouts_and_opaque_markers() {
        let mut layer = LayerBuilder::new();
        layer.whiteout("etc/gone");
        layer.opaque("var/");
        layer.whiteout("top");
        assert_eq!(
            names(&layer),
            [
                "etc/",
                "etc/.wh.gone",
                "var/",
                "var/.wh..wh..opq",
                ".wh.top"
            ]
        );
    }

    #[test]
    fn raw_layers_keep_hostile_names_verbatim() {
        let mut layer = LayerBuilder::raw();
        layer.file("../../escape", "x");
        layer.file("/abs/file", "y");
        layer.hardlink("link", "../../etc/passwd");
        layer.file(&format!("{}x", "../".repeat(40)), "z");
        let tar = layer.tar();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let link = entry
                .link_name_bytes()
                .map(|l| String::from_utf8(l.into_owned()).unwrap());
            seen.push((
                String::from_utf8(entry.path_bytes().into_owned()).unwrap(),
                link,
            ));
        }
        assert_eq!(seen[0], ("../../escape".to_string(), None));
        assert_eq!(seen[1], ("/abs/file".to_string(), None));
        assert_eq!(
            seen[2],
            ("link".to_string(), Some("../../etc/passwd".to_string()))
        );
        assert_eq!(seen[3].0, format!("{}x", "../".repeat(40)));
    }

    #[test]
    fn metadata_and_xattrs_survive_a_round_trip() {
        let mut layer = LayerBuilder::new();
        layer
            .file("bin/tool", "#!/bin/sh\n")
            .mode(0o4755)
            .owner(1000, 1001)
            .mtime(1234567890)
            .xattr("user.note", "hello");
        layer.char_device("dev/null", 1, 3);
        let tar = layer.tar();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entries = archive.entries().unwrap();
        let _bin = entries.next().unwrap().unwrap();
        let mut tool = entries.next().unwrap().unwrap();
        let h = tool.header().clone();
        assert_eq!(h.mode().unwrap(), 0o4755);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (1000, 1001));
        assert_eq!(h.mtime().unwrap(), 1234567890);
        let ext: Vec<(String, Vec<u8>)> = tool
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.key().unwrap().to_string(), e.value_bytes().to_vec())
            })
            .collect();
        assert_eq!(
            ext,
            [("SCHILY.xattr.user.note".to_string(), b"hello".to_vec())]
        );
        let mut body = String::new();
        std::io::Read::read_to_string(&mut tool, &mut body).unwrap();
        assert_eq!(body, "#!/bin/sh\n");
        let _dev_dir = entries.next().unwrap().unwrap();
        let dev = entries.next().unwrap().unwrap();
        assert_eq!(dev.header().device_major().unwrap(), Some(1));
        assert_eq!(dev.header().device_minor().unwrap(), Some(3));
    }

    #[test]
    fn compressions_round_trip_and_digests_differ() {
        let mut lb = LayerBuilder::new();
        lb.file("f", vec![7u8; 10_000]);
        let plain = lb.build(Compression::None);
        let gz = lb.build(Compression::Gzip);
        let zst = lb.build(Compression::Zstd);
        assert_eq!(plain.diff_id, gz.diff_id);
        assert_eq!(plain.diff_id, plain.digest);
        assert_ne!(gz.digest, zst.digest);
        let mut out = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(gz.blob.as_slice()),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, plain.tar);
        assert_eq!(zstd::decode_all(zst.blob.as_slice()).unwrap(), plain.tar);
        let lying = gz.clone().with_lying_digest();
        assert_eq!(lying.digest, gz.digest);
        assert_ne!(crate::digest::sha256(&lying.blob), lying.digest);
    }
}
