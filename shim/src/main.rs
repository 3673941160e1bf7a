//! sup-shim: parses its arguments, detaches from supd before any async runtime or thread
//! exists, then serves the container's shim API until supd shuts it down.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use sup_shim::detach::{self, Detached};
use sup_shim::options::Options;

fn main() -> ExitCode {
    let options = Options::parse();
    match detach::detach() {
        Ok(Detached::Launcher(code)) => code,
        Ok(Detached::Shim(readiness)) => sup_shim::server::run(options, readiness),
        Err(e) => {
            println!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
