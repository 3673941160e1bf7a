//! gRPC adaptor of the Tasks service. Attach and Logs are relayed frame for frame to the
//! task's shim, which holds the stdio.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures::{Stream, StreamExt};
use sup_proto::v1::{self as api, tasks_server::Tasks};
use tonic::{Request, Response, Status, Streaming};

use super::convert::{from_timestamp, namespace, settled, status, timestamp, RpcResult};
use crate::error::Error;
use crate::filters::{Filter, Filterable};
use crate::service::tasks::attach::{AttachInput, AttachOptions, AttachOutput, LogsOptions};
use crate::service::tasks::{ExecProcess, ProcessStatus, TaskStatus};
use crate::service::Services;

pub struct TasksApi(pub Arc<Services>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What a client's attach message after the first asks of the process, if anything.
fn attach_in(m: api::AttachRequest) -> Option<AttachInput> {
    match m.payload? {
        api::attach_request::Payload::Stdin(data) => Some(AttachInput::Stdin(data)),
        api::attach_request::Payload::CloseStdin(true) => Some(AttachInput::CloseStdin),
        api::attach_request::Payload::Resize(r) => Some(AttachInput::Resize {
            width: r.width,
            height: r.height,
        }),
        _ => None,
    }
}

fn attach_out(o: AttachOutput) -> api::AttachResponse {
    let payload = match o {
        AttachOutput::Stdout(data) => api::attach_response::Payload::Output(api::OutputFrame {
            stream: api::StdStream::Stdout as i32,
            data,
        }),
        AttachOutput::Stderr(data) => api::attach_response::Payload::Output(api::OutputFrame {
            stream: api::StdStream::Stderr as i32,
            data,
        }),
        AttachOutput::Exit(w) => api::attach_response::Payload::Exit(api::WaitResponse {
            exit_status: w.exit_status,
            exited_at: w.exited_at.map(timestamp),
            reason: w.reason,
        }),
    };
    api::AttachResponse {
        payload: Some(payload),
    }
}

fn status_out(s: TaskStatus) -> api::TaskStatus {
    match s {
        TaskStatus::Unknown => api::TaskStatus::Unknown,
        TaskStatus::Created => api::TaskStatus::Created,
        TaskStatus::Running => api::TaskStatus::Running,
        TaskStatus::Stopped => api::TaskStatus::Stopped,
        TaskStatus::Paused => api::TaskStatus::Paused,
        TaskStatus::Pausing => api::TaskStatus::Pausing,
    }
}

fn process_out(id: &str, p: &ProcessStatus) -> api::Process {
    api::Process {
        container_id: id.to_string(),
        exec_id: p.exec_id.clone(),
        pid: p.pid,
        status: status_out(p.status) as i32,
        terminal: p.terminal,
        exit_status: p.exit_status,
        exited_at: p.exited_at.map(timestamp),
        reason: p.reason.clone(),
    }
}

struct Listed(api::Process);

impl Filterable for Listed {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["id"] | ["container_id"] => Some(self.0.container_id.clone()),
            ["status"] => Some(
                api::TaskStatus::try_from(self.0.status)
                    .map(|s| {
                        s.as_str_name()
                            .trim_start_matches("TASK_STATUS_")
                            .to_ascii_lowercase()
                    })
                    .unwrap_or_default(),
            ),
            _ => None,
        }
    }
}

fn u(v: &serde_json::Value, path: &str) -> u64 {
    v.pointer(path).and_then(|x| x.as_u64()).unwrap_or(0)
}

/// Metrics from the runtime's stats document (the same shape on cgroup v1 and v2).
fn metrics_out(id: &str, stats: &serde_json::Value) -> api::TaskMetrics {
    let d = stats.get("data").unwrap_or(stats);
    let mut io = api::IoStats::default();
    if let Some(entries) = d
        .pointer("/blkio/ioServiceBytesRecursive")
        .and_then(|v| v.as_array())
    {
        for e in entries {
            let value = e.get("value").and_then(|v| v.as_u64()).unwrap_or(0);
            match e
                .get("op")
                .and_then(|v| v.as_str())
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("read") => io.read_bytes += value,
                Some("write") => io.write_bytes += value,
                _ => {}
            }
        }
    }
    api::TaskMetrics {
        container_id: id.to_string(),
        timestamp: Some(timestamp(SystemTime::now())),
        cpu: Some(api::CpuStats {
            usage_total: u(d, "/cpu/usage/total"),
            usage_user: u(d, "/cpu/usage/user"),
            usage_kernel: u(d, "/cpu/usage/kernel"),
            throttled_periods: u(d, "/cpu/throttling/throttledPeriods"),
            throttled_time: u(d, "/cpu/throttling/throttledTime"),
            pressure: pressure(d, "/cpu/psi"),
        }),
        memory: Some(api::MemoryStats {
            usage: u(d, "/memory/usage/usage"),
            limit: u(d, "/memory/usage/limit"),
            max_usage: u(d, "/memory/usage/max"),
            rss: u(d, "/memory/raw/rss").max(u(d, "/memory/raw/anon")),
            cache: u(d, "/memory/raw/cache").max(u(d, "/memory/raw/file")),
            // sup-shim's own count; runc's document has none.
            oom_kills: u(d, "/memory/oomKills").max(u(d, "/memory/raw/oom_kill")),
            pressure: pressure(d, "/memory/psi"),
        }),
        pids: Some(api::PidsStats {
            current: u(d, "/pids/current"),
            limit: u(d, "/pids/limit"),
        }),
        io: Some(api::IoStats {
            pressure: pressure(d, "/blkio/psi"),
            ..io
        }),
    }
}

/// The stats document's `psi` object at `at` (runc 1.2's shape), if there is one.
fn pressure(d: &serde_json::Value, at: &str) -> Option<api::Pressure> {
    let p = d.pointer(at)?;
    let f = |k: &str| p.pointer(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
    let n = |k: &str| p.pointer(k).and_then(|v| v.as_u64()).unwrap_or(0);
    Some(api::Pressure {
        some_avg10: f("/some/avg10"),
        some_avg60: f("/some/avg60"),
        some_avg300: f("/some/avg300"),
        some_total: n("/some/total"),
        full_avg10: f("/full/avg10"),
        full_avg60: f("/full/avg60"),
        full_avg300: f("/full/avg300"),
        full_total: n("/full/total"),
    })
}

fn delete_out(id: &str, p: &ProcessStatus) -> api::DeleteResponse {
    api::DeleteResponse {
        container_id: id.to_string(),
        exec_id: p.exec_id.clone(),
        pid: p.pid,
        exit_status: p.exit_status,
        exited_at: p.exited_at.map(timestamp),
    }
}

#[tonic::async_trait]
impl Tasks for TasksApi {
    async fn create(
        &self,
        req: Request<api::CreateTaskRequest>,
    ) -> RpcResult<api::CreateTaskResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let (svc, id) = (self.0.clone(), r.container_id.clone());
        let task = settled(async move { svc.task_create(&ns, &id, r.stdin).await }).await?;
        Ok(Response::new(api::CreateTaskResponse {
            container_id: r.container_id,
            pid: task.pid,
        }))
    }

    async fn start(&self, req: Request<api::StartRequest>) -> RpcResult<api::StartResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let svc = self.0.clone();
        let pid =
            settled(async move { svc.task_start(&ns, &r.container_id, &r.exec_id).await }).await?;
        Ok(Response::new(api::StartResponse { pid }))
    }

    async fn delete(&self, req: Request<api::DeleteTaskRequest>) -> RpcResult<api::DeleteResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let (svc, id) = (self.0.clone(), r.container_id.clone());
        let p = settled(async move { svc.task_delete(&ns, &id, r.force).await }).await?;
        Ok(Response::new(delete_out(&r.container_id, &p)))
    }

    async fn delete_process(
        &self,
        req: Request<api::DeleteProcessRequest>,
    ) -> RpcResult<api::DeleteResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let (svc, id, exec_id) = (self.0.clone(), r.container_id.clone(), r.exec_id.clone());
        let p = settled(async move { svc.task_delete_process(&ns, &id, &exec_id).await }).await?;
        Ok(Response::new(delete_out(&r.container_id, &p)))
    }

    async fn get(&self, req: Request<api::GetTaskRequest>) -> RpcResult<api::GetTaskResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let p = self
            .0
            .process_status(&ns, &r.container_id, &r.exec_id)
            .await
            .map_err(status)?;
        Ok(Response::new(api::GetTaskResponse {
            process: Some(process_out(&r.container_id, &p)),
        }))
    }

    async fn list(&self, req: Request<api::ListTasksRequest>) -> RpcResult<api::ListTasksResponse> {
        let ns = namespace(&req)?;
        let filter = Filter::parse(&req.into_inner().filters).map_err(status)?;
        let mut tasks = Vec::new();
        for t in self.0.task_list(&ns) {
            match self.0.process_status(&ns, &t.id, "").await {
                Ok(p) => {
                    let listed = Listed(process_out(&t.id, &p));
                    if filter.matches(&listed) {
                        tasks.push(listed.0);
                    }
                }
                // Deleted meanwhile.
                Err(Error::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(id = %t.id, error = %e, "task status unavailable");
                    tasks.push(api::Process {
                        container_id: t.id.clone(),
                        pid: t.pid,
                        status: api::TaskStatus::Unknown as i32,
                        reason: e.to_string(),
                        ..Default::default()
                    });
                }
            }
        }
        Ok(Response::new(api::ListTasksResponse { tasks }))
    }

    async fn kill(&self, req: Request<api::KillRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let svc = self.0.clone();
        settled(async move {
            svc.task_kill(&ns, &r.container_id, &r.exec_id, r.signal, r.all)
                .await
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn exec(&self, req: Request<api::ExecProcessRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| Status::invalid_argument("exec: spec is required"))?;
        let spec = ExecProcess {
            args: spec.args,
            env: spec.env,
            cwd: spec.cwd,
            user: spec.user,
            terminal: spec.terminal,
        };
        let svc = self.0.clone();
        settled(async move {
            svc.task_exec(&ns, &r.container_id, &r.exec_id, &spec, r.stdin)
                .await
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn resize_pty(&self, req: Request<api::ResizePtyRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.0
            .task_resize(&ns, &r.container_id, &r.exec_id, r.width, r.height)
            .await
            .map_err(status)?;
        Ok(Response::new(()))
    }

    async fn close_io(&self, req: Request<api::CloseIoRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.0
            .task_close_stdin(&ns, &r.container_id, &r.exec_id)
            .await
            .map_err(status)?;
        Ok(Response::new(()))
    }

    async fn pause(&self, req: Request<api::PauseTaskRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        self.0.task_pause(&ns, &id, true).await.map_err(status)?;
        Ok(Response::new(()))
    }

    async fn resume(&self, req: Request<api::ResumeTaskRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        self.0.task_pause(&ns, &id, false).await.map_err(status)?;
        Ok(Response::new(()))
    }

    async fn list_pids(
        &self,
        req: Request<api::ListPidsRequest>,
    ) -> RpcResult<api::ListPidsResponse> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        let processes = self.0.task_pids(&ns, &id).await.map_err(status)?;
        let processes = processes
            .into_iter()
            .map(|p| api::ProcessInfo {
                pid: p.pid,
                exec_id: p.exec_id,
            })
            .collect();
        Ok(Response::new(api::ListPidsResponse { processes }))
    }

    async fn update(&self, req: Request<api::UpdateTaskRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let res = r
            .resources
            .ok_or_else(|| Status::invalid_argument("update: resources are required"))?;
        let res =
            crate::spec::resources(res.memory_limit, res.cpus, res.cpu_shares, res.pids_limit)
                .map_err(status)?;
        self.0
            .task_update_resources(&ns, &r.container_id, &res)
            .await
            .map_err(status)?;
        Ok(Response::new(()))
    }

    async fn metrics(&self, req: Request<api::MetricsRequest>) -> RpcResult<api::MetricsResponse> {
        let ns = namespace(&req)?;
        let ids = req.into_inner().container_ids;
        let ids: Vec<String> = if ids.is_empty() {
            self.0.task_list(&ns).iter().map(|t| t.id.clone()).collect()
        } else {
            ids
        };
        let mut metrics = Vec::new();
        for id in ids {
            let stats = self.0.task_stats(&ns, &id).await.map_err(status)?;
            metrics.push(metrics_out(&id, &stats));
        }
        Ok(Response::new(api::MetricsResponse { metrics }))
    }

    async fn wait(&self, req: Request<api::WaitRequest>) -> RpcResult<api::WaitResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let w = self
            .0
            .task_wait(&ns, &r.container_id, &r.exec_id)
            .await
            .map_err(status)?;
        Ok(Response::new(api::WaitResponse {
            exit_status: w.exit_status,
            exited_at: w.exited_at.map(timestamp),
            reason: w.reason,
        }))
    }

    type AttachStream = BoxStream<api::AttachResponse>;

    async fn attach(
        &self,
        req: Request<Streaming<api::AttachRequest>>,
    ) -> RpcResult<Self::AttachStream> {
        let ns = namespace(&req)?;
        let mut input = req.into_inner();
        let first = input.message().await?.ok_or_else(|| {
            Status::invalid_argument("attach: the first message must carry the options")
        })?;
        let Some(api::attach_request::Payload::Options(o)) = first.payload else {
            return Err(Status::invalid_argument(
                "attach: the first message must carry the options",
            ));
        };
        let opts = AttachOptions {
            exec_id: o.exec_id,
            stdin: o.stdin,
            stdout: o.stdout,
            stderr: o.stderr,
            logs: o.logs,
        };
        let attached = self
            .0
            .task_attach(&ns, &o.container_id, &opts)
            .await
            .map_err(status)?;
        // Relay the client's stdin and resizes to the task as they come.
        let to_task = attached.input;
        tokio::spawn(async move {
            while let Ok(Some(m)) = input.message().await {
                let Some(i) = attach_in(m) else { continue };
                if to_task.send(i).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            attached.output.map(|r| r.map(attach_out).map_err(status)),
        )))
    }

    type LogsStream = BoxStream<api::LogsResponse>;

    async fn logs(&self, req: Request<api::LogsRequest>) -> RpcResult<Self::LogsStream> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let out = self
            .0
            .task_logs(
                &ns,
                &r.container_id,
                &LogsOptions {
                    exec_id: r.exec_id,
                    follow: r.follow,
                    tail: r.tail,
                    since: r.since.as_ref().map(from_timestamp),
                },
            )
            .await
            .map_err(status)?;
        Ok(Response::new(Box::pin(out.map(|r| {
            r.map(|l| api::LogsResponse {
                stream: if l.stderr {
                    api::StdStream::Stderr
                } else {
                    api::StdStream::Stdout
                } as i32,
                data: l.data,
                timestamp: l.at.map(timestamp),
            })
            .map_err(status)
        }))))
    }
}
