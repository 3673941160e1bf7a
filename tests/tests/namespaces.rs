//! Namespaces: creation, labels, validation, isolation of images and content, and deletion
//! refused while the namespace holds anything.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use prost_types::FieldMask;
use sup_client::{api, Client};
use sup_tests::busybox::busybox_image;
use sup_tests::image::name_annotations;
use sup_tests::model::image_tree;
use sup_tests::rpc::{self, expect_code, import_ok, options};
use sup_tests::view::view_image;
use sup_tests::{per_snapshotter, Daemon, OciArchive};
use tonic::Code;

const IMAGE: &str = "example.com/team/busybox:1";

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn create(
    client: &Client,
    name: &str,
    l: &[(&str, &str)],
) -> Result<api::Namespace, tonic::Status> {
    Ok(client
        .namespaces()
        .create(api::CreateNamespaceRequest {
            namespace: Some(api::Namespace {
                name: name.to_string(),
                labels: labels(l),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .namespace
        .unwrap())
}

async fn get(client: &Client, name: &str) -> Result<api::Namespace, tonic::Status> {
    Ok(client
        .namespaces()
        .get(api::GetNamespaceRequest {
            name: name.to_string(),
        })
        .await?
        .into_inner()
        .namespace
        .unwrap())
}

async fn delete(client: &Client, name: &str) -> Result<(), tonic::Status> {
    client
        .namespaces()
        .delete(api::DeleteNamespaceRequest {
            name: name.to_string(),
        })
        .await
        .map(|_| ())
}

async fn names(client: &Client) -> Vec<String> {
    let mut names: Vec<String> = client
        .namespaces()
        .list(api::ListNamespacesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .namespaces
        .into_iter()
        .map(|n| n.name)
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_list_and_update_labels() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let created = create(&client, "team-a", &[("owner", "alice"), ("tier", "gold")])
        .await
        .unwrap();
    assert_eq!(created.name, "team-a");
    assert_eq!(
        created.labels,
        labels(&[("owner", "alice"), ("tier", "gold")])
    );
    assert!(names(&client).await.contains(&"team-a".to_string()));
    expect_code(
        create(&client, "team-a", &[]).await,
        Code::AlreadyExists,
        "creating team-a twice",
    );

    // One label set, one removed (absent from the message), one left alone.
    let updated = client
        .namespaces()
        .update(api::UpdateNamespaceRequest {
            namespace: Some(api::Namespace {
                name: "team-a".into(),
                labels: labels(&[("owner", "bob")]),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["labels.owner".into(), "labels.tier".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .namespace
        .unwrap();
    assert_eq!(updated.labels, labels(&[("owner", "bob")]));
    assert_eq!(
        get(&client, "team-a").await.unwrap().labels,
        labels(&[("owner", "bob")])
    );

    // "labels" replaces them all.
    client
        .namespaces()
        .update(api::UpdateNamespaceRequest {
            namespace: Some(api::Namespace {
                name: "team-a".into(),
                labels: labels(&[("a", "1"), ("b", "2")]),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["labels".into()],
            }),
        })
        .await
        .unwrap();
    assert_eq!(
        get(&client, "team-a").await.unwrap().labels,
        labels(&[("a", "1"), ("b", "2")])
    );

    delete(&client, "team-a").await.unwrap();
    expect_code(
        get(&client, "team-a").await,
        Code::NotFound,
        "get after delete",
    );
    expect_code(
        delete(&client, "team-a").await,
        Code::NotFound,
        "second delete",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_are_refused() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let long = "a".repeat(77);
    for bad in [
        "",
        "UPPER",
        "-lead",
        "trail-",
        "has space",
        "slash/x",
        "dot..",
        long.as_str(),
    ] {
        expect_code(
            create(&client, bad, &[]).await,
            Code::InvalidArgument,
            &format!("namespace {bad:?}"),
        );
    }
    for good in ["a", "k8s.io", "x-1_2", &"b".repeat(76)] {
        create(&client, good, &[])
            .await
            .unwrap_or_else(|s| panic!("namespace {good:?}: {s:?}"));
    }
    // A request that names a bad namespace in its header is refused too.
    let bad_header = client.with_namespace("Not_Valid!").unwrap();
    expect_code(
        bad_header
            .images()
            .list(api::ListImagesRequest::default())
            .await,
        Code::InvalidArgument,
        "request in namespace \"Not_Valid!\"",
    );
}

async fn images_and_content_are_isolated(sn: &str) {
    let daemon = Daemon::start().await;
    let a = daemon.client_ns("team-a").await;
    let b = daemon.client_ns("team-b").await;
    let image = busybox_image();
    let archive = OciArchive::new()
        .image(&image, name_annotations(IMAGE))
        .build();
    import_ok(&a, options(sn), &archive).await;

    // Importing into team-a brought the namespace into being.
    get(&a, "team-a").await.unwrap();
    assert!(rpc::list_images(&b).await.is_empty());
    expect_code(
        rpc::get_image(&b, IMAGE).await,
        Code::NotFound,
        "team-a's image seen from team-b",
    );
    expect_code(
        b.content()
            .info(api::ContentInfoRequest {
                digest: image.layers[0].digest.clone(),
            })
            .await,
        Code::NotFound,
        "team-a's layer seen from team-b",
    );
    assert!(rpc::list_content(&b).await.is_empty());
    for sn in sup_tests::SNAPSHOTTERS {
        assert!(
            rpc::list_snapshots(&b, sn).await.is_empty(),
            "{sn} snapshots in team-b"
        );
    }
    expect_code(
        rpc::delete_image(&b, IMAGE).await,
        Code::NotFound,
        "deleting from team-b",
    );
    assert_eq!(
        rpc::list_images(&a).await.len(),
        1,
        "team-a's image survives team-b's delete"
    );

    // The same image in team-b is its own: deleting it from team-a leaves team-b's whole.
    import_ok(&b, options(sn), &archive).await;
    rpc::delete_image(&a, IMAGE).await.unwrap();
    rpc::assert_nothing_left(&a, "team-a after deleting its image").await;
    let view = view_image(&daemon, &b, IMAGE, sn).await;
    view.tree()
        .assert_matches(&image_tree(&image), "team-b's copy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_refused_while_the_namespace_holds_an_image() {
    let daemon = Daemon::start().await;
    let root = daemon.client().await;
    let a = daemon.client_ns("team-a").await;
    create(&root, "team-a", &[]).await.unwrap();
    let archive = OciArchive::new()
        .image(&busybox_image(), name_annotations(IMAGE))
        .build();
    import_ok(&a, options(""), &archive).await;

    expect_code(
        delete(&root, "team-a").await,
        Code::FailedPrecondition,
        "deleting a namespace holding an image",
    );
    get(&root, "team-a").await.unwrap();
    assert_eq!(rpc::list_images(&a).await.len(), 1);

    rpc::delete_image(&a, IMAGE).await.unwrap();
    rpc::assert_nothing_left(&a, "team-a after deleting its image").await;
    delete(&root, "team-a").await.unwrap();
    expect_code(
        get(&root, "team-a").await,
        Code::NotFound,
        "get after delete",
    );
    assert!(!names(&root).await.contains(&"team-a".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_refused_while_the_namespace_holds_a_snapshot_or_a_blob() {
    let daemon = Daemon::start().await;
    let root = daemon.client().await;
    let a = daemon.client_ns("team-a").await;
    create(&root, "team-a", &[]).await.unwrap();
    a.snapshots()
        .prepare(api::PrepareSnapshotRequest {
            snapshotter: "native".into(),
            key: "scratch".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    expect_code(
        delete(&root, "team-a").await,
        Code::FailedPrecondition,
        "namespace holding a snapshot",
    );
    a.snapshots()
        .remove(api::RemoveSnapshotRequest {
            snapshotter: "native".into(),
            key: "scratch".into(),
        })
        .await
        .unwrap();

    let data = b"a blob of team-a".to_vec();
    let write = api::WriteContentRequest {
        action: api::WriteAction::Commit as i32,
        r#ref: "blob".into(),
        total: data.len() as i64,
        expected: sup_tests::digest::sha256(&data),
        data,
        ..Default::default()
    };
    let mut responses = a
        .content()
        .write(tokio_stream::iter(vec![write]))
        .await
        .unwrap()
        .into_inner();
    while responses.message().await.unwrap().is_some() {}
    expect_code(
        delete(&root, "team-a").await,
        Code::FailedPrecondition,
        "namespace holding a blob",
    );
    a.content()
        .delete(api::DeleteContentRequest {
            digest: sup_tests::digest::sha256(b"a blob of team-a"),
        })
        .await
        .unwrap();
    delete(&root, "team-a").await.unwrap();
}

per_snapshotter!(images_and_content_are_isolated);
