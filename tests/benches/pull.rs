//! Pull benchmark: a ~120 MB image pulled (and unpacked) by supd from a registry on loopback
//! (Debian's docker-registry), against the same transfer and unpack with reference tools in
//! the same run: `skopeo copy` to a local directory, then GNU `tar -x` of the layer. Prints
//! medians and the ratio. Not a test: nothing here passes or fails.
//!
//! Run with `cargo bench -p sup-tests --bench pull` (skopeo must be installed:
//! `apt-get install skopeo`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sup_client::api;
use sup_tests::big::big_layer;
use sup_tests::image::name_annotations;
use sup_tests::registry::{self, Registry};
use sup_tests::{Compression, Daemon, ImageBuilder, OciArchive};

const REPS: usize = 3;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Pulls into a fresh daemon (nothing cached); the time runs from the request to the image.
async fn time_pull(reference: &str, snapshotter: &str) -> Duration {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let req = api::PullRequest {
        snapshotter: snapshotter.to_string(),
        ..registry::pull_request(reference)
    };
    let started = Instant::now();
    let mut stream = client.images().pull(req).await.expect("pull").into_inner();
    let mut image = None;
    while let Some(msg) = stream.message().await.expect("pull stream") {
        image = image.or(msg.image);
    }
    assert!(image.is_some(), "the pull ended without an image");
    started.elapsed()
}

/// skopeo copies the image into a directory, then tar unpacks its one layer.
fn time_reference_tools(reference: &str, work: &Path, rep: usize, layer_hex: &str) -> Duration {
    let dir = work.join(format!("skopeo-{rep}"));
    let root = work.join(format!("rootfs-{rep}"));
    std::fs::create_dir(&root).expect("rootfs dir");
    let started = Instant::now();
    let copied = Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dir.display()))
        .status()
        .expect("run skopeo (apt-get install skopeo)");
    assert!(copied.success(), "skopeo copy failed");
    let untar = Command::new("tar")
        .arg("-xzpf")
        .arg(dir.join(layer_hex))
        .arg("-C")
        .arg(&root)
        .status()
        .expect("run tar");
    assert!(untar.success(), "tar failed");
    let took = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&root);
    took
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (layer, files, bytes) = big_layer();
    let layer = layer.build(Compression::Gzip);
    let layer_hex = layer.digest.trim_start_matches("sha256:").to_string();
    let image = ImageBuilder::new().layer(layer.clone()).build();
    let archive = OciArchive::new().image(&image, name_annotations("bench/big:1"));
    println!(
        "image: {files} files, {:.1} MB of file data; one gzip layer of {:.1} MB",
        bytes as f64 / 1e6,
        layer.blob.len() as f64 / 1e6
    );

    let reg = Registry::start();
    let reference = format!("{}/bench/big:1", reg.host());
    runtime.block_on(async {
        let daemon = Daemon::start().await;
        let client = daemon.client().await;
        registry::import(&client, &archive, registry::NO_UNPACK).await;
        registry::push(&client, "bench/big:1", &reference, None)
            .await
            .expect("push the image to the registry");
    });

    let work = tempfile::Builder::new()
        .prefix("supbench")
        .tempdir_in("/tmp")
        .expect("bench directory");
    let mut rows: Vec<(String, Duration)> = Vec::new();
    for sn in ["overlayfs", "native"] {
        let runs: Vec<Duration> = (0..REPS)
            .map(|_| runtime.block_on(time_pull(&reference, sn)))
            .collect();
        println!("supd pull+unpack ({sn}): {runs:?}");
        rows.push((format!("supd pull+unpack ({sn})"), median(runs)));
    }
    let runs: Vec<Duration> = (0..REPS)
        .map(|rep| time_reference_tools(&reference, work.path(), rep, &layer_hex))
        .collect();
    println!("skopeo copy + tar -x: {runs:?}");
    let baseline = median(runs);
    rows.push(("skopeo copy + tar -x".to_string(), baseline));

    println!("\nmedians of {REPS} runs:");
    for (label, d) in &rows {
        println!(
            "  {label:<28} {:>8.3} s   ratio to skopeo+tar {:>5.2}x",
            d.as_secs_f64(),
            d.as_secs_f64() / baseline.as_secs_f64()
        );
    }
}
