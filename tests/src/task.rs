//! Running containers in tests: a [`World`] (one supd, a namespace of its own, the busybox
//! image imported), calls to create, attach to and run containers, and the audit every test
//! ends with: no mount, shim, cgroup, state dir or container process left behind.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sup_client::{api, Client};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::busybox::busybox_layer;
use crate::image::name_annotations;
use crate::layer::{Compression, LayerBuilder};
use crate::{rpc, Daemon, Image, ImageBuilder, OciArchive};

mod attach;
pub(crate) mod host;

pub use attach::{Attached, Captured};
pub use host::{
    ancestry, cgroup_children, cgroup_ns_dirs, cmdline, exe_name, parent_pid, rss_pss_kib,
    shim_pids, start_time,
};
use host::{cgroup_pids, list_dir, remove_cgroups, thaw};

/// Name the test image is imported under.
pub const IMAGE: &str = "example.com/sup-tests/busybox:1";

/// Applets linked in the test image on top of the harness's few.
pub const MORE_APPLETS: [&str; 20] = [
    "id", "pwd", "stty", "head", "tr", "touch", "sleep", "usleep", "printf", "hostname", "true",
    "false", "env", "seq", "wc", "yes", "dd", "mkdir", "rm", "test",
];

/// How long a container may take to do what a test asks of it.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the audit waits for leftovers to go.
pub const AUDIT_TIMEOUT: Duration = Duration::from_secs(15);

/// The busybox root filesystem containers run in: the harness's layer, more applets, and the
/// directories a runtime mounts over.
pub fn rootfs_layer() -> LayerBuilder {
    let mut layer = busybox_layer();
    for applet in MORE_APPLETS {
        layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    for dir in ["proc", "sys", "dev", "mnt"] {
        layer.dir(dir);
    }
    layer
}

pub fn image() -> Image {
    ImageBuilder::new()
        .layer(rootfs_layer().build(Compression::Gzip))
        .build()
}

/// The test image as an OCI archive naming it [`IMAGE`], built once per process.
pub fn archive() -> &'static [u8] {
    static ARCHIVE: OnceLock<Vec<u8>> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        OciArchive::new()
            .image(&image(), name_annotations(IMAGE))
            .build()
    })
}

/// Overrides that run `args` (the image's entrypoint cleared).
pub fn command(args: &[&str]) -> api::ContainerConfig {
    api::ContainerConfig {
        entrypoint: Some(api::StringList { values: vec![] }),
        command: Some(api::StringList {
            values: args.iter().map(|a| a.to_string()).collect(),
        }),
        ..Default::default()
    }
}

/// Overrides that run `sh -c script`.
pub fn sh(script: &str) -> api::ContainerConfig {
    command(&["sh", "-c", script])
}

/// Bytes shown readably in assertion messages.
pub fn show(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

/// A container run to its end by [`World::run`].
#[derive(Debug)]
pub struct Ran {
    pub output: Captured,
    pub wait: api::WaitResponse,
    pub deleted: api::DeleteResponse,
}

/// A process seen during the test, told apart from a later one with the same pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    pid: u32,
    start: u64,
}

/// One supd with the test image, in a namespace no other test uses (cgroup paths are
/// per-namespace and host-wide). End a test with [`World::finish`]; dropping a World
/// unfinished (a failed test) still removes everything by force.
pub struct World {
    pub daemon: Daemon,
    pub client: Client,
    pub ns: String,
    seen: Mutex<Vec<Seen>>,
    finished: bool,
}

impl World {
    /// A daemon with the test image imported as [`IMAGE`].
    pub async fn start() -> World {
        let world = Self::without_image().await;
        rpc::import_ok(&world.client, api::ImportOptions::default(), archive()).await;
        world
    }

    /// A daemon with nothing in it.
    pub async fn without_image() -> World {
        let daemon = Daemon::start().await;
        let dir_name = daemon
            .dir()
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let ns = format!("t-{dir_name}-{}", std::process::id());
        let client = daemon.client_ns(&ns).await;
        World {
            daemon,
            client,
            ns,
            seen: Mutex::new(Vec::new()),
            finished: false,
        }
    }

    /// Remembers `pid` so that the audit can check it is gone.
    pub fn note_pid(&self, pid: u32) {
        if let Some(start) = start_time(pid) {
            if let Ok(mut seen) = self.seen.lock() {
                let one = Seen { pid, start };
                if !seen.contains(&one) {
                    seen.push(one);
                }
            }
        }
    }

    pub async fn create_container(
        &self,
        id: &str,
        config: api::ContainerConfig,
    ) -> Result<api::Container, Status> {
        let req = api::CreateContainerRequest {
            container: Some(api::Container {
                id: id.to_string(),
                image: IMAGE.to_string(),
                ..Default::default()
            }),
            config: Some(config),
        };
        let resp = self.client.containers().create(req).await?.into_inner();
        resp.container
            .ok_or_else(|| Status::unknown("Containers.Create answered without a container"))
    }

    /// Creates a container and its task (not started); panics on failure.
    pub async fn prepare(&self, id: &str, config: api::ContainerConfig, stdin: bool) -> u32 {
        self.create_container(id, config)
            .await
            .unwrap_or_else(|s| panic!("Containers.Create {id}: {:?}: {}", s.code(), s.message()));
        self.create_task(id, stdin)
            .await
            .unwrap_or_else(|s| panic!("Tasks.Create {id}: {:?}: {}", s.code(), s.message()))
    }

    pub async fn create_task(&self, id: &str, stdin: bool) -> Result<u32, Status> {
        let pid = self
            .client
            .tasks()
            .create(api::CreateTaskRequest {
                container_id: id.to_string(),
                stdin,
            })
            .await?
            .into_inner()
            .pid;
        self.note_pid(pid);
        Ok(pid)
    }

    pub async fn try_start(&self, id: &str, exec_id: &str) -> Result<u32, Status> {
        let pid = self
            .client
            .tasks()
            .start(api::StartRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            })
            .await?
            .into_inner()
            .pid;
        self.note_pid(pid);
        Ok(pid)
    }

    pub async fn start_task(&self, id: &str, exec_id: &str) -> u32 {
        self.try_start(id, exec_id).await.unwrap_or_else(|s| {
            panic!(
                "Tasks.Start {id}/{exec_id:?}: {:?}: {}",
                s.code(),
                s.message()
            )
        })
    }

    /// Tasks.Wait, bounded by [`EXIT_TIMEOUT`].
    /// The metrics of task `id` (exactly one).
    pub async fn metrics(&self, id: &str) -> api::TaskMetrics {
        let all = self
            .client
            .tasks()
            .metrics(api::MetricsRequest {
                container_ids: vec![id.to_string()],
            })
            .await
            .unwrap_or_else(|s| panic!("Tasks.Metrics {id}: {:?}: {}", s.code(), s.message()))
            .into_inner()
            .metrics;
        assert_eq!(all.len(), 1, "metrics of {id}: {all:?}");
        all.into_iter().next().expect("one")
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> api::WaitResponse {
        let req = api::WaitRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        };
        let mut tasks = self.client.tasks();
        match tokio::time::timeout(EXIT_TIMEOUT, tasks.wait(req)).await {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(s)) => panic!(
                "Tasks.Wait {id}/{exec_id:?}: {:?}: {}",
                s.code(),
                s.message()
            ),
            Err(_) => panic!("Tasks.Wait {id}/{exec_id:?}: no exit within {EXIT_TIMEOUT:?}"),
        }
    }

    pub async fn get(&self, id: &str, exec_id: &str) -> api::Process {
        self.client
            .tasks()
            .get(api::GetTaskRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            })
            .await
            .unwrap_or_else(|s| {
                panic!(
                    "Tasks.Get {id}/{exec_id:?}: {:?}: {}",
                    s.code(),
                    s.message()
                )
            })
            .into_inner()
            .process
            .unwrap_or_default()
    }

    pub async fn kill(&self, id: &str, exec_id: &str, signal: Signal) {
        self.client
            .tasks()
            .kill(api::KillRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                signal: signal as u32,
                all: false,
            })
            .await
            .unwrap_or_else(|s| {
                panic!("Tasks.Kill {id} {signal}: {:?}: {}", s.code(), s.message())
            });
    }

    pub async fn delete_task(&self, id: &str, force: bool) -> Result<api::DeleteResponse, Status> {
        let req = api::DeleteTaskRequest {
            container_id: id.to_string(),
            force,
        };
        Ok(self.client.tasks().delete(req).await?.into_inner())
    }

    pub async fn delete_container(&self, id: &str) -> Result<(), Status> {
        let req = api::DeleteContainerRequest {
            id: id.to_string(),
            keep_snapshot: false,
        };
        self.client.containers().delete(req).await.map(|_| ())
    }

    /// Attaches to stdout and stderr (and stdin when asked) of a process.
    pub async fn attach(&self, id: &str, exec_id: &str, stdin: bool) -> Attached {
        self.try_attach(api::AttachOptions {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdin,
            stdout: true,
            stderr: true,
            logs: false,
        })
        .await
        .unwrap_or_else(|s| {
            panic!(
                "Tasks.Attach {id}/{exec_id:?}: {:?}: {}",
                s.code(),
                s.message()
            )
        })
    }

    pub async fn try_attach(&self, options: api::AttachOptions) -> Result<Attached, Status> {
        let (tx, rx) = mpsc::channel(16);
        let first = api::AttachRequest {
            payload: Some(api::attach_request::Payload::Options(options)),
        };
        tx.send(first)
            .await
            .map_err(|_| Status::unknown("attach channel closed (test harness)"))?;
        let stream = self
            .client
            .tasks()
            .attach(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Attached {
            tx,
            stream,
            seen: Captured::default(),
            ended: false,
        })
    }

    /// Everything logged for a process so far (no follow).
    pub async fn logs(&self, id: &str, exec_id: &str) -> Captured {
        let req = api::LogsRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let read = async {
            let mut stream = self.client.tasks().logs(req).await?.into_inner();
            let mut out = Captured::default();
            while let Some(frame) = stream.message().await? {
                match api::StdStream::try_from(frame.stream) {
                    Ok(api::StdStream::Stderr) => out.stderr.extend_from_slice(&frame.data),
                    _ => out.stdout.extend_from_slice(&frame.data),
                }
            }
            Ok::<_, Status>(out)
        };
        match tokio::time::timeout(EXIT_TIMEOUT, read).await {
            Ok(Ok(out)) => out,
            Ok(Err(s)) => panic!(
                "Tasks.Logs {id}/{exec_id:?}: {:?}: {}",
                s.code(),
                s.message()
            ),
            Err(_) => panic!("Tasks.Logs {id}/{exec_id:?} without follow did not end"),
        }
    }

    /// Runs a container to its end: create, attach, start, read the output, wait, delete.
    pub async fn run(&self, id: &str, config: api::ContainerConfig) -> Ran {
        self.prepare(id, config, false).await;
        let attached = self.attach(id, "", false).await;
        self.start_task(id, "").await;
        let output = attached.finish(EXIT_TIMEOUT).await;
        let wait = self.wait(id, "").await;
        let deleted = self
            .delete_task(id, false)
            .await
            .unwrap_or_else(|s| panic!("Tasks.Delete {id}: {:?}: {}", s.code(), s.message()));
        self.delete_container(id)
            .await
            .unwrap_or_else(|s| panic!("Containers.Delete {id}: {:?}: {}", s.code(), s.message()));
        Ran {
            output,
            wait,
            deleted,
        }
    }

    /// Subscribes to this namespace's events whose topic matches `topic_regex`.
    pub async fn subscribe(&self, topic_regex: &str) -> tonic::Streaming<api::Envelope> {
        let filter = format!("topic~={topic_regex},namespace=={}", self.ns);
        self.client
            .events()
            .subscribe(api::SubscribeRequest {
                filters: vec![filter],
            })
            .await
            .unwrap_or_else(|s| panic!("Events.Subscribe: {:?}: {}", s.code(), s.message()))
            .into_inner()
    }

    /// What this test left behind, one line each: mounts under the daemon's directory, shims
    /// serving it, container cgroups of the namespace, task state, processes seen.
    pub fn leftovers(&self) -> Vec<String> {
        let dir = self.daemon.dir();
        let mut left: Vec<String> = crate::mounts::mounts_under(dir)
            .unwrap_or_default()
            .into_iter()
            .map(|m| format!("mount {}", m.display()))
            .collect();
        left.extend(
            shim_pids(dir)
                .into_iter()
                .map(|p| format!("sup-shim pid {p}")),
        );
        left.extend(
            cgroup_children(&self.ns)
                .into_iter()
                .map(|d| format!("cgroup {}", d.display())),
        );
        let task_dirs = self.daemon.state().join("tasks").join(&self.ns);
        left.extend(
            list_dir(&task_dirs)
                .into_iter()
                .map(|d| format!("task state {}", d.display())),
        );
        left.extend(
            list_dir(&self.daemon.state().join("s"))
                .into_iter()
                .map(|d| format!("shim socket {}", d.display())),
        );
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        left.extend(
            seen.iter()
                .filter(|s| start_time(s.pid) == Some(s.start))
                .map(|s| format!("container process {} ({})", s.pid, cmdline(s.pid))),
        );
        left
    }

    /// Removes what the test left through the API, then fails unless nothing at all is left.
    pub async fn finish(mut self) {
        self.finished = true;
        let errors = api_cleanup(&self.client).await;
        let left = rpc::eventually(AUDIT_TIMEOUT, || async {
            let left = self.leftovers();
            left.is_empty().then_some(()).ok_or(left)
        })
        .await;
        if let Err(left) = left {
            panic!("left behind after the test: {left:#?}");
        }
        assert!(
            errors.is_empty(),
            "cleaning up through the API: {errors:#?}"
        );
    }

    /// Last resort: kills shims and container processes by pid and removes the cgroups.
    fn force_cleanup(&self) {
        let dir = self.daemon.dir();
        for pid in shim_pids(dir) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        for group in cgroup_children(&self.ns) {
            thaw(&group);
            for pid in cgroup_pids(&group) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        for s in seen {
            if start_time(s.pid) == Some(s.start) {
                let _ = kill(Pid::from_raw(s.pid as i32), Signal::SIGKILL);
            }
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if !self.finished {
            let address = self.daemon.address();
            let ns = self.ns.clone();
            let errors = std::thread::spawn(move || cleanup_from_sync(&address, &ns))
                .join()
                .unwrap_or_default();
            if !errors.is_empty() {
                eprintln!("cleanup through the API: {errors:#?}");
            }
            self.force_cleanup();
        }
        remove_cgroups(&self.ns);
    }
}

/// API cleanup on a runtime of its own: Drop cannot await.
fn cleanup_from_sync(address: &str, ns: &str) -> Vec<String> {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return vec!["no runtime for the cleanup".into()];
    };
    rt.block_on(async {
        let work = async {
            let client = Client::connect(address)
                .await
                .ok()?
                .with_namespace(ns)
                .ok()?;
            Some(api_cleanup(&client).await)
        };
        match tokio::time::timeout(Duration::from_secs(60), work).await {
            Ok(Some(errors)) => errors,
            Ok(None) => vec!["supd unreachable".into()],
            Err(_) => vec!["cleanup timed out".into()],
        }
    })
}

/// Deletes every task (forced) and every container of the client's namespace.
pub async fn api_cleanup(client: &Client) -> Vec<String> {
    let mut errors = Vec::new();
    let tasks = client
        .tasks()
        .list(api::ListTasksRequest::default())
        .await
        .map(|r| r.into_inner().tasks);
    match tasks {
        Ok(tasks) => {
            for t in tasks {
                let req = api::DeleteTaskRequest {
                    container_id: t.container_id.clone(),
                    force: true,
                };
                if let Err(s) = client.tasks().delete(req).await {
                    errors.push(format!("Tasks.Delete {}: {s:?}", t.container_id));
                }
            }
        }
        Err(s) => errors.push(format!("Tasks.List: {s:?}")),
    }
    let containers = client
        .containers()
        .list(api::ListContainersRequest::default())
        .await
        .map(|r| r.into_inner().containers);
    match containers {
        Ok(containers) => {
            for c in containers {
                let req = api::DeleteContainerRequest {
                    id: c.id.clone(),
                    keep_snapshot: false,
                };
                if let Err(s) = client.containers().delete(req).await {
                    errors.push(format!("Containers.Delete {}: {s:?}", c.id));
                }
            }
        }
        Err(s) => errors.push(format!("Containers.List: {s:?}")),
    }
    errors
}
