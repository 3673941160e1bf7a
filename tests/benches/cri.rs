//! Benchmark of the CRI path a kubelet takes: medians over SUP_BENCH_RUNS (10) runs of
//! RunPodSandbox + CreateContainer + StartContainer, with host networking and with a CNI
//! bridge network, and of ExecSync latency over SUP_BENCH_EXECS (30) calls. Every pod is
//! removed after it is measured. `cargo bench -p sup-tests --bench cri` (as root); the
//! binaries come from SUP_BIN_DIR or the target directory of this bench.

use std::time::{Duration, Instant};

use sup_tests::cri::{container_config, pod_config, CriEnv};

const SLEEPER: [&str; 3] = ["/bin/sh", "-c", "exec /bin/busybox sleep 1000"];

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
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
        env.remove_pod(&pod).await;
        let left = env.leftovers().await;

        println!("CRI benchmark (medians; supd debug log on)");
        println!("{:<48} {:>6} {:>10}", "operation", "runs", "median ms");
        println!(
            "{:<48} {:>6} {:>10}",
            "RunPodSandbox+Create+Start, host network",
            host.len(),
            ms(median(host.clone()))
        );
        println!(
            "{:<48} {:>6} {:>10}",
            "RunPodSandbox+Create+Start, CNI bridge",
            cni.len(),
            ms(median(cni.clone()))
        );
        println!(
            "{:<48} {:>6} {:>10}",
            "ExecSync (busybox true)",
            exec.len(),
            ms(median(exec))
        );
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
