//! Where the binaries under test are: `SUP_BIN_DIR`, or the target directory this test or
//! bench executable was built into (`target/<profile>/deps/x` -> `target/<profile>/`); and the
//! CRI tools they are checked with.

use std::path::PathBuf;

/// Directory holding supd, supctl and sup-shim.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SUP_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("path of the running test executable");
    let mut dir = exe
        .parent()
        .expect("test executable has a parent directory")
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: build it first (`cargo build -p sup-supervisor -p sup-client`, with \
         --release for benches) or point SUP_BIN_DIR at the directory holding it",
        path.display()
    );
    path
}

/// Path of the supd binary.
pub fn supd() -> PathBuf {
    binary("supd")
}

/// Path of the supctl binary.
pub fn supctl() -> PathBuf {
    binary("supctl")
}

/// Path of crictl: `SUP_CRICTL`, or cri-tools' build in `../shared/cri-tools/` beside the
/// checkout. Missing, it fails the test that needs it: CI has it, and a CRI test that skips
/// itself proves nothing.
pub fn crictl() -> PathBuf {
    let path = std::env::var_os("SUP_CRICTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/cri-tools/crictl")
        });
    assert!(
        path.is_file(),
        "crictl not found at {}: put cri-tools v1.26.1 in ../shared/cri-tools/ beside the \
         checkout or point SUP_CRICTL at a crictl binary",
        path.display()
    );
    path
}
