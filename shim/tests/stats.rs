//! The shim's Stats, read from the container's cgroup files, against `runc events --stats` for
//! the same running container: the same document, with the same numbers where they hold still.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sup_proto::shim::UpdateRequest;

const MIB: u64 = 1 << 20;

async fn shim_stats(c: &mut Client) -> Value {
    let bytes = c.stats(()).await.unwrap().into_inner().stats;
    serde_json::from_slice(&bytes).unwrap()
}

fn runc_stats(f: &Fixture) -> Value {
    let out = Command::new("runc")
        .arg("--root")
        .arg(&f.runtime_root)
        .args(["events", "--stats", &f.id])
        .output()
        .unwrap();
    assert!(out.status.success(), "runc events: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The JSON pointers of every number and string below `v`; an array counts as one (its
/// entries' order is not the same from one reader to the other on v2).
fn leaves(v: &Value, at: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                leaves(x, &format!("{at}/{k}"), out);
            }
        }
        _ => {
            out.insert(at.to_string());
        }
    }
}

fn u(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no {pointer} in {v:#}"))
}

/// (major, minor, op) of the entries of a blkio table, and the entries by that key.
fn blkio(v: &Value, table: &str) -> Vec<((u64, u64, String), u64)> {
    let mut entries: Vec<_> = v["blkio"][table]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let n = |k: &str| e.get(k).and_then(Value::as_u64).unwrap_or(0);
            let op = e
                .get("op")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            ((n("major"), n("minor"), op), n("value"))
        })
        .collect();
    entries.sort();
    entries
}

/// Waits until nothing in the container comes or goes: its init has become the `sleep` its
/// script ends with, and the cgroup counts that one process alone. A start returns once the
/// runtime has let its `runc init` go, not once that (several threads) has become the program
/// and its threads are gone, which on a loaded machine is a while later; numbers read before
/// then differ between two readers.
async fn settle(f: &Fixture, init: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let comm = std::fs::read_to_string(format!("/proc/{init}/comm")).unwrap_or_default();
        if comm.trim() == "sleep" && u(&runc_stats(f)["data"], "/pids/current") == 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the container did not settle: init is {comm:?}, {:#}",
            runc_stats(f)["data"]["pids"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_same_document_as_runc() {
    // Some CPU time first, then nothing moves.
    let script = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 1000";
    let mut f = Fixture::new("stats", &["sh", "-c", script], false);
    f.edit_config(|c| {
        c["linux"]["resources"]["memory"] = json!({"limit": 64 * MIB});
        c["linux"]["resources"]["pids"] = json!({"limit": 20});
    });
    let mut c = f.shim(&[]).await;
    let init = f.run(&mut c, false, false).await;
    settle(&f, init).await;

    let theirs = runc_stats(&f);
    let started = Instant::now();
    let ours = shim_stats(&mut c).await;
    let took = started.elapsed();
    println!("shim Stats took {took:?}");
    println!("runc: {theirs:#}\nshim: {ours:#}");

    assert_eq!(ours["type"], "stats");
    assert_eq!(ours["id"], theirs["id"]);
    // runc writes sections the shim does not read (cpuset, hugetlb...): these numbers came
    // from the cgroup files, not from a runc process.
    assert!(theirs["data"].get("hugetlb").is_some());
    assert!(ours["data"].get("hugetlb").is_none(), "{ours:#}");

    let (d, r) = (&ours["data"], &theirs["data"]);
    // The same fields, zeros left out alike; but where the kernel has them, the shim reports
    // two things runc 1.1 does not read on cgroup v2 (runc 1.2 does): the peak usage
    // (memory.peak) and pressure (the PSI files).
    let newer = |field: &str| field == "memory/usage/max" || field.contains("/psi/");
    for section in ["cpu", "memory", "pids", "blkio"] {
        let (mut mine, mut runcs) = (BTreeSet::new(), BTreeSet::new());
        leaves(&d[section], section, &mut mine);
        leaves(&r[section], section, &mut runcs);
        let extra: Vec<&String> = mine.difference(&runcs).collect();
        assert!(
            extra.iter().all(|f| newer(f)),
            "the fields of {section}: {extra:?} beyond runc's"
        );
        mine.retain(|f| runcs.contains(f) || !newer(f));
        assert_eq!(mine, runcs, "the fields of {section}");
    }
    if d.pointer("/memory/usage/max").is_some() {
        assert!(u(d, "/memory/usage/max") >= u(d, "/memory/usage/usage"));
    }
    // Limits and counts that hold still.
    assert_eq!(u(d, "/memory/usage/limit"), 64 * MIB);
    assert_eq!(u(d, "/memory/usage/limit"), u(r, "/memory/usage/limit"));
    assert_eq!(u(d, "/memory/swap/limit"), u(r, "/memory/swap/limit"));
    assert_eq!(u(d, "/pids/limit"), 20);
    assert_eq!(u(d, "/pids/current"), u(r, "/pids/current"));
    assert_eq!(d["cpu"]["throttling"], r["cpu"]["throttling"]);
    // Counters read after runc's: as far or further, not by much.
    for counter in ["/cpu/usage/total", "/cpu/usage/user", "/cpu/usage/kernel"] {
        let (mine, runcs) = (u(d, counter), u(r, counter));
        assert!(
            mine >= runcs && mine - runcs < 1_000_000_000,
            "{counter}: {mine} after runc's {runcs}"
        );
    }
    assert!(u(d, "/cpu/usage/total") > 0);
    assert!(u(d, "/memory/usage/usage") > 0);
    if r.pointer("/memory/usage/max").is_some() {
        assert!(u(d, "/memory/usage/max") >= u(r, "/memory/usage/max"));
    }
    if let Some(percpu) = r["cpu"]["usage"]["percpu"].as_array() {
        assert_eq!(
            d["cpu"]["usage"]["percpu"].as_array().unwrap().len(),
            percpu.len()
        );
    }
    // memory.stat, key for key.
    let keys = |v: &Value| -> BTreeSet<String> {
        v["memory"]["raw"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(keys(d), keys(r));
    for table in ["ioServiceBytesRecursive", "ioServicedRecursive"] {
        let (mine, runcs) = (blkio(d, table), blkio(r, table));
        let names = |e: &[((u64, u64, String), u64)]| -> Vec<_> {
            e.iter().map(|(k, _)| k.clone()).collect()
        };
        assert_eq!(names(&mine), names(&runcs), "{table}");
        for ((key, mine), (_, runcs)) in mine.iter().zip(&runcs) {
            assert!(
                mine >= runcs,
                "{table} {key:?}: {mine} after runc's {runcs}"
            );
        }
    }

    // The directories are kept, the numbers are read anew.
    c.update(UpdateRequest {
        resources: br#"{"pids":{"limit":30},"memory":{"limit":100663296}}"#.to_vec(),
    })
    .await
    .unwrap();
    let after = shim_stats(&mut c).await;
    assert_eq!(u(&after["data"], "/pids/limit"), 30);
    assert_eq!(u(&after["data"], "/memory/usage/limit"), 96 * MIB);
    assert_eq!(
        u(&after["data"], "/memory/usage/limit"),
        u(&runc_stats(&f)["data"], "/memory/usage/limit")
    );
}

/// Without limits: what runc writes for "no limit" (pids: nothing; memory: a huge number).
#[tokio::test]
async fn no_limits_read_as_runc_reads_them() {
    let mut f = Fixture::new("stats-nolimit", &["sleep", "1000"], false);
    let mut c = f.shim(&[]).await;
    let init = f.run(&mut c, false, false).await;
    settle(&f, init).await;
    let theirs = runc_stats(&f);
    let ours = shim_stats(&mut c).await;
    let (d, r) = (&ours["data"], &theirs["data"]);
    assert_eq!(d["pids"], r["pids"]);
    assert!(d["pids"].get("limit").is_none(), "{d:#}");
    assert_eq!(u(d, "/memory/usage/limit"), u(r, "/memory/usage/limit"));
    assert!(u(d, "/memory/usage/limit") >= 1 << 62);
}
