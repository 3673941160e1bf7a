//! Benchmark of an interactive exec through the CRI streaming server: SUP_BENCH_EXECS (30)
//! `crictl exec CID /bin/busybox true` (Exec RPC, then SPDY/3.1 to supd's streaming server,
//! then the shim's exec), and the same through a WebSocket client (v4.channel.k8s.io, no Go
//! client's start-up in the figure), against the baseline measured in the same run on the
//! same running container: bare `runc --root <the shim's runc root> exec CID /bin/busybox
//! true`. Prints median and p90 of each and their ratios to runc. `cargo bench -p sup-tests
//! --bench stream` (as root); supd and sup-shim come from SUP_BIN_DIR or the target
//! directory of this bench, crictl as for the tests.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_cri::v1 as cri;
use sup_tests::bare::{runc, timed};
use sup_tests::cri::{container_config, pod_config, CriEnv};
use sup_tests::crictl::Crictl;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SLEEPER: [&str; 3] = ["/bin/sh", "-c", "exec /bin/busybox sleep 1000"];
/// Untimed runs of each before the timed ones: page cache, first connections.
const WARMUP: usize = 3;

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (median, p90) of the samples.
fn figures(mut samples: Vec<Duration>) -> (Duration, Duration) {
    let median = sup_tests::bare::median(&mut samples);
    // sorted by median(): the nearest rank at 90 %.
    let p90 = samples[(samples.len() * 9).div_ceil(10).saturating_sub(1)];
    (median, p90)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// One exec of `/bin/busybox true` through the Exec RPC and a WebSocket session, to the
/// server's close.
async fn ws_exec(env: &mut CriEnv, container: &str) -> Duration {
    let started = Instant::now();
    let url = env
        .runtime
        .exec(cri::ExecRequest {
            container_id: container.to_string(),
            cmd: vec!["/bin/busybox".into(), "true".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap_or_else(|s| panic!("Exec: {:?}: {}", s.code(), s.message()))
        .into_inner()
        .url;
    let address = format!(
        "ws://{}",
        url.strip_prefix("http://")
            .unwrap_or_else(|| panic!("not an http:// URL: {url}"))
    );
    let mut req = address.into_client_request().expect("a WebSocket request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v4.channel.k8s.io".parse().expect("header value"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .unwrap_or_else(|e| panic!("WebSocket handshake with {url}: {e}"));
    let mut status = Vec::new();
    while let Some(Ok(msg)) = ws.next().await {
        if let tokio_tungstenite::tungstenite::Message::Binary(b) = msg {
            if b.first() == Some(&3) {
                status.extend_from_slice(&b[1..]);
            }
        }
    }
    let took = started.elapsed();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&status).ok(),
        Some(serde_json::json!({"metadata": {}, "status": "Success"})),
        "status of `true`: {}",
        String::from_utf8_lossy(&status)
    );
    took
}

fn main() {
    let execs = count("SUP_BENCH_EXECS", 30).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let crictl_bin = sup_tests::bins::crictl();
        let mut env = CriEnv::start().await;
        env.import_busybox().await;
        let crictl = Crictl::new(crictl_bin, &env.daemon.socket(), env.daemon.dir());
        let pod_cfg = pod_config("bench-stream", &env.log_dir("bench-stream"), false);
        let pod = env.run_pod(pod_cfg.clone()).await;
        let c = env
            .start_container(&pod, &pod_cfg, container_config("c", &SLEEPER))
            .await;

        // The shim runs CRI containers under runc's root <state>/runc/k8s.io, by their CRI
        // id: the same container, exec'd into without sup.
        let root = env.daemon.state().join("runc").join("k8s.io");
        timed(runc(&root, &["state", &c])).unwrap_or_else(|e| {
            panic!(
                "the CRI container is not in runc root {}: {e}",
                root.display()
            )
        });

        let crictl_exec = || {
            timed(crictl.command(&["exec", &c, "/bin/busybox", "true"]))
                .unwrap_or_else(|e| panic!("crictl exec: {e}"))
        };
        let runc_exec = || {
            timed(runc(&root, &["exec", &c, "/bin/busybox", "true"]))
                .unwrap_or_else(|e| panic!("runc exec: {e}"))
        };
        for _ in 0..WARMUP {
            tokio::task::block_in_place(crictl_exec);
            tokio::task::block_in_place(runc_exec);
            ws_exec(&mut env, &c).await;
        }
        // Interleaved, so that a slow patch of the machine weighs on all three alike.
        let (mut by_crictl, mut by_ws, mut by_runc) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..execs {
            by_crictl.push(tokio::task::block_in_place(crictl_exec));
            by_ws.push(ws_exec(&mut env, &c).await);
            by_runc.push(tokio::task::block_in_place(runc_exec));
        }

        env.remove_pod(&pod).await;
        env.assert_clean().await;

        let (runc_med, runc_p90) = figures(by_runc);
        println!(
            "{:<44} {:>5} {:>10} {:>10} {:>12}",
            "exec of `true` in a running container", "runs", "median ms", "p90 ms", "x runc (med)"
        );
        for (what, samples) in [
            ("crictl exec (Exec + SPDY stream)", by_crictl),
            ("WebSocket v4 exec (Exec + WS stream)", by_ws),
        ] {
            let (med, p90) = figures(samples);
            println!(
                "{what:<44} {execs:>5} {:>10} {:>10} {:>12.2}",
                ms(med),
                ms(p90),
                med.as_secs_f64() / runc_med.as_secs_f64()
            );
        }
        println!(
            "{:<44} {execs:>5} {:>10} {:>10} {:>12.2}",
            "bare runc exec (baseline)",
            ms(runc_med),
            ms(runc_p90),
            1.0
        );
    });
}
