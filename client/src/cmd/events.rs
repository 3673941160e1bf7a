//! `supctl events`: the daemon's event stream, one line per event (or one JSON object per
//! line), until interrupted.

use chrono::SecondsFormat;
use serde_json::{json, Map, Value};
use sup_client::api::{envelope, Envelope, SubscribeRequest};

use super::output::OutputArg;
use super::output::{labels_json, labels_text, print_text, time_json, to_datetime, Format};
use super::Context;

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only events matching the filter (topic~=^/tasks/, namespace==default, id==t1);
    /// repeat to match any
    #[arg(long = "filter", value_name = "FILTER")]
    filters: Vec<String>,
    #[command(flatten)]
    out: OutputArg,
}

pub async fn run(ctx: &Context, args: EventsArgs) -> anyhow::Result<()> {
    let format = ctx.format(&args.out);
    let mut stream = ctx
        .client()
        .await?
        .events()
        .subscribe(SubscribeRequest {
            filters: args.filters,
        })
        .await?
        .into_inner();
    while let Some(event) = stream.message().await? {
        let line = match format {
            Format::Table => event_line(&event),
            Format::Json => {
                let mut text = serde_json::to_string(&event_json(&event))?;
                text.push('\n');
                text
            }
        };
        print_text(&line)?;
    }
    anyhow::bail!("supd ended the event stream (it is shutting down)")
}

/// `TIMESTAMP NAMESPACE TOPIC key=value...`.
fn event_line(event: &Envelope) -> String {
    let time = to_datetime(event.timestamp.as_ref()).map_or_else(
        || "-".to_string(),
        |t| t.to_rfc3339_opts(SecondsFormat::Nanos, true),
    );
    let mut line = format!("{time} {} {}", word(&event.namespace), word(&event.topic));
    for (key, value) in fields(event) {
        line.push(' ');
        line.push_str(key);
        line.push('=');
        line.push_str(&word(&value));
    }
    line.push('\n');
    line
}

/// A value as one word: quoted (and escaped) when empty or holding white space, quotes or
/// control characters, so that a line always splits back into its fields.
fn word(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\');
    if plain {
        value.to_string()
    } else {
        format!("{value:?}")
    }
}

/// The event's fields worth a person's eye, in a fixed order; empty ones left out.
fn fields(event: &Envelope) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    let mut put = |key: &'static str, value: String| {
        if !value.is_empty() {
            out.push((key, value));
        }
    };
    match &event.event {
        Some(envelope::Event::NamespaceEvent(e)) => {
            put("name", e.name.clone());
            put("labels", labels_text(&e.labels));
        }
        Some(envelope::Event::Content(e)) => put("digest", e.digest.clone()),
        Some(envelope::Event::Image(e)) => {
            put("name", e.name.clone());
            put("digest", e.digest.clone());
            put("labels", labels_text(&e.labels));
        }
        Some(envelope::Event::Snapshot(e)) => {
            put("snapshotter", e.snapshotter.clone());
            put("key", e.key.clone());
            put("parent", e.parent.clone());
            put("name", e.name.clone());
        }
        Some(envelope::Event::Container(e)) => {
            put("id", e.id.clone());
            put("image", e.image.clone());
            put("labels", labels_text(&e.labels));
        }
        Some(envelope::Event::Task(e)) => {
            put("container_id", e.container_id.clone());
            put("exec_id", e.exec_id.clone());
            if e.pid != 0 {
                put("pid", e.pid.to_string());
            }
            // Zero is a real exit status; it is only meaningless before an exit.
            if e.exited_at.is_some() || e.exit_status != 0 {
                put("exit_status", e.exit_status.to_string());
            }
            if let Some(t) = to_datetime(e.exited_at.as_ref()) {
                put("exited_at", t.to_rfc3339_opts(SecondsFormat::Nanos, true));
            }
            put("reason", e.reason.clone());
        }
        None => {}
    }
    out
}

fn event_json(event: &Envelope) -> Value {
    let (kind, body) = match &event.event {
        Some(envelope::Event::NamespaceEvent(e)) => (
            "namespace",
            json!({"name": e.name, "labels": labels_json(&e.labels)}),
        ),
        Some(envelope::Event::Content(e)) => ("content", json!({"digest": e.digest})),
        Some(envelope::Event::Image(e)) => (
            "image",
            json!({"name": e.name, "digest": e.digest, "labels": labels_json(&e.labels)}),
        ),
        Some(envelope::Event::Snapshot(e)) => (
            "snapshot",
            json!({
                "snapshotter": e.snapshotter,
                "key": e.key,
                "parent": e.parent,
                "name": e.name,
            }),
        ),
        Some(envelope::Event::Container(e)) => (
            "container",
            json!({"id": e.id, "image": e.image, "labels": labels_json(&e.labels)}),
        ),
        Some(envelope::Event::Task(e)) => (
            "task",
            json!({
                "container_id": e.container_id,
                "exec_id": e.exec_id,
                "pid": e.pid,
                "exit_status": e.exit_status,
                "exited_at": time_json(e.exited_at.as_ref()),
                "reason": e.reason,
            }),
        ),
        None => ("unknown", Value::Object(Map::new())),
    };
    json!({
        "timestamp": time_json(event.timestamp.as_ref()),
        "namespace": event.namespace,
        "topic": event.topic,
        "kind": kind,
        "event": body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sup_client::api::{ContainerEvent, TaskEvent};

    fn at(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    #[test]
    fn task_exit_line() {
        let event = Envelope {
            timestamp: at(1_600_000_000),
            namespace: "default".into(),
            topic: "/tasks/exit".into(),
            event: Some(envelope::Event::Task(TaskEvent {
                container_id: "t1".into(),
                pid: 42,
                exit_status: 0,
                exited_at: at(1_600_000_000),
                ..Default::default()
            })),
        };
        assert_eq!(
            event_line(&event),
            "2020-09-13T12:26:40.000000000Z default /tasks/exit container_id=t1 pid=42 \
             exit_status=0 exited_at=2020-09-13T12:26:40.000000000Z\n"
        );
        let value = event_json(&event);
        assert_eq!(value["topic"], "/tasks/exit");
        assert_eq!(value["kind"], "task");
        assert_eq!(value["event"]["pid"], 42);
        assert_eq!(value["timestamp"], "2020-09-13T12:26:40Z");
    }

    #[test]
    fn task_start_has_no_exit_status() {
        let event = Envelope {
            timestamp: None,
            namespace: "k8s.io".into(),
            topic: "/tasks/start".into(),
            event: Some(envelope::Event::Task(TaskEvent {
                container_id: "t1".into(),
                pid: 7,
                ..Default::default()
            })),
        };
        assert_eq!(
            event_line(&event),
            "- k8s.io /tasks/start container_id=t1 pid=7\n"
        );
    }

    #[test]
    fn odd_values_are_quoted() {
        let event = Envelope {
            timestamp: None,
            namespace: "default".into(),
            topic: "/containers/create".into(),
            event: Some(envelope::Event::Container(ContainerEvent {
                id: "c1".into(),
                image: "evil name\n".into(),
                ..Default::default()
            })),
        };
        assert_eq!(
            event_line(&event),
            "- default /containers/create id=c1 image=\"evil name\\n\"\n"
        );
    }
}
