//! Chaos: a seeded mixed workload (imports, short and long containers, execs, attaches,
//! kills, deletes) while supd is taken down at random moments (SIGKILL, or SIGTERM) and
//! restarted, round after round. After each restart: what supd acknowledged holds, containers
//! that should run do so with the same pids, every exit is reported once with its code,
//! nothing is left on the host for tasks that are gone, the metadata holds together, and the
//! next operations succeed. `SUP_CHAOS_SEED=N` replays a run's choices.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use sup_client::api;
use sup_tests::chaos::model::{
    expect_container, expect_task, judge_exec, judge_task, ExecStep, ImageState, Kind, Model, Step,
};
use sup_tests::chaos::workload::Workload;
use sup_tests::chaos::{
    bring_up, check_down, get_task, host_settles, list_tasks, log_tail, metadata_problems,
    shim_pid, signal_supd, status_name, Down, EventLog, Proc, Rng,
};
use sup_tests::image::name_annotations;
use sup_tests::rpc;
use sup_tests::task::{self, command, sh, World, EXIT_TIMEOUT};
use sup_tests::{Compression, ImageBuilder, LayerBuilder, OciArchive};
use tonic::Status;

const ROUNDS: usize = 8;
const LANES: usize = 2;
/// Operations per lane and round at most, should supd stay up that long.
const MAX_OPS: usize = 40;
/// supd goes down this long (plus up to 1.9 s more) after a round starts.
const MIN_UPTIME: Duration = Duration::from_millis(100);
const RESIDENTS: [&str; 2] = ["resident-a", "resident-b"];
/// How long leftovers and events get to settle.
const SETTLE: Duration = Duration::from_secs(10);

/// A container that runs through the whole test.
struct Resident {
    id: String,
    pid: u32,
    init: Proc,
    shim: Proc,
}

async fn start_resident(world: &World, id: &str) -> Resident {
    world.prepare(id, command(&["sleep", "3600"]), false).await;
    let pid = world.start_task(id, "").await;
    Resident {
        id: id.to_string(),
        pid,
        init: Proc::of(pid).unwrap(),
        shim: shim_pid(&world.daemon, &world.ns, id)
            .and_then(Proc::of)
            .expect("resident's shim"),
    }
}

fn describe(s: &Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

async fn container_ids(world: &World) -> Result<BTreeSet<String>, Status> {
    let list = world
        .client
        .containers()
        .list(api::ListContainersRequest::default())
        .await?;
    Ok(list
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect())
}

/// Everything that contradicts the model after a restart; also the tasks as listed.
async fn check_round(
    world: &World,
    model: &Model,
    residents: &[Resident],
) -> (Vec<String>, BTreeMap<String, api::Process>) {
    let mut wrong = Vec::new();
    let tasks: BTreeMap<String, api::Process> = match list_tasks(&world.client).await {
        Ok(t) => t.into_iter().map(|p| (p.container_id.clone(), p)).collect(),
        Err(s) => {
            return (
                vec![format!("Tasks.List: {}", describe(&s))],
                BTreeMap::new(),
            )
        }
    };
    let containers = container_ids(world).await.unwrap_or_else(|s| {
        wrong.push(format!("Containers.List: {}", describe(&s)));
        BTreeSet::new()
    });
    for r in residents {
        match tasks.get(&r.id) {
            Some(p) if status_name(p) == "running" && p.pid == r.pid => {}
            other => wrong.push(format!("resident {}: {other:?}, pid was {}", r.id, r.pid)),
        }
        if !r.init.alive() || !r.shim.alive() {
            wrong.push(format!("resident {}: init or shim is gone", r.id));
        }
    }
    let known = |id: &String| model.containers.contains_key(id) || RESIDENTS.contains(&&**id);
    for (id, c) in &model.containers {
        let present = containers.contains(id);
        if expect_container(c).is_some_and(|want| want != present) {
            wrong.push(format!(
                "container {id} (acknowledged {:?}, in flight {:?}) listed: {present}",
                c.done, c.asked
            ));
        }
        let task = tasks.get(id);
        if expect_task(c).is_some_and(|want| want != task.is_some()) {
            wrong.push(format!(
                "task {id} (acknowledged {:?}, in flight {:?}) listed: {task:?}",
                c.done, c.asked
            ));
        }
        if let Some(p) = task {
            wrong.extend(judge_task(id, c, p));
        }
    }
    for id in tasks.keys().chain(&containers).filter(|id| !known(id)) {
        wrong.push(format!("{id} listed, but the test never made it"));
    }
    for e in &model.execs {
        let got = get_task(&world.client, &e.container, &e.exec_id).await;
        wrong.extend(judge_exec(e, &got));
    }
    let images: BTreeSet<String> = rpc::list_images(&world.client)
        .await
        .into_iter()
        .map(|i| i.name)
        .collect();
    for (name, state) in &model.images {
        let listed = images.contains(name);
        let want = match state {
            ImageState::Imported => Some(true),
            ImageState::Deleted => Some(false),
            _ => None,
        };
        if want.is_some_and(|w| w != listed) {
            wrong.push(format!("image {name} ({state:?}) listed: {listed}"));
        }
    }
    for name in &images {
        if name != task::IMAGE && !model.images.contains_key(name) {
            wrong.push(format!(
                "image {name} listed, but the test never imported it"
            ));
        }
    }
    wrong.extend(metadata_problems(&world.client).await);
    let live: BTreeSet<String> = tasks.keys().cloned().collect();
    if let Err(left) = host_settles(world, &live, SETTLE).await {
        wrong.extend(left);
    }
    (wrong, tasks)
}

/// A process whose exit the event stream must carry: exactly once, or at most once when it
/// exited before the subscription (while supd was down, say).
struct ExitSeen {
    id: String,
    exec_id: String,
    code: u32,
    exactly_once: bool,
}

/// Waits for a process and returns its exit status, or a description of the failure.
async fn wait(world: &World, id: &str, exec_id: &str) -> Result<u32, String> {
    let req = api::WaitRequest {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
    };
    let mut tasks = world.client.tasks();
    match tokio::time::timeout(EXIT_TIMEOUT, tasks.wait(req)).await {
        Ok(Ok(w)) => Ok(w.into_inner().exit_status),
        Ok(Err(s)) => Err(format!("Tasks.Wait {id}/{exec_id}: {}", describe(&s))),
        Err(_) => Err(format!(
            "Tasks.Wait {id}/{exec_id}: no exit in {EXIT_TIMEOUT:?}"
        )),
    }
}

/// Brings a process that exists to its end: starts or kills it as needed, waits, and says
/// which exit the events must show. `kill` is for processes that would not end by themselves.
async fn end_process(
    world: &World,
    id: &str,
    exec_id: &str,
    status: &str,
    code: u32,
    kill: bool,
) -> Result<ExitSeen, String> {
    let seen = |code, exactly_once| ExitSeen {
        id: id.to_string(),
        exec_id: exec_id.to_string(),
        code,
        exactly_once,
    };
    if status == "stopped" {
        return Ok(seen(code, false));
    }
    let code = if kill || (status == "created" && exec_id.is_empty()) {
        let req = api::KillRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal: Signal::SIGKILL as u32,
            all: false,
        };
        world
            .client
            .tasks()
            .kill(req)
            .await
            .map_err(|s| format!("Tasks.Kill {id}/{exec_id} ({status}): {}", describe(&s)))?;
        137
    } else {
        if status == "created" {
            world
                .try_start(id, exec_id)
                .await
                .map_err(|s| format!("Tasks.Start {id}/{exec_id}: {}", describe(&s)))?;
        }
        code
    };
    let got = wait(world, id, exec_id).await?;
    if got != code {
        return Err(format!(
            "{id}/{exec_id}: exit status {got}, expected {code}"
        ));
    }
    Ok(seen(code, true))
}

/// Ends and deletes everything the round left (residents aside), checks each exit was
/// published once with its code, then checks that new work succeeds and leaves nothing.
async fn settle_round(
    world: &World,
    model: &Mutex<Model>,
    events: &EventLog,
    tasks: &BTreeMap<String, api::Process>,
    round: usize,
) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut exits = Vec::new();
    let (containers, execs) = {
        let m = model.lock().unwrap();
        (m.containers.clone(), m.execs.clone())
    };
    for e in &execs {
        let Ok(p) = get_task(&world.client, &e.container, &e.exec_id).await else {
            continue;
        };
        match end_process(
            world,
            &e.container,
            &e.exec_id,
            status_name(&p),
            e.code,
            false,
        )
        .await
        {
            Ok(seen) => exits.push(seen),
            Err(why) => wrong.push(why),
        }
        let req = api::DeleteProcessRequest {
            container_id: e.container.clone(),
            exec_id: e.exec_id.clone(),
        };
        if let Err(s) = world.client.tasks().delete_process(req).await {
            wrong.push(format!(
                "DeleteProcess {}/{}: {}",
                e.container,
                e.exec_id,
                describe(&s)
            ));
        }
    }
    let mut deleted = Vec::new();
    for (id, p) in tasks
        .iter()
        .filter(|(id, _)| !RESIDENTS.contains(&id.as_str()))
    {
        let kind = containers.get(id).map_or(Kind::Long, |c| c.kind);
        let (code, kill) = match kind {
            Kind::Long => (137, true),
            Kind::Short(code) => (code, false),
        };
        let code = if status_name(p) == "stopped" {
            p.exit_status
        } else {
            code
        };
        let code = match end_process(world, id, "", status_name(p), code, kill).await {
            Ok(seen) => {
                let code = seen.code;
                exits.push(seen);
                code
            }
            Err(why) => {
                wrong.push(why);
                code
            }
        };
        match world.delete_task(id, false).await {
            Ok(d) if d.exit_status == code => deleted.push(id.clone()),
            Ok(d) => wrong.push(format!("Tasks.Delete {id}: {d:?}, expected exit {code}")),
            Err(s) => wrong.push(format!("Tasks.Delete {id}: {}", describe(&s))),
        }
    }
    for id in container_ids(world).await.unwrap_or_default() {
        if !RESIDENTS.contains(&id.as_str()) {
            if let Err(s) = world.delete_container(&id).await {
                wrong.push(format!("Containers.Delete {id}: {}", describe(&s)));
            }
        }
    }
    let published = events
        .until(SETTLE, |ev| {
            deleted.iter().all(|id| ev.deletes(id) >= 1)
                && exits
                    .iter()
                    .filter(|x| x.exactly_once)
                    .all(|x| !ev.exits(&x.id, &x.exec_id).is_empty())
        })
        .await;
    if !published {
        wrong.push(format!("events not all published within {SETTLE:?}"));
    }
    let mut down_exits = Vec::new();
    for x in &exits {
        let got = events.exits(&x.id, &x.exec_id);
        let right_count = if x.exactly_once {
            got.len() == 1
        } else {
            got.len() <= 1
        };
        if !right_count || got.iter().any(|(code, _)| *code != x.code) {
            wrong.push(format!(
                "{}/{}: /tasks/exit events {got:?}, expected {} with status {}",
                x.id,
                x.exec_id,
                if x.exactly_once { "one" } else { "at most one" },
                x.code
            ));
        }
        if !x.exactly_once {
            down_exits.push(format!("{}/{}: {} event(s)", x.id, x.exec_id, got.len()));
        }
    }
    eprintln!("  exits from before the subscription, as published after it: {down_exits:?}");
    {
        let mut m = model.lock().unwrap();
        for c in m.containers.values_mut() {
            (c.done, c.asked) = (Some(Step::ContainerDeleted), None);
        }
        for e in m.execs.iter_mut() {
            (e.done, e.asked) = (Some(ExecStep::Deleted), None);
        }
    }
    wrong.extend(next_operations(world, model, round).await);
    wrong
}

/// New work after a restart: an import, a container run to its end, an exec.
async fn next_operations(world: &World, model: &Mutex<Model>, round: usize) -> Vec<String> {
    let mut wrong = Vec::new();
    let name = format!("example.com/chaos/r{round}-next:1");
    let mut layer = LayerBuilder::new();
    layer.file("chaos/next", name.as_bytes());
    let image = ImageBuilder::new()
        .layer(layer.build(Compression::Gzip))
        .build();
    let archive = OciArchive::new()
        .image(&image, name_annotations(&name))
        .build();
    match rpc::import(&world.client, api::ImportOptions::default(), &archive).await {
        Ok(_) => {
            model
                .lock()
                .unwrap()
                .images
                .insert(name.clone(), ImageState::Imported);
            if let Err(s) = rpc::inspect_platform(&world.client, &name, None).await {
                wrong.push(format!("Images.Inspect {name}: {}", describe(&s)));
            }
        }
        Err(s) => wrong.push(format!("import {name}: {}", describe(&s))),
    }
    let id = format!("r{round}-next");
    let ran = world.run(&id, sh(&format!("echo {id}; exit 42"))).await;
    if ran.output.stdout != format!("{id}\n").as_bytes() || ran.wait.exit_status != 42 {
        wrong.push(format!("{id}: ran as {ran:?}"));
    }
    let events = EventLog::open(world).await;
    let exec_id = format!("r{round}-next");
    let req = api::ExecProcessRequest {
        container_id: RESIDENTS[0].to_string(),
        exec_id: exec_id.clone(),
        spec: Some(api::ProcessSpec {
            args: vec!["sh".into(), "-c".into(), "exit 5".into()],
            ..Default::default()
        }),
        stdin: false,
    };
    if let Err(s) = world.client.tasks().exec(req).await {
        wrong.push(format!("Tasks.Exec after the restart: {}", describe(&s)));
        return wrong;
    }
    world.start_task(RESIDENTS[0], &exec_id).await;
    match wait(world, RESIDENTS[0], &exec_id).await {
        Ok(5) => {}
        other => wrong.push(format!("exec after the restart: {other:?}")),
    }
    let req = api::DeleteProcessRequest {
        container_id: RESIDENTS[0].to_string(),
        exec_id: exec_id.clone(),
    };
    if let Err(s) = world.client.tasks().delete_process(req).await {
        wrong.push(format!("DeleteProcess after the restart: {}", describe(&s)));
    }
    let one = events
        .until(SETTLE, |ev| !ev.exits(RESIDENTS[0], &exec_id).is_empty())
        .await;
    if !one || events.exits(RESIDENTS[0], &exec_id).len() != 1 {
        wrong.push(format!(
            "exec after the restart: exits published {:?}",
            events.exits(RESIDENTS[0], &exec_id)
        ));
    }
    let live: BTreeSet<String> = RESIDENTS.iter().map(|r| r.to_string()).collect();
    if let Err(left) = host_settles(world, &live, SETTLE).await {
        wrong.extend(left);
    }
    wrong.extend(metadata_problems(&world.client).await);
    wrong
}

/// Images whose import or delete was cut: from now on they must stay as they are listed.
async fn settle_images(world: &World, model: &Mutex<Model>) {
    let listed: BTreeSet<String> = rpc::list_images(&world.client)
        .await
        .into_iter()
        .map(|i| i.name)
        .collect();
    let mut m = model.lock().unwrap();
    for (name, state) in m.images.iter_mut() {
        if matches!(state, ImageState::Importing | ImageState::Deleting) {
            *state = if listed.contains(name) {
                ImageState::Imported
            } else {
                ImageState::Deleted
            };
        }
    }
}

async fn chaos(how: Down, default_seed: u64) {
    let seed = Rng::seed_from_env("SUP_CHAOS_SEED", default_seed);
    let mut rng = Rng::new(seed);
    let mut world = World::start().await;
    let mut residents = Vec::new();
    for id in RESIDENTS {
        residents.push(start_resident(&world, id).await);
    }
    let model = Arc::new(Mutex::new(Model::default()));
    for round in 0..ROUNDS {
        let uptime = MIN_UPTIME + Duration::from_millis(rng.below(1900));
        let lanes: Vec<Rng> = (0..LANES).map(|_| rng.fork()).collect();
        let going_down = Arc::new(AtomicBool::new(false));
        let pid = world.daemon.pid().expect("supd is running");
        let work = Workload {
            world: &world,
            model: model.clone(),
            going_down: going_down.clone(),
            residents: RESIDENTS.iter().map(|r| r.to_string()).collect(),
            round,
        };
        let lanes = futures::future::join_all(
            lanes
                .into_iter()
                .enumerate()
                .map(|(lane, r)| work.lane(lane, r, MAX_OPS)),
        );
        let fault = async {
            tokio::time::sleep(uptime).await;
            going_down.store(true, Ordering::SeqCst);
            signal_supd(pid, how).await;
        };
        tokio::join!(lanes, fault);
        drop(work);
        check_down(&mut world.daemon, how);
        let (ops, in_flight) = {
            let m = model.lock().unwrap();
            (m.ops, m.in_flight())
        };
        let back = bring_up(&mut world).await;
        eprintln!(
            "round {round}: {how:?} after {uptime:?} ({ops} ops so far), in flight {in_flight:?}; \
             supd answered {back:?} after its restart"
        );
        let mut wrong = std::mem::take(&mut model.lock().unwrap().failures);
        let events = EventLog::open(&world).await;
        let known = model.lock().unwrap().clone();
        let (found, tasks) = check_round(&world, &known, &residents).await;
        wrong.extend(found);
        wrong.extend(settle_round(&world, &model, &events, &tasks, round).await);
        settle_images(&world, &model).await;
        // The checks before and after the round's cleanup may find the same leftover.
        let mut seen = BTreeSet::new();
        wrong.retain(|w| seen.insert(w.clone()));
        if !wrong.is_empty() {
            panic!(
                "SUP_CHAOS_SEED={seed}, round {round} ({how:?} after {uptime:?}; in flight: \
                 {in_flight:?}):\n{wrong:#?}\nsupd log:\n{}",
                log_tail(&world.daemon)
            );
        }
    }
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_supd_sigkill() {
    chaos(Down::Kill, 0x5eed_0001).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_supd_sigterm() {
    chaos(Down::Term, 0x5eed_0002).await;
}
