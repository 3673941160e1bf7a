//! supd as a process: one daemon per root and per socket, a clean exit on SIGTERM (even with
//! a client attached), and images that survive a restart.
#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::time::{Duration, Instant};

use sup_client::api;
use sup_tests::busybox::busybox_image;
use sup_tests::daemon::run_supd;
use sup_tests::image::name_annotations;
use sup_tests::model::image_tree;
use sup_tests::rpc::{self, import_ok, options};
use sup_tests::view::view_image;
use sup_tests::{Daemon, OciArchive};

fn args(pairs: &[(&str, &std::path::Path)]) -> Vec<OsString> {
    pairs
        .iter()
        .flat_map(|(flag, path)| [OsString::from(flag), path.as_os_str().to_owned()])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_supd_on_the_same_root_refuses_to_start() {
    let daemon = Daemon::start().await;
    let other = daemon.dir().join("other");
    let second = args(&[
        ("--root", &daemon.root()),
        ("--state", &other.join("state")),
        ("--address", &other.join("sup.sock")),
    ]);
    let out = run_supd(&second, Duration::from_secs(20))
        .expect("a second supd on a root in use must exit, not serve");
    assert!(
        !out.status.success(),
        "second supd exited with {:?}",
        out.status
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&daemon.root().to_string_lossy().into_owned()),
        "the refusal names the root: {stderr}"
    );
    assert!(
        !other.join("sup.sock").exists(),
        "the second supd left a socket"
    );
    // The first one is unharmed.
    let client = daemon.client().await;
    client.version().version(()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_supd_on_the_same_socket_refuses_and_leaves_it_alone() {
    let daemon = Daemon::start().await;
    let other = daemon.dir().join("other");
    let second = args(&[
        ("--root", &other.join("root")),
        ("--state", &other.join("state")),
        ("--address", &daemon.socket()),
    ]);
    let out = run_supd(&second, Duration::from_secs(20))
        .expect("a second supd on a socket in use must exit, not serve");
    assert!(
        !out.status.success(),
        "second supd exited with {:?}",
        out.status
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&daemon.socket().to_string_lossy().into_owned()),
        "the refusal names the socket: {stderr}"
    );
    // The socket still leads to the first daemon.
    let client = daemon.client().await;
    client.version().version(()).await.unwrap();
    assert!(rpc::list_images(&client).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_supd_cleanly() {
    let mut daemon = Daemon::start().await;
    let archive = OciArchive::new()
        .image(&busybox_image(), name_annotations("example.com/work:1"))
        .build();
    {
        let client = daemon.client().await;
        for sn in sup_tests::SNAPSHOTTERS {
            import_ok(&client, options(sn), &archive).await;
        }
    }
    let status = daemon.stop().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status:?}\n{}",
        daemon.log()
    );
    assert!(!daemon.socket().exists(), "the socket is removed on exit");
    let mounts = sup_tests::mounts::mounts_under(daemon.dir()).unwrap();
    assert!(mounts.is_empty(), "mounts left after exit: {mounts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_supd_while_a_client_is_subscribed() {
    let mut daemon = Daemon::start().await;
    let client = daemon.client().await;
    // As `supctl events` would: a stream that stays open until the daemon goes away.
    let mut events = client
        .events()
        .subscribe(api::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let watcher = tokio::spawn(async move { while let Ok(Some(_)) = events.message().await {} });
    let started = Instant::now();
    let status = daemon.stop().unwrap();
    let took = started.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "supd took {took:?} to stop with a subscriber attached"
    );
    assert!(!daemon.socket().exists(), "the socket is removed on exit");
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the subscriber's stream ends when supd stops")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_and_snapshots_survive_a_restart() {
    let mut daemon = Daemon::start().await;
    let image = busybox_image();
    let archive = OciArchive::new()
        .image(&image, name_annotations("example.com/keep:1"))
        .build();
    {
        let client = daemon.client().await;
        import_ok(&client, options("overlayfs"), &archive).await;
        import_ok(&client, options("native"), &archive).await;
    }
    let status = daemon.restart().await.unwrap();
    assert_eq!(status.code(), Some(0), "exit status of the first run");
    let client = daemon.client().await;
    let images = rpc::list_images(&client).await;
    assert_eq!(images.len(), 1);
    assert_eq!(
        images[0].target.clone().unwrap().digest,
        image.manifest_digest
    );
    let mut unpacked = rpc::inspect(&client, "example.com/keep:1").await.unpacked;
    unpacked.sort();
    assert_eq!(unpacked, ["native", "overlayfs"]);
    for sn in sup_tests::SNAPSHOTTERS {
        let view = view_image(&daemon, &client, "example.com/keep:1", sn).await;
        view.tree()
            .assert_matches(&image_tree(&image), &format!("{sn} after restart"));
    }
}
