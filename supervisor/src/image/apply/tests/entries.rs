//! Every entry type, with its metadata; replacing across layers.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use tar::EntryType;

use super::{exists, get_xattr, lstat, Env, Layer, Spec};
use crate::snapshot::WhiteoutMode::{self, Delete, Overlay};

fn all_types(mode: WhiteoutMode) {
    let env = Env::new();
    let long_dir = "d".repeat(120);
    let long_file = format!("{long_dir}/{}", "f".repeat(150));
    let layer = Layer::with(&[
        Spec::dir("./").mode(0o755).mtime(1_500_000_000),
        Spec::dir("etc/")
            .mode(0o750)
            .owner(1000, 1000)
            .mtime(1_234_567_890),
        Spec::file("etc/suid", b"#!/bin/true\n")
            .mode(0o4755)
            .owner(1000, 1000)
            .pax("mtime", b"1700000000.123456789")
            .pax("atime", b"1700000001.5")
            .pax("SCHILY.xattr.user.foo", b"bar")
            .pax("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        Spec::file("etc/sgid", b"x").mode(0o2711).owner(0, 1000),
        Spec::dir("tmp").mode(0o1777),
        Spec::hardlink("etc/suid-link", "etc/suid"),
        Spec::symlink("etc/link", "../tmp/nowhere").owner(1000, 1001),
        Spec::node("dev-null", EntryType::Char, 1, 3).mode(0o666),
        Spec::node("loop0", EntryType::Block, 7, 0)
            .mode(0o660)
            .owner(0, 6),
        Spec::node("fifo", EntryType::Fifo, 0, 0).mode(0o620),
        Spec::dir(&long_dir),
        Spec::file(&long_file, b"long"),
        Spec::symlink("long-link", &long_file),
        Spec::hardlink("long-hard", &long_file),
        Spec::file("empty", b""),
        Spec::file("big", &vec![7u8; 3 << 20]),
        // Written after a child of etc/, so its time must be applied at the end.
        Spec::file("etc/late", b"late"),
    ]);
    env.apply(&layer, mode).unwrap();
    let r = &env.root;

    let etc = lstat(&r.join("etc"));
    assert!(etc.is_dir());
    assert_eq!(etc.mode() & 0o7777, 0o750);
    assert_eq!((etc.uid(), etc.gid()), (1000, 1000));
    assert_eq!((etc.mtime(), etc.mtime_nsec()), (1_234_567_890, 0));
    assert_eq!(lstat(r).mtime(), 1_500_000_000);

    let suid = lstat(&r.join("etc/suid"));
    assert!(suid.is_file());
    assert_eq!(suid.mode() & 0o7777, 0o4755, "setuid survives chown");
    assert_eq!((suid.uid(), suid.gid()), (1000, 1000));
    assert_eq!(
        (suid.mtime(), suid.mtime_nsec()),
        (1_700_000_000, 123_456_789)
    );
    assert_eq!(
        (suid.atime(), suid.atime_nsec()),
        (1_700_000_001, 500_000_000)
    );
    assert_eq!(fs::read(r.join("etc/suid")).unwrap(), b"#!/bin/true\n");
    assert_eq!(
        get_xattr(&r.join("etc/suid"), "user.foo").as_deref(),
        Some(&b"bar"[..])
    );
    assert_eq!(
        get_xattr(&r.join("etc/suid"), "trusted.overlay.opaque"),
        None,
        "a layer may not set overlay xattrs"
    );
    assert_eq!(lstat(&r.join("etc/sgid")).mode() & 0o7777, 0o2711);
    assert_eq!(lstat(&r.join("tmp")).mode() & 0o7777, 0o1777);

    let link = lstat(&r.join("etc/suid-link"));
    assert_eq!(link.ino(), suid.ino());
    assert_eq!(link.nlink(), 2);

    let sym = lstat(&r.join("etc/link"));
    assert!(sym.file_type().is_symlink());
    assert_eq!((sym.uid(), sym.gid()), (1000, 1001));
    assert_eq!(
        fs::read_link(r.join("etc/link")).unwrap().to_str(),
        Some("../tmp/nowhere")
    );

    let null = lstat(&r.join("dev-null"));
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    let lp = lstat(&r.join("loop0"));
    assert!(lp.file_type().is_block_device());
    assert_eq!(lp.rdev(), rustix::fs::makedev(7, 0));
    assert_eq!((lp.mode() & 0o7777, lp.gid()), (0o660, 6));
    let fifo = lstat(&r.join("fifo"));
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o620);

    assert_eq!(fs::read(r.join(&long_file)).unwrap(), b"long");
    assert_eq!(
        fs::read_link(r.join("long-link")).unwrap().to_str(),
        Some(&long_file[..])
    );
    assert_eq!(
        lstat(&r.join("long-hard")).ino(),
        lstat(&r.join(&long_file)).ino()
    );
    assert_eq!(lstat(&r.join("empty")).len(), 0);
    assert_eq!(fs::read(r.join("big")).unwrap(), vec![7u8; 3 << 20]);
}

#[test]
fn every_entry_type_with_metadata_delete_mode() {
    all_types(Delete);
}

#[test]
fn every_entry_type_with_metadata_overlay_mode() {
    all_types(Overlay);
}

#[test]
fn missing_parents_are_made_root_owned_0755() {
    let env = Env::new();
    let layer = Layer::with(&[Spec::file("a/b/c/file", b"x").owner(1000, 1000)]);
    env.apply(&layer, Delete).unwrap();
    for dir in ["a", "a/b", "a/b/c"] {
        let md = lstat(&env.root.join(dir));
        assert!(md.is_dir());
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid()),
            (0o755, 0, 0),
            "{dir}"
        );
    }
}

#[test]
fn names_are_cleaned_and_symlinked_parents_followed_inside() {
    let env = Env::new();
    let layer = Layer::with(&[
        Spec::dir("usr/lib"),
        Spec::symlink("lib", "usr/lib"),
        Spec::symlink("abs", "/usr"),
        Spec::file("lib/libc.so", b"libc"),
        Spec::file("abs/lib/libm.so", b"libm"),
        Spec::file("./x/../y", b"y"),
        Spec::file("/rooted", b"r"),
    ]);
    env.apply(&layer, Delete).unwrap();
    let r = &env.root;
    assert_eq!(fs::read(r.join("usr/lib/libc.so")).unwrap(), b"libc");
    assert_eq!(fs::read(r.join("usr/lib/libm.so")).unwrap(), b"libm");
    assert_eq!(fs::read(r.join("y")).unwrap(), b"y");
    assert_eq!(fs::read(r.join("rooted")).unwrap(), b"r");
    assert!(lstat(&r.join("lib")).file_type().is_symlink());
}

#[test]
fn file_becomes_dir_and_back_in_a_full_copy() {
    let env = Env::new();
    env.apply(
        &Layer::with(&[Spec::file("x", b"one"), Spec::symlink("s", "x")]),
        Delete,
    )
    .unwrap();
    let layer2 = Layer::with(&[
        Spec::dir("x").mode(0o700),
        Spec::file("x/inner", b"in"),
        Spec::dir("s"),
        Spec::file("s/f", b"f"),
    ]);
    env.apply(&layer2, Delete).unwrap();
    assert!(lstat(&env.root.join("x")).is_dir());
    assert_eq!(lstat(&env.root.join("x")).mode() & 0o7777, 0o700);
    assert_eq!(fs::read(env.root.join("x/inner")).unwrap(), b"in");
    assert!(
        lstat(&env.root.join("s")).is_dir(),
        "a symlink is replaced, not followed"
    );
    assert_eq!(fs::read(env.root.join("s/f")).unwrap(), b"f");
    env.apply(
        &Layer::with(&[Spec::file("x", b"two"), Spec::symlink("s", "x")]),
        Delete,
    )
    .unwrap();
    assert_eq!(fs::read(env.root.join("x")).unwrap(), b"two");
    assert!(lstat(&env.root.join("s")).file_type().is_symlink());
}

#[test]
fn existing_directory_is_kept_and_updated() {
    let env = Env::new();
    env.apply(
        &Layer::with(&[Spec::dir("d").mode(0o700), Spec::file("d/old", b"o")]),
        Delete,
    )
    .unwrap();
    env.apply(
        &Layer::with(&[Spec::dir("d").mode(0o755).owner(5, 5)]),
        Delete,
    )
    .unwrap();
    let md = lstat(&env.root.join("d"));
    assert_eq!((md.mode() & 0o7777, md.uid()), (0o755, 5));
    assert!(
        exists(&env.root.join("d/old")),
        "layers merge into existing directories"
    );
}

#[test]
fn same_layer_later_entry_wins_and_self_hardlink_is_fine() {
    let env = Env::new();
    let layer = Layer::with(&[
        Spec::file("f", b"first"),
        Spec::file("f", b"second"),
        Spec::hardlink("f", "f"),
        Spec::dir("d"),
        Spec::file("d/x", b"x"),
        Spec::file("d", b"now a file"),
    ]);
    env.apply(&layer, Delete).unwrap();
    assert_eq!(fs::read(env.root.join("f")).unwrap(), b"second");
    assert_eq!(fs::read(env.root.join("d")).unwrap(), b"now a file");
}

#[test]
fn unknown_entry_types_and_global_headers_are_skipped() {
    let env = Env::new();
    let mut layer = Layer::new();
    layer.push(&Spec::new("vol", EntryType::new(b'V'), 0o644));
    layer.push(&Spec::new("global", EntryType::XGlobalHeader, 0o644));
    layer.push(&Spec::file("kept", b"k"));
    env.apply(&layer.finish(), Delete).unwrap();
    assert!(!exists(&env.root.join("vol")));
    assert!(!exists(&env.root.join("global")));
    assert!(exists(&env.root.join("kept")));
}
