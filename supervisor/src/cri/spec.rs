//! Adjustments the CRI makes to a generated OCI spec (as JSON): the namespaces a pod shares,
//! sysctls, the OOM score, CPU quota, devices, seccomp profiles, and the pod's resolv.conf.

use std::collections::HashMap;
use std::path::Path;

use k8s_cri::v1 as cri;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// Largest seccomp profile file read.
const MAX_PROFILE: u64 = 1 << 20;

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

fn linux(spec: &mut Value) -> Result<&mut Map<String, Value>> {
    if !spec.get("linux").is_some_and(Value::is_object) {
        spec["linux"] = json!({});
    }
    spec["linux"]
        .as_object_mut()
        .ok_or_else(|| Error::internal("generated spec: linux is not an object"))
}

/// Replaces the spec's namespaces: a new mount namespace always, the rest as given.
pub fn set_namespaces(spec: &mut Value, kinds: &[(&str, Ns)]) -> Result<()> {
    let mut list = vec![json!({"type": "mount"})];
    for (kind, ns) in kinds {
        match ns {
            Ns::New => list.push(json!({ "type": kind })),
            Ns::Path(p) => list.push(json!({ "type": kind, "path": p })),
            Ns::Host => {}
        }
    }
    linux(spec)?.insert("namespaces".into(), Value::Array(list));
    Ok(())
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

/// Puts the process in cgroup `path` (see `pod_cgroups_path`).
pub fn set_cgroups_path(spec: &mut Value, path: &str) -> Result<()> {
    linux(spec)?.insert("cgroupsPath".into(), json!(path));
    Ok(())
}

/// The pod's sysctls, checked: names are dotted or slashed kernel keys, values have no NUL.
pub fn set_sysctls(spec: &mut Value, sysctls: &HashMap<String, String>) -> Result<()> {
    if sysctls.is_empty() {
        return Ok(());
    }
    let mut map = Map::new();
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
        map.insert(k.clone(), Value::String(v.clone()));
    }
    linux(spec)?.insert("sysctl".into(), Value::Object(map));
    Ok(())
}

/// The daemon's own OOM score adjustment: a process cannot get a lower one without
/// CAP_SYS_RESOURCE, which a daemon under a restricted host may lack.
pub fn own_oom_score_adj() -> i64 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Sets process.oomScoreAdj, never below the daemon's own (see `own_oom_score_adj`).
pub fn set_oom_score_adj(spec: &mut Value, want: i64) {
    let adj = want.clamp(-1000, 1000).max(own_oom_score_adj());
    if let Some(p) = spec.get_mut("process").and_then(Value::as_object_mut) {
        p.insert("oomScoreAdj".into(), json!(adj));
    }
}

/// The object at `key` of `map`, made (or made an object) if it is not one.
fn object_at<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Value {
    let v = map.entry(key).or_insert_with(|| json!({}));
    if !v.is_object() {
        *v = json!({});
    }
    v
}

fn resources(spec: &mut Value) -> Result<&mut Map<String, Value>> {
    let l = linux(spec)?;
    object_at(l, "resources")
        .as_object_mut()
        .ok_or_else(|| Error::internal("generated spec: resources is not an object"))
}

/// The CRI's CPU quota and period, as given (the kubelet computes them from millicores).
pub fn set_cpu_quota(spec: &mut Value, quota: i64, period: i64) -> Result<()> {
    if quota == 0 && period == 0 {
        return Ok(());
    }
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
    let r = resources(spec)?;
    let cpu = object_at(r, "cpu");
    if quota != 0 {
        cpu["quota"] = json!(quota);
    }
    if period != 0 {
        cpu["period"] = json!(period);
    }
    Ok(())
}

/// Whether this host runs cgroup v2 alone (the unified hierarchy holds the controllers).
pub fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Longest `unified` key and value taken, and most entries.
const MAX_UNIFIED_KEY: usize = 256;
const MAX_UNIFIED_VALUE: usize = 4096;
const MAX_UNIFIED: usize = 128;

/// The container resources beyond the memory limit, CPU shares and CPU quota: the memory +
/// swap limit (`memory.swap`, which the runtime turns into cgroup v2's `memory.swap.max`,
/// the swap alone), the cpuset, and `unified`, cgroup v2 files written as given
/// (`memory.high`, `cpu.weight.nice`, ...). `unified` needs a cgroup v2 host.
pub fn set_more_resources(spec: &mut Value, res: &cri::LinuxContainerResources) -> Result<()> {
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
    let r = resources(spec)?;
    if swap != 0 {
        let memory = object_at(r, "memory");
        memory["swap"] = json!(swap);
    }
    if !res.cpuset_cpus.is_empty() || !res.cpuset_mems.is_empty() {
        let cpu = object_at(r, "cpu");
        if !res.cpuset_cpus.is_empty() {
            cpu["cpus"] = json!(res.cpuset_cpus);
        }
        if !res.cpuset_mems.is_empty() {
            cpu["mems"] = json!(res.cpuset_mems);
        }
    }
    if !res.unified.is_empty() {
        let unified = object_at(r, "unified");
        for (k, v) in &res.unified {
            unified[k.as_str()] = json!(v);
        }
    }
    Ok(())
}

/// Binds host device nodes into the container, best effort: a path that is not a device
/// node is skipped with a warning.
pub fn add_devices(spec: &mut Value, devices: &[cri::Device]) -> Result<()> {
    use nix::sys::stat::{major, minor, stat, SFlag};
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
            "c"
        } else if fmt == SFlag::S_IFBLK {
            "b"
        } else {
            tracing::warn!(device = %d.host_path, "not a device node; skipping it");
            continue;
        };
        let (maj, min) = (major(st.st_rdev), minor(st.st_rdev));
        let node = json!({
            "path": d.container_path, "type": kind, "major": maj, "minor": min,
            "fileMode": st.st_mode & 0o777, "uid": 0, "gid": 0,
        });
        let rule =
            json!({"allow": true, "type": kind, "major": maj, "minor": min, "access": access});
        let l = linux(spec)?;
        let list = l.entry("devices").or_insert_with(|| json!([]));
        if !list.is_array() {
            *list = json!([]);
        }
        if let Some(a) = list.as_array_mut() {
            a.push(node);
        }
        let r = resources(spec)?;
        let rules = r.entry("devices").or_insert_with(|| json!([]));
        if let Some(a) = rules.as_array_mut() {
            a.push(rule);
        }
    }
    Ok(())
}

/// The seccomp filter for a security profile: None for unconfined. RuntimeDefault is sup's
/// default profile for a container holding `capabilities` (see `spec::seccomp`). A
/// Localhost profile is read from its file: the OCI `linux.seccomp` format, or Docker's (its
/// `archMap` becomes `architectures`).
pub fn seccomp(
    profile: Option<&cri::SecurityProfile>,
    legacy: &str,
    capabilities: &[String],
) -> Result<Option<Value>> {
    use cri::security_profile::ProfileType;
    let default = || Ok(Some(crate::spec::seccomp::runtime_default(capabilities)));
    let path = match profile {
        Some(p) => match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => return default(),
            Ok(ProfileType::Unconfined) => return Ok(None),
            Ok(ProfileType::Localhost) => p.localhost_ref.clone(),
            Err(_) => {
                return Err(Error::invalid(format!(
                    "seccomp profile type {}: unknown",
                    p.profile_type
                )))
            }
        },
        None => match legacy {
            "" | "unconfined" => return Ok(None),
            "runtime/default" | "docker/default" => return default(),
            l => match l.strip_prefix("localhost/") {
                Some(p) => p.to_string(),
                None => {
                    return Err(Error::invalid(format!(
                        "seccomp profile {:?}: unknown",
                        crate::error::printable(l)
                    )))
                }
            },
        },
    };
    load_profile(Path::new(&path)).map(Some)
}

fn load_profile(path: &Path) -> Result<Value> {
    use std::io::Read;
    let what = format!("seccomp profile {}", path.display());
    if !path.is_absolute() {
        return Err(Error::invalid(format!("{what}: want an absolute path")));
    }
    let mut text = Vec::new();
    std::fs::File::open(path)
        .map_err(|e| Error::io(&what, e))?
        .take(MAX_PROFILE + 1)
        .read_to_end(&mut text)
        .map_err(|e| Error::io(&what, e))?;
    if text.len() as u64 > MAX_PROFILE {
        return Err(Error::invalid(format!("{what}: larger than 1 MiB")));
    }
    let v: Value = serde_json::from_slice(&text)
        .map_err(|e| Error::invalid(format!("{what}: not JSON: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(Error::invalid(format!("{what}: not a JSON object")));
    };
    if !obj.get("defaultAction").is_some_and(Value::is_string) {
        return Err(Error::invalid(format!("{what}: no defaultAction")));
    }
    let mut out = Map::new();
    for key in [
        "defaultAction",
        "defaultErrnoRet",
        "architectures",
        "flags",
        "listenerPath",
        "listenerMetadata",
        "syscalls",
    ] {
        if let Some(val) = obj.get(key) {
            out.insert(key.into(), val.clone());
        }
    }
    if !out.contains_key("architectures") {
        if let Some(map) = obj.get("archMap").and_then(Value::as_array) {
            let mut arches = Vec::new();
            for entry in map {
                if let Some(a) = entry.get("architecture") {
                    arches.push(a.clone());
                }
                if let Some(subs) = entry.get("subArchitectures").and_then(Value::as_array) {
                    arches.extend(subs.iter().cloned());
                }
            }
            out.insert("architectures".into(), Value::Array(arches));
        }
    }
    // Docker's per-rule filters (includes/excludes, comments) are not the runtime's.
    if let Some(rules) = out.get_mut("syscalls").and_then(Value::as_array_mut) {
        for r in rules.iter_mut() {
            if let Some(o) = r.as_object_mut() {
                o.retain(|k, _| matches!(k.as_str(), "names" | "action" | "errnoRet" | "args"));
            }
        }
    }
    Ok(Value::Object(out))
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

    #[test]
    fn namespaces_and_resolv() {
        let mut spec = json!({"process": {"args": ["x"]}, "linux": {"namespaces": []}});
        set_namespaces(
            &mut spec,
            &[
                ("network", Ns::Path("/run/x/netns".into())),
                ("pid", Ns::New),
                ("ipc", Ns::Host),
            ],
        )
        .unwrap();
        assert_eq!(
            spec["linux"]["namespaces"],
            json!([{"type": "mount"}, {"type": "network", "path": "/run/x/netns"}, {"type": "pid"}])
        );
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
    fn sysctls_and_cpu() {
        let mut spec = json!({});
        set_sysctls(
            &mut spec,
            &[("net.ipv4.ip_forward".into(), "1".into())].into(),
        )
        .unwrap();
        assert_eq!(spec["linux"]["sysctl"]["net.ipv4.ip_forward"], "1");
        assert!(set_sysctls(&mut spec, &[("../x".into(), "1".into())].into()).is_err());
        set_cpu_quota(&mut spec, 50_000, 100_000).unwrap();
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert!(set_cpu_quota(&mut spec, 10, 100_000).is_err());
    }

    #[test]
    fn seccomp_profiles() {
        use cri::security_profile::ProfileType;
        let p = |t: ProfileType, r: &str| cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        };
        let default = seccomp(Some(&p(ProfileType::RuntimeDefault, "")), "", &[])
            .unwrap()
            .unwrap();
        assert_eq!(default["defaultAction"], "SCMP_ACT_ALLOW");
        assert!(seccomp(None, "unconfined", &[]).unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.json");
        std::fs::write(
            &f,
            r#"{"defaultAction":"SCMP_ACT_ERRNO","archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86"]}],
               "syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","comment":"x"}]}"#,
        )
        .unwrap();
        let v = seccomp(
            Some(&p(ProfileType::Localhost, f.to_str().unwrap())),
            "",
            &[],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            v["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"])
        );
        assert_eq!(
            v["syscalls"][0],
            json!({"names": ["read"], "action": "SCMP_ACT_ALLOW"})
        );
        assert!(seccomp(Some(&p(ProfileType::Localhost, "rel.json")), "", &[]).is_err());
    }
}
