//! Generating a container's OCI runtime spec from its image config, safe defaults (Docker's)
//! and the caller's overrides; and the process of an exec into it.
//!
//! Everything that reaches this module is untrusted: the overrides come from API callers, the
//! image config and the root filesystem (its /etc/passwd, /etc/group) from whoever built or
//! runs the image. Bad values become InvalidArgument before any spec exists.

mod image;
mod mounts;
mod process;
mod resources;
mod rootfs;
pub mod seccomp;
mod security;
mod user;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use oci_spec::runtime::{
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources, Process,
    ProcessBuilder, RootBuilder, Spec, User, UserBuilder,
};
use oci_spec::OciSpecError;

use crate::error::{Error, Result};

pub use resources::{CPU_PERIOD, MIN_MEMORY};
pub use security::{ALL_CAPS, DEFAULT_CAPS, MASKED_PATHS, READONLY_PATHS};

/// Caller overrides, proto-free mirror of sup.v1.ContainerConfig.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Replaces the image's entrypoint (an empty list clears it, and so does the image's cmd
    /// unless `command` is set too).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's cmd.
    pub command: Option<Vec<String>>,
    /// "KEY=VALUE", over the image's environment (same key: replaced).
    pub env: Vec<String>,
    /// Absolute; the image's when empty.
    pub working_dir: String,
    /// "name", "uid", "uid:gid", "name:group", "uid:group" or "name:gid"; the image's when
    /// empty, root when both are.
    pub user: String,
    pub tty: bool,
    /// The container's id (up to 63 characters) when empty.
    pub hostname: String,
    pub mounts: Vec<MountSpec>,
    pub readonly_rootfs: bool,
    /// Paths hidden from the container; the defaults when `None` (and none when privileged).
    pub masked_paths: Option<Vec<String>>,
    /// Paths made read-only in the container; the defaults when `None` (and none when
    /// privileged).
    pub readonly_paths: Option<Vec<String>>,
    /// Bytes; 0 for none.
    pub memory_limit: i64,
    /// A fraction of CPUs; 0 for no quota.
    pub cpus: f64,
    /// Relative CPU weight; 0 for the default.
    pub cpu_shares: u64,
    /// 0 for no limit.
    pub pids_limit: i64,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileged: bool,
    pub host_network: bool,
    pub no_new_privileges: bool,
    /// (type, soft, hard): "RLIMIT_NOFILE" or "nofile".
    pub rlimits: Vec<(String, u64, u64)>,
    pub annotations: BTreeMap<String, String>,
    /// A systemd scope rather than a cgroup of sup's own (see `cgroup_path`).
    pub systemd_cgroup: bool,
}

/// One caller mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountSpec {
    /// Host path (absolute) for a bind mount; a label for tmpfs.
    pub source: String,
    /// Absolute path inside the container.
    pub destination: String,
    /// "bind" (the default when empty) or "tmpfs".
    pub kind: String,
    pub readonly: bool,
    /// Extra mount options, one per entry.
    pub options: Vec<String>,
}

/// The kernel's limit on a host name (HOST_NAME_MAX is 64; 63 keeps it a valid DNS label).
const MAX_HOSTNAME: usize = 63;

/// The spec of container `id` in namespace `ns`: `image_config` is the image's OCI config JSON
/// (empty or without "config" for none), `rootfs` the container's root filesystem, where the
/// user is resolved. The spec names its root "rootfs", relative to the bundle.
pub fn generate(
    ns: &str,
    id: &str,
    image_config: &[u8],
    rootfs: &Path,
    o: &Overrides,
) -> Result<Spec> {
    check_name(ns, "namespace")?;
    check_name(id, "container id")?;
    let image = image::parse(image_config)?;

    let args = process::args(&image, o.entrypoint.as_deref(), o.command.as_deref())?;

    let mut env = process::Env::default();
    env.merge(&image.env, "image config Env")?;
    env.merge(&o.env, "env")?;
    env.set_default("PATH", process::DEFAULT_PATH);
    if o.tty {
        env.set_default("TERM", "xterm");
    }

    let cwd = if !o.working_dir.is_empty() {
        process::check_cwd(&o.working_dir, "working_dir")?;
        o.working_dir.clone()
    } else if !image.working_dir.is_empty() {
        process::check_cwd(&image.working_dir, "image config WorkingDir")?;
        image.working_dir.clone()
    } else {
        "/".to_string()
    };

    let resolved = if !o.user.is_empty() {
        user::resolve(&o.user, rootfs)?
    } else {
        user::resolve(&image.user, rootfs).map_err(|e| e.context("image config User"))?
    };
    env.set_default("HOME", &resolved.home);

    let caps = security::capabilities(o.privileged, &o.cap_add, &o.cap_drop)?;
    let rlimits = security::rlimits(&o.rlimits)?;
    let process = built(
        ProcessBuilder::default()
            .terminal(o.tty)
            .user(oci_user(&resolved)?)
            .args(args)
            .env(env.into_vec())
            .cwd(cwd)
            .capabilities(caps)
            .rlimits(rlimits)
            .no_new_privileges(o.no_new_privileges)
            .build(),
    )?;

    let mut extra = Vec::new();
    if o.host_network {
        extra.extend(mounts::host_network(Path::new("/"))?);
    }
    extra.extend(mounts::caller(&o.mounts)?);
    let all_mounts = mounts::merge(mounts::defaults(o.privileged)?, extra);

    let hostname = if !o.hostname.is_empty() {
        check_hostname(&o.hostname)?;
        Some(o.hostname.clone())
    } else if o.host_network {
        // A new UTS namespace starts with the host's name, which is what such a container
        // should report.
        None
    } else {
        Some(id.chars().take(MAX_HOSTNAME).collect())
    };

    let mut res = resources::build(o.memory_limit, o.cpus, o.cpu_shares, o.pids_limit)?;
    res.set_devices(Some(security::device_rules(o.privileged)?));

    let mut linux = oci_spec::runtime::Linux::default();
    linux
        .set_namespaces(Some(namespaces(o.host_network)?))
        .set_resources(Some(res))
        .set_cgroups_path(Some(cgroup_path(ns, id, o.systemd_cgroup).into()))
        .set_uid_mappings(None)
        .set_gid_mappings(None)
        .set_devices(None);
    let masked = security::guarded_paths(o.masked_paths.as_deref(), &MASKED_PATHS, "masked_paths")?;
    let readonly = security::guarded_paths(
        o.readonly_paths.as_deref(),
        &READONLY_PATHS,
        "readonly_paths",
    )?;
    if o.privileged {
        linux.set_masked_paths(None).set_readonly_paths(None);
    } else {
        linux
            .set_masked_paths((!masked.is_empty()).then_some(masked))
            .set_readonly_paths((!readonly.is_empty()).then_some(readonly));
    }

    let mut spec = Spec::default();
    spec.set_version(oci_spec::runtime::VERSION.to_string())
        .set_root(Some(built(
            RootBuilder::default()
                .path("rootfs")
                .readonly(o.readonly_rootfs)
                .build(),
        )?))
        .set_mounts(Some(all_mounts))
        .set_process(Some(process))
        .set_hostname(hostname)
        .set_domainname(None)
        .set_hooks(None)
        .set_annotations(Some(annotations(&o.annotations)?))
        .set_linux(Some(linux));
    Ok(spec)
}

/// The process of an exec into a container with spec `base`: `args` is required; an empty
/// `env` (or `cwd`, `user`) means the container's. A given `env` is laid over the container's.
/// A given `user` is resolved in `rootfs`, the running container's root filesystem.
pub fn exec_process(
    base: &Spec,
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    user: String,
    terminal: bool,
    rootfs: &Path,
) -> Result<Process> {
    let Some(base_process) = base.process() else {
        return Err(Error::precondition(
            "the container's spec has no process to base an exec on",
        ));
    };
    process::check_args(&args)?;

    let mut merged = process::Env::default();
    // The base was checked when it was made, but a spec can also be given whole by a client.
    merged.merge(
        base_process.env().as_deref().unwrap_or_default(),
        "container env",
    )?;
    merged.merge(&env, "env")?;
    let caller_home = env
        .iter()
        .any(|e| e.split_once('=').is_some_and(|(k, _)| k == "HOME"));
    if terminal {
        merged.set_default("TERM", "xterm");
    }

    let oci_user = if user.is_empty() {
        base_process.user().clone()
    } else {
        let resolved = user::resolve(&user, rootfs)?;
        // The container's HOME is its own user's; another user gets theirs.
        if !caller_home {
            merged.set("HOME", &resolved.home);
        }
        oci_user(&resolved)?
    };

    let cwd = if cwd.is_empty() {
        base_process.cwd().clone()
    } else {
        process::check_cwd(&cwd, "cwd")?;
        cwd.into()
    };

    let mut p = base_process.clone();
    p.set_args(Some(args))
        .set_env(Some(merged.into_vec()))
        .set_cwd(cwd)
        .set_user(oci_user)
        .set_terminal(Some(terminal))
        .set_console_size(None);
    Ok(p)
}

/// New resources for a running task (Tasks.Update): zero leaves a resource as it is.
pub fn resources(
    memory_limit: i64,
    cpus: f64,
    cpu_shares: u64,
    pids_limit: i64,
) -> Result<LinuxResources> {
    resources::build(memory_limit, cpus, cpu_shares, pids_limit)
}

/// The cgroup path sup gives a container: "/sup/<ns>/<id>" (cgroupfs layout, works with runc
/// on cgroup v1 and v2).
/// `/sup/<ns>/<id>`, made by the runtime in the cgroup filesystem; or, for the runtime's
/// systemd driver, `system.slice:sup-<ns>:<id>`, the scope `sup-<ns>-<id>.scope` in
/// `system.slice`.
pub fn cgroup_path(ns: &str, id: &str, systemd: bool) -> String {
    if systemd {
        format!("system.slice:sup-{ns}:{id}")
    } else {
        format!("/sup/{ns}/{id}")
    }
}

/// Whether `path` is in the systemd driver's `slice:prefix:name` form (the slice may be
/// empty, for the runtime's default): the task is then run with that driver.
pub fn is_systemd_cgroups_path(path: &str) -> bool {
    let parts: Vec<&str> = path.split(':').collect();
    match parts[..] {
        [slice, _, name] => {
            !path.contains('/')
                && !name.is_empty()
                && (slice.is_empty() || slice.ends_with(".slice"))
        }
        _ => false,
    }
}

/// Builders fail only on what this module set itself, so a failure is a bug here.
fn built<T>(r: std::result::Result<T, OciSpecError>) -> Result<T> {
    r.map_err(|e| Error::internal(format!("building the OCI spec: {e}")))
}

fn oci_user(u: &user::ResolvedUser) -> Result<User> {
    let mut b = UserBuilder::default().uid(u.uid).gid(u.gid);
    if !u.additional_gids.is_empty() {
        b = b.additional_gids(u.additional_gids.clone());
    }
    built(b.build())
}

fn namespaces(host_network: bool) -> Result<Vec<LinuxNamespace>> {
    let mut kinds = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if !host_network {
        // runc brings loopback up in a new network namespace.
        kinds.push(LinuxNamespaceType::Network);
    }
    kinds
        .into_iter()
        .map(|t| built(LinuxNamespaceBuilder::default().typ(t).build()))
        .collect()
}

/// Namespaces and ids become a cgroup path: they must stay one path component each.
fn check_name(name: &str, what: &str) -> Result<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\0'])
        || name.chars().any(char::is_control)
    {
        return Err(Error::invalid(format!("{what} {name:?}: not a valid name")));
    }
    Ok(())
}

/// Letters, digits, '-', '_' and '.', in labels that do not start or end with '-'.
fn check_hostname(name: &str) -> Result<()> {
    let bad = || Error::invalid(format!("hostname {name:?}: not a valid host name"));
    if name.len() > MAX_HOSTNAME {
        return Err(Error::invalid(format!(
            "hostname {name:?}: longer than {MAX_HOSTNAME} characters"
        )));
    }
    for label in name.split('.') {
        if label.is_empty()
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad());
        }
    }
    Ok(())
}

fn annotations(a: &BTreeMap<String, String>) -> Result<HashMap<String, String>> {
    for (k, v) in a {
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            return Err(Error::invalid(format!(
                "annotation {k:?}: want a non-empty key, and no NUL bytes"
            )));
        }
    }
    Ok(a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}
