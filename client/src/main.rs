//! supctl: the command-line client of supd. Parses the command line, runs one command on a
//! small async runtime and turns any failure into a one-line message and a non-zero exit.
#![forbid(unsafe_code)]

mod cmd;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&anyhow::Error::from(err)),
    };
    let result = runtime.block_on(cmd::run(cli));
    // A reader still blocked on stdin (an import the daemon refused) must not hold up the exit.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

fn fail(err: &anyhow::Error) -> ExitCode {
    if let Some(cmd::Exit(code)) = err.downcast_ref::<cmd::Exit>() {
        return ExitCode::from(*code);
    }
    // The reader of our output went away (`supctl images ls | head`): nobody to tell.
    if cmd::is_broken_pipe(err) {
        return ExitCode::FAILURE;
    }
    let _ = writeln!(std::io::stderr(), "supctl: {}", cmd::describe(err));
    ExitCode::FAILURE
}
