//! The streaming RPCs: Attach (stdin in, output and the exit out), Logs (the log read back,
//! then live output when following) and Events. Each response stream is fed by a task through
//! a small channel, so a slow client slows only its own task, never the container's output.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sup_proto::shim::{shim_event, Oom, ProcessExit, ShimEvent};
use sup_proto::v1::{
    attach_request, attach_response, AttachOptions, AttachRequest, AttachResponse, LogsRequest,
    LogsResponse, OutputFrame, StdStream,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::{to_status, to_timestamp, wait_response};
use crate::io::history::Filter;
use crate::io::log::{Chunk, Record, StreamKind};
use crate::io::output::{Follower, Next};
use crate::io::ProcessIo;
use crate::process::{Container, Event};

/// Responses buffered per stream before its feeding task waits for the client.
const STREAM_BUFFER: usize = 16;

fn std_stream(s: StreamKind) -> StdStream {
    match s {
        StreamKind::Stdout => StdStream::Stdout,
        StreamKind::Stderr => StdStream::Stderr,
    }
}

fn logs_response(r: Record) -> LogsResponse {
    LogsResponse {
        stream: std_stream(r.stream) as i32,
        timestamp: Some(to_timestamp(&r.at)),
        data: r.into_bytes(),
    }
}

fn output_frame(stream: StreamKind, data: Vec<u8>) -> AttachResponse {
    AttachResponse {
        payload: Some(attach_response::Payload::Output(OutputFrame {
            stream: std_stream(stream) as i32,
            data,
        })),
    }
}

fn since_time(ts: &prost_types::Timestamp) -> Result<DateTime<Utc>, Status> {
    u32::try_from(ts.nanos)
        .ok()
        .and_then(|n| DateTime::from_timestamp(ts.seconds, n))
        .ok_or_else(|| Status::invalid_argument(format!("invalid since timestamp {ts:?}")))
}

/// Waits for the next live chunk, or for the shim to shut down (then: the end).
async fn next_live(f: &mut Follower, shutdown: &mut watch::Receiver<bool>) -> Next {
    tokio::select! {
        n = f.next() => n,
        _ = shutdown.wait_for(|s| *s) => Next::End,
    }
}

pub fn logs(
    container: Arc<Container>,
    req: LogsRequest,
    mut shutdown: watch::Receiver<bool>,
) -> Result<ReceiverStream<Result<LogsResponse, Status>>, Status> {
    let tail = match req.tail {
        0 => None,
        n if n > 0 => Some(n as u64),
        n => return Err(Status::invalid_argument(format!("invalid tail {n}"))),
    };
    let since = req.since.as_ref().map(since_time).transpose()?;
    let (process, io) = container.io(&req.exec_id).map_err(to_status)?;
    let view = io
        .output
        .view(req.follow)
        .map_err(|e| Status::internal(format!("reading the log: {e}")))?;
    let records = view
        .history
        .select(Filter { tail, since })
        .map_err(|e| Status::internal(format!("reading the log: {e}")))?;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let mut follower = Follower::new(view.live, process.finished_watch());
    tokio::spawn(async move {
        for r in records {
            let msg = r
                .map(logs_response)
                .map_err(|e| Status::internal(format!("reading the log: {e}")));
            let failed = msg.is_err();
            if tx.send(msg).await.is_err() || failed {
                return;
            }
        }
        if !req.follow {
            return;
        }
        loop {
            let msg = match next_live(&mut follower, &mut shutdown).await {
                Next::Chunk(c) if since.is_some_and(|s| c.at < s) => continue,
                Next::Chunk(c) => Ok(LogsResponse {
                    stream: std_stream(c.stream) as i32,
                    timestamp: Some(to_timestamp(&c.at)),
                    data: c.data.to_vec(),
                }),
                Next::CutOff => Err(Status::data_loss(
                    "took no output for too long and was cut off; read again with since",
                )),
                Next::End => return,
            };
            let failed = msg.is_err();
            if tx.send(msg).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

pub async fn attach(
    container: Arc<Container>,
    mut inbound: Streaming<AttachRequest>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<ReceiverStream<Result<AttachResponse, Status>>, Status> {
    let opts = match inbound.message().await? {
        Some(AttachRequest {
            payload: Some(attach_request::Payload::Options(o)),
        }) => o,
        _ => {
            return Err(Status::invalid_argument(
                "the first attach message must carry the options",
            ))
        }
    };
    let (process, io) = container.io(&opts.exec_id).map_err(to_status)?;
    let view = io
        .output
        .view(true)
        .map_err(|e| Status::internal(format!("reading the log: {e}")))?;
    let replay = if opts.logs {
        Some(
            view.history
                .select(Filter::default())
                .map_err(|e| Status::internal(format!("reading the log: {e}")))?,
        )
    } else {
        None
    };
    let input = tokio::spawn(forward_input(inbound, io.clone(), opts.clone()));
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let wanted = move |s: StreamKind| match s {
        StreamKind::Stdout => opts.stdout,
        StreamKind::Stderr => opts.stderr,
    };
    let mut follower = Follower::new(view.live, process.finished_watch());
    tokio::spawn(async move {
        let _stop_input = AbortOnDrop(input);
        for r in replay.into_iter().flatten() {
            match r {
                Ok(r) if wanted(r.stream) => {
                    if tx
                        .send(Ok(output_frame(r.stream, r.into_bytes())))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::internal(format!("reading the log: {e}"))))
                        .await;
                    return;
                }
            }
        }
        loop {
            match next_live(&mut follower, &mut shutdown).await {
                Next::Chunk(c) if wanted(c.stream) => {
                    let Chunk { stream, data, .. } = c;
                    if tx
                        .send(Ok(output_frame(stream, data.to_vec())))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Next::Chunk(_) => {}
                Next::CutOff => {
                    // The client stopped reading; what it missed is in the log.
                    let _ = tx
                        .send(Err(Status::data_loss(
                            "took no output for too long and was cut off; read the logs",
                        )))
                        .await;
                    return;
                }
                Next::End => break,
            }
        }
        if let Some(exit) = process.exit() {
            let frame = AttachResponse {
                payload: Some(attach_response::Payload::Exit(wait_response(&exit))),
            };
            let _ = tx.send(Ok(frame)).await;
        }
    });
    Ok(ReceiverStream::new(rx))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Feeds an attacher's stdin, stdin close and resizes to the process until the client stops
/// sending. A client that goes away does not close the process's stdin.
async fn forward_input(
    mut inbound: Streaming<AttachRequest>,
    io: Arc<ProcessIo>,
    opts: AttachOptions,
) {
    loop {
        let payload = match inbound.message().await {
            Ok(Some(AttachRequest { payload: Some(p) })) => p,
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return,
        };
        match payload {
            attach_request::Payload::Stdin(data) if opts.stdin => {
                if let Err(e) = io.write_stdin(&data).await {
                    tracing::debug!(exec_id = %opts.exec_id, error = %e, "stdin write failed");
                }
            }
            attach_request::Payload::CloseStdin(true) if opts.stdin => io.close_stdin().await,
            attach_request::Payload::Resize(r) => {
                match (u16::try_from(r.width), u16::try_from(r.height)) {
                    (Ok(w), Ok(h)) => {
                        if let Err(e) = io.resize(w, h) {
                            tracing::debug!(exec_id = %opts.exec_id, error = %e, "resize failed");
                        }
                    }
                    _ => tracing::debug!(exec_id = %opts.exec_id, "resize out of range"),
                }
            }
            _ => {}
        }
    }
}

pub fn events(
    container: &Container,
    mut shutdown: watch::Receiver<bool>,
) -> ReceiverStream<Result<ShimEvent, Status>> {
    let mut events = container.ctx.events.subscribe();
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let event = match event {
                Ok(Event::Exit { exec_id, exit }) => shim_event::Event::Exit(ProcessExit {
                    exec_id,
                    pid: exit.pid,
                    exit_status: exit.status,
                    exited_at: Some(to_timestamp(&exit.at)),
                }),
                Ok(Event::Oom { at }) => shim_event::Event::Oom(Oom {
                    at: Some(to_timestamp(&at)),
                }),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // Ending the stream makes the subscriber resubscribe and catch up with
                    // State, rather than silently miss an exit.
                    tracing::warn!(missed = n, "an event subscriber fell behind");
                    let _ = tx
                        .send(Err(Status::data_loss(format!(
                            "fell {n} events behind; read State and subscribe again"
                        ))))
                        .await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let msg = ShimEvent { event: Some(event) };
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}
