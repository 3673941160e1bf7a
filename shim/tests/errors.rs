//! How the shim fails: a handshake that reports the reason, runtime failures that keep
//! runc's exit status and words, and requests refused with the code supd acts on.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sup_proto::shim::{CreateRequest, KillRequest, StartRequest, StateRequest};
use tonic::Code;

#[tokio::test]
async fn handshake_reports_a_start_failure() {
    let mut f = Fixture::new("nodir", &["true"], false);
    f.task_dir = f.tmp.path().join("missing");
    let (ok, line) = f.start_shim(&[]);
    assert!(!ok);
    assert!(line.starts_with("error: entering "), "{line}");
    assert!(!f.socket.exists());
}

#[tokio::test]
async fn a_socket_in_use_is_not_taken_over() {
    let mut f = Fixture::new("twice", &["true"], false);
    let _c = f.shim(&[]).await;
    let first = f.shim_pid;
    let (ok, line) = f.start_shim(&[]);
    assert!(!ok);
    assert!(line.contains("in use"), "{line}");
    f.shim_pid = first;
}

#[tokio::test]
async fn nothing_before_create_and_shutdown_without_a_task() {
    let mut f = Fixture::new("empty", &["true"], false);
    let mut c = f.shim(&[]).await;
    let start = c
        .start(StartRequest {
            exec_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(start.code(), Code::NotFound);
    let kill = c
        .kill(KillRequest {
            exec_id: String::new(),
            signal: 9,
            all: false,
        })
        .await
        .unwrap_err();
    assert_eq!(kill.code(), Code::NotFound);
    let state = c
        .state(StateRequest {
            exec_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(state.code(), Code::NotFound);
    assert_eq!(c.pause(()).await.unwrap_err().code(), Code::NotFound);
    c.shutdown(()).await.unwrap();
    eventually("the shim to exit", || !f.shim_alive()).await;
    assert!(!f.socket.exists());
}

#[tokio::test]
async fn runtime_failure_keeps_runc_words() {
    let mut f = Fixture::new("badroot", &["true"], false);
    f.edit_config(|c| c["root"]["path"] = serde_json::json!("no-such-rootfs"));
    let mut c = f.shim(&[]).await;
    let e = c.create(f.create_request(false, false)).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal);
    assert!(
        e.message().starts_with("runc create: exit status 1: "),
        "{}",
        e.message()
    );
    assert!(e.message().contains("no-such-rootfs"), "{}", e.message());
    assert!(!f.runtime_state_exists());
    // Nothing was created: the shim may go.
    c.shutdown(()).await.unwrap();
    eventually("the shim to exit", || !f.shim_alive()).await;
}

#[tokio::test]
async fn bad_create_requests() {
    let mut f = Fixture::new("badreq", &["true"], false);
    let mut c = f.shim(&[]).await;
    let mismatch = c.create(f.create_request(false, true)).await.unwrap_err();
    assert_eq!(mismatch.code(), Code::InvalidArgument);
    let relative = c
        .create(CreateRequest {
            bundle: "bundle".into(),
            ..f.create_request(false, false)
        })
        .await
        .unwrap_err();
    assert_eq!(relative.code(), Code::InvalidArgument);
    let runtime = c
        .create(CreateRequest {
            runtime: "../runc".into(),
            ..f.create_request(false, false)
        })
        .await
        .unwrap_err();
    assert_eq!(runtime.code(), Code::InvalidArgument);
    let missing = c
        .create(CreateRequest {
            runtime: "/nonexistent/runc".into(),
            ..f.create_request(false, false)
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Internal);
    assert!(
        missing.message().contains("/nonexistent/runc"),
        "{}",
        missing.message()
    );
    // After all that, a good request still works.
    f.run(&mut c, false, false).await;
    assert_eq!(wait(&mut c, "").await, 0);
}
