//! Container and pod stats from the runtime's cgroup numbers (Tasks stats) and the
//! snapshotter's usage of the writable layer.

use k8s_cri::v1 as cri;
use serde_json::Value;

use super::records::{ContainerRecord, SandboxRecord};
use super::{Cri, NAMESPACE};
use crate::error::Result;

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

impl Cri {
    pub async fn container_stats(&self, rec: &ContainerRecord) -> Result<cri::ContainerStats> {
        let at = super::now();
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
            let (cpu, mem) = usage(&stats, at);
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
        Ok(out)
    }

    pub async fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>> {
        let f = filter.unwrap_or_default();
        let mut out = Vec::new();
        for rec in self.records.containers()? {
            if rec.id.starts_with(&f.id)
                && rec.sandbox_id.starts_with(&f.pod_sandbox_id)
                && super::selector_matches(&f.label_selector, &rec.config.labels)
                && self.services.task(NAMESPACE, &rec.id).is_ok()
            {
                match self.container_stats(&rec).await {
                    Ok(s) => out.push(s),
                    Err(e) => tracing::debug!(container = %rec.id, error = %e, "no stats"),
                }
            }
        }
        Ok(out)
    }

    /// A pod's stats: its pause's cgroup numbers plus the sum over its containers.
    pub async fn sandbox_stats(&self, rec: &SandboxRecord) -> Result<cri::PodSandboxStats> {
        let at = super::now();
        let mut containers = Vec::new();
        for c in self.records.containers()? {
            if c.sandbox_id == rec.id && self.services.task(NAMESPACE, &c.id).is_ok() {
                if let Ok(s) = self.container_stats(&c).await {
                    containers.push(s);
                }
            }
        }
        let (mut cpu_total, mut ws_total, mut use_total) = (0u64, 0u64, 0u64);
        if let Ok(stats) = self.services.task_stats(NAMESPACE, &rec.id).await {
            let (cpu, mem) = usage(&stats, at);
            cpu_total += cpu.usage_core_nano_seconds.map_or(0, |v| v.value);
            ws_total += mem.working_set_bytes.map_or(0, |v| v.value);
            use_total += mem.usage_bytes.map_or(0, |v| v.value);
        }
        for c in &containers {
            cpu_total += c
                .cpu
                .as_ref()
                .and_then(|x| x.usage_core_nano_seconds.as_ref())
                .map_or(0, |v| v.value);
            ws_total += c
                .memory
                .as_ref()
                .and_then(|x| x.working_set_bytes.as_ref())
                .map_or(0, |v| v.value);
            use_total += c
                .memory
                .as_ref()
                .and_then(|x| x.usage_bytes.as_ref())
                .map_or(0, |v| v.value);
        }
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
                    usage_nano_cores: None,
                }),
                memory: Some(cri::MemoryUsage {
                    timestamp: at,
                    working_set_bytes: value(Some(ws_total)),
                    usage_bytes: value(Some(use_total)),
                    ..Default::default()
                }),
                network: None,
                process: None,
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
        let mut out = Vec::new();
        for rec in self.records.sandboxes()? {
            if rec.id.starts_with(&f.id)
                && super::selector_matches(&f.label_selector, &rec.config.labels)
                && self.sandbox_ready(&rec).await
            {
                out.push(self.sandbox_stats(&rec).await?);
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
