//! Unpacking multi-layer images: the final tree is checked entry by entry against the OCI
//! layer rules (whiteouts, opaque dirs, replacements, hard links, modes, owners, xattrs,
//! mtimes, devices), on both snapshotters; shared layers are unpacked once.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;

use sup_client::api;
use sup_tests::image::name_annotations;
use sup_tests::model::image_tree;
use sup_tests::rpc::{self, import_ok, options};
use sup_tests::view::view_image;
use sup_tests::{
    per_snapshotter, Compression, Daemon, Image, ImageBuilder, Kind, LayerBuilder, OciArchive,
};

/// security.capability granting cap_net_raw (bit 13), effective: VFS_CAP_REVISION_2.
fn net_raw_capability() -> Vec<u8> {
    let mut v = Vec::new();
    for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    v
}

/// Bytes that do not compress, so that layers are not trivially small.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Three layers that exercise every rule; gzip, zstd and uncompressed.
fn layered_image() -> Image {
    let mut l1 = LayerBuilder::new();
    l1.dir("etc").mtime(1_100_000_000);
    l1.file("etc/passwd", sup_tests::busybox::PASSWD);
    l1.file("etc/shadow", "root:*:19000::::::\n")
        .mode(0o640)
        .owner(0, 42);
    l1.symlink("etc/abs", "/etc/passwd");
    l1.dir("usr/bin");
    l1.file("usr/bin/tool", "tool v1\n")
        .mode(0o755)
        .mtime(1_000_000_000);
    l1.hardlink("usr/bin/tool-link", "usr/bin/tool");
    l1.symlink("usr/bin/t", "tool").mtime(1_200_000_000);
    l1.file("usr/bin/setuid", "suid").mode(0o4755);
    l1.file("usr/bin/setgid", "sgid").mode(0o2755).owner(0, 50);
    l1.file("usr/bin/ping", "ping")
        .mode(0o755)
        .xattr("security.capability", net_raw_capability());
    l1.symlink("bin", "usr/bin");
    l1.dir("home/user")
        .owner(1000, 1000)
        .mode(0o700)
        .mtime(1_300_000_000);
    l1.file("home/user/.profile", "export A=1\n")
        .owner(1000, 1000)
        .mode(0o600);
    l1.symlink("home/user/link", ".profile").owner(1000, 1000);
    l1.file("var/cache/a", "a");
    l1.file("var/cache/b", "b");
    l1.file("var/cache/sub/c", "c");
    l1.file("var/log/old.log", "old\n");
    l1.file("opt/app/data", "v1");
    l1.file("swap", "i am a file\n");
    l1.file("flip/inner", "inner\n");
    l1.char_device("dev/null", 1, 3);
    l1.char_device("dev/console", 5, 1).mode(0o600);
    l1.block_device("dev/loop0", 7, 0);
    l1.fifo("run/ctl").mode(0o620).owner(1000, 1000);
    l1.dir("tmp").mode(0o1777);
    l1.dir("data").xattr("user.sup.dir", "d");
    l1.file("data/xattrs", "x")
        .xattr("user.sup.note", "hello")
        .xattr("trusted.sup.secret", [0u8, 1, 2, 255]);
    l1.file("data/h1", "linked\n").owner(1000, 1000).mode(0o640);
    l1.hardlink("data/h2", "data/h1");
    l1.hardlink("data/h3", "data/h1");
    l1.file("data/big", noise(300 * 1024, 7));
    l1.file(&format!("deep/{}/leaf", ["d"; 40].join("/")), "deep");

    let mut l2 = LayerBuilder::new();
    l2.whiteout("etc/shadow");
    l2.whiteout("var/log");
    l2.opaque("var/cache");
    l2.file("var/cache/new", "fresh\n");
    l2.dir("swap").mode(0o711);
    l2.file("swap/child", "child\n");
    l2.file("flip", "now a file\n");
    l2.file("usr/bin/tool", "tool v2\n").mode(0o755);
    // As `docker build` writes it: a changed directory's header carries its xattrs along.
    l2.dir("data").xattr("user.sup.dir", "d");
    l2.whiteout("data/h3");
    l2.dir("opt/app")
        .mode(0o750)
        .owner(1000, 1000)
        .mtime(1_400_000_000);
    l2.file("data/big", noise(200 * 1024, 8));

    let mut l3 = LayerBuilder::new();
    l3.dir("flip");
    l3.file("flip/again", "back\n");
    l3.file("swap", "a file again\n").mode(0o600);
    l3.file("var/log/new.log", "new\n");
    l3.file("etc/motd", "hi\n");

    ImageBuilder::new()
        .layer(l1.build(Compression::Gzip))
        .layer(l2.build(Compression::Zstd))
        .layer(l3.build(Compression::None))
        .build()
}

async fn layered_tree_matches_entry_by_entry(sn: &str) {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let image = layered_image();
    let archive = OciArchive::new()
        .image(&image, name_annotations("example.com/layers:1"))
        .build();
    import_ok(&client, options(sn), &archive).await;
    let info = rpc::inspect(&client, "example.com/layers:1").await;
    assert_eq!(info.diff_ids, image.diff_ids());
    assert_eq!(info.chain_id, image.chain_id());

    let view = view_image(&daemon, &client, "example.com/layers:1", sn).await;
    let tree = view.tree();
    tree.assert_matches(&image_tree(&image), "three layers");

    // The facts a user would look for first, spelled out.
    for gone in [
        "etc/shadow",
        "var/log/old.log",
        "var/cache/a",
        "var/cache/sub",
        "flip/inner",
        "data/h3",
    ] {
        assert!(tree.get(gone).is_none(), "{gone} should be gone");
    }
    assert_eq!(
        std::fs::read_to_string(view.join("var/cache/new")).unwrap(),
        "fresh\n"
    );
    assert_eq!(
        std::fs::read_to_string(view.join("swap")).unwrap(),
        "a file again\n"
    );
    assert_eq!(
        std::fs::read_to_string(view.join("flip/again")).unwrap(),
        "back\n"
    );
    assert_eq!(
        std::fs::read_to_string(view.join("usr/bin/tool")).unwrap(),
        "tool v2\n"
    );
    assert_eq!(
        std::fs::read_to_string(view.join("usr/bin/tool-link")).unwrap(),
        "tool v1\n"
    );
    assert_eq!(
        std::fs::read_to_string(view.join("opt/app/data")).unwrap(),
        "v1"
    );
    let h1 = std::fs::metadata(view.join("data/h1")).unwrap();
    let h2 = std::fs::metadata(view.join("data/h2")).unwrap();
    assert_eq!(h1.ino(), h2.ino(), "data/h1 and data/h2 are one inode");
    assert_eq!(tree.get("usr/bin/setuid").unwrap().mode, 0o4755);
    assert_eq!(tree.get("usr/bin/setgid").unwrap().mode, 0o2755);
    assert_eq!(
        tree.get("usr/bin/ping")
            .unwrap()
            .xattrs
            .get("security.capability"),
        Some(&net_raw_capability())
    );
    assert_eq!(tree.get("dev/null").unwrap().kind, Kind::Char(1, 3));
    assert_eq!(tree.get("run/ctl").unwrap().kind, Kind::Fifo);
    let home = tree.get("home/user").unwrap();
    assert_eq!(
        (home.uid, home.gid, home.mode, home.mtime),
        (1000, 1000, 0o700, 1_300_000_000)
    );
    assert_eq!(tree.get("usr/bin/tool-link").unwrap().mtime, 1_000_000_000);
}

async fn many_layers_stack_in_order(sn: &str) {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let mut builder = ImageBuilder::new();
    for i in 0..24 {
        let mut layer = LayerBuilder::new();
        layer.file("counter", format!("{i}\n"));
        layer.file(&format!("layers/{i:02}"), format!("layer {i}\n"));
        if i > 0 {
            layer.whiteout(&format!("layers/{:02}", i - 1));
        }
        let compression = [Compression::Gzip, Compression::Zstd, Compression::None][i % 3];
        builder = builder.layer(layer.build(compression));
    }
    let image = builder.build();
    let archive = OciArchive::new()
        .image(&image, name_annotations("example.com/tall:1"))
        .build();
    import_ok(&client, options(sn), &archive).await;
    let view = view_image(&daemon, &client, "example.com/tall:1", sn).await;
    view.tree().assert_matches(&image_tree(&image), "24 layers");
    assert_eq!(
        std::fs::read_to_string(view.join("counter")).unwrap(),
        "23\n"
    );
}

async fn shared_layers_are_unpacked_once(sn: &str) {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let mut base = LayerBuilder::new();
    base.file("etc/os-release", "ID=sup\n");
    let base = base.build(Compression::Gzip);
    let mut a = LayerBuilder::new();
    a.file("app", "a\n");
    let mut b = LayerBuilder::new();
    b.file("app", "b\n");
    let image_a = ImageBuilder::new()
        .layer(base.clone())
        .layer(a.build(Compression::Gzip))
        .build();
    let image_b = ImageBuilder::new()
        .layer(base.clone())
        .layer(b.build(Compression::Gzip))
        .build();
    let base_chain = image_a.chain_ids()[0].clone();
    assert_eq!(base_chain, image_b.chain_ids()[0]);

    let first = OciArchive::new()
        .image(&image_a, name_annotations("example.com/a:1"))
        .build();
    let second = OciArchive::new()
        .image(&image_b, name_annotations("example.com/b:1"))
        .build();
    import_ok(&client, options(sn), &first).await;
    import_ok(&client, options(sn), &second).await;

    let snaps = rpc::list_snapshots(&client, sn).await;
    let count = |name: &str| snaps.iter().filter(|s| s.name == name).count();
    assert_eq!(count(&base_chain), 1, "base unpacked once: {snaps:#?}");
    assert_eq!(snaps.len(), 3, "base + two tops: {snaps:#?}");
    for image in [&image_a, &image_b] {
        let top = snaps.iter().find(|s| s.name == image.chain_id()).unwrap();
        assert_eq!(top.parent, base_chain);
        assert_eq!(top.kind(), api::SnapshotKind::Committed);
    }
    let base_blob = rpc::list_content(&client)
        .await
        .into_iter()
        .filter(|c| c.digest == base.digest)
        .count();
    assert_eq!(base_blob, 1, "the shared layer blob is stored once");

    // Deleting one image keeps what the other still uses.
    rpc::delete_image(&client, "example.com/a:1").await.unwrap();
    let left = rpc::eventually(std::time::Duration::from_secs(10), || async {
        let snaps = rpc::list_snapshots(&client, sn).await;
        let names: Vec<String> = snaps.into_iter().map(|s| s.name).collect();
        if names.contains(&image_a.chain_id()) {
            Err(names)
        } else {
            Ok(names)
        }
    })
    .await
    .unwrap_or_else(|names| panic!("image a's top snapshot outlived it: {names:?}"));
    assert!(
        left.contains(&base_chain) && left.contains(&image_b.chain_id()),
        "{left:?}"
    );
    let view = view_image(&daemon, &client, "example.com/b:1", sn).await;
    view.tree()
        .assert_matches(&image_tree(&image_b), "image b after a was deleted");
    view.release(&client).await;

    rpc::delete_image(&client, "example.com/b:1").await.unwrap();
    rpc::assert_nothing_left(&client, "after deleting both images").await;
}

/// A directory written again by a later layer takes the later header's metadata whole:
/// mode, owner, mtime and xattrs (an xattr the header lacks is gone), children kept.
async fn directory_header_replaces_its_metadata(sn: &str) {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let mut l1 = LayerBuilder::new();
    l1.dir("d")
        .mode(0o700)
        .owner(1000, 1000)
        .mtime(1_000_000_000)
        .xattr("user.a", "1")
        .xattr("user.b", "2");
    l1.file("d/child", "kept\n");
    let mut l2 = LayerBuilder::new();
    l2.dir("d")
        .mode(0o755)
        .mtime(1_500_000_000)
        .xattr("user.a", "changed");
    let image = ImageBuilder::new()
        .layer(l1.build(Compression::Gzip))
        .layer(l2.build(Compression::Gzip))
        .build();
    let archive = OciArchive::new()
        .image(&image, name_annotations("example.com/dirmeta:1"))
        .build();
    import_ok(&client, options(sn), &archive).await;
    let view = view_image(&daemon, &client, "example.com/dirmeta:1", sn).await;
    let tree = view.tree();
    let d = tree.get("d").unwrap();
    assert_eq!(
        (d.mode, d.uid, d.gid, d.mtime),
        (0o755, 0, 0, 1_500_000_000)
    );
    let xattrs: Vec<(&str, &[u8])> = d
        .xattrs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    assert_eq!(xattrs, [("user.a", b"changed".as_slice())], "xattrs of d");
    tree.assert_matches(&image_tree(&image), "directory rewritten by layer 2");
}

per_snapshotter!(
    directory_header_replaces_its_metadata,
    layered_tree_matches_entry_by_entry,
    many_layers_stack_in_order,
    shared_layers_are_unpacked_once,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_image_unpacks_into_both_snapshotters() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let image = layered_image();
    let archive = OciArchive::new()
        .image(&image, name_annotations("example.com/both:1"))
        .build();
    import_ok(&client, options("overlayfs"), &archive).await;
    let native = view_image(&daemon, &client, "example.com/both:1", "native").await;
    let overlay = view_image(&daemon, &client, "example.com/both:1", "overlayfs").await;
    native.tree().assert_matches(&image_tree(&image), "native");
    overlay
        .tree()
        .assert_matches(&native.tree(), "overlayfs against native");
    let mut unpacked = rpc::inspect(&client, "example.com/both:1").await.unpacked;
    unpacked.sort();
    assert_eq!(unpacked, ["native", "overlayfs"]);
}
