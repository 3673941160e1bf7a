//! The daemon's error type: a kind a program can act on and a message a person can read.
//! It becomes a gRPC status in exactly one place, `server::status`.

use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    /// Out of disk, inodes or another finite resource.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Cancelled(String),
    /// Credentials refused, or access to a remote resource (a registry) denied.
    #[error("{0}")]
    PermissionDenied(String),
    /// Data that came from elsewhere is corrupt: a blob whose digest or size does not match.
    #[error("{0}")]
    DataLoss(String),
    /// A position past the end of what it points into (an offset beyond a blob's size).
    #[error("{0}")]
    OutOfRange(String),
}

impl Error {
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Error::NotFound(format!("{what}: not found"))
    }

    pub fn already_exists(what: impl std::fmt::Display) -> Self {
        Error::AlreadyExists(format!("{what}: already exists"))
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    pub fn precondition(msg: impl Into<String>) -> Self {
        Error::FailedPrecondition(msg.into())
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into())
    }

    /// Wraps an I/O error with what was being done; a full disk becomes ResourceExhausted.
    pub fn io(context: impl std::fmt::Display, err: io::Error) -> Self {
        let msg = format!("{context}: {err}");
        match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::ResourceExhausted(msg),
            _ => match err.kind() {
                io::ErrorKind::NotFound => Error::NotFound(msg),
                io::ErrorKind::AlreadyExists => Error::AlreadyExists(msg),
                _ => Error::Internal(msg),
            },
        }
    }

    /// Prefixes the message, keeping the kind.
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        let wrap = |m: String| format!("{context}: {m}");
        match self {
            Error::NotFound(m) => Error::NotFound(wrap(m)),
            Error::AlreadyExists(m) => Error::AlreadyExists(wrap(m)),
            Error::InvalidArgument(m) => Error::InvalidArgument(wrap(m)),
            Error::FailedPrecondition(m) => Error::FailedPrecondition(wrap(m)),
            Error::Unavailable(m) => Error::Unavailable(wrap(m)),
            Error::ResourceExhausted(m) => Error::ResourceExhausted(wrap(m)),
            Error::Internal(m) => Error::Internal(wrap(m)),
            Error::Cancelled(m) => Error::Cancelled(wrap(m)),
            Error::PermissionDenied(m) => Error::PermissionDenied(wrap(m)),
            Error::DataLoss(m) => Error::DataLoss(wrap(m)),
            Error::OutOfRange(m) => Error::OutOfRange(wrap(m)),
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }
}

/// Makes text from untrusted input fit for an error message: printable ASCII only, bounded.
pub fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(300)
        .collect();
    if text.chars().count() > 300 {
        out.push_str("...");
    }
    out
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        Error::io("i/o", err)
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(err: rustix::io::Errno) -> Self {
        Error::io("system call", err.into())
    }
}

impl From<nix::Error> for Error {
    fn from(err: nix::Error) -> Self {
        Error::io("system call", io::Error::from(err))
    }
}

impl From<sled::Error> for Error {
    fn from(err: sled::Error) -> Self {
        match err {
            sled::Error::Io(e) => Error::io("metadata store", e),
            other => Error::Internal(format!("metadata store: {other}")),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::Internal(format!("encoding: {err}"))
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(err: tokio::task::JoinError) -> Self {
        Error::Internal(format!("background task failed: {err}"))
    }
}
