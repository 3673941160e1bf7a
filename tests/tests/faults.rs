//! Archives that are broken or lie, and imports cut short: each is refused with
//! InvalidArgument (or, when the client goes away, simply dropped) and leaves no image, no
//! content, no ingest and no snapshot behind; the daemon imports a good image afterwards.
#![allow(clippy::unwrap_used)]

use sup_client::{api, Client};
use sup_tests::busybox::busybox_image;
use sup_tests::image::name_annotations;
use sup_tests::model::image_tree;
use sup_tests::rpc::{self, expect_code, import_ok, options};
use sup_tests::view::view_image;
use sup_tests::{
    per_snapshotter, Compression, Daemon, DockerArchive, Image, ImageBuilder, LayerBuilder,
    OciArchive,
};
use tonic::Code;

fn layer_with_data() -> LayerBuilder {
    let mut layer = LayerBuilder::new();
    layer.file("etc/motd", "welcome\n");
    // Enough bytes that a cut or a flipped byte lands inside compressed data.
    let text: String = (0..4000)
        .map(|i| format!("line {i} of the data file\n"))
        .collect();
    layer.file("usr/share/data.txt", text);
    layer
}

fn image_of(layer: sup_tests::Layer) -> Image {
    ImageBuilder::new().layer(layer).build()
}

/// No mounts left under the daemon's directory (its own, or ours).
fn assert_no_mounts(daemon: &Daemon, what: &str) {
    let left = sup_tests::mounts::mounts_under(daemon.dir()).unwrap();
    assert!(left.is_empty(), "{what}: mounts left behind: {left:?}");
}

/// The daemon still works: a good image imports and unpacks.
async fn assert_still_imports(daemon: &Daemon, client: &Client, sn: &str) {
    let image = busybox_image();
    let archive = OciArchive::new()
        .image(&image, name_annotations("example.com/good:1"))
        .build();
    import_ok(client, options(sn), &archive).await;
    let view = view_image(daemon, client, "example.com/good:1", sn).await;
    view.tree()
        .assert_matches(&image_tree(&image), "good image after a failure");
}

async fn refused(sn: &str, archive: &[u8], what: &str) {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let result = rpc::import(&client, options(sn), archive).await;
    expect_code(result, Code::InvalidArgument, what);
    rpc::assert_nothing_left(&client, what).await;
    assert_no_mounts(&daemon, what);
    assert_still_imports(&daemon, &client, sn).await;
}

async fn corrupted_gzip_layer(sn: &str) {
    let image = image_of(
        layer_with_data()
            .build(Compression::Gzip)
            .with_corrupted_blob(),
    );
    let archive = OciArchive::new()
        .image(&image, name_annotations("example.com/bad:1"))
        .build();
    refused(sn, &archive, "corrupted gzip layer").await;
}

async fn corrupted_zstd_layer(sn: &str) {
    let image = image_of(
        layer_with_data()
            .build(Compression::Zstd)
            .with_corrupted_blob(),
    );
    let archive = OciArchive::new()
        .image(&image, name_annotations("example.com/bad:1"))
        .build();
    refused(sn, &archive, "corrupted zstd layer").await;
}

async fn blob_digest_lies(sn: &str) {
    let image = image_of(
        layer_with_data()
            .build(Compression::Gzip)
            .with_lying_digest(),
    );
    let archive = OciArchive::new()
        .image(&image, name_annotations("example.com/bad:1"))
        .build();
    refused(
        sn,
        &archive,
        "layer blob whose bytes do not match its digest",
    )
    .await;
}

async fn diff_id_does_not_match(sn: &str) {
    let image = image_of(
        layer_with_data()
            .build(Compression::Gzip)
            .with_wrong_diff_id(),
    );
    let archive = OciArchive::new()
        .image(&image, name_annotations("example.com/bad:1"))
        .build();
    refused(sn, &archive, "diff_id that does not match the layer (OCI)").await;
}

async fn diff_id_does_not_match_in_docker_archive(sn: &str) {
    let image = image_of(
        layer_with_data()
            .build(Compression::None)
            .with_wrong_diff_id(),
    );
    let archive = DockerArchive::new().image(&image, &["bad:1"]).build();
    refused(
        sn,
        &archive,
        "diff_id that does not match the layer (docker save)",
    )
    .await;
}

async fn second_layer_diff_id_lies(sn: &str) {
    // The first layer unpacks fine; the failure comes after a snapshot was committed.
    let mut top = LayerBuilder::new();
    top.file("top", "t");
    let image = ImageBuilder::new()
        .layer(layer_with_data().build(Compression::Gzip))
        .layer(top.build(Compression::Gzip).with_wrong_diff_id())
        .build();
    let archive = OciArchive::new()
        .image(&image, name_annotations("example.com/bad:1"))
        .build();
    refused(sn, &archive, "second layer with a wrong diff_id").await;
}

async fn archive_truncated_halfway(sn: &str) {
    let image = image_of(layer_with_data().build(Compression::Gzip));
    let archive = OciArchive::new()
        .image(&image, name_annotations("example.com/bad:1"))
        .build();
    refused(
        sn,
        &archive[..archive.len() / 2],
        "archive truncated halfway",
    )
    .await;
}

async fn docker_archive_truncated_halfway(sn: &str) {
    let image = busybox_image();
    let archive = DockerArchive::new().image(&image, &["bad:1"]).build();
    refused(
        sn,
        &archive[..archive.len() / 2],
        "docker archive truncated halfway",
    )
    .await;
}

async fn import_interrupted_halfway(sn: &str) {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let image = busybox_image();
    let archive = OciArchive::new()
        .image(&image, name_annotations("example.com/cut:1"))
        .build();
    rpc::import_cancelled(&client, options(sn), &archive, archive.len() / 2).await;
    rpc::assert_nothing_left(&client, "import dropped by the client halfway").await;
    assert_no_mounts(&daemon, "import dropped by the client halfway");
    assert_still_imports(&daemon, &client, sn).await;
}

per_snapshotter!(
    corrupted_gzip_layer,
    corrupted_zstd_layer,
    blob_digest_lies,
    diff_id_does_not_match,
    diff_id_does_not_match_in_docker_archive,
    second_layer_diff_id_lies,
    archive_truncated_halfway,
    docker_archive_truncated_halfway,
    import_interrupted_halfway,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_an_archive() {
    refused(
        "",
        b"this is not a tar archive at all, just some words\n",
        "garbage bytes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_archive() {
    refused("", &[], "zero bytes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_points_at_a_missing_blob() {
    let image = image_of(layer_with_data().build(Compression::Gzip));
    let archive = OciArchive::new()
        .image(&image, name_annotations("example.com/bad:1"))
        .build();
    let mut files = sup_tests::image::read_archive(&archive).unwrap();
    let layer = format!(
        "blobs/sha256/{}",
        sup_tests::digest::hex_part(&image.layers[0].digest)
    );
    assert!(files.remove(&layer).is_some());
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in &files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        builder.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    refused(
        "",
        &builder.into_inner().unwrap(),
        "manifest naming a blob the archive lacks",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_must_come_first() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let image = busybox_image();
    let archive = OciArchive::new()
        .image(&image, name_annotations("example.com/x:1"))
        .build();
    let reqs = vec![
        api::ImportRequest {
            payload: Some(api::import_request::Payload::Chunk(archive.clone())),
        },
        api::ImportRequest {
            payload: Some(api::import_request::Payload::Options(options(""))),
        },
    ];
    let result = async {
        let mut stream = client
            .images()
            .import(tokio_stream::iter(reqs))
            .await?
            .into_inner();
        while let Some(msg) = stream.message().await? {
            if let Some(api::import_response::Payload::Result(r)) = msg.payload {
                return Ok(r);
            }
        }
        Err(tonic::Status::unknown("no result"))
    }
    .await;
    expect_code(result, Code::InvalidArgument, "chunk before options");
    rpc::assert_nothing_left(&client, "chunk before options").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_snapshotter_is_refused() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let archive = OciArchive::new()
        .image(&busybox_image(), name_annotations("example.com/x:1"))
        .build();
    let result = rpc::import(&client, options("no-such-snapshotter"), &archive).await;
    expect_code(result, Code::InvalidArgument, "unknown snapshotter");
    rpc::assert_nothing_left(&client, "unknown snapshotter").await;
}
