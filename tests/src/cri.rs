//! Harness for the CRI tests and bench: a supd whose CRI networks pods through a test bridge
//! of its own (unique name and subnet, host-local addresses kept in the test's directory),
//! CRI clients that send no sup namespace (CRI always acts in `k8s.io`), pod and container
//! configs as a kubelet makes them, and a cleanup that leaves nothing behind: pods removed
//! through the CRI, the bridge deleted, the directories removed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::busybox::busybox_image;
use crate::image::{name_annotations, OciArchive};
use crate::Daemon;

/// Name the busybox image is imported under, in namespace k8s.io.
pub const BUSYBOX: &str = "sup.test/busybox:cri";
/// Where Debian's containernetworking-plugins puts the plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// How long a CRI call may take in a test.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

static NEXT_NET: AtomicU32 = AtomicU32::new(0);

/// Installs the CNI plugins with apt-get when they are missing.
pub fn ensure_cni_plugins() {
    if Path::new(CNI_BIN_DIR).join("bridge").is_file() {
        return;
    }
    let out = Command::new("apt-get")
        .args(["install", "-y", "-qq", "containernetworking-plugins"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .expect("run apt-get");
    assert!(
        out.status.success() && Path::new(CNI_BIN_DIR).join("bridge").is_file(),
        "installing containernetworking-plugins failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// A CNI network for one test: its conflist, its bridge and its address allocations.
pub struct TestNet {
    pub name: String,
    pub bridge: String,
    /// The third octet: the subnet is 10.250.<octet>.0/24.
    pub octet: u32,
    dir: Option<tempfile::TempDir>,
}

impl TestNet {
    /// Picks a bridge name and subnet no other test (of this or another process) uses, by
    /// claiming a lock file for it, and writes the conflist.
    pub fn new() -> TestNet {
        ensure_cni_plugins();
        let dir = tempfile::Builder::new()
            .prefix("supcni")
            .tempdir_in("/tmp")
            .expect("CNI temp dir");
        let start = std::process::id() % 200;
        let octet = (0..250)
            .map(|i| (start + NEXT_NET.fetch_add(1, Ordering::SeqCst) + i) % 250 + 1)
            .find(|n| {
                let claim = PathBuf::from(format!("/tmp/sup-test-br{n}.claim"));
                !link_exists(&format!("sup-test-br{n}"))
                    && std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(claim)
                        .is_ok()
            })
            .expect("a free test subnet");
        let net = TestNet {
            name: format!("sup-test-net{octet}"),
            bridge: format!("sup-test-br{octet}"),
            octet,
            dir: Some(dir),
        };
        std::fs::create_dir_all(net.conf_dir()).expect("conf dir");
        std::fs::write(
            net.conf_dir().join("10-test.conflist"),
            serde_json::to_vec_pretty(&net.conflist()).expect("json"),
        )
        .expect("write conflist");
        net
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).expect("net dir")
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.dir().join("net.d")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir().join("ipam")
    }

    /// The subnet's first three octets, `10.250.N`.
    pub fn prefix(&self) -> String {
        format!("10.250.{}", self.octet)
    }

    fn conflist(&self) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": self.data_dir(),
                        "ranges": [[{"subnet": format!("{}.0/24", self.prefix())}]],
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": false},
                {"type": "loopback"}
            ]
        })
    }

    /// Addresses host-local still holds for this network.
    pub fn allocations(&self) -> Vec<String> {
        let dir = self.data_dir().join(&self.name);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    pub fn bridge_exists(&self) -> bool {
        link_exists(&self.bridge)
    }

    /// The `[cri]` table pointing supd at this network.
    pub fn supd_config(&self) -> String {
        format!(
            "[cri]\ncni_conf_dir = {:?}\ncni_bin_dir = [{:?}, \"/opt/cni/bin\"]\n",
            self.conf_dir().display().to_string(),
            CNI_BIN_DIR
        )
    }
}

impl Default for TestNet {
    fn default() -> Self {
        TestNet::new()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if self.bridge_exists() {
            let out = Command::new("ip")
                .args(["link", "del", &self.bridge])
                .output();
            if let Ok(o) = out {
                if !o.status.success() {
                    eprintln!(
                        "ip link del {}: {}",
                        self.bridge,
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
            }
        }
        let _ = std::fs::remove_file(format!("/tmp/sup-test-br{}.claim", self.octet));
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
    }
}

/// supd with CRI networking through a [`TestNet`], and CRI clients.
pub struct CriEnv {
    pub daemon: Daemon,
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
    pub net: TestNet,
    /// Pods and containers made through [`CriEnv::run_pod`] and
    /// [`CriEnv::start_container`]: their cgroups must go with them.
    made: Vec<String>,
}

/// CRI clients on supd's socket, without any sup namespace header.
pub async fn connect(
    daemon: &Daemon,
) -> (RuntimeServiceClient<Channel>, ImageServiceClient<Channel>) {
    let channel = sup_client::Client::connect(&daemon.address())
        .await
        .expect("connect to supd")
        .channel();
    (
        RuntimeServiceClient::new(channel.clone()),
        ImageServiceClient::new(channel),
    )
}

impl CriEnv {
    pub async fn start() -> CriEnv {
        CriEnv::start_with("").await
    }

    /// As [`CriEnv::start`], with more supd configuration (TOML tables) appended.
    pub async fn start_with(extra: &str) -> CriEnv {
        CriEnv::start_with_cri("", extra).await
    }

    /// As [`CriEnv::start_with`], with `cri` (`key = value` lines) added to the `[cri]` table
    /// the test network writes: TOML allows no second `[cri]` header in `extra`.
    pub async fn start_with_cri(cri: &str, extra: &str) -> CriEnv {
        let net = TestNet::new();
        let config = format!(
            "{}{cri}\n[gc]\ninterval_seconds = 0\n{extra}",
            net.supd_config()
        );
        let daemon = Daemon::start_with_config(Some(&config)).await;
        let (runtime, images) = connect(&daemon).await;
        CriEnv {
            daemon,
            runtime,
            images,
            net,
            made: Vec::new(),
        }
    }

    /// As [`CriEnv::start`], with supd pulling from `registry` over plain HTTP, as an
    /// operator's hosts.toml would say; the returned directory holds that configuration.
    pub async fn start_pulling_from(
        registry: &crate::registry::Registry,
    ) -> (CriEnv, tempfile::TempDir) {
        let certs = tempfile::tempdir().expect("hosts dir");
        let hosts = certs.path().join(registry.host());
        std::fs::create_dir_all(&hosts).expect("hosts dir");
        std::fs::write(
            hosts.join("hosts.toml"),
            format!("server = \"http://{}\"\n", registry.host()),
        )
        .expect("hosts.toml");
        let extra = format!("[registry]\nconfig_path = \"{}\"\n", certs.path().display());
        (CriEnv::start_with(&extra).await, certs)
    }

    /// Reconnects the CRI clients (after a restart of supd).
    pub async fn reconnect(&mut self) {
        let (runtime, images) = connect(&self.daemon).await;
        self.runtime = runtime;
        self.images = images;
    }

    /// Imports the busybox image into k8s.io through the sup API, as [`BUSYBOX`].
    pub async fn import_busybox(&self) {
        let client = self.daemon.client_ns("k8s.io").await;
        let archive = OciArchive::new()
            .image(&busybox_image(), name_annotations(BUSYBOX))
            .build();
        crate::rpc::import_ok(&client, crate::rpc::options(""), &archive).await;
    }

    /// ListImages without a filter.
    pub async fn list_images(&mut self) -> Vec<cri::Image> {
        self.images
            .list_images(cri::ListImagesRequest { filter: None })
            .await
            .expect("ListImages")
            .into_inner()
            .images
    }

    /// Where pods' logs go.
    pub fn log_dir(&self, pod: &str) -> PathBuf {
        self.daemon.dir().join("pods").join(pod)
    }

    /// Runs a pod and returns its id.
    pub async fn run_pod(&mut self, config: cri::PodSandboxConfig) -> String {
        let resp = tokio::time::timeout(
            CALL_TIMEOUT,
            self.runtime.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            }),
        )
        .await
        .expect("RunPodSandbox in time")
        .unwrap_or_else(|s| panic!("RunPodSandbox: {:?}: {}", s.code(), s.message()));
        let id = resp.into_inner().pod_sandbox_id;
        self.made.push(id.clone());
        id
    }

    /// Records a pod or container that another client (crictl) made, so that
    /// [`CriEnv::leftovers`] looks for its cgroups too.
    pub fn track(&mut self, id: &str) {
        self.made.push(id.to_string());
    }

    /// Creates and starts a container; returns its id.
    pub async fn start_container(
        &mut self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> String {
        let id = self
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.to_string(),
                config: Some(config),
                sandbox_config: Some(pod_config.clone()),
            })
            .await
            .unwrap_or_else(|s| panic!("CreateContainer: {:?}: {}", s.code(), s.message()))
            .into_inner()
            .container_id;
        self.made.push(id.clone());
        self.runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("StartContainer: {:?}: {}", s.code(), s.message()));
        id
    }

    pub async fn exec(&mut self, container: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
        self.runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: container.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 30,
            })
            .await
            .unwrap_or_else(|s| panic!("ExecSync {cmd:?}: {:?}: {}", s.code(), s.message()))
            .into_inner()
    }

    pub async fn container_status(&mut self, id: &str) -> cri::ContainerStatus {
        self.runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .unwrap_or_else(|s| panic!("ContainerStatus: {:?}: {}", s.code(), s.message()))
            .into_inner()
            .status
            .expect("a container status")
    }

    /// The pod's address ("" on the host's network).
    pub async fn pod_ip(&mut self, id: &str) -> String {
        self.pod_status(id)
            .await
            .network
            .map(|n| n.ip)
            .unwrap_or_default()
    }

    pub async fn container_stats(&mut self, id: &str) -> cri::ContainerStats {
        self.runtime
            .container_stats(cri::ContainerStatsRequest {
                container_id: id.to_string(),
            })
            .await
            .unwrap_or_else(|s| panic!("ContainerStats: {:?}: {}", s.code(), s.message()))
            .into_inner()
            .stats
            .expect("stats in the answer")
    }

    pub async fn pod_status(&mut self, id: &str) -> cri::PodSandboxStatus {
        self.runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: false,
            })
            .await
            .unwrap_or_else(|s| panic!("PodSandboxStatus: {:?}: {}", s.code(), s.message()))
            .into_inner()
            .status
            .expect("a pod status")
    }

    /// Stops and removes a pod (and so its containers) as a kubelet does.
    pub async fn remove_pod(&mut self, id: &str) {
        self.runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .unwrap_or_else(|s| panic!("StopPodSandbox: {:?}: {}", s.code(), s.message()));
        self.runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .unwrap_or_else(|s| panic!("RemovePodSandbox: {:?}: {}", s.code(), s.message()));
    }

    /// Waits (up to 10 s: a shim exits just after it answers its shutdown) until nothing is
    /// left behind, and panics with what is left otherwise.
    pub async fn assert_clean(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.leftovers().await;
            if left.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "left behind: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the test left behind: pods, sup containers in k8s.io, processes rooted in the
    /// daemon's directory, namespace mounts, address allocations. Empty when clean.
    pub async fn leftovers(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(pods) = self
            .runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
        {
            for p in pods.into_inner().items {
                out.push(format!("pod {}", p.id));
            }
        }
        let client = self.daemon.client_ns("k8s.io").await;
        if let Ok(list) = client
            .containers()
            .list(sup_client::api::ListContainersRequest::default())
            .await
        {
            for c in list.into_inner().containers {
                out.push(format!("sup container {}", c.id));
            }
        }
        out.extend(netns_files_under(&self.daemon.state()));
        out.extend(processes_under(self.daemon.dir()));
        out.extend(mounts_under(self.daemon.dir()));
        out.extend(self.made.iter().flat_map(|id| sup_cgroups_of(id)));
        out.extend(
            self.net
                .allocations()
                .into_iter()
                .map(|a| format!("address {a}")),
        );
        out
    }
}

/// The cgroups sup gives CRI object `id` when its pod names no parent
/// (`/sup/k8s.io/<id>`), in whichever hierarchies hold one.
pub fn sup_cgroups_of(id: &str) -> Vec<String> {
    let root = Path::new("/sys/fs/cgroup");
    let mut bases = vec![root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(root) {
        bases.extend(entries.flatten().map(|e| e.path()));
    }
    bases
        .into_iter()
        .map(|b| b.join("sup").join("k8s.io").join(id))
        .filter(|p| p.is_dir())
        .map(|p| format!("cgroup {}", p.display()))
        .collect()
}

/// Every process as (pid, parent pid).
fn process_table() -> Vec<(i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command may hold spaces and parentheses: the fields follow the last ')'.
            let rest = stat.rsplit_once(')')?.1;
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// The shims of the daemon living in `dir` (their arguments name its state dir) and every
/// process under them: pause processes, containers, execs.
pub fn processes_of(dir: &Path) -> Vec<i32> {
    let needle = format!("{}/", dir.display());
    let table = process_table();
    let mut found: Vec<i32> = table
        .iter()
        .map(|(pid, _)| *pid)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args = String::from_utf8_lossy(&c).replace('\0', " ");
                args.contains("sup-shim") && args.contains(&needle)
            })
        })
        .collect();
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        for (pid, ppid) in &table {
            if *ppid == parent && !found.contains(pid) {
                found.push(*pid);
            }
        }
        i += 1;
    }
    found
}

/// [`processes_of`], as leftovers.
pub fn processes_under(dir: &Path) -> Vec<String> {
    processes_of(dir)
        .into_iter()
        .map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            format!("process {pid} ({})", cmd.trim())
        })
        .collect()
}

/// SIGKILLs, by pid, every process [`processes_of`] finds: containers first, then shims.
pub fn kill_processes_of(dir: &Path) {
    for pid in processes_of(dir).into_iter().rev() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Pinned network namespace files (and their kept CNI results) left under `dir`.
pub fn netns_files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if name == "netns" || name.ends_with(".cni.json") {
                out.push(format!("netns file {}", p.display()));
            }
        }
    }
    out
}

/// Mount points under `dir` (rootfs, pinned network namespaces).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(|m| format!("mount {m}"))
        .collect()
}

/// Best-effort removal of every pod, for a test that failed halfway (runs its own runtime,
/// so it can be called from Drop).
pub fn remove_all_pods_blocking(socket: &Path) {
    let address = socket.display().to_string();
    let worker = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(client) = sup_client::Client::connect(&address).await else {
                return;
            };
            let mut runtime = RuntimeServiceClient::new(client.channel());
            let Ok(pods) = runtime
                .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                .await
            else {
                return;
            };
            for p in pods.into_inner().items {
                let _ = runtime
                    .stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: p.id.clone(),
                    })
                    .await;
                let _ = runtime
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: p.id,
                    })
                    .await;
            }
        });
    });
    let _ = worker.join();
}

impl Drop for CriEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            remove_all_pods_blocking(&self.daemon.socket());
            // What the CRI could not remove must not outlive the test.
            kill_processes_of(self.daemon.dir());
        }
    }
}

/// A pod config as a kubelet sends it; `host_network` puts it in the node's network.
pub fn pod_config(name: &str, log_dir: &Path, host_network: bool) -> cri::PodSandboxConfig {
    std::fs::create_dir_all(log_dir).expect("pod log dir");
    let mode = if host_network {
        cri::NamespaceMode::Node
    } else {
        cri::NamespaceMode::Pod
    };
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "default".to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: log_dir.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: mode as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A busybox container running `argv`, logging to `<name>.log` in the pod's log directory.
pub fn container_config(name: &str, argv: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: BUSYBOX.to_string(),
            ..Default::default()
        }),
        command: argv.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// Polls `check` every 100 ms until it gives Some, or panics after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
