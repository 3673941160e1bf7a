//! A process's stdio through the shim, against real runc: stdin over Attach, a terminal and
//! its size, following the logs, rotation and the CRI log file.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use sup_proto::shim::{CloseIoRequest, CreateRequest, StartRequest};
use sup_proto::v1::{
    attach_request, attach_response, AttachOptions, AttachRequest, AttachResponse, LogsRequest,
    ResizePtyRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn options(exec_id: &str, logs: bool) -> AttachRequest {
    AttachRequest {
        payload: Some(attach_request::Payload::Options(AttachOptions {
            container_id: String::new(),
            exec_id: exec_id.into(),
            stdin: true,
            stdout: true,
            stderr: true,
            logs,
        })),
    }
}

fn stdin(data: &str) -> AttachRequest {
    AttachRequest {
        payload: Some(attach_request::Payload::Stdin(data.as_bytes().to_vec())),
    }
}

/// Reads attach output until `until` is in it; returns the output so far.
async fn read_until(
    stream: &mut tonic::Streaming<AttachResponse>,
    out: &mut String,
    until: &str,
) -> Option<u32> {
    let read = async {
        while !out.contains(until) {
            match stream.message().await.unwrap() {
                Some(AttachResponse {
                    payload: Some(attach_response::Payload::Output(o)),
                }) => out.push_str(&String::from_utf8_lossy(&o.data)),
                Some(AttachResponse {
                    payload: Some(attach_response::Payload::Exit(e)),
                }) => return Some(e.exit_status),
                _ => return None,
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {until:?}; got {out:?}"))
}

/// Reads to the end of the attach stream; returns the exit frame's status.
async fn read_to_exit(stream: &mut tonic::Streaming<AttachResponse>, out: &mut String) -> u32 {
    let exit = read_until(stream, out, "\u{0}never\u{0}").await;
    let exit = exit.expect("an exit frame");
    assert!(
        stream.message().await.unwrap().is_none(),
        "stream ends after the exit"
    );
    exit
}

#[tokio::test]
async fn attach_stdin_echoes_and_close_ends_it() {
    let mut f = Fixture::new("cat", &["cat"], false);
    let mut c = f.shim(&[]).await;
    f.run(&mut c, true, false).await;
    let (tx, rx) = mpsc::channel(8);
    tx.send(options("", false)).await.unwrap();
    let mut stream = c
        .attach(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(stdin("ping\n")).await.unwrap();
    let mut out = String::new();
    assert_eq!(read_until(&mut stream, &mut out, "ping\n").await, None);
    tx.send(stdin("pong\n")).await.unwrap();
    assert_eq!(read_until(&mut stream, &mut out, "pong\n").await, None);
    tx.send(AttachRequest {
        payload: Some(attach_request::Payload::CloseStdin(true)),
    })
    .await
    .unwrap();
    assert_eq!(read_to_exit(&mut stream, &mut out).await, 0);
    assert_eq!(out, "ping\npong\n");
    assert_eq!(logs(&mut c, logs_request("")).await.0, "ping\npong\n");
}

#[tokio::test]
async fn close_io_rpc_closes_stdin() {
    let mut f = Fixture::new("closeio", &["sh", "-c", "cat; echo done"], false);
    let mut c = f.shim(&[]).await;
    f.run(&mut c, true, false).await;
    c.close_io(CloseIoRequest {
        exec_id: String::new(),
    })
    .await
    .unwrap();
    assert_eq!(wait(&mut c, "").await, 0);
    assert_eq!(logs(&mut c, logs_request("")).await.0, "done\n");
}

#[tokio::test]
async fn terminal_and_resize() {
    let mut f = Fixture::new("tty", &["sh", "-c", "read x; tty; stty size"], true);
    let mut c = f.shim(&[]).await;
    f.run(&mut c, true, true).await;
    c.resize_pty(ResizePtyRequest {
        container_id: String::new(),
        exec_id: String::new(),
        width: 100,
        height: 40,
    })
    .await
    .unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(options("", true)).await.unwrap();
    let mut stream = c
        .attach(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(stdin("go\n")).await.unwrap();
    let mut out = String::new();
    assert_eq!(read_to_exit(&mut stream, &mut out).await, 0);
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("40 100"), "{out:?}");
    // A terminal has one stream; its output is logged as stdout.
    let (logged, err) = logs(&mut c, logs_request("")).await;
    assert_eq!(logged, out);
    assert!(err.is_empty());
}

#[tokio::test]
async fn resize_without_terminal_is_refused() {
    let mut f = Fixture::new("notty", &["sleep", "1000"], false);
    let mut c = f.shim(&[]).await;
    f.run(&mut c, false, false).await;
    let e = c
        .resize_pty(ResizePtyRequest {
            container_id: String::new(),
            exec_id: String::new(),
            width: 80,
            height: 24,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn logs_follow_has_no_gaps_or_duplicates() {
    let script = "i=0; while [ $i -lt 40 ]; do echo line-$i; echo err-$i >&2; sleep 0.02; i=$((i+1)); done; printf tail";
    let mut f = Fixture::new("follow", &["sh", "-c", script], false);
    let mut c = f.shim(&[]).await;
    f.run(&mut c, false, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Started while the process writes: part comes from the file, the rest live.
    let follow = LogsRequest {
        exec_id: String::new(),
        follow: true,
        ..Default::default()
    };
    let (out, err) = logs(&mut c, follow.clone()).await;
    let want_out: String = (0..40).map(|i| format!("line-{i}\n")).collect::<String>() + "tail";
    let want_err: String = (0..40).map(|i| format!("err-{i}\n")).collect();
    assert_eq!(out, want_out);
    assert_eq!(err, want_err);
    // After the exit, following ends at once with everything.
    assert_eq!(logs(&mut c, follow).await.0, want_out);
    let tail = LogsRequest {
        exec_id: String::new(),
        tail: 2,
        ..Default::default()
    };
    let (out, err) = logs(&mut c, tail).await;
    assert_eq!((out.as_str(), err.as_str()), ("tail", "err-39\n"));
}

#[tokio::test]
async fn logs_rotate_by_size() {
    let script = "i=0; while [ $i -lt 60 ]; do echo line-$i; sleep 0.01; i=$((i+1)); done";
    let mut f = Fixture::new("rotate", &["sh", "-c", script], false);
    let mut c = f
        .shim(&["--log-max-size", "300", "--log-max-files", "2"])
        .await;
    f.run(&mut c, false, false).await;
    assert_eq!(wait(&mut c, "").await, 0);
    let log = f.task_dir.join("log");
    assert!(log.join("init.log").exists());
    assert!(log.join("init.log.1").exists());
    assert!(log.join("init.log.2").exists());
    assert!(!log.join("init.log.3").exists());
    for name in ["init.log", "init.log.1", "init.log.2"] {
        let len = std::fs::metadata(log.join(name)).unwrap().len();
        assert!(len < 300 + 100, "{name} is {len} bytes");
    }
    let full: String = (0..60).map(|i| format!("line-{i}\n")).collect();
    let (out, _) = logs(&mut c, logs_request("")).await;
    assert!(out.len() < full.len() && full.ends_with(&out), "{out:?}");
    assert!(out.starts_with("line-"), "whole lines only: {out:?}");
    let tail = LogsRequest {
        exec_id: String::new(),
        tail: 3,
        ..Default::default()
    };
    assert_eq!(logs(&mut c, tail).await.0, "line-57\nline-58\nline-59\n");
}

#[tokio::test]
async fn cri_log_file_gets_the_same_lines() {
    let mut f = Fixture::new("cri", &["sh", "-c", "echo hi; printf part"], false);
    let mut c = f.shim(&[]).await;
    let cri = f.tmp.path().join("pods/uid/c/0.log");
    c.create(CreateRequest {
        cri_log_path: cri.display().to_string(),
        ..f.create_request(false, false)
    })
    .await
    .unwrap();
    c.start(StartRequest {
        exec_id: String::new(),
    })
    .await
    .unwrap();
    assert_eq!(wait(&mut c, "").await, 0);
    let text = std::fs::read_to_string(&cri).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    let fields: Vec<&str> = lines[0].splitn(4, ' ').collect();
    assert!(fields[0].ends_with('Z') && fields[0].contains('T'));
    assert_eq!(&fields[1..], &["stdout", "F", "hi"]);
    assert!(lines[1].ends_with(" stdout P part"));
    assert_eq!(
        text,
        std::fs::read_to_string(f.task_dir.join("log/init.log")).unwrap()
    );
    let (out, _) = logs(&mut c, logs_request("")).await;
    assert_eq!(out, "hi\npart");
}
