//! Processes exec'd into a running task: their own output, exit code and signals, their own
//! user, environment, directory, stdin and terminal, while the init keeps running.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use nix::sys::signal::Signal;
use sup_client::api;
use sup_tests::rpc::expect_code;
use sup_tests::task::{self, command, show, World};
use tonic::{Code, Status};

const RUNNING: i32 = api::TaskStatus::Running as i32;
const STOPPED: i32 = api::TaskStatus::Stopped as i32;

fn process(args: &[&str]) -> api::ProcessSpec {
    api::ProcessSpec {
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

async fn exec(
    world: &World,
    id: &str,
    exec_id: &str,
    spec: api::ProcessSpec,
    stdin: bool,
) -> Result<(), Status> {
    world
        .client
        .tasks()
        .exec(api::ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            spec: Some(spec),
            stdin,
        })
        .await
        .map(|_| ())
}

/// A running init (`sleep 600`) to exec into.
async fn sleeper(world: &World, id: &str) -> u32 {
    world.prepare(id, command(&["sleep", "600"]), false).await;
    world.start_task(id, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_has_its_own_output_and_exit_code() {
    let world = World::start().await;
    let init = sleeper(&world, "host").await;
    let mut events = world.subscribe("^/tasks/exec").await;
    let script = "echo exec-out; echo exec-err >&2; exit 7";
    exec(&world, "host", "e1", process(&["sh", "-c", script]), false)
        .await
        .unwrap();
    let attached = world.attach("host", "e1", false).await;
    let pid = world.start_task("host", "e1").await;
    assert_ne!(pid, init, "the exec'd process has its own pid");
    let out = attached.finish(task::EXIT_TIMEOUT).await;
    assert_eq!(out.stdout, b"exec-out\n", "stdout {}", show(&out.stdout));
    assert_eq!(out.stderr, b"exec-err\n", "stderr {}", show(&out.stderr));
    assert_eq!(out.exit.map(|e| e.exit_status), Some(7));
    assert_eq!(world.wait("host", "e1").await.exit_status, 7);
    let got = world.get("host", "e1").await;
    assert_eq!((got.status, got.exit_status), (STOPPED, 7), "{got:?}");
    let init_now = world.get("host", "").await;
    assert_eq!(
        init_now.status, RUNNING,
        "the init keeps running: {init_now:?}"
    );
    assert_eq!(init_now.pid, init);
    let deleted = world
        .client
        .tasks()
        .delete_process(api::DeleteProcessRequest {
            container_id: "host".into(),
            exec_id: "e1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.exit_status, 7, "{deleted:?}");
    expect_code(
        world
            .client
            .tasks()
            .get(api::GetTaskRequest {
                container_id: "host".into(),
                exec_id: "e1".into(),
            })
            .await,
        Code::NotFound,
        "Tasks.Get of a deleted exec",
    );
    let mut topics = Vec::new();
    let read = async {
        while let Some(env) = events.message().await.unwrap() {
            topics.push(env.topic.clone());
            if env.topic == "/tasks/exec-started" {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    assert_eq!(topics, ["/tasks/exec-added", "/tasks/exec-started"]);
    world.finish().await;
}

/// An exec'd `sleep` is not its namespace's init, so SIGTERM kills it: 128 + 15.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_an_exec_exits_143() {
    let world = World::start().await;
    sleeper(&world, "host").await;
    exec(&world, "host", "nap", process(&["sleep", "600"]), false)
        .await
        .unwrap();
    world.start_task("host", "nap").await;
    assert_eq!(world.get("host", "nap").await.status, RUNNING);
    world.kill("host", "nap", Signal::SIGTERM).await;
    let wait = world.wait("host", "nap").await;
    assert_eq!(wait.exit_status, 143, "{wait:?}");
    assert_eq!(world.get("host", "").await.status, RUNNING);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_its_own_user_env_cwd_and_stdin() {
    let world = World::start().await;
    sleeper(&world, "host").await;
    let spec = api::ProcessSpec {
        args: ["sh", "-c", r#"id -u; id -G; pwd; echo "$X"; cat"#]
            .map(String::from)
            .to_vec(),
        env: vec!["X=from exec".into(), "PATH=/bin".into()],
        cwd: "/tmp".into(),
        user: "user".into(),
        terminal: false,
    };
    exec(&world, "host", "who", spec, true).await.unwrap();
    let attached = world.attach("host", "who", true).await;
    world.start_task("host", "who").await;
    attached.stdin(b"piped in\n").await;
    attached.close_stdin().await;
    let out = attached.finish(task::EXIT_TIMEOUT).await;
    assert_eq!(
        out.stdout,
        b"1000\n1000\n/tmp\nfrom exec\npiped in\n",
        "stdout {} stderr {}",
        show(&out.stdout),
        show(&out.stderr)
    );
    assert_eq!(out.exit.map(|e| e.exit_status), Some(0));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_terminal() {
    let world = World::start().await;
    sleeper(&world, "host").await;
    let spec = api::ProcessSpec {
        terminal: true,
        ..process(&["sh", "-c", "read x; stty size; echo $x"])
    };
    exec(&world, "host", "tty", spec, true).await.unwrap();
    let mut attached = world.attach("host", "tty", true).await;
    world.start_task("host", "tty").await;
    world
        .client
        .tasks()
        .resize_pty(api::ResizePtyRequest {
            container_id: "host".into(),
            exec_id: "tty".into(),
            width: 90,
            height: 25,
        })
        .await
        .unwrap();
    attached.stdin(b"go\n").await;
    attached.stdout_until(b"25 90\r\ngo\r\n").await;
    let out = attached.finish(task::EXIT_TIMEOUT).await;
    assert_eq!(
        out.stdout,
        b"go\r\n25 90\r\ngo\r\n",
        "{}",
        show(&out.stdout)
    );
    assert_eq!(out.exit.map(|e| e.exit_status), Some(0));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_ids_are_checked() {
    let world = World::start().await;
    sleeper(&world, "host").await;
    exec(&world, "host", "same", process(&["sleep", "600"]), false)
        .await
        .unwrap();
    expect_code(
        exec(&world, "host", "same", process(&["true"]), false).await,
        Code::AlreadyExists,
        "a second exec with a live exec id",
    );
    for bad in ["", "a/b", "-x", "sp ace"] {
        expect_code(
            exec(&world, "host", bad, process(&["true"]), false).await,
            Code::InvalidArgument,
            &format!("exec id {bad:?}"),
        );
    }
    expect_code(
        exec(&world, "nobody", "e", process(&["true"]), false).await,
        Code::NotFound,
        "exec into a container without a task",
    );
    expect_code(
        exec(&world, "host", "noargs", process(&[]), false).await,
        Code::InvalidArgument,
        "exec without arguments",
    );
    world.finish().await;
}
