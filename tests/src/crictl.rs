//! crictl pointed straight at one supd socket, with a config file of its own so that
//! /etc/crictl.yaml and the environment play no part: run to completion (with a timeout), or
//! as a command to spawn and drive (interactive exec, attach, port-forward).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::daemon::output_within;
use crate::task::show;

/// How long one crictl command may take (a pull included).
pub const CRICTL_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Crictl {
    bin: PathBuf,
    config: PathBuf,
    endpoint: String,
}

impl Crictl {
    /// crictl `bin` on supd's `socket`, its config file written in `dir`.
    pub fn new(bin: PathBuf, socket: &Path, dir: &Path) -> Crictl {
        let endpoint = format!("unix://{}", socket.display());
        let config = dir.join("crictl.yaml");
        std::fs::write(
            &config,
            format!(
                "runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 60\n\
                 debug: false\npull-image-on-create: false\ndisable-pull-on-run: false\n"
            ),
        )
        .expect("write crictl.yaml");
        Crictl {
            bin,
            config,
            endpoint,
        }
    }

    /// The whole argument list of `crictl ARGS...`, binary first: for a terminal multiplexer
    /// that starts it itself.
    pub fn argv(&self, args: &[&str]) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec![
            self.bin.clone().into(),
            "--config".into(),
            self.config.clone().into(),
            "--runtime-endpoint".into(),
            self.endpoint.clone().into(),
            "--image-endpoint".into(),
            self.endpoint.clone().into(),
        ];
        argv.extend(args.iter().map(OsString::from));
        argv
    }

    /// `crictl ARGS...`, not started, its stdio left to the caller.
    pub fn command(&self, args: &[&str]) -> Command {
        let argv = self.argv(args);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_remove("CONTAINER_RUNTIME_ENDPOINT")
            .env_remove("IMAGE_SERVICE_ENDPOINT")
            .env_remove("CRI_CONFIG_FILE");
        cmd
    }

    /// Runs `crictl ARGS...` to completion, without stdin (from a multi-threaded runtime).
    pub fn run(&self, args: &[&str]) -> Output {
        let cmd = self.command(args);
        let out = tokio::task::block_in_place(|| output_within(cmd, CRICTL_TIMEOUT));
        eprintln!("crictl {}: {}", args.join(" "), out.status);
        out
    }

    /// Runs `crictl ARGS...`, which must succeed, and returns its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "crictl {}: {}\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            show(&out.stdout),
            show(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("crictl prints UTF-8")
    }

    /// `crictl COMMAND -o json ARGS...`, parsed (crictl reads no flag after an argument).
    #[track_caller]
    pub fn json(&self, command: &str, args: &[&str]) -> Value {
        let mut all = vec![command, "-o", "json"];
        all.extend(args);
        let text = self.ok(&all);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("crictl {}: not JSON ({e}): {text}", all.join(" ")))
    }
}
