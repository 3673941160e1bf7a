//! supctl: the command-line client of supd.
fn main() {}
