//! What the CRI adds to the OCI spec sup generates for a pod's pause or a container: the
//! namespaces a pod shares, sysctls, the cgroup, the OOM score, resources beyond sup's own
//! (CPU quota, swap, cpusets, cgroup v2 files), devices, groups and seccomp; and the pod's
//! resolv.conf. All of it is computed and checked before anything is made ([`Additions`]),
//! then applied to the typed spec inside `container_create`, which writes the container once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use oci_spec::runtime::{
    LinuxCpu, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxMemory, LinuxNamespace,
    LinuxNamespaceType, LinuxResources, Spec,
};

use super::seccomp::Filter;
use crate::error::{Error, Result};

/// Where a process gets one kind of namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ns {
    /// A new one of its own.
    New,
    /// An existing one, by path (a pinned file or /proc/<pid>/ns/<kind>).
    Path(String),
    /// The host's: no namespace entry at all.
    Host,
}

/// Everything the CRI lays over a generated spec, checked.
#[derive(Debug, Clone, Default)]
pub struct Additions {
    /// Replaces the spec's namespaces: a new mount namespace, then these.
    pub namespaces: Option<Vec<(LinuxNamespaceType, Ns)>>,
    /// The host name is the pod's UTS namespace's (or the host's): the runtime sets none.
    pub no_hostname: bool,
    pub sysctls: HashMap<String, String>,
    pub oom_score_adj: Option<i32>,
    pub cgroups_path: Option<String>,
    pub rootfs_propagation: Option<String>,
    /// Supplemental groups, added to the process user's.
    pub groups: Vec<u32>,
    pub resources: MoreResources,
    /// Device nodes and the cgroup rules that let the container use them.
    pub devices: Vec<(LinuxDevice, LinuxDeviceCgroup)>,
    pub seccomp: Option<Filter>,
}

impl Additions {
    /// Lays the additions over `spec`.
    pub fn apply(&self, spec: &mut Spec) -> Result<()> {
        if self.no_hostname {
            spec.set_hostname(None);
        }
        let process = spec
            .process_mut()
            .as_mut()
            .ok_or_else(|| Error::internal("generated spec: no process"))?;
        if let Some(adj) = self.oom_score_adj {
            process.set_oom_score_adj(Some(adj));
        }
        if !self.groups.is_empty() {
            let user = process.user_mut();
            let mut gids = user.additional_gids().clone().unwrap_or_default();
            for g in &self.groups {
                if !gids.contains(g) {
                    gids.push(*g);
                }
            }
            user.set_additional_gids(Some(gids));
        }
        let capabilities: Vec<String> = process
            .capabilities()
            .as_ref()
            .and_then(|c| c.bounding().as_ref())
            .map(|set| {
                set.iter()
                    .filter_map(|c| serde_json::to_value(c).ok())
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let linux = spec
            .linux_mut()
            .as_mut()
            .ok_or_else(|| Error::internal("generated spec: no linux section"))?;
        if let Some(kinds) = &self.namespaces {
            let mut list = vec![namespace(LinuxNamespaceType::Mount, None)];
            for (kind, ns) in kinds {
                match ns {
                    Ns::New => list.push(namespace(*kind, None)),
                    Ns::Path(p) => list.push(namespace(*kind, Some(p))),
                    Ns::Host => {}
                }
            }
            linux.set_namespaces(Some(list));
        }
        if !self.sysctls.is_empty() {
            linux.set_sysctl(Some(self.sysctls.clone()));
        }
        if let Some(path) = &self.cgroups_path {
            linux.set_cgroups_path(Some(PathBuf::from(path)));
        }
        if let Some(p) = &self.rootfs_propagation {
            linux.set_rootfs_propagation(Some(p.clone()));
        }
        if let Some(filter) = &self.seccomp {
            linux.set_seccomp(Some(filter.resolve(&capabilities)?));
        }
        let resources = linux.resources_mut().get_or_insert_with(Default::default);
        self.resources.apply(resources);
        if !self.devices.is_empty() {
            let rules = resources.devices_mut().get_or_insert_with(Vec::new);
            rules.extend(self.devices.iter().map(|(_, rule)| rule.clone()));
            let nodes = linux.devices_mut().get_or_insert_with(Vec::new);
            nodes.extend(self.devices.iter().map(|(node, _)| node.clone()));
        }
        Ok(())
    }
}

fn namespace(kind: LinuxNamespaceType, path: Option<&str>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(kind);
    ns.set_path(path.map(PathBuf::from));
    ns
}

/// Longest cgroup parent taken.
const MAX_CGROUP_PARENT: usize = 1024;

/// The cgroup path of a pod's process `id` under the pod's `cgroup_parent`, or None when the
/// pod names none (sup's own `/sup/k8s.io/<id>` stays). The kubelet's cgroupfs driver names
/// a path (`/kubepods/burstable/pod<uid>`); its systemd driver a slice
/// (`kubepods-burstable-pod<uid>.slice`).
///
/// With sup's own cgroupfs driver, a slice is expanded to the directory systemd gives it,
/// each dash a level (`/kubepods.slice/kubepods-burstable.slice/...`), and the runtime makes
/// the process's cgroup below it in the cgroup file system. With the `systemd` driver the
/// parent must be a slice (`system.slice` when none is named), and the process goes in the
/// scope `sup-<id>.scope` in it (`<slice>:sup:<id>`), which systemd makes for the runtime.
pub fn pod_cgroups_path(parent: &str, id: &str, systemd: bool) -> Result<Option<String>> {
    if parent.is_empty() {
        return Ok(systemd.then(|| format!("system.slice:sup:{id}")));
    }
    let bad = |why: &str| {
        Error::invalid(format!(
            "cgroup parent {:?}: {why}",
            crate::error::printable(parent)
        ))
    };
    if parent.len() > MAX_CGROUP_PARENT {
        return Err(bad("too long"));
    }
    if parent.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("has spaces or control characters"));
    }
    let is_slice = !parent.contains('/') && parent.ends_with(".slice");
    if systemd {
        let unit_chars = parent
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '\\'));
        if !is_slice || !unit_chars || slice_path(parent).is_none() {
            return Err(bad(
                "the systemd cgroup driver takes a slice (\"kubepods-pod<uid>.slice\")",
            ));
        }
        return Ok(Some(format!("{parent}:sup:{id}")));
    }
    let base = if is_slice {
        slice_path(parent).ok_or_else(|| bad("not a valid systemd slice name"))?
    } else {
        let parts: Vec<&str> = parent.split('/').filter(|p| !p.is_empty()).collect();
        if parts.iter().any(|p| *p == "." || *p == "..") {
            return Err(bad("has \".\" or \"..\" components"));
        }
        format!("/{}", parts.join("/"))
    };
    let base = base.trim_end_matches('/');
    Ok(Some(format!("{base}/{id}")))
}

/// The directory of systemd slice `name`: a slice `a-b-c.slice` lives in `a-b.slice`, which
/// lives in `a.slice`; `-.slice` is the root.
fn slice_path(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".slice")?;
    if stem == "-" {
        return Some("/".into());
    }
    if stem.is_empty() || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return None;
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push('/');
        path.push_str(&prefix);
        path.push_str(".slice");
    }
    Some(path)
}

/// The pod's sysctls, checked: names are dotted or slashed kernel keys, values have no NUL.
pub fn sysctls(sysctls: &HashMap<String, String>) -> Result<HashMap<String, String>> {
    for (k, v) in sysctls {
        let ok = !k.is_empty()
            && k.len() <= 256
            && !k.contains("..")
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        if !ok || v.contains('\0') || v.len() > 4096 {
            return Err(Error::invalid(format!(
                "sysctl {:?}: not a valid name or value",
                crate::error::printable(k)
            )));
        }
    }
    Ok(sysctls.clone())
}

/// The daemon's own OOM score adjustment: a process cannot get a lower one without
/// CAP_SYS_RESOURCE, which a daemon under a restricted host may lack.
pub fn own_oom_score_adj() -> i64 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The OOM score adjustment a process gets for `want`: in range, and never below the
/// daemon's own (see `own_oom_score_adj`).
pub fn oom_score_adj(want: i64) -> i32 {
    let adj = want.clamp(-1000, 1000).max(own_oom_score_adj());
    // In range by the clamp above.
    adj as i32
}

/// Supplemental group ids, checked.
pub fn groups(groups: &[i64]) -> Result<Vec<u32>> {
    groups
        .iter()
        .map(|g| {
            u32::try_from(*g)
                .map_err(|_| Error::invalid(format!("supplemental group {g}: not a valid gid")))
        })
        .collect()
}

/// Whether this host runs cgroup v2 alone (the unified hierarchy holds the controllers).
pub fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Longest `unified` key and value taken, and most entries.
const MAX_UNIFIED_KEY: usize = 256;
const MAX_UNIFIED_VALUE: usize = 4096;
const MAX_UNIFIED: usize = 128;

/// The container resources beyond sup's own memory limit and CPU shares, checked: the CPU
/// quota and period as the kubelet computed them, the memory + swap limit (`memory.swap`,
/// which the runtime turns into cgroup v2's `memory.swap.max`, the swap alone), the cpuset,
/// and `unified`, cgroup v2 files written as given (`memory.high`, `cpu.weight.nice`, ...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MoreResources {
    cpu_quota: i64,
    cpu_period: i64,
    swap: i64,
    cpuset_cpus: String,
    cpuset_mems: String,
    unified: HashMap<String, String>,
}

impl MoreResources {
    /// Checks `res`. `unified` needs a cgroup v2 host.
    pub fn of(res: &cri::LinuxContainerResources) -> Result<MoreResources> {
        let (quota, period) = (res.cpu_quota, res.cpu_period);
        if quota < -1 || period < 0 || (period > 0 && !(1_000..=1_000_000).contains(&period)) {
            return Err(Error::invalid(format!(
                "cpu quota {quota} / period {period}: out of range"
            )));
        }
        if quota > 0 && quota < 1_000 {
            return Err(Error::invalid(format!(
                "cpu quota {quota}: below the kernel's minimum of 1000"
            )));
        }
        let swap = res.memory_swap_limit_in_bytes;
        if swap < -1 {
            return Err(Error::invalid(format!(
                "memory swap limit {swap}: must be -1 (unlimited), 0 (unset) or a size"
            )));
        }
        let limit = res.memory_limit_in_bytes;
        if swap > 0 && (limit <= 0 || swap < limit) {
            return Err(Error::invalid(format!(
                "memory swap limit {swap}: the limit of memory and swap together needs a memory \
                 limit no larger than it (memory limit {limit})"
            )));
        }
        for (what, list) in [
            ("cpuset cpus", &res.cpuset_cpus),
            ("cpuset mems", &res.cpuset_mems),
        ] {
            let ok = list.len() <= 4096
                && list
                    .chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, ',' | '-'));
            if !ok {
                return Err(Error::invalid(format!(
                    "{what} {:?}: want a list such as \"0-3,6\"",
                    crate::error::printable(list)
                )));
            }
        }
        if !res.unified.is_empty() {
            if !cgroup_v2() {
                return Err(Error::invalid(
                    "unified resources are cgroup v2 files, and this host runs cgroup v1",
                ));
            }
            if res.unified.len() > MAX_UNIFIED {
                return Err(Error::invalid(format!(
                    "unified resources: more than {MAX_UNIFIED}"
                )));
            }
            for (k, v) in &res.unified {
                // A file of the container's own cgroup directory: `controller.name`.
                let key_ok = !k.is_empty()
                    && k.len() <= MAX_UNIFIED_KEY
                    && k.contains('.')
                    && !k.starts_with('.')
                    && !k.contains("..")
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
                if !key_ok {
                    return Err(Error::invalid(format!(
                        "unified resource {:?}: not a cgroup file name",
                        crate::error::printable(k)
                    )));
                }
                if v.len() > MAX_UNIFIED_VALUE || v.chars().any(|c| c == '\0') {
                    return Err(Error::invalid(format!(
                        "unified resource {k}: value too long or with a NUL"
                    )));
                }
            }
        }
        Ok(MoreResources {
            cpu_quota: quota,
            cpu_period: period,
            swap,
            cpuset_cpus: res.cpuset_cpus.clone(),
            cpuset_mems: res.cpuset_mems.clone(),
            unified: res.unified.clone(),
        })
    }

    /// Lays these over `r`; what is unset here stays as it is there.
    pub fn apply(&self, r: &mut LinuxResources) {
        let cpu_wanted = self.cpu_quota != 0
            || self.cpu_period != 0
            || !self.cpuset_cpus.is_empty()
            || !self.cpuset_mems.is_empty();
        if cpu_wanted {
            let cpu = r.cpu_mut().get_or_insert_with(LinuxCpu::default);
            if self.cpu_quota != 0 {
                cpu.set_quota(Some(self.cpu_quota));
            }
            if self.cpu_period > 0 {
                cpu.set_period(Some(self.cpu_period as u64));
            }
            if !self.cpuset_cpus.is_empty() {
                cpu.set_cpus(Some(self.cpuset_cpus.clone()));
            }
            if !self.cpuset_mems.is_empty() {
                cpu.set_mems(Some(self.cpuset_mems.clone()));
            }
        }
        if self.swap != 0 {
            r.memory_mut()
                .get_or_insert_with(LinuxMemory::default)
                .set_swap(Some(self.swap));
        }
        if !self.unified.is_empty() {
            let unified = r.unified_mut().get_or_insert_with(HashMap::new);
            for (k, v) in &self.unified {
                unified.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Host device nodes to bind into the container, best effort: a path that is not a device
/// node is skipped with a warning.
pub fn devices(devices: &[cri::Device]) -> Result<Vec<(LinuxDevice, LinuxDeviceCgroup)>> {
    use nix::sys::stat::{major, minor, stat, SFlag};
    let mut out = Vec::new();
    for d in devices {
        let what = format!(
            "device {:?} -> {:?}",
            crate::error::printable(&d.host_path),
            crate::error::printable(&d.container_path)
        );
        if !d.host_path.starts_with('/') || !d.container_path.starts_with('/') {
            return Err(Error::invalid(format!("{what}: paths must be absolute")));
        }
        let access = if d.permissions.is_empty() {
            "rwm".to_string()
        } else {
            d.permissions.clone()
        };
        if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(Error::invalid(format!(
                "{what}: permissions {access:?}: want letters of \"rwm\""
            )));
        }
        let st = match stat(Path::new(&d.host_path)) {
            Ok(st) => st,
            Err(e) => {
                tracing::warn!(device = %d.host_path, error = %e, "skipping a device");
                continue;
            }
        };
        let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        let kind = if fmt == SFlag::S_IFCHR {
            LinuxDeviceType::C
        } else if fmt == SFlag::S_IFBLK {
            LinuxDeviceType::B
        } else {
            tracing::warn!(device = %d.host_path, "not a device node; skipping it");
            continue;
        };
        let (maj, min) = (major(st.st_rdev) as i64, minor(st.st_rdev) as i64);
        let mut node = LinuxDevice::default();
        node.set_path(PathBuf::from(&d.container_path))
            .set_typ(kind)
            .set_major(maj)
            .set_minor(min)
            .set_file_mode(Some(st.st_mode & 0o777))
            .set_uid(Some(0))
            .set_gid(Some(0));
        let mut rule = LinuxDeviceCgroup::default();
        rule.set_allow(true)
            .set_typ(Some(kind))
            .set_major(Some(maj))
            .set_minor(Some(min))
            .set_access(Some(access));
        out.push((node, rule));
    }
    Ok(out)
}

/// resolv.conf for a pod's DNS settings.
pub fn resolv_conf(dns: &cri::DnsConfig) -> Result<String> {
    let all = dns.servers.iter().chain(&dns.searches).chain(&dns.options);
    if all
        .clone()
        .any(|s| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(Error::invalid(
            "dns config: servers, searches and options must be single words",
        ));
    }
    let mut out = String::new();
    for s in &dns.servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated() -> Spec {
        let mut spec = Spec::default();
        spec.set_hostname(Some("x".into()));
        spec
    }

    #[test]
    fn namespaces_and_resolv() {
        let mut spec = generated();
        let add = Additions {
            namespaces: Some(vec![
                (LinuxNamespaceType::Network, Ns::Path("/run/x/netns".into())),
                (LinuxNamespaceType::Pid, Ns::New),
                (LinuxNamespaceType::Ipc, Ns::Host),
            ]),
            no_hostname: true,
            ..Default::default()
        };
        add.apply(&mut spec).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            v["linux"]["namespaces"],
            serde_json::json!([{"type": "mount"}, {"type": "network", "path": "/run/x/netns"}, {"type": "pid"}])
        );
        assert!(spec.hostname().is_none());
        let dns = cri::DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["svc.cluster.local".into(), "cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns).unwrap(),
            "nameserver 10.0.0.10\nsearch svc.cluster.local cluster.local\noptions ndots:5\n"
        );
        let bad = cri::DnsConfig {
            servers: vec!["1.1.1.1\nnameserver 6.6.6.6".into()],
            ..Default::default()
        };
        assert!(resolv_conf(&bad).is_err());
    }

    #[test]
    fn cgroup_parents() {
        assert_eq!(pod_cgroups_path("", "c1", false).unwrap(), None);
        assert_eq!(
            pod_cgroups_path("/kubepods/burstable/pod12", "c1", false).unwrap(),
            Some("/kubepods/burstable/pod12/c1".into())
        );
        assert_eq!(
            pod_cgroups_path("kubepods/pod12/", "c1", false).unwrap(),
            Some("/kubepods/pod12/c1".into())
        );
        assert_eq!(
            pod_cgroups_path("kubepods-burstable-pod12_ab.slice", "c1", false).unwrap(),
            Some(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12_ab.slice/c1"
                    .into()
            )
        );
        assert_eq!(
            pod_cgroups_path("-.slice", "c1", false).unwrap(),
            Some("/c1".into())
        );
        for bad in [
            "/kubepods/../etc",
            "a--b.slice",
            "-a.slice",
            "/x y",
            "/a/./b",
        ] {
            assert!(pod_cgroups_path(bad, "c1", false).is_err(), "{bad}");
        }
        // The systemd driver: a scope in the pod's slice, or in system.slice.
        assert_eq!(
            pod_cgroups_path("kubepods-burstable-pod12_ab.slice", "c1", true).unwrap(),
            Some("kubepods-burstable-pod12_ab.slice:sup:c1".into())
        );
        assert_eq!(
            pod_cgroups_path("", "c1", true).unwrap(),
            Some("system.slice:sup:c1".into())
        );
        for bad in [
            "/kubepods/burstable/pod12",
            "a--b.slice",
            "kubepods",
            "x:y.slice",
        ] {
            assert!(pod_cgroups_path(bad, "c1", true).is_err(), "{bad}");
        }
    }

    #[test]
    fn sysctls_groups_and_resources() {
        let mut spec = generated();
        let res = cri::LinuxContainerResources {
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 1 << 20,
            memory_swap_limit_in_bytes: 2 << 20,
            cpuset_cpus: "0".into(),
            ..Default::default()
        };
        let add = Additions {
            sysctls: sysctls(&[("net.ipv4.ip_forward".into(), "1".into())].into()).unwrap(),
            groups: groups(&[10, 20]).unwrap(),
            oom_score_adj: Some(oom_score_adj(5000)),
            resources: MoreResources::of(&res).unwrap(),
            cgroups_path: Some("/kubepods/pod1/c1".into()),
            ..Default::default()
        };
        add.apply(&mut spec).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["linux"]["sysctl"]["net.ipv4.ip_forward"], "1");
        assert_eq!(v["linux"]["cgroupsPath"], "/kubepods/pod1/c1");
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["cpu"]["period"], 100_000);
        assert_eq!(v["linux"]["resources"]["cpu"]["cpus"], "0");
        assert_eq!(v["linux"]["resources"]["memory"]["swap"], 2 << 20);
        assert_eq!(v["process"]["oomScoreAdj"], 1000);
        let gids = &v["process"]["user"]["additionalGids"];
        assert_eq!(gids, &serde_json::json!([10, 20]));
        assert!(sysctls(&[("../x".into(), "1".into())].into()).is_err());
        assert!(groups(&[-1]).is_err());
        let low = cri::LinuxContainerResources {
            cpu_quota: 10,
            cpu_period: 100_000,
            ..Default::default()
        };
        assert!(MoreResources::of(&low).is_err());
        let swap_alone = cri::LinuxContainerResources {
            memory_swap_limit_in_bytes: 1 << 20,
            ..Default::default()
        };
        assert!(MoreResources::of(&swap_alone).is_err());
    }
}
