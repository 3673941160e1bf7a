//! sup-shim: the per-container process that owns a container's runtime calls, stdio and exit
//! status. The supd-shim protocol and the process model land with tasks; until then the
//! binary only answers `--version`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("--version") | Some("-V") => {
            println!("sup-shim {}", env!("CARGO_PKG_VERSION"));
            std::process::ExitCode::SUCCESS
        }
        _ => {
            eprintln!("sup-shim is started by supd; it takes no commands yet");
            std::process::ExitCode::from(2)
        }
    }
}
