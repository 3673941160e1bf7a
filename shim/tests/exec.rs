//! Exec'd processes and whole-container operations through the shim, against real runc:
//! exec with its own exit code and output, terminals, signals, pids, pause/resume, update,
//! stats, and the error codes supd acts on.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;
use sup_proto::shim::{
    DeleteRequest, ExecRequest, KillRequest, StartRequest, StateRequest, UpdateRequest, WaitRequest,
};

use sup_proto::v1::{attach_request, attach_response, AttachOptions, AttachRequest, TaskStatus};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn exec(id: &str, args: &[&str], terminal: bool) -> ExecRequest {
    ExecRequest {
        exec_id: id.into(),
        process: process_spec(args, terminal),
        stdin: false,
    }
}

fn start(id: &str) -> StartRequest {
    StartRequest { exec_id: id.into() }
}

#[tokio::test]
async fn exec_has_its_own_exit_code_and_output() {
    let mut f = Fixture::new("exec", &["sleep", "1000"], false);
    let mut c = f.shim(&[]).await;
    f.run(&mut c, false, false).await;

    c.exec(exec(
        "e1",
        &["sh", "-c", "echo out; echo err >&2; exit 5"],
        false,
    ))
    .await
    .unwrap();
    assert!(f.task_dir.join("exec-e1.json").exists());
    let dup = c.exec(exec("e1", &["true"], false)).await.unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let pid = c.start(start("e1")).await.unwrap().into_inner().pid;
    assert!(pid > 1);
    assert_eq!(wait(&mut c, "e1").await, 5);
    let (out, err) = logs(&mut c, logs_request("e1")).await;
    assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
    assert!(f.task_dir.join("exit/exec-e1.json").exists());

    let again = c.start(start("e1")).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    let init_again = c.start(start("")).await.unwrap_err();
    assert_eq!(init_again.code(), Code::FailedPrecondition);

    let state = c
        .state(StateRequest {
            exec_id: "e1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (state.status, state.exit_status),
        (TaskStatus::Stopped as i32, 5)
    );
    assert_eq!(state.processes.len(), 2);
    assert_eq!(state.processes[0].status, TaskStatus::Running as i32);

    let del = c
        .delete(DeleteRequest {
            exec_id: "e1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((del.pid, del.exit_status), (pid, 5));
    assert!(!f.task_dir.join("exec-e1.json").exists());
    assert!(!f.task_dir.join("log/exec-e1.log").exists());
    let gone = c
        .wait(WaitRequest {
            exec_id: "e1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // The id is free again, and its new process starts with a fresh log.
    c.exec(exec("e1", &["echo", "second"], false))
        .await
        .unwrap();
    c.start(start("e1")).await.unwrap();
    assert_eq!(wait(&mut c, "e1").await, 0);
    assert_eq!(logs(&mut c, logs_request("e1")).await.0, "second\n");

    c.kill(KillRequest {
        exec_id: String::new(),
        signal: 9,
        all: true,
    })
    .await
    .unwrap();
    assert_eq!(wait(&mut c, "").await, 137);
    c.delete(DeleteRequest {
        exec_id: String::new(),
    })
    .await
    .unwrap();
    c.shutdown(()).await.unwrap();
    eventually("the shim to exit", || !f.shim_alive()).await;
}

#[tokio::test]
async fn exec_signals_pids_and_terminal() {
    let mut f = Fixture::new("execsig", &["sleep", "1000"], false);
    let mut c = f.shim(&[]).await;
    let init_pid = f.run(&mut c, false, false).await;

    c.exec(exec("sleeper", &["sleep", "1000"], false))
        .await
        .unwrap();
    let not_started = c
        .kill(KillRequest {
            exec_id: "sleeper".into(),
            signal: 9,
            all: false,
        })
        .await
        .unwrap_err();
    assert_eq!(not_started.code(), Code::FailedPrecondition);
    let pid = c.start(start("sleeper")).await.unwrap().into_inner().pid;
    let running = c
        .delete(DeleteRequest {
            exec_id: "sleeper".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(running.code(), Code::FailedPrecondition);

    let pids = c.pids(()).await.unwrap().into_inner().processes;
    assert!(pids
        .iter()
        .any(|p| p.pid == init_pid && p.exec_id.is_empty()));
    assert!(pids.iter().any(|p| p.pid == pid && p.exec_id == "sleeper"));

    // Signal 0 means SIGTERM.
    c.kill(KillRequest {
        exec_id: "sleeper".into(),
        signal: 0,
        all: false,
    })
    .await
    .unwrap();
    assert_eq!(wait(&mut c, "sleeper").await, 143);
    let finished = c
        .kill(KillRequest {
            exec_id: "sleeper".into(),
            signal: 9,
            all: false,
        })
        .await
        .unwrap_err();
    assert_eq!(finished.code(), Code::NotFound);

    c.exec(exec("t", &["tty"], true)).await.unwrap();
    c.start(start("t")).await.unwrap();
    assert_eq!(wait(&mut c, "t").await, 0);
    let out = logs(&mut c, logs_request("t")).await.0;
    assert!(out.starts_with("/dev/pts/"), "{out:?}");

    let unknown = c.start(start("nope")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let bad_id = c.exec(exec("a/b", &["true"], false)).await.unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    let bad_spec = c
        .exec(ExecRequest {
            exec_id: "x".into(),
            process: b"{\"args\":[]}".to_vec(),
            stdin: false,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_spec.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn pause_resume_update_and_stats() {
    let mut f = Fixture::new("pause", &["sleep", "1000"], false);
    let mut c = f.shim(&[]).await;
    f.run(&mut c, false, false).await;
    let status = |s: sup_proto::shim::StateResponse| s.status;
    let init = || StateRequest {
        exec_id: String::new(),
    };

    c.pause(()).await.unwrap();
    assert_eq!(
        status(c.state(init()).await.unwrap().into_inner()),
        TaskStatus::Paused as i32
    );
    let paused = c.exec(exec("e", &["true"], false)).await.unwrap_err();
    assert_eq!(paused.code(), Code::FailedPrecondition);
    let twice = c.pause(()).await.unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition);
    c.resume(()).await.unwrap();
    assert_eq!(
        status(c.state(init()).await.unwrap().into_inner()),
        TaskStatus::Running as i32
    );

    let stats = c.stats(()).await.unwrap().into_inner().stats;
    let v: serde_json::Value = serde_json::from_slice(&stats).unwrap();
    assert_eq!(v["type"], "stats");
    assert!(v["data"].is_object());

    c.update(UpdateRequest {
        resources: br#"{"pids":{"limit":200}}"#.to_vec(),
    })
    .await
    .unwrap();
    let bad = c
        .update(UpdateRequest {
            resources: b"not json".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

fn attach_options(exec_id: &str) -> AttachRequest {
    AttachRequest {
        payload: Some(attach_request::Payload::Options(AttachOptions {
            container_id: String::new(),
            exec_id: exec_id.into(),
            stdin: true,
            stdout: true,
            stderr: true,
            logs: false,
        })),
    }
}

/// Collects an attach stream to its end: (output, exit status if an exit frame came).
async fn collect(
    mut stream: tonic::Streaming<sup_proto::v1::AttachResponse>,
) -> (String, Option<u32>) {
    let mut out = String::new();
    let read = async {
        while let Some(m) = stream.message().await.unwrap() {
            match m.payload {
                Some(attach_response::Payload::Output(o)) => {
                    out.push_str(&String::from_utf8_lossy(&o.data))
                }
                Some(attach_response::Payload::Exit(e)) => return Some(e.exit_status),
                None => {}
            }
        }
        None
    };
    let exit = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("attach timed out");
    (out, exit)
}

#[tokio::test]
async fn attach_to_an_exec_before_it_starts() {
    let mut f = Fixture::new("execattach", &["sleep", "1000"], false);
    let mut c = f.shim(&[]).await;
    f.run(&mut c, false, false).await;

    c.exec(ExecRequest {
        stdin: true,
        ..exec("cat", &["sh", "-c", "echo started; cat"], false)
    })
    .await
    .unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(attach_options("cat")).await.unwrap();
    let stream = c
        .attach(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Input sent before the start waits in the pipe.
    tx.send(AttachRequest {
        payload: Some(attach_request::Payload::Stdin(b"early\n".to_vec())),
    })
    .await
    .unwrap();
    c.start(start("cat")).await.unwrap();
    tx.send(AttachRequest {
        payload: Some(attach_request::Payload::CloseStdin(true)),
    })
    .await
    .unwrap();
    let (out, exit) = collect(stream).await;
    assert_eq!(exit, Some(0));
    assert_eq!(out, "started\nearly\n");

    // A terminal exec: its output from the very start reaches an early attacher.
    c.exec(exec("t", &["sh", "-c", "echo hi from $(tty)"], true))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(attach_options("t")).await.unwrap();
    let stream = c
        .attach(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    c.start(start("t")).await.unwrap();
    let (out, exit) = collect(stream).await;
    assert_eq!(exit, Some(0));
    assert!(out.starts_with("hi from /dev/pts/"), "{out:?}");

    // Deleting an exec that never ran ends its attachers and waiters.
    c.exec(exec("never", &["true"], false)).await.unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(attach_options("never")).await.unwrap();
    let stream = c
        .attach(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut waiter = c.clone();
    let waiting = tokio::spawn(async move {
        waiter
            .wait(WaitRequest {
                exec_id: "never".into(),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.delete(DeleteRequest {
        exec_id: "never".into(),
    })
    .await
    .unwrap();
    assert_eq!(collect(stream).await, (String::new(), None));
    let waited = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(waited.unwrap_err().code(), Code::NotFound);
    drop(tx);
}
