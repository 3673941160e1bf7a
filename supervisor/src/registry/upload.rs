//! The push side of the distribution API: whether the registry has a blob, blob uploads
//! (one PUT, or PATCHes of a set size and a closing PUT) streamed from the content store's
//! files, and manifest puts checked against the digest the registry reports.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode, Url};

use crate::content::digest;
use crate::error::{printable, Error, Result};

use super::client::{header_str, Endpoint, DOCKER_CONTENT_DIGEST};
use super::progress::Activity;
use super::Repository;

/// Counts bytes sent by an upload.
pub type SentFn = Arc<dyn Fn(u64) + Send + Sync>;

impl Repository {
    fn push_endpoint(&self) -> Result<&Endpoint> {
        self.endpoints
            .iter()
            .find(|e| e.info.capabilities.push)
            .ok_or_else(|| self.no_endpoint("push"))
    }

    /// Whether the registry has blob `digest` in this repository.
    pub async fn has_blob(&self, digest: &str) -> Result<bool> {
        let ep = self.push_endpoint()?;
        let url = self.url(ep, &format!("blobs/{digest}"));
        let resp = self.send(ep, &url, &|c, u| c.head(u)).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_error(ep, resp).await),
        }
    }

    /// Uploads the blob stored at `path`: in one PUT when it is at most `chunk` bytes, else
    /// in PATCHes of `chunk` bytes and a closing PUT.
    pub async fn upload_blob(
        &self,
        digest: &str,
        size: u64,
        path: PathBuf,
        chunk: u64,
        sent: SentFn,
    ) -> Result<()> {
        let ep = self.push_endpoint()?;
        // Bodies take as long as they take; only a body that stops moving is given up on.
        let activity = Activity::new();
        let sent: SentFn = {
            let (a, inner) = (activity.clone(), sent);
            Arc::new(move |n| {
                a.touch();
                inner(n)
            })
        };
        let start = self.url(ep, "blobs/uploads/");
        let resp = self
            .send(ep, &start, &|c, u| c.post(u).header(CONTENT_LENGTH, "0"))
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(ep, resp).await);
        }
        let mut location = self.location(ep, resp.headers())?;
        let mut offset = 0u64;
        if size > chunk {
            while offset < size {
                let n = chunk.min(size - offset);
                let (p, s) = (path.clone(), sent.clone());
                let patch = move |c: &reqwest::Client, u: Url| {
                    c.request(Method::PATCH, u)
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header("content-range", format!("{offset}-{}", offset + n - 1))
                        .header(CONTENT_LENGTH, n.to_string())
                        .body(file_body(p.clone(), offset, n, s.clone()))
                };
                let resp = self
                    .send_watched(ep, &location, &patch, Some(&activity))
                    .await?;
                if resp.status() != StatusCode::ACCEPTED {
                    return Err(self.status_error(ep, resp).await);
                }
                location = self.location(ep, resp.headers())?;
                offset += n;
            }
        }
        let mut done = location.clone();
        done.query_pairs_mut().append_pair("digest", digest);
        let rest = size - offset;
        let put = move |c: &reqwest::Client, u: Url| {
            let r = c
                .put(u)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, rest.to_string());
            if rest == 0 {
                r
            } else {
                r.body(file_body(path.clone(), offset, rest, sent.clone()))
            }
        };
        let resp = self.send_watched(ep, &done, &put, Some(&activity)).await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.status_error(ep, resp).await);
        }
        Ok(())
    }

    fn location(&self, ep: &Endpoint, headers: &HeaderMap) -> Result<Url> {
        let loc = header_str(headers, LOCATION.as_str()).ok_or_else(|| {
            Error::Unavailable(format!(
                "{}: upload answer without a Location",
                ep.info.host
            ))
        })?;
        ep.info.base.join(&loc).map_err(|e| {
            Error::Unavailable(format!(
                "{}: upload Location {:?}: {e}",
                ep.info.host,
                printable(&loc)
            ))
        })
    }

    /// Puts a manifest or index under `reference` (a tag or its digest).
    pub async fn put_manifest(&self, reference: &str, media_type: &str, data: &[u8]) -> Result<()> {
        let ep = self.push_endpoint()?;
        let url = self.url(ep, &format!("manifests/{reference}"));
        let body = Bytes::copy_from_slice(data);
        let put = |c: &reqwest::Client, u: Url| {
            c.put(u).header(CONTENT_TYPE, media_type).body(body.clone())
        };
        let resp = self.send(ep, &url, &put).await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.status_error(ep, resp).await);
        }
        let ours = digest::of_bytes(data);
        if let Some(theirs) = header_str(resp.headers(), DOCKER_CONTENT_DIGEST) {
            if theirs.starts_with("sha256:") && theirs != ours {
                return Err(Error::DataLoss(format!(
                    "the registry stored manifest {ours} as {}",
                    printable(&theirs)
                )));
            }
        }
        Ok(())
    }
}

/// A request body that streams `len` bytes of the file from `offset`, counting them.
fn file_body(path: PathBuf, offset: u64, len: u64, sent: SentFn) -> reqwest::Body {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let stream = futures::stream::unfold(
        (None::<tokio::fs::File>, len, path),
        move |(file, left, path)| {
            let sent = sent.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let mut f = match file {
                    Some(f) => f,
                    None => {
                        let opened = async {
                            let mut f = tokio::fs::File::open(&path).await?;
                            f.seek(std::io::SeekFrom::Start(offset)).await?;
                            Ok::<_, std::io::Error>(f)
                        };
                        match opened.await {
                            Ok(f) => f,
                            Err(e) => return Some((Err(e), (None, 0, path))),
                        }
                    }
                };
                let mut buf = vec![0u8; left.min(256 << 10) as usize];
                match f.read(&mut buf).await {
                    Ok(0) => Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "blob file shorter than its size",
                        )),
                        (None, 0, path),
                    )),
                    Ok(n) => {
                        buf.truncate(n);
                        sent(n as u64);
                        Some((Ok(Bytes::from(buf)), (Some(f), left - n as u64, path)))
                    }
                    Err(e) => Some((Err(e), (None, 0, path))),
                }
            }
        },
    );
    reqwest::Body::wrap_stream(stream)
}
