//! OOM kills in the container's memory cgroup, noticed by the kernel's own notification (an
//! eventfd under cgroup v1, inotify on `memory.events` under v2) on the shim's runtime, rather
//! than by a runtime `events` process per container.

mod v1;
mod v2;

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use crate::cgroup::{CgroupError, MemoryCgroup};

/// What one look at the kernel's notification found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// An OOM happened since the last look.
    pub oom: bool,
    /// Nothing more will come: the cgroup is gone or the notification broke.
    pub ended: bool,
}

impl Outcome {
    pub const NOTHING: Outcome = Outcome {
        oom: false,
        ended: false,
    };
    pub const ENDED: Outcome = Outcome {
        oom: false,
        ended: true,
    };
}

enum Source {
    V1(v1::OomControl),
    V2(v2::MemoryEventsWatch),
}

impl Source {
    fn open(cgroup: &MemoryCgroup) -> Result<Source, CgroupError> {
        match cgroup {
            MemoryCgroup::V1(dir) => v1::OomControl::register(dir).map(Source::V1),
            MemoryCgroup::V2(dir) => v2::MemoryEventsWatch::start(dir).map(Source::V2),
        }
    }

    fn fd(&self) -> Option<&AsyncFd<OwnedFd>> {
        match self {
            Source::V1(s) => Some(s.fd()),
            Source::V2(s) => s.fd(),
        }
    }

    fn poll(&self) -> Outcome {
        match self {
            Source::V1(s) => s.poll(),
            Source::V2(s) => s.poll(),
        }
    }
}

type OnOom = Box<dyn Fn() + Send + Sync>;

struct Watch {
    source: Source,
    on_oom: OnOom,
}

impl Watch {
    /// Looks without waiting, reports an OOM if there was one; true once it has ended.
    fn poll(&self) -> bool {
        let outcome = self.source.poll();
        if outcome.oom {
            tracing::info!("container OOM");
            (self.on_oom)();
        }
        outcome.ended
    }
}

/// A watch and the task that waits on its descriptor; dropping it stops the task and closes
/// the descriptors.
struct Watcher {
    watch: Arc<Watch>,
    task: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Must be called on the tokio runtime.
    fn spawn(source: Source, on_oom: OnOom) -> Watcher {
        let watch = Arc::new(Watch { source, on_oom });
        let task = watch
            .source
            .fd()
            .is_some()
            .then(|| tokio::spawn(wait_for_ooms(watch.clone())));
        Watcher { watch, task }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn wait_for_ooms(watch: Arc<Watch>) {
    let Some(fd) = watch.source.fd() else {
        return;
    };
    loop {
        let mut ready = match fd.readable().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "waiting for OOM notifications failed");
                return;
            }
        };
        let ended = watch.poll();
        // `poll` read the descriptor until it would block.
        ready.clear_ready();
        if ended {
            tracing::debug!("OOM notifications ended");
            return;
        }
    }
}

/// The container's OOM watcher, from Create to Delete. Shared by the container and the exit
/// paths of its processes.
#[derive(Default)]
pub struct OomMonitor {
    current: Mutex<Option<Watcher>>,
}

impl OomMonitor {
    fn lock(&self) -> MutexGuard<'_, Option<Watcher>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches the memory cgroup `cgroup` (the container's init's, once created), calling
    /// `on_oom` for each OOM. Must be called on the tokio runtime.
    pub fn start(&self, cgroup: &MemoryCgroup, on_oom: impl Fn() + Send + Sync + 'static) {
        tracing::debug!(cgroup = ?cgroup, "watching for OOM kills");
        match Source::open(cgroup) {
            Ok(source) => {
                let watcher = Watcher::spawn(source, Box::new(on_oom));
                // The one replaced, if any, stops as it is dropped.
                *self.lock() = Some(watcher);
            }
            Err(e) => tracing::warn!(error = %e, "OOM kills will not be reported"),
        }
    }

    /// Reports an OOM the kernel has counted but the watcher has not yet seen. Called before
    /// a process's exit is reported, so that the OOM kill of a process comes before its exit.
    pub fn catch_up(&self) {
        let watch = self.lock().as_ref().map(|w| w.watch.clone());
        if let Some(watch) = watch {
            watch.poll();
        }
    }

    /// Stops watching (at Delete, or when the shim ends).
    pub fn stop(&self) {
        let watcher = self.lock().take();
        drop(watcher);
    }

    /// Whether a watch is set up.
    pub fn is_watching(&self) -> bool {
        self.lock().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    fn counter() -> (Arc<AtomicU32>, OnOom) {
        let n = Arc::new(AtomicU32::new(0));
        let m = n.clone();
        (
            n,
            Box::new(move || {
                m.fetch_add(1, Ordering::SeqCst);
            }),
        )
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// The whole v2 path on a file written by the test: inotify wakes the task, which reads
    /// the count and reports the OOM.
    #[tokio::test]
    async fn v2_watcher_reports_and_ends() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cg");
        std::fs::create_dir(&dir).unwrap();
        let events = dir.join("memory.events");
        std::fs::write(&events, "oom 0\noom_kill 0\n").unwrap();
        let (ooms, on_oom) = counter();
        let source = Source::open(&MemoryCgroup::V2(dir.clone())).unwrap();
        let watcher = Watcher::spawn(source, on_oom);

        std::fs::write(&events, "oom 1\noom_kill 1\n").unwrap();
        until("the OOM", || ooms.load(Ordering::SeqCst) == 1).await;
        std::fs::write(&events, "oom 2\noom_kill 1\nmax 9\n").unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ooms.load(Ordering::SeqCst), 1);

        std::fs::remove_dir_all(&dir).unwrap();
        // A removed file's watch ends with IN_IGNORED: the task wakes and finds it gone.
        let task = watcher.task.as_ref().unwrap();
        until("the end", || task.is_finished()).await;
        assert_eq!(ooms.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn catch_up_reports_before_the_task_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let events = tmp.path().join("memory.events");
        std::fs::write(&events, "oom_kill 0\n").unwrap();
        let (ooms, on_oom) = counter();
        let source = Source::open(&MemoryCgroup::V2(tmp.path().into())).unwrap();
        let monitor = OomMonitor::default();
        *monitor.lock() = Some(Watcher::spawn(source, on_oom));
        assert!(monitor.is_watching());
        std::fs::write(&events, "oom_kill 1\n").unwrap();
        // No await in between: the task has not run.
        monitor.catch_up();
        assert_eq!(ooms.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ooms.load(Ordering::SeqCst), 1, "reported once");
    }

    #[tokio::test]
    async fn stopping_closes_the_descriptors() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("memory.events"), "oom_kill 0\n").unwrap();
        let monitor = OomMonitor::default();
        let source = Source::open(&MemoryCgroup::V2(tmp.path().into())).unwrap();
        *monitor.lock() = Some(Watcher::spawn(source, counter().1));
        let (watch, fd) = {
            let current = monitor.lock();
            let watch = &current.as_ref().unwrap().watch;
            let fd = watch.source.fd().unwrap().get_ref().as_raw_fd();
            (Arc::downgrade(watch), fd)
        };
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert_eq!(link, std::path::Path::new("anon_inode:inotify"));
        monitor.stop();
        assert!(!monitor.is_watching());
        // The aborted task lets go of the watch, and with it the descriptors, when the
        // runtime next runs it.
        until("the watch to be dropped", || watch.upgrade().is_none()).await;
    }
}
