//! cgroup v1: each controller's numbers in its own hierarchy's directory, read as runc reads
//! them (cpuacct.stat in USER_HZ ticks, memory.*_in_bytes, the first blkio files that count).

use std::path::{Path, PathBuf};

use super::document::{Blkio, BlkioEntry, CpuUsage, Memory, MemoryEntry, Pids, Stats, Throttling};
use super::{get, pids_limit, Files, StatsError};
use crate::cgroup::Cgroups;

/// Nanoseconds per tick of cpuacct.stat: USER_HZ is 100 on every Linux ABI.
const NANOS_PER_TICK: u64 = 10_000_000;

/// Where each blkio count may be, as (operations, bytes), in runc's order of preference: the
/// BFQ scheduler's, CFQ's (gone since Linux 5.0), then the throttling layer's, which sees all
/// IO. The first pair whose first file counts anything is the one reported.
const BLKIO_FILES: [(&str, &str); 4] = [
    (
        "blkio.bfq.io_serviced_recursive",
        "blkio.bfq.io_service_bytes_recursive",
    ),
    (
        "blkio.io_serviced_recursive",
        "blkio.io_service_bytes_recursive",
    ),
    (
        "blkio.throttle.io_serviced_recursive",
        "blkio.throttle.io_service_bytes_recursive",
    ),
    (
        "blkio.throttle.io_serviced",
        "blkio.throttle.io_service_bytes",
    ),
];

/// The directories of the controllers whose numbers are reported; `None`: not mounted here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirs {
    pub cpu: Option<PathBuf>,
    pub cpuacct: Option<PathBuf>,
    pub memory: Option<PathBuf>,
    pub pids: Option<PathBuf>,
    pub blkio: Option<PathBuf>,
}

impl Dirs {
    pub fn of(cgroups: &Cgroups) -> Dirs {
        let dir = |controller| cgroups.v1_dir(controller).map(Path::to_path_buf);
        Dirs {
            cpu: dir("cpu"),
            cpuacct: dir("cpuacct"),
            memory: dir("memory"),
            pids: dir("pids"),
            blkio: dir("blkio"),
        }
    }

    /// `<root>/<controller>` for each: the usual /sys/fs/cgroup layout, below a root.
    #[cfg(test)]
    pub fn under(root: &Path) -> Dirs {
        Dirs {
            cpu: Some(root.join("cpu")),
            cpuacct: Some(root.join("cpuacct")),
            memory: Some(root.join("memory")),
            pids: Some(root.join("pids")),
            blkio: Some(root.join("blkio")),
        }
    }
}

pub(super) fn read(dirs: &Dirs, files: &mut Files) -> Result<Stats, StatsError> {
    let mut stats = Stats::default();
    if let Some(dir) = &dirs.cpuacct {
        stats.cpu.usage = cpu_usage(dir, files)?;
    }
    if let Some(dir) = &dirs.cpu {
        stats.cpu.throttling = throttling(dir, files)?;
    }
    if let Some(dir) = &dirs.memory {
        stats.memory = memory(dir, files)?;
    }
    if let Some(dir) = &dirs.pids {
        stats.pids = Pids {
            current: files.number(dir, "pids.current")?.unwrap_or(0),
            limit: pids_limit(files.number(dir, "pids.max")?),
        };
    }
    if let Some(dir) = &dirs.blkio {
        stats.blkio = blkio(dir, files)?;
    }
    Ok(stats)
}

fn cpu_usage(dir: &Path, files: &mut Files) -> Result<CpuUsage, StatsError> {
    let mut usage = CpuUsage {
        total: files.number(dir, "cpuacct.usage")?.unwrap_or(0),
        ..CpuUsage::default()
    };
    if let Some(ticks) = files.keyed(dir, "cpuacct.stat")? {
        usage.user = get(&ticks, "user").saturating_mul(NANOS_PER_TICK);
        usage.kernel = get(&ticks, "system").saturating_mul(NANOS_PER_TICK);
    }
    if let Some(text) = files.text(dir, "cpuacct.usage_percpu")? {
        let percpu: Option<Vec<u64>> = text.split_whitespace().map(|n| n.parse().ok()).collect();
        usage.percpu = percpu.ok_or_else(|| StatsError::Format {
            path: dir.join("cpuacct.usage_percpu"),
            text,
        })?;
    }
    if let Some(text) = files.text(dir, "cpuacct.usage_all")? {
        // `cpu user system` then a line per CPU, in nanoseconds.
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split(' ').collect();
            let [_, user, system] = fields[..] else {
                continue;
            };
            let (Ok(user), Ok(system)) = (user.parse(), system.parse()) else {
                return Err(StatsError::Format {
                    path: dir.join("cpuacct.usage_all"),
                    text,
                });
            };
            usage.percpu_user.push(user);
            usage.percpu_kernel.push(system);
        }
    }
    Ok(usage)
}

fn throttling(dir: &Path, files: &mut Files) -> Result<Throttling, StatsError> {
    let Some(stat) = files.keyed(dir, "cpu.stat")? else {
        return Ok(Throttling::default());
    };
    Ok(Throttling {
        periods: get(&stat, "nr_periods"),
        throttled_periods: get(&stat, "nr_throttled"),
        throttled_time: get(&stat, "throttled_time"),
    })
}

fn memory(dir: &Path, files: &mut Files) -> Result<Memory, StatsError> {
    let raw = files.keyed(dir, "memory.stat")?.unwrap_or_default();
    let control = files.keyed(dir, "memory.oom_control")?.unwrap_or_default();
    Ok(Memory {
        cache: get(&raw, "cache"),
        oom_kills: get(&control, "oom_kill"),
        raw,
        usage: memory_entry(dir, "memory", files)?,
        swap: memory_entry(dir, "memory.memsw", files)?,
        kernel: memory_entry(dir, "memory.kmem", files)?,
        kernel_tcp: memory_entry(dir, "memory.kmem.tcp", files)?,
        psi: None,
    })
}

/// `<prefix>.usage_in_bytes` and its siblings; all zero when the kernel keeps no such count
/// (swap accounting off, kernel memory accounting gone).
fn memory_entry(dir: &Path, prefix: &str, files: &mut Files) -> Result<MemoryEntry, StatsError> {
    let mut number = |suffix: &str| files.number(dir, &format!("{prefix}.{suffix}"));
    let Some(usage) = number("usage_in_bytes")? else {
        return Ok(MemoryEntry::default());
    };
    Ok(MemoryEntry {
        usage,
        max: number("max_usage_in_bytes")?.unwrap_or(0),
        failcnt: number("failcnt")?.unwrap_or(0),
        limit: number("limit_in_bytes")?.unwrap_or(0),
    })
}

fn blkio(dir: &Path, files: &mut Files) -> Result<Blkio, StatsError> {
    for (serviced, bytes) in BLKIO_FILES {
        let Some(ops) = files.text(dir, serviced)? else {
            continue;
        };
        let ops = blkio_entries(&ops);
        if ops.is_empty() {
            continue;
        }
        let bytes = files.text(dir, bytes)?;
        return Ok(Blkio {
            io_service_bytes_recursive: bytes.as_deref().map(blkio_entries).unwrap_or_default(),
            io_serviced_recursive: ops,
            psi: None,
        });
    }
    Ok(Blkio::default())
}

/// `8:0 Read 1282048` lines (or `8:0 6792`, without an operation); the `Total` line and any
/// line of another shape are left out.
fn blkio_entries(text: &str) -> Vec<BlkioEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split([' ', ':']).filter(|f| !f.is_empty()).collect();
            let (major, minor, op, value) = match fields[..] {
                [major, minor, value] => (major, minor, "", value),
                [major, minor, op, value] => (major, minor, op, value),
                _ => return None,
            };
            Some(BlkioEntry {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                op: op.to_string(),
                value: value.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::CgroupStats;
    use super::*;
    use serde_json::{json, Value};

    /// Files of a v1 container on Linux 6.x, below `root/<controller>`.
    fn fake_tree(root: &Path) {
        let files: &[(&str, &str)] = &[
            ("cpuacct/cpuacct.usage", "123456789\n"),
            ("cpuacct/cpuacct.stat", "user 7\nsystem 3\n"),
            ("cpuacct/cpuacct.usage_percpu", "100000000 23456789 \n"),
            (
                "cpuacct/cpuacct.usage_all",
                "cpu user system\n0 90000000 10000000\n1 23456789 0\n",
            ),
            (
                "cpu/cpu.stat",
                "nr_periods 40\nnr_throttled 4\nthrottled_time 5000000\nnr_bursts 0\nburst_time 0\n",
            ),
            (
                "memory/memory.stat",
                "cache 4096\nrss 8192\nmapped_file 0\npgfault 77\npgmajfault 2\n\
                 inactive_file 1024\ntotal_cache 4096\ntotal_rss 8192\n\
                 total_inactive_file 1024\ntotal_pgfault 77\n",
            ),
            (
                "memory/memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            ),
            ("memory/memory.usage_in_bytes", "16384\n"),
            ("memory/memory.max_usage_in_bytes", "20480\n"),
            ("memory/memory.failcnt", "1\n"),
            ("memory/memory.limit_in_bytes", "67108864\n"),
            ("memory/memory.memsw.usage_in_bytes", "16384\n"),
            ("memory/memory.memsw.max_usage_in_bytes", "20480\n"),
            ("memory/memory.memsw.failcnt", "0\n"),
            ("memory/memory.memsw.limit_in_bytes", "9223372036854771712\n"),
            ("pids/pids.current", "3\n"),
            ("pids/pids.max", "20\n"),
            ("blkio/blkio.bfq.io_serviced_recursive", "Total 0\n"),
            (
                "blkio/blkio.throttle.io_serviced_recursive",
                "8:0 Read 3\n8:0 Write 2\n8:0 Sync 5\n8:0 Async 0\n8:0 Discard 0\n8:0 Total 5\nTotal 5\n",
            ),
            (
                "blkio/blkio.throttle.io_service_bytes_recursive",
                "8:0 Read 12288\n8:0 Write 8192\n8:0 Sync 20480\n8:0 Async 0\n8:0 Discard 0\n\
                 8:0 Total 20480\n259:1 Read 4096\nTotal 24576\n",
            ),
        ];
        for (name, text) in files {
            let path = root.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    fn document(dirs: Dirs) -> Value {
        let doc = CgroupStats::V1(dirs).document("web").unwrap();
        serde_json::from_slice(&doc).unwrap()
    }

    #[test]
    fn a_whole_tree() {
        let tmp = tempfile::tempdir().unwrap();
        fake_tree(tmp.path());
        let v = document(Dirs::under(tmp.path()));
        assert_eq!(v["type"], "stats");
        assert_eq!(v["id"], "web");
        let d = &v["data"];
        let at = |p: &str| d.pointer(p).cloned().unwrap_or(Value::Null);
        assert_eq!(at("/cpu/usage/total"), 123456789);
        assert_eq!(at("/cpu/usage/user"), 70_000_000);
        assert_eq!(at("/cpu/usage/kernel"), 30_000_000);
        assert_eq!(at("/cpu/usage/percpu"), json!([100000000, 23456789]));
        assert_eq!(at("/cpu/usage/percpu_user"), json!([90000000, 23456789]));
        assert_eq!(at("/cpu/usage/percpu_kernel"), json!([10000000, 0]));
        assert_eq!(at("/cpu/throttling/periods"), 40);
        assert_eq!(at("/cpu/throttling/throttledPeriods"), 4);
        assert_eq!(at("/cpu/throttling/throttledTime"), 5_000_000);
        assert_eq!(at("/memory/usage/usage"), 16384);
        assert_eq!(at("/memory/usage/max"), 20480);
        assert_eq!(at("/memory/usage/limit"), 67108864);
        assert_eq!(at("/memory/usage/failcnt"), 1);
        assert_eq!(at("/memory/swap/limit"), 9223372036854771712u64);
        assert_eq!(at("/memory/cache"), 4096);
        assert_eq!(at("/memory/oomKills"), 2);
        for (key, value) in [
            ("rss", 8192),
            ("cache", 4096),
            ("total_inactive_file", 1024),
            ("inactive_file", 1024),
            ("pgfault", 77),
            ("pgmajfault", 2),
        ] {
            assert_eq!(at(&format!("/memory/raw/{key}")), value, "{key}");
        }
        assert_eq!(d["memory"]["raw"].as_object().unwrap().len(), 10);
        assert_eq!(at("/pids/current"), 3);
        assert_eq!(at("/pids/limit"), 20);
        // BFQ counts nothing here: the throttling layer's files are the ones.
        assert_eq!(
            at("/blkio/ioServiceBytesRecursive/0"),
            json!({"major": 8, "op": "Read", "value": 12288})
        );
        assert_eq!(
            at("/blkio/ioServiceBytesRecursive/1"),
            json!({"major": 8, "op": "Write", "value": 8192})
        );
        assert_eq!(
            at("/blkio/ioServiceBytesRecursive/6"),
            json!({"major": 259, "minor": 1, "op": "Read", "value": 4096})
        );
        assert_eq!(
            d["blkio"]["ioServiceBytesRecursive"]
                .as_array()
                .unwrap()
                .len(),
            7
        );
        assert_eq!(at("/blkio/ioServicedRecursive/0/value"), 3);
    }

    /// As runc writes it: zeros left out but for the few fields it always writes, and the
    /// entries of kernel counts that do not exist written all zero.
    #[test]
    fn zeros_and_missing_counts() {
        let tmp = tempfile::tempdir().unwrap();
        fake_tree(tmp.path());
        let v = document(Dirs::under(tmp.path()));
        let d = &v["data"];
        assert_eq!(d["memory"]["kernel"], json!({"limit": 0, "failcnt": 0}));
        assert_eq!(d["memory"]["kernelTCP"], json!({"limit": 0, "failcnt": 0}));
        assert_eq!(
            d["memory"]["swap"],
            json!({"limit": 9223372036854771712u64, "usage": 16384, "max": 20480, "failcnt": 0})
        );
        assert_eq!(
            d["blkio"]["ioServiceBytesRecursive"][3],
            json!({"major": 8, "op": "Async"})
        );
    }

    #[test]
    fn missing_controllers_and_files_are_left_out() {
        let tmp = tempfile::tempdir().unwrap();
        fake_tree(tmp.path());
        std::fs::remove_file(tmp.path().join("cpuacct/cpuacct.stat")).unwrap();
        std::fs::remove_file(tmp.path().join("pids/pids.max")).unwrap();
        let dirs = Dirs {
            memory: None,
            blkio: None,
            ..Dirs::under(tmp.path())
        };
        let v = document(dirs);
        let d = &v["data"];
        assert_eq!(d["cpu"]["usage"]["total"], 123456789);
        assert_eq!(d["cpu"]["usage"]["user"], 0);
        assert_eq!(d["pids"], json!({"current": 3}));
        assert_eq!(
            d["memory"],
            json!({
                "usage": {"limit": 0, "failcnt": 0},
                "swap": {"limit": 0, "failcnt": 0},
                "kernel": {"limit": 0, "failcnt": 0},
                "kernelTCP": {"limit": 0, "failcnt": 0},
            })
        );
        assert_eq!(d["blkio"], json!({}));
    }

    #[test]
    fn unlimited_pids_and_co_mounted_cpu() {
        let tmp = tempfile::tempdir().unwrap();
        let both = tmp.path().join("cpu,cpuacct");
        std::fs::create_dir_all(&both).unwrap();
        std::fs::write(both.join("cpuacct.usage"), "5\n").unwrap();
        std::fs::write(both.join("cpu.stat"), "nr_periods 1\nnr_throttled 1\n").unwrap();
        let pids = tmp.path().join("pids");
        std::fs::create_dir_all(&pids).unwrap();
        std::fs::write(pids.join("pids.current"), "1\n").unwrap();
        std::fs::write(pids.join("pids.max"), "max\n").unwrap();
        let v = document(Dirs {
            cpu: Some(both.clone()),
            cpuacct: Some(both),
            pids: Some(pids),
            ..Dirs::default()
        });
        assert_eq!(v["data"]["cpu"]["usage"]["total"], 5);
        assert_eq!(v["data"]["cpu"]["throttling"]["throttledPeriods"], 1);
        assert_eq!(v["data"]["pids"], json!({"current": 1}));
    }

    #[test]
    fn blkio_lines() {
        let entries = blkio_entries("8:16 Read 10\n8:16 7\nTotal 17\n\nweird\n8:x Read 1\n");
        assert_eq!(
            entries,
            [
                BlkioEntry {
                    major: 8,
                    minor: 16,
                    op: "Read".into(),
                    value: 10
                },
                BlkioEntry {
                    major: 8,
                    minor: 16,
                    op: String::new(),
                    value: 7
                },
            ]
        );
    }
}
