//! Shared harness for the end-to-end tests: a real supd per test, and images made in code.
//!
//! Every test starts its own [`Daemon`] in a fresh temporary directory (root, state, socket),
//! builds the images it needs with [`LayerBuilder`] and [`ImageBuilder`], talks to supd through
//! `sup_client` or the supctl binary, and checks unpacked trees entry by entry with [`Tree`].
#![deny(unsafe_code)]

pub mod bare;
pub mod big;
pub mod bins;
pub mod busybox;
pub mod chaos;
pub mod cri;
pub mod daemon;
pub mod digest;
pub mod h2raw;
pub mod image;
pub mod layer;
pub mod model;
pub mod mounts;
pub mod registry;
pub mod rpc;
mod sys;
pub mod tarfmt;
pub mod task;
pub mod tree;
pub mod view;

pub use daemon::Daemon;
pub use image::{DockerArchive, Image, ImageBuilder, OciArchive, Platform};
pub use layer::{Compression, Entry, Layer, LayerBuilder};
pub use tree::{Kind, Node, Tree};
pub use view::MountedView;

/// The two snapshotters every unpack test runs against.
pub const SNAPSHOTTERS: [&str; 2] = ["overlayfs", "native"];

/// Namespace the tests use unless they say otherwise.
pub const NS: &str = "default";

/// Instantiates each `async fn NAME(snapshotter: &str)` of the calling test file once per
/// snapshotter, as `overlayfs::NAME` and `native::NAME`.
#[macro_export]
macro_rules! per_snapshotter {
    ($($name:ident),* $(,)?) => {
        mod overlayfs {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("overlayfs").await
                }
            )*
        }
        mod native {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("native").await
                }
            )*
        }
    };
}
