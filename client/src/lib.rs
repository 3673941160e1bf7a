//! Rust client for the sup API: connects to supd over its unix socket (or TCP) and scopes every
//! call to a namespace through the `sup-namespace` metadata key.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use sup_proto::v1::{
    containers_client::ContainersClient, content_client::ContentClient,
    events_client::EventsClient, gc_client::GcClient, images_client::ImagesClient,
    leases_client::LeasesClient, namespaces_client::NamespacesClient,
    snapshots_client::SnapshotsClient, tasks_client::TasksClient, version_client::VersionClient,
};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

pub use sup_proto::v1 as api;

/// Default address of supd's API socket.
pub const DEFAULT_ADDRESS: &str = "/run/sup/sup.sock";
/// Namespace used when none is named.
pub const DEFAULT_NAMESPACE: &str = "default";
/// gRPC metadata key that carries the namespace.
pub const NAMESPACE_HEADER: &str = "sup-namespace";
/// Largest message the client accepts or sends (content chunks are far smaller).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid namespace {0:?}")]
    Namespace(String),
    #[error("connecting to supd at {address}: {source}")]
    Transport {
        address: String,
        source: tonic::transport::Error,
    },
}

/// Adds the namespace to every request.
#[derive(Clone)]
pub struct NamespaceInterceptor {
    namespace: AsciiMetadataValue,
}

impl tonic::service::Interceptor for NamespaceInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert(NAMESPACE_HEADER, self.namespace.clone());
        Ok(req)
    }
}

pub type Svc = InterceptedService<Channel, NamespaceInterceptor>;

/// A connection to supd, bound to one namespace. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    interceptor: NamespaceInterceptor,
    namespace: String,
}

impl Client {
    /// Connects to `address`: a unix socket path (optionally `unix://PATH`) or an
    /// `http://HOST:PORT` URL.
    pub async fn connect(address: &str) -> Result<Client, ConnectError> {
        let transport = |source| ConnectError::Transport {
            address: address.to_string(),
            source,
        };
        let channel = if address.starts_with("http://") || address.starts_with("https://") {
            Endpoint::from_shared(address.to_string())
                .map_err(transport)?
                .connect()
                .await
                .map_err(transport)?
        } else {
            let path = PathBuf::from(address.strip_prefix("unix://").unwrap_or(address));
            // The URI is required by the API but not used: the connector dials the socket.
            Endpoint::from_static("http://supd.local")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(transport)?
        };
        Self::from_channel(channel, DEFAULT_NAMESPACE)
    }

    /// Wraps an existing channel.
    pub fn from_channel(channel: Channel, namespace: &str) -> Result<Client, ConnectError> {
        let value = namespace
            .parse()
            .map_err(|_| ConnectError::Namespace(namespace.to_string()))?;
        Ok(Client {
            channel,
            interceptor: NamespaceInterceptor { namespace: value },
            namespace: namespace.to_string(),
        })
    }

    /// The same connection, scoped to another namespace.
    pub fn with_namespace(&self, namespace: &str) -> Result<Client, ConnectError> {
        Self::from_channel(self.channel.clone(), namespace)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    fn svc(&self) -> Svc {
        InterceptedService::new(self.channel.clone(), self.interceptor.clone())
    }

    pub fn version(&self) -> VersionClient<Svc> {
        VersionClient::new(self.svc())
    }

    pub fn namespaces(&self) -> NamespacesClient<Svc> {
        NamespacesClient::new(self.svc())
    }

    pub fn content(&self) -> ContentClient<Svc> {
        ContentClient::new(self.svc())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn images(&self) -> ImagesClient<Svc> {
        ImagesClient::new(self.svc())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn snapshots(&self) -> SnapshotsClient<Svc> {
        SnapshotsClient::new(self.svc())
    }

    pub fn containers(&self) -> ContainersClient<Svc> {
        ContainersClient::new(self.svc())
    }

    pub fn tasks(&self) -> TasksClient<Svc> {
        TasksClient::new(self.svc())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn events(&self) -> EventsClient<Svc> {
        EventsClient::new(self.svc())
    }

    pub fn leases(&self) -> LeasesClient<Svc> {
        LeasesClient::new(self.svc())
    }

    pub fn gc(&self) -> GcClient<Svc> {
        GcClient::new(self.svc())
    }
}
