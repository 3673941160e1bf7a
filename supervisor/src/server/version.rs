//! gRPC adaptor of the Version service.

use sup_proto::v1::{self as api, version_server::Version};
use tonic::{Request, Response};

use super::convert::RpcResult;

pub struct VersionApi;

#[tonic::async_trait]
impl Version for VersionApi {
    async fn version(&self, _: Request<()>) -> RpcResult<api::VersionResponse> {
        Ok(Response::new(api::VersionResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: option_env!("SUP_REVISION").unwrap_or("").to_string(),
            api_versions: vec!["sup.v1".to_string()],
        }))
    }
}
