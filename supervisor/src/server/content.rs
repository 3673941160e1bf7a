//! gRPC adaptor of the Content service.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use sup_proto::v1::{self as api, content_server::Content};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{
    labels, labels_out, mask_paths, namespace, required, status, timestamp, RpcResult,
};
use crate::content::{self, Info};
use crate::error::Error;
use crate::service::content::BlobRange;
use crate::service::Services;

pub struct ContentApi(pub Arc<Services>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

const CHUNK: usize = 1 << 20;

fn info_out(i: Info) -> api::ContentInfo {
    api::ContentInfo {
        digest: i.digest,
        size: i.size,
        created_at: Some(timestamp(i.created_at)),
        updated_at: Some(timestamp(i.updated_at)),
        labels: labels_out(&i.labels),
    }
}

fn status_out(s: &content::Status) -> api::ContentStatus {
    api::ContentStatus {
        r#ref: s.r#ref.clone(),
        offset: s.offset,
        total: s.total,
        expected: s.expected.clone(),
        started_at: Some(timestamp(s.started_at)),
        updated_at: Some(timestamp(s.updated_at)),
    }
}

impl crate::filters::Filterable for Info {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["digest"] => Some(self.digest.clone()),
            ["size"] => Some(self.size.to_string()),
            ["labels", k] => self.labels.get(*k).cloned(),
            _ => None,
        }
    }
}

#[tonic::async_trait]
impl Content for ContentApi {
    async fn info(
        &self,
        req: Request<api::ContentInfoRequest>,
    ) -> RpcResult<api::ContentInfoResponse> {
        let ns = namespace(&req)?;
        let i = self
            .0
            .content_info(&ns, &req.into_inner().digest)
            .map_err(status)?;
        Ok(Response::new(api::ContentInfoResponse {
            info: Some(info_out(i)),
        }))
    }

    async fn update(
        &self,
        req: Request<api::UpdateContentRequest>,
    ) -> RpcResult<api::UpdateContentResponse> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let info = required(req.info, "info")?;
        let paths = mask_paths(req.update_mask);
        let i = self
            .0
            .content_update(&ns, &info.digest, &labels(info.labels), &paths)
            .map_err(status)?;
        Ok(Response::new(api::UpdateContentResponse {
            info: Some(info_out(i)),
        }))
    }

    type ListStream = BoxStream<api::ListContentResponse>;

    async fn list(&self, req: Request<api::ListContentRequest>) -> RpcResult<Self::ListStream> {
        let ns = namespace(&req)?;
        let filter = crate::filters::Filter::parse(&req.into_inner().filters).map_err(status)?;
        let all: Vec<api::ContentInfo> = self
            .0
            .content_list(&ns)
            .map_err(status)?
            .into_iter()
            .filter(|i| filter.matches(i))
            .map(info_out)
            .collect();
        let pages: Vec<Result<api::ListContentResponse, Status>> = all
            .chunks(100)
            .map(|c| Ok(api::ListContentResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(pages))))
    }

    async fn delete(&self, req: Request<api::DeleteContentRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let digest = req.into_inner().digest;
        self.0.content_delete(&ns, &digest).await.map_err(status)?;
        Ok(Response::new(()))
    }

    type ReadStream = BoxStream<api::ReadContentResponse>;

    async fn read(&self, req: Request<api::ReadContentRequest>) -> RpcResult<Self::ReadStream> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let BlobRange {
            mut file,
            offset: start,
            end,
        } = self
            .0
            .content_read(&ns, &req.digest, req.offset, req.size)
            .map_err(status)?;
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut pos = start;
            while pos < end {
                let n = ((end - pos) as usize).min(CHUNK);
                let mut buf = vec![0u8; n];
                if let Err(e) = file.read_exact(&mut buf) {
                    let _ = tx.blocking_send(Err(status(Error::io("reading blob", e))));
                    return;
                }
                if tx
                    .blocking_send(Ok(api::ReadContentResponse {
                        offset: pos,
                        data: buf,
                    }))
                    .is_err()
                {
                    return;
                }
                pos += n as i64;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        req: Request<api::ContentStatusRequest>,
    ) -> RpcResult<api::ContentStatusResponse> {
        let ns = namespace(&req)?;
        let s = self
            .0
            .content_status(&ns, &req.into_inner().r#ref)
            .map_err(status)?;
        Ok(Response::new(api::ContentStatusResponse {
            status: Some(status_out(&s)),
        }))
    }

    async fn list_statuses(
        &self,
        req: Request<api::ListContentStatusesRequest>,
    ) -> RpcResult<api::ListContentStatusesResponse> {
        let ns = namespace(&req)?;
        let filter = crate::filters::Filter::parse(&req.into_inner().filters).map_err(status)?;
        let statuses = self
            .0
            .content_statuses(&ns)
            .map_err(status)?
            .iter()
            .filter(|s| filter.matches(*s))
            .map(status_out)
            .collect();
        Ok(Response::new(api::ListContentStatusesResponse { statuses }))
    }

    type WriteStream = BoxStream<api::WriteContentResponse>;

    async fn write(
        &self,
        req: Request<Streaming<api::WriteContentRequest>>,
    ) -> RpcResult<Self::WriteStream> {
        let ns = namespace(&req)?;
        let mut input = req.into_inner();
        let services = self.0.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let result = write_loop(&services, &ns, &mut input, &tx).await;
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn abort(&self, req: Request<api::AbortContentRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        self.0
            .content_abort(&ns, &req.into_inner().r#ref)
            .map_err(status)?;
        Ok(Response::new(()))
    }
}

impl crate::filters::Filterable for content::Status {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["ref"] => Some(self.r#ref.clone()),
            _ => None,
        }
    }
}

async fn write_loop(
    services: &Arc<Services>,
    ns: &str,
    input: &mut Streaming<api::WriteContentRequest>,
    tx: &mpsc::Sender<Result<api::WriteContentResponse, Status>>,
) -> Result<(), Status> {
    let Some(first) = input.message().await? else {
        return Ok(());
    };
    let mut writer = services
        .content_writer(ns, &first.r#ref, first.total, &first.expected)
        .map_err(status)?;
    let mut next = Some(first);
    while let Some(msg) = next.take() {
        let action = api::WriteAction::try_from(msg.action).map_err(|_| {
            Status::invalid_argument(format!("unknown write action {}", msg.action))
        })?;
        if !msg.data.is_empty() {
            tokio::task::block_in_place(|| writer.write_at(msg.offset, &msg.data))
                .map_err(status)?;
        }
        let mut resp = api::WriteContentResponse {
            action: msg.action,
            started_at: Some(timestamp(writer.status().started_at)),
            updated_at: Some(timestamp(writer.status().updated_at)),
            offset: writer.status().offset,
            total: if msg.total > 0 {
                msg.total
            } else {
                writer.status().total
            },
            digest: String::new(),
        };
        if action == api::WriteAction::Commit {
            let labels = labels(msg.labels);
            let digest =
                tokio::task::block_in_place(|| writer.commit(msg.total, &msg.expected, &labels))
                    .map_err(status)?;
            resp.digest = digest;
            let _ = tx.send(Ok(resp)).await;
            return Ok(());
        }
        if (action == api::WriteAction::Stat || !msg.data.is_empty())
            && tx.send(Ok(resp)).await.is_err()
        {
            break;
        }
        next = input.message().await.unwrap_or(None);
    }
    // The stream ended without a commit: keep the ingest for a resume.
    tokio::task::block_in_place(|| writer.checkpoint()).map_err(status)?;
    Ok(())
}
