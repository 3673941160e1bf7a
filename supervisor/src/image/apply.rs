//! Applies one uncompressed layer tarball to a snapshot directory, safely.
//!
//! (Being written: see the interface below.)

use std::io::Read;

use crate::error::Result;
use crate::snapshot::ApplyTarget;

/// What applying a layer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `sha256:<hex>` of the uncompressed tar stream as read (to check against `diff_ids`).
    pub diff_id: String,
    /// Uncompressed bytes read.
    pub size: u64,
}

/// Applies the uncompressed tar stream `layer` to `target`.
pub fn apply_layer(_layer: &mut dyn Read, _target: &ApplyTarget) -> Result<Applied> {
    Err(crate::error::Error::internal("layer applier missing"))
}
