//! The gRPC server: every sup.v1 service as a thin adaptor over `service`, plus gRPC health
//! and reflection, served on a unix socket.

use std::future::Future;
use std::sync::Arc;

use futures::TryStreamExt;
use k8s_cri::v1::{
    image_service_server::ImageServiceServer, runtime_service_server::RuntimeServiceServer,
};
use sup_proto::v1::{
    containers_server::ContainersServer, content_server::ContentServer,
    events_server::EventsServer, gc_server::GcServer, images_server::ImagesServer,
    leases_server::LeasesServer, namespaces_server::NamespacesServer,
    snapshots_server::SnapshotsServer, tasks_server::TasksServer, version_server::VersionServer,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::error::{Error, Result};
use crate::service::Services;

pub mod authority;
pub mod containers;
pub mod content;
pub mod convert;
pub mod events;
pub mod images;
pub mod leases;
pub mod namespaces;
pub mod snapshots;
pub mod tasks;
pub mod version;

/// Largest request or response message (archive and blob chunks are far smaller).
pub const MAX_MESSAGE: usize = 64 << 20;

/// Serves the API on `listener` until `shutdown` completes, then lets calls in flight end.
pub async fn serve(
    services: Arc<Services>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    serve_with(
        services,
        crate::config::CriConfig::default(),
        listener,
        shutdown,
    )
    .await
}

/// `serve`, with the CRI's settings (pause image, CNI directories).
pub async fn serve_with(
    services: Arc<Services>,
    cri_config: crate::config::CriConfig,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in [
        "sup.v1.Version",
        "sup.v1.Namespaces",
        "sup.v1.Content",
        "sup.v1.Images",
        "sup.v1.Snapshots",
        "sup.v1.Events",
        "sup.v1.Containers",
        "sup.v1.Tasks",
        "sup.v1.Leases",
        "sup.v1.Gc",
        "runtime.v1.RuntimeService",
        "runtime.v1.ImageService",
    ] {
        health
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sup_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::internal(format!("reflection service: {e}")))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sup_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::internal(format!("reflection service: {e}")))?;

    let s = &services;
    let cri = crate::cri::Cri::new(s.clone(), cri_config)?;
    tonic::transport::Server::builder()
        .trace_fn(|req| {
            let ns = req
                .headers()
                .get(convert::NAMESPACE_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(convert::DEFAULT_NAMESPACE)
                .to_string();
            tracing::info_span!("rpc", method = %req.uri().path(), namespace = %ns)
        })
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(VersionServer::new(version::VersionApi))
        .add_service(
            NamespacesServer::new(namespaces::NamespacesApi(s.clone()))
                .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ContentServer::new(content::ContentApi(s.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ImagesServer::new(images::ImagesApi(s.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(SnapshotsServer::new(snapshots::SnapshotsApi(s.clone())))
        .add_service(EventsServer::new(events::EventsApi(s.clone())))
        .add_service(ContainersServer::new(containers::ContainersApi(s.clone())))
        .add_service(LeasesServer::new(leases::LeasesApi(s.clone())))
        .add_service(GcServer::new(leases::GcApi(s.clone())))
        // The Kubernetes CRI, in namespace "k8s.io" over the same services.
        .add_service(
            RuntimeServiceServer::new(crate::cri::runtime::CriRuntime::new(cri))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ImageServiceServer::new(crate::cri::image::CriImages::new(s.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            TasksServer::new(tasks::TasksApi(s.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener).map_ok(authority::AuthorityFilter::new),
            shutdown,
        )
        .await
        .map_err(|e| Error::internal(format!("gRPC server: {e}")))
}
