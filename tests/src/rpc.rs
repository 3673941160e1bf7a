//! Calls the tests make often: streaming an archive into Images.Import (whole, truncated or
//! cancelled), listing what a namespace holds, and waiting for a condition.

use std::future::Future;
use std::time::{Duration, Instant};

use sup_client::{api, Client};
use tonic::{Code, Status};

/// Size of the chunks an archive is streamed in.
pub const CHUNK: usize = 256 * 1024;

/// Options that unpack into `snapshotter`.
pub fn options(snapshotter: &str) -> api::ImportOptions {
    api::ImportOptions {
        snapshotter: snapshotter.to_string(),
        ..Default::default()
    }
}

fn requests(opts: api::ImportOptions, archive: &[u8]) -> Vec<api::ImportRequest> {
    let mut out = vec![api::ImportRequest {
        payload: Some(api::import_request::Payload::Options(opts)),
    }];
    out.extend(archive.chunks(CHUNK).map(|c| api::ImportRequest {
        payload: Some(api::import_request::Payload::Chunk(c.to_vec())),
    }));
    out
}

/// Streams `archive` into Images.Import and returns the final result.
pub async fn import(
    client: &Client,
    opts: api::ImportOptions,
    archive: &[u8],
) -> Result<api::ImportResult, Status> {
    let stream = tokio_stream::iter(requests(opts, archive));
    let mut responses = client.images().import(stream).await?.into_inner();
    while let Some(msg) = responses.message().await? {
        if let Some(api::import_response::Payload::Result(result)) = msg.payload {
            return Ok(result);
        }
    }
    Err(Status::unknown(
        "the import stream ended without a result (test harness)",
    ))
}

/// Imports and panics on failure; returns the images created.
pub async fn import_ok(
    client: &Client,
    opts: api::ImportOptions,
    archive: &[u8],
) -> Vec<api::Image> {
    match import(client, opts, archive).await {
        Ok(result) => result.images,
        Err(status) => panic!("import failed: {:?}: {}", status.code(), status.message()),
    }
}

/// Sends the options and the first `sent` bytes of `archive`, gives supd time to receive
/// them (until it reports them, 10 s at most), then drops the call without ending the request
/// stream: the client goes away mid-import.
pub async fn import_cancelled(
    client: &Client,
    opts: api::ImportOptions,
    archive: &[u8],
    sent: usize,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut images = client.images();
    let work = async {
        let call = images.import(tokio_stream::wrappers::ReceiverStream::new(rx));
        let feed = async {
            for req in requests(opts, &archive[..sent]) {
                if tx.send(req).await.is_err() {
                    break;
                }
            }
        };
        let (response, ()) = tokio::join!(call, feed);
        let Ok(response) = response else {
            return;
        };
        // supd reports progress now and then, not for every chunk: a quiet spell of 2 s after
        // the last bytes went out also means it has taken them.
        let mut responses = response.into_inner();
        while let Ok(Ok(Some(msg))) =
            tokio::time::timeout(Duration::from_secs(2), responses.message()).await
        {
            if let Some(api::import_response::Payload::Progress(p)) = msg.payload {
                if p.bytes_received >= sent as i64 {
                    break;
                }
            }
        }
    };
    // Whether supd answers early or only at the end of the stream, it has had the bytes.
    let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
    drop(tx);
}

/// Panics unless `result` failed with `code`; returns the message.
pub fn expect_code<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    what: &str,
) -> String {
    match result {
        Ok(v) => panic!("{what}: expected {code:?}, got success: {v:?}"),
        Err(s) => {
            assert_eq!(
                s.code(),
                code,
                "{what}: expected {code:?}, got {:?}: {}",
                s.code(),
                s.message()
            );
            s.message().to_string()
        }
    }
}

pub async fn list_images(client: &Client) -> Vec<api::Image> {
    client
        .images()
        .list(api::ListImagesRequest::default())
        .await
        .expect("Images.List")
        .into_inner()
        .images
}

pub async fn list_content(client: &Client) -> Vec<api::ContentInfo> {
    let mut stream = client
        .content()
        .list(api::ListContentRequest::default())
        .await
        .expect("Content.List")
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await.expect("Content.List stream") {
        out.extend(msg.info);
    }
    out
}

pub async fn list_ingests(client: &Client) -> Vec<api::ContentStatus> {
    client
        .content()
        .list_statuses(api::ListContentStatusesRequest::default())
        .await
        .expect("Content.ListStatuses")
        .into_inner()
        .statuses
}

pub async fn list_snapshots(client: &Client, snapshotter: &str) -> Vec<api::SnapshotInfo> {
    let mut stream = client
        .snapshots()
        .list(api::ListSnapshotsRequest {
            snapshotter: snapshotter.to_string(),
            filters: vec![],
        })
        .await
        .expect("Snapshots.List")
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await.expect("Snapshots.List stream") {
        out.extend(msg.info);
    }
    out
}

/// Everything a namespace holds, as one line per object, for "nothing left" checks.
pub async fn holdings(client: &Client) -> Vec<String> {
    let mut out: Vec<String> = list_images(client)
        .await
        .into_iter()
        .map(|i| format!("image {}", i.name))
        .collect();
    out.extend(
        list_content(client)
            .await
            .into_iter()
            .map(|c| format!("blob {} ({} bytes)", c.digest, c.size)),
    );
    out.extend(
        list_ingests(client)
            .await
            .into_iter()
            .map(|s| format!("ingest {} at {}", s.r#ref, s.offset)),
    );
    for snapshotter in crate::SNAPSHOTTERS {
        out.extend(
            list_snapshots(client, snapshotter)
                .await
                .into_iter()
                .map(|s| format!("{snapshotter} snapshot {} ({:?})", s.name, s.kind())),
        );
    }
    out
}

/// Waits (10 s at most) until the namespace holds nothing; panics with what is left.
pub async fn assert_nothing_left(client: &Client, what: &str) {
    let left = eventually(Duration::from_secs(10), || async {
        let left = holdings(client).await;
        left.is_empty().then_some(()).ok_or(left)
    })
    .await;
    if let Err(left) = left {
        panic!(
            "{what}: namespace {:?} still holds {left:#?}",
            client.namespace()
        );
    }
}

/// Retries `check` every 100 ms until it succeeds or `timeout` passes; returns the last error.
pub async fn eventually<T, E, F, Fut>(timeout: Duration, mut check: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Images.Get.
pub async fn get_image(client: &Client, name: &str) -> Result<api::Image, Status> {
    let resp = client
        .images()
        .get(api::GetImageRequest {
            name: name.to_string(),
        })
        .await?;
    resp.into_inner()
        .image
        .ok_or_else(|| Status::unknown("Images.Get answered without an image (test harness)"))
}

/// Images.Inspect for the host platform; panics on failure.
pub async fn inspect(client: &Client, name: &str) -> api::InspectImageResponse {
    inspect_platform(client, name, None)
        .await
        .unwrap_or_else(|s| panic!("Images.Inspect {name}: {:?}: {}", s.code(), s.message()))
}

/// Images.Inspect for `platform` (the host's when None).
pub async fn inspect_platform(
    client: &Client,
    name: &str,
    platform: Option<api::Platform>,
) -> Result<api::InspectImageResponse, Status> {
    Ok(client
        .images()
        .inspect(api::InspectImageRequest {
            name: name.to_string(),
            platform,
        })
        .await?
        .into_inner())
}

/// Images.Delete.
pub async fn delete_image(client: &Client, name: &str) -> Result<(), Status> {
    client
        .images()
        .delete(api::DeleteImageRequest {
            name: name.to_string(),
        })
        .await
        .map(|_| ())
}

/// Images.Export of `names`, collected into one archive.
pub async fn export(client: &Client, names: &[&str]) -> Result<Vec<u8>, Status> {
    let mut stream = client
        .images()
        .export(api::ExportRequest {
            names: names.iter().map(|n| n.to_string()).collect(),
            platform: None,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await? {
        out.extend_from_slice(&msg.chunk);
    }
    Ok(out)
}

/// Converts a test platform to the API's.
pub fn platform(p: &crate::Platform) -> api::Platform {
    api::Platform {
        os: p.os.clone(),
        architecture: p.architecture.clone(),
        variant: p.variant.clone(),
        os_version: String::new(),
    }
}
