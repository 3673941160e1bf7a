//! The gRPC adaptor: `sup.shim.v1.Shim` over the container. Requests become calls on
//! `process::Container`; its errors become statuses with the code a caller can act on.

mod streams;

use std::path::PathBuf;
use std::sync::Arc;

use sup_proto::shim::shim_server::Shim;
use sup_proto::shim::{
    CloseIoRequest, CreateRequest, CreateResponse, DeleteRequest, DeleteResponse, ExecRequest,
    InfoResponse, KillRequest, PidsResponse, ProcessState, ShimEvent, StartRequest, StartResponse,
    StateRequest, StateResponse, StatsResponse, UpdateRequest, WaitRequest,
};
use sup_proto::v1::{
    AttachRequest, AttachResponse, LogsRequest, LogsResponse, ProcessInfo, ResizePtyRequest,
    TaskStatus, WaitResponse,
};
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::error::Error;
use crate::process::exit::Exit;
use crate::process::state::Status as ProcStatus;
use crate::process::{Container, CreateSpec, ProcessSummary};

type RpcResult<T> = Result<Response<T>, Status>;

pub struct ShimService {
    container: Arc<Container>,
    /// Set by Shutdown: the server stops and the streams end.
    shutdown: watch::Sender<bool>,
}

impl ShimService {
    pub fn new(container: Arc<Container>, shutdown: watch::Sender<bool>) -> ShimService {
        ShimService {
            container,
            shutdown,
        }
    }

    fn span(&self, method: &'static str, exec_id: &str) -> tracing::Span {
        let ctx = &self.container.ctx;
        tracing::info_span!("rpc", method, namespace = %ctx.namespace, id = %ctx.id, exec_id)
    }
}

/// Runs a call inside the RPC's span, logging a failure there before it becomes a status.
async fn traced<T>(
    span: tracing::Span,
    call: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Status> {
    async move {
        call.await.map_err(|e| {
            tracing::info!(error = %e, "request failed");
            to_status(e)
        })
    }
    .instrument(span)
    .await
}

/// Runs a call that changes the container to its end even if the caller goes away (supd may
/// be killed mid-call): a cancelled future could stop between the runtime's work and the
/// shim's record of it, leaving a process half-started or a start marked as under way forever.
async fn settled<T: Send + 'static>(
    span: tracing::Span,
    call: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(traced(span, call))
        .await
        .map_err(|e| Status::internal(format!("the call failed: {e}")))?
}

/// The one conversion from the shim's errors to gRPC statuses.
pub fn to_status(e: Error) -> Status {
    let msg = e.to_string();
    match e {
        Error::NotFound(_) => Status::not_found(msg),
        Error::AlreadyExists(_) => Status::already_exists(msg),
        Error::InvalidArgument(_) => Status::invalid_argument(msg),
        Error::FailedPrecondition(_) => Status::failed_precondition(msg),
        Error::Runtime(_) | Error::Io { .. } | Error::Internal(_) => Status::internal(msg),
    }
}

pub(crate) fn to_timestamp(at: &chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        // chrono reports a leap second as nanos >= 1e9, which a Timestamp cannot hold.
        nanos: at.timestamp_subsec_nanos().min(999_999_999) as i32,
    }
}

fn task_status(s: ProcStatus) -> TaskStatus {
    match s {
        ProcStatus::Created => TaskStatus::Created,
        ProcStatus::Running => TaskStatus::Running,
        ProcStatus::Paused => TaskStatus::Paused,
        ProcStatus::Stopped | ProcStatus::Deleted => TaskStatus::Stopped,
    }
}

fn process_state(p: &ProcessSummary) -> ProcessState {
    ProcessState {
        exec_id: p.exec_id.clone(),
        pid: p.pid,
        status: task_status(p.status) as i32,
        exit_status: p.exit.map_or(0, |e| e.status),
        exited_at: p.exit.map(|e| to_timestamp(&e.at)),
    }
}

fn wait_response(exit: &Exit) -> WaitResponse {
    WaitResponse {
        exit_status: exit.status,
        exited_at: Some(to_timestamp(&exit.at)),
        reason: String::new(),
    }
}

#[tonic::async_trait]
impl Shim for ShimService {
    async fn info(&self, _: Request<()>) -> RpcResult<InfoResponse> {
        Ok(Response::new(InfoResponse {
            shim_pid: std::process::id(),
            task_pid: self.container.task_pid(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    async fn create(&self, req: Request<CreateRequest>) -> RpcResult<CreateResponse> {
        let req = req.into_inner();
        let spec = CreateSpec {
            bundle: PathBuf::from(req.bundle),
            runtime: req.runtime,
            stdin: req.stdin,
            terminal: req.terminal,
            cri_log_path: (!req.cri_log_path.is_empty()).then(|| PathBuf::from(req.cri_log_path)),
            systemd_cgroup: req.systemd_cgroup,
        };
        let c = self.container.clone();
        let pid = settled(self.span("Create", ""), async move { c.create(spec).await }).await?;
        Ok(Response::new(CreateResponse { pid }))
    }

    async fn start(&self, req: Request<StartRequest>) -> RpcResult<StartResponse> {
        let exec_id = req.into_inner().exec_id;
        let c = self.container.clone();
        let span = self.span("Start", &exec_id);
        let pid = settled(span, async move { c.start(&exec_id).await }).await?;
        Ok(Response::new(StartResponse { pid }))
    }

    async fn state(&self, req: Request<StateRequest>) -> RpcResult<StateResponse> {
        let exec_id = req.into_inner().exec_id;
        let p = self.container.process(&exec_id).map_err(to_status)?;
        let this = self.container.summary(&p);
        let processes = self.container.summaries();
        Ok(Response::new(StateResponse {
            exec_id,
            pid: this.pid,
            status: task_status(this.status) as i32,
            terminal: this.terminal,
            stdin: this.stdin,
            exit_status: this.exit.map_or(0, |e| e.status),
            exited_at: this.exit.map(|e| to_timestamp(&e.at)),
            processes: processes.iter().map(process_state).collect(),
        }))
    }

    async fn kill(&self, req: Request<KillRequest>) -> RpcResult<()> {
        let req = req.into_inner();
        let c = self.container.clone();
        let span = self.span("Kill", &req.exec_id);
        settled(span, async move {
            c.kill(&req.exec_id, req.signal, req.all).await
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn exec(&self, req: Request<ExecRequest>) -> RpcResult<()> {
        let req = req.into_inner();
        traced(self.span("Exec", &req.exec_id), async {
            self.container
                .add_exec(&req.exec_id, &req.process, req.stdin)
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> RpcResult<DeleteResponse> {
        let exec_id = req.into_inner().exec_id;
        let c = self.container.clone();
        let span = self.span("Delete", &exec_id);
        let exit = settled(span, async move { c.delete(&exec_id).await }).await?;
        Ok(Response::new(DeleteResponse {
            pid: exit.pid,
            exit_status: exit.status,
            exited_at: Some(to_timestamp(&exit.at)),
        }))
    }

    async fn wait(&self, req: Request<WaitRequest>) -> RpcResult<WaitResponse> {
        let exec_id = req.into_inner().exec_id;
        let mut shutdown = self.shutdown.subscribe();
        let waited = traced(self.span("Wait", &exec_id), self.container.wait(&exec_id));
        tokio::select! {
            exit = waited => Ok(Response::new(wait_response(&exit?))),
            _ = shutdown.wait_for(|s| *s) => Err(Status::unavailable("the shim is shutting down")),
        }
    }

    async fn pause(&self, _: Request<()>) -> RpcResult<()> {
        let c = self.container.clone();
        settled(self.span("Pause", ""), async move { c.pause().await }).await?;
        Ok(Response::new(()))
    }

    async fn resume(&self, _: Request<()>) -> RpcResult<()> {
        let c = self.container.clone();
        settled(self.span("Resume", ""), async move { c.resume().await }).await?;
        Ok(Response::new(()))
    }

    async fn pids(&self, _: Request<()>) -> RpcResult<PidsResponse> {
        let pids = traced(self.span("Pids", ""), self.container.pids()).await?;
        Ok(Response::new(PidsResponse {
            processes: pids
                .into_iter()
                .map(|(pid, exec_id)| ProcessInfo { pid, exec_id })
                .collect(),
        }))
    }

    async fn update(&self, req: Request<UpdateRequest>) -> RpcResult<()> {
        let c = self.container.clone();
        let resources = req.into_inner().resources;
        settled(self.span("Update", ""), async move {
            c.update(&resources).await
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn stats(&self, _: Request<()>) -> RpcResult<StatsResponse> {
        let stats = traced(self.span("Stats", ""), self.container.stats()).await?;
        Ok(Response::new(StatsResponse { stats }))
    }

    async fn resize_pty(&self, req: Request<ResizePtyRequest>) -> RpcResult<()> {
        let req = req.into_inner();
        traced(self.span("ResizePty", &req.exec_id), async {
            self.container
                .resize_pty(&req.exec_id, req.width, req.height)
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn close_io(&self, req: Request<CloseIoRequest>) -> RpcResult<()> {
        let exec_id = req.into_inner().exec_id;
        traced(
            self.span("CloseIO", &exec_id),
            self.container.close_io(&exec_id),
        )
        .await?;
        Ok(Response::new(()))
    }

    type AttachStream = ReceiverStream<Result<AttachResponse, Status>>;

    async fn attach(
        &self,
        req: Request<Streaming<AttachRequest>>,
    ) -> RpcResult<Self::AttachStream> {
        streams::attach(
            self.container.clone(),
            req.into_inner(),
            self.shutdown.subscribe(),
        )
        .await
        .map(Response::new)
    }

    type LogsStream = ReceiverStream<Result<LogsResponse, Status>>;

    async fn logs(&self, req: Request<LogsRequest>) -> RpcResult<Self::LogsStream> {
        streams::logs(
            self.container.clone(),
            req.into_inner(),
            self.shutdown.subscribe(),
        )
        .map(Response::new)
    }

    type EventsStream = ReceiverStream<Result<ShimEvent, Status>>;

    async fn events(&self, _: Request<()>) -> RpcResult<Self::EventsStream> {
        Ok(Response::new(streams::events(
            &self.container,
            self.shutdown.subscribe(),
        )))
    }

    async fn shutdown(&self, _: Request<()>) -> RpcResult<()> {
        traced(self.span("Shutdown", ""), async {
            self.container.check_shutdown()?;
            self.container.stop_watchers();
            tracing::info!("shutting down");
            self.shutdown.send_replace(true);
            Ok(())
        })
        .await?;
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let at = chrono::DateTime::parse_from_rfc3339("2024-05-01T10:00:00.5Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let ts = to_timestamp(&at);
        assert_eq!((ts.seconds, ts.nanos), (1714557600, 500_000_000));
    }

    #[test]
    fn error_codes() {
        let code = |e| to_status(e).code();
        assert_eq!(code(Error::NotFound("x".into())), tonic::Code::NotFound);
        assert_eq!(
            code(Error::AlreadyExists("x".into())),
            tonic::Code::AlreadyExists
        );
        assert_eq!(
            code(Error::InvalidArgument("x".into())),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(Error::FailedPrecondition("x".into())),
            tonic::Code::FailedPrecondition
        );
        let runtime = to_status(Error::Runtime(crate::runc::RuncError::Failed {
            command: "runc start".into(),
            status: 1,
            message: "boom".into(),
        }));
        assert_eq!(runtime.code(), tonic::Code::Internal);
        assert_eq!(runtime.message(), "runc start: exit status 1: boom");
    }
}
