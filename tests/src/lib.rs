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
pub mod crictl;
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

/// Adds `text` to the run's report (the file `SUP_TEST_REPORT` names, when set): what a test
/// wants shown beyond pass or fail, such as the units systemd made.
pub fn report(text: &str) {
    use std::io::Write;
    let Some(path) = std::env::var_os("SUP_TEST_REPORT") else {
        return;
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{text}");
    }
}

/// Whether the run must be on cgroup v2 (`SUP_TEST_CGROUP_VERSION=2`, as in the cgroup v2
/// guest): a test that needs it then fails rather than skips when it is not there.
pub fn v2_required() -> bool {
    std::env::var("SUP_TEST_CGROUP_VERSION").is_ok_and(|v| v == "2")
}
