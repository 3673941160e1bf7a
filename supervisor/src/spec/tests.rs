//! Whole-spec tests: generate and exec_process over a temporary root filesystem.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, LinuxNamespaceType, Spec};

use super::*;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\nusers:x:100:app\n";
const IMAGE: &[u8] = br#"{"architecture":"amd64","os":"linux","config":{
    "Entrypoint":["/docker-entrypoint.sh"],"Cmd":["nginx","-g","daemon off;"],
    "Env":["PATH=/usr/local/bin:/usr/bin:/bin","NGINX_VERSION=1.27"],
    "WorkingDir":"/srv","User":"app"}}"#;

fn rootfs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("etc")).unwrap();
    std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
    std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
    dir
}

fn v(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

fn process(spec: &Spec) -> &Process {
    spec.process().as_ref().unwrap()
}

fn env(spec: &Spec) -> Vec<String> {
    process(spec).env().clone().unwrap()
}

fn linux(spec: &Spec) -> &oci_spec::runtime::Linux {
    spec.linux().as_ref().unwrap()
}

fn namespace_kinds(spec: &Spec) -> Vec<LinuxNamespaceType> {
    let ns = linux(spec).namespaces().as_ref().unwrap();
    assert!(ns.iter().all(|n| n.path().is_none()));
    ns.iter().map(|n| n.typ()).collect()
}

fn destinations(spec: &Spec) -> Vec<PathBuf> {
    spec.mounts()
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.destination().clone())
        .collect()
}

fn invalid(r: Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("want InvalidArgument, got {other:?}"),
    }
}

#[test]
fn image_defaults_and_safe_defaults() {
    let root = rootfs();
    let spec = generate("default", "web", IMAGE, root.path(), &Overrides::default()).unwrap();
    let p = process(&spec);
    assert_eq!(
        p.args().as_deref().unwrap(),
        v(&["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"])
    );
    assert_eq!(
        env(&spec),
        v(&[
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "NGINX_VERSION=1.27",
            "HOME=/home/app"
        ])
    );
    assert_eq!(p.cwd(), Path::new("/srv"));
    assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
    assert_eq!(p.user().additional_gids().as_deref(), Some(&[100][..]));
    assert_eq!(p.terminal(), Some(false));
    assert!(p.console_size().is_none());
    assert_eq!(p.no_new_privileges(), Some(false));
    let caps = p
        .capabilities()
        .as_ref()
        .unwrap()
        .bounding()
        .clone()
        .unwrap();
    assert_eq!(caps, DEFAULT_CAPS.into_iter().collect());
    let own = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    let want = own.map_or(1_048_576, |h| h.min(1_048_576));
    assert_eq!(p.rlimits().as_ref().unwrap()[0].hard(), want);

    assert_eq!(spec.hostname().as_deref(), Some("web"));
    let r = spec.root().as_ref().unwrap();
    assert_eq!(
        (r.path().as_path(), r.readonly()),
        (Path::new("rootfs"), Some(false))
    );
    assert_eq!(
        namespace_kinds(&spec),
        [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Network
        ]
    );
    assert_eq!(
        destinations(&spec),
        [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup"
        ]
        .map(PathBuf::from)
    );
    let l = linux(&spec);
    assert_eq!(
        l.cgroups_path().as_deref(),
        Some(Path::new("/sup/default/web"))
    );
    assert_eq!(l.masked_paths().as_ref().unwrap().len(), MASKED_PATHS.len());
    assert_eq!(
        l.readonly_paths().as_ref().unwrap().len(),
        READONLY_PATHS.len()
    );
    assert!(l.uid_mappings().is_none() && l.seccomp().is_none());
    let res = l.resources().as_ref().unwrap();
    assert!(res.memory().is_none() && res.cpu().is_none() && res.pids().is_none());
    let devices = res.devices().as_ref().unwrap();
    assert!(!devices[0].allow());
    assert!(devices[1..].iter().all(|d| d.allow()));

    // What the runtime will read.
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(json["ociVersion"], oci_spec::runtime::VERSION);
    assert_eq!(json["root"]["path"], "rootfs");
    assert_eq!(json["linux"]["cgroupsPath"], "/sup/default/web");
    assert!(json.get("hooks").is_none());
}

#[test]
fn overrides_win() {
    let root = rootfs();
    let mut annotations = BTreeMap::new();
    annotations.insert("org.example/role".to_string(), "front".to_string());
    let o = Overrides {
        command: Some(v(&["nginx", "-t"])),
        env: v(&["NGINX_VERSION=test", "EXTRA=1", "HOME=/data"]),
        working_dir: "/tmp".into(),
        user: "0:100".into(),
        tty: true,
        hostname: "front-1.example".into(),
        readonly_rootfs: true,
        no_new_privileges: true,
        rlimits: vec![("nofile".into(), 1024, 2048)],
        annotations,
        ..Default::default()
    };
    let spec = generate("default", "web", IMAGE, root.path(), &o).unwrap();
    let p = process(&spec);
    assert_eq!(
        p.args().as_deref().unwrap(),
        v(&["/docker-entrypoint.sh", "nginx", "-t"])
    );
    assert_eq!(
        env(&spec),
        v(&[
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "NGINX_VERSION=test",
            "EXTRA=1",
            "HOME=/data",
            "TERM=xterm"
        ])
    );
    assert_eq!(p.cwd(), Path::new("/tmp"));
    assert_eq!((p.user().uid(), p.user().gid()), (0, 100));
    assert_eq!(p.terminal(), Some(true));
    assert_eq!(p.no_new_privileges(), Some(true));
    let nofile = p.rlimits().as_ref().unwrap()[0];
    assert_eq!((nofile.soft(), nofile.hard()), (1024, 2048));
    assert_eq!(spec.hostname().as_deref(), Some("front-1.example"));
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(
        spec.annotations().as_ref().unwrap()["org.example/role"],
        "front"
    );

    // A new entrypoint drops the image's cmd.
    let o = Overrides {
        entrypoint: Some(v(&["/bin/sh"])),
        ..Default::default()
    };
    let spec = generate("default", "web", IMAGE, root.path(), &o).unwrap();
    assert_eq!(process(&spec).args().as_deref().unwrap(), v(&["/bin/sh"]));
}

#[test]
fn minimal_image() {
    let dir = tempfile::tempdir().unwrap();
    let o = Overrides {
        command: Some(v(&["/hello"])),
        ..Default::default()
    };
    let long_id = "x".repeat(76);
    let spec = generate("k8s.io", &long_id, b"{}", dir.path(), &o).unwrap();
    let p = process(&spec);
    assert_eq!(
        env(&spec),
        v(&[&format!("PATH={}", process::DEFAULT_PATH), "HOME=/"])
    );
    assert_eq!(p.cwd(), Path::new("/"));
    assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
    assert!(p.user().additional_gids().is_none());
    assert_eq!(spec.hostname().as_deref().map(str::len), Some(63));

    let err = invalid(generate(
        "default",
        "c",
        b"{}",
        dir.path(),
        &Overrides::default(),
    ));
    assert_eq!(
        err,
        "no command: the image has neither entrypoint nor cmd, give one"
    );
}

#[test]
fn privileged() {
    let root = rootfs();
    let o = Overrides {
        privileged: true,
        cap_drop: v(&["SYS_MODULE"]),
        ..Default::default()
    };
    let spec = generate("default", "p", IMAGE, root.path(), &o).unwrap();
    let caps = process(&spec)
        .capabilities()
        .as_ref()
        .unwrap()
        .effective()
        .clone()
        .unwrap();
    assert_eq!(caps.len(), super::security::tests::available_caps() - 1);
    assert!(caps.contains(&Capability::SysAdmin));
    let l = linux(&spec);
    assert!(l.masked_paths().is_none() && l.readonly_paths().is_none());
    let devices = l.resources().as_ref().unwrap().devices().as_ref().unwrap();
    assert_eq!(devices.len(), 1);
    assert!(devices[0].allow());
    let sys = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/sys"))
        .unwrap();
    assert!(sys.options().as_ref().unwrap().contains(&"rw".to_string()));
}

#[test]
fn caps_add_and_drop() {
    let root = rootfs();
    let o = Overrides {
        cap_add: v(&["CAP_NET_ADMIN"]),
        cap_drop: v(&["net_raw", "MKNOD"]),
        ..Default::default()
    };
    let spec = generate("default", "c", IMAGE, root.path(), &o).unwrap();
    let caps = process(&spec)
        .capabilities()
        .as_ref()
        .unwrap()
        .permitted()
        .clone()
        .unwrap();
    assert!(caps.contains(&Capability::NetAdmin));
    assert!(!caps.contains(&Capability::NetRaw) && !caps.contains(&Capability::Mknod));
    let o = Overrides {
        cap_add: v(&["CAP_TELEPORT"]),
        ..Default::default()
    };
    let err = invalid(generate("default", "c", IMAGE, root.path(), &o));
    assert!(err.contains("CAP_TELEPORT"), "{err}");
}

#[test]
fn host_network() {
    let root = rootfs();
    let o = Overrides {
        host_network: true,
        ..Default::default()
    };
    let spec = generate("default", "h", IMAGE, root.path(), &o).unwrap();
    assert!(!namespace_kinds(&spec).contains(&LinuxNamespaceType::Network));
    assert!(namespace_kinds(&spec).contains(&LinuxNamespaceType::Uts));
    assert!(spec.hostname().is_none());
    let dests = destinations(&spec);
    for file in ["/etc/resolv.conf", "/etc/hosts"] {
        assert_eq!(
            dests.contains(&PathBuf::from(file)),
            Path::new(file).is_file(),
            "{file}"
        );
    }
    for m in spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|m| m.destination().starts_with("/etc"))
    {
        assert!(m.options().as_ref().unwrap().contains(&"ro".to_string()));
    }
}

#[test]
fn resources_and_mounts() {
    let root = rootfs();
    let data = tempfile::tempdir().unwrap();
    let o = Overrides {
        memory_limit: 64 << 20,
        cpus: 0.5,
        cpu_shares: 1024,
        pids_limit: 64,
        mounts: vec![
            MountSpec {
                source: data.path().to_str().unwrap().into(),
                destination: "/data".into(),
                readonly: true,
                ..Default::default()
            },
            MountSpec {
                destination: "/run".into(),
                kind: "tmpfs".into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let spec = generate("default", "r", IMAGE, root.path(), &o).unwrap();
    let res = linux(&spec).resources().as_ref().unwrap();
    assert_eq!(res.memory().unwrap().limit(), Some(64 << 20));
    assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(50_000));
    assert_eq!(res.cpu().as_ref().unwrap().shares(), Some(1024));
    assert_eq!(res.pids().unwrap().limit(), 64);
    assert!(res.devices().is_some());
    let dests = destinations(&spec);
    assert_eq!(
        dests[dests.len() - 2..],
        [PathBuf::from("/data"), PathBuf::from("/run")]
    );

    let update = resources(128 << 20, 0.0, 0, 0).unwrap();
    assert_eq!(update.memory().unwrap().limit(), Some(128 << 20));
    assert!(update.cpu().is_none() && update.devices().is_none());
    assert!(invalid(resources(-5, 0.0, 0, 0)).contains("-5"));
}

#[test]
fn hostile_rootfs_is_confined() {
    let outer = tempfile::tempdir().unwrap();
    std::fs::write(outer.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
    let root = outer.path().join("bundle/rootfs");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    symlink("../../../passwd", root.join("etc/passwd")).unwrap();
    symlink("/etc/shadow", root.join("etc/group")).unwrap();
    let image = br#"{"config":{"Cmd":["/bin/sh"],"User":"evil"}}"#;
    let err = invalid(generate(
        "default",
        "x",
        image,
        &root,
        &Overrides::default(),
    ));
    assert_eq!(
        err,
        "image config User: user \"evil\": no such user in the container's /etc/passwd"
    );
    // The same holds for an exec into a container whose files changed.
    let base = generate(
        "default",
        "x",
        br#"{"config":{"Cmd":["/bin/sh"]}}"#,
        &root,
        &Overrides::default(),
    )
    .unwrap();
    let err = invalid(exec_process(
        &base,
        v(&["id"]),
        vec![],
        String::new(),
        "evil".into(),
        false,
        &root,
    ));
    assert!(err.contains("no such user"), "{err}");
}

#[test]
fn exec_defaults_to_the_container() {
    let root = rootfs();
    let base = generate("default", "web", IMAGE, root.path(), &Overrides::default()).unwrap();
    let p = exec_process(
        &base,
        v(&["ls", "-l"]),
        vec![],
        String::new(),
        String::new(),
        false,
        root.path(),
    )
    .unwrap();
    let bp = process(&base);
    assert_eq!(p.args().as_deref().unwrap(), v(&["ls", "-l"]));
    assert_eq!(p.env(), bp.env());
    assert_eq!(p.cwd(), bp.cwd());
    assert_eq!(p.user(), bp.user());
    assert_eq!(p.capabilities(), bp.capabilities());
    assert_eq!(p.rlimits(), bp.rlimits());

    let p = exec_process(
        &base,
        v(&["sh"]),
        v(&["NGINX_VERSION=x", "DEBUG=1"]),
        "/var".into(),
        "root".into(),
        true,
        root.path(),
    )
    .unwrap();
    assert_eq!(
        p.env().clone().unwrap(),
        v(&[
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "NGINX_VERSION=x",
            "HOME=/root",
            "DEBUG=1",
            "TERM=xterm"
        ])
    );
    assert_eq!(p.cwd(), Path::new("/var"));
    assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
    assert_eq!(p.terminal(), Some(true));
}

#[test]
fn exec_bad_input() {
    let root = rootfs();
    let base = generate("default", "web", IMAGE, root.path(), &Overrides::default()).unwrap();
    let ex = |args: &[&str], env: &[&str], cwd: &str, user: &str| {
        exec_process(
            &base,
            v(args),
            v(env),
            cwd.into(),
            user.into(),
            false,
            root.path(),
        )
    };
    invalid(ex(&[], &[], "", ""));
    invalid(ex(&[""], &[], "", ""));
    invalid(ex(&["a\0"], &[], "", ""));
    invalid(ex(&["ls"], &["NOEQUALS"], "", ""));
    invalid(ex(&["ls"], &[], "tmp", ""));
    invalid(ex(&["ls"], &[], "", "nobody"));
    let mut no_process = base.clone();
    no_process.set_process(None);
    let err = exec_process(
        &no_process,
        v(&["ls"]),
        vec![],
        String::new(),
        String::new(),
        false,
        root.path(),
    );
    assert!(matches!(err, Err(Error::FailedPrecondition(_))));
}

#[test]
fn bad_overrides() {
    let root = rootfs();
    let ok = Overrides::default();
    invalid(generate("", "web", IMAGE, root.path(), &ok));
    invalid(generate("default", "../x", IMAGE, root.path(), &ok));
    invalid(generate("default", "..", IMAGE, root.path(), &ok));
    invalid(generate("a/b", "web", IMAGE, root.path(), &ok));
    invalid(generate("default", "web", b"not json", root.path(), &ok));

    let relative_image = br#"{"config":{"Cmd":["sh"],"WorkingDir":"srv"}}"#;
    let err = invalid(generate("default", "web", relative_image, root.path(), &ok));
    assert_eq!(
        err,
        "image config WorkingDir \"srv\": must be an absolute path"
    );
    let bad_image_env = br#"{"config":{"Cmd":["sh"],"Env":["=oops"]}}"#;
    invalid(generate("default", "web", bad_image_env, root.path(), &ok));

    let cases: Vec<Overrides> = vec![
        Overrides {
            working_dir: "relative".into(),
            ..Default::default()
        },
        Overrides {
            env: v(&["A"]),
            ..Default::default()
        },
        Overrides {
            user: "nobody".into(),
            ..Default::default()
        },
        Overrides {
            user: "app:nogroup".into(),
            ..Default::default()
        },
        Overrides {
            hostname: "bad host".into(),
            ..Default::default()
        },
        Overrides {
            hostname: "-x".into(),
            ..Default::default()
        },
        Overrides {
            hostname: "a".repeat(64),
            ..Default::default()
        },
        Overrides {
            command: Some(v(&[""])),
            entrypoint: Some(vec![]),
            ..Default::default()
        },
        Overrides {
            memory_limit: 1024,
            ..Default::default()
        },
        Overrides {
            cpus: -1.0,
            ..Default::default()
        },
        Overrides {
            pids_limit: -1,
            ..Default::default()
        },
        Overrides {
            rlimits: vec![("nofile".into(), 10, 5)],
            ..Default::default()
        },
        Overrides {
            rlimits: vec![("bogus".into(), 1, 1)],
            ..Default::default()
        },
        Overrides {
            annotations: [(String::new(), "x".to_string())].into_iter().collect(),
            ..Default::default()
        },
        Overrides {
            mounts: vec![MountSpec {
                source: "/".into(),
                destination: "rel".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
    ];
    for o in cases {
        let r = generate("default", "web", IMAGE, root.path(), &o);
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{o:?}: {r:?}");
    }
    let err = invalid(generate(
        "default",
        "web",
        IMAGE,
        root.path(),
        &Overrides {
            user: "bob".into(),
            ..Default::default()
        },
    ));
    assert_eq!(
        err,
        "user \"bob\": no such user in the container's /etc/passwd"
    );
}

#[test]
fn cgroup_paths() {
    assert_eq!(cgroup_path("k8s.io", "abc", false), "/sup/k8s.io/abc");
    let scope = cgroup_path("k8s.io", "abc", true);
    assert_eq!(scope, "system.slice:sup-k8s.io:abc");
    assert!(is_systemd_cgroups_path(&scope));
    assert!(is_systemd_cgroups_path("kubepods-pod1.slice:sup:c1"));
    assert!(is_systemd_cgroups_path(":sup:c1"));
    for not in [
        "/sup/k8s.io/abc",
        "a:b",
        "x.slice:sup:",
        "a/b.slice:sup:c",
        "web:sup:c",
        "a:b:c:d",
    ] {
        assert!(!is_systemd_cgroups_path(not), "{not}");
    }
}

#[test]
fn masked_and_readonly_paths_as_asked() {
    let root = rootfs();
    let o = Overrides {
        masked_paths: Some(v(&["/bin/ls", "/proc/kcore"])),
        readonly_paths: Some(v(&["/tmp"])),
        ..Default::default()
    };
    let spec = generate("default", "m", IMAGE, root.path(), &o).unwrap();
    let l = linux(&spec);
    assert_eq!(
        l.masked_paths().as_deref(),
        Some(&v(&["/bin/ls", "/proc/kcore"])[..])
    );
    assert_eq!(l.readonly_paths().as_deref(), Some(&v(&["/tmp"])[..]));

    // Empty lists (procMount: Unmasked) hide nothing.
    let o = Overrides {
        masked_paths: Some(Vec::new()),
        readonly_paths: Some(Vec::new()),
        ..Default::default()
    };
    let spec = generate("default", "m", IMAGE, root.path(), &o).unwrap();
    let l = linux(&spec);
    assert!(l.masked_paths().is_none() && l.readonly_paths().is_none());

    for bad in ["tmp", "/a\0b"] {
        let o = Overrides {
            readonly_paths: Some(v(&[bad])),
            ..Default::default()
        };
        let r = generate("default", "m", IMAGE, root.path(), &o);
        assert!(
            matches!(r, Err(Error::InvalidArgument(_))),
            "{bad:?}: {r:?}"
        );
    }
}
