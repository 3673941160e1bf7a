//! gRPC adaptor of the Containers service.

use std::sync::Arc;

use sup_proto::v1::{self as api, containers_server::Containers};
use tonic::{Request, Response, Status};

use super::convert::{
    labels, labels_out, mask_paths, namespace, required, settled, status, timestamp, RpcResult,
};
use crate::service::containers::{Container, NewContainer};
use crate::service::Services;
use crate::spec::{MountSpec, Overrides};
use crate::store::RuntimeRecord;

pub struct ContainersApi(pub Arc<Services>);

fn out(c: &Container) -> Result<api::Container, Status> {
    Ok(api::Container {
        id: c.id.clone(),
        labels: labels_out(&c.labels),
        image: c.image.clone(),
        runtime: Some(api::ContainerRuntime {
            name: c.runtime.name.clone(),
            options: labels_out(&c.runtime.options),
        }),
        spec: serde_json::to_vec(&c.spec).map_err(|e| Status::internal(e.to_string()))?,
        snapshotter: c.snapshotter.clone(),
        snapshot_key: c.snapshot_key.clone(),
        created_at: Some(timestamp(c.created_at)),
        updated_at: Some(timestamp(c.updated_at)),
        extensions: c
            .extensions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

fn spec_in(bytes: &[u8]) -> Result<Option<serde_json::Value>, Status> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Status::invalid_argument(format!("spec: not valid JSON: {e}")))?;
    // Check the shape too: a spec runc cannot read would only fail at task create.
    serde_json::from_value::<oci_spec::runtime::Spec>(v.clone())
        .map_err(|e| Status::invalid_argument(format!("spec: not an OCI runtime spec: {e}")))?;
    Ok(Some(v))
}

pub fn overrides_in(c: api::ContainerConfig) -> Overrides {
    let r = c.resources.unwrap_or_default();
    Overrides {
        entrypoint: c.entrypoint.map(|l| l.values),
        command: c.command.map(|l| l.values),
        env: c.env,
        working_dir: c.working_dir,
        user: c.user,
        tty: c.tty,
        hostname: c.hostname,
        mounts: c
            .mounts
            .into_iter()
            .map(|m| MountSpec {
                source: m.source,
                destination: m.destination,
                kind: m.r#type,
                readonly: m.readonly,
                options: m.options,
            })
            .collect(),
        readonly_rootfs: c.readonly_rootfs,
        masked_paths: None,
        readonly_paths: None,
        memory_limit: r.memory_limit,
        cpus: r.cpus,
        cpu_shares: r.cpu_shares,
        pids_limit: r.pids_limit,
        cap_add: c.cap_add,
        cap_drop: c.cap_drop,
        privileged: c.privileged,
        host_network: c.host_network,
        no_new_privileges: c.no_new_privileges,
        rlimits: c
            .rlimits
            .into_iter()
            .map(|r| (r.r#type, r.soft, r.hard))
            .collect(),
        annotations: c.annotations.into_iter().collect(),
        systemd_cgroup: c.systemd_cgroup,
    }
}

#[tonic::async_trait]
impl Containers for ContainersApi {
    async fn get(
        &self,
        req: Request<api::GetContainerRequest>,
    ) -> RpcResult<api::GetContainerResponse> {
        let ns = namespace(&req)?;
        let c = self
            .0
            .container_get(&ns, &req.into_inner().id)
            .map_err(status)?;
        Ok(Response::new(api::GetContainerResponse {
            container: Some(out(&c)?),
        }))
    }

    async fn list(
        &self,
        req: Request<api::ListContainersRequest>,
    ) -> RpcResult<api::ListContainersResponse> {
        let ns = namespace(&req)?;
        let containers = self
            .0
            .container_list(&ns, &req.into_inner().filters)
            .map_err(status)?
            .iter()
            .map(out)
            .collect::<Result<_, _>>()?;
        Ok(Response::new(api::ListContainersResponse { containers }))
    }

    async fn create(
        &self,
        req: Request<api::CreateContainerRequest>,
    ) -> RpcResult<api::CreateContainerResponse> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let c = required(req.container, "container")?;
        let runtime = c.runtime.unwrap_or_default();
        let new = NewContainer {
            id: c.id,
            image: c.image,
            runtime: RuntimeRecord {
                name: runtime.name,
                options: labels(runtime.options),
            },
            spec: spec_in(&c.spec)?,
            snapshotter: c.snapshotter,
            snapshot_key: c.snapshot_key,
            labels: labels(c.labels),
            extensions: c.extensions.into_iter().collect(),
            overrides: overrides_in(req.config.unwrap_or_default()),
            ..Default::default()
        };
        let svc = self.0.clone();
        let created = settled(async move { svc.container_create(&ns, new).await }).await?;
        Ok(Response::new(api::CreateContainerResponse {
            container: Some(out(&created)?),
        }))
    }

    async fn update(
        &self,
        req: Request<api::UpdateContainerRequest>,
    ) -> RpcResult<api::UpdateContainerResponse> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let paths = mask_paths(req.update_mask);
        let c = required(req.container, "container")?;
        let current = self.0.container_get(&ns, &c.id).map_err(status)?;
        let spec = spec_in(&c.spec)?.unwrap_or(current.spec.clone());
        let update = Container {
            id: c.id,
            image: if c.image.is_empty() {
                current.image.clone()
            } else {
                c.image
            },
            labels: labels(c.labels),
            spec,
            extensions: c.extensions.into_iter().collect(),
            ..current
        };
        let updated = self
            .0
            .container_update(&ns, update, &paths)
            .await
            .map_err(status)?;
        Ok(Response::new(api::UpdateContainerResponse {
            container: Some(out(&updated)?),
        }))
    }

    async fn delete(&self, req: Request<api::DeleteContainerRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let svc = self.0.clone();
        settled(async move { svc.container_delete(&ns, &req.id, req.keep_snapshot).await }).await?;
        Ok(Response::new(()))
    }
}
