//! Pulls that go wrong, against a real registry (Debian's docker-registry) on loopback: a
//! corrupt blob, a pull cut off halfway and resumed, a stalled transfer, unknown names and
//! unreachable registries. Nothing half-pulled may stay visible.

use std::time::Duration;

use sup_tests::registry::{
    app_image, assert_nothing_visible, import_image, pull, pull_ok, pull_request, push, push_ok,
    Proxy, Registry,
};
use sup_tests::{busybox, registry, rpc, Daemon};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blob_is_refused_and_nothing_is_left() {
    let reg = Registry::start();
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let img = app_image(512 << 10, 5);
    import_image(&client, &img, "local/bad:1").await;
    let target = format!("{}/test/bad:v1", reg.host());
    push_ok(&client, "local/bad:1", &target, None).await;
    reg.corrupt_blob(&img.layers[1].digest);

    // A second daemon: the first holds every blob already and would fetch none.
    let puller = Daemon::start().await;
    let other = puller.client().await;
    let failed = pull(&other, pull_request(&target)).await.map(|p| p.image);
    let msg = rpc::expect_code(failed, Code::DataLoss, "pull of a corrupt blob");
    assert!(msg.contains(&img.layers[1].digest), "{msg}");
    assert_nothing_visible(&other, "failed pull").await;
    let ingests = rpc::list_ingests(&other).await;
    assert!(
        ingests
            .iter()
            .all(|s| !s.r#ref.contains(&img.layers[1].digest)),
        "the corrupt bytes were kept for a resume: {ingests:?}"
    );

    // Once the registry has the right bytes again, the pull goes through.
    let good = img.layers[1].blob.clone();
    std::fs::write(reg.blob_data(&img.layers[1].digest), good).expect("restore blob");
    let pulled = pull_ok(&other, pull_request(&target)).await;
    assert_eq!(
        pulled.image.target.expect("target").digest,
        img.manifest_digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_pull_resumes_without_fetching_twice() {
    let reg = Registry::start();
    let proxy = Proxy::start(reg.port()).await;
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    // A small layer that finishes first, a big one that is cut off halfway.
    let img = app_image(6 << 20, 6);
    import_image(&client, &img, "local/big:1").await;
    push_ok(
        &client,
        "local/big:1",
        &format!("{}/test/big:v1", reg.host()),
        None,
    )
    .await;
    let (small, big) = (&img.layers[0], &img.layers[1]);

    let puller = Daemon::start().await;
    let other = puller.client().await;
    let target = format!("{}/test/big:v1", proxy.host());
    proxy.set_rate(1 << 20);
    let mut stream = other
        .images()
        .pull(pull_request(&target))
        .await
        .expect("pull")
        .into_inner();
    let cut = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(m) = stream.message().await.expect("pull stream") {
            let done = |d: &str| {
                m.blobs
                    .iter()
                    .any(|b| b.digest == d && b.status != "waiting" && b.status != "downloading")
            };
            let partway = m
                .blobs
                .iter()
                .any(|b| b.digest == big.digest && b.offset > 0 && b.offset < b.size);
            if done(&small.digest) && partway {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(cut, Ok(true), "the pull never got halfway");
    drop(stream);

    // The pull stops; nothing of it is visible, but what it fetched is kept.
    let partial = rpc::eventually(Duration::from_secs(10), || async {
        let ingests = rpc::list_ingests(&other).await;
        match ingests.iter().find(|s| s.r#ref.contains(&big.digest)) {
            Some(s) if s.offset > 0 && s.offset < big.blob.len() as i64 => Ok(s.offset),
            _ => Err(ingests),
        }
    })
    .await
    .expect("a partial ingest of the big layer");
    assert_nothing_visible(&other, "cancelled pull").await;

    proxy.set_rate(0);
    proxy.take_requests();
    let pulled = pull_ok(&other, pull_request(&target)).await;
    assert_eq!(
        pulled.image.target.expect("target").digest,
        img.manifest_digest
    );
    assert!(!rpc::inspect(&other, &target).await.unpacked.is_empty());
    let requests = proxy.take_requests();
    let blob_gets = |d: &str| -> Vec<String> {
        requests
            .iter()
            .filter(|r| r.starts_with("GET") && r.contains(&format!("/blobs/{d}")))
            .cloned()
            .collect()
    };
    assert!(
        blob_gets(&small.digest).is_empty(),
        "small layer fetched twice: {requests:?}"
    );
    let big_gets = blob_gets(&big.digest);
    assert_eq!(big_gets.len(), 1, "{requests:?}");
    let range = big_gets[0]
        .split("range=bytes=")
        .nth(1)
        .and_then(|r| r.trim_end_matches('-').parse::<i64>().ok())
        .unwrap_or_else(|| panic!("the big layer was not resumed with a range: {requests:?}"));
    assert!(
        range >= partial,
        "resumed at {range}, the ingest had {partial}"
    );
    assert!(rpc::list_ingests(&other).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_pull_is_aborted() {
    let reg = Registry::start();
    let proxy = Proxy::start(reg.port()).await;
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let img = app_image(4 << 20, 7);
    import_image(&client, &img, "local/slow:1").await;
    push_ok(
        &client,
        "local/slow:1",
        &format!("{}/test/slow:v1", reg.host()),
        None,
    )
    .await;

    let puller = Daemon::start_with_config(Some("[registry]\nstall_timeout = 2\n")).await;
    let other = puller.client().await;
    let target = format!("{}/test/slow:v1", proxy.host());
    proxy.set_rate(256 << 10);
    let pausing = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        proxy.pause(true);
    };
    let started = std::time::Instant::now();
    let (result, ()) = tokio::join!(pull(&other, pull_request(&target)), pausing);
    let msg = rpc::expect_code(result.map(|p| p.image), Code::Unavailable, "stalled pull");
    assert!(msg.contains("stalled"), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_nothing_visible(&other, "stalled pull").await;
    proxy.pause(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_and_unreachable_registries() {
    let reg = Registry::start();
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let img = busybox::busybox_image();
    import_image(&client, &img, "local/bb:1").await;
    push_ok(
        &client,
        "local/bb:1",
        &format!("{}/test/bb:v1", reg.host()),
        None,
    )
    .await;

    let missing_tag = format!("{}/test/bb:nope", reg.host());
    let msg = rpc::expect_code(
        pull(&client, pull_request(&missing_tag))
            .await
            .map(|p| p.image),
        Code::NotFound,
        "unknown tag",
    );
    assert_eq!(msg, format!("pull {missing_tag:?}: manifest unknown"));
    let missing_repo = format!("{}/test/nothing:v1", reg.host());
    rpc::expect_code(
        pull(&client, pull_request(&missing_repo))
            .await
            .map(|p| p.image),
        Code::NotFound,
        "unknown repository",
    );
    let dead = format!("127.0.0.1:{}/test/bb:v1", registry::free_port());
    let msg = rpc::expect_code(
        pull(&client, pull_request(&dead)).await.map(|p| p.image),
        Code::Unavailable,
        "unreachable registry",
    );
    assert!(msg.starts_with(&format!("pull {dead:?}")), "{msg}");
    rpc::expect_code(
        pull(&client, pull_request("UPPER/case"))
            .await
            .map(|p| p.image),
        Code::InvalidArgument,
        "bad reference",
    );
    rpc::expect_code(
        push(
            &client,
            "local/none:1",
            &format!("{}/x:y", reg.host()),
            None,
        )
        .await,
        Code::NotFound,
        "push of an unknown image",
    );
    // TLS is the default: a plain-HTTP registry does not answer a TLS client.
    let mut tls = pull_request(&format!("{}/test/bb:v1", reg.host()));
    tls.plain_http = false;
    rpc::expect_code(
        pull(&client, tls).await.map(|p| p.image),
        Code::Unavailable,
        "TLS to plain HTTP",
    );
}
