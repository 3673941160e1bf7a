//! The memory an idle shim costs: one shim holding a running `sleep` container, measured
//! after some traffic. Ignored by default (it measures, it does not assert much); run it on a
//! release build: `cargo test -p sup-shim --release --test memory -- --ignored --nocapture`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use sup_proto::shim::StateRequest;

fn status_kib(pid: i32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    kib_field(&std::fs::read_to_string(path).unwrap(), field)
}

fn pss_kib(pid: i32) -> u64 {
    let path = format!("/proc/{pid}/smaps_rollup");
    kib_field(&std::fs::read_to_string(path).unwrap_or_default(), "Pss:")
}

fn kib_field(text: &str, field: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn children(pid: i32) -> Vec<i32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[tokio::test]
#[ignore]
async fn idle_shim_memory() {
    let mut f = Fixture::new("mem", &["sleep", "1000"], false);
    let mut c = f.shim(&[]).await;
    let init = i32::try_from(f.run(&mut c, false, false).await).unwrap();
    for _ in 0..20 {
        c.state(StateRequest {
            exec_id: String::new(),
        })
        .await
        .unwrap();
    }
    let _ = logs(&mut c, logs_request("")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = f.shim_pid.unwrap();
    println!(
        "sup-shim pid {pid}: VmRSS {} KiB, Pss {} KiB, VmHWM {} KiB, threads {}",
        status_kib(pid, "VmRSS:"),
        pss_kib(pid),
        status_kib(pid, "VmHWM:"),
        kib_field(
            &std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap(),
            "Threads:"
        ),
    );
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    for field in [
        "Shared_Clean:",
        "Private_Clean:",
        "Private_Dirty:",
        "Anonymous:",
    ] {
        println!("  {field} {} KiB", kib_field(&rollup, field));
    }
    // What the shim costs is itself and the children it keeps, not the container's init.
    let (mut total_rss, mut total_pss) = (status_kib(pid, "VmRSS:"), pss_kib(pid));
    for child in children(pid) {
        if child != init {
            total_rss += status_kib(child, "VmRSS:");
            total_pss += pss_kib(child);
        }
        let cmd = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        let rollup =
            std::fs::read_to_string(format!("/proc/{child}/smaps_rollup")).unwrap_or_default();
        println!(
            "  child {child} ({}): VmRSS {} KiB, Pss {} KiB, Anonymous {} KiB",
            String::from_utf8_lossy(&cmd).replace('\0', " ").trim(),
            status_kib(child, "VmRSS:"),
            pss_kib(child),
            kib_field(&rollup, "Anonymous:")
        );
    }
    println!("shim and its own children: VmRSS {total_rss} KiB, Pss {total_pss} KiB");
    assert!(status_kib(pid, "VmRSS:") > 0);
}
