//! The conformance suite every snapshotter must pass.
