//! Benchmark of supd's restart under load: 100 containers running `sleep 3600` (started through
//! the API in parallel batches), supd killed with SIGKILL and started again, measured against
//! the same restart with no task (baseline, same run): time until the socket answers Version,
//! until the first successful Tasks.List, and until every task is listed running; and supd's
//! memory before the kill and after the reconnect. Everything is force-deleted at the end.
//! `cargo bench -p sup-tests --bench reconnect`; SUP_BENCH_CONTAINERS changes the count,
//! SUP_BIN_DIR picks the binaries (else target/release when it holds all three, else debug).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sup_client::api;
use sup_tests::chaos::{bring_up, list_tasks, signal_supd, Down};
use sup_tests::task::{command, World};

/// Containers started at once.
const BATCH: usize = 10;
/// How long all tasks get to be listed running after the restart.
const LISTED_TIMEOUT: Duration = Duration::from_secs(120);

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Points SUP_BIN_DIR at target/release when it holds supd, supctl and sup-shim, else at
/// target/debug, unless it is set already; returns the directory used.
fn choose_binaries() -> PathBuf {
    if let Some(dir) = std::env::var_os("SUP_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let here = sup_tests::bins::bin_dir();
    let target = here.parent().map(Path::to_path_buf).unwrap_or(here);
    let complete = |dir: &Path| {
        ["supd", "supctl", "sup-shim"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    let dir = [target.join("release"), target.join("debug")]
        .into_iter()
        .find(|d| complete(d))
        .unwrap_or_else(|| {
            panic!(
                "no directory under {} holds supd, supctl and sup-shim: `cargo build --release`",
                target.display()
            )
        });
    // Set before any thread is started: nothing reads the environment concurrently.
    std::env::set_var("SUP_BIN_DIR", &dir);
    dir
}

/// Resident memory of a process, in KiB, from /proc/PID/status.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// What one restart took.
struct Restart {
    version: Duration,
    first_list: Duration,
    all_running: Duration,
    listed: usize,
}

/// Kills supd with SIGKILL, starts it again, and times it until `want` tasks are running.
async fn restart(world: &mut World, want: usize) -> Restart {
    let pid = world.daemon.pid().expect("supd is running");
    signal_supd(pid, Down::Kill).await;
    let started = Instant::now();
    bring_up(world).await;
    let version = started.elapsed();
    let mut first_list = None;
    let mut listed = 0;
    loop {
        if let Ok(tasks) = list_tasks(&world.client).await {
            first_list.get_or_insert_with(|| started.elapsed());
            listed = tasks
                .iter()
                .filter(|t| t.status == api::TaskStatus::Running as i32)
                .count();
            if listed >= want {
                break;
            }
        }
        if started.elapsed() > LISTED_TIMEOUT {
            eprintln!("only {listed} of {want} tasks running after {LISTED_TIMEOUT:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Restart {
        version,
        first_list: first_list.unwrap_or(LISTED_TIMEOUT),
        all_running: started.elapsed(),
        listed,
    }
}

async fn start_containers(world: &World, n: usize) -> Duration {
    let started = Instant::now();
    let ids: Vec<String> = (0..n).map(|i| format!("c{i:03}")).collect();
    for batch in ids.chunks(BATCH) {
        futures::future::join_all(batch.iter().map(|id| async move {
            world.prepare(id, command(&["sleep", "3600"]), false).await;
            world.start_task(id, "").await;
        }))
        .await;
    }
    started.elapsed()
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        "-".into()
    } else {
        format!("{:.1}x", a.as_secs_f64() / b.as_secs_f64())
    }
}

async fn bench(n: usize) {
    let mut world = World::start().await;
    let baseline = restart(&mut world, 0).await;
    let took = start_containers(&world, n).await;
    println!("started {n} containers in batches of {BATCH} in {took:.2?}");
    let before = world.daemon.pid().and_then(rss_kib);
    let loaded = restart(&mut world, n).await;
    let after = world.daemon.pid().and_then(rss_kib);
    println!();
    println!(
        "{:<38} {:>12} {:>14} {:>8}",
        "after SIGKILL + restart, until",
        "0 tasks (ms)",
        format!("{n} tasks (ms)"),
        "ratio"
    );
    let rows = [
        (
            "the socket answers Version",
            baseline.version,
            loaded.version,
        ),
        (
            "the first Tasks.List succeeds",
            baseline.first_list,
            loaded.first_list,
        ),
        (
            "every task is listed running",
            baseline.all_running,
            loaded.all_running,
        ),
    ];
    for (what, base, with) in rows {
        println!(
            "{what:<38} {:>12} {:>14} {:>8}",
            ms(base),
            ms(with),
            ratio(with, base)
        );
    }
    println!(
        "tasks listed running after the restart: {} of {n}",
        loaded.listed
    );
    let kib = |v: Option<u64>| v.map_or("?".to_string(), |k| format!("{k} KiB"));
    println!(
        "supd RSS with {n} tasks: {} before the kill, {} after the reconnect",
        kib(before),
        kib(after)
    );
    let cleanup = Instant::now();
    world.finish().await;
    println!(
        "force-deleted {n} tasks and containers in {:.2?}",
        cleanup.elapsed()
    );
}

fn main() {
    let n = count("SUP_BENCH_CONTAINERS", 100);
    let dir = choose_binaries();
    println!("binaries: {}", dir.display());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(bench(n));
}
