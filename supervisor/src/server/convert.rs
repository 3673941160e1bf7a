//! Conversions between the API's messages and the services' types, and the namespace of a
//! request.

use sup_proto::v1 as api;
use tonic::{Request, Status};

use crate::labels::Labels;
use crate::snapshot;
use crate::store::{Descriptor, Platform};

pub const NAMESPACE_HEADER: &str = "sup-namespace";
pub const DEFAULT_NAMESPACE: &str = "default";

pub use crate::status::status;

pub type RpcResult<T> = std::result::Result<tonic::Response<T>, Status>;

/// The namespace a request is for: the `sup-namespace` metadata, "default" without it.
pub fn namespace<T>(req: &Request<T>) -> Result<String, Status> {
    let ns = match req.metadata().get(NAMESPACE_HEADER) {
        None => DEFAULT_NAMESPACE.to_string(),
        Some(v) => v
            .to_str()
            .map_err(|_| Status::invalid_argument("namespace header is not ASCII"))?
            .to_string(),
    };
    crate::service::namespaces::validate(&ns).map_err(status)?;
    Ok(ns)
}

pub use crate::timestamps::{from_timestamp, timestamp};

pub fn labels(map: std::collections::HashMap<String, String>) -> Labels {
    map.into_iter().collect()
}

pub fn labels_out(l: &Labels) -> std::collections::HashMap<String, String> {
    l.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub fn mask_paths(mask: Option<prost_types::FieldMask>) -> Vec<String> {
    mask.map(|m| m.paths).unwrap_or_default()
}

pub fn platform_in(p: api::Platform) -> Platform {
    Platform {
        os: p.os,
        architecture: p.architecture,
        variant: p.variant,
        os_version: p.os_version,
    }
}

/// An unset or empty platform means "the host's".
pub fn platform_opt(p: Option<api::Platform>) -> Option<Platform> {
    p.filter(|p| !p.os.is_empty() || !p.architecture.is_empty())
        .map(platform_in)
}

pub fn platform_out(p: &Platform) -> api::Platform {
    api::Platform {
        os: p.os.clone(),
        architecture: p.architecture.clone(),
        variant: p.variant.clone(),
        os_version: p.os_version.clone(),
    }
}

pub fn descriptor_in(d: api::Descriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type,
        digest: d.digest,
        size: d.size,
        annotations: labels(d.annotations),
        platform: d.platform.map(platform_in),
    }
}

pub fn descriptor_out(d: &Descriptor) -> api::Descriptor {
    api::Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: labels_out(&d.annotations),
        platform: d.platform.as_ref().map(platform_out),
    }
}

pub fn mount_out(m: &snapshot::Mount) -> api::Mount {
    api::Mount {
        r#type: m.kind.clone(),
        source: m.source.clone(),
        target: m.target.clone(),
        options: m.options.clone(),
    }
}

/// A required sub-message.
pub fn required<T>(v: Option<T>, what: &str) -> Result<T, Status> {
    v.ok_or_else(|| Status::invalid_argument(format!("{what} is required")))
}

/// Runs a call that changes state to its end even if the client goes away: a dropped future
/// could stop between two steps (a shim started but not recorded, a task half deleted).
pub async fn settled<T: Send + 'static>(
    call: impl std::future::Future<Output = crate::error::Result<T>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(call)
        .await
        .map_err(|e| Status::internal(format!("the call failed: {e}")))?
        .map_err(status)
}
