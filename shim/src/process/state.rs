//! The life of a process, as an explicit state machine:
//!
//! ```text
//!  Created ──start──▶ Running ◀──resume── Paused
//!     │                 │  └────pause────▶  │
//!     │                 exit              exit
//!     │                 ▼                   │
//!     ├─────exit────▶ Stopped ◀─────────────┘
//!     │                 │
//!     └────delete───▶ Deleted ◀──delete──┘
//! ```
//!
//! A created process can be deleted without running (the runtime kills its waiting init).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
    Deleted,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
            Status::Deleted => "deleted",
        })
    }
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a process that is {from}")]
pub struct BadTransition {
    pub from: Status,
    pub action: &'static str,
}

impl Status {
    fn to(
        self,
        action: &'static str,
        allowed: bool,
        next: Status,
    ) -> Result<Status, BadTransition> {
        if allowed {
            Ok(next)
        } else {
            Err(BadTransition { from: self, action })
        }
    }

    pub fn start(self) -> Result<Status, BadTransition> {
        self.to("start", self == Status::Created, Status::Running)
    }

    pub fn pause(self) -> Result<Status, BadTransition> {
        self.to("pause", self == Status::Running, Status::Paused)
    }

    pub fn resume(self) -> Result<Status, BadTransition> {
        self.to("resume", self == Status::Paused, Status::Running)
    }

    pub fn exit(self) -> Result<Status, BadTransition> {
        let alive = matches!(self, Status::Created | Status::Running | Status::Paused);
        self.to("record the exit of", alive, Status::Stopped)
    }

    pub fn delete(self) -> Result<Status, BadTransition> {
        let done = matches!(self, Status::Created | Status::Stopped);
        self.to("delete", done, Status::Deleted)
    }

    /// The process may still run (it has not been seen to exit).
    pub fn is_alive(self) -> bool {
        matches!(self, Status::Created | Status::Running | Status::Paused)
    }
}

#[cfg(test)]
mod tests {
    use super::Status::*;
    use super::*;

    #[test]
    fn the_happy_path() {
        let s = Created.start().unwrap();
        assert_eq!(s, Running);
        let s = s.pause().unwrap().resume().unwrap();
        assert_eq!(s, Running);
        let s = s.exit().unwrap();
        assert_eq!(s, Stopped);
        assert_eq!(s.delete().unwrap(), Deleted);
    }

    #[test]
    fn refused_transitions() {
        assert_eq!(
            Running.start(),
            Err(BadTransition {
                from: Running,
                action: "start"
            })
        );
        assert!(Stopped.start().is_err());
        assert!(Paused.pause().is_err());
        assert!(Running.resume().is_err());
        assert!(Running.delete().is_err());
        assert!(Paused.delete().is_err());
        assert!(Stopped.exit().is_err());
        assert!(Deleted.exit().is_err());
        assert!(Deleted.delete().is_err());
        assert_eq!(
            Running.delete().unwrap_err().to_string(),
            "cannot delete a process that is running"
        );
    }

    #[test]
    fn created_can_exit_or_be_deleted() {
        assert_eq!(Created.exit().unwrap(), Stopped);
        assert_eq!(Created.delete().unwrap(), Deleted);
        assert_eq!(Paused.exit().unwrap(), Stopped);
    }
}
