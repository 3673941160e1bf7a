//! An OOM kill in the container reaches the shim's event stream.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use sup_proto::shim::shim_event::Event;
use sup_proto::shim::{DeleteRequest, KillRequest};

/// A container whose init doubles a shell variable until a small memory limit kills it
/// (quickly).
fn oom_fixture(name: &str) -> Fixture {
    let script = "x=0123456789abcdef; while true; do x=$x$x; done";
    let f = Fixture::new(name, &["sh", "-c", script], false);
    f.edit_config(|c| {
        c["linux"]["resources"]["memory"] = serde_json::json!({"limit": 16 << 20});
    });
    f
}

/// The shim's descriptors that can carry an OOM notification: eventfds (cgroup v1; the
/// runtime's own waker is one too) and inotify instances (cgroup v2).
fn notification_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| {
            let l = l.to_string_lossy();
            l == "anon_inode:[eventfd]" || l == "anon_inode:inotify"
        })
        .count()
}

fn children(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn oom_kill_is_reported() {
    let mut f = oom_fixture("oom");
    let mut c = f.shim(&[]).await;
    let mut events = c.events(()).await.unwrap().into_inner();
    f.run(&mut c, false, false).await;
    assert_eq!(wait(&mut c, "").await, 137);
    let (mut oom, mut exit) = (false, false);
    let read = async {
        while !(oom && exit) {
            match events.message().await.unwrap().and_then(|e| e.event) {
                Some(Event::Oom(_)) => oom = true,
                Some(Event::Exit(_)) => exit = true,
                None => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    assert!(exit, "exit event");
    assert!(oom, "OOM event");
}

#[tokio::test]
async fn oom_event_comes_before_the_exit() {
    let mut f = oom_fixture("oom-order");
    let mut c = f.shim(&[]).await;
    let mut events = c.events(()).await.unwrap().into_inner();
    f.run(&mut c, false, false).await;
    assert_eq!(wait(&mut c, "").await, 137);
    let mut seen = Vec::new();
    let read = async {
        while let Some(e) = events.message().await.unwrap().and_then(|e| e.event) {
            let exit = matches!(e, Event::Exit(_));
            seen.push(if exit { "exit" } else { "oom" });
            if exit {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap();
    assert_eq!(seen.first(), Some(&"oom"), "events: {seen:?}");
}

#[tokio::test]
async fn oom_watch_needs_no_child_and_leaves_no_descriptor() {
    let mut f = Fixture::new("oom-fds", &["sleep", "1000"], false);
    let mut c = f.shim(&[]).await;
    let shim = f.shim_pid.unwrap();
    let before = notification_fds(shim);
    let pid = f.run(&mut c, false, false).await;
    // Only the container's init: no runtime process stays behind to watch for OOMs.
    assert_eq!(children(shim), vec![pid]);
    assert_eq!(notification_fds(shim), before + 1);

    c.kill(KillRequest {
        exec_id: String::new(),
        signal: 9,
        all: false,
    })
    .await
    .unwrap();
    assert_eq!(wait(&mut c, "").await, 137);
    c.delete(DeleteRequest {
        exec_id: String::new(),
    })
    .await
    .unwrap();
    eventually("the OOM watch to close", || {
        notification_fds(shim) == before
    })
    .await;
    assert!(children(shim).is_empty());
}
