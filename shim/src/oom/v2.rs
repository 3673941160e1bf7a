//! cgroup v2: `memory.events`, whose `oom_kill` count rises with each process the OOM killer
//! kills in the cgroup (or below it). The kernel raises a file-modified event on each change,
//! which inotify reports.
//!
//! A cgroup that systemd manages (a scope, under the runtime's systemd driver) is removed as
//! soon as its last process has gone, which can be before the count that the OOM kill of its
//! init raised has been read. The parent's `memory.events` counts its children's kills too,
//! and outlives them: its count is noted at each reading of the cgroup's own, and a rise
//! found once the cgroup is gone is taken as the kill not read in time.

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
    /// The parent cgroup's `memory.events`, and its `oom_kill` count at the last reading of
    /// the cgroup's own (None: no parent with one, as under the root).
    parent: Option<(PathBuf, AtomicU64)>,
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
        let parent = dir
            .parent()
            .map(|p| p.join("memory.events"))
            .and_then(|p| Some((oom_kills_in(&p)?, p)))
            .map(|(count, p)| (p, AtomicU64::new(count)));
        let text =
            std::fs::read_to_string(&path).map_err(|e| CgroupError::io("reading", &path, e))?;
        Ok(MemoryEventsWatch {
            oom_kills: AtomicU64::new(parse_memory_events(&text).oom_kill),
            path,
            parent,
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
            // The cgroup was removed: a kill since the last reading shows in the parent.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let missed = self.parent.as_ref().is_some_and(|(p, seen)| {
                    oom_kills_in(p).is_some_and(|now| now > seen.fetch_max(now, Ordering::Relaxed))
                });
                if missed {
                    tracing::info!("OOM kill counted in the parent cgroup after the cgroup went");
                }
                return Outcome {
                    oom: missed,
                    ended: true,
                };
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "reading memory.events failed");
                return Outcome::ENDED;
            }
        };
        let before = self.oom_kills.fetch_max(counts.oom_kill, Ordering::Relaxed);
        // Read after the cgroup's own (the kernel counts a kill in the cgroup, then in each
        // parent): every kill the own count shows is in this one, and is not taken again.
        if let Some((p, seen)) = &self.parent {
            if let Some(now) = oom_kills_in(p) {
                seen.fetch_max(now, Ordering::Relaxed);
            }
        }
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

/// The `oom_kill` count of the `memory.events` at `path`, if it can be read.
fn oom_kills_in(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(parse_memory_events(&text).oom_kill)
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

    /// A scope systemd removed before its kill was read: the parent's count tells.
    #[tokio::test]
    async fn a_kill_is_seen_in_the_parent_once_the_cgroup_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("memory.events");
        let dir = tmp.path().join("sup-c.scope");
        std::fs::create_dir(&dir).unwrap();
        let events = dir.join("memory.events");
        std::fs::write(&parent, "oom 4\noom_kill 4\n").unwrap();
        std::fs::write(&events, "oom 0\noom_kill 0\n").unwrap();
        let watch = MemoryEventsWatch::start(&dir).unwrap();
        // A kill read in time counts once, not again from the parent.
        std::fs::write(&events, "oom 1\noom_kill 1\n").unwrap();
        std::fs::write(&parent, "oom 5\noom_kill 5\n").unwrap();
        assert!(watch.poll().oom);
        std::fs::remove_file(&events).unwrap();
        assert_eq!(watch.poll(), Outcome::ENDED, "nothing new in the parent");

        let watch = {
            std::fs::write(&events, "oom 1\noom_kill 1\n").unwrap();
            MemoryEventsWatch::start(&dir).unwrap()
        };
        // The kill lands, the cgroup goes, and only then the watch looks.
        std::fs::write(&parent, "oom 6\noom_kill 6\n").unwrap();
        std::fs::remove_file(&events).unwrap();
        assert_eq!(
            watch.poll(),
            Outcome {
                oom: true,
                ended: true
            }
        );
        assert_eq!(watch.poll(), Outcome::ENDED, "and once only");
    }

    #[test]
    fn starting_needs_memory_events() {
        let tmp = tempfile::tempdir().unwrap();
        let e = MemoryEventsWatch::start(tmp.path()).err().unwrap();
        assert!(e.to_string().contains("memory.events"), "{e}");
    }
}
