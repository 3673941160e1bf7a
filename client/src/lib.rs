//! Rust client for the sup API: connects to supd's unix socket and scopes calls to a namespace.
