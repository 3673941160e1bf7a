//! Whiteouts and opaque directories in both modes, parents copied up from lowers, hardlinks
//! to lower files; the overlay results are checked through a real overlay mount.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{apply_layer, exists, get_xattr, is_whiteout, lstat, Env, Layer, Overlay, Spec};
use crate::snapshot::ApplyTarget;
use crate::snapshot::WhiteoutMode::{Delete, Overlay as OverlayMode};

fn base_layer() -> Vec<u8> {
    Layer::with(&[
        Spec::file("a", b"a"),
        Spec::dir("gone"),
        Spec::file("gone/inner", b"i"),
        Spec::dir("d")
            .mode(0o750)
            .owner(1000, 1000)
            .mtime(1_111_111_111),
        Spec::file("d/old1", b"1"),
        Spec::dir("d/olddir"),
        Spec::file("d/olddir/deep", b"deep"),
        Spec::dir("p")
            .mode(0o711)
            .owner(7, 8)
            .mtime(1_222_222_222)
            .pax("SCHILY.xattr.user.p", b"pp"),
        Spec::dir("p/q")
            .mode(0o700)
            .owner(1000, 1000)
            .mtime(1_333_333_333),
        Spec::file("p/q/orig", b"orig").mode(0o640).owner(3, 4),
        Spec::dir("x"),
        Spec::file("x/old", b"old"),
        Spec::dir("y"),
        Spec::file("y/old", b"old"),
    ])
}

/// The second layer: whiteouts, an opaque dir whose marker comes after the layer's own
/// entry, a write under parents only the lower has, a hardlink to a lower file, and
/// whiteouts that come after the same layer's entries.
fn change_layer() -> Vec<u8> {
    Layer::with(&[
        Spec::whiteout(".wh.a"),
        Spec::whiteout("gone/.wh.inner"),
        Spec::whiteout(".wh.gone"),
        Spec::whiteout(".wh.missing"),
        Spec::whiteout("nodir/.wh.missing"),
        Spec::file("d/new", b"new"),
        Spec::whiteout("d/.wh..wh..opq"),
        Spec::file("p/q/added", b"added"),
        Spec::hardlink("p/q/link", "p/q/orig"),
        Spec::file("x/new", b"new"),
        Spec::whiteout(".wh.x"),
        Spec::whiteout("y/.wh..wh..opq"),
        Spec::dir("y/fresh"),
        Spec::whiteout(".wh..wh..reserved"),
    ])
}

/// What both modes must show after the two layers (`view` is the root in delete mode and
/// the merged overlay otherwise).
fn check_view(view: &Path) {
    assert!(!exists(&view.join("a")));
    assert!(!exists(&view.join("gone")));
    assert!(!exists(&view.join("missing")));
    assert!(!exists(&view.join(".wh.missing")));
    assert!(!exists(&view.join("nodir")), "a whiteout makes no parents");
    let mut d: Vec<_> = fs::read_dir(view.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    d.sort();
    assert_eq!(d, ["new"], "opaque d keeps only this layer's entries");
    assert_eq!(fs::read(view.join("p/q/orig")).unwrap(), b"orig");
    assert_eq!(fs::read(view.join("p/q/added")).unwrap(), b"added");
    assert_eq!(fs::read(view.join("p/q/link")).unwrap(), b"orig");
    let q = lstat(&view.join("p/q"));
    assert_eq!((q.mode() & 0o7777, q.uid(), q.gid()), (0o700, 1000, 1000));
    let p = lstat(&view.join("p"));
    assert_eq!((p.mode() & 0o7777, p.uid(), p.gid()), (0o711, 7, 8));
    let mut x: Vec<_> = fs::read_dir(view.join("x"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    x.sort();
    assert_eq!(
        x,
        ["new"],
        "a whiteout after this layer's entries only hides the lower ones"
    );
    let mut y: Vec<_> = fs::read_dir(view.join("y"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    y.sort();
    assert_eq!(y, ["fresh"]);
    for entry in fs::read_dir(view).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(
            !name.to_string_lossy().starts_with(".wh."),
            "whiteout file {name:?} written"
        );
    }
}

#[test]
fn delete_mode_removes_from_the_copy() {
    let env = Env::new();
    env.apply(&base_layer(), Delete).unwrap();
    let orig_ino = lstat(&env.root.join("p/q/orig")).ino();
    env.apply(&change_layer(), Delete).unwrap();
    check_view(&env.root);
    assert_eq!(lstat(&env.root.join("p/q/link")).ino(), orig_ino);
}

#[test]
fn overlay_mode_writes_overlay_whiteouts() {
    let env = Env::new();
    let lower = env.dir("lower");
    let base = ApplyTarget {
        root: lower.clone(),
        lowers: Vec::new(),
        whiteouts: OverlayMode,
    };
    apply_layer(&mut &base_layer()[..], &base).unwrap();
    let target = ApplyTarget {
        root: env.root.clone(),
        lowers: vec![lower.clone()],
        whiteouts: OverlayMode,
    };
    apply_layer(&mut &change_layer()[..], &target).unwrap();

    let r = &env.root;
    assert!(is_whiteout(&r.join("a")));
    assert!(is_whiteout(&r.join("gone")));
    assert!(is_whiteout(&r.join("missing")));
    assert!(!exists(&r.join("nodir")));
    assert_eq!(
        get_xattr(&r.join("d"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        get_xattr(&r.join("x"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        get_xattr(&r.join("y"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    // d was only in the lower: copied up with its metadata.
    let d = lstat(&r.join("d"));
    assert_eq!(
        (d.mode() & 0o7777, d.uid(), d.gid(), d.mtime()),
        (0o750, 1000, 1000, 1_111_111_111)
    );
    let p = lstat(&r.join("p"));
    assert_eq!(
        (p.mode() & 0o7777, p.uid(), p.gid(), p.mtime()),
        (0o711, 7, 8, 1_222_222_222)
    );
    assert_eq!(
        get_xattr(&r.join("p"), "user.p").as_deref(),
        Some(&b"pp"[..])
    );
    assert_eq!(
        get_xattr(&r.join("p"), "trusted.overlay.opaque"),
        None,
        "copy-up is not opaque"
    );
    assert_eq!(lstat(&r.join("p/q")).mtime(), 1_333_333_333);
    // The hardlink's target was copied up, with its metadata, and linked.
    let orig = lstat(&r.join("p/q/orig"));
    assert_eq!(
        (orig.mode() & 0o7777, orig.uid(), orig.gid()),
        (0o640, 3, 4)
    );
    assert_eq!(orig.ino(), lstat(&r.join("p/q/link")).ino());
    assert!(exists(&lower.join("a")), "lowers are never written");
    assert!(exists(&lower.join("d/old1")));

    let merged = Overlay::mount(&env, &[&lower], r);
    check_view(&merged.path(""));
}

#[test]
fn file_dir_file_across_overlay_layers() {
    let env = Env::new();
    let l1 = env.dir("l1");
    let l2 = env.dir("l2");
    let layers = [
        (
            l1.clone(),
            vec![],
            Layer::with(&[
                Spec::file("x", b"one"),
                Spec::dir("d"),
                Spec::file("d/f", b"f"),
            ]),
        ),
        (
            l2.clone(),
            vec![l1.clone()],
            Layer::with(&[
                Spec::dir("x"),
                Spec::file("x/inner", b"in"),
                Spec::file("d", b"now a file"),
            ]),
        ),
        (
            env.root.clone(),
            vec![l2.clone(), l1.clone()],
            Layer::with(&[
                Spec::file("x", b"two"),
                Spec::dir("d"),
                Spec::file("d/g", b"g"),
            ]),
        ),
    ];
    for (root, lowers, layer) in &layers {
        let target = ApplyTarget {
            root: root.clone(),
            lowers: lowers.clone(),
            whiteouts: OverlayMode,
        };
        apply_layer(&mut &layer[..], &target).unwrap();
    }
    {
        let mid = Overlay::mount(&env, &[&l2, &l1], &env.dir("empty-upper"));
        assert_eq!(fs::read(mid.path("x/inner")).unwrap(), b"in");
        assert_eq!(fs::read(mid.path("d")).unwrap(), b"now a file");
    }
    let merged = Overlay::mount(&env, &[&l2, &l1], &env.root);
    assert_eq!(fs::read(merged.path("x")).unwrap(), b"two");
    let mut d: Vec<_> = fs::read_dir(merged.path("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    d.sort();
    assert_eq!(
        d,
        ["g"],
        "the old d/f must not come back from the lowest layer"
    );
}

#[test]
fn writing_under_a_whited_out_directory_makes_it_opaque() {
    let env = Env::new();
    let lower = env.dir("lower");
    fs::create_dir(lower.join("w")).unwrap();
    fs::write(lower.join("w/old"), b"old").unwrap();
    let layer = Layer::with(&[Spec::whiteout(".wh.w"), Spec::file("w/new", b"new")]);
    let target = ApplyTarget {
        root: env.root.clone(),
        lowers: vec![lower.clone()],
        whiteouts: OverlayMode,
    };
    apply_layer(&mut &layer[..], &target).unwrap();
    assert_eq!(
        get_xattr(&env.root.join("w"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    let merged = Overlay::mount(&env, &[&lower], &env.root);
    assert!(exists(&merged.path("w/new")));
    assert!(!exists(&merged.path("w/old")));
}

#[test]
fn hardlink_to_a_lower_symlink_copies_it_up() {
    let env = Env::new();
    let lower = env.dir("lower");
    std::os::unix::fs::symlink("somewhere", lower.join("s")).unwrap();
    let layer = Layer::with(&[Spec::hardlink("h", "s")]);
    let target = ApplyTarget {
        root: env.root.clone(),
        lowers: vec![lower],
        whiteouts: OverlayMode,
    };
    apply_layer(&mut &layer[..], &target).unwrap();
    assert_eq!(
        fs::read_link(env.root.join("s")).unwrap().to_str(),
        Some("somewhere")
    );
    assert_eq!(
        lstat(&env.root.join("h")).ino(),
        lstat(&env.root.join("s")).ino()
    );
}

#[test]
fn hardlink_to_a_whited_out_lower_file_is_refused() {
    let env = Env::new();
    let lower = env.dir("lower");
    fs::write(lower.join("f"), b"f").unwrap();
    let layer = Layer::with(&[Spec::whiteout(".wh.f"), Spec::hardlink("h", "f")]);
    let target = ApplyTarget {
        root: env.root.clone(),
        lowers: vec![lower],
        whiteouts: OverlayMode,
    };
    let err = apply_layer(&mut &layer[..], &target).unwrap_err();
    assert!(
        matches!(err, crate::error::Error::InvalidArgument(_)),
        "{err}"
    );
}
