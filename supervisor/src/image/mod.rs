//! Images: references, archives (import/export), and unpacking layers into snapshots.

pub mod apply;
pub mod compression;
pub mod oci;
pub mod platform;
pub mod reference;
