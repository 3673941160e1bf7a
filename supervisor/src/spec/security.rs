//! The confinement a container gets by default (Docker's choices): capabilities, masked and
//! read-only /proc and /sys paths, the device allow-list, rlimits.

use std::collections::HashSet;
use std::str::FromStr;

use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, LinuxCapabilitiesBuilder, LinuxDeviceCgroup,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, PosixRlimit, PosixRlimitBuilder, PosixRlimitType,
};

use crate::error::{Error, Result};

use super::built;

/// Docker's default capability set.
pub const DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability `oci-spec` knows, for "ALL" and for privileged containers.
pub const ALL_CAPS: [Capability; 41] = [
    Capability::AuditControl,
    Capability::AuditRead,
    Capability::AuditWrite,
    Capability::BlockSuspend,
    Capability::Bpf,
    Capability::CheckpointRestore,
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::Kill,
    Capability::Lease,
    Capability::LinuxImmutable,
    Capability::MacAdmin,
    Capability::MacOverride,
    Capability::Mknod,
    Capability::NetAdmin,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetRaw,
    Capability::Perfmon,
    Capability::Setgid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysChroot,
    Capability::SysModule,
    Capability::SysNice,
    Capability::SysPacct,
    Capability::SysPtrace,
    Capability::SysRawio,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Syslog,
    Capability::WakeAlarm,
];

/// Kernel interfaces that leak host information or let a container poke the host.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Open files: Docker's default, high enough for servers, and the same soft and hard so a
/// program that raises its soft limit sees no surprise.
const DEFAULT_NOFILE: u64 = 1_048_576;

/// The default open-files limit, capped by the daemon's own hard limit: a host (or a
/// sandbox around supd) may forbid raising it, and runc would then fail to start anything.
/// Most paths one list of masked or read-only paths may hold.
const MAX_PATHS: usize = 256;

/// `paths` for a spec's maskedPaths or readonlyPaths (`field`): absolute, without NUL, and
/// not so many or so long that they are anything but a mistake or an attack. `None` gives
/// `defaults`.
pub fn guarded_paths(
    paths: Option<&[String]>,
    defaults: &[&str],
    field: &str,
) -> Result<Vec<String>> {
    let Some(paths) = paths else {
        return Ok(defaults.iter().map(|p| p.to_string()).collect());
    };
    if paths.len() > MAX_PATHS {
        return Err(Error::invalid(format!(
            "{field}: {} paths, more than {MAX_PATHS}",
            paths.len()
        )));
    }
    for p in paths {
        if !p.starts_with('/') || p.contains('\0') || p.len() > 4096 {
            return Err(Error::invalid(format!(
                "{field}: {:?} is not an absolute path",
                crate::error::printable(p)
            )));
        }
    }
    Ok(paths.to_vec())
}

fn default_nofile() -> u64 {
    let own = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    own.maximum
        .map_or(DEFAULT_NOFILE, |hard| hard.min(DEFAULT_NOFILE))
}

/// The capability set: the default (or all, when privileged), then "ALL" in cap_add or
/// cap_drop, then the named additions, then the named drops.
pub fn capabilities(
    privileged: bool,
    add: &[String],
    drop: &[String],
) -> Result<LinuxCapabilities> {
    let (add_all, add) = parse_caps(add, "cap_add")?;
    let (drop_all, drop) = parse_caps(drop, "cap_drop")?;
    if add_all && drop_all {
        return Err(Error::invalid(
            "cap_add and cap_drop: both name ALL, keep one",
        ));
    }
    if let Some(both) = add.iter().find(|c| drop.contains(c)) {
        return Err(Error::invalid(format!(
            "capability CAP_{both}: both in cap_add and cap_drop"
        )));
    }
    let mut set: Capabilities = if drop_all {
        Capabilities::new()
    } else if privileged || add_all {
        ALL_CAPS.into_iter().collect()
    } else {
        DEFAULT_CAPS.into_iter().collect()
    };
    set.extend(add);
    set.retain(|c| !drop.contains(c));
    // Nothing can grant what the daemon's own bounding set lacks: runc would fail to apply it.
    if let Some(host) = host_bounding_set() {
        set.retain(|c| host & (1u64 << cap_number(*c)) != 0);
    }
    let mut caps = built(
        LinuxCapabilitiesBuilder::default()
            .bounding(set.clone())
            .effective(set.clone())
            .permitted(set)
            .build(),
    )?;
    // The builder fills unset sets from oci-spec's own defaults: these must stay empty.
    caps.set_inheritable(None).set_ambient(None);
    Ok(caps)
}

/// The bounding set supd runs with (`CapBnd` in /proc/self/status), if readable.
fn host_bounding_set() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// The kernel's number for a capability (its bit in the capability sets).
fn cap_number(c: Capability) -> u32 {
    use Capability::*;
    match c {
        Chown => 0,
        DacOverride => 1,
        DacReadSearch => 2,
        Fowner => 3,
        Fsetid => 4,
        Kill => 5,
        Setgid => 6,
        Setuid => 7,
        Setpcap => 8,
        LinuxImmutable => 9,
        NetBindService => 10,
        NetBroadcast => 11,
        NetAdmin => 12,
        NetRaw => 13,
        IpcLock => 14,
        IpcOwner => 15,
        SysModule => 16,
        SysRawio => 17,
        SysChroot => 18,
        SysPtrace => 19,
        SysPacct => 20,
        SysAdmin => 21,
        SysBoot => 22,
        SysNice => 23,
        SysResource => 24,
        SysTime => 25,
        SysTtyConfig => 26,
        Mknod => 27,
        Lease => 28,
        AuditWrite => 29,
        AuditControl => 30,
        Setfcap => 31,
        MacOverride => 32,
        MacAdmin => 33,
        Syslog => 34,
        WakeAlarm => 35,
        BlockSuspend => 36,
        AuditRead => 37,
        Perfmon => 38,
        Bpf => 39,
        CheckpointRestore => 40,
    }
}

/// Parses capability names ("NET_ADMIN", "cap_net_admin", "ALL").
fn parse_caps(names: &[String], field: &str) -> Result<(bool, HashSet<Capability>)> {
    let mut all = false;
    let mut caps = HashSet::new();
    for name in names {
        let upper = name.to_ascii_uppercase();
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        if bare == "ALL" {
            all = true;
            continue;
        }
        let cap = Capability::from_str(bare)
            .map_err(|_| Error::invalid(format!("{field}: capability {name:?}: unknown")))?;
        caps.insert(cap);
    }
    Ok((all, caps))
}

/// The device cgroup rules: deny everything, then allow the few devices every container gets
/// (and mknod, which the capability set governs). Privileged: allow everything.
pub fn device_rules(privileged: bool) -> Result<Vec<LinuxDeviceCgroup>> {
    if privileged {
        return Ok(vec![rule(
            true,
            Some(LinuxDeviceType::A),
            None,
            None,
            "rwm",
        )?]);
    }
    let c = Some(LinuxDeviceType::C);
    Ok(vec![
        rule(false, Some(LinuxDeviceType::A), None, None, "rwm")?,
        rule(true, c, None, None, "m")?,
        rule(true, Some(LinuxDeviceType::B), None, None, "m")?,
        rule(true, c, Some(1), Some(3), "rwm")?, // /dev/null
        rule(true, c, Some(1), Some(5), "rwm")?, // /dev/zero
        rule(true, c, Some(1), Some(7), "rwm")?, // /dev/full
        rule(true, c, Some(1), Some(8), "rwm")?, // /dev/random
        rule(true, c, Some(1), Some(9), "rwm")?, // /dev/urandom
        rule(true, c, Some(5), Some(0), "rwm")?, // /dev/tty
        rule(true, c, Some(5), Some(1), "rwm")?, // /dev/console
        rule(true, c, Some(5), Some(2), "rwm")?, // /dev/ptmx
        rule(true, c, Some(136), None, "rwm")?,  // /dev/pts/*
    ])
}

fn rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> Result<LinuxDeviceCgroup> {
    let mut b = LinuxDeviceCgroupBuilder::default()
        .allow(allow)
        .access(access);
    if let Some(t) = typ {
        b = b.typ(t);
    }
    if let Some(m) = major {
        b = b.major(m);
    }
    if let Some(m) = minor {
        b = b.minor(m);
    }
    built(b.build())
}

/// The default rlimits with the caller's on top. Names: "RLIMIT_NOFILE" or "nofile", any case.
pub fn rlimits(overrides: &[(String, u64, u64)]) -> Result<Vec<PosixRlimit>> {
    let mut out = vec![built(
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(default_nofile())
            .hard(default_nofile())
            .build(),
    )?];
    for (name, soft, hard) in overrides {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("RLIMIT_") {
            upper
        } else {
            format!("RLIMIT_{upper}")
        };
        let typ = PosixRlimitType::from_str(&full)
            .map_err(|_| Error::invalid(format!("rlimit {name:?}: unknown")))?;
        if soft > hard {
            return Err(Error::invalid(format!(
                "rlimit {name:?}: soft limit {soft} is above the hard limit {hard}"
            )));
        }
        let limit = built(
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(*soft)
                .hard(*hard)
                .build(),
        )?;
        match out.iter_mut().find(|r| r.typ() == typ) {
            Some(r) => *r = limit,
            None => out.push(limit),
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {

    /// Capabilities this host lets a container have (a sandbox may lack some).
    pub(crate) fn available_caps() -> usize {
        let host = host_bounding_set().unwrap_or(u64::MAX);
        ALL_CAPS
            .iter()
            .filter(|c| host & (1u64 << cap_number(**c)) != 0)
            .count()
    }
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn set(caps: &LinuxCapabilities) -> Capabilities {
        let b = caps.bounding().clone().unwrap();
        assert_eq!(caps.effective().as_ref(), Some(&b));
        assert_eq!(caps.permitted().as_ref(), Some(&b));
        assert!(caps.inheritable().is_none() && caps.ambient().is_none());
        b
    }

    #[test]
    fn default_add_and_drop() {
        let c = set(&capabilities(false, &[], &[]).unwrap());
        assert_eq!(c, DEFAULT_CAPS.into_iter().collect());

        let c = set(&capabilities(
            false,
            &v(&["NET_ADMIN", "cap_sys_ptrace"]),
            &v(&["Cap_Mknod"]),
        )
        .unwrap());
        assert!(c.contains(&Capability::NetAdmin) && c.contains(&Capability::SysPtrace));
        assert!(!c.contains(&Capability::Mknod));
        assert_eq!(c.len(), DEFAULT_CAPS.len() + 1);

        let c = set(&capabilities(false, &v(&["CHOWN"]), &v(&["ALL"])).unwrap());
        assert_eq!(c, [Capability::Chown].into_iter().collect());

        let c = set(&capabilities(false, &v(&["all"]), &v(&["SYS_ADMIN"])).unwrap());
        assert_eq!(c.len(), available_caps() - 1);
        assert!(!c.contains(&Capability::SysAdmin));

        let c = set(&capabilities(true, &[], &v(&["SYS_MODULE"])).unwrap());
        assert_eq!(c.len(), available_caps() - 1);
    }

    #[test]
    fn bad_capabilities() {
        for (add, drop) in [
            (v(&["NET_ADMINN"]), v(&[])),
            (v(&[]), v(&["CAP_"])),
            (v(&["ALL"]), v(&["ALL"])),
            (v(&["KILL"]), v(&["cap_kill"])),
            (v(&[" KILL"]), v(&[])),
        ] {
            let err = capabilities(false, &add, &drop).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{add:?} {drop:?}");
        }
        let err = capabilities(false, &v(&["FLY"]), &[]).unwrap_err();
        assert_eq!(err.to_string(), "cap_add: capability \"FLY\": unknown");
    }

    #[test]
    fn every_capability_parses() {
        for cap in ALL_CAPS {
            let name = format!("CAP_{cap}");
            assert_eq!(parse_caps(&[name], "x").unwrap().1.len(), 1, "{cap}");
        }
        assert_eq!(
            ALL_CAPS.iter().collect::<HashSet<_>>().len(),
            ALL_CAPS.len()
        );
        for name in [
            "DAC_READ_SEARCH",
            "SYS_TTY_CONFIG",
            "IPC_LOCK",
            "SETFCAP",
            "BPF",
        ] {
            assert!(Capability::from_str(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn rlimit_overrides() {
        let r = rlimits(&[]).unwrap();
        assert_eq!(r.len(), 1);
        let n = default_nofile();
        assert_eq!(
            (r[0].typ(), r[0].soft(), r[0].hard()),
            (PosixRlimitType::RlimitNofile, n, n)
        );

        let r = rlimits(&[
            ("nofile".into(), 1024, 4096),
            ("RLIMIT_CORE".into(), 0, 0),
            ("Nproc".into(), 10, 20),
        ])
        .unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].soft(), r[0].hard()), (1024, 4096));
        assert_eq!(r[1].typ(), PosixRlimitType::RlimitCore);
        assert_eq!(r[2].typ(), PosixRlimitType::RlimitNproc);

        assert!(rlimits(&[("files".into(), 1, 1)]).is_err());
        assert!(rlimits(&[("nofile".into(), 2, 1)]).is_err());
    }

    #[test]
    fn device_rules_deny_by_default() {
        let rules = device_rules(false).unwrap();
        assert!(!rules[0].allow() && rules[0].typ() == Some(LinuxDeviceType::A));
        assert!(rules
            .iter()
            .any(|r| r.allow() && r.major() == Some(1) && r.minor() == Some(3)));
        let all = device_rules(true).unwrap();
        assert_eq!(all.len(), 1);
        assert!(all[0].allow());
    }
}
