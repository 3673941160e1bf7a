//! Import benchmark: a ~120 MB single-layer image imported and unpacked by supd (per
//! snapshotter), against GNU tar extracting the same layer onto the same filesystem, in the
//! same run. Prints medians and the ratio sup/tar. Not a test: nothing here passes or fails.
//!
//! Run with `cargo bench -p sup-tests --bench import`. It measures the supd found next to this
//! executable (target/release), building it first when it is missing or stale, unless
//! SUP_BIN_DIR names another directory.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sup_client::api;
use sup_tests::big::big_layer;
use sup_tests::image::name_annotations;
use sup_tests::{Compression, Daemon, ImageBuilder, OciArchive};

const REPS: usize = 3;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// Builds supd in the profile this bench runs in, unless SUP_BIN_DIR points elsewhere.
fn ensure_supd() {
    if std::env::var_os("SUP_BIN_DIR").is_some() {
        return;
    }
    let release = sup_tests::bins::bin_dir().ends_with("release");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-p", "sup-supervisor"]);
    if release {
        cmd.arg("--release");
    }
    eprintln!("building supd: {cmd:?}");
    match cmd.status() {
        Ok(s) if s.success() => {}
        other => eprintln!("building supd failed ({other:?}); using whatever binary is there"),
    }
}

/// Imports `requests` into a fresh supd; the time runs from the first byte sent to the result.
async fn time_import(requests: &[api::ImportRequest]) -> Duration {
    let daemon = Daemon::start().await;
    let client = daemon.client().await;
    let requests = requests.to_vec();
    let started = Instant::now();
    let mut responses = client
        .images()
        .import(tokio_stream::iter(requests))
        .await
        .expect("Images.Import")
        .into_inner();
    loop {
        match responses.message().await.expect("Images.Import stream") {
            Some(api::ImportResponse {
                payload: Some(api::import_response::Payload::Result(_)),
            }) => break,
            Some(_) => {}
            None => panic!("Images.Import ended without a result"),
        }
    }
    started.elapsed()
}

fn time_tar(args: &[&str], archive: &Path, work: &Path, rep: usize) -> Duration {
    let target = work.join(format!("tar-{rep}"));
    std::fs::create_dir(&target).expect("tar target");
    let started = Instant::now();
    let status = Command::new("tar")
        .args(args)
        .arg(archive)
        .arg("-C")
        .arg(&target)
        .status()
        .expect("run GNU tar");
    let took = started.elapsed();
    assert!(status.success(), "tar {args:?} failed");
    std::fs::remove_dir_all(&target).expect("remove tar target");
    took
}

fn main() {
    ensure_supd();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let t = Instant::now();
    let (layer, files, bytes) = big_layer();
    let layer = layer.build(Compression::Gzip);
    let image = ImageBuilder::new().layer(layer.clone()).build();
    let archive = OciArchive::new()
        .image(&image, name_annotations("example.com/bench:1"))
        .build();
    println!(
        "image: {files} files, {:.1} MB of file data; layer tar {:.1} MB, gzip {:.1} MB; \
         OCI archive {:.1} MB (generated in {})",
        bytes as f64 / 1e6,
        layer.tar.len() as f64 / 1e6,
        layer.blob.len() as f64 / 1e6,
        archive.len() as f64 / 1e6,
        secs(t.elapsed())
    );

    // Same filesystem as the daemons' directories, which live under /tmp too.
    let work = tempfile::Builder::new()
        .prefix("supbench")
        .tempdir_in("/tmp")
        .expect("bench directory");
    std::fs::write(work.path().join("image.tar"), &archive).expect("write archive");
    let layer_tar = work.path().join("layer.tar");
    let layer_gz = work.path().join("layer.tar.gz");
    std::fs::write(&layer_tar, &layer.tar).expect("write layer tar");
    std::fs::write(&layer_gz, &layer.blob).expect("write layer gzip");

    let mut results: Vec<(String, Duration)> = Vec::new();
    for sn in sup_tests::SNAPSHOTTERS {
        let mut requests = vec![api::ImportRequest {
            payload: Some(api::import_request::Payload::Options(
                sup_tests::rpc::options(sn),
            )),
        }];
        requests.extend(
            archive
                .chunks(sup_tests::rpc::CHUNK)
                .map(|c| api::ImportRequest {
                    payload: Some(api::import_request::Payload::Chunk(c.to_vec())),
                }),
        );
        let runs: Vec<Duration> = (0..REPS)
            .map(|_| runtime.block_on(time_import(&requests)))
            .collect();
        println!(
            "supd import+unpack ({sn}): {:?}",
            runs.iter().map(|d| secs(*d)).collect::<Vec<_>>()
        );
        results.push((format!("supd {sn}"), median(runs)));
    }
    for (label, args, file) in [
        ("tar -xpf layer.tar", ["-xpf"], &layer_tar),
        ("tar -xzpf layer.tar.gz", ["-xzpf"], &layer_gz),
    ] {
        let runs: Vec<Duration> = (0..REPS)
            .map(|rep| time_tar(&args, file, work.path(), rep))
            .collect();
        println!(
            "{label}: {:?}",
            runs.iter().map(|d| secs(*d)).collect::<Vec<_>>()
        );
        results.push((label.to_string(), median(runs)));
    }

    let tar_plain = results[results.len() - 2].1;
    let tar_gz = results[results.len() - 1].1;
    println!(
        "\nmedians of {REPS} runs ({:.1} MB of file data):",
        bytes as f64 / 1e6
    );
    for (label, d) in &results {
        println!(
            "  {label:<26} {:>9}  {:>7.1} MB/s  sup/tar {:>5.2}x  sup/tar-gz {:>5.2}x",
            secs(*d),
            bytes as f64 / 1e6 / d.as_secs_f64(),
            d.as_secs_f64() / tar_plain.as_secs_f64(),
            d.as_secs_f64() / tar_gz.as_secs_f64(),
        );
    }
}
