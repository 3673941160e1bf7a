//! Pod sandboxes: run (pinned namespaces, pause container, network), stop, remove, status,
//! list.
//! Every step that fails undoes the ones before it.

use std::collections::HashMap;
use std::path::Path;

use k8s_cri::v1 as cri;
use oci_spec::runtime::LinuxNamespaceType as NsType;

use super::netns::NsKind;
use super::records::{resolve, SandboxRecord};
use super::spec::{self as cspec, Ns};
use super::{network, Cri, LABEL_KIND, NAMESPACE};
use crate::error::{Error, Result};
use crate::service::containers::{NewContainer, SpecEdit};
use crate::service::tasks::TaskStatus;
use crate::spec::{MountSpec, Overrides};

/// The namespace options of a sandbox config (all POD when unset).
pub fn namespace_options(config: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

fn is_node(mode: i32) -> bool {
    mode == cri::NamespaceMode::Node as i32
}

/// The pod's cgroup, as the kubelet names it ("" for none).
pub fn cgroup_parent(config: &cri::PodSandboxConfig) -> &str {
    config
        .linux
        .as_ref()
        .map_or("", |l| l.cgroup_parent.as_str())
}

/// The pod's total resources (its containers' plus the runtime class's overhead), as
/// annotations on the pause's spec for runtimes that size a whole sandbox (VM runtimes read
/// these keys); the kubelet itself sizes the pod's cgroup.
fn resource_annotations(config: &cri::PodSandboxConfig) -> Vec<(String, String)> {
    let Some(r) = config.linux.as_ref().and_then(|l| l.resources.as_ref()) else {
        return Vec::new();
    };
    [
        ("io.kubernetes.cri.sandbox-cpu-period", r.cpu_period),
        ("io.kubernetes.cri.sandbox-cpu-quota", r.cpu_quota),
        ("io.kubernetes.cri.sandbox-cpu-shares", r.cpu_shares),
        ("io.kubernetes.cri.sandbox-memory", r.memory_limit_in_bytes),
    ]
    .into_iter()
    .filter(|(_, v)| *v != 0)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub fn host_network(config: &cri::PodSandboxConfig) -> bool {
    is_node(namespace_options(config).network)
}

fn pod_ref(rec: &SandboxRecord) -> network::PodRef {
    let meta = rec.config.metadata.clone().unwrap_or_default();
    network::PodRef {
        id: rec.id.clone(),
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
    }
}

impl Cri {
    pub fn resolve_sandbox(&self, id: &str) -> Result<String> {
        let all = self.records.sandbox_ids()?;
        resolve(all.iter().map(String::as_str), id, "pod sandbox")
    }

    pub async fn run_sandbox(
        &self,
        config: cri::PodSandboxConfig,
        handler: String,
    ) -> Result<String> {
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::invalid("pod sandbox config: metadata is required"))?;
        if meta.name.is_empty() || meta.namespace.is_empty() {
            return Err(Error::invalid(
                "pod sandbox metadata: name and namespace are required",
            ));
        }
        let id = super::new_id()?;
        // Checked before anything is made.
        cspec::pod_cgroups_path(cgroup_parent(&config), &id, self.config.systemd_cgroup)?;
        let dir = self.sandbox_dir(&id);
        let host_net = host_network(&config);
        let host_ipc = is_node(namespace_options(&config).ipc);
        let mut rec = SandboxRecord {
            id: id.clone(),
            netns: (!host_net).then(|| dir.join("netns")),
            ipcns: (!host_ipc).then(|| dir.join("ipcns")),
            // As in Kubernetes, the host's network means the host's UTS namespace too.
            utsns: (!host_net).then(|| dir.join("utsns")),
            config,
            runtime_handler: handler,
            created_at: super::now(),
            ip: String::new(),
            stopped: false,
            network_up: false,
        };
        self.records.put_sandbox(&rec).await?;
        match self.run_steps(&mut rec, &dir).await {
            Ok(()) => {
                self.records.put_sandbox(&rec).await?;
                tracing::info!(sandbox = %id, pod = %meta.name, ip = %rec.ip, "pod sandbox ready");
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "pod sandbox failed; undoing");
                self.release_sandbox(&mut rec).await;
                let _ = self.records.delete_sandbox(&id).await;
                Err(e)
            }
        }
    }

    async fn run_steps(&self, rec: &mut SandboxRecord, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut mounts = Vec::new();
        if let Some(dns) = &rec.config.dns_config {
            let path = dir.join("resolv.conf");
            std::fs::write(&path, cspec::resolv_conf(dns)?)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            mounts.push(MountSpec {
                source: path.to_string_lossy().into_owned(),
                destination: "/etc/resolv.conf".into(),
                kind: "bind".into(),
                readonly: true,
                options: Vec::new(),
            });
        }
        // Pinned rather than the pause's own, so they outlive the pause process: containers
        // of the pod keep sharing them (and the host name) until the pod is removed.
        let pins = [
            (NsKind::Net, rec.netns.clone()),
            (NsKind::Ipc, rec.ipcns.clone()),
            (NsKind::Uts, rec.utsns.clone()),
        ];
        for (kind, path) in pins {
            if let Some(p) = path {
                tokio::task::spawn_blocking(move || super::netns::create_kind(kind, &p)).await??;
            }
        }

        let image = super::pause::sandbox_image(&self.services, &self.config.pause_image).await?;
        let opts = namespace_options(&rec.config);
        let host_net = rec.netns.is_none();
        let sec = rec
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.clone())
            .unwrap_or_default();
        let mut annotations: std::collections::BTreeMap<String, String> =
            rec.config.annotations.clone().into_iter().collect();
        annotations.insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
        annotations.insert("io.kubernetes.cri.sandbox-id".into(), rec.id.clone());
        if let Some(meta) = &rec.config.metadata {
            annotations.insert("io.kubernetes.cri.sandbox-name".into(), meta.name.clone());
            annotations.insert(
                "io.kubernetes.cri.sandbox-namespace".into(),
                meta.namespace.clone(),
            );
            annotations.insert("io.kubernetes.cri.sandbox-uid".into(), meta.uid.clone());
        }
        annotations.extend(resource_annotations(&rec.config));
        let overrides = Overrides {
            entrypoint: Some(vec!["/pause".into()]),
            command: Some(Vec::new()),
            hostname: rec.config.hostname.clone(),
            host_network: host_net,
            mounts,
            readonly_rootfs: true,
            privileged: sec.privileged,
            no_new_privileges: true,
            annotations,
            ..Default::default()
        };
        let network = match &rec.netns {
            Some(p) => Ns::Path(p.to_string_lossy().into_owned()),
            None => Ns::Host,
        };
        let host_or_new = |mode: i32| if is_node(mode) { Ns::Host } else { Ns::New };
        let pinned_or_host = |p: &Option<std::path::PathBuf>| match p {
            Some(p) => Ns::Path(p.to_string_lossy().into_owned()),
            None => Ns::Host,
        };
        let systemd = self.config.systemd_cgroup;
        let additions = cspec::Additions {
            namespaces: Some(vec![
                (NsType::Network, network),
                (NsType::Pid, host_or_new(opts.pid)),
                (NsType::Ipc, pinned_or_host(&rec.ipcns)),
                // The runtime sets the pod's host name inside this joined namespace.
                (NsType::Uts, pinned_or_host(&rec.utsns)),
            ]),
            // No UTS namespace of the pod's own: the runtime cannot set a host name.
            no_hostname: rec.utsns.is_none(),
            sysctls: match &rec.config.linux {
                Some(l) => cspec::sysctls(&l.sysctls)?,
                None => Default::default(),
            },
            oom_score_adj: Some(cspec::oom_score_adj(-998)),
            cgroups_path: cspec::pod_cgroups_path(cgroup_parent(&rec.config), &rec.id, systemd)?,
            ..Default::default()
        };
        let labels = [(LABEL_KIND.to_string(), "sandbox".to_string())].into();
        self.services
            .container_create(
                NAMESPACE,
                NewContainer {
                    id: rec.id.clone(),
                    image,
                    labels,
                    overrides,
                    edit: SpecEdit::new(move |spec| additions.apply(spec)),
                    ..Default::default()
                },
            )
            .await?;

        self.services.task_create(NAMESPACE, &rec.id, false).await?;
        self.services.task_start(NAMESPACE, &rec.id, "").await?;

        if let Some(ns) = rec.netns.clone() {
            rec.network_up = true;
            let ip =
                network::setup(&self.net, &ns, &pod_ref(rec), &rec.config.port_mappings).await?;
            rec.ip = ip.unwrap_or_default();
        }
        Ok(())
    }

    /// Stops the pause task and tears the network down; errors are logged, not returned,
    /// except the network's (the kubelet retries a stop).
    async fn stop_pause(&self, rec: &mut SandboxRecord) -> Result<()> {
        if self.services.task(NAMESPACE, &rec.id).is_ok() {
            let _ = self
                .services
                .task_kill(NAMESPACE, &rec.id, "", 9, true)
                .await;
            if let Err(e) = self.services.task_delete(NAMESPACE, &rec.id, true).await {
                if !e.is_not_found() {
                    return Err(e.context(format!("stopping the pause of sandbox {:?}", rec.id)));
                }
            }
        }
        if rec.network_up {
            if let Some(ns) = &rec.netns {
                network::teardown(&self.net, ns, &pod_ref(rec)).await?;
            }
            rec.network_up = false;
        }
        Ok(())
    }

    /// Best-effort release of everything a sandbox holds (after a failed run).
    async fn release_sandbox(&self, rec: &mut SandboxRecord) {
        if let Err(e) = self.stop_pause(rec).await {
            tracing::warn!(sandbox = %rec.id, error = %e, "releasing a sandbox");
        }
        match self
            .services
            .container_delete(NAMESPACE, &rec.id, false)
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!(sandbox = %rec.id, error = %e, "removing the pause container"),
        }
        self.remove_files(rec).await;
    }

    async fn remove_files(&self, rec: &SandboxRecord) {
        let dir = self.sandbox_dir(&rec.id);
        // Unpinned before the directory goes: a mount point inside it cannot be removed.
        let pins: Vec<_> = [&rec.netns, &rec.ipcns, &rec.utsns]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let res = tokio::task::spawn_blocking(move || -> Result<()> {
            for ns in &pins {
                super::netns::remove(ns)?;
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io(format!("removing {}", dir.display()), e)),
            }
        })
        .await;
        if let Ok(Err(e)) | Err(e) = res.map_err(Error::from) {
            tracing::warn!(sandbox = %rec.id, error = %e, "removing a sandbox's files");
        }
    }

    pub async fn stop_sandbox(&self, id: &str) -> Result<()> {
        let id = self.resolve_sandbox(id)?;
        let _lifecycle = self.lifecycle.lock().await;
        for c in self.records.containers()? {
            if c.sandbox_id == id {
                match self.stop_container(&c.id, 0).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let mut rec = self.records.sandbox(&id)?;
        let res = self.stop_pause(&mut rec).await;
        rec.stopped = true;
        self.records.put_sandbox(&rec).await?;
        res
    }

    pub async fn remove_sandbox(&self, id: &str) -> Result<()> {
        let id = match self.resolve_sandbox(id) {
            Ok(id) => id,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_sandbox(&id).await?;
        let _lifecycle = self.lifecycle.lock().await;
        for c in self.records.containers()? {
            if c.sandbox_id == id {
                self.remove_container(&c.id).await?;
            }
        }
        let rec = self.records.sandbox(&id)?;
        match self.services.container_delete(NAMESPACE, &id, false).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        self.remove_files(&rec).await;
        self.records.delete_sandbox(&id).await?;
        self.drop_task_lock(&id);
        Ok(())
    }

    /// READY while the pause runs and the sandbox was not stopped.
    pub async fn sandbox_ready(&self, rec: &SandboxRecord) -> bool {
        if rec.stopped {
            return false;
        }
        matches!(
            self.services.process_status(NAMESPACE, &rec.id, "").await,
            Ok(st) if st.status == TaskStatus::Running
        )
    }

    pub async fn sandbox_status(&self, rec: &SandboxRecord) -> cri::PodSandboxStatus {
        let state = if self.sandbox_ready(rec).await {
            cri::PodSandboxState::SandboxReady
        } else {
            cri::PodSandboxState::SandboxNotready
        };
        cri::PodSandboxStatus {
            id: rec.id.clone(),
            metadata: rec.config.metadata.clone(),
            state: state as i32,
            created_at: rec.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: rec.ip.clone(),
                additional_ips: Vec::new(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(namespace_options(&rec.config)),
                }),
            }),
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
            runtime_handler: rec.runtime_handler.clone(),
        }
    }

    pub async fn list_sandboxes(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>> {
        let f = filter.unwrap_or_default();
        let mut out = Vec::new();
        for rec in self.records.sandboxes()? {
            if !rec.id.starts_with(&f.id)
                || !super::selector_matches(&f.label_selector, &rec.config.labels)
            {
                continue;
            }
            let st = self.sandbox_status(&rec).await;
            if f.state.as_ref().is_some_and(|s| s.state != st.state) {
                continue;
            }
            out.push(cri::PodSandbox {
                id: st.id,
                metadata: st.metadata,
                state: st.state,
                created_at: st.created_at,
                labels: st.labels,
                annotations: st.annotations,
                runtime_handler: st.runtime_handler,
            });
        }
        Ok(out)
    }

    /// Verbose status, under "info" as crictl inspect reads it: the CRI record of sup
    /// container `id`, its task's pid (0 without a task) and its OCI spec.
    pub fn verbose_info(
        &self,
        record: &impl serde::Serialize,
        id: &str,
    ) -> HashMap<String, String> {
        let mut info = HashMap::new();
        let Ok(mut v) = serde_json::to_value(record) else {
            return info;
        };
        if let Some(o) = v.as_object_mut() {
            let pid = self.services.task(NAMESPACE, id).map_or(0, |t| t.pid);
            o.insert("pid".into(), serde_json::json!(pid));
            if let Ok(c) = self.services.container_get(NAMESPACE, id) {
                o.insert("runtimeSpec".into(), c.spec);
            }
        }
        info.insert("info".to_string(), v.to_string());
        info
    }

    /// The pause's pid, for containers to join its namespaces.
    pub fn pause_pid(&self, rec: &SandboxRecord) -> Result<u32> {
        if rec.stopped {
            return Err(Error::precondition(format!(
                "pod sandbox {:?} is stopped",
                rec.id
            )));
        }
        let task = self
            .services
            .task(NAMESPACE, &rec.id)
            .map_err(|_| Error::precondition(format!("pod sandbox {:?} is not running", rec.id)))?;
        Ok(task.pid)
    }
}
