//! Container and pod stats from the runtime's cgroup numbers (Tasks stats) and the
//! snapshotter's usage of the writable layer.

use futures::stream::{self, StreamExt};
use k8s_cri::v1 as cri;
use serde_json::Value;

use super::records::{ContainerRecord, SandboxRecord};
use super::{Cri, NAMESPACE};
use crate::error::Result;

/// How many containers' (or pods') stats are gathered at once: each may cost a runtime
/// process, and a node may run hundreds.
const PARALLEL_STATS: usize = 8;

fn num(d: &Value, path: &str) -> Option<u64> {
    d.pointer(path).and_then(Value::as_u64)
}

fn value(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

/// CPU and memory from the runtime's stats JSON (`runc events --stats` shape).
fn usage(stats: &Value, at: i64) -> (cri::CpuUsage, cri::MemoryUsage) {
    let d = stats.get("data").unwrap_or(stats);
    let used = num(d, "/memory/usage/usage");
    let inactive = num(d, "/memory/raw/total_inactive_file")
        .or_else(|| num(d, "/memory/raw/inactive_file"))
        .unwrap_or(0);
    let limit = num(d, "/memory/usage/limit");
    let working = used.map(|u| u.saturating_sub(inactive));
    let cpu = cri::CpuUsage {
        timestamp: at,
        usage_core_nano_seconds: value(num(d, "/cpu/usage/total")),
        usage_nano_cores: None,
    };
    let mem = cri::MemoryUsage {
        timestamp: at,
        working_set_bytes: value(working),
        available_bytes: value(match (limit, working) {
            // An unlimited cgroup reports a huge limit: no meaningful availability.
            (Some(l), Some(w)) if l < (1 << 62) => Some(l.saturating_sub(w)),
            _ => None,
        }),
        usage_bytes: value(used),
        rss_bytes: value(num(d, "/memory/raw/rss").or_else(|| num(d, "/memory/raw/anon"))),
        page_faults: value(num(d, "/memory/raw/pgfault")),
        major_page_faults: value(num(d, "/memory/raw/pgmajfault")),
    };
    (cpu, mem)
}

/// The processes a cgroup holds, from the same stats.
fn process_count(stats: &Value) -> Option<u64> {
    num(stats.get("data").unwrap_or(stats), "/pids/current")
}

/// Per-interface counters of a network namespace, from the `/proc/<pid>/net/dev` text of a
/// process in it; the loopback is left out.
pub fn interfaces(net_dev: &str) -> Vec<cri::NetworkInterfaceUsage> {
    let mut out = Vec::new();
    // Two header lines, then `name: rx_bytes packets errs drop fifo frame compressed
    // multicast tx_bytes packets errs ...`.
    for line in net_dev.lines().skip(2) {
        let Some((name, fields)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" || name.is_empty() {
            continue;
        }
        let f: Vec<u64> = fields
            .split_whitespace()
            .map_while(|x| x.parse().ok())
            .collect();
        if f.len() < 11 {
            continue;
        }
        out.push(cri::NetworkInterfaceUsage {
            name: name.to_string(),
            rx_bytes: value(Some(f[0])),
            rx_errors: value(Some(f[2])),
            tx_bytes: value(Some(f[8])),
            tx_errors: value(Some(f[10])),
        });
    }
    out
}

/// A pod's network usage: every interface of its namespace, `eth0` (the interface CNI
/// plugins make for the pod) as the default.
fn network_usage(net_dev: &str, at: i64) -> Option<cri::NetworkUsage> {
    let interfaces = interfaces(net_dev);
    let default_interface = interfaces
        .iter()
        .find(|i| i.name == "eth0")
        .or(interfaces.first())
        .cloned();
    default_interface.as_ref()?;
    Some(cri::NetworkUsage {
        timestamp: at,
        default_interface,
        interfaces,
    })
}

fn get(v: &Option<cri::UInt64Value>) -> u64 {
    v.as_ref().map_or(0, |v| v.value)
}

impl Cri {
    pub async fn container_stats(&self, rec: &ContainerRecord) -> Result<cri::ContainerStats> {
        Ok(self.container_stats_counted(rec).await?.0)
    }

    /// A container's stats and the number of processes it holds (None without a task).
    async fn container_stats_counted(
        &self,
        rec: &ContainerRecord,
    ) -> Result<(cri::ContainerStats, Option<u64>)> {
        let at = super::now();
        let mut processes = None;
        let mut out = cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: rec.id.clone(),
                metadata: rec.config.metadata.clone(),
                labels: rec.config.labels.clone(),
                annotations: rec.config.annotations.clone(),
            }),
            ..Default::default()
        };
        if self.services.task(NAMESPACE, &rec.id).is_ok() {
            let stats = self.services.task_stats(NAMESPACE, &rec.id).await?;
            processes = process_count(&stats);
            let (mut cpu, mem) = usage(&stats, at);
            if let Some(total) = &cpu.usage_core_nano_seconds {
                cpu.usage_nano_cores = value(self.nano_cores(&rec.id, at, total.value));
            }
            out.cpu = Some(cpu);
            out.memory = Some(mem);
        }
        if let Ok(c) = self.services.container_get(NAMESPACE, &rec.id) {
            if let Ok(s) = self.services.snapshotter(&c.snapshotter) {
                let key = c.snapshot_key.clone();
                if let Ok(Ok(u)) =
                    tokio::task::spawn_blocking(move || s.usage(NAMESPACE, &key)).await
                {
                    out.writable_layer = Some(cri::FilesystemUsage {
                        timestamp: at,
                        fs_id: None,
                        used_bytes: value(u64::try_from(u.size).ok()),
                        inodes_used: value(u64::try_from(u.inodes).ok()),
                    });
                }
            }
        }
        Ok((out, processes))
    }

    pub async fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>> {
        let f = filter.unwrap_or_default();
        let wanted: Vec<ContainerRecord> = self
            .records
            .containers()?
            .into_iter()
            .filter(|rec| {
                rec.id.starts_with(&f.id)
                    && rec.sandbox_id.starts_with(&f.pod_sandbox_id)
                    && super::selector_matches(&f.label_selector, &rec.config.labels)
                    && self.services.task(NAMESPACE, &rec.id).is_ok()
            })
            .collect();
        let all: Vec<_> = stream::iter(wanted)
            .map(|rec| async move {
                let got = self.container_stats(&rec).await;
                (rec, got)
            })
            .buffered(PARALLEL_STATS)
            .collect()
            .await;
        let mut out = Vec::new();
        for (rec, got) in all {
            match got {
                Ok(s) => out.push(s),
                Err(e) => tracing::debug!(container = %rec.id, error = %e, "no stats"),
            }
        }
        Ok(out)
    }

    /// A pod's stats: its pause's cgroup numbers plus the sum over its containers, the
    /// interfaces of its network namespace and its process count.
    pub async fn sandbox_stats(&self, rec: &SandboxRecord) -> Result<cri::PodSandboxStats> {
        let at = super::now();
        let members: Vec<ContainerRecord> = self
            .records
            .containers()?
            .into_iter()
            .filter(|c| c.sandbox_id == rec.id && self.services.task(NAMESPACE, &c.id).is_ok())
            .collect();
        let (pause, counted) = futures::join!(
            self.services.task_stats(NAMESPACE, &rec.id),
            stream::iter(members)
                .map(|c| async move { self.container_stats_counted(&c).await })
                .buffered(PARALLEL_STATS)
                .collect::<Vec<_>>()
        );
        let mut containers = Vec::new();
        let mut processes = 0u64;
        for (s, n) in counted.into_iter().flatten() {
            containers.push(s);
            processes += n.unwrap_or(0);
        }
        let (mut cpu_total, mut ws_total, mut use_total, mut rss_total) = (0u64, 0, 0, 0);
        if let Ok(stats) = pause {
            let (cpu, mem) = usage(&stats, at);
            cpu_total += get(&cpu.usage_core_nano_seconds);
            ws_total += get(&mem.working_set_bytes);
            use_total += get(&mem.usage_bytes);
            rss_total += get(&mem.rss_bytes);
            processes += process_count(&stats).unwrap_or(0);
        }
        for c in &containers {
            if let Some(cpu) = &c.cpu {
                cpu_total += get(&cpu.usage_core_nano_seconds);
            }
            if let Some(mem) = &c.memory {
                ws_total += get(&mem.working_set_bytes);
                use_total += get(&mem.usage_bytes);
                rss_total += get(&mem.rss_bytes);
            }
        }
        // The pause's view of its namespace; none for a pod on the host's network.
        let network = match (&rec.netns, self.pause_pid(rec)) {
            (Some(_), Ok(pid)) => tokio::fs::read_to_string(format!("/proc/{pid}/net/dev"))
                .await
                .ok()
                .and_then(|text| network_usage(&text, at)),
            _ => None,
        };
        Ok(cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: rec.id.clone(),
                metadata: rec.config.metadata.clone(),
                labels: rec.config.labels.clone(),
                annotations: rec.config.annotations.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cri::CpuUsage {
                    timestamp: at,
                    usage_core_nano_seconds: value(Some(cpu_total)),
                    usage_nano_cores: value(self.nano_cores(&rec.id, at, cpu_total)),
                }),
                memory: Some(cri::MemoryUsage {
                    timestamp: at,
                    working_set_bytes: value(Some(ws_total)),
                    usage_bytes: value(Some(use_total)),
                    rss_bytes: value(Some(rss_total)),
                    ..Default::default()
                }),
                network,
                process: Some(cri::ProcessUsage {
                    timestamp: at,
                    process_count: value(Some(processes)),
                }),
                containers,
            }),
            windows: None,
        })
    }

    pub async fn list_sandbox_stats(
        &self,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<cri::PodSandboxStats>> {
        let f = filter.unwrap_or_default();
        let wanted: Vec<SandboxRecord> = self
            .records
            .sandboxes()?
            .into_iter()
            .filter(|rec| {
                rec.id.starts_with(&f.id)
                    && super::selector_matches(&f.label_selector, &rec.config.labels)
            })
            .collect();
        let all: Vec<_> = stream::iter(wanted)
            .map(|rec| async move {
                if self.sandbox_ready(&rec).await {
                    self.sandbox_stats(&rec).await.map(Some)
                } else {
                    Ok(None)
                }
            })
            .buffered(PARALLEL_STATS)
            .collect()
            .await;
        let mut out = Vec::new();
        for got in all {
            if let Some(s) = got? {
                out.push(s);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn net_dev() {
        let text = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
  eth0:    5000      40    1    0    0     0          0         0     3000      30    2    0    0     0       0          0
";
        let all = interfaces(text);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].name, "eth0");
        assert_eq!(all[0].rx_bytes.as_ref().unwrap().value, 5000);
        assert_eq!(all[0].rx_errors.as_ref().unwrap().value, 1);
        assert_eq!(all[0].tx_bytes.as_ref().unwrap().value, 3000);
        assert_eq!(all[0].tx_errors.as_ref().unwrap().value, 2);
        let usage = network_usage(text, 7).unwrap();
        assert_eq!(usage.default_interface.unwrap().name, "eth0");
        assert!(network_usage(&text.replace("eth0", "lo"), 7).is_none());
        assert_eq!(
            process_count(&json!({"data": {"pids": {"current": 3}}})),
            Some(3)
        );
    }

    #[test]
    fn working_set() {
        let stats = json!({"type": "stats", "data": {
            "cpu": {"usage": {"total": 1234}},
            "memory": {"usage": {"usage": 1000, "limit": 4000}, "raw": {"inactive_file": 300, "anon": 500}}
        }});
        let (cpu, mem) = usage(&stats, 1);
        assert_eq!(cpu.usage_core_nano_seconds.unwrap().value, 1234);
        assert_eq!(mem.working_set_bytes.unwrap().value, 700);
        assert_eq!(mem.available_bytes.unwrap().value, 3300);
        assert_eq!(mem.rss_bytes.unwrap().value, 500);
    }
}
