//! cgroup v2: every number in the one directory, turned into runc's v1-shaped document as runc
//! turns it (microseconds to nanoseconds, memory.current as the usage, io.stat split into
//! bytes and operations).

use std::path::Path;

use super::document::{
    Blkio, BlkioEntry, Cpu, CpuUsage, Memory, MemoryEntry, Pids, Psi, PsiData, Stats, Throttling,
};
use super::{get, pids_limit, Files, StatsError};

pub(super) fn read(dir: &Path, files: &mut Files) -> Result<Stats, StatsError> {
    let mut stats = Stats {
        cpu: cpu(dir, files)?,
        memory: memory(dir, files)?,
        pids: pids(dir, files)?,
        blkio: io(dir, files)?,
    };
    stats.cpu.psi = pressure(dir, "cpu.pressure");
    stats.memory.psi = pressure(dir, "memory.pressure");
    stats.blkio.psi = pressure(dir, "io.pressure");
    Ok(stats)
}

/// A pressure file, if the kernel keeps one (PSI built in and not off: without it the file
/// is missing or cannot be read, which is no error).
fn pressure(dir: &Path, name: &str) -> Option<Psi> {
    parse_pressure(&std::fs::read_to_string(dir.join(name)).ok()?)
}

/// `some avg10=0.00 avg60=0.00 avg300=0.00 total=0` and a `full` line (the CPU's `full`
/// line is all zeros before Linux 5.13, or missing).
fn parse_pressure(text: &str) -> Option<Psi> {
    let mut psi = Psi::default();
    let mut any = false;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let data = match fields.next() {
            Some("some") => &mut psi.some,
            Some("full") => &mut psi.full,
            _ => continue,
        };
        let mut parsed = PsiData::default();
        for field in fields {
            let (key, value) = field.split_once('=')?;
            let avg = || value.parse::<f64>().ok().filter(|v| v.is_finite());
            match key {
                "avg10" => parsed.avg10 = avg()?,
                "avg60" => parsed.avg60 = avg()?,
                "avg300" => parsed.avg300 = avg()?,
                "total" => parsed.total = value.parse().ok()?,
                _ => {}
            }
        }
        *data = parsed;
        any = true;
    }
    any.then_some(psi)
}

/// cpu.stat is there even when the cpu controller is not enabled (usage, not throttling).
fn cpu(dir: &Path, files: &mut Files) -> Result<Cpu, StatsError> {
    let Some(stat) = files.keyed(dir, "cpu.stat")? else {
        return Ok(Cpu::default());
    };
    let nanos = |key| get(&stat, key).saturating_mul(1000);
    Ok(Cpu {
        usage: CpuUsage {
            total: nanos("usage_usec"),
            user: nanos("user_usec"),
            kernel: nanos("system_usec"),
            ..CpuUsage::default()
        },
        throttling: Throttling {
            periods: get(&stat, "nr_periods"),
            throttled_periods: get(&stat, "nr_throttled"),
            throttled_time: nanos("throttled_usec"),
        },
        psi: None,
    })
}

fn memory(dir: &Path, files: &mut Files) -> Result<Memory, StatsError> {
    let raw = files.keyed(dir, "memory.stat")?.unwrap_or_default();
    let events = files.keyed(dir, "memory.events")?.unwrap_or_default();
    let mut memory = Memory {
        cache: get(&raw, "file"),
        oom_kills: get(&events, "oom_kill"),
        raw,
        ..Memory::default()
    };
    let Some(usage) = files.number(dir, "memory.current")? else {
        return Ok(memory);
    };
    let limit = files.number(dir, "memory.max")?.unwrap_or(u64::MAX);
    memory.usage = MemoryEntry {
        usage,
        limit,
        // memory.peak: Linux 5.19 on.
        max: files.number(dir, "memory.peak")?.unwrap_or(0),
        failcnt: 0,
    };
    // v1 counted memory and swap together, and runc reports v2's swap the same way.
    let swap = files.number(dir, "memory.swap.current")?.unwrap_or(0);
    let swap_limit = files.number(dir, "memory.swap.max")?.unwrap_or(0);
    memory.swap = MemoryEntry {
        usage: swap.saturating_add(usage),
        limit: if swap_limit == u64::MAX {
            u64::MAX
        } else {
            swap_limit.saturating_add(limit)
        },
        ..MemoryEntry::default()
    };
    Ok(memory)
}

/// Without the pids controller enabled, the processes in cgroup.procs (and no limit).
fn pids(dir: &Path, files: &mut Files) -> Result<Pids, StatsError> {
    if let Some(current) = files.number(dir, "pids.current")? {
        return Ok(Pids {
            current,
            limit: pids_limit(files.number(dir, "pids.max")?),
        });
    }
    let procs = files.text(dir, "cgroup.procs")?.unwrap_or_default();
    Ok(Pids {
        current: procs.lines().filter(|l| !l.trim().is_empty()).count() as u64,
        limit: 0,
    })
}

/// `8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0` lines.
fn io(dir: &Path, files: &mut Files) -> Result<Blkio, StatsError> {
    let Some(text) = files.text(dir, "io.stat")? else {
        return Ok(Blkio::default());
    };
    let mut blkio = Blkio::default();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some((major, minor)) = fields.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else {
            continue;
        };
        for field in fields {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let (table, op) = match key {
                "rbytes" => (&mut blkio.io_service_bytes_recursive, "Read"),
                "wbytes" => (&mut blkio.io_service_bytes_recursive, "Write"),
                "rios" => (&mut blkio.io_serviced_recursive, "Read"),
                "wios" => (&mut blkio.io_serviced_recursive, "Write"),
                _ => continue,
            };
            let Ok(value) = value.parse() else {
                continue;
            };
            table.push(BlkioEntry {
                major,
                minor,
                op: op.to_string(),
                value,
            });
        }
    }
    Ok(blkio)
}

#[cfg(test)]
mod tests {
    use super::super::CgroupStats;
    use super::*;
    use serde_json::{json, Value};

    /// The files of a v2 container on Linux 6.x.
    fn fake_dir(dir: &Path) {
        let files: &[(&str, &str)] = &[
            (
                "cpu.stat",
                "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n\
                 core_sched.force_idle_usec 0\nnr_periods 50\nnr_throttled 5\n\
                 throttled_usec 7000\nnr_bursts 0\nburst_usec 0\n",
            ),
            (
                "memory.stat",
                "anon 8192\nfile 4096\nkernel 1024\nshmem 0\ninactive_file 2048\n\
                 active_file 2048\npgfault 99\npgmajfault 1\n",
            ),
            ("memory.current", "16384\n"),
            ("memory.max", "67108864\n"),
            ("memory.peak", "32768\n"),
            ("memory.swap.current", "0\n"),
            ("memory.swap.max", "max\n"),
            ("memory.events", "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n"),
            ("pids.current", "4\n"),
            ("pids.max", "max\n"),
            (
                "io.stat",
                "8:0 rbytes=12288 wbytes=8192 rios=3 wios=2 dbytes=0 dios=0\n\
                 259:1 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
            ),
        ];
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    fn document(dir: &Path) -> Value {
        let doc = CgroupStats::V2(dir.to_path_buf()).document("web").unwrap();
        serde_json::from_slice(&doc).unwrap()
    }

    #[test]
    fn pressure_files() {
        let psi = parse_pressure(
            "some avg10=1.50 avg60=0.25 avg300=0.00 total=123456\n\
             full avg10=0.50 avg60=0.00 avg300=0.00 total=789\n",
        )
        .unwrap();
        assert_eq!(psi.some.avg10, 1.5);
        assert_eq!(psi.some.avg60, 0.25);
        assert_eq!(psi.some.total, 123456);
        assert_eq!(psi.full.total, 789);
        // A CPU file of an older kernel has no full line.
        let cpu = parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n").unwrap();
        assert_eq!((cpu.some.total, cpu.full.total), (5, 0));
        assert_eq!(parse_pressure(""), None);
        assert_eq!(
            parse_pressure("some avg10=x avg60=0 avg300=0 total=1\n"),
            None
        );

        let tmp = tempfile::tempdir().unwrap();
        fake_dir(tmp.path());
        std::fs::write(
            tmp.path().join("memory.pressure"),
            "some avg10=2.00 avg60=1.00 avg300=0.50 total=4000\n\
             full avg10=1.00 avg60=0.50 avg300=0.25 total=2000\n",
        )
        .unwrap();
        let doc = document(tmp.path());
        assert_eq!(doc["data"]["memory"]["psi"]["full"]["total"], 2000);
        assert_eq!(doc["data"]["memory"]["psi"]["some"]["avg10"], 2.0);
        assert!(
            doc["data"]["cpu"].get("psi").is_none(),
            "no cpu.pressure, no psi"
        );
    }

    #[test]
    fn a_whole_directory() {
        let tmp = tempfile::tempdir().unwrap();
        fake_dir(tmp.path());
        let v = document(tmp.path());
        assert_eq!(v["type"], "stats");
        assert_eq!(v["id"], "web");
        let d = &v["data"];
        let at = |p: &str| d.pointer(p).cloned().unwrap_or(Value::Null);
        assert_eq!(at("/cpu/usage/total"), 123_456_000);
        assert_eq!(at("/cpu/usage/user"), 100_000_000);
        assert_eq!(at("/cpu/usage/kernel"), 23_456_000);
        assert_eq!(at("/cpu/throttling/periods"), 50);
        assert_eq!(at("/cpu/throttling/throttledPeriods"), 5);
        assert_eq!(at("/cpu/throttling/throttledTime"), 7_000_000);
        assert_eq!(
            d["memory"]["usage"],
            json!({"limit": 67108864, "usage": 16384, "max": 32768, "failcnt": 0})
        );
        assert_eq!(
            d["memory"]["swap"],
            json!({"limit": u64::MAX, "usage": 16384, "failcnt": 0})
        );
        assert_eq!(at("/memory/cache"), 4096);
        assert_eq!(at("/memory/oomKills"), 1);
        for (key, value) in [
            ("anon", 8192),
            ("file", 4096),
            ("inactive_file", 2048),
            ("pgfault", 99),
            ("pgmajfault", 1),
        ] {
            assert_eq!(at(&format!("/memory/raw/{key}")), value, "{key}");
        }
        assert_eq!(d["memory"]["raw"].as_object().unwrap().len(), 8);
        // "max" pids: no limit, which runc writes as nothing.
        assert_eq!(d["pids"], json!({"current": 4}));
        assert_eq!(
            d["blkio"]["ioServiceBytesRecursive"],
            json!([
                {"major": 8, "op": "Read", "value": 12288},
                {"major": 8, "op": "Write", "value": 8192},
                {"major": 259, "minor": 1, "op": "Read", "value": 4096},
                {"major": 259, "minor": 1, "op": "Write"},
            ])
        );
        assert_eq!(
            d["blkio"]["ioServicedRecursive"][0],
            json!({"major": 8, "op": "Read", "value": 3})
        );
    }

    #[test]
    fn unlimited_memory_and_no_swap_accounting() {
        let tmp = tempfile::tempdir().unwrap();
        fake_dir(tmp.path());
        std::fs::write(tmp.path().join("memory.max"), "max\n").unwrap();
        for gone in ["memory.swap.current", "memory.swap.max", "memory.peak"] {
            std::fs::remove_file(tmp.path().join(gone)).unwrap();
        }
        let v = document(tmp.path());
        let memory = &v["data"]["memory"];
        assert_eq!(
            memory["usage"],
            json!({"limit": u64::MAX, "usage": 16384, "failcnt": 0})
        );
        assert_eq!(
            memory["swap"],
            json!({"limit": u64::MAX, "usage": 16384, "failcnt": 0})
        );

        std::fs::write(tmp.path().join("memory.max"), "1000\n").unwrap();
        std::fs::write(tmp.path().join("memory.swap.max"), "500\n").unwrap();
        let v = document(tmp.path());
        assert_eq!(v["data"]["memory"]["swap"]["limit"], 1500);
    }

    #[test]
    fn controllers_not_enabled() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(
            dir.join("cpu.stat"),
            "usage_usec 10\nuser_usec 6\nsystem_usec 4\n",
        )
        .unwrap();
        std::fs::write(dir.join("cgroup.procs"), "12\n13\n").unwrap();
        let v = document(dir);
        let d = &v["data"];
        assert_eq!(
            d["cpu"],
            json!({"usage": {"total": 10000, "kernel": 4000, "user": 6000}, "throttling": {}})
        );
        assert_eq!(d["pids"], json!({"current": 2}));
        assert_eq!(d["memory"]["usage"], json!({"limit": 0, "failcnt": 0}));
        assert!(d["memory"].get("raw").is_none());
        assert_eq!(d["blkio"], json!({}));
    }

    #[test]
    fn odd_io_lines_are_passed_over() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("io.stat"),
            "junk\n8:x rbytes=1\n8:1 rbytes=x wbytes=5 cost.usage=9 alone\n",
        )
        .unwrap();
        let v = document(tmp.path());
        assert_eq!(
            v["data"]["blkio"],
            json!({"ioServiceBytesRecursive": [{"major": 8, "minor": 1, "op": "Write", "value": 5}]})
        );
    }
}
