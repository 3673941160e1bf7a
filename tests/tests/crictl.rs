//! The CRI through crictl, the command line Kubernetes operators run on a node (cri-tools
//! v1.26.1, built on a v1.26 kubelet's CRI client and grpc-go 1.51), pointed straight at supd's
//! socket: version, a pull from a real registry on loopback, a pod on the test's CNI bridge, a
//! container created, started, exec'd into and read from, then everything stopped and removed
//! until crictl lists nothing. Each step is checked as its user would: exit code and output.
//!
//! crictl is `SUP_CRICTL` or `../shared/cri-tools/crictl` beside the checkout; without it the
//! test fails.

use std::time::Duration;

use serde_json::json;
use sup_tests::busybox::busybox_image;
use sup_tests::cri::CriEnv;
use sup_tests::crictl::Crictl;
use sup_tests::registry::{self, Registry};
use sup_tests::task::show;

/// What the container prints before it sleeps: `crictl logs` must give back these bytes.
const GREETING: &str = "hello from crictl";

/// The one id a create/run command printed.
#[track_caller]
fn printed_id(stdout: &str) -> String {
    let id = stdout.trim();
    assert!(
        id.len() >= 12 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "expected an id, got {stdout:?}"
    );
    id.to_string()
}

/// The ids `crictl pods -q` / `crictl ps -q` printed.
fn ids(stdout: &str) -> Vec<String> {
    stdout.split_whitespace().map(str::to_string).collect()
}

/// (tag, image id) of every tag `crictl images` lists.
#[track_caller]
fn images_by_tag(crictl: &Crictl) -> Vec<(String, String)> {
    let images = crictl.json("images", &[]);
    let list = images["images"]
        .as_array()
        .unwrap_or_else(|| panic!("no images array: {images}"));
    let mut out = Vec::new();
    for image in list {
        let id = image["id"].as_str().unwrap_or_default();
        for tag in image["repoTags"].as_array().into_iter().flatten() {
            out.push((tag.as_str().unwrap_or_default().to_string(), id.to_string()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_runs_a_pod_from_a_pulled_image() {
    let crictl_bin = sup_tests::bins::crictl();
    let reg = Registry::start();
    // supd's hosts configuration sends the image's registry to plain HTTP; crictl itself
    // only names the image.
    let (mut env, _hosts) = CriEnv::start_pulling_from(&reg).await;
    let crictl = Crictl::new(crictl_bin, &env.daemon.socket(), env.daemon.dir());

    // The image is published with sup's own push, from another namespace than CRI's.
    let reference = format!("{}/library/busybox:crictl", reg.host());
    let publisher = env.daemon.client_ns("publisher").await;
    registry::import_image(&publisher, &busybox_image(), "local/busybox:1").await;
    registry::push(&publisher, "local/busybox:1", &reference, None)
        .await
        .expect("push to the registry");

    // version: the runtime answers under its own name, on CRI v1.
    let version = crictl.ok(&["version"]);
    let field = |name: &str| {
        version
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in {version:?}"))
            .to_string()
    };
    assert_eq!(field("RuntimeName"), "sup", "{version}");
    assert_eq!(field("RuntimeApiVersion"), "v1", "{version}");
    assert!(!field("RuntimeVersion").is_empty(), "{version}");

    // pull, then the image is listed under its name and the id crictl printed.
    let pulled = crictl.ok(&["pull", &reference]);
    let image_id = pulled
        .strip_prefix("Image is up to date for ")
        .map(str::trim)
        .filter(|id| id.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("crictl pull printed {pulled:?}"))
        .to_string();
    let listed = images_by_tag(&crictl);
    assert!(
        listed.contains(&(reference.clone(), image_id.clone())),
        "{listed:?}"
    );

    // runp: a pod on the test's CNI network.
    let log_dir = env.log_dir("crictl-pod");
    std::fs::create_dir_all(&log_dir).expect("pod log dir");
    let pod_json = env.daemon.dir().join("pod.json");
    let pod_config = json!({
        "metadata": {
            "name": "crictl-pod",
            "namespace": "default",
            "uid": "uid-crictl-pod",
            "attempt": 0
        },
        "hostname": "crictl-pod",
        "log_directory": log_dir,
        "linux": {
            "security_context": {
                // POD network (0), CONTAINER pid (1), POD ipc (0): as a kubelet asks.
                "namespace_options": {"network": 0, "pid": 1, "ipc": 0}
            }
        }
    });
    std::fs::write(&pod_json, pod_config.to_string()).expect("pod.json");
    let pod_file = pod_json.to_str().expect("UTF-8 path");
    let pod = printed_id(&crictl.ok(&["runp", pod_file]));
    env.track(&pod);
    assert_eq!(ids(&crictl.ok(&["pods", "-q"])), vec![pod.clone()]);
    let pod_status = crictl.json("inspectp", &[&pod]);
    assert_eq!(
        pod_status["status"]["state"], "SANDBOX_READY",
        "{pod_status}"
    );
    let ip = pod_status["status"]["network"]["ip"]
        .as_str()
        .unwrap_or_default();
    assert!(
        ip.starts_with(&format!("{}.", env.net.prefix())),
        "pod IP {ip:?} not in the test subnet {}.0/24",
        env.net.prefix()
    );

    // create and start a container of the pulled image.
    let container_json = env.daemon.dir().join("container.json");
    let container_config = json!({
        "metadata": {"name": "app", "attempt": 0},
        "image": {"image": reference},
        "command": [
            "/bin/sh", "-c",
            format!("echo {GREETING}; exec /bin/busybox sleep 1000")
        ],
        "log_path": "app.log"
    });
    std::fs::write(&container_json, container_config.to_string()).expect("container.json");
    let container_file = container_json.to_str().expect("UTF-8 path");
    let container = printed_id(&crictl.ok(&["create", &pod, container_file, pod_file]));
    env.track(&container);
    let state = |crictl: &Crictl| {
        crictl.json("inspect", &[&container])["status"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(state(&crictl), "CONTAINER_CREATED");
    assert_eq!(crictl.ok(&["start", &container]).trim(), container);
    assert_eq!(state(&crictl), "CONTAINER_RUNNING");
    assert_eq!(ids(&crictl.ok(&["ps", "-q"])), vec![container.clone()]);

    // exec -s: ExecSync's output and exit code reach the user. crictl 1.26 prints the
    // command's stdout, then its stderr, each with a newline added, all on its own stdout.
    let out = crictl.run(&[
        "exec",
        "-s",
        &container,
        "/bin/sh",
        "-c",
        "echo out; echo err >&2",
    ]);
    assert!(
        out.status.success(),
        "exec: {}: {}",
        out.status,
        show(&out.stderr)
    );
    assert_eq!(out.stdout, b"out\n\nerr\n\n", "{}", show(&out.stdout));
    assert_eq!(out.stderr, b"", "{}", show(&out.stderr));
    // A command that fails makes crictl fail. crictl 1.26 exits 1 whatever the code, so the
    // code is read where it reports it: in its error, with the command's stderr.
    let out = crictl.run(&[
        "exec",
        "-s",
        &container,
        "/bin/sh",
        "-c",
        "echo hi; echo oops >&2; exit 3",
    ]);
    assert!(!out.status.success(), "exec of exit 3: {}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exited with 3: oops"),
        "exec of exit 3: {}: {stderr}",
        out.status
    );

    // logs: the bytes the container printed, without the CRI log framing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let logs = loop {
        let out = crictl.run(&["logs", &container]);
        if out.status.success() && !out.stdout.is_empty() {
            break out;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "crictl logs printed nothing: {}",
            show(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        logs.stdout,
        format!("{GREETING}\n").as_bytes(),
        "{}",
        show(&logs.stdout)
    );

    // stop, rm, stopp, rmp; then nothing is listed.
    assert_eq!(crictl.ok(&["stop", &container]).trim(), container);
    assert_eq!(state(&crictl), "CONTAINER_EXITED");
    assert!(ids(&crictl.ok(&["ps", "-q"])).is_empty());
    assert_eq!(crictl.ok(&["rm", &container]).trim(), container);
    assert!(ids(&crictl.ok(&["ps", "-a", "-q"])).is_empty());
    let stopped = crictl.ok(&["stopp", &pod]);
    assert!(stopped.contains(&pod), "{stopped:?}");
    assert_eq!(
        crictl.json("inspectp", &[&pod])["status"]["state"],
        "SANDBOX_NOTREADY"
    );
    let removed = crictl.ok(&["rmp", &pod]);
    assert!(removed.contains(&pod), "{removed:?}");
    assert!(ids(&crictl.ok(&["pods", "-q"])).is_empty());
    assert!(ids(&crictl.ok(&["ps", "-a", "-q"])).is_empty());

    // rmi: the image goes too.
    crictl.ok(&["rmi", &reference]);
    let listed = images_by_tag(&crictl);
    assert!(
        !listed
            .iter()
            .any(|(tag, id)| *tag == reference || *id == image_id),
        "{listed:?}"
    );

    env.assert_clean().await;
}
