//! CRI containers: create (a generated spec joined to the sandbox's namespaces), start with
//! the CRI log, stop, remove, status, list, resource updates.

use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use oci_spec::runtime::LinuxNamespaceType as NsType;

use super::overrides::overrides;
use super::records::{resolve, ContainerRecord, SandboxRecord};
use super::sandbox::{cgroup_parent, namespace_options};
use super::spec::{self as cspec, Ns};
use super::{Cri, LABEL_KIND, LABEL_SANDBOX, NAMESPACE};
use crate::error::{Error, Result};
use crate::service::containers::{NewContainer, SpecEdit};
use crate::service::tasks::TaskStatus;

/// The exit code of a container whose exit status was lost with its shim.
pub const UNKNOWN_EXIT_CODE: i32 = 255;

impl Cri {
    pub fn resolve_container(&self, id: &str) -> Result<String> {
        let all = self.records.container_ids()?;
        resolve(all.iter().map(String::as_str), id, "container")
    }

    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
    ) -> Result<String> {
        let sandbox = self.records.sandbox(&self.resolve_sandbox(sandbox_id)?)?;
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::invalid("container config: metadata is required"))?;
        if meta.name.is_empty() {
            return Err(Error::invalid("container metadata: name is required"));
        }
        let spec_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        let (target, names) = super::image::CriImages::new(self.services.clone())
            .find(&spec_name)?
            .ok_or_else(|| {
                Error::not_found(format!("image {:?}", crate::error::printable(&spec_name)))
            })?;
        let image = names.first().map(|i| i.name.clone()).ok_or_else(|| {
            Error::not_found(format!("image {:?}", crate::error::printable(&spec_name)))
        })?;
        let pause_pid = self.pause_pid(&sandbox)?;
        let log_path = match (&sandbox.config.log_directory, &config.log_path) {
            (_, p) if p.is_empty() => String::new(),
            (d, p) if d.is_empty() => p.clone(),
            (d, p) => Path::new(d).join(p).to_string_lossy().into_owned(),
        };
        if !log_path.is_empty() && !log_path.starts_with('/') {
            return Err(Error::invalid(format!(
                "log path {log_path:?}: must be absolute"
            )));
        }
        let id = super::new_id()?;
        let rec = ContainerRecord {
            id: id.clone(),
            sandbox_id: sandbox.id.clone(),
            config: config.clone(),
            image: image.clone(),
            image_ref: target.digest.clone(),
            log_path,
            created_at: super::now(),
            started_at: 0,
            finished_at: 0,
            exit_code: None,
            reason: String::new(),
        };
        self.records.put_container(&rec).await?;
        let made = self.make_container(&rec, &sandbox, pause_pid).await;
        if let Err(e) = made {
            if self.services.container_get(NAMESPACE, &id).is_ok() {
                let _ = self.services.container_delete(NAMESPACE, &id, false).await;
            }
            let _ = self.records.delete_container(&id).await;
            return Err(e);
        }
        Ok(id)
    }

    async fn make_container(
        &self,
        rec: &ContainerRecord,
        sandbox: &SandboxRecord,
        pause_pid: u32,
    ) -> Result<()> {
        let config = &rec.config;
        let linux = config.linux.clone().unwrap_or_default();
        let sec = linux.security_context.clone().unwrap_or_default();
        let res = linux.resources.clone().unwrap_or_default();
        let pod = namespace_options(&sandbox.config);
        let own = sec.namespace_options.clone().unwrap_or(pod.clone());
        let of_pause = |kind: &str| Ns::Path(format!("/proc/{pause_pid}/ns/{kind}"));
        let network = match &sandbox.netns {
            Some(p) => Ns::Path(p.to_string_lossy().into_owned()),
            None => Ns::Host,
        };
        let node = cri::NamespaceMode::Node as i32;
        // The pod's pinned namespace; the pause's own only for a sandbox recorded by an
        // older supd, which pinned nothing but the network.
        let pinned = |path: &Option<std::path::PathBuf>, host: bool, kind: &str| match path {
            Some(p) => Ns::Path(p.to_string_lossy().into_owned()),
            None if host => Ns::Host,
            None => of_pause(kind),
        };
        let pid = match cri::NamespaceMode::try_from(own.pid) {
            Ok(cri::NamespaceMode::Node) => Ns::Host,
            Ok(cri::NamespaceMode::Container) => Ns::New,
            Ok(cri::NamespaceMode::Target) => {
                let target = self
                    .services
                    .task(NAMESPACE, &self.resolve_container(&own.target_id)?)?;
                Ns::Path(format!("/proc/{}/ns/pid", target.pid))
            }
            _ => of_pause("pid"),
        };
        // Older kubelets still name the profile in the deprecated string field.
        #[allow(deprecated)]
        let legacy = sec.seccomp_profile_path.clone();
        let seccomp = super::seccomp::filter(sec.seccomp.as_ref(), &legacy)?;
        let systemd = self.config.systemd_cgroup;
        let additions = cspec::Additions {
            namespaces: Some(vec![
                (NsType::Network, network),
                (NsType::Pid, pid),
                (NsType::Ipc, pinned(&sandbox.ipcns, pod.ipc == node, "ipc")),
                (
                    NsType::Uts,
                    pinned(&sandbox.utsns, pod.network == node, "uts"),
                ),
            ]),
            // The pod's host name lives in its pinned UTS namespace (or is the host's).
            no_hostname: true,
            oom_score_adj: Some(cspec::oom_score_adj(res.oom_score_adj)),
            cgroups_path: cspec::pod_cgroups_path(
                cgroup_parent(&sandbox.config),
                &rec.id,
                systemd,
            )?,
            rootfs_propagation: super::overrides::rootfs_propagation(config).map(String::from),
            groups: cspec::groups(&sec.supplemental_groups)?,
            resources: cspec::MoreResources::of(&res)?,
            devices: cspec::devices(&config.devices)?,
            seccomp: seccomp.filter(|_| !sec.privileged),
            ..Default::default()
        };
        super::overrides::make_missing_sources(config)?;
        let overrides = overrides(config, sandbox, &self.sandbox_dir(&sandbox.id))?;
        let labels = [
            (LABEL_KIND.to_string(), "container".to_string()),
            (LABEL_SANDBOX.to_string(), sandbox.id.clone()),
        ]
        .into();
        self.services
            .container_create(
                NAMESPACE,
                NewContainer {
                    id: rec.id.clone(),
                    image: rec.image.clone(),
                    labels,
                    overrides,
                    edit: SpecEdit::new(move |spec| additions.apply(spec)),
                    ..Default::default()
                },
            )
            .await?;
        Ok(())
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        let id = self.resolve_container(id)?;
        let rec = self.records.container(&id)?;
        if rec.started_at != 0 {
            return Err(Error::precondition(format!(
                "container {id:?} was already started"
            )));
        }
        let sandbox = self.records.sandbox(&rec.sandbox_id)?;
        self.pause_pid(&sandbox)?;
        let log = (!rec.log_path.is_empty()).then(|| PathBuf::from(&rec.log_path));
        if let Some(dir) = log.as_ref().and_then(|l| l.parent()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        self.services
            .task_create_with(NAMESPACE, &id, rec.config.stdin, log)
            .await?;
        let started_at = super::now();
        if let Err(e) = self.services.task_start(NAMESPACE, &id, "").await {
            {
                let lock = self.task_lock(&id);
                let _deleting = lock.lock().await;
                let _ = self.services.task_delete(NAMESPACE, &id, true).await;
            }
            let _ = self
                .update_record(&id, |r| {
                    r.started_at = started_at;
                    r.finished_at = super::now();
                    r.exit_code = Some(128);
                    r.reason = "StartError".into();
                })
                .await;
            return Err(e);
        }
        // The exit collector may have recorded an exit already: only the start time is ours.
        self.update_record(&id, |r| r.started_at = started_at).await
    }

    /// Changes a container's record under `record_updates`; a record removed meanwhile stays
    /// removed.
    async fn update_record(&self, id: &str, f: impl FnOnce(&mut ContainerRecord)) -> Result<()> {
        let _updating = self.record_updates.lock().await;
        let mut rec = match self.records.container(id) {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        f(&mut rec);
        self.records.put_container(&rec).await
    }

    /// SIGTERM, up to `timeout` seconds, then SIGKILL; the exit is kept in the record and the
    /// task deleted. Idempotent.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let id = self.resolve_container(id)?;
        if timeout > 0 {
            self.ask_to_stop(&id, timeout).await;
        }
        // The SIGKILL, the wait for the exit and the delete happen in one go under the task
        // lock, which the exit collector takes too: whichever comes second finds the task
        // deleted (stopped already), and nothing is asked of a shim on its way out.
        self.collect_exit(&id).await
    }

    /// SIGTERM, then up to `timeout` seconds for the exit. Best effort: a task collected
    /// meanwhile (its shim gone before it answered) needs nothing more, and whatever is left
    /// running the stop kills.
    async fn ask_to_stop(&self, id: &str, timeout: i64) {
        let running = {
            let lock = self.task_lock(id);
            let _deleting = lock.lock().await;
            matches!(
                self.services.process_status(NAMESPACE, id, "").await,
                Ok(st) if st.status == TaskStatus::Running
                    || st.status == TaskStatus::Paused
            )
        };
        if !running {
            return;
        }
        let _ = self.services.task_kill(NAMESPACE, id, "", 15, false).await;
        let secs = u64::try_from(timeout).unwrap_or(0);
        let wait = self.services.task_wait(NAMESPACE, id, "");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(secs), wait).await;
    }

    /// Records the exit of a container's task and deletes the task.
    pub(super) async fn collect_exit(&self, id: &str) -> Result<()> {
        let lock = self.task_lock(id);
        let _deleting = lock.lock().await;
        let deleted = match self.services.task_delete(NAMESPACE, id, true).await {
            Ok(d) => d,
            Err(e) if e.is_not_found() => return self.lost_exit(id).await,
            // The shim died meanwhile and the daemon has cleaned up after it.
            Err(_) if !self.services.task_exists(NAMESPACE, id) => return self.lost_exit(id).await,
            Err(e) => return Err(e),
        };
        self.update_record(id, |rec| {
            rec.exit_code = Some(i32::try_from(deleted.exit_status).unwrap_or(255));
            rec.finished_at = deleted
                .exited_at
                .map(super::nanos)
                .unwrap_or_else(super::now);
            rec.reason = exit_reason(deleted.exit_status, &deleted.reason);
        })
        .await
    }

    /// A started container whose task is gone with no exit recorded: its shim died (or was
    /// cleaned up as dead when supd started), taking the exit status with it.
    async fn lost_exit(&self, id: &str) -> Result<()> {
        self.update_record(id, |rec| {
            if rec.started_at != 0 && rec.exit_code.is_none() {
                rec.exit_code = Some(UNKNOWN_EXIT_CODE);
                rec.finished_at = super::now();
                rec.reason = "Unknown".into();
            }
        })
        .await
    }

    /// Settles what happened to CRI containers while supd was down, once its tasks are
    /// reconnected: an exit the exit collector could not see is collected now (recorded and
    /// its task deleted), and a container whose shim died is marked exited with an unknown
    /// status.
    pub async fn settle_exits(&self) {
        let Ok(records) = self.records.containers() else {
            return;
        };
        for rec in records {
            if rec.exit_code.is_some() || rec.started_at == 0 {
                continue;
            }
            let stopped = match self.services.process_status(NAMESPACE, &rec.id, "").await {
                Ok(st) => st.status == TaskStatus::Stopped,
                Err(_) => !self.services.task_exists(NAMESPACE, &rec.id),
            };
            if stopped {
                if let Err(e) = self.collect_exit(&rec.id).await {
                    tracing::warn!(container = %rec.id, error = %e, "collecting an exit from downtime");
                }
            }
        }
    }

    /// Kills and deletes the task, the sup container and the record. NotFound is success.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let id = match self.resolve_container(id) {
            Ok(id) => id,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        self.collect_exit(&id).await?;
        match self.services.container_delete(NAMESPACE, &id, false).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let _updating = self.record_updates.lock().await;
        self.records.delete_container(&id).await?;
        self.drop_task_lock(&id);
        Ok(())
    }

    /// The container's resources from its spec; None when its sup container is gone.
    fn resources_of_container(&self, id: &str) -> Option<cri::LinuxContainerResources> {
        use std::sync::atomic::Ordering;
        if !self.services.container_exists(NAMESPACE, id) {
            return None;
        }
        // Read before the record, so that an update racing this read is seen by the next.
        let generation = self.services.containers_generation.load(Ordering::SeqCst);
        {
            let mut cache = self.resources.lock().unwrap_or_else(|p| p.into_inner());
            if cache.0 != generation {
                *cache = (generation, std::collections::HashMap::new());
            }
            if let Some(r) = cache.1.get(id) {
                return Some(r.clone());
            }
        }
        let r = resources_of(&self.services.container_get(NAMESPACE, id).ok()?.spec);
        let mut cache = self.resources.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0 == generation {
            cache.1.insert(id.to_string(), r.clone());
        }
        Some(r)
    }

    pub async fn container_status(&self, rec: &ContainerRecord) -> cri::ContainerStatus {
        let mut state = cri::ContainerState::ContainerCreated;
        let (mut exit_code, mut finished_at, mut reason) = (
            rec.exit_code.unwrap_or(0),
            rec.finished_at,
            rec.reason.clone(),
        );
        let resources = self.resources_of_container(&rec.id);
        if resources.is_none() {
            state = cri::ContainerState::ContainerUnknown;
        } else if self.services.task(NAMESPACE, &rec.id).is_ok() {
            match self.services.process_status(NAMESPACE, &rec.id, "").await {
                Ok(st) => match st.status {
                    TaskStatus::Created => {}
                    TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing => {
                        state = cri::ContainerState::ContainerRunning
                    }
                    TaskStatus::Stopped => {
                        state = cri::ContainerState::ContainerExited;
                        exit_code = i32::try_from(st.exit_status).unwrap_or(255);
                        finished_at = st.exited_at.map(super::nanos).unwrap_or(0);
                        reason = exit_reason(st.exit_status, &st.reason);
                    }
                    TaskStatus::Unknown => state = cri::ContainerState::ContainerUnknown,
                },
                Err(_) => state = cri::ContainerState::ContainerUnknown,
            }
        } else if rec.started_at != 0 || rec.exit_code.is_some() {
            state = cri::ContainerState::ContainerExited;
        }
        // The mounts as they were asked for and made (propagation included: the kubelet
        // checks it against the pod's spec).
        let mounts = rec.config.mounts.clone();
        cri::ContainerStatus {
            id: rec.id.clone(),
            metadata: rec.config.metadata.clone(),
            state: state as i32,
            created_at: rec.created_at,
            started_at: rec.started_at,
            finished_at: if state == cri::ContainerState::ContainerExited {
                finished_at
            } else {
                0
            },
            exit_code: if state == cri::ContainerState::ContainerExited {
                exit_code
            } else {
                0
            },
            image: rec.config.image.clone(),
            image_ref: rec.image_ref.clone(),
            image_id: rec.image_ref.clone(),
            reason: if state == cri::ContainerState::ContainerExited {
                reason
            } else {
                String::new()
            },
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
            mounts,
            log_path: rec.log_path.clone(),
            resources: resources.map(|r| cri::ContainerResources {
                linux: Some(r),
                windows: None,
            }),
            ..Default::default()
        }
    }

    pub async fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>> {
        let f = filter.unwrap_or_default();
        let mut out = Vec::new();
        for rec in self.records.containers()? {
            if !rec.id.starts_with(&f.id)
                || !rec.sandbox_id.starts_with(&f.pod_sandbox_id)
                || !super::selector_matches(&f.label_selector, &rec.config.labels)
            {
                continue;
            }
            let st = self.container_status(&rec).await;
            if f.state.as_ref().is_some_and(|s| s.state != st.state) {
                continue;
            }
            out.push(cri::Container {
                id: st.id,
                pod_sandbox_id: rec.sandbox_id.clone(),
                metadata: st.metadata,
                image: st.image,
                image_ref: st.image_ref,
                image_id: st.image_id,
                state: st.state,
                created_at: st.created_at,
                labels: st.labels,
                annotations: st.annotations,
            });
        }
        Ok(out)
    }

    pub async fn update_resources(&self, id: &str, r: &cri::LinuxContainerResources) -> Result<()> {
        let id = self.resolve_container(id)?;
        let shares = u64::try_from(r.cpu_shares).unwrap_or(0);
        // The CPU quota and period are the kubelet's own, laid on by `more`.
        let more = cspec::MoreResources::of(r)?;
        let new = crate::spec::resources(r.memory_limit_in_bytes, 0.0, shares, 0)?;
        // The stored spec first, so a task started later gets the new limits too.
        let mut c = self.services.container_get(NAMESPACE, &id)?;
        let mut spec: oci_spec::runtime::Spec = serde_json::from_value(c.spec.clone())
            .map_err(|e| Error::internal(format!("container {id:?}: stored spec: {e}")))?;
        let resources = spec
            .linux_mut()
            .as_mut()
            .ok_or_else(|| Error::internal(format!("container {id:?}: stored spec: no linux")))?
            .resources_mut()
            .get_or_insert_with(Default::default);
        if new.memory().is_some() {
            resources.set_memory(*new.memory());
        }
        if new.cpu().is_some() {
            resources.set_cpu(new.cpu().clone());
        }
        more.apply(resources);
        // The running task gets what an update may change: memory, CPU, cgroup v2 files.
        let mut changed = oci_spec::runtime::LinuxResources::default();
        changed
            .set_memory(*resources.memory())
            .set_cpu(resources.cpu().clone())
            .set_unified(resources.unified().clone());
        c.spec = serde_json::to_value(&spec)?;
        self.services
            .container_update(NAMESPACE, c, &["spec".to_string()])
            .await?;
        if self.services.task(NAMESPACE, &id).is_ok() {
            self.services
                .task_update_resources(NAMESPACE, &id, &changed)
                .await?;
        }
        Ok(())
    }

    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let id = self.resolve_container(id)?;
        let st = self.services.process_status(NAMESPACE, &id, "").await;
        if !matches!(st, Ok(s) if s.status == TaskStatus::Running) {
            return Err(Error::precondition(format!(
                "container {id:?} is not running"
            )));
        }
        // The kubelet has renamed the file away. The new one exists from now on (readers
        // expect it); the shim notices the path names another file at its next write and
        // switches to it.
        let rec = self.records.container(&id)?;
        if !rec.log_path.is_empty() {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&rec.log_path)
                .map_err(|e| Error::io(format!("reopening {}", rec.log_path), e))?;
        }
        Ok(())
    }
}

/// The limits a container's spec holds now (UpdateContainerResources changes them), as the
/// CRI reports them.
pub fn resources_of(spec: &serde_json::Value) -> cri::LinuxContainerResources {
    let int = |p: &str| spec.pointer(p).and_then(serde_json::Value::as_i64);
    let text = |p: &str| {
        spec.pointer(p)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    cri::LinuxContainerResources {
        cpu_period: int("/linux/resources/cpu/period").unwrap_or(0),
        cpu_quota: int("/linux/resources/cpu/quota").unwrap_or(0),
        cpu_shares: int("/linux/resources/cpu/shares").unwrap_or(0),
        memory_limit_in_bytes: int("/linux/resources/memory/limit").unwrap_or(0),
        memory_swap_limit_in_bytes: int("/linux/resources/memory/swap").unwrap_or(0),
        oom_score_adj: int("/process/oomScoreAdj").unwrap_or(0),
        cpuset_cpus: text("/linux/resources/cpu/cpus"),
        cpuset_mems: text("/linux/resources/cpu/mems"),
        unified: spec
            .pointer("/linux/resources/unified")
            .and_then(serde_json::Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// The CRI's reason for an exit: the task's own (OOMKilled), else Completed or Error.
pub fn exit_reason(code: u32, task_reason: &str) -> String {
    if !task_reason.is_empty() {
        task_reason.to_string()
    } else if code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_from_the_spec() {
        let spec = serde_json::json!({
            "process": {"oomScoreAdj": 5},
            "linux": {"resources": {"cpu": {"period": 100000, "quota": 50000, "shares": 512},
                                    "memory": {"limit": 1048576}}}
        });
        let r = resources_of(&spec);
        assert_eq!(
            (r.cpu_period, r.cpu_quota, r.cpu_shares),
            (100000, 50000, 512)
        );
        assert_eq!(r.memory_limit_in_bytes, 1048576);
        assert_eq!(r.oom_score_adj, 5);
        assert_eq!(resources_of(&serde_json::json!({})).cpu_quota, 0);
    }

    #[test]
    fn reasons() {
        assert_eq!(exit_reason(0, ""), "Completed");
        assert_eq!(exit_reason(1, ""), "Error");
        assert_eq!(exit_reason(137, "OOMKilled"), "OOMKilled");
    }
}
