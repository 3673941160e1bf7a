//! The CRI's seccomp profiles, end to end: RuntimeDefault refuses what reaches past the
//! container (here, a user namespace: no capability is needed for one, so only the filter
//! can stop it), and Unconfined leaves it alone.

use k8s_cri::v1 as cri;
use sup_tests::cri::{container_config, ensure_cni_plugins, pod_config, CriEnv};

fn with_profile(name: &str, profile: cri::security_profile::ProfileType) -> cri::ContainerConfig {
    let mut c = container_config(name, &["/bin/sh", "-c", "exec /bin/busybox sleep 1000"]);
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: profile as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_default_refuses_what_unconfined_allows() {
    use cri::security_profile::ProfileType;
    ensure_cni_plugins();
    let mut env = CriEnv::start().await;
    env.import_busybox().await;
    let log_dir = env.log_dir("seccomp");
    let pod_cfg = pod_config("seccomp", &log_dir, true);
    let pod = env.run_pod(pod_cfg.clone()).await;
    let open = env
        .start_container(
            &pod,
            &pod_cfg,
            with_profile("open", ProfileType::Unconfined),
        )
        .await;
    let filtered = env
        .start_container(
            &pod,
            &pod_cfg,
            with_profile("filtered", ProfileType::RuntimeDefault),
        )
        .await;
    let probe = ["/bin/busybox", "unshare", "-U", "/bin/busybox", "true"];
    let r = env.exec(&open, &probe).await;
    assert_eq!(
        r.exit_code,
        0,
        "unconfined: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let r = env.exec(&filtered, &probe).await;
    assert_ne!(r.exit_code, 0);
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("Operation not permitted"),
        "RuntimeDefault: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    // Everything else still works under the filter.
    let r = env.exec(&filtered, &["/bin/sh", "-c", "echo fine"]).await;
    assert_eq!(String::from_utf8_lossy(&r.stdout), "fine\n");
    env.remove_pod(&pod).await;
    env.assert_clean().await;
}
