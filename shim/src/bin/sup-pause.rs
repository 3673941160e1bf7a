//! sup-pause: the process that holds a pod sandbox's namespaces open. It does nothing but
//! wait: SIGTERM or SIGINT end it with status 0, SIGCHLD makes it reap exited children
//! (it may be the pod's init), and every other signal stays blocked.
#![forbid(unsafe_code)]

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("sup-pause {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    // Blocked signals are never discarded, not even for a namespace's init: they wait
    // in the pending set for sigwait below.
    let all = SigSet::all();
    if let Err(e) = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None) {
        eprintln!("sup-pause: blocking signals: {e}");
        std::process::exit(1);
    }
    let mut wanted = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        wanted.add(s);
    }
    loop {
        match wanted.wait() {
            Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => std::process::exit(0),
            Ok(Signal::SIGCHLD) => reap(),
            Ok(_) => {}
            Err(e) => {
                eprintln!("sup-pause: sigwait: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Collects every child that has exited, without waiting for those still running.
fn reap() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
