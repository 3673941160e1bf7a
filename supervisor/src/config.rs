//! supd's configuration: a TOML file where every setting has a default, overridden by flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent data: metadata, content, snapshots.
    pub root: PathBuf,
    /// Runtime state: the socket, task bundles (tmpfs; gone at reboot).
    pub state: PathBuf,
    /// The API's unix socket.
    pub address: PathBuf,
    /// Snapshotter used when a request names none: "overlayfs" or "native".
    pub default_snapshotter: String,
    pub log: LogConfig,
    pub gc: GcConfig,
    /// Pulls and pushes: hosts directory, credentials, concurrency, timeouts.
    pub registry: crate::registry::RegistryConfig,
    /// The Kubernetes CRI: pause image and CNI locations.
    pub cri: CriConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CriConfig {
    /// Image run as each pod's sandbox; empty means supd builds its own from `sup-pause`.
    pub pause_image: String,
    /// Where CNI network configurations (`*.conflist`) are read from.
    pub cni_conf_dir: PathBuf,
    /// Where CNI plugin binaries are looked up, in order.
    pub cni_bin_dir: Vec<PathBuf>,
}

impl Default for CriConfig {
    fn default() -> Self {
        CriConfig {
            pause_image: String::new(),
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            cni_bin_dir: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// Seconds between background collections; 0 turns them off.
    pub interval_seconds: u64,
    /// Seconds unreferenced content is kept before the background collector takes it (a
    /// client may be about to name it in an image).
    pub grace_seconds: u64,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval_seconds: 600,
            grace_seconds: 600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter: "info", "debug", "sup_supervisor=debug,info", ...
    pub level: String,
    /// "text" (readable) or "json".
    pub format: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/sup"),
            state: PathBuf::from("/run/sup"),
            address: PathBuf::from("/run/sup/sup.sock"),
            default_snapshotter: "overlayfs".to_string(),
            log: LogConfig::default(),
            gc: GcConfig::default(),
            registry: Default::default(),
            cri: CriConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
            format: "text".to_string(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading config {}", path.display()), e))?;
        toml::from_str(&text).map_err(|e| Error::invalid(format!("config {}: {e}", path.display())))
    }

    pub fn validate(&self) -> Result<()> {
        for (what, p) in [
            ("root", &self.root),
            ("state", &self.state),
            ("address", &self.address),
        ] {
            if !p.is_absolute() {
                return Err(Error::invalid(format!(
                    "{what} {}: must be an absolute path",
                    p.display()
                )));
            }
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if self.address.as_os_str().len() > 107 {
            return Err(Error::invalid(format!(
                "address {}: longer than a unix socket path can be (107 bytes)",
                self.address.display()
            )));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(Error::invalid(format!(
                "log format {:?}: must be \"text\" or \"json\"",
                self.log.format
            )));
        }
        self.registry.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_defaults_and_unknown_keys_are_refused() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c.root, PathBuf::from("/var/lib/sup"));
        let c: Config = toml::from_str("root = \"/x\"\n[log]\nformat = \"json\"").unwrap();
        assert_eq!(c.root, PathBuf::from("/x"));
        assert_eq!(c.log.format, "json");
        assert!(toml::from_str::<Config>("rooot = \"/x\"").is_err());
    }
}
