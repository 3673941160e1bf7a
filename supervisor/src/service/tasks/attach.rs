//! Attaching to a process's stdio and reading its logs, in the service's own terms: the
//! shim's attach and logs streams, with what the caller sends and gets back as plain values.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use sup_proto::v1 as wire;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::shim::from_status;
use super::{ts, Exit};
use crate::error::Result;
use crate::service::Services;
use crate::timestamps::timestamp;

/// Which of a process's streams to connect (the init's for an empty `exec_id`).
#[derive(Debug, Clone, Default)]
pub struct AttachOptions {
    pub exec_id: String,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// The output logged so far first, then live output.
    pub logs: bool,
}

/// What an attached caller sends.
#[derive(Debug, Clone)]
pub enum AttachInput {
    Stdin(Vec<u8>),
    CloseStdin,
    Resize { width: u32, height: u32 },
}

/// What an attached caller gets.
#[derive(Debug, Clone)]
pub enum AttachOutput {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The last item, when the process exits while attached.
    Exit(Exit),
}

pub type OutputStream = Pin<Box<dyn Stream<Item = Result<AttachOutput>> + Send>>;

/// One piece of a process's logged output.
#[derive(Debug, Clone)]
pub struct LogChunk {
    pub stderr: bool,
    pub data: Vec<u8>,
    pub at: Option<std::time::SystemTime>,
}

pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk>> + Send>>;

/// Which logs to read (the init's for an empty `exec_id`).
#[derive(Debug, Clone, Default)]
pub struct LogsOptions {
    pub exec_id: String,
    /// New output as it comes, until the process exits or the stream is dropped.
    pub follow: bool,
    /// Only the last `tail` lines; all when 0.
    pub tail: i64,
    /// Only output logged at or after this time.
    pub since: Option<std::time::SystemTime>,
}

/// A live attachment. Dropping `input` ends the caller's half, as a client ending its
/// stream would; keep it while the output is wanted.
pub struct Attached {
    pub input: mpsc::Sender<AttachInput>,
    pub output: OutputStream,
}

impl Services {
    pub async fn task_attach(&self, ns: &str, id: &str, opts: &AttachOptions) -> Result<Attached> {
        let task = self.task(ns, id)?;
        let (to_shim, shim_in) = mpsc::channel(16);
        let options = wire::attach_request::Payload::Options(wire::AttachOptions {
            container_id: id.to_string(),
            exec_id: opts.exec_id.clone(),
            stdin: opts.stdin,
            stdout: opts.stdout,
            stderr: opts.stderr,
            logs: opts.logs,
        });
        // Room for it: the channel is new.
        let _ = to_shim.try_send(wire::AttachRequest {
            payload: Some(options),
        });
        let (input, mut from_caller) = mpsc::channel::<AttachInput>(16);
        let (container_id, exec_id) = (id.to_string(), opts.exec_id.clone());
        tokio::spawn(async move {
            while let Some(i) = from_caller.recv().await {
                let p = match i {
                    AttachInput::Stdin(data) => wire::attach_request::Payload::Stdin(data),
                    AttachInput::CloseStdin => wire::attach_request::Payload::CloseStdin(true),
                    AttachInput::Resize { width, height } => {
                        wire::attach_request::Payload::Resize(wire::ResizePtyRequest {
                            container_id: container_id.clone(),
                            exec_id: exec_id.clone(),
                            width,
                            height,
                        })
                    }
                };
                if to_shim
                    .send(wire::AttachRequest { payload: Some(p) })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let out = task
            .client()
            .attach(ReceiverStream::new(shim_in))
            .await
            .map_err(|s| from_status(&format!("attaching to task {id:?}"), s))?
            .into_inner();
        let output = out.filter_map(|item| async move {
            match item {
                Ok(m) => match m.payload? {
                    wire::attach_response::Payload::Output(f) => {
                        Some(Ok(if f.stream == wire::StdStream::Stderr as i32 {
                            AttachOutput::Stderr(f.data)
                        } else {
                            AttachOutput::Stdout(f.data)
                        }))
                    }
                    wire::attach_response::Payload::Exit(w) => Some(Ok(AttachOutput::Exit(Exit {
                        exit_status: w.exit_status,
                        exited_at: ts(w.exited_at),
                        reason: w.reason,
                    }))),
                },
                Err(s) => Some(Err(from_status("attach", s))),
            }
        });
        Ok(Attached {
            input,
            output: Box::pin(output),
        })
    }

    /// A process's logged output.
    pub async fn task_logs(&self, ns: &str, id: &str, opts: &LogsOptions) -> Result<LogStream> {
        let task = self.task(ns, id)?;
        let out = task
            .client()
            .logs(wire::LogsRequest {
                container_id: id.to_string(),
                exec_id: opts.exec_id.clone(),
                follow: opts.follow,
                tail: opts.tail,
                since: opts.since.map(timestamp),
            })
            .await
            .map_err(|s| from_status(&format!("logs of task {id:?}"), s))?
            .into_inner();
        Ok(Box::pin(out.map(|item| match item {
            Ok(l) => Ok(LogChunk {
                stderr: l.stream == wire::StdStream::Stderr as i32,
                data: l.data,
                at: ts(l.timestamp),
            }),
            Err(s) => Err(from_status("logs", s)),
        })))
    }
}
