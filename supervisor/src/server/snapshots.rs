//! gRPC adaptor of the Snapshots service.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use sup_proto::v1::{self as api, snapshots_server::Snapshots};
use tonic::{Request, Response, Status};

use super::convert::{
    labels, labels_out, mask_paths, mount_out, namespace, required, status, timestamp, RpcResult,
};
use crate::filters::{Filter, Filterable};
use crate::service::Services;
use crate::snapshot::{Info, Kind};

pub struct SnapshotsApi(pub Arc<Services>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn kind_out(k: Kind) -> api::SnapshotKind {
    match k {
        Kind::View => api::SnapshotKind::View,
        Kind::Active => api::SnapshotKind::Active,
        Kind::Committed => api::SnapshotKind::Committed,
    }
}

fn info_out(i: &Info) -> api::SnapshotInfo {
    api::SnapshotInfo {
        name: i.name.clone(),
        parent: i.parent.clone().unwrap_or_default(),
        kind: kind_out(i.kind) as i32,
        created_at: Some(timestamp(i.created_at)),
        updated_at: Some(timestamp(i.updated_at)),
        labels: labels_out(&i.labels),
    }
}

impl Filterable for Info {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["name"] => Some(self.name.clone()),
            ["parent"] => self.parent.clone(),
            ["kind"] => Some(self.kind.to_string()),
            ["labels", k] => self.labels.get(*k).cloned(),
            _ => None,
        }
    }
}

impl SnapshotsApi {
    /// Prepare and View differ only in the kind of snapshot they make.
    async fn make(
        &self,
        ns: &str,
        (snapshotter, key, parent): (&str, &str, &str),
        labels: crate::labels::Labels,
        view: bool,
    ) -> Result<Vec<api::Mount>, Status> {
        let mounts = self
            .0
            .snapshot_prepare(ns, snapshotter, key, parent, labels, view)
            .await
            .map_err(status)?;
        Ok(mounts.iter().map(mount_out).collect())
    }
}

#[tonic::async_trait]
impl Snapshots for SnapshotsApi {
    async fn prepare(
        &self,
        req: Request<api::PrepareSnapshotRequest>,
    ) -> RpcResult<api::PrepareSnapshotResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let which = (r.snapshotter.as_str(), r.key.as_str(), r.parent.as_str());
        let mounts = self.make(&ns, which, labels(r.labels), false).await?;
        Ok(Response::new(api::PrepareSnapshotResponse { mounts }))
    }

    async fn view(
        &self,
        req: Request<api::ViewSnapshotRequest>,
    ) -> RpcResult<api::ViewSnapshotResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let which = (r.snapshotter.as_str(), r.key.as_str(), r.parent.as_str());
        let mounts = self.make(&ns, which, labels(r.labels), true).await?;
        Ok(Response::new(api::ViewSnapshotResponse { mounts }))
    }

    async fn mounts(&self, req: Request<api::MountsRequest>) -> RpcResult<api::MountsResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let mounts = self
            .0
            .snapshot_mounts(&ns, &r.snapshotter, &r.key)
            .await
            .map_err(status)?;
        Ok(Response::new(api::MountsResponse {
            mounts: mounts.iter().map(mount_out).collect(),
        }))
    }

    async fn commit(&self, req: Request<api::CommitSnapshotRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.0
            .snapshot_commit(&ns, &r.snapshotter, &r.name, &r.key, labels(r.labels))
            .await
            .map_err(status)?;
        Ok(Response::new(()))
    }

    async fn remove(&self, req: Request<api::RemoveSnapshotRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.0
            .snapshot_remove(&ns, &r.snapshotter, &r.key)
            .await
            .map_err(status)?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<api::StatSnapshotRequest>,
    ) -> RpcResult<api::StatSnapshotResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let info = self
            .0
            .snapshot_stat(&ns, &r.snapshotter, &r.key)
            .await
            .map_err(status)?;
        Ok(Response::new(api::StatSnapshotResponse {
            info: Some(info_out(&info)),
        }))
    }

    async fn update(
        &self,
        req: Request<api::UpdateSnapshotRequest>,
    ) -> RpcResult<api::UpdateSnapshotResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let info = required(r.info, "info")?;
        let out = self
            .0
            .snapshot_update(
                &ns,
                &r.snapshotter,
                &info.name,
                labels(info.labels),
                mask_paths(r.update_mask),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(api::UpdateSnapshotResponse {
            info: Some(info_out(&out)),
        }))
    }

    type ListStream = BoxStream<api::ListSnapshotsResponse>;

    async fn list(&self, req: Request<api::ListSnapshotsRequest>) -> RpcResult<Self::ListStream> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let filter = Filter::parse(&r.filters).map_err(status)?;
        let all: Vec<api::SnapshotInfo> = self
            .0
            .snapshot_list(&ns, &r.snapshotter)
            .await
            .map_err(status)?
            .iter()
            .filter(|i| filter.matches(*i))
            .map(info_out)
            .collect();
        let pages: Vec<Result<api::ListSnapshotsResponse, Status>> = all
            .chunks(100)
            .map(|c| Ok(api::ListSnapshotsResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(pages))))
    }

    async fn usage(&self, req: Request<api::UsageRequest>) -> RpcResult<api::UsageResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let u = self
            .0
            .snapshot_usage(&ns, &r.snapshotter, &r.key)
            .await
            .map_err(status)?;
        Ok(Response::new(api::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }
}
