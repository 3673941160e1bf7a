//! Resolving through lower layers in overlay mode: symlinks and `..` in the merged view,
//! and many lowers under deep paths.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

use super::{apply_layer, lstat, Env, Layer, Spec};
use crate::snapshot::ApplyTarget;
use crate::snapshot::WhiteoutMode::Overlay;

#[test]
fn dotdot_in_a_lower_symlink_resolves_in_the_merged_view() {
    let env = Env::new();
    let lower = env.dir("lower");
    fs::create_dir_all(lower.join("a/b")).unwrap();
    fs::create_dir(lower.join("c")).unwrap();
    fs::set_permissions(lower.join("c"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(lower.join("c"), Some(5), Some(6)).unwrap();
    symlink("../c", lower.join("a/link")).unwrap();
    symlink("b/../../c", lower.join("a/winding")).unwrap();
    let layer = Layer::with(&[
        Spec::file("a/link/file", b"via link"),
        Spec::file("a/winding/other", b"winding"),
    ]);
    let target = ApplyTarget {
        root: env.root.clone(),
        lowers: vec![lower.clone()],
        whiteouts: Overlay,
    };
    apply_layer(&mut &layer[..], &target).unwrap();
    assert_eq!(fs::read(env.root.join("c/file")).unwrap(), b"via link");
    assert_eq!(fs::read(env.root.join("c/other")).unwrap(), b"winding");
    let c = lstat(&env.root.join("c"));
    assert_eq!((c.mode() & 0o7777, c.uid(), c.gid()), (0o700, 5, 6));
    assert!(!lower.join("c/file").exists(), "lowers are never written");
}

#[test]
fn deep_paths_over_many_lowers_do_not_exhaust_descriptors() {
    // Past the descriptor limit of this environment (20000) if the walk held one per level
    // and lower.
    let env = Env::new();
    let deep = "d/".repeat(210);
    let lowers: Vec<_> = (0..100)
        .map(|i| {
            let lower = env.dir(&format!("lower{i}"));
            fs::create_dir_all(lower.join(&deep)).unwrap();
            lower
        })
        .collect();
    let layer = Layer::with(&[Spec::file(&format!("{deep}leaf"), b"deep")]);
    let target = ApplyTarget {
        root: env.root.clone(),
        lowers,
        whiteouts: Overlay,
    };
    apply_layer(&mut &layer[..], &target).unwrap();
    assert_eq!(
        fs::read(env.root.join(&deep).join("leaf")).unwrap(),
        b"deep"
    );
}
