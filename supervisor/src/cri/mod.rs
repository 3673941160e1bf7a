//! The Kubernetes CRI (`runtime.v1`), served by supd. A pod sandbox is a pause container in
//! its own network, IPC and UTS namespaces; the pod's containers join them. Every CRI object
//! is an ordinary sup container (and task) in namespace `k8s.io`, made through the same
//! services `supctl` reaches; the `cri` tree keeps only what the CRI alone knows.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::CriConfig;
use crate::service::Services;

pub mod container;
pub mod events;
pub mod exec;
pub mod image;
pub mod netns;
pub mod network;
pub mod overrides;
pub mod pause;
pub mod records;
pub mod runtime;
pub mod sandbox;
pub mod seccomp;
pub mod spec;
pub mod stats;
pub mod stream;

/// The sup namespace every CRI object lives in.
pub const NAMESPACE: &str = "k8s.io";

/// Label on the sup containers: "sandbox" or "container".
pub const LABEL_KIND: &str = "io.sup.cri/kind";
/// Label on a CRI container's sup container: the sandbox it belongs to.
pub const LABEL_SANDBOX: &str = "io.sup.cri/sandbox-id";

/// The CRI runtime's state: the shared services, the CRI records and the settings.
pub struct Cri {
    pub services: Arc<Services>,
    pub records: records::Records,
    pub net: network::NetConfig,
    pub config: CriConfig,
    /// From UpdateRuntimeConfig; kept for Status and for CNI plugins that want it.
    pub pod_cidr: Mutex<String>,
    /// Serializes sandbox lifecycle changes (run, stop, remove), which touch several objects.
    pub lifecycle: tokio::sync::Mutex<()>,
    /// Serializes read-modify-writes of container records (start, exit collection, removal).
    pub record_updates: tokio::sync::Mutex<()>,
    /// One lock per container id, held while its task is deleted: a stop, a removal and the
    /// exit collector may all try at once, and the shim allows one delete at a time.
    task_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The CPU sample per container or pod from which the next stats call derives its usage
    /// in nano-cores.
    cpu_samples: Mutex<HashMap<String, CpuSample>>,
    /// Each container's resources as its spec gives them, for ContainerStatus: read from the
    /// spec once, forgotten when they are updated or the container removed.
    /// Kept as of a containers generation (Services::containers_generation): any update of
    /// a container record, through the CRI or sup.v1, starts it afresh.
    resources: Mutex<(u64, HashMap<String, k8s_cri::v1::LinuxContainerResources>)>,
    /// Serves Exec, Attach and PortForward sessions.
    pub stream: stream::StreamServer,
}

impl Cri {
    /// The CRI state; call within the daemon's runtime (it starts the exit collector and
    /// the streaming server, whose socket it binds).
    pub fn new(services: Arc<Services>, config: CriConfig) -> crate::error::Result<Arc<Cri>> {
        let stream = stream::StreamServer::bind(&config)?;
        let cri = Arc::new(Cri {
            stream,
            records: records::Records::new(services.store.clone()),
            net: network::NetConfig::from_config(&config),
            services,
            config,
            pod_cidr: Mutex::new(String::new()),
            lifecycle: tokio::sync::Mutex::new(()),
            record_updates: tokio::sync::Mutex::new(()),
            task_locks: Mutex::new(HashMap::new()),
            resources: Mutex::new((0, HashMap::new())),
            cpu_samples: Mutex::new(HashMap::new()),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            cri.collect_exits();
            let settling = cri.clone();
            tokio::spawn(async move { settling.settle_exits().await });
            stream::StreamServer::serve(&cri)?;
        }
        Ok(cri)
    }

    /// The task-deletion lock of container `id`.
    pub fn task_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        match self.task_locks.lock() {
            Ok(mut m) => m.entry(id.to_string()).or_default().clone(),
            Err(_) => Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Forgets the lock and CPU sample of a removed container or pod.
    pub fn drop_task_lock(&self, id: &str) {
        if let Ok(mut m) = self.task_locks.lock() {
            m.remove(id);
        }
        if let Ok(mut m) = self.cpu_samples.lock() {
            m.remove(id);
        }
    }

    /// Takes a CPU reading of `id` (time and cumulative usage, in ns) and returns its usage in
    /// nano-cores (see [`next_rate`]).
    pub fn nano_cores(&self, id: &str, at: i64, usage_ns: u64) -> Option<u64> {
        let mut m = self.cpu_samples.lock().ok()?;
        let (rate, keep) = next_rate(m.get(id).copied(), at, usage_ns);
        m.insert(id.to_string(), keep);
        rate
    }

    /// A sandbox's own files: resolv.conf, the pinned network namespace.
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.services.state.join("cri").join("sandboxes").join(id)
    }
}

/// A new object id: 32 hex digits from the kernel's random source.
pub fn new_id() -> crate::error::Result<String> {
    use std::io::Read;
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| crate::error::Error::io("reading /dev/urandom", e))?;
    Ok(hex::encode(buf))
}

/// The shortest span a CPU rate is measured over. Stats calls come close together (a pod's,
/// which reads its containers too, then the containers' own): measured between them, the rate
/// covers a few milliseconds, in which a busy container on a loaded node may not have run.
pub const MIN_RATE_SPAN_NS: i64 = 1_000_000_000;

/// What is kept per container or pod between stats calls: the reading the next rate is
/// measured from, and the rate measured up to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    pub at: i64,
    pub usage_ns: u64,
    pub rate: Option<u64>,
}

/// The rate to report for a reading (time, cumulative usage, in ns) and the sample to keep:
/// measured from the kept sample once at least [`MIN_RATE_SPAN_NS`] has passed since it,
/// which the reading then replaces; the kept sample's own rate before that. None for the
/// first reading, and when the clock or the counter went backwards (a new cgroup: a pod's
/// total drops when a container goes), which starts over.
pub fn next_rate(kept: Option<CpuSample>, at: i64, usage_ns: u64) -> (Option<u64>, CpuSample) {
    let fresh = CpuSample {
        at,
        usage_ns,
        rate: None,
    };
    let Some(kept) = kept else {
        return (None, fresh);
    };
    if at < kept.at || usage_ns < kept.usage_ns {
        return (None, fresh);
    }
    if at - kept.at < MIN_RATE_SPAN_NS {
        return (kept.rate, kept);
    }
    let rate = nano_cores_between((kept.at, kept.usage_ns), (at, usage_ns));
    (rate, CpuSample { rate, ..fresh })
}

/// CPU used between two samples of (time in ns, cumulative CPU time in ns), in
/// billionths of a core.
pub fn nano_cores_between(prev: (i64, u64), now: (i64, u64)) -> Option<u64> {
    let elapsed = u64::try_from(now.0.checked_sub(prev.0)?).ok()?;
    let used = now.1.checked_sub(prev.1)?;
    if elapsed == 0 {
        return None;
    }
    u64::try_from(u128::from(used) * 1_000_000_000 / u128::from(elapsed)).ok()
}

/// Nanoseconds since the epoch, the CRI's time unit.
pub fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub fn now() -> i64 {
    nanos(SystemTime::now())
}

/// Every pair of the selector is in the labels.
pub fn selector_matches(
    selector: &std::collections::HashMap<String, String>,
    labels: &std::collections::HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn cpu_rate() {
        // Half a core for a second.
        assert_eq!(
            nano_cores_between((1_000_000_000, 10), (2_000_000_000, 500_000_010)),
            Some(500_000_000)
        );
        assert_eq!(nano_cores_between((5, 10), (5, 20)), None);
        assert_eq!(nano_cores_between((5, 10), (9, 2)), None);
        assert_eq!(nano_cores_between((9, 10), (5, 20)), None);
    }

    #[test]
    fn rates_span_at_least_the_minimum() {
        const S: i64 = 1_000_000_000;
        let (rate, kept) = next_rate(None, 10 * S, 100);
        assert_eq!(rate, None);
        // Too soon after the first: no rate yet, and the first is kept.
        let (rate, kept) = next_rate(Some(kept), 10 * S + 5_000_000, 200);
        assert_eq!((rate, kept.at), (None, 10 * S));
        // Two seconds at a quarter of a core.
        let (rate, kept) = next_rate(Some(kept), 12 * S, 100 + 500_000_000);
        assert_eq!(rate, Some(250_000_000));
        assert_eq!(kept.at, 12 * S);
        // A reading right after that (the container's own stats after its pod's): the same
        // rate, not the few milliseconds between the two in which the container did not run.
        let (rate, kept) = next_rate(Some(kept), 12 * S + 3_000_000, 100 + 500_000_000);
        assert_eq!(rate, Some(250_000_000));
        assert_eq!(kept.at, 12 * S);
        // The counter went backwards (a pod lost a container): start over.
        let (rate, kept) = next_rate(Some(kept), 14 * S, 50);
        assert_eq!((rate, kept.at, kept.usage_ns), (None, 14 * S, 50));
        // So does a clock set back.
        let (rate, kept) = next_rate(Some(kept), 13 * S, 60);
        assert_eq!((rate, kept.at), (None, 13 * S));
    }

    #[test]
    fn ids_and_selectors() {
        let id = new_id().unwrap();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        let labels: HashMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("tier".into(), "a".into()),
        ]
        .into();
        assert!(selector_matches(&HashMap::new(), &labels));
        assert!(selector_matches(
            &[("app".into(), "web".into())].into(),
            &labels
        ));
        assert!(!selector_matches(
            &[("app".into(), "db".into())].into(),
            &labels
        ));
        assert!(!selector_matches(
            &[("x".into(), "web".into())].into(),
            &labels
        ));
    }
}
