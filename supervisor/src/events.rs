//! The event exchange: every service publishes here, every Subscribe reads from here.
//! Events of one object are published from the code path that changed it, after the change is
//! durable, so subscribers see them in order.

use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::labels::Labels;

/// What an event is about.
#[derive(Debug, Clone)]
pub enum Payload {
    Namespace {
        name: String,
        labels: Labels,
    },
    Content {
        digest: String,
    },
    Image {
        name: String,
        digest: String,
        labels: Labels,
    },
    Snapshot {
        snapshotter: String,
        key: String,
        parent: String,
        name: String,
    },
    Container {
        id: String,
        image: String,
        labels: Labels,
    },
    Task {
        container_id: String,
        exec_id: String,
        pid: u32,
        exit_status: u32,
        exited_at: Option<SystemTime>,
        reason: String,
    },
}

impl Payload {
    /// The id of the object, for the `id` filter field.
    pub fn id(&self) -> &str {
        match self {
            Payload::Namespace { name, .. } | Payload::Image { name, .. } => name,
            Payload::Content { digest } => digest,
            Payload::Snapshot { key, .. } => key,
            Payload::Container { id, .. } => id,
            Payload::Task { container_id, .. } => container_id,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    pub timestamp: SystemTime,
    pub namespace: String,
    pub topic: &'static str,
    pub payload: Payload,
}

#[derive(Clone)]
pub struct Exchange {
    tx: broadcast::Sender<Event>,
    closed: tokio::sync::watch::Sender<bool>,
}

impl Default for Exchange {
    fn default() -> Self {
        Self::new()
    }
}

impl Exchange {
    pub fn new() -> Exchange {
        // Subscribers that fall this far behind are told they lost events.
        let (tx, _) = broadcast::channel(4096);
        let (closed, _) = tokio::sync::watch::channel(false);
        Exchange { tx, closed }
    }

    /// Ends every subscription (the daemon is stopping).
    pub fn close(&self) {
        let _ = self.closed.send(true);
    }

    /// Changes to true when the exchange closes.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closed.subscribe()
    }

    pub fn publish(&self, namespace: &str, topic: &'static str, payload: Payload) {
        tracing::debug!(namespace, topic, id = payload.id(), "event");
        // No subscriber is not an error.
        let _ = self.tx.send(Event {
            timestamp: SystemTime::now(),
            namespace: namespace.to_string(),
            topic,
            payload,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

pub mod topic {
    pub const NAMESPACE_CREATE: &str = "/namespaces/create";
    pub const NAMESPACE_UPDATE: &str = "/namespaces/update";
    pub const NAMESPACE_DELETE: &str = "/namespaces/delete";
    pub const CONTENT_DELETE: &str = "/content/delete";
    pub const IMAGE_CREATE: &str = "/images/create";
    pub const IMAGE_UPDATE: &str = "/images/update";
    pub const IMAGE_DELETE: &str = "/images/delete";
    pub const SNAPSHOT_PREPARE: &str = "/snapshots/prepare";
    pub const SNAPSHOT_COMMIT: &str = "/snapshots/commit";
    pub const SNAPSHOT_REMOVE: &str = "/snapshots/remove";
    pub const CONTAINER_CREATE: &str = "/containers/create";
    pub const CONTAINER_UPDATE: &str = "/containers/update";
    pub const CONTAINER_DELETE: &str = "/containers/delete";
    pub const TASK_CREATE: &str = "/tasks/create";
    pub const TASK_START: &str = "/tasks/start";
    pub const TASK_EXIT: &str = "/tasks/exit";
    pub const TASK_OOM: &str = "/tasks/oom";
    pub const TASK_DELETE: &str = "/tasks/delete";
    pub const TASK_PAUSED: &str = "/tasks/paused";
    pub const TASK_RESUMED: &str = "/tasks/resumed";
    pub const TASK_EXEC_ADDED: &str = "/tasks/exec-added";
    pub const TASK_EXEC_STARTED: &str = "/tasks/exec-started";
}
