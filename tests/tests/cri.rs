//! End-to-end tests of the Kubernetes CRI served by supd, driven as a kubelet drives it:
//! pods networked through real CNI plugins (a test bridge per test), containers in them,
//! ExecSync, CRI logs, stats, OOM kills, a supd restart in the middle, the ImageService, and
//! nothing left behind afterwards. Run as root.

use std::time::Duration;

use k8s_cri::v1 as cri;
use sup_tests::cri::{container_config, pod_config, CriEnv, BUSYBOX};

const SLEEPER: [&str; 3] = ["/bin/sh", "-c", "echo hello; exec /bin/busybox sleep 1000"];

/// Everything the test made is gone: pods, sup containers, processes, mounts, addresses.
async fn assert_clean(env: &mut CriEnv) {
    env.assert_clean().await;
}

async fn wait_exited(env: &mut CriEnv, id: &str) -> cri::ContainerStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = env.container_status(id).await;
        if st.state == cri::ContainerState::ContainerExited as i32 {
            return st;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "container {id} did not exit: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lines of a CRI log file, without their timestamps: `stdout F hello`.
fn log_lines(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let (ts, rest) = l.split_once(' ').unwrap_or((l, ""));
            // RFC 3339 with nanoseconds: 2026-01-02T03:04:05.123456789Z (or an offset).
            assert!(
                ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.as_bytes()[10] == b'T',
                "not an RFC 3339 timestamp: {l:?}"
            );
            rest.to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_lifecycle_with_cni_network() {
    let mut env = CriEnv::start().await;
    env.import_busybox().await;

    let version = env
        .runtime
        .version(cri::VersionRequest::default())
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(version.runtime_api_version, "v1");
    let status = env
        .runtime
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    let conditions = status.status.expect("runtime status").conditions;
    for c in &conditions {
        assert!(c.status, "condition not met: {c:?}");
    }

    let log_dir = env.log_dir("web");
    let pod_cfg = pod_config("web", &log_dir, false);
    let pod = env.run_pod(pod_cfg.clone()).await;
    let pst = env.pod_status(&pod).await;
    assert_eq!(pst.state, cri::PodSandboxState::SandboxReady as i32);
    let ip = pst.network.map(|n| n.ip).unwrap_or_default();
    assert!(
        ip.starts_with(&format!("{}.", env.net.prefix())),
        "pod IP {ip:?} not in the test subnet {}.0/24",
        env.net.prefix()
    );
    assert!(env.net.bridge_exists(), "the bridge plugin made no bridge");
    assert_eq!(env.net.allocations(), vec![ip.clone()]);

    let c1 = env
        .start_container(&pod, &pod_cfg, container_config("main", &SLEEPER))
        .await;
    let st = env.container_status(&c1).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);

    // The container is in the pod's network namespace: eth0 has the pod's address.
    let addr = env
        .exec(&c1, &["/bin/busybox", "ip", "-4", "addr", "show", "eth0"])
        .await;
    assert_eq!(
        addr.exit_code,
        0,
        "{}",
        String::from_utf8_lossy(&addr.stderr)
    );
    let text = String::from_utf8_lossy(&addr.stdout);
    assert!(text.contains(&format!("inet {ip}/24")), "eth0: {text}");
    let lo = env
        .exec(&c1, &["/bin/busybox", "ip", "-4", "addr", "show", "lo"])
        .await;
    assert!(
        String::from_utf8_lossy(&lo.stdout).contains("127.0.0.1"),
        "lo is not up: {lo:?}"
    );

    // ExecSync: output and exit code.
    let r = env
        .exec(&c1, &["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
        .await;
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 3)
    );

    // The CRI log file.
    let log = log_dir.join("main.log");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while log_lines(&log).is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(log_lines(&log), vec!["stdout F hello".to_string()]);

    // Stats.
    let stats = env
        .runtime
        .container_stats(cri::ContainerStatsRequest {
            container_id: c1.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
    let mem = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value);
    assert!(mem.unwrap_or(0) > 0, "no memory usage: {mem:?}");
    assert!(stats.cpu.is_some(), "no cpu usage");

    // supctl sees CRI objects in k8s.io.
    let out = env.daemon.supctl(&["-n", "k8s.io", "containers", "ls"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        listed.contains(&c1) && listed.contains(&pod),
        "supctl: {listed}"
    );

    // Stop with a timeout: sleep ignores nothing, SIGTERM ends it.
    env.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: c1.clone(),
            timeout: 5,
        })
        .await
        .expect("StopContainer");
    let st = wait_exited(&mut env, &c1).await;
    assert_ne!(st.finished_at, 0);
    env.runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: c1.clone(),
        })
        .await
        .expect("RemoveContainer");
    let gone = env
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: c1.clone(),
            verbose: false,
        })
        .await;
    assert_eq!(
        gone.map(|_| ()).map_err(|s| s.code()),
        Err(tonic::Code::NotFound)
    );

    env.remove_pod(&pod).await;
    assert_clean(&mut env).await;
}

/// The first RunPodSandbox builds and imports the pause image. Collections running all the
/// while must neither sweep what that import has written before an image names it nor fail
/// the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_during_the_first_pod_start() {
    let mut env = CriEnv::start().await;
    let client = env.daemon.client_ns("k8s.io").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = {
        let (stop, client) = (stop.clone(), client.clone());
        tokio::spawn(async move {
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                client
                    .gc()
                    .collect(sup_proto::v1::CollectRequest {})
                    .await
                    .expect("Collect");
                rounds += 1;
            }
            rounds
        })
    };
    let log_dir = env.log_dir("gcrace");
    let pod = env.run_pod(pod_config("gcrace", &log_dir, true)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rounds = collector.await.expect("collector");
    assert!(rounds > 0, "no collection ran during RunPodSandbox");
    assert_eq!(
        env.pod_status(&pod).await.state,
        cri::PodSandboxState::SandboxReady as i32
    );
    // What the pause image is made of is rooted now: one more collection keeps it.
    client
        .gc()
        .collect(sup_proto::v1::CollectRequest {})
        .await
        .expect("Collect");
    let images = env.list_images().await;
    assert!(
        images.iter().any(|i| i
            .repo_tags
            .iter()
            .any(|t| t.starts_with("sup.local/pause:"))),
        "the pause image is gone: {images:?}"
    );
    env.remove_pod(&pod).await;
    // A second pod starts from the image the first import left.
    let again = env.run_pod(pod_config("gcrace2", &log_dir, true)).await;
    env.remove_pod(&again).await;
    assert_clean(&mut env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pod() {
    let mut env = CriEnv::start().await;
    env.import_busybox().await;
    let log_dir = env.log_dir("hostnet");
    let pod_cfg = pod_config("hostnet", &log_dir, true);
    let pod = env.run_pod(pod_cfg.clone()).await;
    assert_eq!(
        env.net.allocations(),
        Vec::<String>::new(),
        "CNI ran for a host pod"
    );
    let c = env
        .start_container(&pod, &pod_cfg, container_config("c", &SLEEPER))
        .await;
    // The node's network: the container sees the host's interfaces.
    let host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .expect("host interfaces")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    let r = env.exec(&c, &["/bin/busybox", "ip", "-o", "link"]).await;
    let text = String::from_utf8_lossy(&r.stdout);
    let other = host.iter().find(|n| n.as_str() != "lo");
    if let Some(name) = other {
        assert!(text.contains(&format!(": {name}")), "no {name} in: {text}");
    }
    env.remove_pod(&pod).await;
    assert_clean(&mut env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_pod_share_localhost() {
    let mut env = CriEnv::start().await;
    env.import_busybox().await;
    let log_dir = env.log_dir("pair");
    let pod_cfg = pod_config("pair", &log_dir, false);
    let pod = env.run_pod(pod_cfg.clone()).await;
    let server = env
        .start_container(
            &pod,
            &pod_cfg,
            container_config(
                "server",
                &[
                    "/bin/sh",
                    "-c",
                    "echo pong | /bin/busybox nc -l -p 8080; exec /bin/busybox sleep 1000",
                ],
            ),
        )
        .await;
    let client = env
        .start_container(&pod, &pod_cfg, container_config("client", &SLEEPER))
        .await;
    let mut answer = String::new();
    for _ in 0..50 {
        let r = env
            .exec(
                &client,
                &[
                    "/bin/sh",
                    "-c",
                    "echo ping | /bin/busybox nc 127.0.0.1 8080",
                ],
            )
            .await;
        answer = String::from_utf8_lossy(&r.stdout).into_owned();
        if r.exit_code == 0 && answer.contains("pong") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer.trim(), "pong");
    // The pod's IPC and UTS namespaces are pinned in supd's state dir and shared by both.
    let pins = env.daemon.state().join("cri").join("sandboxes").join(&pod);
    let pins = [pins.join("ipcns"), pins.join("utsns")];
    for p in &pins {
        assert!(p.exists(), "no pinned namespace at {}", p.display());
    }
    let probe = [
        "/bin/sh",
        "-c",
        "readlink /proc/self/ns/ipc /proc/self/ns/uts; hostname",
    ];
    let a = env.exec(&server, &probe).await;
    let b = env.exec(&client, &probe).await;
    assert_eq!(a.exit_code, 0, "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(a.stdout, b.stdout);
    assert!(
        String::from_utf8_lossy(&a.stdout).ends_with("pair\n"),
        "{a:?}"
    );
    env.remove_pod(&pod).await;
    for p in &pins {
        assert!(!p.exists(), "{} outlived the pod", p.display());
    }
    assert_clean(&mut env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_is_reported_oom_killed() {
    let mut env = CriEnv::start().await;
    env.import_busybox().await;
    let log_dir = env.log_dir("hog");
    let pod_cfg = pod_config("hog", &log_dir, false);
    let pod = env.run_pod(pod_cfg.clone()).await;
    let mut cfg = container_config(
        "hog",
        // dd allocates its whole block and fills it: 256 MiB against a 32 MiB limit.
        &[
            "/bin/busybox",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=256M",
            "count=1",
        ],
    );
    cfg.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            memory_swap_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let c = env.start_container(&pod, &pod_cfg, cfg).await;
    let st = wait_exited(&mut env, &c).await;
    assert_eq!(st.reason, "OOMKilled", "status: {st:?}");
    assert_eq!(st.exit_code, 137, "status: {st:?}");
    env.remove_pod(&pod).await;
    assert_clean(&mut env).await;
}

/// Commands that end of themselves about when a stop comes, and one that only a stop ends.
const RACERS: [&[&str]; 4] = [
    &["/bin/busybox", "true"],
    &["/bin/busybox", "sleep", "0.1"],
    &["/bin/busybox", "sleep", "0.3"],
    &["/bin/busybox", "sleep", "1000"],
];

async fn start_racers(
    env: &mut CriEnv,
    pod: &str,
    pod_cfg: &cri::PodSandboxConfig,
    round: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for (i, argv) in RACERS.iter().enumerate() {
        let cfg = container_config(&format!("racer-{round}-{i}"), argv);
        ids.push(env.start_container(pod, pod_cfg, cfg).await);
    }
    ids
}

/// StopContainer, RemoveContainer and StopPodSandbox racing the exit collector (which deletes
/// a task, and so its shim, as soon as its exit comes, whether of itself or of the stop's own
/// SIGKILL) succeed every time, and each container ends up exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_racing_the_exit_collector_succeed() {
    let mut env = CriEnv::start().await;
    env.import_busybox().await;
    let log_dir = env.log_dir("racing");
    let pod_cfg = pod_config("racing", &log_dir, true);
    let pod = env.run_pod(pod_cfg.clone()).await;
    for round in 0..3 {
        let ids = start_racers(&mut env, &pod, &pod_cfg, round).await;
        // Two stops of each at once, as a kubelet retrying one that takes long.
        let stops = ids.iter().flat_map(|id| {
            [0, 1].map(|timeout| {
                let mut rt = env.runtime.clone();
                let id = id.clone();
                async move {
                    rt.stop_container(cri::StopContainerRequest {
                        container_id: id.clone(),
                        timeout,
                    })
                    .await
                    .map_err(|s| format!("StopContainer {id} (timeout {timeout}): {s:?}"))
                }
            })
        });
        for r in futures::future::join_all(stops).await {
            r.unwrap();
        }
        for id in &ids {
            let st = env.container_status(id).await;
            assert_eq!(
                st.state,
                cri::ContainerState::ContainerExited as i32,
                "{st:?}"
            );
            assert_ne!(st.finished_at, 0, "{st:?}");
        }
        let removals = ids.iter().map(|id| {
            let mut rt = env.runtime.clone();
            let id = id.clone();
            async move {
                rt.remove_container(cri::RemoveContainerRequest {
                    container_id: id.clone(),
                })
                .await
                .map_err(|s| format!("RemoveContainer {id}: {s:?}"))
            }
        });
        for r in futures::future::join_all(removals).await {
            r.unwrap();
        }
    }
    // The pod's stop kills what still runs while the same exits are being collected.
    start_racers(&mut env, &pod, &pod_cfg, 3).await;
    env.remove_pod(&pod).await;
    assert_clean(&mut env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_survives_supd_restart() {
    let mut env = CriEnv::start().await;
    env.import_busybox().await;
    let log_dir = env.log_dir("durable");
    let pod_cfg = pod_config("durable", &log_dir, false);
    let pod = env.run_pod(pod_cfg.clone()).await;
    let ip = env.pod_ip(&pod).await;
    let c1 = env
        .start_container(&pod, &pod_cfg, container_config("first", &SLEEPER))
        .await;

    env.daemon.restart().await;
    env.reconnect().await;

    let pst = env.pod_status(&pod).await;
    assert_eq!(pst.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(pst.network.map(|n| n.ip).unwrap_or_default(), ip);
    let st = env.container_status(&c1).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    let r = env.exec(&c1, &["/bin/busybox", "echo", "still here"]).await;
    assert_eq!(r.stdout, b"still here\n");
    // A new container joins the same pod network after the restart.
    let c2 = env
        .start_container(&pod, &pod_cfg, container_config("second", &SLEEPER))
        .await;
    let r = env
        .exec(&c2, &["/bin/busybox", "ip", "-4", "addr", "show", "eth0"])
        .await;
    assert!(
        String::from_utf8_lossy(&r.stdout).contains(&format!("inet {ip}/")),
        "{r:?}"
    );
    env.remove_pod(&pod).await;
    assert_clean(&mut env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_service() {
    let mut env = CriEnv::start().await;
    env.import_busybox().await;
    let spec = |image: &str| cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    };
    let list = env.list_images().await;
    let bb = list
        .iter()
        .find(|i| i.repo_tags.iter().any(|t| t == BUSYBOX))
        .unwrap_or_else(|| panic!("busybox not listed: {list:?}"))
        .clone();
    assert!(bb.id.starts_with("sha256:") && bb.size > 0, "{bb:?}");
    assert_eq!(bb.repo_digests, vec![format!("sup.test/busybox@{}", bb.id)]);

    // By name, by id, verbose.
    for name in [BUSYBOX, bb.id.as_str()] {
        let st = env
            .images
            .image_status(cri::ImageStatusRequest {
                image: Some(spec(name)),
                verbose: true,
            })
            .await
            .expect("ImageStatus")
            .into_inner();
        assert_eq!(st.image.map(|i| i.id), Some(bb.id.clone()), "{name}");
        assert!(st.info.get("info").is_some_and(|i| i.contains(&bb.id)));
    }
    let filtered = env
        .images
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: Some(spec(BUSYBOX)),
            }),
        })
        .await
        .expect("ListImages filtered")
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);

    let fs = env
        .images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .expect("ImageFsInfo")
        .into_inner();
    let usage = &fs.image_filesystems[0];
    assert!(usage.used_bytes.as_ref().is_some_and(|b| b.value > 0));
    assert!(usage.inodes_used.as_ref().is_some_and(|b| b.value > 0));
    assert!(usage
        .fs_id
        .as_ref()
        .is_some_and(|f| f.mountpoint.ends_with("snapshots")));

    // Remove, twice; then status is empty, not an error.
    for _ in 0..2 {
        env.images
            .remove_image(cri::RemoveImageRequest {
                image: Some(spec(BUSYBOX)),
            })
            .await
            .expect("RemoveImage");
    }
    let st = env
        .images
        .image_status(cri::ImageStatusRequest {
            image: Some(spec(BUSYBOX)),
            verbose: false,
        })
        .await
        .expect("ImageStatus of a removed image")
        .into_inner();
    assert!(st.image.is_none());

    // A pull from nowhere fails with a message, and makes nothing.
    let err = env
        .images
        .pull_image(cri::PullImageRequest {
            image: Some(spec("127.0.0.1:1/nothing:here")),
            auth: None,
            sandbox_config: None,
        })
        .await
        .expect_err("pull from a closed port");
    assert!(!err.message().is_empty());
    assert_clean(&mut env).await;
}
