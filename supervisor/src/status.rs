//! The edge between the daemon's errors and gRPC: the one place an `Error` becomes a
//! `tonic::Status`, for every adaptor (sup.v1's in `server`, the CRI's in `cri`).

use tonic::{Code, Status};

use crate::error::Error;

/// The error as a gRPC status: its kind picks the code, its message is kept whole.
pub fn status(err: Error) -> Status {
    let code = match &err {
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::Unavailable(_) => Code::Unavailable,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::Internal(_) => Code::Internal,
        Error::Cancelled(_) => Code::Cancelled,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::DataLoss(_) => Code::DataLoss,
        Error::OutOfRange(_) => Code::OutOfRange,
    };
    if code == Code::Internal {
        tracing::error!(error = %err, "internal error");
    }
    Status::new(code, err.to_string())
}
