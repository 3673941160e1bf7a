//! Protobuf timestamps and `SystemTime`, converted in one place for every edge that meets
//! them: the gRPC adaptors and the shim client.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A time as protobuf carries it; times before the epoch become the epoch.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A protobuf time; negative or out-of-range fields are clamped.
pub fn from_timestamp(t: &prost_types::Timestamp) -> SystemTime {
    let secs = t.seconds.max(0) as u64;
    let nanos = t.nanos.clamp(0, 999_999_999) as u32;
    UNIX_EPOCH + Duration::new(secs, nanos)
}
