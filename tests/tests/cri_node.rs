//! End-to-end tests of what a kubelet's node needs of the CRI beyond the pod lifecycle: the
//! pod's cgroup holds its containers (a cgroupfs path and a systemd slice name), stats carry
//! CPU rates, network and process counts, and exits that happened while supd was down are
//! collected when it comes back. Run as root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1 as cri;
use sup_tests::chaos::shim_pid;
use sup_tests::cri::{container_config, pod_config, wait_for, CriEnv};

const SLEEPER: [&str; 3] = ["/bin/sh", "-c", "exec /bin/busybox sleep 1000"];

/// cgroup v2 (one unified hierarchy) rather than v1.
fn unified() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The cgroup path (as the kernel names it) of `pid`'s memory controller.
fn memory_cgroup_of(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup file");
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        let wanted = if unified() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == "memory")
        };
        if wanted {
            return path.to_string();
        }
    }
    panic!("no memory cgroup for pid {pid}: {text}");
}

/// The directory of cgroup `path` in the memory hierarchy.
fn memory_dir(path: &str) -> PathBuf {
    let base = if unified() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/memory")
    };
    base.join(path.trim_start_matches('/'))
}

/// Makes the pod cgroup `path` with a memory limit, as the kubelet does before it runs the
/// pod.
fn make_pod_cgroup(path: &str, limit: u64) {
    let dir = memory_dir(path);
    if unified() {
        // Every level above must hand the memory controller down.
        let mut at = PathBuf::from("/sys/fs/cgroup");
        for part in path.trim_start_matches('/').split('/') {
            let _ = std::fs::write(at.join("cgroup.subtree_control"), "+memory");
            at = at.join(part);
            let _ = std::fs::create_dir(&at);
        }
        std::fs::write(dir.join("memory.max"), limit.to_string()).expect("memory.max");
    } else {
        std::fs::create_dir_all(&dir).expect("pod memory cgroup");
        std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string())
            .expect("memory.limit_in_bytes");
    }
}

/// Removes the cgroup tree `top` (a single path component) from every hierarchy, deepest
/// first; only empty cgroups can go, so a leftover process makes this fail loudly.
fn remove_cgroup_tree(top: &str) {
    fn remove(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    remove(&e.path());
                }
            }
        }
        if let Err(e) = std::fs::remove_dir(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                panic!("removing cgroup {}: {e}", dir.display());
            }
        }
    }
    let roots: Vec<PathBuf> = if unified() {
        vec![PathBuf::from("/sys/fs/cgroup")]
    } else {
        std::fs::read_dir("/sys/fs/cgroup")
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    for root in roots {
        let dir = root.join(top);
        if dir.is_dir() {
            remove(&dir);
        }
    }
}

/// Removes the test's cgroups even when it fails halfway.
struct CgroupTree(String);

impl Drop for CgroupTree {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Processes may still be in it: only try.
            let _ = std::panic::catch_unwind(|| remove_cgroup_tree(&self.0));
        } else {
            remove_cgroup_tree(&self.0);
        }
    }
}

async fn wait_exited(env: &mut CriEnv, id: &str) -> cri::ContainerStatus {
    let mut st = None;
    for _ in 0..300 {
        let s = env.container_status(id).await;
        if s.state == cri::ContainerState::ContainerExited as i32 {
            return s;
        }
        st = Some(s);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("container {id} did not exit: {st:?}");
}

/// The pid of a CRI object's task, through the sup API.
async fn task_pid(env: &CriEnv, id: &str) -> Option<u32> {
    let client = env.daemon.client_ns("k8s.io").await;
    let resp = client
        .tasks()
        .get(sup_client::api::GetTaskRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        })
        .await
        .ok()?;
    resp.into_inner().process.map(|p| p.pid)
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_cgroup_holds_its_containers() {
    let top = format!("sup-test-kubepods-{}", std::process::id());
    let _cleanup = CgroupTree(top.clone());
    let mut env = CriEnv::start().await;
    env.import_busybox().await;

    // The kubelet's cgroupfs driver: a path it made and limited.
    let parent = format!("/{top}/burstable/pod-a");
    make_pod_cgroup(&parent, 48 << 20);
    let log_dir = env.log_dir("grouped");
    let mut pod_cfg = pod_config("grouped", &log_dir, true);
    if let Some(l) = pod_cfg.linux.as_mut() {
        l.cgroup_parent = parent.clone();
    }
    let pod = env.run_pod(pod_cfg.clone()).await;
    let pause = task_pid(&env, &pod).await.expect("pause pid");
    assert_eq!(memory_cgroup_of(pause), format!("{parent}/{pod}"));
    let sleeper = env
        .start_container(&pod, &pod_cfg, container_config("sleeper", &SLEEPER))
        .await;
    let pid = task_pid(&env, &sleeper).await.expect("container pid");
    assert_eq!(memory_cgroup_of(pid), format!("{parent}/{sleeper}"));
    // crictl inspect shows the same: the pid and the spec's cgroup path.
    let verbose = env
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: sleeper.clone(),
            verbose: true,
        })
        .await
        .expect("ContainerStatus")
        .into_inner();
    let info: serde_json::Value =
        serde_json::from_str(&verbose.info["info"]).expect("verbose info is JSON");
    assert_eq!(info["pid"], pid);
    assert_eq!(
        info["runtimeSpec"]["linux"]["cgroupsPath"],
        format!("{parent}/{sleeper}")
    );

    // The pod's limit holds a container that has none of its own.
    let hog = env
        .start_container(
            &pod,
            &pod_cfg,
            container_config(
                "hog",
                &[
                    "/bin/busybox",
                    "dd",
                    "if=/dev/zero",
                    "of=/dev/null",
                    "bs=128M",
                    "count=1",
                ],
            ),
        )
        .await;
    let st = wait_exited(&mut env, &hog).await;
    assert_eq!(st.exit_code, 137, "{st:?}");
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    assert_eq!(
        st.resources
            .and_then(|r| r.linux)
            .map(|l| l.memory_limit_in_bytes),
        Some(0),
        "the hog had no limit of its own"
    );

    // The kubelet's systemd driver names a slice; it lives where systemd puts it.
    // (Each dash of a slice name is a level: the test's prefix has none.)
    let slice_prefix = format!("suptest{}", std::process::id());
    let slice_top = format!("{slice_prefix}.slice");
    let _slice_cleanup = CgroupTree(slice_top.clone());
    let slice = format!("{slice_prefix}-podb.slice");
    let log_dir = env.log_dir("sliced");
    let mut sliced_cfg = pod_config("sliced", &log_dir, true);
    if let Some(l) = sliced_cfg.linux.as_mut() {
        l.cgroup_parent = slice.clone();
    }
    let sliced = env.run_pod(sliced_cfg.clone()).await;
    let c = env
        .start_container(&sliced, &sliced_cfg, container_config("c", &SLEEPER))
        .await;
    let pid = task_pid(&env, &c).await.expect("container pid");
    assert_eq!(memory_cgroup_of(pid), format!("/{slice_top}/{slice}/{c}"));

    // A parent that climbs out is refused, and nothing is made.
    let mut bad = pod_config("bad", &env.log_dir("bad"), true);
    if let Some(l) = bad.linux.as_mut() {
        l.cgroup_parent = format!("/{top}/../../escape");
    }
    let err = env
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(bad),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("a cgroup parent with .. is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    env.remove_pod(&pod).await;
    env.remove_pod(&sliced).await;
    env.assert_clean().await;
    // The runtime's own cgroups went with the containers: only the kubelet's are left.
    let pod_dir = memory_dir(&parent);
    let left: Vec<_> = std::fs::read_dir(&pod_dir)
        .expect("pod cgroup")
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "cgroups left in {}: {left:?}",
        pod_dir.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_carry_cpu_rates_network_and_processes() {
    let mut env = CriEnv::start().await;
    env.import_busybox().await;
    let log_dir = env.log_dir("busy");
    let pod_cfg = pod_config("busy", &log_dir, false);
    let pod = env.run_pod(pod_cfg.clone()).await;
    let ip = env.pod_ip(&pod).await;
    assert!(!ip.is_empty(), "the pod has an address");
    let spinner = env
        .start_container(
            &pod,
            &pod_cfg,
            container_config("spin", &["/bin/sh", "-c", "while :; do :; done"]),
        )
        .await;

    let pod_stats = |env: &mut CriEnv| {
        let mut rt = env.runtime.clone();
        let pod = pod.clone();
        async move {
            rt.pod_sandbox_stats(cri::PodSandboxStatsRequest {
                pod_sandbox_id: pod,
            })
            .await
            .expect("PodSandboxStats")
            .into_inner()
            .stats
            .and_then(|s| s.linux)
            .expect("linux pod stats")
        }
    };
    let rx_bytes = |s: &cri::LinuxPodSandboxStats| {
        s.network
            .as_ref()
            .and_then(|n| n.default_interface.as_ref())
            .and_then(|i| i.rx_bytes.as_ref())
            .map(|v| v.value)
            .expect("rx bytes of the default interface")
    };

    let first = pod_stats(&mut env).await;
    let net = first.network.as_ref().expect("network stats");
    assert_eq!(
        net.default_interface.as_ref().map(|i| i.name.as_str()),
        Some("eth0")
    );
    assert!(net.interfaces.iter().all(|i| i.name != "lo"), "{net:?}");
    // The pause and the shell, once the runtime's own start-up processes are gone.
    let processes = |s: &cri::LinuxPodSandboxStats| {
        s.process
            .as_ref()
            .and_then(|p| p.process_count.as_ref())
            .map(|v| v.value)
    };
    let mut last = None;
    for _ in 0..50 {
        last = processes(&pod_stats(&mut env).await);
        if last == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, Some(2), "{first:?}");
    let rx_before = rx_bytes(&first);

    // Traffic into the pod's namespace: 20 datagrams of 1000 bytes from the host.
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    for _ in 0..20 {
        sock.send_to(&[7u8; 1000], (ip.as_str(), 9)).expect("send");
    }
    let first_container = env.container_stats(&spinner).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let second = pod_stats(&mut env).await;
    assert!(
        rx_bytes(&second) >= rx_before + 20_000,
        "rx bytes {} -> {}",
        rx_before,
        rx_bytes(&second)
    );
    let pod_cores = second
        .cpu
        .as_ref()
        .and_then(|c| c.usage_nano_cores.as_ref())
        .map(|v| v.value)
        .expect("pod usage in nano-cores");
    let c = env.container_stats(&spinner).await;
    let cores = c
        .cpu
        .as_ref()
        .and_then(|c| c.usage_nano_cores.as_ref())
        .map(|v| v.value)
        .expect("container usage in nano-cores");
    // A busy loop over about a second: a good part of a core, never more than the machine.
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert!(
        (100_000_000..=ncpu * 1_100_000_000).contains(&cores),
        "spinner used {cores} nano-cores"
    );
    assert!(
        (100_000_000..=ncpu * 1_100_000_000).contains(&pod_cores),
        "pod used {pod_cores} nano-cores"
    );
    let total = |s: &cri::ContainerStats| {
        s.cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map_or(0, |v| v.value)
    };
    assert!(total(&c) > total(&first_container));

    env.remove_pod(&pod).await;
    env.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_during_downtime_are_collected() {
    let mut env = CriEnv::start().await;
    env.import_busybox().await;
    let log_dir = env.log_dir("downtime");
    let pod_cfg = pod_config("downtime", &log_dir, true);
    let pod = env.run_pod(pod_cfg.clone()).await;
    let quitter = env
        .start_container(
            &pod,
            &pod_cfg,
            container_config(
                "quitter",
                &[
                    "/bin/sh",
                    "-c",
                    "while [ ! -e /go ]; do /bin/busybox sleep 0.1; done; exit 3",
                ],
            ),
        )
        .await;
    let orphan = env
        .start_container(&pod, &pod_cfg, container_config("orphan", &SLEEPER))
        .await;
    let quitter_pid = task_pid(&env, &quitter).await.expect("quitter pid");
    let orphan_pid = task_pid(&env, &orphan).await.expect("orphan pid");
    let quitter_shim = shim_pid(&env.daemon, "k8s.io", &quitter).expect("quitter's shim");
    let orphan_shim = shim_pid(&env.daemon, "k8s.io", &orphan).expect("orphan's shim");

    env.daemon.stop();
    // While supd is down, one container exits (told to through a file in its root) and
    // another's shim dies.
    std::fs::write(format!("/proc/{quitter_pid}/root/go"), b"").expect("tell the quitter");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(orphan_shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the orphan's shim");
    wait_for("the quitter to exit", Duration::from_secs(10), || async {
        (!alive(quitter_pid)).then_some(())
    })
    .await;
    wait_for(
        "the orphan's shim to die",
        Duration::from_secs(10),
        || async { (!alive(orphan_shim)).then_some(()) },
    )
    .await;
    env.daemon.start_again().await;
    env.reconnect().await;

    // Without any Stop or Remove: the exit is recorded and its task and shim are gone.
    let st = wait_exited(&mut env, &quitter).await;
    assert_eq!(st.exit_code, 3, "{st:?}");
    assert_eq!(st.reason, "Error", "{st:?}");
    assert!(st.finished_at >= st.started_at, "{st:?}");
    wait_for("the quitter's task to go", Duration::from_secs(10), || {
        let env = &env;
        let q = quitter.clone();
        async move { task_pid(env, &q).await.is_none().then_some(()) }
    })
    .await;
    wait_for(
        "the quitter's shim to exit",
        Duration::from_secs(10),
        || async { (!alive(quitter_shim)).then_some(()) },
    )
    .await;
    // The orphan's exit status died with its shim; its process was cleaned up.
    let st = wait_exited(&mut env, &orphan).await;
    assert_eq!(st.exit_code, 255, "{st:?}");
    assert_eq!(st.reason, "Unknown", "{st:?}");
    wait_for("the orphan to be gone", Duration::from_secs(10), || async {
        (!alive(orphan_pid)).then_some(())
    })
    .await;
    // The pod still runs new containers.
    let next = env
        .start_container(&pod, &pod_cfg, container_config("next", &SLEEPER))
        .await;
    let r = env.exec(&next, &["/bin/busybox", "echo", "ok"]).await;
    assert_eq!(r.stdout, b"ok\n");
    env.remove_pod(&pod).await;
    env.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_rotation_with_reopen() {
    let mut env = CriEnv::start().await;
    env.import_busybox().await;
    let log_dir = env.log_dir("rotated");
    let pod_cfg = pod_config("rotated", &log_dir, true);
    let pod = env.run_pod(pod_cfg.clone()).await;
    let talker = env
        .start_container(
            &pod,
            &pod_cfg,
            container_config(
                "talker",
                &[
                    "/bin/sh",
                    "-c",
                    "echo one; while [ ! -e /next ]; do /bin/busybox sleep 0.1; done; \
                     echo two; exec /bin/busybox sleep 1000",
                ],
            ),
        )
        .await;
    let log = log_dir.join("talker.log");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    wait_for("the first line", Duration::from_secs(10), || async {
        read(&log).contains("stdout F one").then_some(())
    })
    .await;

    // The kubelet's rotation: rename, then ask for a reopen.
    let rotated = log_dir.join("talker.log.20261122-000000");
    std::fs::rename(&log, &rotated).expect("rename the log");
    env.runtime
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: talker.clone(),
        })
        .await
        .expect("ReopenContainerLog");
    assert!(
        log.exists(),
        "the new log file exists once the reopen answers"
    );
    let pid = task_pid(&env, &talker).await.expect("talker pid");
    std::fs::write(format!("/proc/{pid}/root/next"), b"").expect("tell the talker");
    wait_for("the second line", Duration::from_secs(10), || async {
        read(&log).contains("stdout F two").then_some(())
    })
    .await;
    let old = read(&rotated);
    assert!(
        old.contains("stdout F one") && !old.contains("two"),
        "{old}"
    );
    assert!(!read(&log).contains("one"), "{}", read(&log));

    // Only a running container's log can be reopened.
    env.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: talker.clone(),
            timeout: 0,
        })
        .await
        .expect("StopContainer");
    let err = env
        .runtime
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: talker.clone(),
        })
        .await
        .expect_err("a stopped container's log is not reopened");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    env.remove_pod(&pod).await;
    env.assert_clean().await;
}

/// Whether systemd runs this machine (PID 1): the systemd cgroup driver needs it.
fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// `systemctl ARGS...`: its status and stdout.
fn systemctl(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("systemctl")
        .args(args)
        .output()
        .expect("run systemctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Our units of `pattern` that systemd still knows, whatever their state.
fn units(pattern: &str) -> Vec<String> {
    let (_, out) = systemctl(&["list-units", "--all", "--plain", "--no-legend", pattern]);
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Stops the test's slice tree even when it fails halfway.
struct Slice(String);

impl Drop for Slice {
    fn drop(&mut self) {
        let _ = systemctl(&["stop", &self.0]);
    }
}

/// The systemd cgroup driver (`[cri] systemd_cgroup = true`), as a kubelet with
/// `cgroupDriver: systemd` drives it: the pod's slice made by the kubelet, the pause process
/// and each container a scope in it that systemd made for the runtime; limits, stats
/// (through crictl), OOM and updates on those cgroups; no unit left once the pod is gone.
/// Needs systemd as PID 1 with cgroup v2: it runs in the cgroup v2 guest (deploy/test-v2.sh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_driver_puts_pods_in_slices_and_scopes() {
    if !systemd_runs() || !unified() {
        assert!(
            !sup_tests::v2_required(),
            "the cgroup v2 run needs systemd as PID 1"
        );
        eprintln!("skipped: needs systemd as PID 1 on cgroup v2 (deploy/test-v2.sh runs it)");
        return;
    }
    let mut env = CriEnv::start_with_cri("systemd_cgroup = true", "").await;
    let config = env
        .runtime
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .expect("RuntimeConfig")
        .into_inner();
    assert_eq!(
        config.linux.map(|l| l.cgroup_driver),
        Some(cri::CgroupDriver::Systemd as i32)
    );
    env.import_busybox().await;

    // The kubelet makes the pod's slice before it runs the pod (each dash a level).
    let top = format!("suptest{}.slice", std::process::id());
    let slice = format!("suptest{}-pod1.slice", std::process::id());
    let _slice = Slice(top.clone());
    let (started, _) = systemctl(&["start", &slice]);
    assert!(started, "systemctl start {slice}");
    let slice_dir = format!("/{top}/{slice}");

    let log_dir = env.log_dir("sysd");
    let mut pod_cfg = pod_config("sysd", &log_dir, false);
    if let Some(l) = pod_cfg.linux.as_mut() {
        l.cgroup_parent = slice.clone();
    }
    let pod = env.run_pod(pod_cfg.clone()).await;
    let pause = task_pid(&env, &pod).await.expect("pause pid");
    assert_eq!(
        memory_cgroup_of(pause),
        format!("{slice_dir}/sup-{pod}.scope")
    );

    // Half a CPU at most (the quota below), all of it spent.
    let mut busy = container_config("busy", &["/bin/sh", "-c", "while :; do :; done"]);
    busy.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            ..Default::default()
        }),
        ..Default::default()
    });
    let c = env.start_container(&pod, &pod_cfg, busy).await;
    let pid = task_pid(&env, &c).await.expect("container pid");
    let scope = format!("sup-{c}.scope");
    let cgroup = format!("{slice_dir}/{scope}");
    assert_eq!(memory_cgroup_of(pid), cgroup);
    let (active, _) = systemctl(&["is-active", "--quiet", &scope]);
    assert!(active, "{scope} is active");
    let (_, shown) = systemctl(&["show", "-p", "Slice", "-p", "MemoryMax", &scope]);
    assert!(shown.contains(&format!("Slice={slice}")), "{shown}");
    assert!(
        shown.contains(&format!("MemoryMax={}", 64 << 20)),
        "{shown}"
    );
    let dir = PathBuf::from("/sys/fs/cgroup").join(cgroup.trim_start_matches('/'));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    assert_eq!(read("memory.max").trim(), (64u64 << 20).to_string());
    assert_eq!(read("cpu.max").trim(), "50000 100000");
    let (_, status) = systemctl(&["status", "--no-pager", "--lines=0", &slice]);
    sup_tests::report(&format!(
        "systemd driver: pod {pod} running, `systemctl status {slice}`:\n{status}"
    ));

    // crictl stats reads the scope's counters: real CPU time, a CPU rate once two readings a
    // second apart are there, and memory.
    let crictl = sup_tests::crictl::Crictl::new(
        sup_tests::bins::crictl(),
        &env.daemon.socket(),
        env.daemon.dir(),
    );
    let stats = wait_for(
        "CPU and memory in crictl stats",
        Duration::from_secs(30),
        || {
            let v = crictl.json("stats", &["--id", &c]);
            async move {
                let s = v["stats"].get(0)?.clone();
                let cpu = s["cpu"]["usageCoreNanoSeconds"]["value"]
                    .as_str()
                    .and_then(|v| v.parse::<u64>().ok())?;
                let rate = s["cpu"]["usageNanoCores"]["value"]
                    .as_str()
                    .and_then(|v| v.parse::<u64>().ok())?;
                let mem = s["memory"]["workingSetBytes"]["value"]
                    .as_str()
                    .and_then(|v| v.parse::<u64>().ok())?;
                (cpu > 0 && rate > 0 && mem > 0).then_some((cpu, mem))
            }
        },
    )
    .await;
    // (Its table starts by clearing the screen.)
    let table = crictl
        .ok(&["stats", "--id", &c])
        .replace("\x1b[2J", "")
        .replace("\x1b[H", "");
    sup_tests::report(&format!(
        "systemd driver: `crictl stats --id {c}` (CPU {} ns in all, working set {} bytes):\n{table}",
        stats.0, stats.1
    ));

    // An update reaches the scope.
    env.runtime
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: c.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 96 << 20,
                cpu_period: 100_000,
                cpu_quota: 20_000,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdateContainerResources");
    assert_eq!(read("memory.max").trim(), (96u64 << 20).to_string());
    assert_eq!(read("cpu.max").trim(), "20000 100000");

    // An OOM kill in a scope is seen as one.
    let mut hog = container_config(
        "hog",
        &[
            "/bin/busybox",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=64M",
            "count=1",
        ],
    );
    hog.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let hog = env.start_container(&pod, &pod_cfg, hog).await;
    let st = wait_exited(&mut env, &hog).await;
    assert_eq!(st.exit_code, 137, "{st:?}");
    assert_eq!(st.reason, "OOMKilled", "{st:?}");

    env.remove_pod(&pod).await;
    env.assert_clean().await;
    // Every scope went with its process; the slice is the kubelet's to remove.
    let ours: Vec<String> = [pod.as_str(), c.as_str(), hog.as_str()]
        .iter()
        .flat_map(|id| units(&format!("sup-{id}.scope")))
        .collect();
    assert!(ours.is_empty(), "units left: {ours:?}");
    let (_, after) = systemctl(&["list-units", "--all", "--no-pager", "sup-*.scope", &slice]);
    sup_tests::report(&format!(
        "systemd driver: after RemovePodSandbox, `systemctl list-units --all 'sup-*.scope' \
         {slice}`:\n{after}"
    ));
    let left: Vec<_> = std::fs::read_dir(PathBuf::from("/sys/fs/cgroup").join(&top).join(&slice))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "cgroups left in {slice}: {left:?}");
}

/// What the CRI carries for cgroup v2 reaches the container's cgroup: `unified` files as
/// given (`memory.high`), the memory + swap limit as v2's swap-only `memory.swap.max`, and
/// an update of both. On a cgroup v1 host `unified` is refused, with nothing made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_v2_resources_reach_the_cgroup() {
    let mut env = CriEnv::start().await;
    env.import_busybox().await;
    let log_dir = env.log_dir("v2res");
    let pod_cfg = pod_config("v2res", &log_dir, true);
    let pod = env.run_pod(pod_cfg.clone()).await;
    let mut cfg = container_config("c", &SLEEPER);
    cfg.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: 96 << 20,
            unified: [("memory.high".to_string(), (48u64 << 20).to_string())].into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    if !unified() {
        let err = env
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cfg),
                sandbox_config: Some(pod_cfg.clone()),
            })
            .await
            .expect_err("unified resources on cgroup v1");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("cgroup v1"), "{err:?}");
        env.remove_pod(&pod).await;
        env.assert_clean().await;
        return;
    }
    let c = env.start_container(&pod, &pod_cfg, cfg).await;
    let pid = task_pid(&env, &c).await.expect("container pid");
    let dir = memory_dir(&memory_cgroup_of(pid));
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(f).display()))
            .trim()
            .to_string()
    };
    assert_eq!(read("memory.max"), (64u64 << 20).to_string());
    assert_eq!(read("memory.high"), (48u64 << 20).to_string());
    // 96 MiB of memory and swap together: 32 MiB of swap.
    assert_eq!(read("memory.swap.max"), (32u64 << 20).to_string());
    // ContainerStatus reports them as set.
    let st = env.container_status(&c).await;
    let linux = st.resources.and_then(|r| r.linux).expect("linux resources");
    assert_eq!(linux.memory_swap_limit_in_bytes, 96 << 20);
    assert_eq!(
        linux.unified.get("memory.high").map(String::as_str),
        Some("50331648")
    );

    env.runtime
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: c.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 80 << 20,
                memory_swap_limit_in_bytes: 80 << 20,
                unified: [("memory.high".to_string(), (40u64 << 20).to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdateContainerResources");
    assert_eq!(read("memory.max"), (80u64 << 20).to_string());
    assert_eq!(read("memory.high"), (40u64 << 20).to_string());
    assert_eq!(read("memory.swap.max"), "0");

    // A file name that climbs out of the cgroup is refused.
    let mut bad = container_config("bad", &SLEEPER);
    bad.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            unified: [("../memory.max".to_string(), "1".to_string())].into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = env
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(bad),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await
        .expect_err("a unified key with ..");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    env.remove_pod(&pod).await;
    env.assert_clean().await;
}
