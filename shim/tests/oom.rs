//! An OOM kill in the container reaches the shim's event stream.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use sup_proto::shim::shim_event::Event;

#[tokio::test]
async fn oom_kill_is_reported() {
    // Doubling a shell variable exhausts a small memory limit quickly.
    let script = "x=0123456789abcdef; while true; do x=$x$x; done";
    let mut f = Fixture::new("oom", &["sh", "-c", script], false);
    f.edit_config(|c| {
        c["linux"]["resources"]["memory"] = serde_json::json!({"limit": 16 << 20});
    });
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
