//! Snapshots through the API on both snapshotters: prepare, write through the mounts, commit,
//! view, usage, stat, list, labels, and the removals that must be refused.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use prost_types::FieldMask;
use sup_client::{api, Client};
use sup_tests::mounts::mount_all;
use sup_tests::rpc::{self, expect_code};
use sup_tests::view::view_snapshot;
use sup_tests::{per_snapshotter, Daemon};
use tonic::{Code, Status};

async fn prepare(
    client: &Client,
    sn: &str,
    key: &str,
    parent: &str,
) -> Result<Vec<api::Mount>, Status> {
    Ok(client
        .snapshots()
        .prepare(api::PrepareSnapshotRequest {
            snapshotter: sn.into(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        })
        .await?
        .into_inner()
        .mounts)
}

async fn commit(client: &Client, sn: &str, name: &str, key: &str) -> Result<(), Status> {
    client
        .snapshots()
        .commit(api::CommitSnapshotRequest {
            snapshotter: sn.into(),
            name: name.into(),
            key: key.into(),
            labels: HashMap::new(),
        })
        .await
        .map(|_| ())
}

async fn remove(client: &Client, sn: &str, key: &str) -> Result<(), Status> {
    client
        .snapshots()
        .remove(api::RemoveSnapshotRequest {
            snapshotter: sn.into(),
            key: key.into(),
        })
        .await
        .map(|_| ())
}

async fn stat(client: &Client, sn: &str, key: &str) -> Result<api::SnapshotInfo, Status> {
    Ok(client
        .snapshots()
        .stat(api::StatSnapshotRequest {
            snapshotter: sn.into(),
            key: key.into(),
        })
        .await?
        .into_inner()
        .info
        .unwrap())
}

/// Mounts an active snapshot at a fresh directory, runs `f` on it, unmounts.
fn with_mounted(
    daemon: &Daemon,
    mounts: &[api::Mount],
    name: &str,
    f: impl FnOnce(&std::path::Path),
) {
    let target = daemon.dir().join("mnt").join(name);
    std::fs::create_dir_all(&target).unwrap();
    mount_all(mounts, &target).unwrap_or_else(|e| panic!("mounting {mounts:?}: {e}"));
    f(&target);
    sup_tests::mounts::unmount_all_under(&target);
}

async fn lifecycle(sn: &str) {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;

    let mounts = prepare(&client, sn, "base-work", "").await.unwrap();
    with_mounted(&daemon, &mounts, "base", |dir| {
        std::fs::create_dir(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/base"), "base\n").unwrap();
        std::fs::write(dir.join("gone-later"), "x").unwrap();
    });
    assert_eq!(
        stat(&client, sn, "base-work").await.unwrap().kind(),
        api::SnapshotKind::Active
    );
    commit(&client, sn, "base", "base-work").await.unwrap();
    expect_code(
        stat(&client, sn, "base-work").await,
        Code::NotFound,
        "the active key after commit",
    );
    let info = stat(&client, sn, "base").await.unwrap();
    assert_eq!(info.kind(), api::SnapshotKind::Committed);
    assert_eq!(info.parent, "");

    let mounts = prepare(&client, sn, "child-work", "base").await.unwrap();
    assert_eq!(
        stat(&client, sn, "child-work").await.unwrap().parent,
        "base"
    );
    with_mounted(&daemon, &mounts, "child", |dir| {
        assert_eq!(
            std::fs::read_to_string(dir.join("etc/base")).unwrap(),
            "base\n"
        );
        std::fs::write(dir.join("etc/child"), vec![b'c'; 64 * 1024]).unwrap();
        std::fs::remove_file(dir.join("gone-later")).unwrap();
    });
    commit(&client, sn, "child", "child-work").await.unwrap();

    let view = view_snapshot(&daemon, &client, sn, "child").await;
    assert_eq!(
        std::fs::read_to_string(view.join("etc/base")).unwrap(),
        "base\n"
    );
    assert_eq!(
        std::fs::read(view.join("etc/child")).unwrap().len(),
        64 * 1024
    );
    assert!(!view.join("gone-later").exists());
    assert!(
        std::fs::write(view.join("etc/new"), "x").is_err(),
        "a view is read-only"
    );
    assert_eq!(
        stat(&client, sn, &view.key).await.unwrap().kind(),
        api::SnapshotKind::View
    );

    // The base view still shows the base alone.
    let base_view = view_snapshot(&daemon, &client, sn, "base").await;
    assert!(base_view.join("gone-later").exists());
    assert!(!base_view.join("etc/child").exists());
    base_view.release(&client).await;

    let usage = client
        .snapshots()
        .usage(api::UsageRequest {
            snapshotter: sn.into(),
            key: "child".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(usage.size >= 64 * 1024, "usage of child: {usage:?}");
    assert!(usage.inodes >= 1, "usage of child: {usage:?}");

    let mut names: Vec<String> = rpc::list_snapshots(&client, sn)
        .await
        .into_iter()
        .map(|s| s.name)
        .collect();
    names.sort();
    let mut want = vec!["base".to_string(), "child".to_string(), view.key.clone()];
    want.sort();
    assert_eq!(names, want);

    expect_code(
        remove(&client, sn, "base").await,
        Code::FailedPrecondition,
        "removing a parent",
    );
    expect_code(
        remove(&client, sn, "child").await,
        Code::FailedPrecondition,
        "removing the parent of a view",
    );
    view.release(&client).await;
    remove(&client, sn, "child").await.unwrap();
    remove(&client, sn, "base").await.unwrap();
    expect_code(
        stat(&client, sn, "base").await,
        Code::NotFound,
        "stat after remove",
    );
    assert!(rpc::list_snapshots(&client, sn).await.is_empty());
    assert!(sup_tests::mounts::mounts_under(daemon.dir())
        .unwrap()
        .is_empty());
}

async fn refusals(sn: &str) {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    prepare(&client, sn, "a", "").await.unwrap();
    expect_code(
        prepare(&client, sn, "a", "").await,
        Code::AlreadyExists,
        "preparing a taken key",
    );
    expect_code(
        prepare(&client, sn, "b", "missing").await,
        Code::NotFound,
        "parent that does not exist",
    );
    expect_code(
        prepare(&client, sn, "c", "a").await,
        Code::InvalidArgument,
        "active snapshot as parent",
    );
    expect_code(
        commit(&client, sn, "x", "missing").await,
        Code::NotFound,
        "committing a missing key",
    );
    commit(&client, sn, "done", "a").await.unwrap();
    expect_code(
        commit(&client, sn, "again", "done").await,
        Code::FailedPrecondition,
        "committing a committed snapshot",
    );
    expect_code(
        remove(&client, sn, "missing").await,
        Code::NotFound,
        "removing a missing key",
    );
    expect_code(
        prepare(&client, sn, "", "").await,
        Code::InvalidArgument,
        "empty key",
    );
    expect_code(
        prepare(&client, "no-such-snapshotter", "k", "").await,
        Code::InvalidArgument,
        "unknown snapshotter",
    );
}

async fn labels(sn: &str) {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    client
        .snapshots()
        .prepare(api::PrepareSnapshotRequest {
            snapshotter: sn.into(),
            key: "labelled".into(),
            parent: String::new(),
            labels: [
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "2".to_string()),
            ]
            .into(),
        })
        .await
        .unwrap();
    let updated = client
        .snapshots()
        .update(api::UpdateSnapshotRequest {
            snapshotter: sn.into(),
            info: Some(api::SnapshotInfo {
                name: "labelled".into(),
                labels: [("a".to_string(), "changed".to_string())].into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["labels.a".into(), "labels.b".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    let want: HashMap<String, String> = [("a".to_string(), "changed".to_string())].into();
    assert_eq!(updated.labels, want);
    assert_eq!(stat(&client, sn, "labelled").await.unwrap().labels, want);
    let filtered = client
        .snapshots()
        .list(api::ListSnapshotsRequest {
            snapshotter: sn.into(),
            filters: vec!["labels.a==changed".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .map(|m| m.info.into_iter().map(|i| i.name).collect::<Vec<_>>())
        .unwrap_or_default();
    assert_eq!(filtered, ["labelled"]);
}

per_snapshotter!(lifecycle, refusals, labels);
