//! The runtime's default seccomp profile ("RuntimeDefault" in Kubernetes): every system call
//! is allowed except those that reach past the container — kernel modules, keyrings, clocks,
//! mounts and namespaces, tracing other processes, raw I/O ports, reboot and the like — which
//! fail with EPERM. A call whose capability the container was granted is given back (a
//! container with CAP_SYS_ADMIN may mount), as the capability already says it may.

use serde_json::{json, Value};

/// Calls refused unless the container holds the capability paired with them ("" for none:
/// refused always).
const GUARDED: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "add_key",
            "keyctl",
            "request_key",
            "kexec_load",
            "kexec_file_load",
            "lookup_dcookie",
            "userfaultfd",
            "bpf",
            "perf_event_open",
            "uselib",
            "ustat",
            "sysfs",
            "_sysctl",
            "nfsservctl",
            "vm86",
            "vm86old",
            "create_module",
            "get_kernel_syms",
            "query_module",
            "open_by_handle_at",
            "name_to_handle_at",
        ],
    ),
    (
        "CAP_SYS_ADMIN",
        &[
            "mount",
            "umount",
            "umount2",
            "unshare",
            "setns",
            "pivot_root",
            "swapon",
            "swapoff",
            "quotactl",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "open_tree",
            "move_mount",
            "mount_setattr",
        ],
    ),
    (
        "CAP_SYS_MODULE",
        &["init_module", "finit_module", "delete_module"],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    (
        "CAP_SYS_TIME",
        &[
            "settimeofday",
            "stime",
            "clock_settime",
            "clock_adjtime",
            "adjtimex",
        ],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &["ptrace", "process_vm_readv", "process_vm_writev", "kcmp"],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_NICE",
        &["mbind", "set_mempolicy", "get_mempolicy", "move_pages"],
    ),
];

/// clone(2) flags that make new namespaces: refused without CAP_SYS_ADMIN (a user namespace
/// needs no capability, so the capability set alone would not stop it).
const NAMESPACE_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The architectures the filter applies to: the host's and those its CPU also runs.
fn architectures() -> Vec<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "x86" => vec!["SCMP_ARCH_X86"],
        "aarch64" => vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "arm" => vec!["SCMP_ARCH_ARM"],
        "powerpc64" => vec!["SCMP_ARCH_PPC64LE"],
        "s390x" => vec!["SCMP_ARCH_S390X", "SCMP_ARCH_S390"],
        "riscv64" => vec!["SCMP_ARCH_RISCV64"],
        _ => Vec::new(),
    }
}

/// The default profile for a container holding `capabilities` ("CAP_..." names), as the
/// OCI runtime spec's `linux.seccomp` object.
pub fn runtime_default(capabilities: &[String]) -> Value {
    let holds = |cap: &str| capabilities.iter().any(|c| c.eq_ignore_ascii_case(cap));
    let mut refused: Vec<&str> = Vec::new();
    for (cap, calls) in GUARDED {
        if cap.is_empty() || !holds(cap) {
            refused.extend_from_slice(calls);
        }
    }
    let mut rules = vec![json!({
        "names": refused,
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": EPERM,
    })];
    if !holds("CAP_SYS_ADMIN") {
        // clone's flags are its first argument on every architecture but s390, where the
        // filter does not apply to them.
        for flag in NAMESPACE_FLAGS {
            rules.push(json!({
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": EPERM,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            }));
        }
        // clone3 passes its flags in memory, where a filter cannot look: answering ENOSYS makes
        // C libraries fall back to clone, which is filtered above.
        rules.push(json!({
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": ENOSYS,
        }));
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": architectures(),
        "syscalls": rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(p: &Value) -> Vec<String> {
        p["syscalls"][0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn is_a_valid_oci_seccomp_object() {
        let p = runtime_default(&[]);
        let parsed: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(p).unwrap();
        assert!(!parsed.syscalls().as_ref().unwrap().is_empty());
    }

    #[test]
    fn capabilities_give_their_calls_back() {
        let none = runtime_default(&[]);
        assert!(refused(&none).contains(&"mount".to_string()));
        assert!(refused(&none).contains(&"ptrace".to_string()));
        assert!(none["syscalls"].as_array().unwrap().len() > 1);
        let admin = runtime_default(&["CAP_SYS_ADMIN".into(), "CAP_SYS_PTRACE".into()]);
        assert!(!refused(&admin).contains(&"mount".to_string()));
        assert!(!refused(&admin).contains(&"ptrace".to_string()));
        assert!(refused(&admin).contains(&"keyctl".to_string()));
        // Namespace-making clone flags are allowed with CAP_SYS_ADMIN.
        assert_eq!(admin["syscalls"].as_array().unwrap().len(), 1);
    }
}
