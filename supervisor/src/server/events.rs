//! gRPC adaptor of the Events service: the exchange's broadcast, filtered per subscriber.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use sup_proto::v1::{self as api, envelope::Event as Ev, events_server::Events};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{labels_out, status, timestamp, RpcResult};
use crate::events::{Event, Payload};
use crate::filters::{Filter, Filterable};
use crate::service::Services;

pub struct EventsApi(pub Arc<Services>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Filterable for Event {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["topic"] => Some(self.topic.to_string()),
            ["namespace"] => Some(self.namespace.clone()),
            ["id"] => Some(self.payload.id().to_string()),
            _ => None,
        }
    }
}

pub fn envelope(e: &Event) -> api::Envelope {
    let event = match &e.payload {
        Payload::Namespace { name, labels } => Ev::NamespaceEvent(api::NamespaceEvent {
            name: name.clone(),
            labels: labels_out(labels),
        }),
        Payload::Content { digest } => Ev::Content(api::ContentEvent {
            digest: digest.clone(),
        }),
        Payload::Image {
            name,
            digest,
            labels,
        } => Ev::Image(api::ImageEvent {
            name: name.clone(),
            digest: digest.clone(),
            labels: labels_out(labels),
        }),
        Payload::Snapshot {
            snapshotter,
            key,
            parent,
            name,
        } => Ev::Snapshot(api::SnapshotEvent {
            snapshotter: snapshotter.clone(),
            key: key.clone(),
            parent: parent.clone(),
            name: name.clone(),
        }),
        Payload::Container { id, image, labels } => Ev::Container(api::ContainerEvent {
            id: id.clone(),
            image: image.clone(),
            labels: labels_out(labels),
        }),
        Payload::Task {
            container_id,
            exec_id,
            pid,
            exit_status,
            exited_at,
            reason,
        } => Ev::Task(api::TaskEvent {
            container_id: container_id.clone(),
            exec_id: exec_id.clone(),
            pid: *pid,
            exit_status: *exit_status,
            exited_at: exited_at.map(timestamp),
            reason: reason.clone(),
        }),
    };
    api::Envelope {
        timestamp: Some(timestamp(e.timestamp)),
        namespace: e.namespace.clone(),
        topic: e.topic.to_string(),
        event: Some(event),
    }
}

#[tonic::async_trait]
impl Events for EventsApi {
    type SubscribeStream = BoxStream<api::Envelope>;

    async fn subscribe(
        &self,
        req: Request<api::SubscribeRequest>,
    ) -> RpcResult<Self::SubscribeStream> {
        let filter = Filter::parse(&req.into_inner().filters).map_err(status)?;
        let mut rx = self.0.events.subscribe();
        let mut closing = self.0.events.closing();
        let (tx, out) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    r = rx.recv() => r,
                    _ = closing.wait_for(|c| *c) => break,
                };
                let item = match received {
                    Ok(e) if filter.matches(&e) => Ok(envelope(&e)),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => Err(Status::data_loss(format!(
                        "subscriber fell behind and lost {n} events"
                    ))),
                    Err(RecvError::Closed) => break,
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}
