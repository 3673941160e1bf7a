//! A process's exit, and its record on disk: `exit/<init|exec-ID>.json` in the task dir,
//! written atomically and made durable before the exit is reported to anyone, so a supd that
//! restarts finds it even if the shim is gone by then.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::io::log::timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: u32,
    /// Exit code, or 128 + the signal that killed it.
    pub status: u32,
    pub at: DateTime<Utc>,
}

#[derive(Serialize)]
struct ExitFile {
    pid: u32,
    exit_status: u32,
    exited_at: String,
}

/// Writes `dir/exit/<stem>.json`: a temporary file, fsync, rename, fsync of the directory.
pub fn record(task_dir: &Path, stem: &str, exit: &Exit) -> std::io::Result<()> {
    let dir = task_dir.join("exit");
    std::fs::create_dir_all(&dir)?;
    let body = serde_json::to_vec(&ExitFile {
        pid: exit.pid,
        exit_status: exit.status,
        exited_at: timestamp(&exit.at),
    })?;
    let tmp = dir.join(format!(".{stem}.json.tmp"));
    let path = dir.join(format!("{stem}.json"));
    let mut f = File::create(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    File::open(&dir)?.sync_all()
}

/// Removes a forgotten process's exit record.
pub fn remove(task_dir: &Path, stem: &str) {
    let _ = std::fs::remove_file(task_dir.join("exit").join(format!("{stem}.json")));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_exit_file() {
        let dir = tempfile::tempdir().unwrap();
        let at = DateTime::parse_from_rfc3339("2024-05-01T10:00:00.5Z")
            .unwrap()
            .with_timezone(&Utc);
        record(
            dir.path(),
            "exec-a",
            &Exit {
                pid: 7,
                status: 137,
                at,
            },
        )
        .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("exit/exec-a.json")).unwrap())
                .unwrap();
        assert_eq!(v["pid"], 7);
        assert_eq!(v["exit_status"], 137);
        assert_eq!(v["exited_at"], "2024-05-01T10:00:00.500000000Z");
        assert!(!dir.path().join("exit/.exec-a.json.tmp").exists());
    }
}
