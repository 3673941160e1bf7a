//! GetContainerEvents: the event exchange's container and task events of namespace
//! `k8s.io`, as CRI container events with the pod's status.

use std::sync::Arc;

use k8s_cri::v1 as cri;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::{Cri, LABEL_KIND, LABEL_SANDBOX, NAMESPACE};
use crate::events::{topic, Event, Payload};

/// The CRI event type of a sup event, and the id of the container it is about.
pub fn classify(ev: &Event) -> Option<(cri::ContainerEventType, String, Option<String>)> {
    if ev.namespace != NAMESPACE {
        return None;
    }
    match (&ev.payload, ev.topic) {
        (Payload::Container { id, labels, .. }, t) => {
            let kind = match t {
                topic::CONTAINER_CREATE => cri::ContainerEventType::ContainerCreatedEvent,
                topic::CONTAINER_DELETE => cri::ContainerEventType::ContainerDeletedEvent,
                _ => return None,
            };
            let sandbox = if labels.get(LABEL_KIND).is_some_and(|k| k == "sandbox") {
                Some(id.clone())
            } else {
                labels.get(LABEL_SANDBOX).cloned()
            };
            Some((kind, id.clone(), sandbox))
        }
        (
            Payload::Task {
                container_id,
                exec_id,
                ..
            },
            t,
        ) if exec_id.is_empty() => {
            let kind = match t {
                topic::TASK_START => cri::ContainerEventType::ContainerStartedEvent,
                topic::TASK_EXIT => cri::ContainerEventType::ContainerStoppedEvent,
                _ => return None,
            };
            Some((kind, container_id.clone(), None))
        }
        _ => None,
    }
}

impl Cri {
    async fn to_cri_event(&self, ev: &Event) -> Option<cri::ContainerEventResponse> {
        let (kind, id, sandbox_hint) = classify(ev)?;
        // A pause container is its sandbox; a container names its sandbox in its record (or,
        // once deleted, in the label the event carries).
        let sandbox_id = if self.records.sandbox(&id).is_ok() {
            id.clone()
        } else if let Ok(c) = self.records.container(&id) {
            c.sandbox_id
        } else {
            sandbox_hint?
        };
        let sandbox = self.records.sandbox(&sandbox_id).ok();
        let pod_sandbox_status = match &sandbox {
            Some(s) => Some(self.sandbox_status(s).await),
            None => None,
        };
        let mut containers_statuses = Vec::new();
        for c in self.records.containers().unwrap_or_default() {
            if c.sandbox_id == sandbox_id {
                containers_statuses.push(self.container_status(&c).await);
            }
        }
        Some(cri::ContainerEventResponse {
            container_id: id,
            container_event_type: kind as i32,
            created_at: super::nanos(ev.timestamp),
            pod_sandbox_status,
            containers_statuses,
        })
    }

    /// Collects the exit of every CRI container's task as it happens: the exit goes into the
    /// record and the task (with its shim) is deleted, as the kubelet expects of an exited
    /// container. Pause tasks are left to StopPodSandbox.
    pub fn collect_exits(self: &Arc<Self>) {
        let mut sub = self.services.events.subscribe();
        let mut closing = self.services.events.closing();
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    r = sub.recv() => r,
                    _ = closing.changed() => return,
                };
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                };
                let Payload::Task {
                    container_id,
                    exec_id,
                    ..
                } = &ev.payload
                else {
                    continue;
                };
                if ev.namespace != NAMESPACE || ev.topic != topic::TASK_EXIT || !exec_id.is_empty()
                {
                    continue;
                }
                if this.records.container(container_id).is_err() {
                    continue;
                }
                if let Err(e) = this.collect_exit(container_id).await {
                    tracing::warn!(container = %container_id, error = %e, "collecting an exit");
                }
            }
        });
    }

    /// Streams CRI events until the client goes away or the daemon stops.
    pub fn container_events(
        self: &Arc<Self>,
    ) -> mpsc::Receiver<Result<cri::ContainerEventResponse, tonic::Status>> {
        let (tx, rx) = mpsc::channel(64);
        let mut sub = self.services.events.subscribe();
        let mut closing = self.services.events.closing();
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    r = sub.recv() => r,
                    _ = tx.closed() => return,
                    _ = closing.changed() => return,
                };
                match ev {
                    Ok(ev) => {
                        if let Some(out) = this.to_cri_event(&ev).await {
                            if tx.send(Ok(out)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "CRI event stream fell behind");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ns: &str, topic: &'static str, payload: Payload) -> Event {
        Event {
            timestamp: std::time::SystemTime::now(),
            namespace: ns.into(),
            topic,
            payload,
        }
    }

    fn task(id: &str, exec: &str) -> Payload {
        Payload::Task {
            container_id: id.into(),
            exec_id: exec.into(),
            pid: 1,
            exit_status: 0,
            exited_at: None,
            reason: String::new(),
        }
    }

    #[test]
    fn topics_map_to_cri_events() {
        use cri::ContainerEventType as T;
        let c = Payload::Container {
            id: "c1".into(),
            image: String::new(),
            labels: [(LABEL_SANDBOX.to_string(), "s1".to_string())].into(),
        };
        let got = classify(&ev(NAMESPACE, topic::CONTAINER_CREATE, c.clone())).unwrap();
        assert_eq!(
            got,
            (T::ContainerCreatedEvent, "c1".into(), Some("s1".into()))
        );
        let got = classify(&ev(NAMESPACE, topic::CONTAINER_DELETE, c.clone())).unwrap();
        assert_eq!(got.0, T::ContainerDeletedEvent);
        let got = classify(&ev(NAMESPACE, topic::TASK_START, task("c1", ""))).unwrap();
        assert_eq!(got.0, T::ContainerStartedEvent);
        let got = classify(&ev(NAMESPACE, topic::TASK_EXIT, task("c1", ""))).unwrap();
        assert_eq!(got.0, T::ContainerStoppedEvent);
        // Exec processes, other namespaces and other topics are not container events.
        assert!(classify(&ev(NAMESPACE, topic::TASK_EXIT, task("c1", "e1"))).is_none());
        assert!(classify(&ev("default", topic::TASK_EXIT, task("c1", ""))).is_none());
        assert!(classify(&ev(NAMESPACE, topic::CONTAINER_UPDATE, c)).is_none());
        let sandbox = Payload::Container {
            id: "s1".into(),
            image: String::new(),
            labels: [(LABEL_KIND.to_string(), "sandbox".to_string())].into(),
        };
        let got = classify(&ev(NAMESPACE, topic::CONTAINER_DELETE, sandbox)).unwrap();
        assert_eq!(got.2, Some("s1".into()));
    }
}
