//! Unpacking: each layer of a resolved image applied on top of its parent as a committed
//! snapshot named by its chain ID. Layers already unpacked (by any image) are skipped; a layer
//! whose uncompressed digest does not match the config's diff ID is refused, and a failure
//! leaves no snapshot from this call behind.

use std::io::BufReader;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::events::{topic, Payload};
use crate::image::{apply, compression};
use crate::labels::Labels;
use crate::service::Services;
use crate::snapshot::{Kind, Snapshotter};

use super::{Resolved, LABEL_DIFF_ID};

/// Progress of an unpack: (layer index from 1, layer count, layer digest).
pub type UnpackProgress<'a> = &'a (dyn Fn(usize, usize, &str) + Sync);

/// What an unpack made: the committed snapshots it created, bottom first.
#[derive(Debug, Default)]
pub struct Unpacked {
    pub created: Vec<String>,
}

impl Services {
    /// Applies the layers of `image` in `ns` (blocking). On failure, removes the snapshots
    /// this call created.
    pub fn unpack_blocking(
        &self,
        ns: &str,
        snapshotter: &Arc<dyn Snapshotter>,
        image: &Resolved,
        progress: UnpackProgress<'_>,
    ) -> Result<Unpacked> {
        let mut done = Unpacked::default();
        match self.unpack_layers(ns, snapshotter, image, progress, &mut done) {
            Ok(()) => Ok(done),
            Err(e) => {
                self.undo_unpack(ns, snapshotter, &done);
                Err(e)
            }
        }
    }

    /// Removes snapshots an unpack created, top first.
    pub fn undo_unpack(&self, ns: &str, snapshotter: &Arc<dyn Snapshotter>, done: &Unpacked) {
        for key in done.created.iter().rev() {
            if let Err(e) = snapshotter.remove(ns, key) {
                tracing::warn!(namespace = ns, snapshot = %key, error = %e, "cannot remove unpacked layer");
            }
        }
    }

    fn unpack_layers(
        &self,
        ns: &str,
        snapshotter: &Arc<dyn Snapshotter>,
        image: &Resolved,
        progress: UnpackProgress<'_>,
        done: &mut Unpacked,
    ) -> Result<()> {
        let count = image.layers.len();
        let mut parent: Option<&str> = None;
        for (i, layer) in image.layers.iter().enumerate() {
            let chain = &image.chain_ids[i];
            let diff_id = &image.diff_ids[i];
            match snapshotter.stat(ns, chain) {
                Ok(info) if info.kind == Kind::Committed => {
                    parent = Some(chain);
                    continue;
                }
                Ok(_) => {
                    return Err(Error::precondition(format!(
                        "snapshot {chain:?} in namespace {ns:?} exists but is not committed"
                    )))
                }
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            progress(i + 1, count, &layer.digest);
            let key = format!(
                "{}{}-{}",
                crate::service::gc::UNPACK_PREFIX,
                std::process::id(),
                random_suffix()
            );
            snapshotter.prepare(ns, &key, parent, Labels::new())?;
            let applied = self.apply_one(ns, snapshotter, &key, layer, diff_id);
            let committed = applied.and_then(|()| {
                let labels = Labels::from([(LABEL_DIFF_ID.to_string(), diff_id.clone())]);
                snapshotter.commit(ns, chain, &key, labels)
            });
            match committed {
                Ok(_) => {
                    done.created.push(chain.clone());
                    self.events.publish(
                        ns,
                        topic::SNAPSHOT_COMMIT,
                        Payload::Snapshot {
                            snapshotter: snapshotter.name().to_string(),
                            key: key.clone(),
                            parent: parent.unwrap_or_default().to_string(),
                            name: chain.clone(),
                        },
                    );
                }
                // Someone else unpacked the same layer meanwhile: theirs is as good.
                Err(Error::AlreadyExists(_)) => {
                    let _ = snapshotter.remove(ns, &key);
                }
                Err(e) => {
                    if let Err(rm) = snapshotter.remove(ns, &key) {
                        tracing::warn!(namespace = ns, snapshot = %key, error = %rm, "cannot remove failed unpack");
                    }
                    return Err(e);
                }
            }
            parent = Some(chain);
        }
        Ok(())
    }

    fn apply_one(
        &self,
        ns: &str,
        snapshotter: &Arc<dyn Snapshotter>,
        key: &str,
        layer: &crate::store::Descriptor,
        diff_id: &str,
    ) -> Result<()> {
        let target = snapshotter.apply_target(ns, key)?;
        let blob = self.content.open_blob(&layer.digest)?;
        let reader = BufReader::with_capacity(1 << 20, blob);
        let mut stream = compression::open_layer(reader, &layer.media_type)
            .map_err(|e| e.context(format!("layer {}", layer.digest)))?;
        let applied = apply::apply_layer(&mut stream, &target)
            .map_err(|e| e.context(format!("layer {}", layer.digest)))?;
        if applied.diff_id != diff_id {
            return Err(Error::invalid(format!(
                "layer {}: uncompressed content has digest {}, the image config says {}",
                layer.digest, applied.diff_id, diff_id
            )));
        }
        sync_filesystem(&target.root)
    }
}

/// One syncfs for the whole layer instead of an fsync per file.
fn sync_filesystem(dir: &std::path::Path) -> Result<()> {
    let f =
        std::fs::File::open(dir).map_err(|e| Error::io(format!("opening {}", dir.display()), e))?;
    rustix::fs::syncfs(&f).map_err(|e| Error::io("syncing layer", e.into()))
}

pub(crate) fn random_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:x}{:x}", nanos, seq)
}
