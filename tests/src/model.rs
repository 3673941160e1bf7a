//! The tree a stack of layers should unpack to, computed from the layers' entries with the
//! OCI layer rules: later entries replace earlier ones, a directory over a directory keeps its
//! children, `.wh.<name>` deletes `<name>`, `.wh..wh..opq` hides what lower layers put in its
//! directory, and a hard link shares its target's inode.

use std::collections::{BTreeMap, BTreeSet};

use crate::layer::{Entry, EntryKind};
use crate::tree::{Kind, Node, Tree};

const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT: &str = ".wh.";

/// "./a/b/" -> "a/b"; the root is "".
fn clean(path: &str) -> String {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn is_at_or_under(path: &str, dir: &str) -> bool {
    dir.is_empty()
        || path == dir
        || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

#[derive(Default)]
struct Model {
    nodes: BTreeMap<String, Node>,
    /// Layer index that last wrote each path.
    layer_of: BTreeMap<String, usize>,
    links: Vec<BTreeSet<String>>,
}

impl Model {
    fn remove_subtree(&mut self, path: &str, keep: impl Fn(usize) -> bool) {
        let doomed: Vec<String> = self
            .nodes
            .keys()
            .filter(|p| is_at_or_under(p, path) && !keep(self.layer_of[*p]))
            .cloned()
            .collect();
        for p in doomed {
            self.nodes.remove(&p);
            self.layer_of.remove(&p);
            for group in &mut self.links {
                group.remove(&p);
            }
        }
    }

    fn apply(&mut self, layer: usize, entry: &Entry) {
        let path = clean(&entry.path);
        if path.is_empty() {
            return;
        }
        let (parent, name) = match path.rsplit_once('/') {
            Some((p, n)) => (p.to_string(), n.to_string()),
            None => (String::new(), path.clone()),
        };
        if name == OPAQUE {
            // Only what lower layers put there disappears; the directory itself stays.
            let children_of = if parent.is_empty() {
                String::new()
            } else {
                format!("{parent}/")
            };
            let doomed: Vec<String> = self
                .nodes
                .keys()
                .filter(|p| p.starts_with(&children_of) && p.as_str() != parent)
                .filter(|p| self.layer_of[*p] < layer)
                .cloned()
                .collect();
            for p in doomed {
                self.remove_subtree(&p, |l| l == layer);
            }
            return;
        }
        if let Some(victim) = name.strip_prefix(WHITEOUT) {
            let victim = if parent.is_empty() {
                victim.to_string()
            } else {
                format!("{parent}/{victim}")
            };
            self.remove_subtree(&victim, |_| false);
            return;
        }
        let node = match &entry.kind {
            EntryKind::Hardlink(target) => {
                let target = clean(target);
                let node = self
                    .nodes
                    .get(&target)
                    .unwrap_or_else(|| panic!("model: {path} links to missing {target}"))
                    .clone();
                if self.nodes.contains_key(&path) {
                    self.remove_subtree(&path, |_| false);
                }
                match self.links.iter_mut().find(|g| g.contains(&target)) {
                    Some(group) => {
                        group.insert(path.clone());
                    }
                    None => self
                        .links
                        .push(BTreeSet::from([target.clone(), path.clone()])),
                }
                node
            }
            kind => {
                let kind = match kind {
                    EntryKind::Dir => Kind::Dir,
                    EntryKind::File(data) => Kind::File {
                        size: data.len() as u64,
                        sha256: crate::digest::sha256(data),
                    },
                    EntryKind::Symlink(t) => Kind::Symlink(t.clone()),
                    EntryKind::Char(a, b) => Kind::Char(u64::from(*a), u64::from(*b)),
                    EntryKind::Block(a, b) => Kind::Block(u64::from(*a), u64::from(*b)),
                    EntryKind::Fifo => Kind::Fifo,
                    EntryKind::Hardlink(_) => unreachable!("handled above"),
                };
                let dir_over_dir =
                    kind == Kind::Dir && self.nodes.get(&path).is_some_and(|n| n.kind == Kind::Dir);
                if !dir_over_dir && self.nodes.contains_key(&path) {
                    self.remove_subtree(&path, |_| false);
                }
                Node {
                    kind,
                    mode: entry.mode & 0o7777,
                    uid: u32::try_from(entry.uid).expect("uid fits"),
                    gid: u32::try_from(entry.gid).expect("gid fits"),
                    mtime: i64::try_from(entry.mtime).expect("mtime fits"),
                    xattrs: entry.xattrs.iter().cloned().collect(),
                }
            }
        };
        self.nodes.insert(path.clone(), node);
        self.layer_of.insert(path, layer);
    }
}

/// The tree `layers` (bottom first, each the entries of one layer) unpack to.
pub fn expected_tree<'a>(layers: impl IntoIterator<Item = &'a [Entry]>) -> Tree {
    let mut model = Model::default();
    for (index, entries) in layers.into_iter().enumerate() {
        for entry in entries {
            model.apply(index, entry);
        }
    }
    Tree {
        nodes: model.nodes,
        links: model.links.into_iter().filter(|g| g.len() > 1).collect(),
    }
}

/// The expected tree of an image's layers.
pub fn image_tree(image: &crate::image::Image) -> Tree {
    expected_tree(image.layers.iter().map(|l| l.entries.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::LayerBuilder;

    fn paths(tree: &Tree) -> Vec<&str> {
        tree.nodes.keys().map(String::as_str).collect()
    }

    #[test]
    fn whiteouts_opaque_dirs_and_replacements() {
        let mut l1 = LayerBuilder::new();
        l1.file("a/x", "1");
        l1.file("a/y", "2");
        l1.file("b/z", "3");
        l1.file("c", "4");
        l1.file("keep", "5");
        let mut l2 = LayerBuilder::new();
        l2.opaque("a");
        l2.file("a/new", "6");
        l2.whiteout("b");
        l2.dir("c");
        l2.file("c/inside", "7");
        let e1 = l1.entries();
        let e2 = l2.entries();
        let tree = expected_tree([e1.as_slice(), e2.as_slice()]);
        assert_eq!(paths(&tree), ["a", "a/new", "c", "c/inside", "keep"]);
    }

    #[test]
    fn opaque_keeps_entries_of_its_own_layer_written_before_it() {
        let mut l1 = LayerBuilder::new();
        l1.file("d/old", "1");
        let mut l2 = LayerBuilder::raw();
        l2.dir("d");
        l2.file("d/mine", "2");
        l2.opaque("d");
        let e1 = l1.entries();
        let e2 = l2.entries();
        let tree = expected_tree([e1.as_slice(), e2.as_slice()]);
        assert_eq!(paths(&tree), ["d", "d/mine"]);
    }

    #[test]
    fn hardlinks_share_the_target_and_break_when_removed() {
        let mut l1 = LayerBuilder::new();
        l1.file("f", "x").mode(0o600);
        l1.hardlink("g", "f");
        l1.hardlink("h", "f");
        let mut l2 = LayerBuilder::new();
        l2.whiteout("h");
        let e1 = l1.entries();
        let e2 = l2.entries();
        let tree = expected_tree([e1.as_slice()]);
        assert_eq!(tree.get("g").unwrap().mode, 0o600);
        assert_eq!(tree.links.len(), 1);
        let tree = expected_tree([e1.as_slice(), e2.as_slice()]);
        let group: BTreeSet<String> = ["f".to_string(), "g".to_string()].into();
        assert_eq!(tree.links, BTreeSet::from([group]));
    }

    /// GNU tar, extracting one of our layers, gives exactly the tree the model predicts:
    /// the fixtures, the model and the scanner agree with a reference implementation.
    #[test]
    fn gnu_tar_extracts_what_the_model_expects() {
        let mut layer = LayerBuilder::new();
        layer.dir("etc").mtime(1_600_000_000);
        layer
            .file("etc/conf", "a=1\n")
            .mode(0o640)
            .owner(1000, 1000)
            .mtime(1_500_000_000);
        layer.hardlink("etc/conf.link", "etc/conf");
        layer
            .symlink("etc/alias", "conf")
            .owner(1000, 1000)
            .mtime(1_400_000_000);
        layer.file("bin/suid", "x").mode(0o4755);
        layer
            .file("data", vec![0u8; 5000])
            .xattr("user.note", "kept");
        layer.char_device("dev/zero", 1, 5);
        layer.fifo("run/pipe").mode(0o600);
        layer.dir("tmp").mode(0o1777);
        let tar = layer.tar();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("layer.tar");
        std::fs::write(&file, &tar).unwrap();
        let out_dir = dir.path().join("out");
        std::fs::create_dir(&out_dir).unwrap();
        let status = std::process::Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
            .arg(&file)
            .arg("-C")
            .arg(&out_dir)
            .status()
            .unwrap();
        assert!(status.success());
        let entries = layer.entries();
        crate::tree::Tree::scan(&out_dir)
            .unwrap()
            .assert_matches(&expected_tree([entries.as_slice()]), "GNU tar");
    }
}
