//! The CRI ImageService pulling from a real registry on loopback (Debian's docker-registry),
//! as a kubelet does before it runs a pod: PullImage through supd's registry client and its
//! hosts configuration, then a pod whose container runs the pulled image.

use k8s_cri::v1 as cri;
use sup_tests::busybox::busybox_image;
use sup_tests::cri::{container_config, ensure_cni_plugins, pod_config, CriEnv};
use sup_tests::registry::{self, Registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_a_local_registry_then_run_it_in_a_pod() {
    ensure_cni_plugins();
    let reg = Registry::start();
    let (mut env, _hosts) = CriEnv::start_pulling_from(&reg).await;

    // Put an image in the registry with sup's own push, from another namespace.
    let reference = format!("{}/library/busybox:cri", reg.host());
    let sup = env.daemon.client_ns("publisher").await;
    let image = busybox_image();
    registry::import_image(&sup, &image, "local/busybox:1").await;
    registry::push(&sup, "local/busybox:1", &reference, None)
        .await
        .expect("push to the registry");

    let pulled = env
        .images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .unwrap_or_else(|s| panic!("PullImage: {:?}: {}", s.code(), s.message()))
        .into_inner();
    assert!(!pulled.image_ref.is_empty());
    let status = env
        .images
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .expect("ImageStatus")
        .into_inner()
        .image
        .expect("the pulled image has a status");
    assert!(
        status.repo_tags.contains(&reference),
        "{:?}",
        status.repo_tags
    );

    // A pod runs the pulled image.
    let log_dir = env.log_dir("pulled");
    let pod_cfg = pod_config("pulled", &log_dir, true);
    let pod = env.run_pod(pod_cfg.clone()).await;
    let mut config = container_config("app", &["/bin/sh", "-c", "exec /bin/busybox sleep 1000"]);
    config.image = Some(cri::ImageSpec {
        image: reference.clone(),
        ..Default::default()
    });
    let container = env.start_container(&pod, &pod_cfg, config).await;
    let out = env
        .exec(&container, &["/bin/sh", "-c", "echo pulled-and-running"])
        .await;
    assert_eq!(out.exit_code, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pulled-and-running\n");
    env.remove_pod(&pod).await;
    env.assert_clean().await;
}
