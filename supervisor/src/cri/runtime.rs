//! The CRI RuntimeService gRPC adaptor: requests in, `Cri` calls, responses out; errors
//! become statuses in `status::status`.

use std::pin::Pin;
use std::sync::Arc;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Cri;
use crate::status::status;

type Rpc<T> = std::result::Result<Response<T>, Status>;

/// The RuntimeService, over the shared `Cri` state.
#[derive(Clone)]
pub struct CriRuntime(pub Arc<Cri>);

impl CriRuntime {
    pub fn new(cri: Arc<Cri>) -> CriRuntime {
        CriRuntime(cri)
    }
}

fn ok<T>(v: T) -> Rpc<T> {
    Ok(Response::new(v))
}

#[tonic::async_trait]
impl RuntimeService for CriRuntime {
    async fn version(&self, _req: Request<cri::VersionRequest>) -> Rpc<cri::VersionResponse> {
        ok(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "sup".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        })
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Rpc<cri::RunPodSandboxResponse> {
        let r = req.into_inner();
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("pod sandbox config is required"))?;
        let id = self
            .0
            .run_sandbox(config, r.runtime_handler)
            .await
            .map_err(status)?;
        ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Rpc<cri::StopPodSandboxResponse> {
        let r = req.into_inner();
        self.0
            .stop_sandbox(&r.pod_sandbox_id)
            .await
            .map_err(status)?;
        ok(cri::StopPodSandboxResponse {})
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Rpc<cri::RemovePodSandboxResponse> {
        let r = req.into_inner();
        self.0
            .remove_sandbox(&r.pod_sandbox_id)
            .await
            .map_err(status)?;
        ok(cri::RemovePodSandboxResponse {})
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Rpc<cri::PodSandboxStatusResponse> {
        let r = req.into_inner();
        let c = &self.0;
        let id = c.resolve_sandbox(&r.pod_sandbox_id).map_err(status)?;
        let rec = c.records.sandbox(&id).map_err(status)?;
        let st = c.sandbox_status(&rec).await;
        let info = if r.verbose {
            c.verbose_info(&rec, &rec.id)
        } else {
            Default::default()
        };
        ok(cri::PodSandboxStatusResponse {
            status: Some(st),
            info,
            containers_statuses: Vec::new(),
            timestamp: super::now(),
        })
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Rpc<cri::ListPodSandboxResponse> {
        let items = self
            .0
            .list_sandboxes(req.into_inner().filter)
            .await
            .map_err(status)?;
        ok(cri::ListPodSandboxResponse { items })
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Rpc<cri::CreateContainerResponse> {
        let r = req.into_inner();
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("container config is required"))?;
        let id = self
            .0
            .create_container(&r.pod_sandbox_id, config)
            .await
            .map_err(status)?;
        ok(cri::CreateContainerResponse { container_id: id })
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Rpc<cri::StartContainerResponse> {
        let r = req.into_inner();
        self.0
            .start_container(&r.container_id)
            .await
            .map_err(status)?;
        ok(cri::StartContainerResponse {})
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Rpc<cri::StopContainerResponse> {
        let r = req.into_inner();
        self.0
            .stop_container(&r.container_id, r.timeout)
            .await
            .map_err(status)?;
        ok(cri::StopContainerResponse {})
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Rpc<cri::RemoveContainerResponse> {
        let r = req.into_inner();
        self.0
            .remove_container(&r.container_id)
            .await
            .map_err(status)?;
        ok(cri::RemoveContainerResponse {})
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Rpc<cri::ListContainersResponse> {
        let containers = self
            .0
            .list_containers(req.into_inner().filter)
            .await
            .map_err(status)?;
        ok(cri::ListContainersResponse { containers })
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Rpc<cri::ContainerStatusResponse> {
        let r = req.into_inner();
        let c = &self.0;
        let id = c.resolve_container(&r.container_id).map_err(status)?;
        let rec = c.records.container(&id).map_err(status)?;
        let st = c.container_status(&rec).await;
        let info = if r.verbose {
            c.verbose_info(&rec, &rec.id)
        } else {
            Default::default()
        };
        ok(cri::ContainerStatusResponse {
            status: Some(st),
            info,
        })
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Rpc<cri::UpdateContainerResourcesResponse> {
        let r = req.into_inner();
        let res = r.linux.unwrap_or_default();
        self.0
            .update_resources(&r.container_id, &res)
            .await
            .map_err(status)?;
        ok(cri::UpdateContainerResourcesResponse {})
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Rpc<cri::ReopenContainerLogResponse> {
        let r = req.into_inner();
        self.0.reopen_log(&r.container_id).await.map_err(status)?;
        ok(cri::ReopenContainerLogResponse {})
    }

    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> Rpc<cri::ExecSyncResponse> {
        let r = req.into_inner();
        match self
            .0
            .exec_sync(&r.container_id, r.cmd, r.timeout)
            .await
            .map_err(status)?
        {
            Some(out) => ok(out),
            None => Err(Status::deadline_exceeded(format!(
                "command timed out after {} seconds",
                r.timeout
            ))),
        }
    }

    async fn exec(&self, req: Request<cri::ExecRequest>) -> Rpc<cri::ExecResponse> {
        let url = self.0.exec_url(req.into_inner()).await.map_err(status)?;
        ok(cri::ExecResponse { url })
    }

    async fn attach(&self, req: Request<cri::AttachRequest>) -> Rpc<cri::AttachResponse> {
        let url = self.0.attach_url(req.into_inner()).await.map_err(status)?;
        ok(cri::AttachResponse { url })
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Rpc<cri::PortForwardResponse> {
        let url = self
            .0
            .port_forward_url(req.into_inner())
            .await
            .map_err(status)?;
        ok(cri::PortForwardResponse { url })
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Rpc<cri::ContainerStatsResponse> {
        let r = req.into_inner();
        let c = &self.0;
        let id = c.resolve_container(&r.container_id).map_err(status)?;
        let rec = c.records.container(&id).map_err(status)?;
        let stats = c.container_stats(&rec).await.map_err(status)?;
        ok(cri::ContainerStatsResponse { stats: Some(stats) })
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Rpc<cri::ListContainerStatsResponse> {
        let stats = self
            .0
            .list_container_stats(req.into_inner().filter)
            .await
            .map_err(status)?;
        ok(cri::ListContainerStatsResponse { stats })
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Rpc<cri::PodSandboxStatsResponse> {
        let r = req.into_inner();
        let c = &self.0;
        let id = c.resolve_sandbox(&r.pod_sandbox_id).map_err(status)?;
        let rec = c.records.sandbox(&id).map_err(status)?;
        let stats = c.sandbox_stats(&rec).await.map_err(status)?;
        ok(cri::PodSandboxStatsResponse { stats: Some(stats) })
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Rpc<cri::ListPodSandboxStatsResponse> {
        let stats = self
            .0
            .list_sandbox_stats(req.into_inner().filter)
            .await
            .map_err(status)?;
        ok(cri::ListPodSandboxStatsResponse { stats })
    }

    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Rpc<cri::UpdateRuntimeConfigResponse> {
        let cidr = req
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if let Ok(mut p) = self.0.pod_cidr.lock() {
            *p = cidr;
        }
        ok(cri::UpdateRuntimeConfigResponse {})
    }

    async fn status(&self, req: Request<cri::StatusRequest>) -> Rpc<cri::StatusResponse> {
        let network = match super::network::ready(&self.0.net) {
            Ok(()) => cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            Err(why) => cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: format!("Network plugin returns error: {why}"),
            },
        };
        let runtime = cri::RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        };
        let mut info = std::collections::HashMap::new();
        if req.into_inner().verbose {
            let cidr = self
                .0
                .pod_cidr
                .lock()
                .map(|p| p.clone())
                .unwrap_or_default();
            info.insert(
                "config".to_string(),
                serde_json::json!({
                    "podCIDR": cidr,
                    "cniConfDirs": self.0.net.conf_dirs,
                    "cniBinDirs": self.0.net.bin_dirs,
                })
                .to_string(),
            );
        }
        ok(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![runtime, network],
            }),
            info,
            runtime_handlers: Vec::new(),
            features: None,
        })
    }

    async fn checkpoint_container(
        &self,
        _req: Request<cri::CheckpointContainerRequest>,
    ) -> Rpc<cri::CheckpointContainerResponse> {
        Err(Status::unimplemented("sup does not checkpoint containers"))
    }

    type GetContainerEventsStream =
        Pin<Box<dyn futures::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

    async fn get_container_events(
        &self,
        _req: Request<cri::GetEventsRequest>,
    ) -> Rpc<Self::GetContainerEventsStream> {
        let rx = self.0.container_events();
        ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Rpc<cri::ListMetricDescriptorsResponse> {
        ok(cri::ListMetricDescriptorsResponse::default())
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Rpc<cri::ListPodSandboxMetricsResponse> {
        ok(cri::ListPodSandboxMetricsResponse::default())
    }

    async fn runtime_config(
        &self,
        _req: Request<cri::RuntimeConfigRequest>,
    ) -> Rpc<cri::RuntimeConfigResponse> {
        let driver = if self.0.config.systemd_cgroup {
            cri::CgroupDriver::Systemd
        } else {
            cri::CgroupDriver::Cgroupfs
        };
        ok(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: driver as i32,
            }),
        })
    }
}
