//! A container's mounts: the file systems every container gets, the host's name-resolution
//! files for host-network containers, and the caller's bind and tmpfs mounts.

use std::path::Path;

use oci_spec::runtime::{Mount, MountBuilder};

use crate::error::{Error, Result};

use super::{built, MountSpec};

/// Linux's PATH_MAX: a longer path cannot be mounted anyway.
const MAX_PATH: usize = 4096;

/// Host files a container sharing the host's network needs to resolve names like the host.
const HOST_NETWORK_FILES: [&str; 2] = ["/etc/resolv.conf", "/etc/hosts"];

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount> {
    built(
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(source)
            .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build(),
    )
}

/// /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys and /sys/fs/cgroup; a privileged
/// container gets /sys and its cgroup tree writable.
pub fn defaults(privileged: bool) -> Result<Vec<Mount>> {
    let sys_access = if privileged { "rw" } else { "ro" };
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_access],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_access],
        )?,
    ])
}

/// Read-only binds of the host's /etc/resolv.conf and /etc/hosts (those that exist), found
/// under `host_root` ("/" outside tests).
pub fn host_network(host_root: &Path) -> Result<Vec<Mount>> {
    let mut out = Vec::new();
    for file in HOST_NETWORK_FILES {
        let source = host_root.join(file.trim_start_matches('/'));
        if source.is_file() {
            out.push(built(
                MountBuilder::default()
                    .destination(file)
                    .typ("bind")
                    .source(source)
                    .options(vec!["rbind".to_string(), "ro".to_string()])
                    .build(),
            )?);
        }
    }
    Ok(out)
}

/// The caller's mounts, checked: bind (the default kind) and tmpfs.
pub fn caller(specs: &[MountSpec]) -> Result<Vec<Mount>> {
    let mut out: Vec<Mount> = Vec::with_capacity(specs.len());
    for m in specs {
        let what = format!("mount {:?} -> {:?}", m.source, m.destination);
        let dest = clean_destination(&m.destination).map_err(|e| e.context(&what))?;
        if out.iter().any(|o| o.destination() == Path::new(&dest)) {
            return Err(Error::invalid(format!(
                "{what}: another mount has the same destination"
            )));
        }
        for opt in &m.options {
            if opt.is_empty() || opt.contains(['\0', ',']) {
                return Err(Error::invalid(format!(
                    "{what}: option {opt:?}: want one non-empty option without ',' or NUL"
                )));
            }
        }
        let kind = if m.kind.is_empty() { "bind" } else { &m.kind };
        let built_mount = match kind {
            "bind" => bind(m, &dest).map_err(|e| e.context(&what))?,
            "tmpfs" => tmpfs(m, &dest).map_err(|e| e.context(&what))?,
            other => {
                return Err(Error::invalid(format!(
                    "{what}: type {other:?}: not supported, use \"bind\" or \"tmpfs\""
                )))
            }
        };
        out.push(built_mount);
    }
    Ok(out)
}

fn bind(m: &MountSpec, dest: &str) -> Result<Mount> {
    check_path(&m.source, "source")?;
    // The source is the host's: it must be there now, or runc fails later with less to say.
    if std::fs::metadata(&m.source).is_err() {
        return Err(Error::invalid("source: does not exist on the host"));
    }
    let mut options = Vec::with_capacity(m.options.len() + 2);
    // "bind" asks for the source alone, without the mounts below it.
    if !m.options.iter().any(|o| o == "bind" || o == "rbind") {
        options.push("rbind".to_string());
    }
    options.extend(m.options.iter().cloned());
    push_access(&mut options, m.readonly);
    built(
        MountBuilder::default()
            .destination(dest)
            .typ("bind")
            .source(m.source.as_str())
            .options(options)
            .build(),
    )
}

fn tmpfs(m: &MountSpec, dest: &str) -> Result<Mount> {
    if m.source.contains('\0') {
        return Err(Error::invalid("source: contains a NUL byte"));
    }
    let source = if m.source.is_empty() {
        "tmpfs"
    } else {
        &m.source
    };
    // Docker's tmpfs defaults; options given later (such as "exec") override them.
    let mut options: Vec<String> = ["nosuid", "nodev", "noexec"].map(String::from).to_vec();
    options.extend(m.options.iter().cloned());
    push_access(&mut options, m.readonly);
    built(
        MountBuilder::default()
            .destination(dest)
            .typ("tmpfs")
            .source(source)
            .options(options)
            .build(),
    )
}

/// The runtime applies options in order, so the last of ro/rw decides.
fn push_access(options: &mut Vec<String>, readonly: bool) {
    if readonly {
        options.push("ro".to_string());
    } else if !options.iter().any(|o| o == "ro") {
        options.push("rw".to_string());
    }
}

fn check_path(path: &str, what: &str) -> Result<()> {
    if path.contains('\0') {
        return Err(Error::invalid(format!("{what}: contains a NUL byte")));
    }
    if !path.starts_with('/') {
        return Err(Error::invalid(format!("{what}: must be an absolute path")));
    }
    if path.len() > MAX_PATH {
        return Err(Error::invalid(format!(
            "{what}: longer than {MAX_PATH} bytes"
        )));
    }
    Ok(())
}

/// An absolute destination without `..`, normalized so that duplicates can be found; "/" is
/// refused since it would hide the root filesystem.
fn clean_destination(dest: &str) -> Result<String> {
    check_path(dest, "destination")?;
    let mut clean = String::with_capacity(dest.len());
    for part in dest.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Err(Error::invalid("destination: must not contain \"..\""));
        }
        clean.push('/');
        clean.push_str(part);
    }
    if clean.is_empty() {
        return Err(Error::invalid(
            "destination: \"/\" would hide the root filesystem",
        ));
    }
    Ok(clean)
}

/// The default mounts, minus those the caller replaces, then the others.
pub fn merge(defaults: Vec<Mount>, extra: Vec<Mount>) -> Vec<Mount> {
    let mut out: Vec<Mount> = defaults
        .into_iter()
        .filter(|d| !extra.iter().any(|e| e.destination() == d.destination()))
        .collect();
    out.extend(extra);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        source: &str,
        destination: &str,
        kind: &str,
        readonly: bool,
        options: &[&str],
    ) -> MountSpec {
        MountSpec {
            source: source.to_string(),
            destination: destination.to_string(),
            kind: kind.to_string(),
            readonly,
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn opts(m: &Mount) -> Vec<&str> {
        m.options()
            .as_ref()
            .unwrap()
            .iter()
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn defaults_and_privileged() {
        let d = defaults(false).unwrap();
        let dests: Vec<_> = d
            .iter()
            .map(|m| m.destination().to_str().unwrap())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
        assert!(opts(&d[5]).contains(&"ro"));
        assert!(opts(&d[6]).contains(&"ro"));
        let p = defaults(true).unwrap();
        assert!(opts(&p[5]).contains(&"rw") && !opts(&p[5]).contains(&"ro"));
    }

    #[test]
    fn bind_and_tmpfs() {
        let src = tempfile::tempdir().unwrap();
        let s = src.path().to_str().unwrap();
        let m = caller(&[
            spec(s, "/data/", "", false, &[]),
            spec(s, "//ro/./x", "bind", true, &["bind", "nosuid"]),
            spec("", "/scratch", "tmpfs", false, &["size=1m", "exec"]),
        ])
        .unwrap();
        assert_eq!(m[0].destination(), Path::new("/data"));
        assert_eq!(m[0].typ().as_deref(), Some("bind"));
        assert_eq!(opts(&m[0]), ["rbind", "rw"]);
        assert_eq!(m[1].destination(), Path::new("/ro/x"));
        assert_eq!(opts(&m[1]), ["bind", "nosuid", "ro"]);
        assert_eq!(m[2].source().as_deref(), Some(Path::new("tmpfs")));
        assert_eq!(
            opts(&m[2]),
            ["nosuid", "nodev", "noexec", "size=1m", "exec", "rw"]
        );
    }

    #[test]
    fn bad_mounts() {
        let src = tempfile::tempdir().unwrap();
        let s = src.path().to_str().unwrap();
        let missing = format!("{s}/missing");
        for bad in [
            spec("relative", "/x", "bind", false, &[]),
            spec(&missing, "/x", "bind", false, &[]),
            spec(s, "x", "bind", false, &[]),
            spec(s, "/", "bind", false, &[]),
            spec(s, "/a/../../etc", "bind", false, &[]),
            spec(s, "/x\0", "bind", false, &[]),
            spec(s, "/x", "bind", false, &["ro,exec"]),
            spec(s, "/x", "bind", false, &[""]),
            spec(s, "/x", "nfs", false, &[]),
            spec(s, "/x", "proc", false, &[]),
        ] {
            let err = caller(std::slice::from_ref(&bad)).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}: {err}");
        }
        let err = caller(&[
            spec(s, "/x", "", false, &[]),
            spec(s, "/x/", "", false, &[]),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("same destination"), "{err}");
        let err = caller(&[spec("rel", "/x", "", false, &[])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mount \"rel\" -> \"/x\": source: must be an absolute path"
        );
    }

    #[test]
    fn host_network_binds_what_exists() {
        let host = tempfile::tempdir().unwrap();
        std::fs::create_dir(host.path().join("etc")).unwrap();
        assert!(host_network(host.path()).unwrap().is_empty());
        std::fs::write(host.path().join("etc/resolv.conf"), "nameserver 10.0.0.1\n").unwrap();
        let m = host_network(host.path()).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].destination(), Path::new("/etc/resolv.conf"));
        assert_eq!(
            m[0].source().as_deref(),
            Some(host.path().join("etc/resolv.conf").as_path())
        );
        assert_eq!(opts(&m[0]), ["rbind", "ro"]);
    }

    #[test]
    fn caller_mount_replaces_a_default() {
        let src = tempfile::tempdir().unwrap();
        let s = src.path().to_str().unwrap();
        let extra = caller(&[spec(s, "/dev/shm", "", false, &[])]).unwrap();
        let all = merge(defaults(false).unwrap(), extra);
        let shm: Vec<_> = all
            .iter()
            .filter(|m| m.destination() == Path::new("/dev/shm"))
            .collect();
        assert_eq!(shm.len(), 1);
        assert_eq!(shm[0].typ().as_deref(), Some("bind"));
    }
}
