//! gRPC adaptors of the Leases and Gc services.

use std::sync::Arc;
use std::time::Duration;

use sup_proto::v1::{self as api, gc_server::Gc, leases_server::Leases};
use tonic::{Request, Response};

use super::convert::{labels, labels_out, namespace, required, status, timestamp, RpcResult};
use crate::service::leases::Lease;
use crate::service::Services;

pub struct LeasesApi(pub Arc<Services>);
pub struct GcApi(pub Arc<Services>);

fn out(l: Lease) -> api::Lease {
    api::Lease {
        id: l.id,
        labels: labels_out(&l.labels),
        created_at: Some(timestamp(l.created_at)),
        expires_at: l.expires_at.map(timestamp),
    }
}

#[tonic::async_trait]
impl Leases for LeasesApi {
    async fn create(
        &self,
        req: Request<api::CreateLeaseRequest>,
    ) -> RpcResult<api::CreateLeaseResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        if r.ttl_seconds < 0 {
            return Err(tonic::Status::invalid_argument(
                "ttl_seconds must not be negative",
            ));
        }
        let ttl = (r.ttl_seconds > 0).then(|| Duration::from_secs(r.ttl_seconds as u64));
        let l = self
            .0
            .lease_create(&ns, &r.id, labels(r.labels), ttl)
            .await
            .map_err(status)?;
        Ok(Response::new(api::CreateLeaseResponse {
            lease: Some(out(l)),
        }))
    }

    async fn delete(&self, req: Request<api::DeleteLeaseRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        self.0
            .lease_delete(&ns, &req.into_inner().id)
            .await
            .map_err(status)?;
        Ok(Response::new(()))
    }

    async fn list(
        &self,
        req: Request<api::ListLeasesRequest>,
    ) -> RpcResult<api::ListLeasesResponse> {
        let ns = namespace(&req)?;
        let leases = self
            .0
            .lease_list(&ns, &req.into_inner().filters)
            .map_err(status)?
            .into_iter()
            .map(out)
            .collect();
        Ok(Response::new(api::ListLeasesResponse { leases }))
    }

    async fn add_resource(&self, req: Request<api::AddResourceRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let res = required(r.resource, "resource")?;
        self.0
            .lease_resource(&ns, &r.id, &res.r#type, &res.id, true)
            .await
            .map_err(status)?;
        Ok(Response::new(()))
    }

    async fn delete_resource(&self, req: Request<api::DeleteResourceRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let res = required(r.resource, "resource")?;
        self.0
            .lease_resource(&ns, &r.id, &res.r#type, &res.id, false)
            .await
            .map_err(status)?;
        Ok(Response::new(()))
    }

    async fn list_resources(
        &self,
        req: Request<api::ListResourcesRequest>,
    ) -> RpcResult<api::ListResourcesResponse> {
        let ns = namespace(&req)?;
        let resources = self
            .0
            .lease_resources(&ns, &req.into_inner().id)
            .map_err(status)?
            .into_iter()
            .map(|(t, id)| api::LeaseResource { r#type: t, id })
            .collect();
        Ok(Response::new(api::ListResourcesResponse { resources }))
    }
}

#[tonic::async_trait]
impl Gc for GcApi {
    async fn collect(&self, _req: Request<api::CollectRequest>) -> RpcResult<api::CollectResponse> {
        let s = self.0.gc(Duration::ZERO).await.map_err(status)?;
        Ok(Response::new(api::CollectResponse {
            content_removed: s.content_removed,
            blobs_removed: s.blobs_removed,
            bytes_freed: s.bytes_freed,
            snapshots_removed: s.snapshots_removed,
            leases_expired: s.leases_expired,
        }))
    }
}
