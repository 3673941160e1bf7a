//! Benchmark of running containers, against a baseline measured in the same run: bare
//! `runc run` of a prepared busybox bundle versus `supctl run --rm` through supd (medians and
//! their ratio), 50 detached starts, and the memory (RSS, PSS) of supd and of the shims while
//! 50 containers run. `cargo bench -p sup-tests --bench run`; SUP_BENCH_RUNS and
//! SUP_BENCH_CONTAINERS change the counts, SUP_BIN_DIR picks the binaries (otherwise the newer
//! complete build of target/release and target/debug).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use sup_tests::bare::{make_bundle, median, remove_cgroup_parent, timed};
use sup_tests::task::{self, World};

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// target/release when it holds all three binaries and its supd is at least as new as
/// target/debug's, else target/debug. Returns the directory and why it was chosen.
fn choose_binaries() -> (PathBuf, &'static str) {
    let here = sup_tests::bins::bin_dir();
    let target = here.parent().map(Path::to_path_buf).unwrap_or(here);
    let complete = |dir: &Path| {
        ["supd", "supctl", "sup-shim"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    let mtime = |dir: &Path| -> Option<SystemTime> {
        std::fs::metadata(dir.join("supd")).ok()?.modified().ok()
    };
    let (release, debug) = (target.join("release"), target.join("debug"));
    match (complete(&release), complete(&debug)) {
        (true, true) if mtime(&release) >= mtime(&debug) => (release, "newer than debug"),
        (true, true) => (debug, "newer than release"),
        (true, false) => (release, "the only complete build"),
        (false, true) => (debug, "the only complete build"),
        (false, false) => panic!(
            "no complete build (supd, supctl, sup-shim) under {}: run `cargo build --release`",
            target.display()
        ),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn bare_runc(dir: &Path, bundle: &Path, runs: usize) -> Vec<Duration> {
    let root = dir.join("runc-root");
    let run = |i: usize| {
        let mut cmd = Command::new("runc");
        cmd.arg("--root")
            .arg(&root)
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(format!("bare-{i}"));
        timed(cmd).unwrap_or_else(|e| panic!("bare runc run: {e}"))
    };
    run(usize::MAX);
    (0..runs).map(run).collect()
}

fn supctl(world: &World, args: &[&str]) -> Command {
    let mut cmd = Command::new(sup_tests::bins::supctl());
    cmd.arg("--address")
        .arg(world.daemon.socket())
        .args(["-n", &world.ns])
        .args(args);
    cmd
}

fn supctl_run_rm(world: &World, runs: usize) -> Vec<Duration> {
    let run = |id: String| {
        timed(supctl(world, &["run", "--rm", task::IMAGE, &id, "true"]))
            .unwrap_or_else(|e| panic!("supctl run --rm: {e}\nsupd log:\n{}", world.daemon.log()))
    };
    run("warm-up".into());
    (0..runs).map(|i| run(format!("rm-{i}"))).collect()
}

fn detached_starts(world: &World, n: usize) -> (Duration, Vec<Duration>) {
    let started = Instant::now();
    let each = (0..n)
        .map(|i| {
            let id = format!("bg-{i:02}");
            timed(supctl(
                world,
                &["run", "-d", task::IMAGE, &id, "sleep", "600"],
            ))
            .unwrap_or_else(|e| panic!("supctl run -d: {e}\nsupd log:\n{}", world.daemon.log()))
        })
        .collect();
    (started.elapsed(), each)
}

async fn bench() {
    let runs = count("SUP_BENCH_RUNS", 20).max(1);
    let containers = count("SUP_BENCH_CONTAINERS", 50).max(1);
    let (bins, why) = match std::env::var_os("SUP_BIN_DIR") {
        Some(dir) => (PathBuf::from(dir), "from SUP_BIN_DIR"),
        None => choose_binaries(),
    };
    // Read by the harness when it starts supd and supctl.
    std::env::set_var("SUP_BIN_DIR", &bins);
    println!("binaries: {} ({why})", bins.display());

    let scratch = tempfile::Builder::new()
        .prefix("supbench")
        .tempdir_in("/tmp")
        .expect("scratch dir");
    let cgroup_parent = format!("sup-bench-{}", std::process::id());
    let bundle = make_bundle(scratch.path(), &cgroup_parent, &["true"]);
    let mut bare = bare_runc(scratch.path(), &bundle, runs);
    remove_cgroup_parent(&cgroup_parent);
    eprintln!(
        "bare runc run: {runs} runs, median {}",
        ms(median(&mut bare))
    );

    let world = World::start().await;
    let mut through_sup = supctl_run_rm(&world, runs);
    eprintln!(
        "supctl run --rm: {runs} runs, median {}",
        ms(median(&mut through_sup))
    );
    let (total, mut each) = detached_starts(&world, containers);
    eprintln!("{containers} detached starts: {}", ms(total));

    let supd = world.daemon.pid().expect("supd pid");
    let (supd_rss, supd_pss) = task::rss_pss_kib(supd).unwrap_or((0, 0));
    let shims = task::shim_pids(world.daemon.dir());
    let (shim_rss, shim_pss) = shims
        .iter()
        .filter_map(|&p| task::rss_pss_kib(p))
        .fold((0, 0), |(r, p), (r1, p1)| (r + r1, p + p1));
    let n_shims = shims.len().max(1) as u64;

    let (bare_med, sup_med) = (median(&mut bare), median(&mut through_sup));
    let ratio = sup_med.as_secs_f64() / bare_med.as_secs_f64().max(f64::EPSILON);
    println!();
    println!(
        "{:<44} {:>6} {:>12} {:>12} {:>12}",
        "start and run `true`", "runs", "median", "min", "max"
    );
    for (name, samples, med) in [
        ("bare runc run", &bare, bare_med),
        (
            "supctl run --rm (supd + sup-shim + runc)",
            &through_sup,
            sup_med,
        ),
    ] {
        println!(
            "{:<44} {:>6} {:>12} {:>12} {:>12}",
            name,
            samples.len(),
            ms(med),
            ms(samples.first().copied().unwrap_or_default()),
            ms(samples.last().copied().unwrap_or_default())
        );
    }
    println!(
        "{:<44} {:>6} {:>12}",
        "ratio supctl / runc",
        "",
        format!("{ratio:.2}x")
    );
    println!();
    println!(
        "{containers} detached starts (supctl run -d ... sleep 600): total {}, median {} per \
         container",
        ms(total),
        ms(median(&mut each))
    );
    println!();
    println!(
        "memory with {containers} containers running ({} shims found)",
        shims.len()
    );
    println!("{:<28} {:>12} {:>12}", "", "RSS", "PSS");
    println!("{:<28} {:>12} {:>12}", "supd", mib(supd_rss), mib(supd_pss));
    println!(
        "{:<28} {:>12} {:>12}",
        "shims, sum",
        mib(shim_rss),
        mib(shim_pss)
    );
    println!(
        "{:<28} {:>12} {:>12}",
        "shim, mean",
        mib(shim_rss / n_shims),
        mib(shim_pss / n_shims)
    );
    world.finish().await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(bench());
}
