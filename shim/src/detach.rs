//! Leaving supd: the double fork that makes the shim a grandchild in its own session, so supd
//! is never its parent and supd's death or restart never reaches it, and the readiness line
//! the launcher prints for supd.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::ExitCode;

use nix::sys::wait::waitpid;
use nix::unistd::{pipe2, setsid, ForkResult};

use crate::sys::fork_single_threaded;

/// Longest readiness line the launcher relays.
const MAX_READY_LINE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    #[error("creating the readiness pipe: {0}")]
    Pipe(nix::Error),
    #[error("forking the shim: {0}")]
    Fork(nix::Error),
}

/// Which process the caller now is.
pub enum Detached {
    /// The process supd started: it has relayed the readiness line and must exit with this code.
    Launcher(ExitCode),
    /// The detached shim, which must report readiness once it serves.
    Shim(Readiness),
}

/// The write end of the readiness pipe, held by the shim until it serves or fails.
pub struct Readiness(Option<File>);

impl Readiness {
    /// Tells the launcher the shim is serving.
    pub fn ready(mut self) {
        self.send("ready");
    }

    /// Tells the launcher the shim could not start, and why.
    pub fn failed(mut self, message: &str) {
        let one_line = message.replace('\n', " ");
        self.send(&format!("error: {one_line}"));
    }

    fn send(&mut self, line: &str) {
        if let Some(mut pipe) = self.0.take() {
            // The launcher may be gone (killed by supd's timeout); nobody is left to tell then.
            let _ = pipe.write_all(format!("{line}\n").as_bytes());
        }
    }
}

/// Forks twice. Must run while the process has a single thread: before any runtime, thread
/// or child exists.
pub fn detach() -> Result<Detached, DetachError> {
    let (read_end, write_end) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(DetachError::Pipe)?;
    match fork_single_threaded().map_err(DetachError::Fork)? {
        ForkResult::Parent { child } => {
            drop(write_end);
            // The intermediate child exits at once; reap it so supd's child leaves no zombie.
            let _ = waitpid(child, None);
            Ok(Detached::Launcher(relay(read_end)))
        }
        ForkResult::Child => {
            drop(read_end);
            // A new session: no controlling terminal, and supd's process group signals
            // (a Ctrl-C in supd's terminal, a group kill) do not reach the shim.
            if let Err(e) = setsid() {
                fail_early(write_end, &format!("setsid: {e}"));
            }
            match fork_single_threaded() {
                Ok(ForkResult::Parent { .. }) => std::process::exit(0),
                Ok(ForkResult::Child) => Ok(Detached::Shim(Readiness(Some(File::from(write_end))))),
                Err(e) => fail_early(write_end, &format!("forking the shim: {e}")),
            }
        }
    }
}

fn fail_early(pipe: OwnedFd, message: &str) -> ! {
    Readiness(Some(File::from(pipe))).failed(message);
    std::process::exit(1)
}

/// Prints the shim's readiness line on the launcher's stdout and picks the exit code.
fn relay(read_end: OwnedFd) -> ExitCode {
    let mut line = String::new();
    let read = File::from(read_end)
        .take(MAX_READY_LINE)
        .read_to_string(&mut line);
    let line = match (read, line.lines().next()) {
        (Ok(_), Some(first)) if !first.is_empty() => first.to_string(),
        (Err(e), _) => format!("error: reading the shim's readiness: {e}"),
        _ => "error: the shim exited before it was ready".to_string(),
    };
    println!("{line}");
    if line == "ready" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
