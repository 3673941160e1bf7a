//! The native (copying) snapshotter.
