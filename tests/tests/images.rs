//! Importing, listing, inspecting, exporting and deleting images, in both archive formats.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use sup_client::api;
use sup_tests::busybox::{busybox_bytes, busybox_image, APPLETS};
use sup_tests::digest::hex_part;
use sup_tests::image::{name_annotations, read_archive, OCI_INDEX, OCI_MANIFEST, OCI_REF_NAME};
use sup_tests::model::image_tree;
use sup_tests::rpc::{self, expect_code, import_ok, options};
use sup_tests::view::view_image;
use sup_tests::{
    per_snapshotter, Compression, Daemon, DockerArchive, ImageBuilder, Kind, LayerBuilder,
    OciArchive, Platform,
};
use tonic::Code;

const BUSYBOX: &str = "docker.io/library/busybox:latest";

fn names(images: &[api::Image]) -> BTreeSet<String> {
    images.iter().map(|i| i.name.clone()).collect()
}

/// The busybox tree is there, byte for byte, through a read-only view.
async fn check_busybox_tree(daemon: &Daemon, client: &sup_client::Client, name: &str, sn: &str) {
    let image = busybox_image();
    let view = view_image(daemon, client, name, sn).await;
    let tree = view.tree();
    tree.assert_matches(&image_tree(&image), "busybox");
    assert_eq!(
        std::fs::read(view.join("bin/busybox")).unwrap(),
        busybox_bytes()
    );
    for applet in APPLETS {
        assert_eq!(
            tree.get(&format!("bin/{applet}")).unwrap().kind,
            Kind::Symlink("busybox".into())
        );
    }
    assert_eq!(tree.get("tmp").unwrap().mode, 0o1777);
    assert_eq!(tree.get("home/user").unwrap().uid, 1000);
}

async fn busybox_oci_archive_imports_lists_and_inspects(sn: &str) {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let image = busybox_image();
    let archive = OciArchive::new()
        .image(&image, name_annotations(BUSYBOX))
        .build();

    let opts = api::ImportOptions {
        labels: [("team".to_string(), "tools".to_string())].into(),
        ..options(sn)
    };
    let created = import_ok(&client, opts, &archive).await;
    assert_eq!(names(&created), BTreeSet::from([BUSYBOX.to_string()]));
    assert_eq!(
        created[0].labels.get("team").map(String::as_str),
        Some("tools")
    );
    let target = created[0].target.clone().unwrap();
    assert_eq!(target.digest, image.manifest_digest);
    assert_eq!(target.media_type, OCI_MANIFEST);
    assert_eq!(target.size, image.manifest.len() as i64);

    let listed = rpc::list_images(&client).await;
    assert_eq!(names(&listed), BTreeSet::from([BUSYBOX.to_string()]));

    let info = rpc::inspect(&client, "busybox").await;
    assert_eq!(info.image.unwrap().name, BUSYBOX);
    assert_eq!(info.manifest.unwrap().digest, image.manifest_digest);
    assert_eq!(info.config.unwrap().digest, image.config_digest);
    let layer_digests: Vec<String> = info.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(layer_digests, vec![image.layers[0].digest.clone()]);
    assert_eq!(info.layers[0].media_type, Compression::Gzip.media_type());
    assert_eq!(info.diff_ids, image.diff_ids());
    assert_eq!(info.chain_id, image.chain_id());
    assert_eq!(info.config_json, image.config);
    let expected_size = image.manifest.len() + image.config.len() + image.layers[0].blob.len();
    assert_eq!(info.size, expected_size as i64);
    assert!(
        info.unpacked.iter().any(|s| s == sn),
        "unpacked: {:?}",
        info.unpacked
    );

    let snapshots = rpc::list_snapshots(&client, sn).await;
    let top: Vec<_> = snapshots
        .iter()
        .filter(|s| s.name == image.chain_id())
        .collect();
    assert_eq!(top.len(), 1, "snapshots: {snapshots:?}");
    assert_eq!(top[0].kind(), api::SnapshotKind::Committed);

    check_busybox_tree(&daemon, &client, BUSYBOX, sn).await;
}

async fn busybox_docker_archive_takes_names_from_repo_tags(sn: &str) {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let image = busybox_image();
    let archive = DockerArchive::new()
        .image(
            &image,
            &["busybox:latest", "registry.example:5000/tools/busybox:1.36"],
        )
        .build();

    let created = import_ok(&client, options(sn), &archive).await;
    let want = BTreeSet::from([
        BUSYBOX.to_string(),
        "registry.example:5000/tools/busybox:1.36".to_string(),
    ]);
    assert_eq!(names(&created), want);
    assert_eq!(names(&rpc::list_images(&client).await), want);
    for name in &want {
        let info = rpc::inspect(&client, name).await;
        assert_eq!(info.diff_ids, image.diff_ids(), "{name}");
        assert_eq!(info.chain_id, image.chain_id(), "{name}");
        assert_eq!(info.layers.len(), 1, "{name}");
        assert_eq!(info.config_json, image.config, "{name}");
    }
    check_busybox_tree(
        &daemon,
        &client,
        "registry.example:5000/tools/busybox:1.36",
        sn,
    )
    .await;
}

async fn name_option_overrides_archive_names(sn: &str) {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let image = busybox_image();
    let archive = OciArchive::new()
        .image(&image, name_annotations("example.com/original:1"))
        .build();
    let opts = api::ImportOptions {
        name: "busybox".into(),
        ..options(sn)
    };
    let created = import_ok(&client, opts, &archive).await;
    assert_eq!(names(&created), BTreeSet::from([BUSYBOX.to_string()]));
    assert_eq!(
        names(&rpc::list_images(&client).await),
        BTreeSet::from([BUSYBOX.to_string()])
    );
    let missing = rpc::get_image(&client, "example.com/original:1").await;
    expect_code(missing, Code::NotFound, "the archive's own name");

    let docker = DockerArchive::new().image(&image, &["a:1"]).build();
    let opts = api::ImportOptions {
        name: "mybox:v2".into(),
        ..options(sn)
    };
    let created = import_ok(&client, opts, &docker).await;
    assert_eq!(
        names(&created),
        BTreeSet::from(["docker.io/library/mybox:v2".to_string()])
    );
    check_busybox_tree(&daemon, &client, "mybox:v2", sn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_option_is_refused_for_an_archive_of_several_images() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let mut other = LayerBuilder::new();
    other.file("other", "x");
    let second = ImageBuilder::new()
        .layer(other.build(Compression::Gzip))
        .build();
    let archive = OciArchive::new()
        .image(&busybox_image(), name_annotations("example.com/a:1"))
        .image(&second, name_annotations("example.com/b:1"))
        .build();
    let opts = api::ImportOptions {
        name: "busybox".into(),
        ..Default::default()
    };
    let result = rpc::import(&client, opts, &archive).await;
    expect_code(result, Code::InvalidArgument, "--name with two images");
    rpc::assert_nothing_left(&client, "refused import").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_come_from_annotations() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let mut l1 = LayerBuilder::new();
    l1.file("one", "1");
    let mut l2 = LayerBuilder::new();
    l2.file("two", "2");
    let one = ImageBuilder::new()
        .layer(l1.build(Compression::Gzip))
        .build();
    let two = ImageBuilder::new()
        .layer(l2.build(Compression::Gzip))
        .build();
    // containerd's annotation wins over the OCI ref name; a full reference in the OCI ref
    // name alone is used as it is.
    let only_oci = [(OCI_REF_NAME.to_string(), "example.com/app:1.0".to_string())].into();
    let archive = OciArchive::new()
        .image(&one, name_annotations("quay.example/team/one:2"))
        .image(&two, only_oci)
        .build();
    let created = import_ok(&client, options(""), &archive).await;
    let want = BTreeSet::from([
        "quay.example/team/one:2".to_string(),
        "example.com/app:1.0".to_string(),
    ]);
    assert_eq!(names(&created), want);
    let got = rpc::get_image(&client, "example.com/app:1.0")
        .await
        .unwrap();
    assert_eq!(got.target.unwrap().digest, two.manifest_digest);
    let got = rpc::get_image(&client, "quay.example/team/one:2")
        .await
        .unwrap();
    assert_eq!(got.target.unwrap().digest, one.manifest_digest);
}

async fn export_then_reimport_gives_the_same_image(sn: &str) {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let image = busybox_image();
    let archive = DockerArchive::new().image(&image, &["busybox"]).build();
    let created = import_ok(&client, options(sn), &archive).await;
    let digest = created[0].target.clone().unwrap().digest;

    let exported = rpc::export(&client, &[BUSYBOX]).await.unwrap();
    let files = read_archive(&exported).expect("the export is a tar");
    assert!(
        files.contains_key("oci-layout"),
        "files: {:?}",
        files.keys()
    );
    for (name, data) in &files {
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            assert_eq!(sup_tests::digest::sha256(data), format!("sha256:{hex}"));
        }
    }
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let text = index.to_string();
    assert!(text.contains(&digest), "index.json: {text}");
    assert!(text.contains(BUSYBOX), "index.json: {text}");
    // docker save stores layers uncompressed: the blob is the layer tar, named by its diff ID.
    let layer_blob = format!("blobs/sha256/{}", hex_part(&image.layers[0].diff_id));
    assert_eq!(files.get(&layer_blob), Some(&image.layers[0].tar));

    rpc::delete_image(&client, BUSYBOX).await.unwrap();
    rpc::assert_nothing_left(&client, "after deleting busybox").await;

    let again = import_ok(&client, options(sn), &exported).await;
    assert_eq!(names(&again), BTreeSet::from([BUSYBOX.to_string()]));
    assert_eq!(again[0].target.clone().unwrap().digest, digest);
    check_busybox_tree(&daemon, &client, BUSYBOX, sn).await;
}

async fn delete_releases_content_and_snapshots(sn: &str) {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let image = busybox_image();
    let archive = OciArchive::new()
        .image(&image, name_annotations(BUSYBOX))
        .build();
    import_ok(&client, options(sn), &archive).await;
    let blobs: BTreeSet<String> = rpc::list_content(&client)
        .await
        .into_iter()
        .map(|c| c.digest)
        .collect();
    let want: BTreeSet<String> = [
        image.manifest_digest.clone(),
        image.config_digest.clone(),
        image.layers[0].digest.clone(),
    ]
    .into();
    assert_eq!(blobs, want);

    rpc::delete_image(&client, "busybox").await.unwrap();
    expect_code(
        rpc::get_image(&client, BUSYBOX).await,
        Code::NotFound,
        "Get after delete",
    );
    expect_code(
        rpc::inspect_platform(&client, BUSYBOX, None).await,
        Code::NotFound,
        "Inspect after delete",
    );
    expect_code(
        rpc::delete_image(&client, BUSYBOX).await,
        Code::NotFound,
        "second delete",
    );
    rpc::assert_nothing_left(&client, "after deleting the only image").await;
}

async fn multi_platform_index_unpacks_the_host_platform(sn: &str) {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let mut host_layer = LayerBuilder::new();
    host_layer.file("etc/arch", "host\n");
    let mut foreign_layer = LayerBuilder::new();
    foreign_layer.file("etc/arch", "foreign\n");
    let host = ImageBuilder::new()
        .layer(host_layer.build(Compression::Gzip))
        .build();
    let foreign = ImageBuilder::new()
        .platform(Platform::foreign())
        .layer(foreign_layer.build(Compression::Zstd))
        .build();
    let oci = OciArchive::new().multi_platform(
        &[foreign.clone(), host.clone()],
        name_annotations("example.com/multi:1"),
    );
    let created = import_ok(&client, options(sn), &oci.build()).await;
    let target = created[0].target.clone().unwrap();
    assert_eq!(target.media_type, OCI_INDEX);
    assert_eq!(target.digest, oci.last_target_digest());

    let info = rpc::inspect(&client, "example.com/multi:1").await;
    assert_eq!(info.manifest.unwrap().digest, host.manifest_digest);
    assert_eq!(info.chain_id, host.chain_id());
    let archs: BTreeSet<String> = info
        .platforms
        .iter()
        .map(|p| p.architecture.clone())
        .collect();
    assert_eq!(
        archs,
        BTreeSet::from([
            Platform::host().architecture,
            Platform::foreign().architecture
        ])
    );
    // The whole index is kept: the other platform resolves too.
    let other = rpc::inspect_platform(
        &client,
        "example.com/multi:1",
        Some(rpc::platform(&Platform::foreign())),
    )
    .await
    .unwrap();
    assert_eq!(other.manifest.unwrap().digest, foreign.manifest_digest);
    assert_eq!(other.diff_ids, foreign.diff_ids());

    let view = view_image(&daemon, &client, "example.com/multi:1", sn).await;
    assert_eq!(
        std::fs::read_to_string(view.join("etc/arch")).unwrap(),
        "host\n"
    );
    view.tree()
        .assert_matches(&image_tree(&host), "host platform");
}

async fn docker_media_types_and_gzipped_archives(sn: &str) {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let mut layer = LayerBuilder::new();
    layer.file("hello", "docker\n");
    let image = ImageBuilder::new()
        .docker_media_types()
        .layer(layer.build(Compression::Gzip))
        .build();
    let archive = OciArchive::new()
        .image(&image, name_annotations("example.com/dock:1"))
        .build();
    let created = import_ok(&client, options(sn), &sup_tests::image::gzip(&archive)).await;
    let target = created[0].target.clone().unwrap();
    assert_eq!(target.media_type, sup_tests::image::DOCKER_MANIFEST);
    assert_eq!(target.digest, image.manifest_digest);
    let view = view_image(&daemon, &client, "example.com/dock:1", sn).await;
    view.tree()
        .assert_matches(&image_tree(&image), "docker media types");
}

async fn no_unpack_imports_content_only(sn: &str) {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let image = busybox_image();
    let archive = OciArchive::new()
        .image(&image, name_annotations(BUSYBOX))
        .build();
    let opts = api::ImportOptions {
        no_unpack: true,
        ..options(sn)
    };
    import_ok(&client, opts, &archive).await;
    for snapshotter in sup_tests::SNAPSHOTTERS {
        let snaps = rpc::list_snapshots(&client, snapshotter).await;
        assert!(snaps.is_empty(), "{snapshotter}: {snaps:?}");
    }
    assert!(rpc::inspect(&client, BUSYBOX).await.unpacked.is_empty());
    let chain = sup_tests::view::unpack(&client, BUSYBOX, sn).await;
    assert_eq!(chain, image.chain_id());
    let again = sup_tests::view::unpack(&client, BUSYBOX, sn).await;
    assert_eq!(again, chain, "Unpack is idempotent");
    let committed: Vec<_> = rpc::list_snapshots(&client, sn)
        .await
        .into_iter()
        .filter(|s| s.name == chain)
        .collect();
    assert_eq!(committed.len(), 1);
    check_busybox_tree(&daemon, &client, BUSYBOX, sn).await;
}

per_snapshotter!(
    busybox_oci_archive_imports_lists_and_inspects,
    busybox_docker_archive_takes_names_from_repo_tags,
    name_option_overrides_archive_names,
    export_then_reimport_gives_the_same_image,
    delete_releases_content_and_snapshots,
    multi_platform_index_unpacks_the_host_platform,
    docker_media_types_and_gzipped_archives,
    no_unpack_imports_content_only,
);
