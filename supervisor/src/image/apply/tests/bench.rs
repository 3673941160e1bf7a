//! A benchmark against GNU tar on a real layer, run by hand:
//! `SUP_BENCH_LAYER=/path/layer.tar cargo test --release -p sup-supervisor --lib
//! image::apply::tests::bench -- --ignored --nocapture`; `SUP_BENCH_DIR` picks the
//! filesystem to extract to (default: the temporary directory).

use std::fs::File;
use std::io::BufReader;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{apply_layer, Env};
use crate::snapshot::WhiteoutMode::Delete;

fn best(times: &[Duration]) -> Duration {
    times.iter().copied().min().unwrap_or_default()
}

#[test]
#[ignore = "benchmark: needs SUP_BENCH_LAYER and a release build"]
fn apply_layer_against_gnu_tar() {
    let Some(layer) = std::env::var_os("SUP_BENCH_LAYER") else {
        eprintln!("SUP_BENCH_LAYER not set: nothing to measure");
        return;
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    // Alternate who goes first: ext4 makes inode allocation slow right after mass
    // deletions (the previous round's cleanup), which must not favour either side.
    for round in 0..6 {
        let env = match std::env::var_os("SUP_BENCH_DIR") {
            Some(dir) => Env::new_in(std::path::Path::new(&dir)),
            None => Env::new(),
        };
        let out = env.dir("gnu");
        let run_ours = || {
            let start = Instant::now();
            let mut reader = BufReader::new(File::open(&layer).unwrap());
            apply_layer(&mut reader, &env.target(Delete)).unwrap();
            start.elapsed()
        };
        let run_tar = || {
            let start = Instant::now();
            let status = Command::new("tar")
                .arg("-xf")
                .arg(&layer)
                .arg("-C")
                .arg(&out)
                .args([
                    "--same-owner",
                    "--same-permissions",
                    "--xattrs",
                    "--xattrs-include=*",
                ])
                .status()
                .unwrap();
            assert!(status.success());
            start.elapsed()
        };
        if round % 2 == 0 {
            ours.push(run_ours());
            theirs.push(run_tar());
        } else {
            theirs.push(run_tar());
            ours.push(run_ours());
        }
        println!(
            "round {round}: ours {:?}, GNU tar {:?}",
            ours[round], theirs[round]
        );
    }
    let (ours, theirs) = (best(&ours), best(&theirs));
    println!(
        "apply_layer {:?}, GNU tar -x {:?}: ratio {:.2} (hashing included on our side only)",
        ours,
        theirs,
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
}
