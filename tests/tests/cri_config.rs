//! End-to-end tests that what a kubelet asks of a container takes effect inside it: command
//! and args, env, working dir, user and groups, read-only root, capabilities, no-new-privs,
//! mounts (read-write, read-only, propagation), devices, the pod's DNS and sysctls, and a
//! privileged container. The container reports what it sees in its CRI log. Run as root.

use std::path::Path;
use std::time::Duration;

use k8s_cri::v1 as cri;
use sup_tests::cri::{container_config, pod_config, wait_for, CriEnv};

/// Capability numbers (linux/capability.h).
const CAP_CHOWN: u32 = 0;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// The CRI log's lines without timestamp and stream tags, once the container has exited.
async fn report(env: &mut CriEnv, id: &str, log: &Path) -> Vec<String> {
    wait_for("the container to exit", Duration::from_secs(30), || {
        let mut rt = env.runtime.clone();
        let id = id.to_string();
        async move {
            let st = rt
                .container_status(cri::ContainerStatusRequest {
                    container_id: id,
                    verbose: false,
                })
                .await
                .ok()?
                .into_inner()
                .status?;
            (st.state == cri::ContainerState::ContainerExited as i32).then_some(())
        }
    })
    .await;
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3).map(String::from))
        .collect()
}

/// The value of `key=` in the report.
fn field<'a>(lines: &'a [String], key: &str) -> &'a str {
    let prefix = format!("{key}=");
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key}= in {lines:#?}"))
}

/// Whether capability `cap` is in a /proc/<pid>/status hex mask.
fn has_cap(mask: &str, cap: u32) -> bool {
    u64::from_str_radix(mask.trim(), 16).expect("hex capability mask") & (1 << cap) != 0
}

const PROBE: &str = r#"
echo "args=$0 $1"
echo "uid=$(id -u)"
echo "groups=$(id -G)"
echo "pwd=$(pwd)"
echo "foo=$FOO"
echo "resolv=$(grep -v '^#' /etc/resolv.conf | tr '\n' ';')"
echo "shm_rmid_forced=$(cat /proc/sys/kernel/shm_rmid_forced)"
echo "caps=$(grep CapEff /proc/self/status | cut -f2)"
echo "nnp=$(grep NoNewPrivs /proc/self/status | cut -f2)"
if touch /rootfile 2>/dev/null; then echo root=writable; else echo root=readonly; fi
if echo data > /data/written 2>/dev/null; then echo data=writable; else echo data=readonly; fi
if touch /ro/x 2>/dev/null; then echo ro=writable; else echo ro=readonly; fi
echo "ro_content=$(cat /ro/hello)"
echo "zero=$(head -c 5 /dev/zero2 | wc -c)"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_kubelet_asks_takes_effect() {
    let mut env = CriEnv::start().await;
    env.import_busybox().await;
    let host = env.daemon.dir().join("host");
    let (rw, ro) = (host.join("rw"), host.join("ro"));
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("hello"), "from the host").unwrap();
    // A directory the container user may write to.
    std::fs::set_permissions(&rw, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();

    let log_dir = env.log_dir("configured");
    let mut pod_cfg = pod_config("configured", &log_dir, false);
    pod_cfg.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    if let Some(l) = pod_cfg.linux.as_mut() {
        l.sysctls = [("kernel.shm_rmid_forced".to_string(), "1".to_string())].into();
    }
    let pod = env.run_pod(pod_cfg.clone()).await;

    let mut cfg = container_config("probe", &["/bin/sh", "-c", PROBE]);
    cfg.args = vec!["first".into(), "second".into()];
    cfg.envs = vec![cri::KeyValue {
        key: "FOO".into(),
        value: "bar baz".into(),
    }];
    cfg.working_dir = "/tmp".into();
    cfg.mounts = vec![
        cri::Mount {
            container_path: "/data".into(),
            host_path: rw.display().to_string(),
            ..Default::default()
        },
        cri::Mount {
            container_path: "/ro".into(),
            host_path: ro.display().to_string(),
            readonly: true,
            ..Default::default()
        },
    ];
    cfg.devices = vec![cri::Device {
        container_path: "/dev/zero2".into(),
        host_path: "/dev/zero".into(),
        permissions: "r".into(),
    }];
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            run_as_group: Some(cri::Int64Value { value: 2000 }),
            supplemental_groups: vec![3000],
            readonly_rootfs: true,
            no_new_privs: true,
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["CHOWN".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let probe = env.start_container(&pod, &pod_cfg, cfg).await;
    let lines = report(&mut env, &probe, &log_dir.join("probe.log")).await;

    // `sh -c PROBE first second`: the args follow the command.
    assert_eq!(field(&lines, "args"), "first second");
    assert_eq!(field(&lines, "uid"), "1000");
    let groups: Vec<&str> = field(&lines, "groups").split(' ').collect();
    assert_eq!(groups.first(), Some(&"2000"), "{groups:?}");
    assert!(groups.contains(&"3000"), "{groups:?}");
    assert_eq!(field(&lines, "pwd"), "/tmp");
    assert_eq!(field(&lines, "foo"), "bar baz");
    assert_eq!(
        field(&lines, "resolv"),
        "nameserver 10.96.0.10;search default.svc.cluster.local;options ndots:5;"
    );
    assert_eq!(field(&lines, "shm_rmid_forced"), "1");
    // A non-root user holds no effective capabilities; no-new-privs is set.
    assert_eq!(field(&lines, "nnp"), "1");
    assert_eq!(field(&lines, "root"), "readonly");
    assert_eq!(field(&lines, "data"), "writable");
    assert_eq!(
        std::fs::read_to_string(rw.join("written")).unwrap(),
        "data\n"
    );
    assert_eq!(field(&lines, "ro"), "readonly");
    assert_eq!(field(&lines, "ro_content"), "from the host");
    assert_eq!(field(&lines, "zero"), "5");

    // The same container's capabilities as root: NET_ADMIN added, CHOWN dropped, no
    // SYS_ADMIN.
    let mut cfg = container_config("caps", &["/bin/sh", "-c", PROBE]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["CHOWN".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    cfg.devices = vec![cri::Device {
        container_path: "/dev/zero2".into(),
        host_path: "/dev/zero".into(),
        permissions: "r".into(),
    }];
    let caps = env.start_container(&pod, &pod_cfg, cfg).await;
    let lines = report(&mut env, &caps, &log_dir.join("caps.log")).await;
    let mask = field(&lines, "caps");
    assert!(has_cap(mask, CAP_NET_ADMIN), "CapEff {mask}");
    assert!(!has_cap(mask, CAP_CHOWN), "CapEff {mask}");
    assert!(!has_cap(mask, CAP_SYS_ADMIN), "CapEff {mask}");
    assert_eq!(field(&lines, "root"), "writable");

    // Privileged: every capability the daemon holds, and mounting works.
    let mut cfg = container_config(
        "privileged",
        &[
            "/bin/sh",
            "-c",
            "echo caps=$(grep CapEff /proc/self/status | cut -f2); \
             mkdir -p /mnt/t && mount -t tmpfs none /mnt/t && echo mount=ok",
        ],
    );
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let privileged = env.start_container(&pod, &pod_cfg, cfg).await;
    let lines = report(&mut env, &privileged, &log_dir.join("privileged.log")).await;
    assert!(has_cap(field(&lines, "caps"), CAP_SYS_ADMIN), "{lines:#?}");
    assert_eq!(field(&lines, "mount"), "ok");

    env.remove_pod(&pod).await;
    env.assert_clean().await;
}

/// Unmounts everything at or below a directory of the test's when it goes.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        sup_tests::mounts::unmount_all_under(&self.0);
    }
}

fn mount_cmd(args: &[&str]) {
    let out = std::process::Command::new("mount")
        .args(args)
        .output()
        .expect("run mount");
    assert!(out.status.success(), "mount {args:?}: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_propagation_and_missing_host_paths() {
    use cri::MountPropagation as P;
    let mut env = CriEnv::start().await;
    env.import_busybox().await;
    let base = env.daemon.dir().join("prop");
    let (shared, private) = (base.join("shared"), base.join("private"));
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::create_dir_all(&private).unwrap();
    let unmount = Mounted(base.clone());
    // As a kubelet's pods directory: a mount of its own, shared with the containers.
    mount_cmd(&[
        "--bind",
        &shared.display().to_string(),
        &shared.display().to_string(),
    ]);
    mount_cmd(&["--make-rshared", &shared.display().to_string()]);
    mount_cmd(&["-t", "tmpfs", "none", &private.display().to_string()]);
    mount_cmd(&["--make-private", &private.display().to_string()]);

    let log_dir = env.log_dir("propagation");
    let pod_cfg = pod_config("propagation", &log_dir, true);
    let pod = env.run_pod(pod_cfg.clone()).await;
    let with_mount = |name: &str, argv: &[&str], host: &Path, p: P| {
        let mut cfg = container_config(name, argv);
        cfg.mounts = vec![cri::Mount {
            container_path: "/m".into(),
            host_path: host.display().to_string(),
            propagation: p as i32,
            ..Default::default()
        }];
        cfg
    };

    // Host to container: a mount made on the host after the start shows inside.
    let receiver = env
        .start_container(
            &pod,
            &pod_cfg,
            with_mount(
                "receiver",
                &[
                    "/bin/sh",
                    "-c",
                    "while [ ! -e /m/sub/file ]; do /bin/busybox sleep 0.1; done; \
                     echo seen=$(cat /m/sub/file)",
                ],
                &shared,
                P::PropagationHostToContainer,
            ),
        )
        .await;
    let sub = shared.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    mount_cmd(&["-t", "tmpfs", "none", &sub.display().to_string()]);
    std::fs::write(sub.join("file"), "from the host").unwrap();
    let lines = report(&mut env, &receiver, &log_dir.join("receiver.log")).await;
    assert_eq!(field(&lines, "seen"), "from the host");

    // Bidirectional: a mount made in a (privileged) container shows on the host.
    let mut cfg = with_mount(
        "sender",
        &[
            "/bin/sh",
            "-c",
            "mkdir -p /m/inner && mount -t tmpfs none /m/inner && echo sent > /m/inner/f && \
             exec /bin/busybox sleep 1000",
        ],
        &shared,
        P::PropagationBidirectional,
    );
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    env.start_container(&pod, &pod_cfg, cfg).await;
    let f = shared.join("inner").join("f");
    wait_for(
        "the container's mount on the host",
        Duration::from_secs(10),
        || async {
            std::fs::read_to_string(&f)
                .ok()
                .filter(|t| t == "sent\n")
                .map(|_| ())
        },
    )
    .await;

    // A private source cannot give either: refused, and nothing is made.
    for p in [P::PropagationHostToContainer, P::PropagationBidirectional] {
        let err = env
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(with_mount("refused", &["true"], &private, p)),
                sandbox_config: Some(pod_cfg.clone()),
            })
            .await
            .expect_err("propagation from a private mount");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    }
    let listed = env
        .runtime
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(
        listed
            .iter()
            .all(|c| c.metadata.as_ref().unwrap().name != "refused"),
        "{listed:#?}"
    );

    // A host path that is not there yet is made, as a directory.
    let missing = base.join("made").join("here");
    let made = env
        .start_container(
            &pod,
            &pod_cfg,
            with_mount(
                "maker",
                &["/bin/sh", "-c", "echo made > /m/proof"],
                &missing,
                P::PropagationPrivate,
            ),
        )
        .await;
    report(&mut env, &made, &log_dir.join("maker.log")).await;
    assert_eq!(
        std::fs::read_to_string(missing.join("proof")).unwrap(),
        "made\n"
    );

    env.remove_pod(&pod).await;
    // The test's own mounts (and the one the container sent back) go before the check.
    drop(unmount);
    env.assert_clean().await;
}
