//! gRPC adaptor of the Images service. Import and export bridge gRPC streams to the
//! blocking archive code through bounded channels, so memory stays flat whatever the size.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use futures::Stream;
use sup_proto::v1::{self as api, images_server::Images};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{
    descriptor_in, descriptor_out, labels, labels_out, mask_paths, namespace, platform_opt,
    platform_out, required, status, timestamp, RpcResult,
};
use crate::error::Error;
use crate::service::images::import::{ImportEvent, ImportOptions};
use crate::service::images::Image;
use crate::service::Services;

pub struct ImagesApi(pub Arc<Services>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub fn image_out(i: &Image) -> api::Image {
    api::Image {
        name: i.name.clone(),
        labels: labels_out(&i.labels),
        target: Some(descriptor_out(&i.target)),
        created_at: Some(timestamp(i.created_at)),
        updated_at: Some(timestamp(i.updated_at)),
    }
}

fn image_in(i: api::Image) -> Result<Image, Status> {
    let target = required(i.target, "image target")?;
    Ok(Image {
        name: i.name,
        labels: labels(i.labels),
        target: descriptor_in(target),
        created_at: std::time::SystemTime::now(),
        updated_at: std::time::SystemTime::now(),
    })
}

/// Reads the archive bytes a gRPC stream delivers, on a blocking thread.
struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Sends what the blocking export writes as gRPC chunks.
struct ChunkWriter {
    tx: mpsc::Sender<Result<api::ExportResponse, Status>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 1 << 20;

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(api::ExportResponse { chunk }))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "export reader went away"))
    }
}

fn progress_msg(p: api::ImportProgress) -> api::ImportResponse {
    api::ImportResponse {
        payload: Some(api::import_response::Payload::Progress(p)),
    }
}

#[tonic::async_trait]
impl Images for ImagesApi {
    async fn get(&self, req: Request<api::GetImageRequest>) -> RpcResult<api::GetImageResponse> {
        let ns = namespace(&req)?;
        let i = self
            .0
            .image_get(&ns, &req.into_inner().name)
            .map_err(status)?;
        Ok(Response::new(api::GetImageResponse {
            image: Some(image_out(&i)),
        }))
    }

    async fn list(
        &self,
        req: Request<api::ListImagesRequest>,
    ) -> RpcResult<api::ListImagesResponse> {
        let ns = namespace(&req)?;
        let images = self
            .0
            .image_list(&ns, &req.into_inner().filters)
            .map_err(status)?
            .iter()
            .map(image_out)
            .collect();
        Ok(Response::new(api::ListImagesResponse { images }))
    }

    async fn create(
        &self,
        req: Request<api::CreateImageRequest>,
    ) -> RpcResult<api::CreateImageResponse> {
        let ns = namespace(&req)?;
        let image = image_in(required(req.into_inner().image, "image")?)?;
        let i = self.0.image_create(&ns, image).await.map_err(status)?;
        Ok(Response::new(api::CreateImageResponse {
            image: Some(image_out(&i)),
        }))
    }

    async fn update(
        &self,
        req: Request<api::UpdateImageRequest>,
    ) -> RpcResult<api::UpdateImageResponse> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let paths = mask_paths(req.update_mask);
        let mut img = required(req.image, "image")?;
        // A label-only update need not repeat the target.
        if img.target.is_none() && !paths.iter().any(|p| p == "target") && !paths.is_empty() {
            img.target = Some(api::Descriptor::default());
        }
        let image = image_in(img)?;
        let i = self
            .0
            .image_update(&ns, image, &paths)
            .await
            .map_err(status)?;
        Ok(Response::new(api::UpdateImageResponse {
            image: Some(image_out(&i)),
        }))
    }

    async fn delete(&self, req: Request<api::DeleteImageRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        self.0
            .image_delete(&ns, &req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(()))
    }

    async fn inspect(
        &self,
        req: Request<api::InspectImageRequest>,
    ) -> RpcResult<api::InspectImageResponse> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let want = platform_opt(req.platform);
        let crate::service::images::Inspected {
            image,
            resolved: r,
            platforms,
            size,
            unpacked,
        } = self
            .0
            .image_inspect(&ns, &req.name, want.as_ref())
            .map_err(status)?;
        Ok(Response::new(api::InspectImageResponse {
            image: Some(image_out(&image)),
            manifest: Some(descriptor_out(&r.manifest)),
            config: Some(descriptor_out(&r.config)),
            layers: r.layers.iter().map(descriptor_out).collect(),
            diff_ids: r.diff_ids.clone(),
            chain_id: r.chain_id().unwrap_or_default().to_string(),
            config_json: r.config_json.clone(),
            size,
            platforms: platforms.iter().map(platform_out).collect(),
            unpacked,
        }))
    }

    async fn unpack(
        &self,
        req: Request<api::UnpackImageRequest>,
    ) -> RpcResult<api::UnpackImageResponse> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let want = platform_opt(req.platform);
        let chain_id = self
            .0
            .image_unpack(&ns, &req.name, &req.snapshotter, want)
            .await
            .map_err(status)?;
        Ok(Response::new(api::UnpackImageResponse { chain_id }))
    }

    type ImportStream = BoxStream<api::ImportResponse>;

    async fn import(
        &self,
        req: Request<Streaming<api::ImportRequest>>,
    ) -> RpcResult<Self::ImportStream> {
        let ns = namespace(&req)?;
        let mut input = req.into_inner();
        let opts = import_options(input.message().await?)?;
        let (out_tx, out_rx) = mpsc::channel(64);
        let (data_tx, data_rx) = mpsc::channel::<io::Result<Vec<u8>>>(8);
        let received = Arc::new(AtomicI64::new(0));

        tokio::spawn(forward_chunks(
            input,
            data_tx,
            out_tx.clone(),
            received.clone(),
        ));

        let services = self.0.clone();
        tokio::spawn(async move {
            let reader = ChunkReader {
                rx: data_rx,
                buf: Vec::new(),
                pos: 0,
            };
            let report = unpack_progress(out_tx.clone(), received.clone());
            let msg = match services.image_import(&ns, opts, reader, report).await {
                Ok(images) => {
                    let _ = out_tx
                        .send(Ok(progress_msg(api::ImportProgress {
                            stage: "done".into(),
                            bytes_received: received.load(Ordering::Relaxed),
                            ..Default::default()
                        })))
                        .await;
                    Ok(api::ImportResponse {
                        payload: Some(api::import_response::Payload::Result(api::ImportResult {
                            images: images.iter().map(image_out).collect(),
                        })),
                    })
                }
                Err(e) => Err(status(e)),
            };
            let _ = out_tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    type ExportStream = BoxStream<api::ExportResponse>;

    async fn export(&self, req: Request<api::ExportRequest>) -> RpcResult<Self::ExportStream> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let want = platform_opt(req.platform);
        // Check the names up front so a bad one is a plain error, not a broken stream.
        for n in &req.names {
            self.0.image_get(&ns, n).map_err(status)?;
        }
        let (tx, rx) = mpsc::channel(4);
        let services = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut w = ChunkWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            };
            let r = services
                .export_blocking(&ns, &req.names, want.as_ref(), &mut w)
                .and_then(|()| w.flush().map_err(|e| Error::io("export", e)));
            if let Err(e) = r {
                let _ = tx.blocking_send(Err(status(e)));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type PullStream = BoxStream<api::PullResponse>;

    async fn pull(&self, req: Request<api::PullRequest>) -> RpcResult<Self::PullStream> {
        use crate::service::images::pull::PullOptions;
        let ns = namespace(&req)?;
        let req = req.into_inner();
        // A bad reference is a plain error, not a broken stream.
        crate::image::reference::parse_normalized(&req.reference).map_err(status)?;
        let opts = PullOptions {
            reference: req.reference,
            platform: platform_opt(req.platform),
            snapshotter: req.snapshotter,
            unpack: !req.no_unpack,
            access: registry_access(req.auth, req.plain_http, req.skip_verify),
            labels: labels(req.labels),
        };
        let (tx, rx) = mpsc::channel(64);
        let sink = tx.clone();
        let progress: crate::registry::progress::ProgressFn = Arc::new(move |blobs| {
            let _ = sink.try_send(Ok(api::PullResponse {
                blobs: blobs_out(&blobs),
                image: None,
            }));
        });
        let services = self.0.clone();
        tokio::spawn(async move {
            let (cancel, watcher) = cancel_when_closed(&tx);
            let result = services.image_pull(&ns, opts, progress, cancel).await;
            watcher.abort();
            let msg = result.map_err(status).map(|p| api::PullResponse {
                blobs: blobs_out(&p.blobs),
                image: Some(image_out(&p.image)),
            });
            let _ = tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type PushStream = BoxStream<api::PushResponse>;

    async fn push(&self, req: Request<api::PushRequest>) -> RpcResult<Self::PushStream> {
        use crate::service::images::push::PushOptions;
        let ns = namespace(&req)?;
        let req = req.into_inner();
        // Unknown image or bad target: a plain error, not a broken stream.
        let image = self.0.image_get(&ns, &req.name).map_err(status)?;
        let target = (!req.target.is_empty()).then_some(req.target);
        if let Some(t) = &target {
            crate::image::reference::parse_normalized(t).map_err(status)?;
        }
        let opts = PushOptions {
            name: image.name,
            target,
            access: registry_access(req.auth, req.plain_http, req.skip_verify),
            platform: platform_opt(req.platform),
        };
        let (tx, rx) = mpsc::channel(64);
        let sink = tx.clone();
        let progress: crate::registry::progress::ProgressFn = Arc::new(move |blobs| {
            let _ = sink.try_send(Ok(api::PushResponse {
                blobs: blobs_out(&blobs),
                digest: String::new(),
            }));
        });
        let services = self.0.clone();
        tokio::spawn(async move {
            let (cancel, watcher) = cancel_when_closed(&tx);
            let result = services.image_push(&ns, opts, progress, cancel).await;
            watcher.abort();
            let msg = result.map_err(status).map(|p| api::PushResponse {
                blobs: blobs_out(&p.blobs),
                digest: p.digest,
            });
            let _ = tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Reports an import's unpacking on `tx` (from the blocking thread it runs on).
fn unpack_progress(
    tx: mpsc::Sender<Result<api::ImportResponse, Status>>,
    count: Arc<AtomicI64>,
) -> impl Fn(ImportEvent) + Send + Sync + 'static {
    move |ev: ImportEvent| {
        let ImportEvent::Unpacking {
            layer,
            index,
            count: n,
        } = ev;
        let _ = tx.blocking_send(Ok(progress_msg(api::ImportProgress {
            stage: "unpacking".into(),
            bytes_received: count.load(Ordering::Relaxed),
            layer,
            layer_index: index as i32,
            layer_count: n as i32,
        })));
    }
}

/// The options an import stream's first message must carry.
fn import_options(first: Option<api::ImportRequest>) -> Result<ImportOptions, Status> {
    let Some(api::import_request::Payload::Options(o)) = first.and_then(|m| m.payload) else {
        return Err(Status::invalid_argument(
            "import: the first message must carry the options",
        ));
    };
    Ok(ImportOptions {
        name: (!o.name.is_empty()).then_some(o.name),
        snapshotter: o.snapshotter,
        platform: platform_opt(o.platform),
        unpack: !o.no_unpack,
        labels: labels(o.labels),
    })
}

/// Forwards the archive bytes of an import stream to `data`, counting them in `count` and
/// reporting progress on `progress` about every 8 MiB.
async fn forward_chunks(
    mut input: Streaming<api::ImportRequest>,
    data_tx: mpsc::Sender<io::Result<Vec<u8>>>,
    progress: mpsc::Sender<Result<api::ImportResponse, Status>>,
    count: Arc<AtomicI64>,
) {
    let mut next_report = 0i64;
    loop {
        let msg = match input.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                let _ = data_tx
                    .send(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("import stream broke off: {}", e.message()),
                    )))
                    .await;
                return;
            }
        };
        let Some(api::import_request::Payload::Chunk(chunk)) = msg.payload else {
            let _ = data_tx
                .send(Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "import: only the first message may carry options",
                )))
                .await;
            return;
        };
        let total = count.fetch_add(chunk.len() as i64, Ordering::Relaxed) + chunk.len() as i64;
        if data_tx.send(Ok(chunk)).await.is_err() {
            return;
        }
        if total >= next_report {
            next_report = total + (8 << 20);
            let _ = progress.try_send(Ok(progress_msg(api::ImportProgress {
                stage: "receiving".into(),
                bytes_received: total,
                ..Default::default()
            })));
        }
    }
}

fn registry_access(
    auth: Option<api::RegistryAuth>,
    plain_http: bool,
    skip_verify: bool,
) -> crate::registry::Access {
    crate::registry::Access {
        credentials: auth.map(|a| crate::registry::Credentials {
            username: a.username,
            password: a.password,
            token: a.token,
        }),
        plain_http,
        skip_verify,
    }
}

fn blobs_out(blobs: &[crate::registry::progress::BlobProgress]) -> Vec<api::BlobProgress> {
    blobs
        .iter()
        .map(|b| api::BlobProgress {
            digest: b.digest.clone(),
            media_type: b.media_type.clone(),
            size: b.size,
            offset: b.offset,
            status: b.status.as_str().to_string(),
        })
        .collect()
}

/// A cancel signal that fires when the client stops reading the response stream.
fn cancel_when_closed<T: Send + 'static>(
    tx: &mpsc::Sender<T>,
) -> (
    crate::registry::progress::Cancel,
    tokio::task::JoinHandle<()>,
) {
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    let tx = tx.clone();
    let watcher = tokio::spawn(async move {
        tx.closed().await;
        let _ = cancel_tx.send(true);
    });
    (cancel_rx, watcher)
}
