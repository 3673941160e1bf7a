//! supd restarted (after SIGKILL or SIGTERM) under running containers: they keep running with
//! the same pids and shims, an exit that happened while supd was down is reported with its
//! code and time, the logs have no gap, and wait, kill, delete, exec, attach and logs all
//! work on the restarted daemon. And an import cut short by a SIGKILL leaves nothing listed.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use sup_client::api;
use sup_tests::chaos::{
    bring_up, get_task, list_tasks, log_lines, metadata_problems, shim_pid, status_name, take_down,
    task_dir, time_of, Down, EventLog, LogLine, Proc, Rng, GONE_TIMEOUT,
};
use sup_tests::image::name_annotations;
use sup_tests::rpc::{self, eventually};
use sup_tests::task::{command, sh, show, World, EXIT_TIMEOUT};
use sup_tests::{Compression, Daemon, ImageBuilder, LayerBuilder, OciArchive};
use tokio_stream::wrappers::ReceiverStream;

const RUNNING: i32 = api::TaskStatus::Running as i32;
const STOPPED: i32 = api::TaskStatus::Stopped as i32;

/// Prints a numbered line every 100 ms.
const TICKER: &str = "i=0; while true; do echo \"tick $i\"; i=$((i+1)); usleep 100000; done";
/// Exits with 7 once the test drops a file in its root: the test makes that happen while
/// supd is down.
const SEVEN: &str = "until test -e /seven.go; do usleep 20000; done; exit 7";
/// How long supd stays down once the exit has happened: the ticker prints ~12 lines meanwhile.
const DOWNTIME: Duration = Duration::from_millis(1200);

/// A started container's init and shim.
struct Started {
    pid: u32,
    init: Proc,
    shim: Proc,
}

async fn start(world: &World, id: &str, config: api::ContainerConfig) -> Started {
    world.prepare(id, config, false).await;
    let pid = world.start_task(id, "").await;
    let shim = shim_pid(&world.daemon, &world.ns, id)
        .and_then(Proc::of)
        .unwrap_or_else(|| panic!("{id}: no live shim named by its shim.pid"));
    Started {
        pid,
        init: Proc::of(pid).unwrap_or_else(|| panic!("{id}: init {pid} is not running")),
        shim,
    }
}

/// The numbers of the "tick N" lines.
fn ticks(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
        .collect()
}

fn assert_consecutive(numbers: &[u64], what: &str) {
    for (i, n) in numbers.iter().enumerate() {
        assert_eq!(
            *n, i as u64,
            "{what}: line {i} is tick {n}, so lines are missing or repeated: {numbers:?}"
        );
    }
}

async fn ticker_log(world: &World) -> Vec<LogLine> {
    log_lines(&world.client, "ticker", "")
        .await
        .unwrap_or_else(|s| panic!("Tasks.Logs ticker: {:?}: {}", s.code(), s.message()))
}

async fn exec(world: &World, id: &str, exec_id: &str, script: &str) {
    world
        .client
        .tasks()
        .exec(api::ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            spec: Some(api::ProcessSpec {
                args: vec!["sh".into(), "-c".into(), script.into()],
                ..Default::default()
            }),
            stdin: false,
        })
        .await
        .unwrap_or_else(|s| panic!("Tasks.Exec {id}/{exec_id}: {:?}: {}", s.code(), s.message()));
}

async fn containers_survive(how: Down) {
    let mut world = World::start().await;
    let sleeper = start(&world, "sleeper", command(&["sleep", "3600"])).await;
    let ticker = start(&world, "ticker", sh(TICKER)).await;
    let seven = start(&world, "seven", sh(SEVEN)).await;
    let logged_before = eventually(Duration::from_secs(10), || async {
        let n = ticks(&lines_text(&ticker_log(&world).await)).len();
        (n >= 3).then_some(n).ok_or(n)
    })
    .await
    .unwrap_or_else(|n| panic!("the ticker logged {n} lines in 10 s"));

    let down_at = SystemTime::now();
    take_down(&mut world.daemon, how).await;
    let rootfs = task_dir(&world.daemon, &world.ns, "seven").join("bundle/rootfs");
    std::fs::write(rootfs.join("seven.go"), "go").unwrap();
    assert!(
        seven.init.gone_within(GONE_TIMEOUT).await,
        "seven did not exit while supd was down"
    );
    tokio::time::sleep(DOWNTIME).await;
    for (id, s) in [("sleeper", &sleeper), ("ticker", &ticker)] {
        assert!(s.init.alive(), "{id}: init died with supd ({how:?})");
        assert!(s.shim.alive(), "{id}: shim died with supd ({how:?})");
    }
    let down_for = bring_up(&mut world).await;
    let up_at = SystemTime::now();
    eprintln!("supd answered {down_for:?} after its restart");
    let events = EventLog::open(&world).await;

    // The task list after the restart: the same processes, the exit that happened meanwhile.
    let listed: BTreeMap<String, api::Process> = list_tasks(&world.client)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.container_id.clone(), p))
        .collect();
    let ids: Vec<&String> = listed.keys().collect();
    assert_eq!(
        ids,
        ["seven", "sleeper", "ticker"],
        "Tasks.List: {listed:#?}"
    );
    for (id, s) in [("sleeper", &sleeper), ("ticker", &ticker)] {
        let p = &listed[id];
        assert_eq!(
            (status_name(p), p.pid),
            ("running", s.pid),
            "{id} in Tasks.List: {p:?}"
        );
        let got = get_task(&world.client, id, "").await.unwrap();
        assert_eq!(
            (got.status, got.pid),
            (RUNNING, s.pid),
            "Tasks.Get {id}: {got:?}"
        );
        assert!(
            s.init.alive(),
            "{id}: init {} is not the same process",
            s.pid
        );
        assert!(s.shim.alive(), "{id}: shim {} is gone", s.shim.pid);
        assert_eq!(
            shim_pid(&world.daemon, &world.ns, id),
            Some(s.shim.pid),
            "{id}: its shim.pid changed"
        );
    }
    let p = &listed["seven"];
    assert_eq!(
        (status_name(p), p.exit_status),
        ("stopped", 7),
        "seven in Tasks.List: {p:?}"
    );
    let got = get_task(&world.client, "seven", "").await.unwrap();
    assert_eq!(
        (got.status, got.exit_status),
        (STOPPED, 7),
        "Tasks.Get seven: {got:?}"
    );
    let exited_at = time_of(&got.exited_at).expect("seven's exit time");
    assert!(
        down_at <= exited_at && exited_at <= up_at,
        "seven exited while supd was down ({down_at:?} to {up_at:?}) but reports {exited_at:?}"
    );
    let asked = Instant::now();
    let waited = world.wait("seven", "").await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "Tasks.Wait of an exited task took {:?}",
        asked.elapsed()
    );
    assert_eq!(waited.exit_status, 7, "Tasks.Wait seven: {waited:?}");
    assert_eq!(
        time_of(&waited.exited_at),
        Some(exited_at),
        "Wait and Get disagree"
    );

    // The log has every line, those written while supd was down included.
    let lines = ticker_log(&world).await;
    let numbers = ticks(&lines_text(&lines));
    assert_consecutive(&numbers, "ticker log after the restart");
    assert!(
        numbers.len() > logged_before,
        "no line logged since the restart"
    );
    let while_down = lines
        .iter()
        .filter(|l| l.at.is_some_and(|at| down_at < at && at < up_at))
        .count();
    assert!(
        while_down >= 5,
        "{while_down} lines are timed while supd was down ({down_at:?} to {up_at:?}): {:?}",
        lines.iter().map(|l| l.at).collect::<Vec<_>>()
    );

    // Attach sees new lines, continuing the count.
    let last = numbers.last().copied().unwrap_or_default();
    let mut attached = world.attach("ticker", "", false).await;
    attached
        .read_until("a tick printed after the restart", EXIT_TIMEOUT, |c| {
            ticks(&String::from_utf8_lossy(&c.stdout))
                .last()
                .is_some_and(|n| *n > last + 1)
        })
        .await;
    drop(attached);

    // Exec into a task the daemon reconnected to.
    exec(
        &world,
        "sleeper",
        "after",
        "echo exec-after-restart; exit 3",
    )
    .await;
    let attached = world.attach("sleeper", "after", false).await;
    world.start_task("sleeper", "after").await;
    let out = attached.finish(EXIT_TIMEOUT).await;
    assert_eq!(
        out.stdout,
        b"exec-after-restart\n",
        "exec stdout {}",
        show(&out.stdout)
    );
    assert_eq!(
        out.exit.map(|e| e.exit_status),
        Some(3),
        "exec exit on attach"
    );
    assert_eq!(world.wait("sleeper", "after").await.exit_status, 3);
    let deleted = world
        .client
        .tasks()
        .delete_process(api::DeleteProcessRequest {
            container_id: "sleeper".into(),
            exec_id: "after".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.exit_status, 3, "DeleteProcess: {deleted:?}");

    // The log still has no gap, and kill, wait and delete work.
    assert_consecutive(
        &ticks(&lines_text(&ticker_log(&world).await)),
        "ticker log before the kill",
    );
    for (id, s) in [("ticker", &ticker), ("sleeper", &sleeper)] {
        world.kill(id, "", Signal::SIGKILL).await;
        assert_eq!(world.wait(id, "").await.exit_status, 137, "Tasks.Wait {id}");
        let d = world.delete_task(id, false).await.unwrap();
        assert_eq!(d.exit_status, 137, "Tasks.Delete {id}: {d:?}");
        assert!(
            s.init.gone_within(GONE_TIMEOUT).await,
            "{id}: init still there"
        );
        assert!(
            s.shim.gone_within(GONE_TIMEOUT).await,
            "{id}: shim still there"
        );
    }
    let d = world.delete_task("seven", false).await.unwrap();
    assert_eq!(d.exit_status, 7, "Tasks.Delete seven: {d:?}");
    assert!(
        seven.shim.gone_within(GONE_TIMEOUT).await,
        "seven: shim still there"
    );

    // Each exit seen after the restart was published once, with its code.
    let all_deleted = events
        .until(Duration::from_secs(10), |e| {
            ["ticker", "sleeper", "seven"]
                .iter()
                .all(|id| e.deletes(id) == 1)
        })
        .await;
    assert!(
        all_deleted,
        "task deletes published: {:#?}",
        events.topics()
    );
    assert_eq!(
        events.exits("ticker", ""),
        [(137, String::new())],
        "{:#?}",
        events.topics()
    );
    assert_eq!(
        events.exits("sleeper", ""),
        [(137, String::new())],
        "{:#?}",
        events.topics()
    );
    assert_eq!(
        events.exits("sleeper", "after"),
        [(3, String::new())],
        "{:#?}",
        events.topics()
    );
    let seven_exits = events.exits("seven", "");
    assert!(
        seven_exits.len() <= 1 && seven_exits.iter().all(|(code, _)| *code == 7),
        "seven's exit, which happened while supd was down, published as {seven_exits:?}"
    );
    eprintln!("exit of seven while supd was down, published after the restart: {seven_exits:?}");
    world.finish().await;
}

fn lines_text(lines: &[LogLine]) -> String {
    lines.iter().map(|l| format!("{}\n", l.text)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_survive_supd_sigkill() {
    containers_survive(Down::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_survive_supd_sigterm() {
    containers_survive(Down::Term).await;
}

/// Size of the layer an interrupted import is cut in the middle of.
const BIG: usize = 50 << 20;
const BIG_IMAGE: &str = "example.com/sup-tests/big:1";

/// Where a blob's bytes lie in an OCI archive: (start, end).
fn blob_span(archive: &[u8], digest: &str) -> (usize, usize) {
    let hex = digest.trim_start_matches("sha256:");
    let name = format!("blobs/sha256/{hex}");
    let header = (0..archive.len())
        .step_by(512)
        .find(|&at| archive[at..].starts_with(name.as_bytes()))
        .unwrap_or_else(|| panic!("{name} not in the archive"));
    let size = std::str::from_utf8(&archive[header + 124..header + 135])
        .ok()
        .and_then(|s| usize::from_str_radix(s.trim_matches(char::from(0)).trim(), 8).ok())
        .expect("octal size in the tar header");
    (header + 512, header + 512 + size)
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_cut_by_supd_sigkill_leaves_nothing_listed() {
    let mut daemon = Daemon::start().await;
    let client = daemon.client().await;
    let mut small = LayerBuilder::new();
    small.file("etc/small", "small\n");
    let mut big = LayerBuilder::new();
    big.file("data/big.bin", Rng::new(50).bytes(BIG));
    let image = ImageBuilder::new()
        .layer(small.build(Compression::Gzip))
        .layer(big.build(Compression::None))
        .build();
    let archive = OciArchive::new()
        .image(&image, name_annotations(BIG_IMAGE))
        .build();
    let (big_start, big_end) = blob_span(&archive, &image.layers[1].digest);
    let cut = big_start + (big_end - big_start) / 2;
    let mut blobs = vec![
        ("manifest", image.manifest_digest.clone()),
        ("config", image.config_digest.clone()),
        ("small layer", image.layers[0].digest.clone()),
    ];
    blobs.retain(|(_, d)| blob_span(&archive, d).1 <= cut);
    eprintln!("blobs wholly sent before the cut: {blobs:?}");

    // Stream the archive up to the middle of the big layer and hold the call open.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let received = Arc::new(AtomicI64::new(0));
    let seen = received.clone();
    let mut images = client.images();
    let call = tokio::spawn(async move {
        let mut responses = images.import(ReceiverStream::new(rx)).await?.into_inner();
        while let Some(msg) = responses.message().await? {
            if let Some(api::import_response::Payload::Progress(p)) = msg.payload {
                seen.fetch_max(p.bytes_received, Ordering::Relaxed);
            }
        }
        Ok::<_, tonic::Status>(())
    });
    let options = api::ImportRequest {
        payload: Some(api::import_request::Payload::Options(
            api::ImportOptions::default(),
        )),
    };
    tx.send(options).await.unwrap();
    for chunk in archive[..cut].chunks(rpc::CHUNK) {
        let req = api::ImportRequest {
            payload: Some(api::import_request::Payload::Chunk(chunk.to_vec())),
        };
        tx.send(req).await.expect("supd ended the import early");
    }
    // supd reports progress now and then: all bytes, or a quiet spell of 3 s, means it has
    // taken what was sent.
    let mut last = (0, Instant::now());
    loop {
        let now = received.load(Ordering::Relaxed);
        if now >= cut as i64 || last.1.elapsed() > Duration::from_secs(3) {
            eprintln!("supd reported {now} of the {cut} bytes sent before the kill");
            break;
        }
        if now != last.0 {
            last = (now, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    take_down(&mut daemon, Down::Kill).await;
    drop(tx);
    let ended = tokio::time::timeout(Duration::from_secs(10), call).await;
    assert!(
        matches!(ended, Ok(Ok(Err(_)))),
        "the import call must fail when supd dies: {ended:?}"
    );

    daemon.restart().await;
    let client = daemon.client().await;
    let images = rpc::list_images(&client).await;
    assert!(
        images.is_empty(),
        "images after the cut import: {images:#?}"
    );
    let held = rpc::holdings(&client).await;
    assert!(
        held.is_empty(),
        "left by the cut import (blobs wholly sent before the cut: {blobs:?}): {held:#?}"
    );
    let problems = metadata_problems(&client).await;
    assert!(
        problems.is_empty(),
        "metadata after the cut import: {problems:#?}"
    );
    eprintln!(
        "files under <root>/content after the restart: {:#?}",
        files_under(&daemon.root().join("content"))
    );
    let gc = daemon.supctl(&["gc"]);
    assert!(
        gc.status.success(),
        "supctl gc: {}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let blobs = files_under(&daemon.root().join("content/blobs"));
    assert!(
        blobs.is_empty(),
        "blob files left by the cut import after `supctl gc`: {blobs:#?}"
    );

    // The same archive imports whole afterwards, and removing it leaves nothing.
    let imported = rpc::import_ok(&client, api::ImportOptions::default(), &archive).await;
    assert_eq!(imported.len(), 1, "{imported:#?}");
    let inspected = rpc::inspect(&client, BIG_IMAGE).await;
    assert_eq!(inspected.chain_id, image.chain_id(), "{inspected:#?}");
    let problems = metadata_problems(&client).await;
    assert!(
        problems.is_empty(),
        "metadata after the second import: {problems:#?}"
    );
    rpc::delete_image(&client, BIG_IMAGE).await.unwrap();
    rpc::assert_nothing_left(&client, "the image removed").await;
    let mounts = sup_tests::mounts::mounts_under(daemon.dir()).unwrap();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
}
