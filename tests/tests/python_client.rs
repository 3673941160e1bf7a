//! The API from another language: Python modules generated from proto/ at test time drive a
//! real supd (import, create, attach, start, wait, delete) through tests/python/run_container.py.
//!
//! The script opens its channel with grpc-core's default options, as any Python user would:
//! no authority override. The virtualenv with grpcio and grpcio-tools is made once under
//! target/ and reused.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sup_tests::daemon::run_within;
use sup_tests::task::{self, show, World};

const PIP_TIMEOUT: Duration = Duration::from_secs(900);
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// target/, found from where the test binary lives (target/<profile>/deps/).
fn target_dir() -> PathBuf {
    let bin = sup_tests::bins::bin_dir();
    bin.parent().map(Path::to_path_buf).unwrap_or(bin)
}

#[track_caller]
fn run(mut cmd: Command, timeout: Duration, what: &str) -> std::process::Output {
    cmd.env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
    let out = run_within(cmd, timeout).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn has_grpc(python: &Path) -> bool {
    let mut cmd = Command::new(python);
    cmd.args(["-c", "import grpc, grpc_tools.protoc"]);
    run_within(cmd, Duration::from_secs(60)).is_ok_and(|o| o.status.success())
}

/// The venv's python, with grpcio and grpcio-tools; made on first use. It is built beside its
/// final place and renamed into it, so a half-made venv is never taken for a good one.
fn python() -> PathBuf {
    let venv = target_dir().join("sup-tests-python");
    let python = venv.join("bin/python");
    if has_grpc(&python) {
        return python;
    }
    let partial = target_dir().join(format!("sup-tests-python.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let mut cmd = Command::new("python3");
    cmd.arg("-m").arg("venv").arg(&partial);
    run(
        cmd,
        Duration::from_secs(300),
        "python3 -m venv (is python3-venv installed?)",
    );
    let mut cmd = Command::new(partial.join("bin/python"));
    cmd.args(["-m", "pip", "install", "--quiet", "grpcio", "grpcio-tools"]);
    let out = run_within(cmd, PIP_TIMEOUT).unwrap_or_else(|e| panic!("pip install: {e}"));
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&partial);
        panic!(
            "pip could not install grpcio and grpcio-tools (is the package index reachable?): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::rename(&partial, &venv).unwrap();
    assert!(
        has_grpc(&python),
        "{} cannot import grpc after install",
        python.display()
    );
    python
}

/// Generates the Python modules of sup.v1 into `out`.
fn generate(python: &Path, out: &Path) {
    let proto = manifest_dir().join("../proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir(proto.join("sup/v1"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no .proto files under {}",
        proto.display()
    );
    std::fs::create_dir_all(out).unwrap();
    let mut cmd = Command::new(python);
    cmd.args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", proto.display()))
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .args(&files);
    run(cmd, Duration::from_secs(120), "grpc_tools.protoc");
}

fn hex_field(summary: &Value, key: &str) -> Vec<u8> {
    let text = summary[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {summary}"));
    hex::decode(text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_runs_a_container() {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let world = World::without_image().await;
    let generated = world.daemon.dir().join("py");
    generate(&python, &generated);
    let archive = world.daemon.dir().join("image.tar");
    std::fs::write(&archive, task::archive()).unwrap();
    let image = "example.com/from-python:1";

    let mut cmd = Command::new(&python);
    cmd.arg(manifest_dir().join("python/run_container.py"))
        .arg("--socket")
        .arg(world.daemon.socket())
        .args(["--namespace", &world.ns])
        .arg("--archive")
        .arg(&archive)
        .args(["--image", image, "--id", "py-1"])
        .args([
            "--script",
            r#"printf "py-out\n"; printf "py-err" >&2; exit 5"#,
        ])
        .env("PYTHONPATH", &generated);
    let out = tokio::task::spawn_blocking(move || run(cmd, SCRIPT_TIMEOUT, "run_container.py"))
        .await
        .unwrap();
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "run_container.py printed no JSON ({e}): {}",
            show(&out.stdout)
        )
    });

    // grpc-core before 1.57 sent `localhost` on unix sockets; from 1.57 on it sends the
    // %-encoded socket path, which is what this run has to show supd accepting.
    let grpc_version = summary["grpc_version"].as_str().unwrap_or_default();
    let minor = grpc_version
        .strip_prefix("1.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("grpcio version {grpc_version:?}"));
    assert!(minor >= 57, "grpcio {grpc_version} is older than 1.57");
    assert_eq!(summary["imported"], serde_json::json!([image]), "{summary}");
    let stdout = hex_field(&summary, "stdout_hex");
    let stderr = hex_field(&summary, "stderr_hex");
    assert_eq!(stdout, b"py-out\n", "stdout {}", show(&stdout));
    assert_eq!(stderr, b"py-err", "stderr {}", show(&stderr));
    assert_eq!(summary["attach_exit"], 5, "{summary}");
    assert_eq!(summary["wait_exit"], 5, "{summary}");
    assert_eq!(summary["delete_exit"], 5, "{summary}");
    assert_eq!(
        summary["status_after_exit"], "TASK_STATUS_STOPPED",
        "{summary}"
    );
    assert_eq!(summary["create_pid"], summary["start_pid"], "{summary}");
    assert_eq!(
        summary["containers_left"],
        serde_json::json!([]),
        "{summary}"
    );
    world.finish().await;
}
