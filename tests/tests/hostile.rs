//! Hostile layers: names with `..`, absolute names, symlinked parents, hard links and
//! whiteouts that aim outside the snapshot. Each import must either fail with InvalidArgument
//! and leave nothing, or confine the entry inside the snapshot. Either way a sentinel
//! directory outside the daemon's root, which the entries aim at, must be unchanged, no
//! payload file may appear outside the image's own layer directories, and an image of another
//! namespace must be untouched.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sup_client::Client;
use sup_tests::image::name_annotations;
use sup_tests::model::image_tree;
use sup_tests::rpc::{self, import_ok, options};
use sup_tests::view::{view_image, view_snapshot};
use sup_tests::{
    per_snapshotter, Compression, Daemon, ImageBuilder, Layer, LayerBuilder, OciArchive, Tree,
};
use tonic::Code;

/// Enough `..` to climb from any snapshot directory to `/`.
fn up() -> String {
    "../".repeat(24)
}

/// Every payload file's name starts with this, so that escapes can be found by name.
const MARK: &str = "sup-escape";

struct Scene {
    daemon: Daemon,
    client: Client,
    /// Absolute path of a directory outside the daemon's root that the hostile entries aim at.
    sentinel: PathBuf,
}

impl Scene {
    async fn new() -> Scene {
        let daemon = Daemon::start().await;
        let client = daemon.client().await;
        let sentinel = daemon.dir().join("sentinel");
        std::fs::create_dir_all(sentinel.join("keep")).unwrap();
        std::fs::write(sentinel.join("victim"), "original\n").unwrap();
        std::fs::write(sentinel.join("keep/file"), "keep\n").unwrap();
        Scene {
            daemon,
            client,
            sentinel,
        }
    }

    /// The sentinel's absolute path without the leading `/`, for appending to `..` chains.
    fn sentinel_rel(&self) -> String {
        self.sentinel
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string()
    }

    fn sentinel_abs(&self) -> String {
        self.sentinel.to_string_lossy().into_owned()
    }
}

/// Files whose name carries MARK anywhere under `dir`, not descending into mount points.
fn marked_files(dir: &Path, skip: &Path, out: &mut Vec<PathBuf>) {
    let Ok(items) = std::fs::read_dir(dir) else {
        return;
    };
    for item in items.flatten() {
        let path = item.path();
        if path == skip {
            continue;
        }
        if item.file_name().to_string_lossy().contains(MARK) {
            out.push(path.clone());
        }
        if item.file_type().is_ok_and(|t| t.is_dir()) {
            marked_files(&path, skip, out);
        }
    }
}

/// Imports an image made of `layers` and checks that nothing escaped, whatever the outcome.
async fn expect_contained(sn: &str, scene: &Scene, layers: Vec<Layer>, what: &str) {
    let Scene {
        daemon,
        client,
        sentinel,
    } = scene;
    // A bystander image in another namespace, which no layer of this one may touch.
    let bystander_client = client.with_namespace("bystander").unwrap();
    let bystander = sup_tests::busybox::busybox_image();
    let archive = OciArchive::new()
        .image(&bystander, name_annotations("example.com/bystander:1"))
        .build();
    import_ok(&bystander_client, options(sn), &archive).await;

    let before = Tree::scan(sentinel).unwrap();
    let mut image = ImageBuilder::new();
    for layer in layers {
        image = image.layer(layer);
    }
    let image = image.build();
    let archive = OciArchive::new()
        .image(&image, name_annotations("example.com/hostile:1"))
        .build();
    let result = rpc::import(client, options(sn), &archive).await;

    let mut allowed: Vec<PathBuf> = Vec::new();
    let mut views = Vec::new();
    match &result {
        Err(status) => {
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{what}: a refused hostile layer must be InvalidArgument, got {:?}: {}",
                status.code(),
                status.message()
            );
            rpc::assert_nothing_left(client, what).await;
        }
        Ok(_) => {
            // Confined: every layer's snapshot mounts, and payloads may only be inside them.
            for chain_id in image.chain_ids() {
                let view = view_snapshot(daemon, client, sn, &chain_id).await;
                allowed.extend(view.layer_dirs());
                views.push(view);
            }
        }
    }

    eprintln!(
        "{what} [{sn}]: {}",
        match &result {
            Ok(_) => "imported, entries confined".to_string(),
            Err(s) => format!("refused: {}", s.message()),
        }
    );
    let after = Tree::scan(sentinel).unwrap();
    after.assert_matches(&before, &format!("{what}: the sentinel outside the root"));
    let victim = std::fs::metadata(sentinel.join("victim")).unwrap();
    assert_eq!(
        victim.nlink(),
        1,
        "{what}: something hard-linked the sentinel's victim"
    );
    assert_eq!(
        std::fs::read_to_string(sentinel.join("victim")).unwrap(),
        "original\n"
    );

    let mut found = Vec::new();
    marked_files(daemon.dir(), &daemon.dir().join("mnt"), &mut found);
    let escaped: Vec<&PathBuf> = found
        .iter()
        .filter(|f| !allowed.iter().any(|d| f.starts_with(d) && *f != d))
        .collect();
    assert!(
        escaped.is_empty(),
        "{what}: payload written outside the image's layers: {escaped:?} (layers: {allowed:?}; outcome: {:?})",
        result.as_ref().map(|_| "imported").map_err(|s| s.message().to_string())
    );
    drop(views);

    let view = view_image(daemon, &bystander_client, "example.com/bystander:1", sn).await;
    view.tree()
        .assert_matches(&image_tree(&bystander), &format!("{what}: bystander image"));
}

fn raw_layer(build: impl FnOnce(&mut LayerBuilder)) -> Layer {
    let mut layer = LayerBuilder::raw();
    build(&mut layer);
    layer.build(Compression::Gzip)
}

/// A benign first layer: a symlink to the sentinel, as legal as /etc/mtab -> /proc/mounts.
fn symlink_layer(target: &str) -> Layer {
    raw_layer(|l| {
        l.symlink("evil", target);
    })
}

async fn dotdot_deep(sn: &str) {
    let s = Scene::new().await;
    let name = format!("{}{}/{MARK}-dotdot", up(), s.sentinel_rel());
    let layer = raw_layer(|l| {
        l.file(&name, "pwned\n");
    });
    expect_contained(sn, &s, vec![layer], "file named ../../<sentinel>/x").await;
}

async fn dotdot_shallow(sn: &str) {
    let s = Scene::new().await;
    let layer = raw_layer(|l| {
        for depth in 1..=5 {
            l.file(&format!("{}{MARK}-{depth}", "../".repeat(depth)), "pwned\n");
        }
    });
    expect_contained(sn, &s, vec![layer], "files named ../x to ../../../../../x").await;
}

async fn dotdot_in_the_middle(sn: &str) {
    let s = Scene::new().await;
    let name = format!("usr/{}{}/{MARK}-middle", up(), s.sentinel_rel());
    let layer = raw_layer(|l| {
        l.dir("usr");
        l.file(&name, "pwned\n");
    });
    expect_contained(sn, &s, vec![layer], "file named usr/../../<sentinel>/x").await;
}

async fn dotdot_directory(sn: &str) {
    let s = Scene::new().await;
    let name = format!("{}{}/{MARK}-dir", up(), s.sentinel_rel());
    let layer = raw_layer(|l| {
        l.dir(&name);
    });
    expect_contained(sn, &s, vec![layer], "directory named ../../<sentinel>/d").await;
}

async fn absolute_name(sn: &str) {
    let s = Scene::new().await;
    let name = format!("{}/{MARK}-absolute", s.sentinel_abs());
    let layer = raw_layer(|l| {
        l.file(&name, "pwned\n");
    });
    expect_contained(sn, &s, vec![layer], "file named /<sentinel>/x").await;
}

async fn pax_path_disagrees_with_header(sn: &str) {
    let s = Scene::new().await;
    let name = format!("{}{}/{MARK}-pax", up(), s.sentinel_rel());
    let layer = raw_layer(|l| {
        l.file(&name, "pwned\n").ustar_decoy("harmless");
    });
    expect_contained(
        sn,
        &s,
        vec![layer],
        "PAX path ../../<sentinel>/x, ustar name harmless",
    )
    .await;
}

async fn symlink_parent_absolute(sn: &str) {
    let s = Scene::new().await;
    let target = s.sentinel_abs();
    let layer = raw_layer(|l| {
        l.symlink("evil", &target);
        l.file(&format!("evil/{MARK}-symlink"), "pwned\n");
    });
    expect_contained(sn, &s, vec![layer], "evil -> /<sentinel>, then evil/x").await;
}

async fn symlink_parent_relative(sn: &str) {
    let s = Scene::new().await;
    let target = format!("{}{}", up(), s.sentinel_rel());
    let layer = raw_layer(|l| {
        l.symlink("evil", &target);
        l.file(&format!("evil/{MARK}-relsymlink"), "pwned\n");
    });
    expect_contained(sn, &s, vec![layer], "evil -> ../../<sentinel>, then evil/x").await;
}

async fn symlink_to_parent_dir(sn: &str) {
    let s = Scene::new().await;
    let layer = raw_layer(|l| {
        l.symlink("up", "..");
        l.file(&format!("up/{MARK}-up"), "pwned\n");
        l.file(&format!("up/up/up/{MARK}-upupup"), "pwned\n");
    });
    expect_contained(sn, &s, vec![layer], "up -> .., then up/x and up/up/up/x").await;
}

async fn symlink_parent_from_lower_layer(sn: &str) {
    let s = Scene::new().await;
    let lower = symlink_layer(&s.sentinel_abs());
    let upper = raw_layer(|l| {
        l.file(&format!("evil/{MARK}-lower"), "pwned\n");
    });
    expect_contained(
        sn,
        &s,
        vec![lower, upper],
        "layer 1: evil -> /<sentinel>; layer 2: evil/x",
    )
    .await;
}

async fn directory_over_symlink_from_lower_layer(sn: &str) {
    let s = Scene::new().await;
    let lower = symlink_layer(&s.sentinel_abs());
    let upper = raw_layer(|l| {
        l.dir("evil");
        l.file(&format!("evil/{MARK}-dirover"), "pwned\n");
    });
    expect_contained(
        sn,
        &s,
        vec![lower, upper],
        "layer 1: evil -> /<sentinel>; layer 2: evil/ and evil/x",
    )
    .await;
}

async fn hardlink_to_absolute_host_file(sn: &str) {
    let s = Scene::new().await;
    let target = format!("{}/victim", s.sentinel_abs());
    let layer = raw_layer(|l| {
        l.hardlink(&format!("{MARK}-grab"), &target);
    });
    expect_contained(sn, &s, vec![layer], "hard link to /<sentinel>/victim").await;
}

async fn hardlink_then_overwrite(sn: &str) {
    let s = Scene::new().await;
    let target = format!("{}/victim", s.sentinel_abs());
    let layer = raw_layer(|l| {
        l.hardlink(&format!("{MARK}-grab"), &target);
        l.file(&format!("{MARK}-grab"), "pwned\n");
    });
    expect_contained(
        sn,
        &s,
        vec![layer],
        "hard link to /<sentinel>/victim, then written",
    )
    .await;
}

async fn hardlink_with_dotdot(sn: &str) {
    let s = Scene::new().await;
    let target = format!("{}{}/victim", up(), s.sentinel_rel());
    let layer = raw_layer(|l| {
        l.hardlink(&format!("{MARK}-grab"), &target);
    });
    expect_contained(sn, &s, vec![layer], "hard link to ../../<sentinel>/victim").await;
}

async fn hardlink_through_symlink(sn: &str) {
    let s = Scene::new().await;
    let lower = symlink_layer(&s.sentinel_abs());
    let upper = raw_layer(|l| {
        l.hardlink(&format!("{MARK}-grab"), "evil/victim");
        l.file(&format!("{MARK}-grab"), "pwned\n");
    });
    expect_contained(
        sn,
        &s,
        vec![lower, upper],
        "evil -> /<sentinel>; hard link to evil/victim",
    )
    .await;
}

async fn whiteout_with_dotdot(sn: &str) {
    let s = Scene::new().await;
    let name = format!("{}{}/.wh.victim", up(), s.sentinel_rel());
    let base = raw_layer(|l| {
        l.file("placeholder", "x");
    });
    let layer = raw_layer(|l| {
        l.file(&name, "");
    });
    expect_contained(
        sn,
        &s,
        vec![base, layer],
        "whiteout ../../<sentinel>/.wh.victim",
    )
    .await;
}

async fn whiteout_of_dotdot(sn: &str) {
    let s = Scene::new().await;
    let base = raw_layer(|l| {
        l.dir("sub");
        l.file("sub/file", "x");
    });
    let layer = raw_layer(|l| {
        l.file("sub/.wh...", "");
        l.file(".wh...", "");
    });
    expect_contained(
        sn,
        &s,
        vec![base, layer],
        "whiteouts .wh... naming the parent",
    )
    .await;
}

async fn whiteout_through_symlink(sn: &str) {
    let s = Scene::new().await;
    let lower = symlink_layer(&s.sentinel_abs());
    let upper = raw_layer(|l| {
        l.file("evil/.wh.victim", "");
    });
    expect_contained(
        sn,
        &s,
        vec![lower, upper],
        "evil -> /<sentinel>; evil/.wh.victim",
    )
    .await;
}

async fn opaque_through_symlink(sn: &str) {
    let s = Scene::new().await;
    let lower = symlink_layer(&s.sentinel_abs());
    let upper = raw_layer(|l| {
        l.file("evil/.wh..wh..opq", "");
    });
    expect_contained(
        sn,
        &s,
        vec![lower, upper],
        "evil -> /<sentinel>; evil/.wh..wh..opq",
    )
    .await;
}

per_snapshotter!(
    dotdot_deep,
    dotdot_shallow,
    dotdot_in_the_middle,
    dotdot_directory,
    absolute_name,
    pax_path_disagrees_with_header,
    symlink_parent_absolute,
    symlink_parent_relative,
    symlink_to_parent_dir,
    symlink_parent_from_lower_layer,
    directory_over_symlink_from_lower_layer,
    hardlink_to_absolute_host_file,
    hardlink_then_overwrite,
    hardlink_with_dotdot,
    hardlink_through_symlink,
    whiteout_with_dotdot,
    whiteout_of_dotdot,
    whiteout_through_symlink,
    opaque_through_symlink,
);
