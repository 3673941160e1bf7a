//! A task whose shim is killed with SIGKILL is cleaned up by supd: reported exited (reason
//! "shim died"), its processes, rootfs mount, state dir and cgroups gone, and its container
//! usable again; the same, at supd's start, when the shim died while supd was down. Other
//! tasks are untouched.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sup_client::api;
use sup_tests::chaos::{
    bring_up, container_cgroups, exe_name, get_task, host_settles, log_tail, shim_pid, signal_pid,
    status_name, take_down, task_dir, Down, EventLog, Proc, GONE_TIMEOUT,
};
use sup_tests::rpc::eventually;
use sup_tests::task::{command, World};
use tonic::Code;

/// How soon after a shim's death its task must be cleaned up.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

struct Started {
    pid: u32,
    init: Proc,
    shim: Proc,
}

async fn start_sleeper(world: &World, id: &str) -> Started {
    world.prepare(id, command(&["sleep", "3600"]), false).await;
    let pid = world.start_task(id, "").await;
    let shim = shim_pid(&world.daemon, &world.ns, id)
        .and_then(Proc::of)
        .unwrap_or_else(|| panic!("{id}: no live shim named by its shim.pid"));
    assert!(
        exe_name(shim.pid).is_some_and(|n| n.starts_with("sup-shim")),
        "{id}: shim.pid names {} ({:?}), not a sup-shim",
        shim.pid,
        exe_name(shim.pid)
    );
    Started {
        pid,
        init: Proc::of(pid).unwrap(),
        shim,
    }
}

fn kill_shim(id: &str, s: &Started) {
    assert!(
        signal_pid(s.shim.pid, Signal::SIGKILL),
        "{id}: SIGKILL to shim {}",
        s.shim.pid
    );
}

/// What still shows that the victim's task exists, one line each.
async fn victim_left(world: &World, id: &str, victim: &Started) -> Vec<String> {
    let mut left = Vec::new();
    match get_task(&world.client, id, "").await {
        Err(s) if s.code() == Code::NotFound => {}
        Ok(p) if status_name(&p) == "stopped" => {}
        Ok(p) => left.push(format!("Tasks.Get: {} {p:?}", status_name(&p))),
        Err(s) => left.push(format!("Tasks.Get: {:?}: {}", s.code(), s.message())),
    }
    if victim.init.alive() {
        left.push(format!("init {} still running", victim.pid));
    }
    let dir = task_dir(&world.daemon, &world.ns, id);
    for m in sup_tests::mounts::mounts_under(&dir).unwrap_or_default() {
        left.push(format!("mount {}", m.display()));
    }
    if dir.exists() {
        left.push(format!("task state dir {}", dir.display()));
    }
    for group in container_cgroups(&world.ns) {
        if group.file_name().is_some_and(|n| n == id) {
            left.push(format!("cgroup {}", group.display()));
        }
    }
    left
}

/// The bystander runs on, with the same init and shim.
async fn assert_untouched(world: &World, id: &str, s: &Started) {
    let got = get_task(&world.client, id, "").await.unwrap();
    assert_eq!(
        (status_name(&got), got.pid),
        ("running", s.pid),
        "{id}: Tasks.Get {got:?}"
    );
    assert!(s.init.alive(), "{id}: init {} is gone", s.pid);
    assert!(s.shim.alive(), "{id}: shim {} is gone", s.shim.pid);
}

/// Nothing on the host but the bystander's task (once killed processes are reaped).
async fn assert_host_clean(world: &World, bystander: &str) {
    let live = BTreeSet::from([bystander.to_string()]);
    if let Err(left) = host_settles(world, &live, CLEANUP_TIMEOUT).await {
        panic!("left on the host after {CLEANUP_TIMEOUT:?}: {left:#?}");
    }
}

/// A new task for the victim's container runs, and the container can then be deleted.
async fn container_usable_again(world: &World, id: &str) {
    let pid = world
        .create_task(id, false)
        .await
        .unwrap_or_else(|s| panic!("a new task for {id}: {:?}: {}", s.code(), s.message()));
    assert_eq!(world.start_task(id, "").await, pid);
    let got = get_task(&world.client, id, "").await.unwrap();
    assert_eq!(status_name(&got), "running", "{id}: new task {got:?}");
    world.kill(id, "", Signal::SIGKILL).await;
    assert_eq!(world.wait(id, "").await.exit_status, 137);
    let d = world.delete_task(id, false).await.unwrap();
    assert_eq!(d.exit_status, 137, "Tasks.Delete {id}: {d:?}");
    world
        .delete_container(id)
        .await
        .unwrap_or_else(|s| panic!("Containers.Delete {id}: {:?}: {}", s.code(), s.message()));
    let listed = world
        .client
        .containers()
        .list(api::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(
        listed.iter().all(|c| c.id != id),
        "{id} still listed after Containers.Delete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_killed_while_supd_runs() {
    let world = World::start().await;
    let bystander = start_sleeper(&world, "bystander").await;
    let victim = start_sleeper(&world, "victim").await;
    let events = EventLog::open(&world).await;
    let killed_at = Instant::now();
    kill_shim("victim", &victim);

    let cleaned = eventually(CLEANUP_TIMEOUT, || async {
        let mut left = victim_left(&world, "victim", &victim).await;
        let exits = events.exits("victim", "");
        if !exits.iter().any(|(_, reason)| reason == "shim died") {
            left.push(format!(
                "no /tasks/exit with reason \"shim died\": {exits:?}"
            ));
        }
        left.is_empty().then_some(()).ok_or(left)
    })
    .await;
    if let Err(left) = cleaned {
        panic!(
            "{CLEANUP_TIMEOUT:?} after the shim's death: {left:#?}\nevents: {:#?}\nsupd log:\n{}",
            events.topics(),
            log_tail(&world.daemon)
        );
    }
    eprintln!(
        "cleaned up {:?} after the shim's death; exits published: {:?}",
        killed_at.elapsed(),
        events.exits("victim", "")
    );
    assert_eq!(
        events.exits("victim", "").len(),
        1,
        "one exit per task: {:#?}",
        events.topics()
    );
    assert_untouched(&world, "bystander", &bystander).await;
    assert_host_clean(&world, "bystander").await;
    container_usable_again(&world, "victim").await;
    assert_untouched(&world, "bystander", &bystander).await;
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_killed_while_supd_is_down() {
    let mut world = World::start().await;
    let bystander = start_sleeper(&world, "bystander").await;
    let victim = start_sleeper(&world, "victim").await;
    take_down(&mut world.daemon, Down::Kill).await;
    kill_shim("victim", &victim);
    assert!(
        victim.shim.gone_within(GONE_TIMEOUT).await,
        "the victim's shim survived SIGKILL"
    );
    bring_up(&mut world).await;
    // supd serves once it has recovered its tasks: the cleanup is done by then.
    let at_start = victim_left(&world, "victim", &victim).await;
    if !at_start.is_empty() {
        let later = eventually(CLEANUP_TIMEOUT, || async {
            let left = victim_left(&world, "victim", &victim).await;
            left.is_empty().then_some(()).ok_or(left)
        })
        .await;
        panic!(
            "not cleaned up when supd started serving: {at_start:#?}\n{CLEANUP_TIMEOUT:?} \
             later: {later:#?}\nsupd log:\n{}",
            log_tail(&world.daemon)
        );
    }
    assert_untouched(&world, "bystander", &bystander).await;
    assert_host_clean(&world, "bystander").await;
    container_usable_again(&world, "victim").await;
    world.finish().await;
}
