//! Garbage collection and leases: what nothing reaches is collected, what a lease or an image
//! reaches is kept, and crash leftovers (blobs nobody records, layer snapshots no image uses)
//! go on the next collection.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use sup_client::{api, Client};
use sup_tests::busybox::busybox_image;
use sup_tests::digest::sha256;
use sup_tests::image::{name_annotations, OciArchive};
use sup_tests::rpc::{self, import_ok, options};
use sup_tests::Daemon;

async fn write_blob(client: &Client, data: &[u8]) -> String {
    let digest = sha256(data);
    let req = api::WriteContentRequest {
        action: api::WriteAction::Commit as i32,
        r#ref: format!("gc-test-{digest}"),
        total: data.len() as i64,
        expected: digest.clone(),
        data: data.to_vec(),
        ..Default::default()
    };
    let mut out = client
        .content()
        .write(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    while out.message().await.unwrap().is_some() {}
    digest
}

async fn collect(client: &Client) -> api::CollectResponse {
    client
        .gc()
        .collect(api::CollectRequest {})
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn unreferenced_content_is_collected_and_leased_content_kept() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let loose = write_blob(&client, b"nobody names me").await;
    let kept = write_blob(&client, b"a lease protects me").await;
    let rooted = {
        let d = write_blob(&client, b"labelled as a root").await;
        client
            .content()
            .update(api::UpdateContentRequest {
                info: Some(api::ContentInfo {
                    digest: d.clone(),
                    labels: HashMap::from([("sup.io/gc.root".to_string(), "1".to_string())]),
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await
            .unwrap();
        d
    };
    let mut l = client.leases();
    l.create(api::CreateLeaseRequest {
        id: "keep".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    l.add_resource(api::AddResourceRequest {
        id: "keep".into(),
        resource: Some(api::LeaseResource {
            r#type: "content".into(),
            id: kept.clone(),
        }),
    })
    .await
    .unwrap();

    let stats = collect(&client).await;
    assert_eq!(stats.content_removed, 1, "{stats:?}");
    let held: Vec<String> = rpc::list_content(&client)
        .await
        .into_iter()
        .map(|c| c.digest)
        .collect();
    assert!(!held.contains(&loose));
    assert!(held.contains(&kept) && held.contains(&rooted));
    let blob = |d: &str| daemon.root().join("content/blobs/sha256").join(&d[7..]);
    assert!(!blob(&loose).exists());
    assert!(blob(&kept).exists());

    // Without its lease the blob goes too.
    l.delete(api::DeleteLeaseRequest { id: "keep".into() })
        .await
        .unwrap();
    collect(&client).await;
    assert!(!blob(&kept).exists());
    assert!(blob(&rooted).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn images_keep_their_content_and_layers_and_crash_leftovers_go() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let image = busybox_image();
    let archive = OciArchive::new()
        .image(&image, name_annotations("docker.io/library/busybox:latest"))
        .build();
    import_ok(&client, options("overlayfs"), &archive).await;
    let content_before = rpc::list_content(&client).await.len();
    let snaps_before = rpc::list_snapshots(&client, "overlayfs").await.len();

    // Leftovers as a crash leaves them: a blob file no namespace records, and a committed
    // layer snapshot (labelled as unpacking labels them) that no image uses.
    let orphan = daemon
        .root()
        .join("content/blobs/sha256")
        .join("00".repeat(32));
    std::fs::write(&orphan, b"left by a crash").unwrap();
    let snaps = client.snapshots();
    snaps
        .clone()
        .prepare(api::PrepareSnapshotRequest {
            snapshotter: "overlayfs".into(),
            key: "unpack-1-leftover".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    snaps
        .clone()
        .prepare(api::PrepareSnapshotRequest {
            snapshotter: "overlayfs".into(),
            key: "mine".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    snaps
        .clone()
        .commit(api::CommitSnapshotRequest {
            snapshotter: "overlayfs".into(),
            name: "sha256:orphan-layer".into(),
            key: "mine".into(),
            labels: HashMap::from([("sup.io/diff-id".to_string(), "x".to_string())]),
        })
        .await
        .unwrap();
    snaps
        .clone()
        .prepare(api::PrepareSnapshotRequest {
            snapshotter: "overlayfs".into(),
            key: "user-work".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let stats = collect(&client).await;
    assert_eq!(stats.blobs_removed, 1, "{stats:?}");
    assert_eq!(stats.snapshots_removed, 2, "{stats:?}");
    assert!(!orphan.exists());
    assert_eq!(rpc::list_content(&client).await.len(), content_before);
    let names: Vec<String> = rpc::list_snapshots(&client, "overlayfs")
        .await
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names.len(), snaps_before + 1, "{names:?}");
    assert!(names.contains(&"user-work".to_string()));

    // The image still unpacks and inspects: nothing it needs was taken.
    let inspected = rpc::inspect(&client, "busybox").await;
    assert_eq!(inspected.unpacked, vec!["overlayfs".to_string()]);
}
