//! Resources and cgroups through the API: pause freezes and resume thaws, metrics of a busy
//! container, a memory limit that ends in an OOM kill, and a pids limit that stops forks.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use sup_client::api;
use sup_tests::rpc::eventually;
use sup_tests::task::{self, sh, show, World};

const MIB: i64 = 1024 * 1024;

fn counter(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

async fn status_becomes(world: &World, id: &str, status: api::TaskStatus) {
    let reached = eventually(Duration::from_secs(10), || async {
        let got = world.get(id, "").await;
        (got.status == status as i32).then_some(()).ok_or(got)
    })
    .await;
    assert!(
        reached.is_ok(),
        "{id}: status never became {status:?}: {reached:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_freezes_and_resume_thaws() {
    let world = World::start().await;
    let out = world.daemon.dir().join("counter");
    std::fs::create_dir(&out).unwrap();
    let mut config = sh("i=0; while true; do i=$((i+1)); echo $i > /out/count; usleep 20000; done");
    config.mounts = vec![api::MountSpec {
        source: out.to_string_lossy().into_owned(),
        destination: "/out".into(),
        ..Default::default()
    }];
    world.prepare("ticking", config, false).await;
    let mut events = world.subscribe("^/tasks/(paused|resumed)$").await;
    world.start_task("ticking", "").await;
    let count = out.join("count");
    let moving = eventually(Duration::from_secs(20), || async {
        (counter(&count) >= 3).then_some(()).ok_or(counter(&count))
    })
    .await;
    assert!(moving.is_ok(), "the counter never advanced: {moving:?}");

    world
        .client
        .tasks()
        .pause(api::PauseTaskRequest {
            container_id: "ticking".into(),
        })
        .await
        .unwrap();
    status_becomes(&world, "ticking", api::TaskStatus::Paused).await;
    let frozen = counter(&count);
    // Nothing to wait for here: the point is that nothing happens over a span in which the
    // loop would have counted about 25 times.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(counter(&count), frozen, "the counter moved while paused");

    world
        .client
        .tasks()
        .resume(api::ResumeTaskRequest {
            container_id: "ticking".into(),
        })
        .await
        .unwrap();
    status_becomes(&world, "ticking", api::TaskStatus::Running).await;
    let thawed = eventually(Duration::from_secs(10), || async {
        (counter(&count) > frozen)
            .then_some(())
            .ok_or(counter(&count))
    })
    .await;
    assert!(
        thawed.is_ok(),
        "the counter stayed at {frozen} after resume"
    );

    let mut topics = Vec::new();
    let read = async {
        while let Some(env) = events.message().await.unwrap() {
            topics.push(env.topic);
            if topics.len() == 2 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    assert_eq!(topics, ["/tasks/paused", "/tasks/resumed"]);

    // A paused task can still be deleted with force.
    world
        .client
        .tasks()
        .pause(api::PauseTaskRequest {
            container_id: "ticking".into(),
        })
        .await
        .unwrap();
    status_becomes(&world, "ticking", api::TaskStatus::Paused).await;
    let deleted = world.delete_task("ticking", true).await.unwrap();
    assert_eq!(deleted.exit_status, 137, "{deleted:?}");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_a_busy_container() {
    let world = World::start().await;
    let mut config = sh("while true; do :; done");
    config.resources = Some(api::Resources {
        memory_limit: 64 * MIB,
        pids_limit: 20,
        ..Default::default()
    });
    world.prepare("spinner", config, false).await;
    world.start_task("spinner", "").await;
    let sample = || world.metrics("spinner");
    let first = eventually(Duration::from_secs(10), || async {
        let m = sample().await;
        let cpu = m.cpu.unwrap_or_default().usage_total;
        let mem = m.memory.unwrap_or_default().usage;
        (cpu > 0 && mem > 0).then_some(m.clone()).ok_or(m)
    })
    .await
    .unwrap_or_else(|m| panic!("metrics stayed empty: {m:#?}"));
    assert_eq!(first.container_id, "spinner");
    let memory = first.memory.unwrap();
    assert_eq!(memory.limit, 64 * 1024 * 1024, "memory limit: {memory:?}");
    let pids = first.pids.unwrap_or_default();
    assert_eq!(pids.limit, 20, "pids: {pids:?}");
    assert!(pids.current >= 1, "pids: {pids:?}");
    let cpu0 = first.cpu.unwrap().usage_total;
    let grows = eventually(Duration::from_secs(10), || async {
        let now = sample().await.cpu.unwrap_or_default().usage_total;
        (now > cpu0).then_some(()).ok_or(now)
    })
    .await;
    assert!(
        grows.is_ok(),
        "cpu usage stuck at {cpu0} for a spinning loop"
    );
    // Pressure (PSI) where the kernel keeps it for cgroups: cgroup v2 with PSI on.
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let psi = v2 && std::fs::read_to_string("/proc/pressure/cpu").is_ok();
    assert!(
        !sup_tests::v2_required() || psi,
        "the cgroup v2 run needs PSI"
    );
    let m = sample().await;
    let cpu_pressure = m.cpu.unwrap_or_default().pressure;
    let memory_pressure = m.memory.unwrap_or_default().pressure;
    if psi {
        let cpu = cpu_pressure.expect("CPU pressure on cgroup v2 with PSI");
        assert!(cpu.some_avg10 >= 0.0 && cpu.some_avg10 <= 100.0, "{cpu:?}");
        memory_pressure.expect("memory pressure on cgroup v2 with PSI");
    } else {
        assert_eq!(cpu_pressure, None, "no PSI here, yet CPU pressure");
    }
    // Without ids: every task of the namespace.
    let all = world
        .client
        .tasks()
        .metrics(api::MetricsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .metrics;
    let ids: Vec<&str> = all.iter().map(|m| m.container_id.as_str()).collect();
    assert_eq!(ids, ["spinner"]);
    world.finish().await;
}

/// 16 MiB is not enough for 64 MB in a shell variable: the kernel kills the shell, and the
/// API says so (an OOM event, exit 137, reason "OOMKilled").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_ends_in_oom_kill() {
    let world = World::start().await;
    let mut config = sh(r#"x=$(head -c 64000000 /dev/zero | tr "\0" a); echo survived"#);
    config.resources = Some(api::Resources {
        memory_limit: 16 * MIB,
        ..Default::default()
    });
    world.prepare("hog", config, false).await;
    let mut events = world.subscribe("^/tasks/(oom|exit)$").await;
    let attached = world.attach("hog", "", false).await;
    world.start_task("hog", "").await;
    let out = attached.finish(task::EXIT_TIMEOUT).await;
    assert!(
        !out.stdout.ends_with(b"survived\n"),
        "the shell survived 64 MB under a 16 MiB limit: {}",
        show(&out.stdout)
    );
    let wait = world.wait("hog", "").await;
    assert_eq!(wait.exit_status, 137, "Wait: {wait:?}");
    let mut seen = Vec::new();
    let read = async {
        while let Some(env) = events.message().await.unwrap() {
            let exit = env.topic == "/tasks/exit";
            seen.push(env);
            if exit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    let topics: Vec<&str> = seen.iter().map(|e| e.topic.as_str()).collect();
    assert!(
        topics.contains(&"/tasks/oom"),
        "no /tasks/oom event; got {seen:#?}"
    );
    assert_eq!(topics.last(), Some(&"/tasks/exit"), "{seen:#?}");
    let got = world.get("hog", "").await;
    assert_eq!(
        (got.exit_status, got.reason.as_str()),
        (137, "OOMKilled"),
        "Get after the OOM kill: {got:?}"
    );
    assert_eq!(wait.reason, "OOMKilled", "Wait's reason: {wait:?}");
    let deleted = world.delete_task("hog", false).await.unwrap();
    assert_eq!(deleted.exit_status, 137);
    world.finish().await;
}

/// A child the OOM killer takes while the container goes on is counted in its metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kills_are_counted() {
    let world = World::start().await;
    let mut config =
        sh("/bin/busybox dd if=/dev/zero of=/dev/null bs=64M count=1; exec /bin/busybox sleep 600");
    config.resources = Some(api::Resources {
        memory_limit: 16 * MIB,
        ..Default::default()
    });
    world.prepare("survivor", config, false).await;
    world.start_task("survivor", "").await;
    let counted = eventually(Duration::from_secs(10), || async {
        let m = world.metrics("survivor").await;
        let kills = m.memory.map_or(0, |m| m.oom_kills);
        (kills == 1).then_some(()).ok_or(m)
    })
    .await;
    assert!(counted.is_ok(), "no OOM kill counted: {counted:?}");
    // The shell itself lives on.
    let got = world.get("survivor", "").await;
    assert_eq!(got.status, api::TaskStatus::Running as i32, "{got:?}");
    world
        .kill("survivor", "", nix::sys::signal::Signal::SIGKILL)
        .await;
    world.wait("survivor", "").await;
    world.delete_task("survivor", false).await.unwrap();
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pids_limit_stops_forks() {
    let world = World::start().await;
    let mut config =
        sh("i=0; while [ $i -lt 20 ]; do sleep 60 & i=$((i+1)); done; echo all-started");
    config.resources = Some(api::Resources {
        pids_limit: 5,
        ..Default::default()
    });
    let ran = world.run("forker", config).await;
    assert_eq!(
        (ran.output.stdout.as_slice(), ran.output.stderr.as_slice()),
        (
            &b""[..],
            &b"sh: can't fork: Resource temporarily unavailable\n"[..]
        ),
        "stdout {} stderr {}",
        show(&ran.output.stdout),
        show(&ran.output.stderr)
    );
    assert_eq!(ran.wait.exit_status, 2, "{:?}", ran.wait);
    world.finish().await;
}

/// A container with `systemd_cgroup` (`supctl run --systemd-cgroup`) is the systemd scope
/// `sup-<namespace>-<id>.scope` in `system.slice`: limited as asked, measured, frozen by pause,
/// updated, its OOM kill reported, and the scope gone with the task. Needs systemd as PID 1
/// on cgroup v2: it runs in the cgroup v2 guest (deploy/test-v2.sh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_in_a_systemd_scope() {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if !v2 || !Path::new("/run/systemd/system").is_dir() {
        assert!(
            !sup_tests::v2_required(),
            "the cgroup v2 run needs systemd as PID 1"
        );
        eprintln!("skipped: needs systemd as PID 1 on cgroup v2 (deploy/test-v2.sh runs it)");
        return;
    }
    let world = World::start().await;
    let mut config = sh("while true; do :; done");
    config.resources = Some(api::Resources {
        memory_limit: 32 * MIB,
        pids_limit: 10,
        ..Default::default()
    });
    config.systemd_cgroup = true;
    world.prepare("scoped", config, false).await;
    let pid = world.start_task("scoped", "").await;
    let unit = format!("sup-{}-scoped.scope", world.ns);
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_eq!(cgroup.trim(), format!("0::/system.slice/{unit}"));
    let dir = Path::new("/sys/fs/cgroup/system.slice").join(&unit);
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("memory.max"), (32 * MIB).to_string());
    assert_eq!(read("pids.max"), "10");
    let active = std::process::Command::new("systemctl")
        .args(["is-active", "--quiet", &unit])
        .status()
        .unwrap();
    assert!(active.success(), "{unit} is active");

    let busy = eventually(Duration::from_secs(10), || async {
        let m = world.metrics("scoped").await;
        let cpu = m.cpu.unwrap_or_default().usage_total;
        (cpu > 0).then_some(m.clone()).ok_or(m)
    })
    .await
    .unwrap_or_else(|m| panic!("no CPU time in the scope's metrics: {m:#?}"));
    assert_eq!(busy.memory.unwrap_or_default().limit, 32 * 1024 * 1024);

    world
        .client
        .tasks()
        .pause(api::PauseTaskRequest {
            container_id: "scoped".into(),
        })
        .await
        .unwrap();
    status_becomes(&world, "scoped", api::TaskStatus::Paused).await;
    assert_eq!(read("cgroup.freeze"), "1");
    world
        .client
        .tasks()
        .resume(api::ResumeTaskRequest {
            container_id: "scoped".into(),
        })
        .await
        .unwrap();
    status_becomes(&world, "scoped", api::TaskStatus::Running).await;
    assert_eq!(read("cgroup.freeze"), "0");

    world
        .client
        .tasks()
        .update(api::UpdateTaskRequest {
            container_id: "scoped".into(),
            resources: Some(api::Resources {
                memory_limit: 48 * MIB,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    assert_eq!(read("memory.max"), (48 * MIB).to_string());

    world
        .kill("scoped", "", nix::sys::signal::Signal::SIGKILL)
        .await;
    world.wait("scoped", "").await;
    world.delete_task("scoped", false).await.unwrap();

    // The OOM kill of a scope's init, which systemd removes at once, is still reported.
    let mut hog = sh(r#"x=$(head -c 64000000 /dev/zero | tr "\0" a); echo survived"#);
    hog.resources = Some(api::Resources {
        memory_limit: 16 * MIB,
        ..Default::default()
    });
    hog.systemd_cgroup = true;
    world.prepare("scoped-hog", hog, false).await;
    world.start_task("scoped-hog", "").await;
    let wait = world.wait("scoped-hog", "").await;
    assert_eq!(
        (wait.exit_status, wait.reason.as_str()),
        (137, "OOMKilled"),
        "{wait:?}"
    );
    world.delete_task("scoped-hog", false).await.unwrap();

    for unit in [unit, format!("sup-{}-scoped-hog.scope", world.ns)] {
        let out = std::process::Command::new("systemctl")
            .args(["list-units", "--all", "--plain", "--no-legend", &unit])
            .output()
            .unwrap();
        assert!(out.stdout.is_empty(), "{unit} left: {}", show(&out.stdout));
    }
    world.finish().await;
}
