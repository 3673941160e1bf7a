//! supd: the sup daemon.
fn main() {}
