//! The spec generator's overrides for a CRI container: command and args, env, mounts (and
//! the pod's resolv.conf), user and groups, capabilities, limits.

use std::path::Path;

use k8s_cri::v1 as cri;

use super::records::SandboxRecord;
use super::sandbox::host_network;
use crate::error::{Error, Result};
use crate::spec::{MountSpec, Overrides};

/// The user string the spec generator takes, from the security context. The CRI allows a
/// group only with a user.
pub fn user_of(sec: &cri::LinuxContainerSecurityContext) -> Result<String> {
    let user = if !sec.run_as_username.is_empty() {
        sec.run_as_username.clone()
    } else if let Some(u) = &sec.run_as_user {
        u.value.to_string()
    } else if sec.run_as_group.is_some() {
        return Err(Error::invalid(
            "security context: run_as_group needs run_as_user or run_as_username",
        ));
    } else {
        return Ok(String::new());
    };
    Ok(match &sec.run_as_group {
        Some(g) => format!("{user}:{}", g.value),
        None => user,
    })
}

/// The bind option for a mount's propagation. Mounts made on the host below the source reach
/// the container only when the source's mount is shared or a slave; mounts made in the
/// container reach the host only when it is shared: anything else is refused rather than
/// silently private.
fn propagation_option(m: &cri::Mount) -> Result<&'static str> {
    use cri::MountPropagation as P;
    let wanted = P::try_from(m.propagation).map_err(|_| {
        Error::invalid(format!(
            "mount {:?}: propagation {}: unknown",
            crate::error::printable(&m.container_path),
            m.propagation
        ))
    })?;
    if wanted == P::PropagationPrivate {
        return Ok("rprivate");
    }
    let found = crate::mount::propagation_of(Path::new(&m.host_path)).map_err(|e| {
        Error::invalid(format!(
            "mount {:?}: propagation of {:?}: {e}",
            crate::error::printable(&m.container_path),
            crate::error::printable(&m.host_path)
        ))
    })?;
    let refuse = |need: &str| {
        Error::precondition(format!(
            "mount {:?}: {:?} is not on a {need} mount, which {} propagation needs",
            crate::error::printable(&m.container_path),
            crate::error::printable(&m.host_path),
            wanted.as_str_name()
        ))
    };
    match wanted {
        P::PropagationBidirectional if found.shared => Ok("rshared"),
        P::PropagationBidirectional => Err(refuse("shared")),
        _ if found.shared || found.slave => Ok("rslave"),
        _ => Err(refuse("shared or slave")),
    }
}

/// The root's propagation a container's mounts need: shared for a bidirectional mount, a
/// slave for one that receives the host's, None (the runtime's private) otherwise.
pub fn rootfs_propagation(config: &cri::ContainerConfig) -> Option<&'static str> {
    use cri::MountPropagation as P;
    let has = |p: P| config.mounts.iter().any(|m| m.propagation == p as i32);
    if has(P::PropagationBidirectional) {
        Some("rshared")
    } else if has(P::PropagationHostToContainer) {
        Some("rslave")
    } else {
        None
    }
}

/// Host paths of bind mounts that do not exist yet are made as directories, as other CRI
/// runtimes do for the kubelet (a hostPath volume of no type names a directory).
pub fn make_missing_sources(config: &cri::ContainerConfig) -> Result<()> {
    for m in &config.mounts {
        let path = Path::new(&m.host_path);
        if !path.is_absolute() {
            return Err(Error::invalid(format!(
                "mount {:?}: host path {:?} is not absolute",
                crate::error::printable(&m.container_path),
                crate::error::printable(&m.host_path)
            )));
        }
        if std::fs::symlink_metadata(path).is_err() {
            std::fs::create_dir_all(path)
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        }
    }
    Ok(())
}

/// Generator overrides for a CRI container config in a sandbox.
pub fn overrides(
    config: &cri::ContainerConfig,
    sandbox: &SandboxRecord,
    sandbox_dir: &Path,
) -> Result<Overrides> {
    let linux = config.linux.clone().unwrap_or_default();
    let sec = linux.security_context.clone().unwrap_or_default();
    let res = linux.resources.clone().unwrap_or_default();
    let caps = sec.capabilities.clone().unwrap_or_default();
    let mut mounts: Vec<MountSpec> = config
        .mounts
        .iter()
        .map(|m| {
            Ok(MountSpec {
                source: m.host_path.clone(),
                destination: m.container_path.clone(),
                kind: "bind".into(),
                readonly: m.readonly,
                options: vec![propagation_option(m)?.to_string()],
            })
        })
        .collect::<Result<_>>()?;
    let resolv = sandbox_dir.join("resolv.conf");
    if resolv.exists() && !mounts.iter().any(|m| m.destination == "/etc/resolv.conf") {
        mounts.push(MountSpec {
            source: resolv.to_string_lossy().into_owned(),
            destination: "/etc/resolv.conf".into(),
            kind: "bind".into(),
            readonly: true,
            options: Vec::new(),
        });
    }
    let mut annotations: std::collections::BTreeMap<String, String> =
        config.annotations.clone().into_iter().collect();
    annotations.insert(
        "io.kubernetes.cri.container-type".into(),
        "container".into(),
    );
    annotations.insert("io.kubernetes.cri.sandbox-id".into(), sandbox.id.clone());
    Ok(Overrides {
        entrypoint: (!config.command.is_empty()).then(|| config.command.clone()),
        command: (!config.args.is_empty()).then(|| config.args.clone()),
        env: config
            .envs
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect(),
        working_dir: config.working_dir.clone(),
        user: user_of(&sec)?,
        tty: config.tty,
        hostname: sandbox.config.hostname.clone(),
        mounts,
        readonly_rootfs: sec.readonly_rootfs,
        // As the kubelet sends them: the runtime defaults for procMount Default, none for
        // Unmasked.
        masked_paths: Some(sec.masked_paths.clone()),
        readonly_paths: Some(sec.readonly_paths.clone()),
        memory_limit: res.memory_limit_in_bytes,
        cpu_shares: u64::try_from(res.cpu_shares).unwrap_or(0),
        cap_add: caps.add_capabilities.clone(),
        cap_drop: caps.drop_capabilities.clone(),
        privileged: sec.privileged,
        host_network: host_network(&sandbox.config),
        no_new_privileges: sec.no_new_privs,
        annotations,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_groups() {
        let mut sec = cri::LinuxContainerSecurityContext::default();
        assert_eq!(user_of(&sec).unwrap(), "");
        sec.run_as_group = Some(cri::Int64Value { value: 50 });
        assert!(user_of(&sec).is_err());
        sec.run_as_user = Some(cri::Int64Value { value: 1000 });
        assert_eq!(user_of(&sec).unwrap(), "1000:50");
        sec.run_as_username = "nobody".into();
        assert_eq!(user_of(&sec).unwrap(), "nobody:50");
    }
}
