//! gRPC adaptor of the Namespaces service.

use std::sync::Arc;

use sup_proto::v1::{self as api, namespaces_server::Namespaces};
use tonic::{Request, Response};

use super::convert::{labels, labels_out, mask_paths, required, status, timestamp, RpcResult};
use crate::service::{namespaces::Namespace, Services};

pub struct NamespacesApi(pub Arc<Services>);

fn out(n: Namespace) -> api::Namespace {
    api::Namespace {
        name: n.name,
        labels: labels_out(&n.labels),
        created_at: Some(timestamp(n.created_at)),
        updated_at: Some(timestamp(n.updated_at)),
    }
}

#[tonic::async_trait]
impl Namespaces for NamespacesApi {
    async fn get(
        &self,
        req: Request<api::GetNamespaceRequest>,
    ) -> RpcResult<api::GetNamespaceResponse> {
        let n = self
            .0
            .namespace_get(&req.into_inner().name)
            .map_err(status)?;
        Ok(Response::new(api::GetNamespaceResponse {
            namespace: Some(out(n)),
        }))
    }

    async fn list(
        &self,
        req: Request<api::ListNamespacesRequest>,
    ) -> RpcResult<api::ListNamespacesResponse> {
        let filter = crate::filters::Filter::parse(&req.into_inner().filters).map_err(status)?;
        let namespaces = self
            .0
            .namespace_list()
            .map_err(status)?
            .into_iter()
            .filter(|n| filter.matches(n))
            .map(out)
            .collect();
        Ok(Response::new(api::ListNamespacesResponse { namespaces }))
    }

    async fn create(
        &self,
        req: Request<api::CreateNamespaceRequest>,
    ) -> RpcResult<api::CreateNamespaceResponse> {
        let n = required(req.into_inner().namespace, "namespace")?;
        let n = self
            .0
            .namespace_create(&n.name, labels(n.labels))
            .await
            .map_err(status)?;
        Ok(Response::new(api::CreateNamespaceResponse {
            namespace: Some(out(n)),
        }))
    }

    async fn update(
        &self,
        req: Request<api::UpdateNamespaceRequest>,
    ) -> RpcResult<api::UpdateNamespaceResponse> {
        let req = req.into_inner();
        let n = required(req.namespace, "namespace")?;
        let n = self
            .0
            .namespace_update(&n.name, labels(n.labels), &mask_paths(req.update_mask))
            .await
            .map_err(status)?;
        Ok(Response::new(api::UpdateNamespaceResponse {
            namespace: Some(out(n)),
        }))
    }

    async fn delete(&self, req: Request<api::DeleteNamespaceRequest>) -> RpcResult<()> {
        self.0
            .namespace_delete(&req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(()))
    }
}

impl crate::filters::Filterable for Namespace {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["name"] => Some(self.name.clone()),
            ["labels", k] => self.labels.get(*k).cloned(),
            _ => None,
        }
    }
}
