//! The content domain: blobs by digest with their labels, and ingests in progress. Reads
//! and ingests go to the content store; what touches other domains (a blob in use by an
//! image, the flush and the event of a delete) is here.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use crate::content::{self, Info, Writer};
use crate::error::{Error, Result};
use crate::events::{topic, Payload};
use crate::labels::Labels;
use crate::service::Services;

/// An open blob, positioned at the first byte asked for, and where to stop.
pub struct BlobRange {
    pub file: File,
    pub offset: i64,
    pub end: i64,
}

impl Services {
    pub fn content_info(&self, ns: &str, digest: &str) -> Result<Info> {
        self.content.info(ns, digest)
    }

    pub fn content_list(&self, ns: &str) -> Result<Vec<Info>> {
        self.content.list(ns)
    }

    pub fn content_update(
        &self,
        ns: &str,
        digest: &str,
        labels: &Labels,
        paths: &[String],
    ) -> Result<Info> {
        self.content.update(ns, digest, labels, paths)
    }

    /// Deletes a blob no image of the namespace reaches, durably, and says so.
    pub async fn content_delete(&self, ns: &str, digest: &str) -> Result<()> {
        content::digest::validate(digest)?;
        if let Some(image) = self.blob_in_use(ns, digest)? {
            return Err(Error::precondition(format!(
                "content {digest} in namespace {ns:?}: in use by image {image:?}"
            )));
        }
        self.content.delete(ns, digest)?;
        self.store.flush().await?;
        self.events.publish(
            ns,
            topic::CONTENT_DELETE,
            Payload::Content {
                digest: digest.to_string(),
            },
        );
        Ok(())
    }

    /// `size` bytes of a blob from `offset` (0: to the end), checked against its size.
    pub fn content_read(
        &self,
        ns: &str,
        digest: &str,
        offset: i64,
        size: i64,
    ) -> Result<BlobRange> {
        if offset < 0 || size < 0 {
            return Err(Error::invalid("offset and size must not be negative"));
        }
        let info = self.content.info(ns, digest)?;
        if offset > info.size {
            return Err(Error::OutOfRange(format!(
                "offset {offset} is past the end of {digest} ({} bytes)",
                info.size
            )));
        }
        let mut file = self.content.open(ns, digest)?;
        file.seek(SeekFrom::Start(offset as u64))
            .map_err(|e| Error::io("seeking blob", e))?;
        let end = if size == 0 {
            info.size
        } else {
            offset.saturating_add(size).min(info.size)
        };
        Ok(BlobRange { file, offset, end })
    }

    pub fn content_status(&self, ns: &str, r: &str) -> Result<content::Status> {
        self.content.status(ns, r)
    }

    pub fn content_statuses(&self, ns: &str) -> Result<Vec<content::Status>> {
        self.content.list_statuses(ns)
    }

    /// Starts or resumes ingest `r`, in a namespace made for it if need be.
    pub fn content_writer(&self, ns: &str, r: &str, total: i64, expected: &str) -> Result<Writer> {
        if r.is_empty() {
            return Err(Error::invalid("the first write message must name the ref"));
        }
        self.namespace_ensure(ns)?;
        self.content.writer(ns, r, total, expected)
    }

    pub fn content_abort(&self, ns: &str, r: &str) -> Result<()> {
        self.content.abort(ns, r)
    }
}
