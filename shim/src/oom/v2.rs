//! cgroup v2: `memory.events`, whose `oom_kill` count rises with each process the OOM killer
//! kills in the cgroup (or below it). The kernel raises a file-modified event on each change,
//! which inotify reports.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::inotify;
use rustix::io::Errno;
use tokio::io::unix::AsyncFd;

use super::Outcome;
use crate::cgroup::CgroupError;
use crate::sys::async_fd;

/// The counts of `memory.events` that tell of OOMs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    /// Times the cgroup hit its limit and the OOM killer was invoked.
    pub oom: u64,
    /// Processes the OOM killer killed.
    pub oom_kill: u64,
}

/// Reads the `key value` lines of `memory.events`; a missing or unreadable count is 0.
pub fn parse_memory_events(text: &str) -> MemoryEvents {
    let mut counts = MemoryEvents::default();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(key), Some(value)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        match key {
            "oom" => counts.oom = value,
            "oom_kill" => counts.oom_kill = value,
            _ => {}
        }
    }
    counts
}

pub struct MemoryEventsWatch {
    path: PathBuf,
    /// None if inotify could not be had: the count is then looked at only when a process
    /// exits.
    inotify: Option<AsyncFd<OwnedFd>>,
    oom_kills: AtomicU64,
}

impl MemoryEventsWatch {
    /// Watches `memory.events` in the cgroup `dir`; its current count is the baseline.
    pub fn start(dir: &Path) -> Result<MemoryEventsWatch, CgroupError> {
        let path = dir.join("memory.events");
        // Watching before the baseline is read: no change can fall between the two.
        let inotify = match watch_file(&path) {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "cannot watch memory.events: OOM kills are noticed only when a process exits"
                );
                None
            }
        };
        let text =
            std::fs::read_to_string(&path).map_err(|e| CgroupError::io("reading", &path, e))?;
        Ok(MemoryEventsWatch {
            oom_kills: AtomicU64::new(parse_memory_events(&text).oom_kill),
            path,
            inotify,
        })
    }

    pub fn fd(&self) -> Option<&AsyncFd<OwnedFd>> {
        self.inotify.as_ref()
    }

    /// Takes the pending inotify events, then compares the count with the last one seen.
    pub fn poll(&self) -> Outcome {
        if let Some(fd) = &self.inotify {
            if let Err(e) = drain(fd.get_ref()) {
                tracing::warn!(error = %e, "reading inotify events failed");
                return Outcome::ENDED;
            }
        }
        let counts = match std::fs::read_to_string(&self.path) {
            Ok(text) => parse_memory_events(&text),
            // The cgroup was removed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Outcome::ENDED,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "reading memory.events failed");
                return Outcome::ENDED;
            }
        };
        let before = self.oom_kills.fetch_max(counts.oom_kill, Ordering::Relaxed);
        tracing::debug!(
            oom = counts.oom,
            oom_kill = counts.oom_kill,
            "memory.events changed"
        );
        Outcome {
            oom: counts.oom_kill > before,
            ended: false,
        }
    }
}

fn watch_file(path: &Path) -> std::io::Result<AsyncFd<OwnedFd>> {
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
    inotify::add_watch(&fd, path, inotify::WatchFlags::MODIFY)?;
    async_fd(fd)
}

/// Reads inotify events until there are none; what they say does not matter, only that the
/// file may have changed.
fn drain(fd: &OwnedFd) -> rustix::io::Result<()> {
    let mut buf = [0u8; 1024];
    loop {
        match rustix::io::read(fd, &mut buf) {
            Ok(0) | Err(Errno::AGAIN) => return Ok(()),
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_counts() {
        let text = "low 0\nhigh 12\nmax 40\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(
            parse_memory_events(text),
            MemoryEvents {
                oom: 3,
                oom_kill: 2
            }
        );
        assert_eq!(parse_memory_events(""), MemoryEvents::default());
        assert_eq!(
            parse_memory_events("oom_kill\noom x\noom_kill 18446744073709551615 extra\n"),
            MemoryEvents {
                oom: 0,
                oom_kill: u64::MAX
            }
        );
        // `oom_group_kill` is not `oom_kill`.
        assert_eq!(parse_memory_events("oom_group_kill 5\n").oom_kill, 0);
    }

    #[tokio::test]
    async fn a_rising_oom_kill_is_an_oom() {
        let tmp = tempfile::tempdir().unwrap();
        let events = tmp.path().join("memory.events");
        std::fs::write(&events, "oom 1\noom_kill 1\n").unwrap();
        let watch = MemoryEventsWatch::start(tmp.path()).unwrap();
        assert!(watch.fd().is_some());
        assert_eq!(watch.poll(), Outcome::NOTHING, "the baseline is no OOM");
        std::fs::write(&events, "max 4\noom 2\noom_kill 1\n").unwrap();
        assert_eq!(watch.poll(), Outcome::NOTHING, "an OOM without a kill");
        std::fs::write(&events, "oom 3\noom_kill 3\n").unwrap();
        assert!(watch.poll().oom);
        assert_eq!(watch.poll(), Outcome::NOTHING, "each kill counts once");
        std::fs::remove_file(&events).unwrap();
        assert_eq!(watch.poll(), Outcome::ENDED);
    }

    #[test]
    fn starting_needs_memory_events() {
        let tmp = tempfile::tempdir().unwrap();
        let e = MemoryEventsWatch::start(tmp.path()).err().unwrap();
        assert!(e.to_string().contains("memory.events"), "{e}");
    }
}
