//! The container's statistics, read straight from its cgroup files into the document that
//! `runc events --stats` prints. A Stats call then costs a few reads of files the kernel makes
//! up on the spot, rather than a runtime process (about 10 ms, for every container, every few
//! seconds under a kubelet). The directories are found once, from the init's cgroups; a file
//! that does not exist leaves its numbers out, as runc does. When nothing can be read, or a
//! file holds what it should not, the caller asks the runtime instead.

mod document;
mod v1;
mod v2;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::cgroup::Cgroups;
pub use document::{Blkio, BlkioEntry, Cpu, CpuUsage, Memory, MemoryEntry, Pids, Stats};

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: unexpected content {text:?}", path.display())]
    Format { path: PathBuf, text: String },
    #[error("none of the cgroup statistics files exists")]
    Nothing,
    #[error("writing the statistics document: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Where a container's numbers are: found once, read at each call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupStats {
    V1(v1::Dirs),
    V2(PathBuf),
}

impl CgroupStats {
    pub fn new(cgroups: &Cgroups) -> CgroupStats {
        match cgroups {
            Cgroups::V1(_) => CgroupStats::V1(v1::Dirs::of(cgroups)),
            Cgroups::V2(dir) => CgroupStats::V2(dir.clone()),
        }
    }

    /// Reads the numbers now. The files live in memory (cgroupfs): reading them blocks for
    /// microseconds, never on a disk.
    pub fn read(&self) -> Result<Stats, StatsError> {
        let mut files = Files::default();
        let stats = match self {
            CgroupStats::V1(dirs) => v1::read(dirs, &mut files)?,
            CgroupStats::V2(dir) => v2::read(dir, &mut files)?,
        };
        // Gone (the cgroup removed under us) or not what it was taken for.
        if !files.found {
            return Err(StatsError::Nothing);
        }
        Ok(stats)
    }

    /// `{"type":"stats","id":<id>,"data":{..}}`, as runc prints it.
    pub fn document(&self, id: &str) -> Result<Vec<u8>, StatsError> {
        let stats = self.read()?;
        Ok(serde_json::to_vec(&document::Event {
            kind: "stats",
            id,
            data: &stats,
        })?)
    }
}

/// Reads a cgroup's files, noting whether any of them existed.
#[derive(Debug, Default)]
struct Files {
    found: bool,
}

impl Files {
    /// The file's text; `None` if it does not exist.
    fn text(&mut self, dir: &Path, name: &str) -> Result<Option<String>, StatsError> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                self.found = true;
                Ok(Some(text))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StatsError::Io { path, source }),
        }
    }

    /// A file of one number; "max" (no limit) is `u64::MAX`.
    fn number(&mut self, dir: &Path, name: &str) -> Result<Option<u64>, StatsError> {
        let Some(text) = self.text(dir, name)? else {
            return Ok(None);
        };
        match parse_number(&text) {
            Some(n) => Ok(Some(n)),
            None => Err(StatsError::Format {
                path: dir.join(name),
                text,
            }),
        }
    }

    /// A file of `key value` lines (memory.stat, cpu.stat); a line of another shape is passed
    /// over, so that a kernel's new kind of line does not cost the others.
    fn keyed(
        &mut self,
        dir: &Path,
        name: &str,
    ) -> Result<Option<BTreeMap<String, u64>>, StatsError> {
        Ok(self.text(dir, name)?.map(|text| parse_keyed(&text)))
    }
}

fn parse_number(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return Some(u64::MAX);
    }
    // A negative number (-1, an old kernel's "unlimited") reads as 0, as runc reads it.
    text.parse::<u64>()
        .ok()
        .or_else(|| text.parse::<i64>().ok().filter(|n| *n < 0).map(|_| 0))
}

fn parse_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (key, value) = (fields.next()?, fields.next()?);
            if fields.next().is_some() {
                return None;
            }
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn get(map: &BTreeMap<String, u64>, key: &str) -> u64 {
    map.get(key).copied().unwrap_or(0)
}

/// pids.max as runc reports it: 0 for "max" (no limit).
fn pids_limit(max: Option<u64>) -> u64 {
    match max {
        Some(u64::MAX) | None => 0,
        Some(n) => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_number("4096\n"), Some(4096));
        assert_eq!(parse_number("max\n"), Some(u64::MAX));
        assert_eq!(parse_number("-1\n"), Some(0));
        assert_eq!(parse_number("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("12 34"), None);
        assert_eq!(parse_number("lots"), None);
    }

    #[test]
    fn keyed_lines() {
        let map = parse_keyed("anon 10\nfile 20\n\nodd line here\nbad x\nshmem 0\n");
        let expected: BTreeMap<String, u64> = [("anon", 10), ("file", 20), ("shmem", 0)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(map, expected);
    }

    #[test]
    fn missing_directory_is_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let gone = tmp.path().join("gone");
        assert!(matches!(
            CgroupStats::V2(gone.clone()).read(),
            Err(StatsError::Nothing)
        ));
        let dirs = v1::Dirs::under(&gone);
        assert!(matches!(
            CgroupStats::V1(dirs).read(),
            Err(StatsError::Nothing)
        ));
    }

    #[test]
    fn a_garbled_number_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("memory.current"), "a lot\n").unwrap();
        let read = CgroupStats::V2(tmp.path().into()).read();
        assert!(matches!(read, Err(StatsError::Format { .. })), "{read:?}");
    }

    #[test]
    fn from_cgroups() {
        let v2 = Cgroups::V2("/sys/fs/cgroup/a".into());
        assert_eq!(
            CgroupStats::new(&v2),
            CgroupStats::V2("/sys/fs/cgroup/a".into())
        );
        let v1 = Cgroups::parse(
            "3:memory:/a\n2:cpu,cpuacct:/a\n1:pids:/a\n",
            "\
1 0 0:1 / /cg/memory rw - cgroup cgroup rw,memory
2 0 0:2 / /cg/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
",
        )
        .unwrap();
        let CgroupStats::V1(dirs) = CgroupStats::new(&v1) else {
            panic!("not v1");
        };
        assert_eq!(dirs.memory.as_deref(), Some(Path::new("/cg/memory/a")));
        assert_eq!(dirs.cpu.as_deref(), Some(Path::new("/cg/cpu,cpuacct/a")));
        assert_eq!(
            dirs.cpuacct.as_deref(),
            Some(Path::new("/cg/cpu,cpuacct/a"))
        );
        assert_eq!(dirs.pids, None);
        assert_eq!(dirs.blkio, None);
    }
}
