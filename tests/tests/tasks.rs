//! Task lifecycle through the API: exit codes on Wait, Get and Delete, signals, forced and
//! refused deletes, events in order, many containers at once, where the init process hangs in
//! the process tree, and bad input that must leave nothing behind.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::future::join_all;
use nix::sys::signal::Signal;
use sup_client::api;
use sup_tests::rpc::{self, expect_code};
use sup_tests::task::{self, command, sh, show, World};
use tonic::Code;

const STOPPED: i32 = api::TaskStatus::Stopped as i32;
const RUNNING: i32 = api::TaskStatus::Running as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_reaches_wait_get_and_delete() {
    let world = World::start().await;
    let pid = world.prepare("three", sh("exit 3"), false).await;
    assert!(pid > 0, "Tasks.Create gave pid 0");
    let created = world.get("three", "").await;
    assert_eq!(
        created.status,
        api::TaskStatus::Created as i32,
        "{created:?}"
    );
    world.start_task("three", "").await;
    let wait = world.wait("three", "").await;
    assert_eq!(wait.exit_status, 3, "Wait: {wait:?}");
    assert!(wait.exited_at.is_some(), "Wait without exited_at: {wait:?}");
    let got = world.get("three", "").await;
    assert_eq!(got.status, STOPPED, "Get after exit: {got:?}");
    assert_eq!(got.exit_status, 3, "Get after exit: {got:?}");
    // Waiting again answers at once with the same status.
    assert_eq!(world.wait("three", "").await.exit_status, 3);
    let deleted = world.delete_task("three", false).await.unwrap();
    assert_eq!(deleted.exit_status, 3, "Delete: {deleted:?}");
    assert_eq!(deleted.container_id, "three");
    expect_code(
        world
            .client
            .tasks()
            .get(api::GetTaskRequest {
                container_id: "three".into(),
                exec_id: String::new(),
            })
            .await,
        Code::NotFound,
        "Tasks.Get after Delete",
    );
    world.delete_container("three").await.unwrap();
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_exits_137() {
    let world = World::start().await;
    world
        .prepare("killed", command(&["sleep", "600"]), false)
        .await;
    world.start_task("killed", "").await;
    assert_eq!(world.get("killed", "").await.status, RUNNING);
    world.kill("killed", "", Signal::SIGKILL).await;
    let wait = world.wait("killed", "").await;
    assert_eq!(wait.exit_status, 137, "Wait: {wait:?}");
    assert_eq!(wait.reason, "", "a plain kill has no reason: {wait:?}");
    let deleted = world.delete_task("killed", false).await.unwrap();
    assert_eq!(deleted.exit_status, 137, "Delete: {deleted:?}");
    world.delete_container("killed").await.unwrap();
    world.finish().await;
}

/// SIGTERM reaches an init that handles it. (An init without a handler, such as a bare
/// `sleep` as pid 1 of its namespace, never sees SIGTERM from outside: the kernel drops it.
/// exec.rs checks 143 on an exec'd `sleep`, which is not pid 1.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reaches_an_init_that_traps_it() {
    let world = World::start().await;
    let script = "trap 'echo term; exit 5' TERM; echo ready; while true; do usleep 10000; done";
    world.prepare("trapper", sh(script), false).await;
    let mut attached = world.attach("trapper", "", false).await;
    world.start_task("trapper", "").await;
    attached.stdout_until(b"ready\n").await;
    world.kill("trapper", "", Signal::SIGTERM).await;
    let out = attached.finish(task::EXIT_TIMEOUT).await;
    assert_eq!(out.stdout, b"ready\nterm\n", "stdout {}", show(&out.stdout));
    assert_eq!(out.stderr, b"", "stderr {}", show(&out.stderr));
    let exit = out
        .exit
        .expect("the attach stream's last frame carries the exit");
    assert_eq!(exit.exit_status, 5, "{exit:?}");
    assert_eq!(world.wait("trapper", "").await.exit_status, 5);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_task_needs_force() {
    let world = World::start().await;
    world
        .prepare("busy", command(&["sleep", "600"]), false)
        .await;
    let pid = world.start_task("busy", "").await;
    let message = expect_code(
        world.delete_task("busy", false).await,
        Code::FailedPrecondition,
        "Tasks.Delete of a running task without force",
    );
    assert!(
        message.contains("busy"),
        "the message names the task: {message}"
    );
    let still = world.get("busy", "").await;
    assert_eq!(still.status, RUNNING, "after the refused delete: {still:?}");
    assert_eq!(still.pid, pid);
    expect_code(
        world.delete_container("busy").await,
        Code::FailedPrecondition,
        "Containers.Delete while its task runs",
    );
    let deleted = world.delete_task("busy", true).await.unwrap();
    assert_eq!(deleted.exit_status, 137, "forced Delete: {deleted:?}");
    world.delete_container("busy").await.unwrap();
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_has_one_task_at_a_time() {
    let world = World::start().await;
    world
        .prepare("once", command(&["sleep", "600"]), false)
        .await;
    expect_code(
        world.create_task("once", false).await,
        Code::FailedPrecondition,
        "second Tasks.Create",
    );
    expect_code(
        world.create_task("nobody", false).await,
        Code::NotFound,
        "Tasks.Create without a container",
    );
    expect_code(
        world.try_start("nobody", "").await,
        Code::NotFound,
        "Tasks.Start without a task",
    );
    world.finish().await;
}

/// supd is never the parent (nor an ancestor) of a container process: the shim is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_is_not_a_descendant_of_supd() {
    let world = World::start().await;
    world
        .prepare("orphan", command(&["sleep", "600"]), false)
        .await;
    let pid = world.start_task("orphan", "").await;
    let supd = world.daemon.pid().unwrap();
    let chain = task::ancestry(pid);
    let described: Vec<String> = chain
        .iter()
        .map(|p| format!("{p} {}", task::cmdline(*p)))
        .collect();
    assert!(
        !chain.contains(&supd),
        "supd ({supd}) is an ancestor of the container's init: {described:#?}"
    );
    let parent = chain.get(1).copied().unwrap_or(0);
    assert_eq!(
        task::exe_name(parent).as_deref(),
        Some("sup-shim"),
        "the init's parent should be its shim: {described:#?}"
    );
    assert_eq!(
        chain.last(),
        Some(&1),
        "the chain reaches pid 1: {described:#?}"
    );
    world.delete_task("orphan", true).await.unwrap();
    world.finish().await;
}

/// One container's task events arrive in order: create, start, exit (its code), delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_events_in_order() {
    let world = World::start().await;
    let mut events = world.subscribe("/tasks/").await;
    let ran = world.run("evented", sh("exit 4")).await;
    assert_eq!(ran.wait.exit_status, 4);
    let mut seen: Vec<(String, api::TaskEvent)> = Vec::new();
    let read = async {
        while let Some(env) = events.message().await.unwrap() {
            if let Some(api::envelope::Event::Task(t)) = env.event {
                assert_eq!(env.namespace, world.ns, "filtered on the namespace: {t:?}");
                let done = env.topic == "/tasks/delete";
                seen.push((env.topic, t));
                if done {
                    break;
                }
            }
        }
    };
    let timed_out = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .is_err();
    let topics: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert!(!timed_out, "no /tasks/delete within 20 s; got {seen:#?}");
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ],
        "{seen:#?}"
    );
    for (topic, ev) in &seen {
        assert_eq!(ev.container_id, "evented", "{topic}: {ev:?}");
        assert_eq!(ev.exec_id, "", "{topic}: {ev:?}");
    }
    assert!(seen[0].1.pid > 0, "create carries the pid: {:?}", seen[0].1);
    assert_eq!(seen[2].1.exit_status, 4, "exit: {:?}", seen[2].1);
    assert!(seen[2].1.exited_at.is_some(), "exit: {:?}", seen[2].1);
    assert_eq!(seen[3].1.exit_status, 4, "delete: {:?}", seen[3].1);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_containers_at_once() {
    let world = World::start().await;
    let ids: Vec<String> = (0..20).map(|i| format!("par-{i:02}")).collect();
    let runs = ids.iter().map(|id| {
        let world = &world;
        async move { (id, world.run(id, command(&["echo", id])).await) }
    });
    for (id, ran) in join_all(runs).await {
        let expected = format!("{id}\n");
        assert_eq!(
            ran.output.stdout,
            expected.as_bytes(),
            "{id}: stdout {}",
            show(&ran.output.stdout)
        );
        assert_eq!(
            ran.output.stderr,
            b"",
            "{id}: stderr {}",
            show(&ran.output.stderr)
        );
        assert_eq!(ran.wait.exit_status, 0, "{id}: {:?}", ran.wait);
    }
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_is_not_found() {
    let world = World::without_image().await;
    let message = expect_code(
        world.create_container("lost", command(&["true"])).await,
        Code::NotFound,
        "Containers.Create of a missing image",
    );
    assert!(message.contains(task::IMAGE), "names the image: {message}");
    assert_no_containers(&world).await;
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_id_already_exists() {
    let world = World::start().await;
    world
        .create_container("twin", command(&["true"]))
        .await
        .unwrap();
    expect_code(
        world.create_container("twin", command(&["false"])).await,
        Code::AlreadyExists,
        "second Containers.Create with the same id",
    );
    let kept = world
        .client
        .containers()
        .get(api::GetContainerRequest { id: "twin".into() })
        .await
        .unwrap()
        .into_inner()
        .container
        .unwrap();
    let spec: serde_json::Value = serde_json::from_slice(&kept.spec).unwrap();
    assert_eq!(
        spec["process"]["args"],
        serde_json::json!(["true"]),
        "the first container is untouched"
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_are_invalid() {
    let world = World::start().await;
    let long = "a".repeat(77);
    for id in [
        "",
        "-lead",
        ".dot",
        "a/b",
        "../up",
        "a b",
        "tab\t",
        "é",
        long.as_str(),
    ] {
        expect_code(
            world.create_container(id, command(&["true"])).await,
            Code::InvalidArgument,
            &format!("Containers.Create with id {id:?}"),
        );
    }
    assert_no_containers(&world).await;
    // The longest valid id works.
    let longest = "b".repeat(76);
    let ran = world.run(&longest, command(&["echo", "ok"])).await;
    assert_eq!(ran.output.stdout, b"ok\n");
    world.finish().await;
}

/// A command missing from the image fails at Create or Start with the runtime's words, and
/// what the attempt made is gone: shim, mount, cgroup, state dir, container process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_command_leaves_nothing() {
    let world = World::start().await;
    world
        .create_container("ghost", command(&["/bin/nope"]))
        .await
        .unwrap();
    let failure = match world.create_task("ghost", false).await {
        Err(s) => {
            expect_code(
                world
                    .client
                    .tasks()
                    .get(api::GetTaskRequest {
                        container_id: "ghost".into(),
                        exec_id: String::new(),
                    })
                    .await,
                Code::NotFound,
                "Tasks.Get after a failed Create",
            );
            s
        }
        Ok(pid) => {
            let s = world
                .try_start("ghost", "")
                .await
                .expect_err("Start of a missing command should fail");
            eprintln!("Create succeeded (pid {pid}); Start failed: {s:?}");
            world.delete_task("ghost", false).await.unwrap_or_else(|d| {
                panic!(
                    "Tasks.Delete after a failed Start: {:?}: {}",
                    d.code(),
                    d.message()
                )
            });
            s
        }
    };
    let message = failure.message();
    assert!(
        message.contains("/bin/nope") && message.contains("no such file or directory"),
        "the runtime's message should say what is missing ({:?}): {message}",
        failure.code()
    );
    let left = rpc::eventually(task::AUDIT_TIMEOUT, || async {
        let left = world.leftovers();
        left.is_empty().then_some(()).ok_or(left)
    })
    .await;
    assert!(left.is_ok(), "after the failed task: {left:#?}");
    // The container itself stays and can be used again: the failure was the task's.
    world.delete_container("ghost").await.unwrap();
    world.finish().await;
}

async fn assert_no_containers(world: &World) {
    let left = world
        .client
        .containers()
        .list(api::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    let ids: Vec<&str> = left.iter().map(|c| c.id.as_str()).collect();
    assert!(ids.is_empty(), "containers left: {ids:?}");
}
