//! The command line supd starts the shim with.

use std::path::PathBuf;

use clap::Parser;

/// Default largest size of a process's log file before it is rotated: 10 MiB.
pub const DEFAULT_LOG_MAX_SIZE: u64 = 10 << 20;
/// Default number of rotated log files kept beside the current one.
pub const DEFAULT_LOG_MAX_FILES: u32 = 3;

/// sup-shim: one per container, started by supd; detaches from it, serves the shim API on
/// `--socket` and prints `ready` (or `error: ...`) once it does.
#[derive(Debug, Clone, Parser)]
#[command(name = "sup-shim", version)]
pub struct Options {
    /// Namespace of the container.
    #[arg(long)]
    pub namespace: String,
    /// Container id; also the runtime's container id.
    #[arg(long)]
    pub id: String,
    /// The task's state directory: holds bundle/, and receives the logs, exit files and
    /// runtime log.
    #[arg(long = "task-dir")]
    pub task_dir: PathBuf,
    /// Unix socket to serve the shim API on (mode 0600).
    #[arg(long)]
    pub socket: PathBuf,
    /// State directory of the OCI runtime (`--root`); /run/sup/runc/<namespace> by default.
    #[arg(long = "runtime-root")]
    pub runtime_root: Option<PathBuf>,
    /// A process's log file is rotated once it grows past this many bytes.
    #[arg(long = "log-max-size", default_value_t = DEFAULT_LOG_MAX_SIZE)]
    pub log_max_size: u64,
    /// Rotated log files kept (<name>.log.1 is the newest); 0 keeps none.
    #[arg(long = "log-max-files", default_value_t = DEFAULT_LOG_MAX_FILES)]
    pub log_max_files: u32,
    /// Log at debug level.
    #[arg(long)]
    pub debug: bool,
}

impl Options {
    /// The runtime's state directory, defaulted per namespace.
    pub fn runtime_root(&self) -> PathBuf {
        self.runtime_root
            .clone()
            .unwrap_or_else(|| PathBuf::from("/run/sup/runc").join(&self.namespace))
    }

    /// Checks what clap cannot: values that would make paths or the runtime misbehave.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        };
        if !name_ok(&self.namespace) {
            return Err(format!("invalid namespace {:?}", self.namespace));
        }
        if !name_ok(&self.id) {
            return Err(format!("invalid container id {:?}", self.id));
        }
        if !self.task_dir.is_absolute() {
            return Err(format!(
                "task dir {} must be absolute",
                self.task_dir.display()
            ));
        }
        if self.log_max_size == 0 {
            return Err("--log-max-size must be positive".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Options {
        let mut args = vec![
            "sup-shim",
            "--namespace",
            "default",
            "--id",
            "web",
            "--task-dir",
            "/run/sup/t/x",
            "--socket",
            "/run/sup/s/x.sock",
        ];
        args.extend_from_slice(extra);
        Options::try_parse_from(args).unwrap()
    }

    #[test]
    fn defaults() {
        let o = parse(&[]);
        assert_eq!(o.runtime_root(), PathBuf::from("/run/sup/runc/default"));
        assert_eq!(o.log_max_size, DEFAULT_LOG_MAX_SIZE);
        assert_eq!(o.log_max_files, DEFAULT_LOG_MAX_FILES);
        assert!(!o.debug);
        assert!(o.validate().is_ok());
    }

    #[test]
    fn rejects_bad_ids() {
        let mut o = parse(&["--runtime-root", "/r", "--debug"]);
        assert_eq!(o.runtime_root(), PathBuf::from("/r"));
        o.id = "../x".into();
        assert!(o.validate().is_err());
        o.id = "ok".into();
        o.namespace = String::new();
        assert!(o.validate().is_err());
    }
}
