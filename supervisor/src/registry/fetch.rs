//! Streams one blob from a registry into the content store, through the resumable ingest
//! named after its digest: a partial ingest left by an interrupted pull is continued with a
//! Range request (or started over when the registry ignores ranges), every byte is counted
//! against the descriptor's size, and the blob becomes visible only once its digest checks.

use crate::content::{digest, ContentStore, Writer};
use crate::error::{Error, Result};
use crate::labels::Labels;
use crate::store::Descriptor;

use super::progress::{unless_cancelled, BlobStatus, Cancel, Tracker};
use super::Repository;

/// Bytes gathered from the network before each write to the ingest.
const WRITE_BATCH: usize = 1 << 20;

/// Where a blob goes and who hears about it.
pub struct BlobFetch<'a> {
    pub content: &'a ContentStore,
    pub ns: &'a str,
    pub repo: &'a Repository,
    pub tracker: &'a Tracker,
}

/// The ingest ref a pull of blob `digest` writes in its namespace.
pub fn ingest_ref(digest: &str) -> String {
    format!("pull-{digest}")
}

impl BlobFetch<'_> {
    /// Fetches `desc` unless it is on disk already. Returns whether this created the
    /// namespace's content record of it (the commit of an ingest records it).
    pub async fn fetch(&self, desc: &Descriptor, stop: &mut Cancel) -> Result<bool> {
        digest::validate(&desc.digest)?;
        if desc.size < 0 {
            return Err(Error::invalid(format!(
                "blob {}: negative size",
                desc.digest
            )));
        }
        let d = desc.digest.as_str();
        let r = ingest_ref(d);
        for attempt in 0..2 {
            if self.content.blob_exists(d)? {
                self.tracker.status(d, BlobStatus::Exists);
                return Ok(false);
            }
            let Some(w) = self.open_ingest(&r, desc, stop).await? else {
                self.tracker.status(d, BlobStatus::Exists);
                return Ok(false);
            };
            let resumed = w.status().offset > 0;
            match self.download(&r, w, desc, stop).await {
                // Bytes kept from an earlier try may be what is wrong: once more from zero.
                Err(Error::DataLoss(m)) if resumed && attempt == 0 => {
                    tracing::info!(digest = d, error = %m, "resumed download is corrupt; starting over");
                }
                other => return other,
            }
        }
        Err(Error::DataLoss(format!("blob {d}: corrupt twice")))
    }

    /// The ingest's writer; None when the blob turned up while another pull of it held the
    /// ingest.
    async fn open_ingest(
        &self,
        r: &str,
        desc: &Descriptor,
        stop: &mut Cancel,
    ) -> Result<Option<Writer>> {
        let deadline = tokio::time::Instant::now() + self.repo.stall();
        loop {
            match self.content.writer(self.ns, r, desc.size, &desc.digest) {
                Ok(w) => return Ok(Some(w)),
                Err(Error::Unavailable(_)) if tokio::time::Instant::now() < deadline => {}
                Err(e) => return Err(e),
            }
            let nap = tokio::time::sleep(std::time::Duration::from_millis(200));
            unless_cancelled(stop, async {
                nap.await;
                Ok(())
            })
            .await?;
            if self.content.blob_exists(&desc.digest)? {
                return Ok(None);
            }
        }
    }

    /// Streams the rest of the blob into `w` and commits it.
    async fn download(
        &self,
        r: &str,
        mut w: Writer,
        desc: &Descriptor,
        stop: &mut Cancel,
    ) -> Result<bool> {
        let d = desc.digest.clone();
        let size = desc.size;
        let mut offset = w.status().offset;
        if offset > size {
            w = self.restart_ingest(r, w, desc)?;
            offset = 0;
        }
        if offset < size {
            self.tracker.status(&d, BlobStatus::Downloading);
            self.tracker.offset(&d, offset);
            let mut body = unless_cancelled(stop, self.repo.blob(&d, offset as u64)).await?;
            if offset > 0 && !body.partial {
                tracing::debug!(digest = %d, "the registry ignored the range: starting over");
                w = self.restart_ingest(r, w, desc)?;
                offset = 0;
            }
            let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
            let received: Result<()> = loop {
                let chunk = match unless_cancelled(stop, body.next()).await {
                    Ok(Some(c)) => c,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                };
                if offset + (buf.len() + chunk.len()) as i64 > size {
                    buf.clear();
                    break Err(Error::DataLoss(format!(
                        "blob {d}: the registry sent more than the {size} bytes announced"
                    )));
                }
                buf.extend_from_slice(&chunk);
                if buf.len() >= WRITE_BATCH {
                    let n = buf.len() as i64;
                    (w, buf) = write_batch(w, offset, buf).await?;
                    offset += n;
                    self.tracker.offset(&d, offset);
                }
            };
            // What arrived before a failure is kept for the next try.
            if !buf.is_empty() {
                let n = buf.len() as i64;
                (w, _) = write_batch(w, offset, buf).await?;
                offset += n;
            }
            received?;
            if offset < size {
                let _ = w.checkpoint();
                return Err(Error::DataLoss(format!(
                    "blob {d}: the registry sent {offset} of {size} bytes: truncated"
                )));
            }
        }
        let (store, ns, r, expected) = (
            self.content.clone(),
            self.ns.to_string(),
            r.to_string(),
            d.clone(),
        );
        let committed = tokio::task::spawn_blocking(move || {
            let had = store.has(&ns, &expected)?;
            match w.commit(size, &expected, &Labels::new()) {
                Ok(_) => Ok(!had),
                Err(e) => {
                    // A verified mismatch: these bytes can never become the blob.
                    let _ = store.abort(&ns, &r);
                    Err(match e {
                        Error::FailedPrecondition(m) => Error::DataLoss(format!(
                            "blob {expected}: content does not match its digest ({m})"
                        )),
                        other => other,
                    })
                }
            }
        })
        .await??;
        self.tracker.status(&d, BlobStatus::Done);
        Ok(committed)
    }

    /// Drops what an ingest holds and opens it again, empty.
    fn restart_ingest(&self, r: &str, w: Writer, desc: &Descriptor) -> Result<Writer> {
        drop(w);
        match self.content.abort(self.ns, r) {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        self.content.writer(self.ns, r, desc.size, &desc.digest)
    }
}

/// Appends `buf` at `offset` on a blocking thread; hands the writer and the emptied buffer
/// back.
async fn write_batch(mut w: Writer, offset: i64, buf: Vec<u8>) -> Result<(Writer, Vec<u8>)> {
    tokio::task::spawn_blocking(move || {
        w.write_at(offset, &buf)?;
        let mut buf = buf;
        buf.clear();
        Ok((w, buf))
    })
    .await?
}
