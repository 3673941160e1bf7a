//! Images.Pull and Images.Push against a real registry (Debian's docker-registry) on
//! loopback: images made in code are imported, pushed with our own Push and pulled back into
//! another namespace or daemon; multi-platform indexes, Docker media types, auth (htpasswd,
//! bearer tokens), mirrors and CAs from hosts.toml. Failures are in `registry_faults.rs`.

use sup_client::api;
use sup_tests::image::{name_annotations, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use sup_tests::layer::{Compression, LayerBuilder};
use sup_tests::registry::{
    self, app_image, assert_nothing_visible, auth, content_digests, final_statuses, import,
    import_image, pull, pull_ok, pull_request, push, push_ok, Auth, Registry, TokenServer,
    NO_UNPACK,
};
use sup_tests::{busybox, rpc, Daemon, ImageBuilder, OciArchive, Platform};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_pull_back_equal_by_digest() {
    let reg = Registry::start();
    // Small upload chunks: the 300 KiB layer goes up in PATCHes, the others in one PUT.
    let daemon = Daemon::start_with_config(Some("[registry]\nupload_chunk_size = 65536\n")).await;
    let src = daemon.client().await;
    let img = app_image(300 << 10, 1);
    import_image(&src, &img, "local/app:1").await;

    let target = format!("{}/test/app:v1", reg.host());
    let (digest, msgs) = push(&src, "local/app:1", &target, None)
        .await
        .expect("push");
    assert_eq!(digest, img.manifest_digest);
    let last = &msgs.last().expect("push messages").blobs;
    let layers: Vec<&str> = img.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(final_statuses(last, &layers), ["done", "done"]);
    assert!(
        reg.log().contains("http.request.method=PATCH"),
        "no chunked upload happened"
    );

    // Pushed again, every blob is found in the registry and skipped.
    let (again, msgs) = push(&src, "local/app:1", &target, None)
        .await
        .expect("push again");
    assert_eq!(again, digest);
    let last = &msgs.last().expect("push messages").blobs;
    assert_eq!(final_statuses(last, &layers), ["exists", "exists"]);

    // Pulled into another namespace: the same manifest, unpacked.
    let dst = daemon.client_ns("other").await;
    let pulled = pull_ok(&dst, pull_request(&target)).await;
    assert_eq!(pulled.image.name, target);
    let t = pulled.image.target.clone().expect("target");
    assert_eq!(
        (t.digest.as_str(), t.media_type.as_str()),
        (img.manifest_digest.as_str(), OCI_MANIFEST)
    );
    let info = rpc::inspect(&dst, &target).await;
    assert!(!info.unpacked.is_empty(), "pulled image is not unpacked");
    assert_eq!(info.chain_id, img.chain_id());
    assert_eq!(info.config_json, img.config);
    let mut expected = vec![img.manifest_digest.clone(), img.config_digest.clone()];
    expected.extend(img.layers.iter().map(|l| l.digest.clone()));
    expected.sort();
    assert_eq!(content_digests(&dst).await, expected);
    for l in &layers {
        assert_eq!(pulled.status_of(l).as_deref(), Some("unpacked"));
    }

    // By digest: the same content, named by digest; nothing fetched again.
    let by_digest = format!("{}/test/app@{}", reg.host(), img.manifest_digest);
    let again = pull_ok(&dst, pull_request(&by_digest)).await;
    assert_eq!(again.image.name, by_digest);
    assert_eq!(
        again.image.target.expect("target").digest,
        img.manifest_digest
    );
    let last = &again.messages.last().expect("messages").blobs;
    assert!(
        last.iter()
            .filter(|b| layers.contains(&b.digest.as_str()))
            .all(|b| b.status == "unpacked"),
        "{last:?}"
    );
    let export = rpc::export(&dst, &[&by_digest]).await.expect("export");
    assert!(!export.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_platform_index_is_kept_whole_and_one_platform_pulled() {
    let reg = Registry::start();
    let daemon = Daemon::start().await;
    let src = daemon.client().await;
    let host = app_image(64 << 10, 2);
    let foreign = ImageBuilder::new()
        .platform(Platform::foreign())
        .layer(busybox::busybox_layer().build(Compression::Zstd))
        .build();
    let archive = OciArchive::new().multi_platform(
        &[host.clone(), foreign.clone()],
        name_annotations("local/multi:1"),
    );
    let index_digest = archive.last_target_digest();
    import(&src, &archive, NO_UNPACK).await;

    let target = format!("{}/test/multi:v1", reg.host());
    let digest = push_ok(&src, "local/multi:1", &target, None).await;
    assert_eq!(digest, index_digest);

    let dst = daemon.client_ns("other").await;
    let pulled = pull_ok(&dst, pull_request(&target)).await;
    let t = pulled.image.target.expect("target");
    assert_eq!(
        (t.digest.as_str(), t.media_type.as_str()),
        (index_digest.as_str(), OCI_INDEX)
    );
    let info = rpc::inspect(&dst, &target).await;
    assert_eq!(
        info.manifest.expect("manifest").digest,
        host.manifest_digest
    );
    assert!(!info.unpacked.is_empty());
    let held = content_digests(&dst).await;
    assert!(held.contains(&host.manifest_digest));
    assert!(
        !held.contains(&foreign.manifest_digest) && !held.contains(&foreign.layers[0].digest),
        "the other platform was fetched: {held:?}"
    );

    // The other platform on request (not unpacked: it may not run here).
    let mut req = pull_request(&target);
    req.platform = Some(rpc::platform(&Platform::foreign()));
    req.no_unpack = true;
    pull_ok(&dst, req).await;
    let held = content_digests(&dst).await;
    assert!(held.contains(&foreign.manifest_digest) && held.contains(&foreign.layers[0].digest));

    // A platform the index does not offer.
    let mut req = pull_request(&target);
    req.platform = Some(api::Platform {
        os: "linux".into(),
        architecture: "mips64".into(),
        ..Default::default()
    });
    let msg = rpc::expect_code(
        pull(&dst, req).await.map(|p| p.image),
        Code::NotFound,
        "mips64",
    );
    assert!(msg.contains("linux/mips64"), "{msg}");

    // One platform of an index pushed alone goes under the tag as a plain manifest.
    let single = format!("{}/test/multi:host-only", reg.host());
    let req = api::PushRequest {
        name: "local/multi:1".into(),
        target: single.clone(),
        plain_http: true,
        platform: Some(rpc::platform(&Platform::host())),
        ..Default::default()
    };
    let mut stream = src.images().push(req).await.expect("push").into_inner();
    let mut digest = String::new();
    while let Some(m) = stream.message().await.expect("push stream") {
        digest = m.digest;
    }
    assert_eq!(digest, host.manifest_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_is_accepted_and_refused() {
    let reg = Registry::start_with(Auth::Htpasswd {
        username: "alice",
        password: "s3cret",
    });
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let img = app_image(10 << 10, 3);
    import_image(&client, &img, "local/auth:1").await;
    let target = format!("{}/private/app:v1", reg.host());

    let refused = push(&client, "local/auth:1", &target, None).await;
    rpc::expect_code(refused, Code::PermissionDenied, "push without credentials");
    let wrong = push(&client, "local/auth:1", &target, auth("alice", "wrong")).await;
    let msg = rpc::expect_code(wrong, Code::PermissionDenied, "push with a wrong password");
    assert!(msg.contains(&format!("push {target:?}")), "{msg}");
    push_ok(&client, "local/auth:1", &target, auth("alice", "s3cret")).await;

    let other = daemon.client_ns("other").await;
    let wrong = pull(&other, pull_request(&target)).await.map(|p| p.image);
    rpc::expect_code(wrong, Code::PermissionDenied, "pull without credentials");
    let mut req = pull_request(&target);
    req.auth = auth("alice", "nope");
    let msg = rpc::expect_code(
        pull(&other, req).await.map(|p| p.image),
        Code::PermissionDenied,
        "pull with a wrong password",
    );
    assert!(msg.starts_with(&format!("pull {target:?}")), "{msg}");
    assert_nothing_visible(&other, "refused pull").await;
    let mut req = pull_request(&target);
    req.auth = auth("alice", "s3cret");
    pull_ok(&other, req).await;

    // Credentials from supd's configuration, when the request brings none.
    let config = format!(
        "[registry.\"{}\"]\nusername = \"alice\"\npassword = \"s3cret\"\n",
        reg.host()
    );
    let configured = Daemon::start_with_config(Some(&config)).await;
    let c = configured.client().await;
    let pulled = pull_ok(&c, pull_request(&target)).await;
    assert_eq!(
        pulled.image.target.expect("target").digest,
        img.manifest_digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_flow() {
    let tokens = TokenServer::start("bob", "hunter2").await;
    let reg = Registry::start_with(Auth::Token(&tokens));
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let img = app_image(10 << 10, 4);
    import_image(&client, &img, "local/tok:1").await;
    let target = format!("{}/team/app:v1", reg.host());

    let wrong = push(&client, "local/tok:1", &target, auth("bob", "wrong")).await;
    rpc::expect_code(wrong, Code::PermissionDenied, "push with a wrong password");
    assert!(tokens.refused() > 0, "the token server was not asked");
    let digest = push_ok(&client, "local/tok:1", &target, auth("bob", "hunter2")).await;
    assert_eq!(digest, img.manifest_digest);
    assert!(tokens.granted() > 0);
    assert!(
        tokens
            .queries()
            .iter()
            .any(|q| q.contains("service=sup-test-registry") && q.contains("push")),
        "{:?}",
        tokens.queries()
    );

    let other = daemon.client_ns("other").await;
    let anonymous = pull(&other, pull_request(&target)).await.map(|p| p.image);
    rpc::expect_code(anonymous, Code::PermissionDenied, "anonymous pull");
    let mut req = pull_request(&target);
    req.auth = auth("bob", "hunter2");
    let pulled = pull_ok(&other, req).await;
    assert_eq!(
        pulled.image.target.expect("target").digest,
        img.manifest_digest
    );
    assert!(!rpc::inspect(&other, &target).await.unpacked.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_serves_docker_hub_names() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = dir.path().join("certs.d/docker.io");
    std::fs::create_dir_all(&hub).expect("hosts dir");
    // A dead mirror first, then the live one; never Docker Hub itself.
    let dead = registry::free_port();
    std::fs::write(
        hub.join("hosts.toml"),
        format!(
            "mirror_only = true\n\n[host.\"http://127.0.0.1:{dead}\"]\n\
             capabilities = [\"pull\", \"resolve\"]\n\n[host.\"http://{}\"]\n\
             capabilities = [\"pull\", \"resolve\"]\n",
            reg.host()
        ),
    )
    .expect("hosts.toml");
    let config = format!(
        "[registry]\nconfig_path = \"{}\"\n",
        dir.path().join("certs.d").display()
    );
    let daemon = Daemon::start_with_config(Some(&config)).await;
    let client = daemon.client().await;
    let img = busybox::busybox_image();
    import_image(&client, &img, "local/bb:1").await;
    push_ok(
        &client,
        "local/bb:1",
        &format!("{}/library/busybox:latest", reg.host()),
        None,
    )
    .await;

    let other = daemon.client_ns("other").await;
    let req = api::PullRequest {
        reference: "busybox".into(),
        ..Default::default()
    };
    let pulled = pull_ok(&other, req).await;
    assert_eq!(pulled.image.name, "docker.io/library/busybox:latest");
    assert_eq!(
        pulled.image.target.expect("target").digest,
        img.manifest_digest
    );

    // A name the mirrors do not have is not found, and nothing else is asked.
    let req = api::PullRequest {
        reference: "docker.io/library/alpine:3".into(),
        ..Default::default()
    };
    let msg = rpc::expect_code(
        pull(&other, req).await.map(|p| p.image),
        Code::NotFound,
        "alpine",
    );
    assert!(msg.contains(&reg.host()), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_with_skip_verify_or_a_ca_from_hosts_toml() {
    let reg = Registry::start_tls();
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let img = busybox::busybox_image();
    import_image(&client, &img, "local/tls:1").await;
    let target = format!("{}/test/tls:v1", reg.host());
    let push_req = |skip_verify: bool| api::PushRequest {
        name: "local/tls:1".into(),
        target: target.clone(),
        skip_verify,
        ..Default::default()
    };

    // An unknown CA is refused unless verification is skipped.
    let refused = client.images().push(push_req(false)).await;
    let refused = match refused {
        Ok(r) => {
            let mut s = r.into_inner();
            let mut last = Ok(());
            while let Some(m) = s.message().await.transpose() {
                if let Err(e) = m {
                    last = Err(e);
                }
            }
            last
        }
        Err(e) => Err(e),
    };
    let msg = rpc::expect_code(refused, Code::Unavailable, "push to an unknown CA");
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
    let mut s = client
        .images()
        .push(push_req(true))
        .await
        .expect("push")
        .into_inner();
    let mut digest = String::new();
    while let Some(m) = s.message().await.expect("push stream") {
        digest = m.digest;
    }
    assert_eq!(digest, img.manifest_digest);

    // A daemon whose hosts.toml names the CA pulls with verification on.
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = dir.path().join("certs.d").join(reg.host());
    std::fs::create_dir_all(&hosts).expect("hosts dir");
    std::fs::copy(reg.ca_path(), hosts.join("ca.crt")).expect("copy ca");
    std::fs::write(
        hosts.join("hosts.toml"),
        format!("server = \"https://{}\"\nca = \"ca.crt\"\n", reg.host()),
    )
    .expect("hosts.toml");
    let config = format!(
        "[registry]\nconfig_path = \"{}\"\n",
        dir.path().join("certs.d").display()
    );
    let puller = Daemon::start_with_config(Some(&config)).await;
    let c = puller.client().await;
    let req = api::PullRequest {
        reference: target.clone(),
        ..Default::default()
    };
    let pulled = pull_ok(&c, req).await;
    assert_eq!(
        pulled.image.target.expect("target").digest,
        img.manifest_digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_media_types_and_a_moved_tag() {
    let reg = Registry::start();
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let old = ImageBuilder::new()
        .docker_media_types()
        .layer(busybox::busybox_layer().build(Compression::Gzip))
        .build();
    let mut extra = LayerBuilder::new();
    extra.file("new-file", "new\n");
    let new = ImageBuilder::new()
        .docker_media_types()
        .layer(busybox::busybox_layer().build(Compression::Gzip))
        .layer(extra.build(Compression::Gzip))
        .build();
    import_image(&client, &old, "local/d:old").await;
    import_image(&client, &new, "local/d:new").await;
    let target = format!("{}/test/docker:v1", reg.host());
    push_ok(&client, "local/d:old", &target, None).await;

    let puller = Daemon::start().await;
    let c = puller.client().await;
    let first = pull_ok(&c, pull_request(&target)).await;
    let t = first.image.target.expect("target");
    assert_eq!(
        (t.digest.as_str(), t.media_type.as_str()),
        (old.manifest_digest.as_str(), DOCKER_MANIFEST)
    );

    // The tag moves; pulling again moves the image and lets the old manifest go.
    push_ok(&client, "local/d:new", &target, None).await;
    let second = pull_ok(&c, pull_request(&target)).await;
    assert_eq!(
        second.image.target.expect("target").digest,
        new.manifest_digest
    );
    assert_eq!(rpc::list_images(&c).await.len(), 1);
    let held = content_digests(&c).await;
    assert!(held.contains(&new.manifest_digest));
    assert!(!held.contains(&old.manifest_digest), "{held:?}");
    assert_eq!(rpc::inspect(&c, &target).await.chain_id, new.chain_id());
}
