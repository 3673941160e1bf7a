//! A filesystem tree described entry by entry (type, mode, owner, mtime, content hash, link
//! target, device numbers, xattrs, hard link groups), to compare an unpacked snapshot with the
//! tree its layers should give.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// What an entry is, with what only that kind carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64, sha256: String },
    Symlink(String),
    Char(u64, u64),
    Block(u64, u64),
    Fifo,
    Socket,
}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// Xattrs that the host adds on its own and a layer does not carry.
const HOST_XATTRS: [&str; 1] = ["security.selinux"];

/// Entries by path relative to the root ("bin/sh"), and groups of paths that are hard links of
/// one another (only groups of two or more visible paths).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub nodes: BTreeMap<String, Node>,
    pub links: BTreeSet<BTreeSet<String>>,
}

impl Tree {
    /// Describes the tree under `root` (the root itself excluded), never following symlinks.
    pub fn scan(root: &Path) -> io::Result<Tree> {
        let mut tree = Tree::default();
        let mut inodes: BTreeMap<(u64, u64), BTreeSet<String>> = BTreeMap::new();
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let dir = if rel.is_empty() {
                root.to_path_buf()
            } else {
                root.join(&rel)
            };
            for item in std::fs::read_dir(&dir)? {
                let item = item?;
                let name = item.file_name().to_string_lossy().into_owned();
                let path = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let full = item.path();
                let meta = std::fs::symlink_metadata(&full)?;
                let ft = meta.file_type();
                let kind = if ft.is_dir() {
                    stack.push(path.clone());
                    Kind::Dir
                } else if ft.is_file() {
                    Kind::File {
                        size: meta.len(),
                        sha256: crate::digest::sha256(&std::fs::read(&full)?),
                    }
                } else if ft.is_symlink() {
                    Kind::Symlink(std::fs::read_link(&full)?.to_string_lossy().into_owned())
                } else if ft.is_char_device() {
                    Kind::Char(major(meta.rdev()), minor(meta.rdev()))
                } else if ft.is_block_device() {
                    Kind::Block(major(meta.rdev()), minor(meta.rdev()))
                } else if ft.is_fifo() {
                    Kind::Fifo
                } else {
                    Kind::Socket
                };
                if !ft.is_dir() && meta.nlink() > 1 {
                    inodes
                        .entry((meta.dev(), meta.ino()))
                        .or_default()
                        .insert(path.clone());
                }
                let mut xattrs = BTreeMap::new();
                for attr in xattr::list(&full)? {
                    let key = attr.to_string_lossy().into_owned();
                    if HOST_XATTRS.contains(&key.as_str()) {
                        continue;
                    }
                    if let Some(value) = xattr::get(&full, &attr)? {
                        xattrs.insert(key, value);
                    }
                }
                tree.nodes.insert(
                    path,
                    Node {
                        kind,
                        mode: meta.mode() & 0o7777,
                        uid: meta.uid(),
                        gid: meta.gid(),
                        mtime: meta.mtime(),
                        xattrs,
                    },
                );
            }
        }
        tree.links = inodes.into_values().filter(|g| g.len() > 1).collect();
        Ok(tree)
    }

    /// One line per entry and per hard link group, sorted, for comparing and for reading.
    pub fn describe(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .nodes
            .iter()
            .map(|(path, node)| describe_node(path, node))
            .collect();
        for group in &self.links {
            let names: Vec<&str> = group.iter().map(String::as_str).collect();
            lines.push(format!("hardlinks {}", names.join(" = ")));
        }
        lines
    }

    /// Panics with a line diff when `self` (what is on disk) differs from `expected`.
    pub fn assert_matches(&self, expected: &Tree, what: &str) {
        let got: BTreeSet<String> = self.describe().into_iter().collect();
        let want: BTreeSet<String> = expected.describe().into_iter().collect();
        if got == want {
            return;
        }
        let mut msg = format!("{what}: the tree differs from the expected one\n");
        for line in want.difference(&got) {
            let _ = writeln!(msg, "  - expected: {line}");
        }
        for line in got.difference(&want) {
            let _ = writeln!(msg, "  + on disk:  {line}");
        }
        panic!("{msg}");
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }
}

fn describe_node(path: &str, node: &Node) -> String {
    let kind = match &node.kind {
        Kind::Dir => "dir".to_string(),
        Kind::File { size, sha256 } => format!("file size={size} {}", &sha256[..19]),
        Kind::Symlink(t) => format!("symlink -> {t}"),
        Kind::Char(a, b) => format!("char {a}:{b}"),
        Kind::Block(a, b) => format!("block {a}:{b}"),
        Kind::Fifo => "fifo".to_string(),
        Kind::Socket => "socket".to_string(),
    };
    let mut line = format!(
        "{path}: {kind} mode={:04o} owner={}:{} mtime={}",
        node.mode, node.uid, node.gid, node.mtime
    );
    for (k, v) in &node.xattrs {
        match std::str::from_utf8(v) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => {
                let _ = write!(line, " xattr {k}={s:?}");
            }
            _ => {
                let _ = write!(line, " xattr {k}=0x{}", hex::encode(v));
            }
        }
    }
    line
}

/// Device numbers as glibc's gnu_dev_major/minor split them.
fn major(rdev: u64) -> u64 {
    ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff)
}

fn minor(rdev: u64) -> u64 {
    ((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_types_modes_links_and_xattrs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), "abc").unwrap();
        std::fs::hard_link(root.join("d/f"), root.join("g")).unwrap();
        std::os::unix::fs::symlink("d/f", root.join("s")).unwrap();
        nix::unistd::mkfifo(
            &root.join("p"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .unwrap();
        std::fs::set_permissions(
            root.join("d/f"),
            std::os::unix::fs::PermissionsExt::from_mode(0o4750),
        )
        .unwrap();
        xattr::set(root.join("d"), "user.k", b"v").unwrap();
        let tree = Tree::scan(root).unwrap();
        assert_eq!(tree.get("d").unwrap().kind, Kind::Dir);
        assert_eq!(tree.get("d").unwrap().xattrs["user.k"], b"v");
        assert_eq!(tree.get("d/f").unwrap().mode, 0o4750);
        assert_eq!(
            tree.get("d/f").unwrap().kind,
            Kind::File {
                size: 3,
                sha256: crate::digest::sha256(b"abc")
            }
        );
        assert_eq!(tree.get("s").unwrap().kind, Kind::Symlink("d/f".into()));
        assert_eq!(tree.get("p").unwrap().kind, Kind::Fifo);
        assert_eq!(tree.get("p").unwrap().mode, 0o640);
        let group: BTreeSet<String> = ["d/f".to_string(), "g".to_string()].into();
        assert_eq!(tree.links, BTreeSet::from([group]));
    }

    #[test]
    fn device_numbers_split_like_glibc() {
        for (ma, mi) in [(1, 3), (259, 70000), (4095, 255), (4096, 256)] {
            let dev = nix::sys::stat::makedev(ma, mi);
            assert_eq!((major(dev), minor(dev)), (ma, mi));
        }
    }
}
