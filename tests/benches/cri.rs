//! Benchmark of the CRI path a kubelet takes: medians over SUP_BENCH_RUNS (10) runs of
//! RunPodSandbox + CreateContainer + StartContainer, with host networking and with a CNI
//! bridge network, of ExecSync and ContainerStats over SUP_BENCH_EXECS (30) calls, and of
//! ListPodSandboxStats with 10 pods. The baseline, measured in the same run, is bare runc on
//! the same busybox root filesystem: two detached `runc run -d` (a pod's pause and its
//! container), `runc exec` and `runc events --stats`. Every pod and bare container is removed
//! after it is measured. `cargo bench -p sup-tests --bench cri` (as root); the binaries come
//! from SUP_BIN_DIR or the target directory of this bench.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use sup_tests::bare::{make_bundle, runc, timed, timed_detached, BareRoot};
use sup_tests::cri::{container_config, pod_config, CriEnv};

const SLEEPER: [&str; 3] = ["/bin/sh", "-c", "exec /bin/busybox sleep 1000"];

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    sup_tests::bare::median(&mut v)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Times pod + container start; the pod is removed (untimed) afterwards.
async fn pod_start(env: &mut CriEnv, i: usize, host: bool) -> Duration {
    let name = format!("bench-{}-{i}", if host { "host" } else { "cni" });
    let log_dir = env.log_dir(&name);
    let pod_cfg = pod_config(&name, &log_dir, host);
    let started = Instant::now();
    let pod = env.run_pod(pod_cfg.clone()).await;
    env.start_container(&pod, &pod_cfg, container_config("c", &SLEEPER))
        .await;
    let took = started.elapsed();
    env.remove_pod(&pod).await;
    took
}

/// Bare runc: times two detached starts (a pause and a container), then removes both
/// (untimed).
fn bare_pod_start(root: &BareRoot, bundle: &Path, i: usize) -> Duration {
    let bundle = bundle.to_string_lossy().into_owned();
    let ids = [format!("bare-pause-{i}"), format!("bare-c-{i}")];
    let mut took = Duration::ZERO;
    for id in &ids {
        took += timed_detached(runc(&root.root, &["run", "-d", "--bundle", &bundle, id]))
            .unwrap_or_else(|e| panic!("bare runc run: {e}"));
    }
    for id in &ids {
        root.remove(id);
    }
    took
}

/// The bare baselines: pod-like starts, then exec and stats latency against one running
/// container.
fn bare_baselines(runs: usize, calls: usize) -> (Vec<Duration>, Vec<Duration>, Vec<Duration>) {
    let scratch = tempfile::Builder::new()
        .prefix("supbench")
        .tempdir_in("/tmp")
        .expect("scratch dir");
    let bundle = make_bundle(scratch.path(), "", &["/bin/busybox", "sleep", "1000"]);
    // Each bare container gets the cgroup runc names after its id, removed with it.
    let config = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).expect("config.json")).expect("json");
    if let Some(linux) = spec["linux"].as_object_mut() {
        linux.remove("cgroupsPath");
    }
    std::fs::write(&config, serde_json::to_vec(&spec).expect("json")).expect("config.json");
    let root = BareRoot {
        root: scratch.path().join("runc-root"),
    };
    bare_pod_start(&root, &bundle, 0);
    let starts = (1..=runs)
        .map(|i| bare_pod_start(&root, &bundle, i))
        .collect();
    let b = bundle.to_string_lossy().into_owned();
    timed_detached(runc(
        &root.root,
        &["run", "-d", "--bundle", &b, "bare-exec"],
    ))
    .unwrap_or_else(|e| panic!("bare runc run: {e}"));
    let execs = (0..calls)
        .map(|_| {
            timed(runc(
                &root.root,
                &["exec", "bare-exec", "/bin/busybox", "true"],
            ))
            .unwrap_or_else(|e| panic!("runc exec: {e}"))
        })
        .collect();
    let stats = (0..calls)
        .map(|_| {
            timed(runc(&root.root, &["events", "--stats", "bare-exec"]))
                .unwrap_or_else(|e| panic!("runc events --stats: {e}"))
        })
        .collect();
    root.remove("bare-exec");
    (starts, execs, stats)
}

/// The reads a kubelet repeats for every pod, `calls` times each, with `pods` running.
async fn polling_reads(
    env: &mut CriEnv,
    pods: &[String],
    calls: usize,
) -> Vec<(&'static str, Vec<Duration>)> {
    let containers = env
        .runtime
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    let container = containers.first().expect("a container").id.clone();
    let image = containers[0].image_ref.clone();
    let pod = pods[0].clone();
    let mut out = Vec::new();
    macro_rules! timed_calls {
        ($what:expr, $call:expr) => {{
            let mut samples = Vec::with_capacity(calls);
            for _ in 0..calls {
                let started = Instant::now();
                $call.await.expect($what);
                samples.push(started.elapsed());
            }
            out.push(($what, samples));
        }};
    }
    let rt = env.runtime.clone();
    let im = env.images.clone();
    timed_calls!(
        "ContainerStatus",
        rt.clone().container_status(cri::ContainerStatusRequest {
            container_id: container.clone(),
            verbose: false,
        })
    );
    timed_calls!(
        "PodSandboxStatus",
        rt.clone().pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
    );
    timed_calls!(
        "ListContainers, 10 pods",
        rt.clone()
            .list_containers(cri::ListContainersRequest { filter: None })
    );
    timed_calls!(
        "ListPodSandbox, 10 pods",
        rt.clone()
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
    );
    timed_calls!(
        "ImageStatus",
        im.clone().image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
    );
    timed_calls!(
        "ListImages",
        im.clone()
            .list_images(cri::ListImagesRequest { filter: None })
    );
    out
}

fn row(what: &str, samples: &[Duration], baseline: Option<&[Duration]>) {
    let med = median(samples.to_vec());
    match baseline {
        Some(b) => {
            let base = median(b.to_vec());
            println!(
                "{what:<48} {:>6} {:>10} {:>12} {:>7.2}x",
                samples.len(),
                ms(med),
                ms(base),
                med.as_secs_f64() / base.as_secs_f64().max(1e-9)
            );
        }
        None => println!("{what:<48} {:>6} {:>10}", samples.len(), ms(med)),
    }
}

fn main() {
    let runs = count("SUP_BENCH_RUNS", 10);
    let execs = count("SUP_BENCH_EXECS", 30);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let mut env = CriEnv::start().await;
        env.import_busybox().await;
        // One untimed pod first: it builds the pause image and warms the caches.
        pod_start(&mut env, 0, true).await;

        let mut host = Vec::new();
        let mut cni = Vec::new();
        for i in 1..=runs {
            host.push(pod_start(&mut env, i, true).await);
            cni.push(pod_start(&mut env, i, false).await);
        }

        let log_dir = env.log_dir("bench-exec");
        let pod_cfg = pod_config("bench-exec", &log_dir, false);
        let pod = env.run_pod(pod_cfg.clone()).await;
        let c = env
            .start_container(&pod, &pod_cfg, container_config("c", &SLEEPER))
            .await;
        let mut exec = Vec::new();
        for _ in 0..execs {
            let started = Instant::now();
            let r = env.exec(&c, &["/bin/busybox", "true"]).await;
            exec.push(started.elapsed());
            assert_eq!(r.exit_code, 0);
        }
        let mut stats = Vec::new();
        for _ in 0..execs {
            let started = Instant::now();
            env.container_stats(&c).await;
            stats.push(started.elapsed());
        }
        env.remove_pod(&pod).await;

        // Ten pods of one container each: what a kubelet's stats round asks.
        let mut pods = Vec::new();
        for i in 0..10 {
            let name = format!("bench-stats-{i}");
            let cfg = pod_config(&name, &env.log_dir(&name), false);
            let pod = env.run_pod(cfg.clone()).await;
            env.start_container(&pod, &cfg, container_config("c", &SLEEPER))
                .await;
            pods.push(pod);
        }
        let mut pod_stats = Vec::new();
        for _ in 0..10 {
            let started = Instant::now();
            let n = env
                .runtime
                .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
                .await
                .expect("ListPodSandboxStats")
                .into_inner()
                .stats
                .len();
            pod_stats.push(started.elapsed());
            assert_eq!(n, pods.len());
        }
        let reads = polling_reads(&mut env, &pods, count("SUP_BENCH_READS", 300)).await;
        for pod in &pods {
            env.remove_pod(pod).await;
        }
        let left = env.leftovers().await;
        let (bare_starts, bare_execs, bare_stats) = bare_baselines(runs, execs);

        println!("CRI benchmark (medians; supd debug log on; baseline: bare runc, same run)");
        println!(
            "{:<48} {:>6} {:>10} {:>12} {:>8}",
            "operation", "runs", "median ms", "baseline ms", "ratio"
        );
        row(
            "RunPodSandbox+Create+Start, host network",
            &host,
            Some(&bare_starts),
        );
        row(
            "RunPodSandbox+Create+Start, CNI bridge",
            &cni,
            Some(&bare_starts),
        );
        row("ExecSync (busybox true)", &exec, Some(&bare_execs));
        row("ContainerStats", &stats, Some(&bare_stats));
        row("ListPodSandboxStats, 10 pods", &pod_stats, None);
        for (what, samples) in &reads {
            row(what, samples, None);
        }
        println!("baselines: 2x `runc run -d`; `runc exec`; `runc events --stats`");
        let (h, n) = (median(host), median(cni));
        if !h.is_zero() {
            println!(
                "CNI / host network: {:.2}x",
                n.as_secs_f64() / h.as_secs_f64()
            );
        }
        if !left.is_empty() {
            eprintln!("left behind: {left:?}");
            std::process::exit(1);
        }
    });
}
