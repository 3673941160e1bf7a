//! The init's life through the shim, against real runc: the detach handshake, output and exit
//! codes, signals, and a clean end (Delete, Shutdown, nothing left behind).

mod common;

use std::time::Duration;

use common::*;
use sup_proto::shim::{DeleteRequest, KillRequest, StartRequest, StateRequest};
use sup_proto::v1::TaskStatus;
use tonic::Code;

#[tokio::test]
async fn output_exit_file_and_clean_shutdown() {
    let mut f = Fixture::new("life", &["sh", "-c", "echo hello; echo err >&2"], false);
    let mut c = f.shim(&[]).await;
    let shim_pid = f.shim_pid.expect("shim.pid written");
    assert!(process_alive(shim_pid));
    assert_ne!(parent_pid(shim_pid), Some(std::process::id() as i32));

    let info = c.info(()).await.unwrap().into_inner();
    assert_eq!(info.shim_pid as i32, shim_pid);
    assert_eq!(info.task_pid, 0);
    let mut events = c.events(()).await.unwrap().into_inner();

    let pid = f.run(&mut c, false, false).await;
    assert!(pid > 1);
    assert_eq!(wait(&mut c, "").await, 0);
    let (out, err) = logs(&mut c, logs_request("")).await;
    assert_eq!(out, "hello\n");
    assert_eq!(err, "err\n");

    let exit: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.task_dir.join("exit/init.json")).unwrap()).unwrap();
    assert_eq!(exit["exit_status"], 0);
    assert_eq!(exit["pid"], pid);
    assert!(exit["exited_at"].as_str().unwrap().ends_with('Z'));

    let ev = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match ev.event {
        Some(sup_proto::shim::shim_event::Event::Exit(e)) => {
            assert_eq!((e.exec_id.as_str(), e.pid, e.exit_status), ("", pid, 0));
        }
        other => panic!("unexpected event {other:?}"),
    }

    let state = c
        .state(StateRequest {
            exec_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.status, TaskStatus::Stopped as i32);
    assert_eq!(state.processes.len(), 1);
    assert!(state.exited_at.is_some());

    let early = c.shutdown(()).await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition);
    let start_again = c
        .start(StartRequest {
            exec_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(start_again.code(), Code::FailedPrecondition);

    let del = c
        .delete(DeleteRequest {
            exec_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((del.pid, del.exit_status), (pid, 0));
    assert!(!f.runtime_state_exists());
    assert!(f.cgroup_dirs().is_empty(), "{:?}", f.cgroup_dirs());

    c.shutdown(()).await.unwrap();
    eventually("the shim to exit", || !f.shim_alive()).await;
    assert!(!f.socket.exists());
    assert!(f.task_dir.join("log/init.log").exists());
}

#[tokio::test]
async fn exit_code_is_kept() {
    let mut f = Fixture::new("code", &["sh", "-c", "exit 3"], false);
    let mut c = f.shim(&[]).await;
    f.run(&mut c, false, false).await;
    assert_eq!(wait(&mut c, "").await, 3);
    let del = c
        .delete(DeleteRequest {
            exec_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(del.exit_status, 3);
}

#[tokio::test]
async fn sigkill_gives_137() {
    let mut f = Fixture::new("kill", &["sleep", "1000"], false);
    let mut c = f.shim(&[]).await;
    f.run(&mut c, false, false).await;
    let running = c
        .delete(DeleteRequest {
            exec_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(running.code(), Code::FailedPrecondition);
    c.kill(KillRequest {
        exec_id: String::new(),
        signal: 9,
        all: false,
    })
    .await
    .unwrap();
    assert_eq!(wait(&mut c, "").await, 137);
    let again = c
        .kill(KillRequest {
            exec_id: String::new(),
            signal: 9,
            all: false,
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    c.delete(DeleteRequest {
        exec_id: String::new(),
    })
    .await
    .unwrap();
    c.shutdown(()).await.unwrap();
    eventually("the shim to exit", || !f.shim_alive()).await;
}

#[tokio::test]
async fn created_task_can_be_deleted_without_running() {
    let mut f = Fixture::new("created", &["sleep", "1000"], false);
    let mut c = f.shim(&[]).await;
    let pid = c
        .create(f.create_request(false, false))
        .await
        .unwrap()
        .into_inner()
        .pid;
    let again = c.create(f.create_request(false, false)).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    let state = c
        .state(StateRequest {
            exec_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((state.pid, state.status), (pid, TaskStatus::Created as i32));
    c.delete(DeleteRequest {
        exec_id: String::new(),
    })
    .await
    .unwrap();
    assert!(!f.runtime_state_exists());
    c.shutdown(()).await.unwrap();
    eventually("the shim to exit", || !f.shim_alive()).await;
}
