//! The relay against a stand-in Tasks service on a unix socket: output bytes, the exit
//! frame, the Wait fallback and the attach options, without a daemon or a container.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use futures::Stream;
use sup_client::api::tasks_server::{Tasks, TasksServer};
use sup_client::api::*;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status, Streaming};

use super::{attach, Output, Relayed, Signals, StdioOptions};

type Reply<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What the fake says on Attach, and what it saw.
#[derive(Default)]
struct Script {
    frames: Vec<AttachResponse>,
    wait_status: u32,
    seen_options: Mutex<Option<AttachOptions>>,
    waits: Mutex<u32>,
}

#[derive(Clone)]
struct FakeTasks(Arc<Script>);

fn unused<T>() -> Reply<T> {
    Err(Status::unimplemented("not in this fake"))
}

#[tonic::async_trait]
impl Tasks for FakeTasks {
    async fn create(&self, _: Request<CreateTaskRequest>) -> Reply<CreateTaskResponse> {
        unused()
    }
    async fn start(&self, _: Request<StartRequest>) -> Reply<StartResponse> {
        unused()
    }
    async fn delete(&self, _: Request<DeleteTaskRequest>) -> Reply<DeleteResponse> {
        unused()
    }
    async fn delete_process(&self, _: Request<DeleteProcessRequest>) -> Reply<DeleteResponse> {
        unused()
    }
    async fn get(&self, _: Request<GetTaskRequest>) -> Reply<GetTaskResponse> {
        unused()
    }
    async fn list(&self, _: Request<ListTasksRequest>) -> Reply<ListTasksResponse> {
        unused()
    }
    async fn kill(&self, _: Request<KillRequest>) -> Reply<()> {
        unused()
    }
    async fn exec(&self, _: Request<ExecProcessRequest>) -> Reply<()> {
        unused()
    }
    async fn resize_pty(&self, _: Request<ResizePtyRequest>) -> Reply<()> {
        unused()
    }
    async fn close_io(&self, _: Request<CloseIoRequest>) -> Reply<()> {
        unused()
    }
    async fn pause(&self, _: Request<PauseTaskRequest>) -> Reply<()> {
        unused()
    }
    async fn resume(&self, _: Request<ResumeTaskRequest>) -> Reply<()> {
        unused()
    }
    async fn list_pids(&self, _: Request<ListPidsRequest>) -> Reply<ListPidsResponse> {
        unused()
    }
    async fn update(&self, _: Request<UpdateTaskRequest>) -> Reply<()> {
        unused()
    }
    async fn metrics(&self, _: Request<MetricsRequest>) -> Reply<MetricsResponse> {
        unused()
    }
    async fn wait(&self, _: Request<WaitRequest>) -> Reply<WaitResponse> {
        *self.0.waits.lock().expect("lock") += 1;
        Ok(Response::new(WaitResponse {
            exit_status: self.0.wait_status,
            ..Default::default()
        }))
    }

    type AttachStream = BoxStream<AttachResponse>;

    async fn attach(&self, req: Request<Streaming<AttachRequest>>) -> Reply<Self::AttachStream> {
        let mut input = req.into_inner();
        let first = input.message().await?.and_then(|m| m.payload);
        let Some(attach_request::Payload::Options(options)) = first else {
            return Err(Status::invalid_argument("options first"));
        };
        *self.0.seen_options.lock().expect("lock") = Some(options);
        let frames: Vec<Result<AttachResponse, Status>> =
            self.0.frames.iter().cloned().map(Ok).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(frames))))
    }

    type LogsStream = BoxStream<LogsResponse>;

    async fn logs(&self, _: Request<LogsRequest>) -> Reply<Self::LogsStream> {
        unused()
    }
}

/// An in-memory writer whose bytes the test reads afterwards.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().expect("lock").clone()
    }
}

impl tokio::io::AsyncWrite for Captured {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn frame(stream: StdStream, data: &[u8]) -> AttachResponse {
    AttachResponse {
        payload: Some(attach_response::Payload::Output(OutputFrame {
            stream: stream as i32,
            data: data.to_vec(),
        })),
    }
}

fn exit(status: u32) -> AttachResponse {
    AttachResponse {
        payload: Some(attach_response::Payload::Exit(WaitResponse {
            exit_status: status,
            ..Default::default()
        })),
    }
}

/// Serves the fake on a socket in a temporary directory and returns a client for it.
async fn serve(script: Arc<Script>) -> (sup_client::Client, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "supctl-relay-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let socket = dir.join("s.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TasksServer::new(FakeTasks(script)))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    let client = sup_client::Client::connect(socket.to_str().expect("utf-8 path"))
        .await
        .expect("connect");
    (client, dir)
}

fn signals() -> Signals {
    Signals::catch().expect("signal handlers")
}

fn options(exec_id: &str) -> StdioOptions {
    StdioOptions {
        container_id: "t1".into(),
        exec_id: exec_id.into(),
        stdin: false,
        close_stdin: false,
        tty: false,
    }
}

#[tokio::test]
async fn output_is_byte_exact_and_exit_comes_from_the_stream() {
    let script = Arc::new(Script {
        frames: vec![
            frame(StdStream::Stdout, b"hel"),
            frame(StdStream::Stderr, b"oops"),
            frame(StdStream::Stdout, b"lo\n\0\xff"),
            exit(3),
        ],
        wait_status: 99,
        ..Default::default()
    });
    let (client, dir) = serve(script.clone()).await;
    let (out, err) = (Captured::default(), Captured::default());
    let attached = attach(&client, options("e1")).await.expect("attach");
    let relayed = attached
        .relay_to(Output::new(out.clone(), err.clone()), signals())
        .await
        .expect("relay");
    let Relayed::Exited(result) = relayed else {
        panic!("not an exit: {relayed:?}");
    };
    assert_eq!(result.exit_status, 3);
    assert_eq!(out.bytes(), b"hello\n\0\xff");
    assert_eq!(err.bytes(), b"oops");
    assert_eq!(*script.waits.lock().expect("lock"), 0);
    let seen = script.seen_options.lock().expect("lock").clone();
    let seen = seen.expect("options sent");
    assert_eq!(
        (seen.container_id.as_str(), seen.exec_id.as_str()),
        ("t1", "e1")
    );
    assert!(seen.stdout && seen.stderr && !seen.stdin && !seen.logs);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn stream_without_exit_falls_back_to_wait() {
    let script = Arc::new(Script {
        frames: vec![frame(StdStream::Stdout, b"bye")],
        wait_status: 137,
        ..Default::default()
    });
    let (client, dir) = serve(script.clone()).await;
    let out = Captured::default();
    let attached = attach(&client, options("")).await.expect("attach");
    let relayed = attached
        .relay_to(Output::new(out.clone(), Captured::default()), signals())
        .await
        .expect("relay");
    let Relayed::Exited(result) = relayed else {
        panic!("not an exit: {relayed:?}");
    };
    assert_eq!(result.exit_status, 137);
    assert_eq!(out.bytes(), b"bye");
    assert_eq!(*script.waits.lock().expect("lock"), 1);
    let _ = std::fs::remove_dir_all(dir);
}
