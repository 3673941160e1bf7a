//! cgroup v1: the memory controller's OOM notification. An eventfd registered through
//! `cgroup.event_control` against `memory.oom_control` is signalled each time the cgroup runs
//! out of memory, and once more when the cgroup is removed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::event::{eventfd, EventfdFlags};
use rustix::io::Errno;
use tokio::io::unix::AsyncFd;

use super::Outcome;
use crate::cgroup::CgroupError;
use crate::sys::async_fd;

pub struct OomControl {
    dir: PathBuf,
    eventfd: AsyncFd<OwnedFd>,
}

impl OomControl {
    /// Registers a new eventfd for the OOM notifications of the cgroup `dir`.
    pub fn register(dir: &Path) -> Result<OomControl, CgroupError> {
        let eventfd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| CgroupError::io("creating an eventfd for", dir, e.into()))?;
        let control_path = dir.join("memory.oom_control");
        let control =
            File::open(&control_path).map_err(|e| CgroupError::io("opening", &control_path, e))?;
        let register_path = dir.join("cgroup.event_control");
        OpenOptions::new()
            .write(true)
            .open(&register_path)
            .and_then(|mut f| {
                let line = format!("{} {}", eventfd.as_raw_fd(), control.as_raw_fd());
                f.write_all(line.as_bytes())
            })
            .map_err(|e| CgroupError::io("registering with", &register_path, e))?;
        // The kernel keeps the eventfd, not `memory.oom_control`: it is closed here. Closing
        // the eventfd later is what unregisters it.
        drop(control);
        let eventfd =
            async_fd(eventfd).map_err(|e| CgroupError::io("watching the eventfd of", dir, e))?;
        Ok(OomControl {
            dir: dir.to_path_buf(),
            eventfd,
        })
    }

    pub fn fd(&self) -> &AsyncFd<OwnedFd> {
        &self.eventfd
    }

    /// Takes the signals the eventfd holds, without waiting. A signal while the cgroup exists
    /// is an OOM; once it is gone, one of them was its removal.
    pub fn poll(&self) -> Outcome {
        let mut signals: u64 = 0;
        let mut buf = [0u8; 8];
        loop {
            match rustix::io::read(self.eventfd.get_ref(), &mut buf) {
                Ok(8) => signals = signals.saturating_add(u64::from_ne_bytes(buf)),
                Ok(n) => {
                    tracing::warn!(bytes = n, "short read from the OOM eventfd");
                    return Outcome::ENDED;
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading the OOM eventfd failed");
                    return Outcome::ENDED;
                }
            }
        }
        interpret(signals, self.dir.exists())
    }
}

fn interpret(signals: u64, cgroup_exists: bool) -> Outcome {
    match (signals, cgroup_exists) {
        (0, _) => Outcome::NOTHING,
        (_, true) => Outcome {
            oom: true,
            ended: false,
        },
        (n, false) => Outcome {
            oom: n > 1,
            ended: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(interpret(0, true), Outcome::NOTHING);
        assert_eq!(
            interpret(3, true),
            Outcome {
                oom: true,
                ended: false
            }
        );
        assert_eq!(interpret(1, false), Outcome::ENDED);
        assert_eq!(
            interpret(2, false),
            Outcome {
                oom: true,
                ended: true
            }
        );
    }

    fn signal(control: &OomControl) {
        rustix::io::write(control.eventfd.get_ref(), &1u64.to_ne_bytes()).unwrap();
    }

    /// A directory with regular files in place of the cgroup's: the registration is only
    /// written, and the test signals the eventfd itself.
    #[tokio::test]
    async fn a_signal_is_an_oom_until_the_cgroup_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cg");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("memory.oom_control"), "oom_kill 0\n").unwrap();
        std::fs::write(dir.join("cgroup.event_control"), "").unwrap();
        let control = OomControl::register(&dir).unwrap();
        let line = std::fs::read_to_string(dir.join("cgroup.event_control")).unwrap();
        let fds: Vec<i32> = line.split(' ').map(|f| f.parse().unwrap()).collect();
        assert_eq!(fds.len(), 2);
        assert_eq!(fds[0], control.eventfd.get_ref().as_raw_fd());
        // The oom_control descriptor was closed after registering.
        assert!(!std::fs::read_link(format!("/proc/self/fd/{}", fds[1]))
            .is_ok_and(|p| p.ends_with("memory.oom_control")));

        assert_eq!(control.poll(), Outcome::NOTHING);
        signal(&control);
        assert!(control.poll().oom);
        assert_eq!(control.poll(), Outcome::NOTHING);

        std::fs::remove_dir_all(&dir).unwrap();
        signal(&control);
        assert_eq!(control.poll(), Outcome::ENDED);
    }

    #[test]
    fn registering_needs_the_cgroup_files() {
        let tmp = tempfile::tempdir().unwrap();
        let e = OomControl::register(tmp.path()).err().unwrap();
        assert!(e.to_string().contains("memory.oom_control"), "{e}");
    }
}
