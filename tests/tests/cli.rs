//! supctl end to end: exit codes, tables for people, `-o json` for programs, and the daemon's
//! own error message on failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use sup_client::api;
use sup_tests::busybox::{busybox_bytes, busybox_image};
use sup_tests::rpc::{self, expect_code};
use sup_tests::{Daemon, DockerArchive};
use tonic::Code;

const BUSYBOX: &str = "docker.io/library/busybox:latest";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Fails unless the command failed with a non-zero exit and printed `message` (the daemon's
/// own words) on stderr.
#[track_caller]
fn failed_with(out: Output, message: &str, what: &str) {
    assert!(
        !out.status.success(),
        "{what}: expected failure, got success\nstdout: {}",
        text(&out.stdout)
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(message),
        "{what}: stderr should carry the daemon's message {message:?}, got: {stderr}"
    );
}

#[track_caller]
fn json(stdout: &str, what: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {stdout}"))
}

/// Every string anywhere in a JSON document.
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().flat_map(strings).collect(),
        Value::Object(o) => o.values().flat_map(strings).collect(),
        _ => vec![],
    }
}

fn write_busybox_archive(daemon: &Daemon) -> std::path::PathBuf {
    let path = daemon.dir().join("busybox.tar");
    let archive = DockerArchive::new()
        .image(&busybox_image(), &["busybox:latest"])
        .build();
    std::fs::write(&path, archive).unwrap();
    path
}

fn is_mount_point(dir: &Path) -> bool {
    sup_tests::mounts::mount_points()
        .unwrap()
        .iter()
        .any(|p| p == dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_list_inspect_export_remove() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let image = busybox_image();
    let file = write_busybox_archive(&daemon);

    let out = ok(
        daemon.supctl(&["images".as_ref(), "import".as_ref(), file.as_os_str()]),
        "images import",
    );
    assert!(
        out.contains(BUSYBOX),
        "import names what it imported: {out}"
    );
    let table = ok(daemon.supctl(&["images", "ls"]), "images ls");
    assert!(table.contains(BUSYBOX), "images ls: {table}");

    let listed = json(
        &ok(
            daemon.supctl(&["-o", "json", "images", "ls"]),
            "images ls -o json",
        ),
        "images ls",
    );
    assert!(strings(&listed).contains(&BUSYBOX.to_string()), "{listed}");

    let inspected = json(
        &ok(
            daemon.supctl(&["-o", "json", "images", "inspect", "busybox"]),
            "images inspect",
        ),
        "images inspect",
    );
    let found = strings(&inspected);
    assert!(found.contains(&image.chain_id()), "chain ID in {inspected}");
    assert!(
        found.contains(&image.diff_ids()[0]),
        "diff ID in {inspected}"
    );

    let exported = daemon.dir().join("export.tar");
    ok(
        daemon.supctl(&[
            "images".as_ref(),
            "export".as_ref(),
            "busybox".as_ref(),
            exported.as_os_str(),
        ]),
        "images export",
    );
    let files = sup_tests::image::read_archive(&std::fs::read(&exported).unwrap()).unwrap();
    assert!(
        files.contains_key("oci-layout") && files.contains_key("index.json"),
        "{:?}",
        files.keys()
    );
    let api_export = rpc::export(&client, &[BUSYBOX]).await.unwrap();
    assert_eq!(
        sup_tests::image::read_archive(&api_export).unwrap(),
        files,
        "supctl writes what the API streams"
    );

    ok(daemon.supctl(&["images", "rm", "busybox"]), "images rm");
    let message = expect_code(
        rpc::inspect_platform(&client, "busybox", None).await,
        Code::NotFound,
        "inspect after rm",
    );
    failed_with(
        daemon.supctl(&["images", "inspect", "busybox"]),
        &message,
        "images inspect after rm",
    );
    let message = expect_code(
        rpc::delete_image(&client, "busybox").await,
        Code::NotFound,
        "rm after rm",
    );
    failed_with(
        daemon.supctl(&["images", "rm", "busybox"]),
        &message,
        "images rm after rm",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_with_name_and_snapshotter() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let file = write_busybox_archive(&daemon);
    ok(
        daemon.supctl(&[
            "images".as_ref(),
            "import".as_ref(),
            file.as_os_str(),
            "--name".as_ref(),
            "mybox:1".as_ref(),
            "--snapshotter".as_ref(),
            "native".as_ref(),
        ]),
        "images import --name --snapshotter",
    );
    let names: Vec<String> = rpc::list_images(&client)
        .await
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["docker.io/library/mybox:1"]);
    let info = rpc::inspect(&client, "mybox:1").await;
    assert_eq!(info.unpacked, ["native"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_and_unmount_an_image() {
    let daemon = Daemon::start().await;
    let file = write_busybox_archive(&daemon);
    ok(
        daemon.supctl(&["images".as_ref(), "import".as_ref(), file.as_os_str()]),
        "images import",
    );
    let dir = daemon.dir().join("look");
    std::fs::create_dir(&dir).unwrap();
    ok(
        daemon.supctl(&[
            "images".as_ref(),
            "mount".as_ref(),
            "busybox".as_ref(),
            dir.as_os_str(),
        ]),
        "images mount",
    );
    assert!(is_mount_point(&dir), "{} is mounted", dir.display());
    assert_eq!(
        std::fs::read(dir.join("bin/busybox")).unwrap(),
        busybox_bytes()
    );
    assert_eq!(
        std::fs::read_link(dir.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert!(
        std::fs::write(dir.join("tmp/x"), "x").is_err(),
        "the mount is read-only"
    );
    ok(
        daemon.supctl(&["images".as_ref(), "unmount".as_ref(), dir.as_os_str()]),
        "images unmount",
    );
    assert!(!is_mount_point(&dir), "{} is still mounted", dir.display());
    assert!(!dir.join("bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_ls_usage_rm() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let image = busybox_image();
    let file = write_busybox_archive(&daemon);
    ok(
        daemon.supctl(&[
            "images".as_ref(),
            "import".as_ref(),
            file.as_os_str(),
            "--snapshotter".as_ref(),
            "overlayfs".as_ref(),
        ]),
        "images import",
    );
    let table = ok(
        daemon.supctl(&["snapshots", "ls", "--snapshotter", "overlayfs"]),
        "snapshots ls",
    );
    assert!(table.contains(&image.chain_id()), "snapshots ls: {table}");
    let listed = json(
        &ok(
            daemon.supctl(&[
                "-o",
                "json",
                "snapshots",
                "ls",
                "--snapshotter",
                "overlayfs",
            ]),
            "snapshots ls -o json",
        ),
        "snapshots ls",
    );
    assert!(strings(&listed).contains(&image.chain_id()), "{listed}");
    let usage = ok(
        daemon.supctl(&[
            "snapshots",
            "usage",
            "--snapshotter",
            "overlayfs",
            &image.chain_id(),
        ]),
        "snapshots usage",
    );
    assert!(!usage.trim().is_empty());

    client
        .snapshots()
        .prepare(api::PrepareSnapshotRequest {
            snapshotter: "overlayfs".into(),
            key: "scratch".into(),
            parent: image.chain_id(),
            ..Default::default()
        })
        .await
        .unwrap();
    ok(
        daemon.supctl(&["snapshots", "rm", "--snapshotter", "overlayfs", "scratch"]),
        "snapshots rm",
    );
    let gone = client
        .snapshots()
        .stat(api::StatSnapshotRequest {
            snapshotter: "overlayfs".into(),
            key: "scratch".into(),
        })
        .await;
    let message = expect_code(gone, Code::NotFound, "stat after snapshots rm");
    failed_with(
        daemon.supctl(&["snapshots", "rm", "--snapshotter", "overlayfs", "scratch"]),
        &message,
        "snapshots rm of a missing key",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_create_list_remove() {
    let daemon = Daemon::start().await;
    let root = daemon.client().await;
    let file = write_busybox_archive(&daemon);
    ok(daemon.supctl(&["ns", "create", "team"]), "ns create");
    assert!(ok(daemon.supctl(&["ns", "ls"]), "ns ls").contains("team"));
    let listed = json(
        &ok(daemon.supctl(&["-o", "json", "ns", "ls"]), "ns ls -o json"),
        "ns ls",
    );
    assert!(strings(&listed).contains(&"team".to_string()), "{listed}");

    ok(
        daemon.supctl(&[
            "-n".as_ref(),
            "team".as_ref(),
            "images".as_ref(),
            "import".as_ref(),
            file.as_os_str(),
        ]),
        "images import -n team",
    );
    assert!(!ok(daemon.supctl(&["images", "ls"]), "images ls in default").contains(BUSYBOX));
    assert!(ok(
        daemon.supctl(&["-n", "team", "images", "ls"]),
        "images ls -n team"
    )
    .contains(BUSYBOX));

    let refused = root
        .namespaces()
        .delete(api::DeleteNamespaceRequest {
            name: "team".into(),
        })
        .await;
    let message = expect_code(
        refused,
        Code::FailedPrecondition,
        "deleting a namespace in use",
    );
    failed_with(
        daemon.supctl(&["ns", "rm", "team"]),
        &message,
        "ns rm of a namespace in use",
    );

    ok(
        daemon.supctl(&["-n", "team", "images", "rm", "busybox"]),
        "images rm -n team",
    );
    let team = daemon.client_ns("team").await;
    rpc::assert_nothing_left(&team, "team after images rm").await;
    ok(daemon.supctl(&["ns", "rm", "team"]), "ns rm");
    assert!(!ok(daemon.supctl(&["ns", "ls"]), "ns ls").contains("team"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_the_daemons_message() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let garbage = b"definitely not a tar archive\n".repeat(40);
    let file = daemon.dir().join("garbage.tar");
    std::fs::write(&file, &garbage).unwrap();
    let message = expect_code(
        rpc::import(&client, api::ImportOptions::default(), &garbage).await,
        Code::InvalidArgument,
        "importing garbage",
    );
    failed_with(
        daemon.supctl(&["images".as_ref(), "import".as_ref(), file.as_os_str()]),
        &message,
        "images import of garbage",
    );
    rpc::assert_nothing_left(&client, "after a refused import").await;

    let missing = daemon.dir().join("no-such-file.tar");
    let out = daemon.supctl(&["images".as_ref(), "import".as_ref(), missing.as_os_str()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no-such-file.tar"),
        "{}",
        text(&out.stderr)
    );

    let message = expect_code(
        root_create(&client, "Bad Name").await,
        Code::InvalidArgument,
        "namespace with a space",
    );
    failed_with(
        daemon.supctl(&["ns", "create", "Bad Name"]),
        &message,
        "ns create with a bad name",
    );
}

async fn root_create(client: &sup_client::Client, name: &str) -> Result<(), tonic::Status> {
    client
        .namespaces()
        .create(api::CreateNamespaceRequest {
            namespace: Some(api::Namespace {
                name: name.into(),
                ..Default::default()
            }),
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_daemon_and_version() {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let version = client.version().version(()).await.unwrap().into_inner();
    assert!(
        version.api_versions.contains(&"sup.v1".to_string()),
        "{version:?}"
    );
    let out = ok(daemon.supctl(&["version"]), "version");
    assert!(
        out.contains(&version.version),
        "version output {out:?} names {}",
        version.version
    );

    let nowhere = daemon.dir().join("nobody-listens.sock");
    let out = sup_tests::daemon::output_within(
        {
            let mut cmd = std::process::Command::new(sup_tests::bins::supctl());
            cmd.arg("--address").arg(&nowhere).args(["images", "ls"]);
            cmd
        },
        std::time::Duration::from_secs(60),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("nobody-listens.sock"),
        "the error names the address: {}",
        text(&out.stderr)
    );
}
