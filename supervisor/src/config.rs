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
    /// The address the streaming server (exec, attach, port-forward) listens on. Loopback by
    /// default: the kubelet, on the same node, relays the streams.
    pub stream_address: String,
    /// Its TCP port; 0 picks a free one at each start.
    pub stream_port: u16,
    /// A streaming connection with no traffic either way for this long is closed (and its
    /// exec'd process killed): "30s", "15m", "4h", "1h30m". "0" never closes one.
    pub stream_idle_timeout: String,
    /// PEM certificate chain and private key: with both, the streaming server speaks TLS
    /// only and hands out https URLs.
    pub stream_tls_cert_file: Option<PathBuf>,
    pub stream_tls_key_file: Option<PathBuf>,
    /// The systemd cgroup driver, as a kubelet with `cgroupDriver: systemd` expects: pod
    /// cgroup parents are slices (`kubepods-burstable-pod<uid>.slice`), each container and
    /// pause process a scope in its pod's slice that the runtime asks systemd for, and
    /// RuntimeConfig reports SYSTEMD. Off: cgroupfs, the cgroups made in the file system.
    pub systemd_cgroup: bool,
}

/// A duration as "4h", "15m", "30s", "1h30m", or plain seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration> {
    let text = text.trim();
    let bad = || {
        Error::invalid(format!(
            "duration {text:?}: want e.g. \"30s\", \"15m\", \"4h\" or \"1h30m\""
        ))
    };
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().map_err(|_| bad())?;
        number.clear();
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !number.is_empty() || text.is_empty() {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(total))
}

impl Default for CriConfig {
    fn default() -> Self {
        CriConfig {
            pause_image: String::new(),
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            cni_bin_dir: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
            stream_address: "127.0.0.1".to_string(),
            stream_port: 0,
            stream_idle_timeout: "4h".to_string(),
            stream_tls_cert_file: None,
            stream_tls_key_file: None,
            systemd_cgroup: false,
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
        self.cri.validate()?;
        Ok(())
    }
}

impl CriConfig {
    pub fn validate(&self) -> Result<()> {
        self.stream_address
            .parse::<std::net::IpAddr>()
            .map_err(|_| {
                Error::invalid(format!(
                    "cri stream_address {:?}: must be an IP address",
                    self.stream_address
                ))
            })?;
        parse_duration(&self.stream_idle_timeout)
            .map_err(|e| Error::invalid(format!("cri stream_idle_timeout: {e}")))?;
        if self.stream_tls_cert_file.is_some() != self.stream_tls_key_file.is_some() {
            return Err(Error::invalid(
                "cri stream_tls_cert_file and stream_tls_key_file: give both or neither",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_the_kubelet_writes_them() {
        let secs = |t: &str| parse_duration(t).map(|d| d.as_secs()).ok();
        assert_eq!(secs("4h"), Some(4 * 3600));
        assert_eq!(secs("1h30m"), Some(5400));
        assert_eq!(secs("90s"), Some(90));
        assert_eq!(secs("15"), Some(15));
        assert_eq!(secs("0"), Some(0));
        for bad in ["", "h", "4x", "4h3", "1.5h", "-3s"] {
            assert_eq!(secs(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn stream_settings_are_checked() {
        let c: Config = toml::from_str("[cri]\nstream_address = \"localhost\"").unwrap();
        assert!(c.validate().is_err());
        let c: Config = toml::from_str("[cri]\nstream_idle_timeout = \"soon\"").unwrap();
        assert!(c.validate().is_err());
        let c: Config = toml::from_str("[cri]\nstream_tls_cert_file = \"/c.pem\"").unwrap();
        assert!(c.validate().is_err());
        let c: Config =
            toml::from_str("[cri]\nstream_address = \"::\"\nstream_port = 10010").unwrap();
        assert!(c.validate().is_ok());
    }

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
